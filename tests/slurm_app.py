"""A tiny Hydra app to test sweeps on Slurm, independent of fishtune's training code.

    python tests/slurm_app.py -m hydra/launcher=slurm out_dir=/tmp/o x=1,2

Each job appends a line to <out_dir>/x=<x>.attempts when it starts (its attempt number is the line
count, so a requeued job knows it is on its second attempt) and writes <out_dir>/x=<x>.json with the
Slurm variables it saw. Like fishtune's result files, an existing x=<x>.json is kept and the job
returns at once, so rerunning a sweep after a crash only redoes the missing jobs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_RESTART_COUNT",
    "SLURM_JOB_PARTITION",
    "SLURM_CPUS_PER_TASK",
    "SLURMD_NODENAME",
)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)  # atomic: a reader never sees half a file


@hydra.main(version_base="1.3", config_path="slurm_conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"x={cfg.x}"
    result_path = out / f"{tag}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())

    env = {k: os.environ.get(k) for k in SLURM_VARS}
    with open(out / f"{tag}.attempts", "a") as f:
        f.write(json.dumps({"time": time.time(), **env}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    attempt = len((out / f"{tag}.attempts").read_text().splitlines())
    start = time.time()

    if cfg.x == cfg.special_x and attempt == 1:
        if cfg.special == "wait":
            # Ended by a signal: submitit's USR2 handler checkpoints and requeues, or Slurm
            # preempts (SIGTERM, then SIGKILL) and requeues.
            time.sleep(cfg.wait_s)
            raise RuntimeError(f"{tag}: no signal within {cfg.wait_s}s")
        if cfg.special == "crash":
            os.kill(os.getpid(), signal.SIGKILL)

    time.sleep(cfg.sleep_s)
    result = {
        "x": cfg.x,
        "attempt": attempt,
        "start": start,
        "end": time.time(),
        "host": socket.gethostname(),
        **env,
    }
    _write_json(result_path, result)
    return result


if __name__ == "__main__":
    # The launcher configs (hydra/launcher=slurm|parallel) live in the repo's conf/.
    sys.argv.append(f"hydra.searchpath=[file://{REPO / 'conf'}]")
    main()
