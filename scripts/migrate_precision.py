"""Result files written before `train.precision: auto` was resolved before hashing (issue 30) say `auto`
in their config; this rewrites that to the precision each one trained in (the file records it), so
their identity hash and file name are what a run of that precision gets now, and the sweeps that made
them keep skipping them when they name that precision. Files that name fp32 or bf16 are left alone.

    python scripts/migrate_precision.py results/study/why/runs/converged [more folders]
"""
import argparse
import json
from pathlib import Path

from fishtune.harness.results import config_hash, result_path, write_json_atomic


def migrate(runs_dir: Path) -> int:
    """Rewrite every `auto` result file under `runs_dir`; returns how many moved."""
    moved = 0
    for path in sorted(runs_dir.glob("*.json")):
        r = json.loads(path.read_text())
        if r.get("config", {}).get("train", {}).get("precision") != "auto":
            continue
        r["config"]["train"]["precision"] = r["precision"]
        new = result_path(runs_dir, r["config"], r["layers"])
        r.update(run_id=new.stem, config_hash=config_hash(r["config"]),
                 migrated=f"config train.precision auto -> {r['precision']} (what auto resolved to when it ran)")
        write_json_atomic(new, r)
        if new != path:
            path.unlink()
        moved += 1
    return moved


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs_dirs", nargs="+", type=Path, help="folders of result files")
    for d in ap.parse_args().runs_dirs:
        print(f"{d}: {migrate(d)} result files now name the precision they trained in")
