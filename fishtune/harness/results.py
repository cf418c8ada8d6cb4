"""Result files: one JSON per run, written atomically, keyed by the config that produced it.

A result file is the unit of resume and aggregation. Its top-level keys (schema 1):
  run_id, config_hash, config (resolved), model, task, method, layers, rank, mask, budget, seed,
  trainable, head_entries, total, ratio_pct, budget_ratio_pct (over the original run's model),
  placement [{name, layer, module, chosen, entries}] (the mask's entries per tensor of the method),
  history [{epoch, train_loss, dev_loss, metrics, score}],
  best {epoch, score, metrics, dev_loss}, dev_labels and dev_predictions (per dev example, in the
  seeded subsample's order; predictions of the best epoch), stop_reason, fisher_seconds, train_seconds,
  samples_per_second, tokens_per_second (training, padding left out), throughput [{epoch,
  train_seconds, samples_per_second, tokens_per_second}], threads, peak_memory_mb (GPU:
  max allocated; CPU: peak RSS), peak_rss_mb, peak_rss_source, cuda_max_allocated_mb and
  cuda_max_reserved_mb (null on CPU), device, precision (fp32 | bf16), precision_reason, host, slurm
  (job ids, or null), resumed_from_epoch
  (the checkpoint a requeued or restarted run continued from, or null), versions, git_commit (HEAD
  when the run started), finished_at; adaptive runs add trainable_final, ratio_pct_final, ratio_pct_mean, active_ratio_history.
`metrics` hold the task's numbers x100 (matthews | accuracy | f1 | pearson | spearman) and `score`
is the single number a table shows for the task. Every number in a result file is finite (it is written
with allow_nan=False; fishtune.harness.metrics defines each metric for constant predictions).

A run that fails writes `<run>.failed.json` instead (fishtune.run.record_failure): status, config,
`reason` (one line, e.g. "diverged: non-finite loss at epoch 3, step 7"), error, traceback, host,
slurm, finished_at. A file that cannot be read (truncated, not JSON) is never fatal: a run sets its
own damaged result, mask or checkpoint aside as `<name>.damaged` and runs again; the loaders here skip
damaged files and say which.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

SCHEMA = 1
# Keys that do not change what a run computes: excluded from its identity.
_NOT_IDENTITY = ("paths", "force", "logger", "hydra")
DAMAGED = ".damaged"  # suffix of a file set aside because it could not be read


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the run stops at once and is recorded as failed."""


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
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file.
    NaN and infinity are refused (ValueError): they are not JSON, and no result may hold them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=str, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float written as a string ("inf"), for records that must keep
    whatever a failed run was given (a config with train.lr=inf) and still be JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def set_aside(path: str | Path, why: str) -> Path:
    """Rename a damaged file to `<name>.damaged` (replacing an older one) and warn on stderr, so that
    the run that owns it starts over and the evidence stays for a look."""
    path = Path(path)
    aside = path.with_name(path.name + DAMAGED)
    os.replace(path, aside)
    print(f"fishtune: warning: {path} is damaged ({why}); set aside as {aside.name}", file=sys.stderr)
    return aside


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(data, None), or (None, why) when the file cannot be read as JSON (truncated, not text)."""
    try:
        return json.loads(path.read_bytes()), None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}".splitlines()[0]


def read_result(path: str | Path) -> dict | None:
    """The result file at `path`, or None when it is damaged (unreadable, truncated, not a result):
    then it is set aside with a warning and its run is to be redone."""
    path = Path(path)
    data, why = _read_json(path)
    if why is None and not (isinstance(data, dict) and data.get("schema") == SCHEMA and "best" in data):
        why = "not a fishtune result"
    if why is not None:
        set_aside(path, f"{why}; the run is redone")
        return None
    return data


def load_results(runs_dir: str | Path, damaged: list[str] | None = None) -> list[dict]:
    """Every finished result file under `runs_dir` (recursively). A file that cannot be read is
    skipped; with `damaged`, 'path: why' is appended to it for each."""
    out = []
    for path in sorted(Path(runs_dir).rglob("*.json")):
        if path.name.endswith(".failed.json"):  # failure records: load_failures
            continue
        data, why = _read_json(path)
        if why is not None:
            if damaged is not None:
                damaged.append(f"{path}: {why}")
            continue
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            data["_path"] = str(path)
            out.append(data)
    return out


def load_failures(runs_dir: str | Path, damaged: list[str] | None = None) -> list[dict]:
    """The `*.failed.json` records of runs that failed (reason, error and traceback); unreadable ones
    are skipped and, with `damaged`, listed as for load_results."""
    out = []
    for path in sorted(Path(runs_dir).rglob("*.failed.json")):
        data, why = _read_json(path)
        if why is not None or not isinstance(data, dict):
            if damaged is not None:
                damaged.append(f"{path}: {why or 'not a failure record'}")
            continue
        data["_path"] = str(path)
        out.append(data)
    return out


# A run's mask file (`<run>.mask.pt`): torch is imported only where a mask is read or written.

def save_mask_file(path, masks: Mapping[str, Any], fisher_seconds: float = 0.0) -> None:
    """A run's mask beside its result file, with what the Fisher cost (a resumed run reports it)."""
    import torch

    torch.save({"masks": dict(masks), "fisher_seconds": float(fisher_seconds)}, path)


def read_mask_file(path: Path, like: Mapping[str, Any]) -> tuple[dict[str, Any], float] | None:
    """load_mask_file for a run that resumes: None when there is no file, or when it is damaged (unreadable,
    truncated, or not shaped like the run's candidate tensors `like`); a damaged one is set aside as
    `<name>.damaged` with a warning, and the run builds its mask again."""
    if not path.exists():
        return None
    try:
        masks, fisher_seconds = load_mask_file(path)
        if set(masks) != set(like) or any(tuple(masks[n].shape) != tuple(q.shape) for n, q in like.items()):
            raise ValueError("its tensors are not the run's candidates")
    except Exception as e:  # noqa: BLE001 - whatever torch.load makes of a broken file, it cannot be used
        set_aside(path, f"{type(e).__name__}: {e}".splitlines()[0][:200] + "; the mask is built again")
        return None
    return masks, fisher_seconds


def load_mask_file(path) -> tuple[dict[str, Any], float]:
    """(masks, fisher_seconds) of a mask file; files from before fisher_seconds was kept give 0."""
    import torch

    saved = torch.load(path)
    if isinstance(saved.get("masks"), dict):
        return saved["masks"], float(saved.get("fisher_seconds", 0.0))
    return saved, 0.0


def set_aside_files(runs_dir: str | Path) -> list[Path]:
    """The files under `runs_dir` that runs set aside as damaged (`*.damaged`)."""
    return sorted(Path(runs_dir).rglob(f"*{DAMAGED}"))


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
