"""Sweeps through hydra-submitit-launcher onto a real (local, single-node) Slurm cluster.

Needs root on a Debian-like machine: scripts/slurm-local installs slurm-wlm + munge and starts the
daemons. Skipped unless asked for, with `FISHTUNE_SLURM_TESTS=1` or `pytest -m slurm`; `make
test-slurm` does both and leaves the cluster down afterwards. A cluster that was already running
when the tests started is left running (only its test jobs are cancelled).

The app under test is tests/slurm_app.py (no fishtune code): each job writes one JSON with the
Slurm variables it saw, and counts its attempts, so a requeued job knows it is on its second.
The cluster runs without accounting, so tests/slurm_bin (a test-only `sacct` stand-in that submitit
polls) goes first on the sweep's PATH: without any sacct a job that dies without a result would
leave the sweep waiting forever.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SLURM_LOCAL = REPO / "scripts" / "slurm-local"
APP = REPO / "tests" / "slurm_app.py"
SACCT_BIN = REPO / "tests" / "slurm_bin"
PARTITION = os.environ.get("SLURM_LOCAL_PARTITION", "local")
JOB_NAME = "slurm_app"  # hydra.job.name of the app = the Slurm job name
SWEEP_TIMEOUT_S = 150
_sweeps: list[subprocess.Popen] = []  # started sweeps; any still running at teardown are ended


def _asked_for(config: pytest.Config) -> bool:
    if os.environ.get("FISHTUNE_SLURM_TESTS") == "1":
        return True
    return re.fullmatch(r"\s*slurm\s*", config.getoption("markexpr", default="") or "") is not None


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest):
    """Starts the local cluster (if down) for this module; stops it at the end if it started it."""
    if not _asked_for(request.config):
        pytest.skip("needs a local Slurm cluster: make test-slurm (or FISHTUNE_SLURM_TESTS=1 / -m slurm)")
    was_running = subprocess.run([SLURM_LOCAL, "status"], capture_output=True).returncode == 0
    start = subprocess.run([SLURM_LOCAL, "start"], capture_output=True, text=True)
    print(start.stdout + start.stderr)
    if start.returncode != 0:
        pytest.fail(f"scripts/slurm-local start failed:\n{start.stdout}{start.stderr}")
    try:
        yield
    finally:
        for proc in _sweeps:
            _end(proc)
        subprocess.run(["scancel", "--name", f"{JOB_NAME},fishtune-urgent"], capture_output=True)
        if not was_running:
            stop = subprocess.run([SLURM_LOCAL, "stop"], capture_output=True, text=True)
            print(stop.stdout + stop.stderr)


def _env(**launcher: object) -> dict[str, str]:
    """The sweep's environment: the launcher config (conf/hydra/launcher/slurm.yaml) pointed at the
    local cluster through its FISHTUNE_SLURM_* variables, and the sacct stand-in on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FISHTUNE_SLURM_")}
    env["PATH"] = f"{SACCT_BIN}{os.pathsep}{env.get('PATH', '')}"
    settings = {
        "PARTITION": PARTITION,
        "CPUS_PER_TASK": 1,  # two jobs side by side on the 2-core node
        "MEM_GB": 1,
        "TIMEOUT_MIN": 10,
        "SIGNAL_DELAY_S": 30,  # the default 120 would signal a 10-minute job almost at once
    }
    settings.update({k.upper(): v for k, v in launcher.items()})
    env.update({f"FISHTUNE_SLURM_{k}": str(v) for k, v in settings.items()})
    return env


def _sweep_cmd(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(APP), "-m", "hydra/launcher=slurm", f"out_dir={out}", *overrides]


def _start_sweep(out: Path, *overrides: str, **launcher: object) -> subprocess.Popen:
    with open(out.parent / f"{out.name}.log", "w") as log:
        proc = subprocess.Popen(
            _sweep_cmd(out, *overrides), cwd=REPO, env=_env(**launcher), stdout=log,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
    _sweeps.append(proc)
    return proc


def _end(proc: subprocess.Popen) -> None:
    """Ends a sweep still running (its own process group: the launcher and nothing else)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _finish(proc: subprocess.Popen, out: Path, timeout: float = SWEEP_TIMEOUT_S) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = None
    finally:  # also on Ctrl-C
        _end(proc)
    log = (out.parent / f"{out.name}.log").read_text()
    if rc is None:
        pytest.fail(f"sweep still running after {timeout}s:\n{log}\n{_squeue()}")
    return rc, log


def _sweep(out: Path, *overrides: str, **launcher: object) -> tuple[int, str]:
    return _finish(_start_sweep(out, *overrides, **launcher), out)


def _squeue() -> str:
    return subprocess.run(["squeue", "-a", "-l"], capture_output=True, text=True).stdout


def _result(out: Path, x: int) -> dict:
    return json.loads((out / f"x={x}.json").read_text())


def _attempts(out: Path, x: int) -> list[dict]:
    path = out / f"x={x}.attempts"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(cond, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}\n{_squeue()}")


def _task_id(attempt: dict) -> str:
    """submitit's id of the job: ARRAYID_TASK in an array (a sweep of 2+ jobs), else the job id."""
    if attempt["SLURM_ARRAY_JOB_ID"] is None:
        return attempt["SLURM_JOB_ID"]
    return f"{attempt['SLURM_ARRAY_JOB_ID']}_{attempt['SLURM_ARRAY_TASK_ID']}"


def _submitit_log(out: Path, task: str) -> str:
    folder = out / "hydra" / "multirun" / ".submitit" / task
    return "".join(p.read_text() for p in sorted(folder.glob("*_log.*")))


def test_sweep_runs_as_slurm_array(cluster, tmp_path):
    out = tmp_path / "basic"
    rc, log = _sweep(out, "x=1,2", "sleep_s=3")
    assert rc == 0, log
    r1, r2 = _result(out, 1), _result(out, 2)
    # real Slurm jobs: one array, two tasks, each with its own job id, on the local node
    assert r1["SLURM_JOB_ID"].isdigit() and r2["SLURM_JOB_ID"].isdigit()
    assert r1["SLURM_JOB_ID"] != r2["SLURM_JOB_ID"]
    assert r1["SLURM_ARRAY_JOB_ID"] == r2["SLURM_ARRAY_JOB_ID"]
    assert {r1["SLURM_ARRAY_TASK_ID"], r2["SLURM_ARRAY_TASK_ID"]} == {"0", "1"}
    assert r1["SLURM_JOB_PARTITION"] == r2["SLURM_JOB_PARTITION"] == PARTITION
    assert r1["attempt"] == r2["attempt"] == 1
    # both ran at once (1 CPU, 1 GB each on a 2-core node)
    assert max(r1["start"], r2["start"]) < min(r1["end"], r2["end"])
    # the FISHTUNE_SLURM_* variables reached sbatch through conf/hydra/launcher/slurm.yaml
    script = (out / "hydra/multirun/.submitit" / r1["SLURM_ARRAY_JOB_ID"]).glob("*_submission.sh")
    text = next(script).read_text()
    for flag in ("--partition=" + PARTITION, "--cpus-per-task=1", "--mem=1GB", "--time=10",
                 "--signal=USR2@30", "--array=0-1%2"):
        assert flag in text, text


def test_signalled_job_is_requeued_by_submitit(cluster, tmp_path):
    """USR2 (what Slurm sends signal_delay_s before the time limit, and submitit's own preemption
    test sends): submitit checkpoints the job, `scontrol requeue`s it, and it completes on its
    second attempt while the sweep waits."""
    out = tmp_path / "usr2"
    proc = _start_sweep(out, "x=1,2", "special=wait", TIMEOUT_MIN=60)
    _wait_for(lambda: len(_attempts(out, 2)) == 1, "x=2 to start")
    task = _task_id(_attempts(out, 2)[0])
    # as submitit's SlurmJob._interrupt() does for a preemption: SIGTERM (ignored), then USR2
    subprocess.run(["scancel", "--signal=TERM", task], check=True)
    subprocess.run(["scancel", "--signal=USR2", task], check=True)
    rc, log = _finish(proc, out)
    assert rc == 0, log
    r2 = _result(out, 2)
    assert r2["attempt"] == 2
    assert r2["SLURM_RESTART_COUNT"] == "1"
    assert _task_id(r2) == task  # the same Slurm job, requeued
    assert _result(out, 1)["attempt"] == 1
    slog = _submitit_log(out, task)
    assert "this job is preempted" in slog and f"Requeued job {task}" in slog, slog


def test_time_limit_requeues_with_max_num_timeout(cluster, tmp_path):
    """A real Slurm time limit: --time=1 with --signal=USR2@10. slurmctld checks time limits every
    30 s and signals a job once `now + delay + 30 s` reaches its end, so 20 to 50 s after the start
    (never earlier: a second attempt, done in 2 s, is not signalled). submitit sees a time-out, and
    with max_num_timeout=1 requeues the job once; the second attempt completes."""
    out = tmp_path / "timeout"
    rc, log = _sweep(out, "x=2", "special=wait", TIMEOUT_MIN=1, SIGNAL_DELAY_S=10, MAX_NUM_TIMEOUT=1)
    assert rc == 0, log
    r2 = _result(out, 2)
    assert r2["attempt"] == 2 and r2["SLURM_RESTART_COUNT"] == "1"
    slog = _submitit_log(out, _task_id(r2))
    assert "this job is timed-out" in slog and "(0 remaining timeouts)" in slog, slog


def test_preempted_job_is_requeued_by_slurm(cluster, tmp_path):
    """Real preemption: a job in partition `urgent` (higher PriorityTier, PreemptMode=REQUEUE) needs
    both cores; Slurm preempts the running sweep job and requeues it; it reruns and completes."""
    out = tmp_path / "preempt"
    proc = _start_sweep(out, "x=1,2", "special=wait", TIMEOUT_MIN=60)
    _wait_for(lambda: (out / "x=1.json").exists() and len(_attempts(out, 2)) == 1, "x=1 done, x=2 started")
    task = _task_id(_attempts(out, 2)[0])
    urgent = subprocess.run(
        ["sbatch", "--parsable", "-p", "urgent", "-c", "2", "--mem=1G", "-J", "fishtune-urgent",
         "-o", "/dev/null", "--wrap", "sleep 1"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    rc, log = _finish(proc, out)
    assert rc == 0, log
    r2 = _result(out, 2)
    assert r2["attempt"] == 2 and r2["SLURM_RESTART_COUNT"] == "1" and _task_id(r2) == task
    state = subprocess.run(["scontrol", "show", "job", "-o", urgent], capture_output=True, text=True).stdout
    assert "JobState=COMPLETED" in state, state
    assert "JobState=COMPLETED" in subprocess.run(
        ["scontrol", "show", "job", "-o", task], capture_output=True, text=True).stdout


def test_crashed_job_fails_the_sweep_and_a_rerun_finishes_it(cluster, tmp_path):
    """A job killed outright (no result file) must end the sweep with an error, not hang it (this
    is where submitit needs sacct); rerunning the sweep keeps the finished job's result and redoes
    only the crashed one."""
    out = tmp_path / "crash"
    t0 = time.time()
    rc, log = _sweep(out, "x=1,2", "special=crash")
    assert rc != 0, log
    assert "has not produced any output" in log, log
    assert time.time() - t0 < 90, log
    first = _result(out, 1)
    assert not (out / "x=2.json").exists()

    rc, log = _sweep(out, "x=1,2", "special=crash")
    assert rc == 0, log
    assert _result(out, 1) == first  # kept, not recomputed
    r2 = _result(out, 2)
    assert r2["attempt"] == 2 and r2["SLURM_RESTART_COUNT"] is None  # a new job, not a requeue
    assert r2["SLURM_ARRAY_JOB_ID"] != first["SLURM_ARRAY_JOB_ID"]
