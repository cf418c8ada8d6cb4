"""What became of a sweep: `python -m fishtune.sweep_summary RUNS_DIR [--json]`.

Lists, for every run under RUNS_DIR (any launcher, any number of sweeps):
  finished        its result file: best score, epochs, and where it ran (Slurm job id, host, the
                  GPU Slurm gave it, requeues, the epoch a requeued run resumed after); what it cost
                  (training seconds, precision, and where the file records them, samples and tokens
                  per second, peak memory and threads)
  failed          a `<run>.failed.json` (the run raised or diverged; the sweep went on): the reason
                  and the record
  without result  Slurm jobs of a hydra-submitit sweep (RUNS_DIR/hydra/*/.submitit/) that have no
                  submitit result: still queued or running, or killed without one (out of memory,
                  node failure, scancel), with their overrides and log
  in progress     runs claimed by a sweep that trains them (`<run>.claim`, fishtune/harness/claims.py):
                  the owner (host, pid, Slurm job), its last heartbeat, and whether it is live or
                  stale (its owner is gone: the next sweep over the folder takes the run over)
  damaged         result or failure files not counted, each with why (fishtune.harness.results.
                  load_results: unreadable, no result, against the schema, not the computation its name
                  or config says, a second file of one computation), and files runs set aside as
                  `*.damaged` (a truncated checkpoint, mask or result; the run started over)

Exit status 0 when every run found has finished, 1 when any failed, has no result, is still in
progress or a file is unreadable, 2 when RUNS_DIR is missing. `summarize()` returns the same as a dict (what --json prints).
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ..harness.claims import in_progress, slurm_label
from ..harness.results import load_failures, load_results, set_aside_files

# What a run cost, as its result file records it (null where a schema-1 file predates the key).
COST_KEYS = ("train_seconds", "precision", "samples_per_second", "tokens_per_second", "peak_memory_mb", "threads")
_JOB_DIR = re.compile(r"^\d+(_\d+)?$")  # submitit's folder per job: JOBID or ARRAYID_TASK


def _gpu_label(slurm: dict | None) -> str | None:
    """The GPU a job was given: "GPU 1", "GPU 0 (NVIDIA H100 ...)", "..., 1 shard"; None without one."""
    if not slurm or not slurm.get("cuda_visible_devices"):
        return None
    label = f"GPU {slurm['cuda_visible_devices']}"
    if slurm.get("gpu_name"):
        label += f" ({slurm['gpu_name']})"
    if slurm.get("shards_on_node"):
        n = slurm["shards_on_node"]
        label += f", {n} shard{'' if n == '1' else 's'}"
    return label


def _overrides(submitted: Path) -> list[str] | None:
    """The Hydra overrides of a submitit job, from its submitted pickle (hydra-submitit-launcher
    pickles its __call__(sweep_overrides, ...)); None when it cannot be read."""
    try:
        with open(submitted, "rb") as f:
            delayed = pickle.load(f)
        overrides = delayed.args[0]
        return [str(o) for o in overrides] if isinstance(overrides, (list, tuple)) else None
    except Exception:  # noqa: BLE001 - a summary shows what it can
        return None


def _queue_states() -> dict[str, str] | None:
    """{job id: state} of the jobs in the Slurm queue, one line per array task; None without Slurm."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return dict(line.split(None, 1) for line in out.stdout.splitlines() if len(line.split(None, 1)) == 2)


def _jobs_without_result(runs_dir: Path) -> list[dict]:
    jobs = []
    for folder in sorted(runs_dir.glob("hydra/*/.submitit/*")):
        if not (folder.is_dir() and _JOB_DIR.match(folder.name)):
            continue
        submitted = folder / f"{folder.name}_submitted.pkl"
        if not submitted.exists() or any(folder.glob("*_result.pkl")):
            continue  # the array's own folder (only the sbatch script), or a job that returned
        jobs.append({"job": folder.name, "sweep_dir": str(folder.parent.parent),
                     "log": str(folder / f"{folder.name}_0_log.err"), "_submitted": submitted})
    if not jobs:
        return jobs
    queue = _queue_states()
    for job in jobs:
        state = None if queue is None else queue.get(job["job"])
        if queue is None:
            job["state"] = "unknown (no squeue): still queued or running, or ended without a result"
        else:
            job["state"] = state.lower() if state else "ended without a result"
        job["overrides"] = _overrides(job.pop("_submitted"))
    return jobs


def summarize(runs_dir: str | Path) -> dict:
    runs_dir = Path(runs_dir)
    finished, unreadable = [], []
    for r in load_results(runs_dir, unreadable):
        finished.append({
            "run_id": r.run_id, "task": r.task, "mask": r.mask, "score": r.score, "best_epoch": r.best.get("epoch"),
            "epochs": len(r.history or []), "stop_reason": r.stop_reason, "host": r.host,
            "slurm": slurm_label(r.slurm), "gpu": _gpu_label(r.slurm),
            "restarts": int((r.slurm or {}).get("restart_count") or 0),
            "resumed_from_epoch": r.resumed_from_epoch, "path": r.path,
            **{key: getattr(r, key) for key in COST_KEYS},
        })
    done = {Path(f["path"]).name.removesuffix(".json") for f in finished}
    failed = []
    for f in load_failures(runs_dir, unreadable):
        run_id = Path(f.path).name.removesuffix(".failed.json")
        if run_id in done:  # a later rerun finished it (run.py also deletes the record then)
            continue
        failed.append({"run_id": run_id, "reason": f.reason, "error": f.error, "host": f.host,
                       "slurm": slurm_label(f.slurm), "gpu": _gpu_label(f.slurm), "finished_at": f.finished_at,
                       "path": f.path})
    no_result = _jobs_without_result(runs_dir)
    running = [c.to_json() for c in in_progress(runs_dir)]
    return {"runs_dir": str(runs_dir), "finished": finished, "failed": failed, "without_result": no_result,
            "in_progress": running, "unreadable": unreadable,
            "set_aside": [str(p) for p in set_aside_files(runs_dir)],
            "ok": not failed and not no_result and not running and not unreadable}


def _where(r: dict) -> str:
    """Where a run ran: the Slurm job and host, and the GPU Slurm gave it."""
    where = f"slurm {r['slurm']} on {r['host'] or '?'}" if r["slurm"] else f"on {r['host'] or '?'}"
    return where + (f", {r['gpu']}" if r["gpu"] else "")


def format_summary(s: dict) -> str:
    n_f, n_x, n_n = len(s["finished"]), len(s["failed"]), len(s["without_result"])
    lines = [f"sweep summary of {s['runs_dir']}: {n_f} finished, {n_x} failed, {n_n} without a result, "
             f"{len(s['in_progress'])} in progress"]
    if s["finished"]:
        lines.append("finished:")
        for r in s["finished"]:
            where = _where(r)
            if r["restarts"]:
                where += f", requeued {r['restarts']}x"
            if r["resumed_from_epoch"] is not None:
                where += f", resumed after epoch {r['resumed_from_epoch']}"
            score = "-" if r["score"] is None else f"{r['score']:.2f}"
            lines.append(f"  {r['run_id']}  score {score} (best epoch {r['best_epoch']} of {r['epochs']}, "
                         f"{r['stop_reason']})  {where}")
            if r["train_seconds"] is not None:
                cost = f"    {r['train_seconds']:.0f} s training, {r['precision']}"
                if r["tokens_per_second"] is not None:
                    cost += (f", {r['samples_per_second']:.1f} samples/s, {r['tokens_per_second']:.0f} tokens/s, "
                             f"peak {r['peak_memory_mb']:.0f} MB, {r['threads']} threads")
                lines.append(cost)
    if s["failed"]:
        lines.append("failed:")
        for r in s["failed"]:
            lines.append(f"  {r['run_id']}  {_where(r)}")
            lines.append(f"    error: {r['reason']}")
            lines.append(f"    details: {r['path']}")
    if s["without_result"]:
        lines.append("without a result (Slurm jobs):")
        for j in s["without_result"]:
            lines.append(f"  {j['job']}  {j['state']}")
            if j["overrides"] is not None:
                lines.append(f"    overrides: {' '.join(j['overrides'])}")
            lines.append(f"    log: {j['log']}")
    if s["in_progress"]:
        lines.append("in progress (claimed by the sweep that trains it; stale: its owner is gone, the next sweep "
                     "takes it over):")
        for c in s["in_progress"]:
            lines.append(f"  {c['run_id']}  {c['state']}: {c['owner']}, heartbeat {c['heartbeat_age_s']:.0f} s ago")
    if s["unreadable"]:
        lines.append("unreadable (skipped):")
        lines += [f"  {u}" for u in s["unreadable"]]
    if s["set_aside"]:
        lines.append("set aside as damaged (their runs started over):")
        lines += [f"  {p}" for p in s["set_aside"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fishtune.sweep_summary", description=__doc__.split("\n")[0])
    parser.add_argument("runs_dir", help="the sweep's paths.runs_dir")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if not Path(args.runs_dir).is_dir():
        print(f"sweep_summary: error: no such directory: {args.runs_dir}", file=sys.stderr)
        return 2
    s = summarize(args.runs_dir)
    print(json.dumps(s, indent=1) if args.json else format_summary(s))
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
