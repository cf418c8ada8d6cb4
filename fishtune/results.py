"""Result files: one JSON per run, written atomically, keyed by the config that produced it.

A result file is the unit of resume and aggregation. Its top-level keys (schema 1):
  run_id, config_hash, config (resolved), model, task, method, layers, rank, mask, budget, seed,
  trainable, total, ratio_pct, budget_ratio_pct (over the original run's model), history [{epoch, train_loss, dev_loss, metrics, score}],
  best {epoch, score, metrics, dev_loss}, dev_labels and dev_predictions (per dev example, in the
  seeded subsample's order; predictions of the best epoch), stop_reason, fisher_seconds, train_seconds,
  samples_per_second, device, precision, host, slurm (job ids, or null), resumed_from_epoch
  (the checkpoint a requeued or restarted run continued from, or null), versions, git_commit (HEAD
  when the run started), finished_at; adaptive runs add trainable_final, ratio_pct_final, ratio_pct_mean, active_ratio_history.
`metrics` hold the task's numbers x100 (matthews | accuracy | f1 | pearson | spearman) and `score`
is the single number a table shows for the task.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

SCHEMA = 1
# Keys that do not change what a run computes: excluded from its identity.
_NOT_IDENTITY = ("paths", "force", "logger", "hydra")


def config_hash(config: Mapping[str, Any]) -> str:
    identity = {k: v for k, v in config.items() if k not in _NOT_IDENTITY}
    if isinstance(identity.get("data"), Mapping):  # where GLUE is read from does not change the run
        identity["data"] = {k: v for k, v in identity["data"].items() if k != "glue_dir"}
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def run_name(config: Mapping[str, Any], layers: int) -> str:
    """Readable part of a run's file name; the config hash keeps two configs from sharing one."""
    mask = config["mask"]["mode"]
    budget = f"-b{config['budget']}" if mask != "none" else ""
    rank = config["peft"].get("rank")
    return (f"{config['model']['name']}-{config['task']['name']}-{config['peft']['name']}"
            f"-L{layers}{f'-r{rank}' if rank is not None else ''}-{mask}{budget}-s{config['seed']}")


def result_path(runs_dir: str | Path, config: Mapping[str, Any], layers: int) -> Path:
    return Path(runs_dir) / f"{run_name(config, layers)}-{config_hash(config)}.json"


def write_json_atomic(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_results(runs_dir: str | Path) -> list[dict]:
    """Every finished result file under `runs_dir` (recursively)."""
    out = []
    for path in sorted(Path(runs_dir).rglob("*.json")):
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            data["_path"] = str(path)
            out.append(data)
    return out


def load_failures(runs_dir: str | Path) -> list[dict]:
    """The `*.failed.json` records of runs that crashed in a sweep (error and traceback)."""
    out = []
    for path in sorted(Path(runs_dir).rglob("*.failed.json")):
        data = json.loads(path.read_text())
        data["_path"] = str(path)
        out.append(data)
    return out


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "peft", "adapters", "datasets", "hydra-core", "numpy", "fishtune"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
