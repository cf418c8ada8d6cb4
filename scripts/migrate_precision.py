"""One-off (issue #20): the study profile now says train.precision=fp32, where its 200 runs were made
under `auto`, which then meant fp32 on CPU (each file records precision fp32). Their config is
rewritten to what they ran, so their identity hash and file name follow, and `make study` keeps
skipping them. Files that already say fp32 are left alone; a run that trained in bf16 is refused.

    python scripts/migrate_precision.py results/study/runs
"""
import json
import sys
from pathlib import Path

from fishtune.harness.results import config_hash, result_path, write_json_atomic

for runs_dir in sys.argv[1:]:
    moved = 0
    for path in sorted(Path(runs_dir).glob("*.json")):
        r = json.loads(path.read_text())
        if r.get("config", {}).get("train", {}).get("precision") != "auto":
            continue
        if r["precision"] != "fp32":
            sys.exit(f"{path}: trained in {r['precision']}, not fp32; not migrated")
        r["config"]["train"]["precision"] = "fp32"
        new = result_path(runs_dir, r["config"], r["layers"])
        r.update(run_id=new.stem, config_hash=config_hash(r["config"]),
                 migrated="config train.precision auto -> fp32 (what auto meant on CPU when it ran)")
        write_json_atomic(new, r)
        path.unlink()
        moved += 1
    print(f"{runs_dir}: {moved} result files now say train.precision=fp32")
