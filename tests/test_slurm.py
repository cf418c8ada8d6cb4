"""Sweeps through hydra-submitit-launcher onto a real (local, single-node) Slurm cluster.

Needs root on a Debian-like machine: scripts/slurm-local installs slurm-wlm + munge and starts the
daemons. Skipped unless asked for, with `FISHTUNE_SLURM_TESTS=1` or `pytest -m slurm`; `make
test-slurm` does both and leaves the cluster down afterwards. A cluster that was already running
when the tests started is left running (only its test jobs are cancelled).

Two apps run on it. tests/slurm_app.py (no fishtune code): each job writes one JSON with the Slurm
variables it saw, and counts its attempts, so a requeued job knows it is on its second. Then
fishtune itself (`python -m fishtune.run -m hydra/launcher=slurm ...` on tiny_bert and the GLUE
fixtures): a 4-run sweep whose result files carry their job ids, one run signalled mid-training
and requeued that resumes from its checkpoint and ends equal to an uninterrupted local run, and a
sweep with a crashing run that `python -m fishtune.sweep_summary` reports while the other finishes.
Then two fishtune sweeps over one runs folder at once, which train no run twice (claims). Last,
GPUs: the node restarted with stand-in GPUs (`scripts/slurm-local start --gpus 2`, then
`--gpus 1 --shards 4`) and a 3-run fishtune sweep on each, one GPU per run and one shard per run.
The cluster runs without accounting, so tests/slurm_bin (a test-only `sacct` stand-in that submitit
polls) goes first on the sweep's PATH: without any sacct a job that dies without a result would
leave the sweep waiting forever.

The tests of fishtune.sweep_summary at the end need no cluster and run in `make test`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

slurm = pytest.mark.slurm  # needs the cluster: every test that uses the `slurm_session` fixture

REPO = Path(__file__).resolve().parents[1]
SLURM_LOCAL = REPO / "scripts" / "slurm-local"
APP = REPO / "tests" / "slurm_app.py"
SACCT_BIN = REPO / "tests" / "slurm_bin"
PARTITION = os.environ.get("SLURM_LOCAL_PARTITION", "local")
JOB_NAME = "slurm_app"  # hydra.job.name of the app = the Slurm job name
FISHTUNE_JOB_NAME = "fishtune_test"  # hydra.launcher.name of the fishtune sweeps
SWEEP_TIMEOUT_S = 150
_sweeps: list[subprocess.Popen] = []  # started sweeps; any still running at teardown are ended


def _asked_for(config: pytest.Config) -> bool:
    if os.environ.get("FISHTUNE_SLURM_TESTS") == "1":
        return True
    return re.fullmatch(r"\s*slurm\s*", config.getoption("markexpr", default="") or "") is not None


@pytest.fixture(scope="module")
def slurm_session(request: pytest.FixtureRequest):
    """The local cluster's daemons for this module: stops them at the end if they were down at the
    start. Each test then asks for the node it needs (`_node`: CPUs only, or with stand-in GPUs);
    `scripts/slurm-local start` restarts the daemons only when that changes the node."""
    if not _asked_for(request.config):
        pytest.skip("needs a local Slurm cluster: make test-slurm (or FISHTUNE_SLURM_TESTS=1 / -m slurm)")
    was_running = subprocess.run([SLURM_LOCAL, "status"], capture_output=True).returncode == 0
    try:
        yield
    finally:
        for proc in _sweeps:
            _end(proc)
        subprocess.run(["scancel", "--name", f"{JOB_NAME},{FISHTUNE_JOB_NAME},fishtune-urgent"], capture_output=True)
        if not was_running:
            stop = subprocess.run([SLURM_LOCAL, "stop"], capture_output=True, text=True)
            print(stop.stdout + stop.stderr)


def _node(*options: str) -> None:
    """`scripts/slurm-local start OPTIONS`: the node as this machine is (no options), or one that
    declares stand-in GPUs (--gpus N [--shards S])."""
    start = subprocess.run([SLURM_LOCAL, "start", *options], capture_output=True, text=True)
    print(start.stdout + start.stderr)
    if start.returncode != 0:
        pytest.fail(f"scripts/slurm-local start {' '.join(options)} failed:\n{start.stdout}{start.stderr}")


@pytest.fixture
def cluster(slurm_session):
    """The cluster with this machine's node: 2 cores, no GPUs."""
    _node()


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
    return _start(_sweep_cmd(out, *overrides), out, _env(**launcher))


def _start(cmd: list[str], out: Path, env: dict[str, str]) -> subprocess.Popen:
    """Starts `cmd` in its own process group, its output in <out>.log."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
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


def _scontrol_job(job: str) -> str:
    """`scontrol show job -o` of a job (or of every task of an array): one line of fields per job."""
    return subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout


def _task_id(attempt: dict) -> str:
    """submitit's id of the job: ARRAYID_TASK in an array (a sweep of 2+ jobs), else the job id."""
    if attempt["SLURM_ARRAY_JOB_ID"] is None:
        return attempt["SLURM_JOB_ID"]
    return f"{attempt['SLURM_ARRAY_JOB_ID']}_{attempt['SLURM_ARRAY_TASK_ID']}"


def _submitit_log(out: Path, task: str) -> str:
    folder = out / "hydra" / "multirun" / ".submitit" / task
    return "".join(p.read_text() for p in sorted(folder.glob("*_log.*")))


@slurm
def test_sweep_runs_as_slurm_array(cluster, tmp_path):
    out = tmp_path / "basic"
    # 12 s each: the scheduler may start the second task of the array seconds after the first (5 s
    # seen under load on 2 cores), and the overlap check below must not depend on that lag.
    rc, log = _sweep(out, "x=1,2", "sleep_s=12")
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


@slurm
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


@slurm
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


@slurm
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
    # The result file is written before the job ends: on a loaded machine slurmctld may still show the
    # task COMPLETING (or RUNNING) for a few seconds after the sweep returns, so wait for the final state.
    for job in (urgent, task):
        _wait_for(lambda: "JobState=COMPLETED" in _scontrol_job(job), f"job {job} to be COMPLETED")


@slurm
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


# ---- fishtune itself on the cluster --------------------------------------------------------------

GLUE = REPO / "tests" / "fixtures" / "glue"
FT_EPOCHS = 12
# Tiny, but slow enough to signal a run mid-training: the fixtures' 40 training rows in batches of
# 2 are 20 steps an epoch (0.3 s on an idle core, 1 s on a busy one), and no early stop.
FT_ARGS = ("model=tiny_bert", f"data.glue_dir={GLUE}", f"train.max_epochs={FT_EPOCHS}",
           f"train.patience={FT_EPOCHS}", "train.batch_size=2", "fisher.samples=16")
FT_TIMEOUT_S = 420
# (task, mask) of the run signalled mid-training: the array's last task (Slurm starts array tasks in
# index order), so no task of the array is still pending then. Slurm 22.05 answers a signal to a
# task of an array with pending tasks with "Job can not be altered now" although it delivers it, and
# scancel then retries every few seconds until the requeued job runs again and dies of the signal.
SIGNALLED = ("mrpc", "fish")


@dataclass
class FishtuneSweeps:
    main: Path              # runs_dir of `task=rte,mrpc mask=none,fish`, one run signalled
    crash: Path             # runs_dir of `task=rte mask=none,fish fisher.chunk_size=0`
    ref: Path               # runs_dir of the signalled run's config, run here without Slurm
    main_rc: int
    main_log: str
    crash_rc: int
    crash_log: str
    ref_rc: int
    ref_log: str
    signalled_job: str      # ARRAYID_TASK
    epoch_at_signal: int    # the epoch of the checkpoint that existed when the signal went out
    seconds: float


def _fishtune_sweep(runs_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "fishtune.run", "-m", "hydra/launcher=slurm",
            f"hydra.launcher.name={FISHTUNE_JOB_NAME}", *FT_ARGS, f"paths.runs_dir={runs_dir}", *overrides]


def _fishtune_env() -> dict[str, str]:
    # timeout_min > 10: submitit counts a USR2 before `min(0.8 T, T - 10 min)` as a preemption (always
    # requeued); with a shorter limit every USR2 is a time-out (requeued only within max_num_timeout).
    env = _env(TIMEOUT_MIN=60)
    env.pop("OMP_NUM_THREADS", None)  # the launcher's setup line sets it to the job's CPUs (1)
    return env


def _sweep_dir(runs_dir: Path) -> Path:
    [d] = runs_dir.glob("hydra/multirun_*")
    return d


def _job_of(runs_dir: Path, task: str, mask: str) -> str:
    """ARRAYID_TASK of the (started) job that runs task/mask: Hydra's job number is the array index."""
    sweep = _sweep_dir(runs_dir)
    for f in sweep.glob("*/.hydra/overrides.yaml"):
        text = f.read_text()
        if f"task={task}\n" in text and f"mask={mask}\n" in text:
            [folder] = (sweep / ".submitit").glob(f"*_{f.parent.parent.name}")
            return folder.name
    pytest.fail(f"no started job for task={task} mask={mask} in {sweep}")


def _label(slurm: dict) -> str:
    return f"{slurm['array_job_id']}_{slurm['array_task_id']}"


def _summary(runs_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fishtune.sweep_summary", str(runs_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def fishtune_sweeps(slurm_session, tmp_path_factory) -> FishtuneSweeps:
    """Two fishtune sweeps on the cluster at once, and the signalled run's config locally beside them;
    USR2 to the SIGNALLED run's job once its first epoch checkpoint is on disk."""
    from fishtune.harness.results import load_results  # noqa: F401 - fail here, not in a job, if fishtune is broken

    _node()
    base = tmp_path_factory.mktemp("fishtune")
    main, crash, ref = base / "main", base / "crash", base / "ref"
    t0 = time.time()
    env = _fishtune_env()
    main_proc = _start(_fishtune_sweep(main, "task=rte,mrpc", "mask=none,fish"), main, env)
    task, mask = SIGNALLED
    ref_proc = _start([sys.executable, "-m", "fishtune.run", *FT_ARGS, f"paths.runs_dir={ref}", f"task={task}",
                       f"mask={mask}"], ref, {**os.environ, "OMP_NUM_THREADS": "1"})  # one thread, as in a job
    # The second sweep queues behind the first (Slurm runs jobs in submission order here).
    _wait_for(lambda: any(main.glob("hydra/multirun_*/.submitit/*/*_submission.sh")) or main_proc.poll() is not None,
              "the first sweep's sbatch", timeout=FT_TIMEOUT_S)
    # fisher.chunk_size=0 breaks only the run that estimates a Fisher (mask=fish), not mask=none
    crash_proc = _start(_fishtune_sweep(crash, "task=rte", "mask=none,fish", "fisher.chunk_size=0"), crash, env)
    import torch  # (slow to import; meanwhile the jobs start)

    def ckpt() -> Path | None:
        return next(main.glob(f"*-{task}-*-{mask}-*.ckpt.pt"), None)

    _wait_for(lambda: ckpt() is not None or main_proc.poll() is not None, f"the {task}/{mask} run's checkpoint",
              timeout=FT_TIMEOUT_S)
    path = ckpt()
    if path is None:
        _, log = _finish(main_proc, main)
        pytest.fail(f"the sweep ended before the {task}/{mask} run wrote a checkpoint:\n{log}")
    snapshot = base / "at_signal.ckpt.pt"
    shutil.copyfile(path, snapshot)
    job = _job_of(main, task, mask)
    if path.with_name(path.name.removesuffix(".ckpt.pt") + ".json").exists():
        pytest.fail(f"{path.name}: the run finished before the signal; give it more epochs (FT_EPOCHS)")
    array = job.split("_")[0]
    _wait_for(lambda: not subprocess.run(["squeue", "-h", "-r", "-t", "PD", "-j", array], capture_output=True,
                                         text=True).stdout.strip(), f"no pending task in array {array}")
    # what Slurm sends signal_delay_s before a time limit, and submitit on a preemption
    sig = subprocess.run(["scancel", "--signal=USR2", job], capture_output=True, text=True, timeout=60)
    assert sig.returncode == 0, f"scancel --signal=USR2 {job}: {sig.stderr}\n{_squeue()}"

    main_rc, main_log = _finish(main_proc, main, FT_TIMEOUT_S)
    crash_rc, crash_log = _finish(crash_proc, crash, FT_TIMEOUT_S)
    ref_rc, ref_log = _finish(ref_proc, ref, FT_TIMEOUT_S)
    epoch = int(torch.load(snapshot, weights_only=False)["epoch"])
    sweeps = FishtuneSweeps(main, crash, ref, main_rc, main_log, crash_rc, crash_log, ref_rc, ref_log, job, epoch,
                            time.time() - t0)
    print(f"fishtune sweeps: {sweeps.seconds:.0f} s; signalled {job} after epoch {epoch}")
    return sweeps


@slurm
def test_fishtune_sweep_runs_as_slurm_jobs(fishtune_sweeps):
    s = fishtune_sweeps
    assert s.main_rc == 0, s.main_log
    from fishtune.harness.results import load_results

    results = {(r.task, r.mask): r for r in load_results(s.main)}
    assert set(results) == {("rte", "none"), ("rte", "fish"), ("mrpc", "none"), ("mrpc", "fish")}, s.main_log
    # real Slurm jobs: one array (the sweep), one task per run, each with its own job id
    ids = [r.slurm for r in results.values()]
    assert len({i["array_job_id"] for i in ids}) == 1 and ids[0]["array_job_id"].isdigit()
    assert sorted(i["array_task_id"] for i in ids) == ["0", "1", "2", "3"]
    assert len({i["job_id"] for i in ids}) == 4 and all(i["job_id"].isdigit() for i in ids)
    assert all(i["job_partition"] == PARTITION for i in ids)
    for (task, mask), r in results.items():
        assert r.host == socket.gethostname() and r.device == "cpu" and r.model == "tiny_bert"
        assert r.config["data"]["glue_dir"] == str(GLUE)
        assert r.train_examples == 40 and r.dev_examples == 16
        assert [h["epoch"] for h in r.history] == list(range(1, FT_EPOCHS + 1))
        for h in r.history:
            assert math.isfinite(h["train_loss"]) and math.isfinite(h["dev_loss"]) and 0 <= h["score"] <= 100
        assert r.best["score"] == max(h["score"] for h in r.history) and r.stop_reason == "max_epochs"
        assert 0 < r.trainable < r.total
        if (task, mask) != SIGNALLED:
            assert "restart_count" not in r.slurm and r.resumed_from_epoch is None
    for task in ("rte", "mrpc"):  # the mask keeps exactly the original (mask=none) run's trainable count
        assert results[(task, "fish")].trainable == results[(task, "none")].trainable
        assert results[(task, "fish")].layers > results[(task, "none")].layers
        assert results[(task, "fish")].fisher_seconds > 0  # a resumed run reports its saved mask's cost
    # conf/hydra/launcher/slurm.yaml reached sbatch
    script = next((_sweep_dir(s.main) / ".submitit").glob("*/*_submission.sh")).read_text()
    for line in (f"--job-name={FISHTUNE_JOB_NAME}", "--array=0-3%", "--cpus-per-task=1", "--time=60",
                 "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK"):
        assert line in script, script
    assert not list(s.main.glob("*.ckpt.pt")) and not list(s.main.glob("*.failed.json"))


@slurm
def test_signalled_fishtune_run_resumes_from_its_checkpoint(fishtune_sweeps):
    """USR2 mid-training: submitit requeues the job (same job id, SLURM_RESTART_COUNT=1); the requeued
    job reruns the same config, which resumes from the epoch checkpoint and ends with exactly the
    result of an uninterrupted run."""
    s = fishtune_sweeps
    assert s.main_rc == 0, s.main_log
    assert s.ref_rc == 0, s.ref_log
    from fishtune.harness.results import load_results

    [r] = [r for r in load_results(s.main) if (r.task, r.mask) == SIGNALLED]
    [ref] = load_results(s.ref)
    assert r.run_id == ref.run_id  # the same config (paths are not part of a run's identity)
    assert _label(r.slurm) == s.signalled_job and r.slurm["restart_count"] == "1"
    assert 1 <= s.epoch_at_signal <= r.resumed_from_epoch < FT_EPOCHS, (s.epoch_at_signal, r.resumed_from_epoch)
    assert ref.slurm is None and ref.resumed_from_epoch is None
    assert r.history == ref.history  # every epoch's losses, metrics and scores, bit for bit
    assert r.best == ref.best and r.stop_reason == ref.stop_reason
    assert (r.trainable, r.total) == (ref.trainable, ref.total)
    logs = "".join(p.read_text() for p in (_sweep_dir(s.main) / ".submitit" / s.signalled_job).glob("*_log.*"))
    assert "this job is preempted" in logs and f"Requeued job {s.signalled_job}" in logs, logs[-3000:]
    assert logs.count("Starting with JobEnvironment") == 2  # two attempts of the same job


@slurm
def test_crashed_fishtune_run_is_reported_and_the_other_finishes(fishtune_sweeps):
    """A run that raises inside its Slurm job is recorded as <run>.failed.json (with its job id); the
    sweep goes on, its other run finishes, and the sweep summary lists both."""
    s = fishtune_sweeps
    assert s.crash_rc == 0, s.crash_log  # a run that raises is a finished job, not a crashed sweep
    from fishtune.harness.results import load_failures, load_results

    [done] = load_results(s.crash)
    [failed] = load_failures(s.crash)
    assert done.mask == "none" and done.slurm["job_id"].isdigit()
    assert failed.config["mask"]["mode"] == "fish" and "fisher.chunk_size=0" in failed.error
    assert failed.slurm["array_job_id"] == done.slurm["array_job_id"] and failed.host == done.host
    out = _summary(s.crash)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 finished, 1 failed, 0 without a result" in out.stdout, out.stdout
    assert f"slurm {_label(failed.slurm)} on {failed.host}" in out.stdout, out.stdout
    assert "error: fisher.chunk_size=0: must be an integer >= 1" in out.stdout, out.stdout
    assert f"slurm {_label(done.slurm)}" in out.stdout, out.stdout


@slurm
def test_sweep_summary_of_the_signalled_sweep(fishtune_sweeps):
    s = fishtune_sweeps
    out = _summary(s.main)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 finished, 0 failed, 0 without a result" in out.stdout, out.stdout
    assert re.search(rf"slurm {s.signalled_job} on \S+, requeued 1x, resumed after epoch \d+", out.stdout), out.stdout


@slurm
def test_two_arrays_over_one_folder_train_no_config_twice(cluster, tmp_path):
    """Two fishtune sweeps over one runs folder, submitted at once, each an array of the same 4 runs
    that runs one task at a time, so that the two arrays meet on the same runs: each run trains in one
    job only (its claim keeps the other array's job off it), and all four finish."""
    from fishtune.harness.results import load_results

    runs = tmp_path / "shared"
    env = {**_fishtune_env(), "FISHTUNE_SLURM_ARRAY_PARALLELISM": "1"}
    args = ("model=tiny_bert", f"data.glue_dir={GLUE}", "task=rte,mrpc", "mask=none,fish", "train.max_epochs=4",
            "train.patience=4", "train.batch_size=2", "fisher.samples=16")
    cmd = [sys.executable, "-m", "fishtune.run", "-m", "hydra/launcher=slurm", f"hydra.launcher.name={FISHTUNE_JOB_NAME}",
           *args, f"paths.runs_dir={runs}"]
    procs = {name: _start(cmd, tmp_path / name, env) for name in ("first", "second")}
    logs = {}
    for name, proc in procs.items():
        rc, logs[name] = _finish(proc, tmp_path / name, FT_TIMEOUT_S)
        assert rc == 0, logs[name]
    results = load_results(runs)
    assert sorted((r.task, r.mask) for r in results) == [("mrpc", "fish"), ("mrpc", "none"), ("rte", "fish"),
                                                                ("rte", "none")]
    # Which jobs trained, from their own logs (the epochs bar on stderr), not from what the claims say.
    sweeps = sorted(runs.glob("hydra/multirun_*"))
    assert len(sweeps) == 2
    trained = [log.parent.name for sweep in sweeps for log in sweep.glob(".submitit/*/*_log.err")
               if re.search(r"(rte|mrpc) epochs:", log.read_text())]
    assert len(trained) == 4, trained  # not 8
    assert sorted(trained) == sorted(_label(r.slurm) for r in results)
    # The other 4 jobs each left their run to the other array's job, or found it finished: each sweep says so
    # in one line at its end, and no job says a line per run it did not train.
    done = [re.search(r"fishtune: sweep done: 4 runs: (\d+) trained, (\d+) finished before, (\d+) failed, "
                      r"(\d+) left to other live sweeps", log) for log in logs.values()]
    assert all(done), logs
    trained, found, failed, left = (sum(int(d.group(i)) for d in done) for i in (1, 2, 3, 4))
    assert trained == 4 and failed == 0 and left + found == 4, (trained, found, left, logs)
    assert not [log for sweep in sweeps for log in sweep.glob(".submitit/*/*_log.out") if "skip," in log.read_text()]
    assert not list(runs.glob("*.claim*")) and not list(runs.glob("*.ckpt.pt"))


# ---- GPUs: one per run, and shared through Slurm's shards (stand-in GPUs) ------------------------

# 3 tiny fishtune runs of one epoch each; every job takes many seconds (Python, torch, the model), so
# jobs that Slurm starts together overlap.
GPU_ARGS = ("model=tiny_bert", f"data.glue_dir={GLUE}", "task=rte", "mask=none", "seed=1,2,3",
            "train.max_epochs=1", "train.patience=1")
GPU_SEEDS = (1, 2, 3)


@dataclass
class GpuSweep:
    runs_dir: Path
    rc: int
    log: str
    results: dict            # seed -> result file
    intervals: dict          # seed -> (StartTime, EndTime) of its Slurm job
    snapshots: list[list[tuple[str, str, str]]]  # squeue of the sweep's jobs, (job, state, reason), over time
    script: str              # the sbatch script


def _job_records(array: str) -> dict[str, dict]:
    """`scontrol show job` of each task of an array, by job id (finished jobs stay MinJobAge s)."""
    out = _scontrol_job(array)
    jobs = {}
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def _gpu_sweep(runs_dir: Path, **launcher: object) -> GpuSweep:
    """Runs the 3-run sweep with these launcher settings, watching the queue while it runs."""
    cmd = [sys.executable, "-m", "fishtune.run", "-m", "hydra/launcher=slurm",
           f"hydra.launcher.name={FISHTUNE_JOB_NAME}", *GPU_ARGS, f"paths.runs_dir={runs_dir}"]
    env = _env(TIMEOUT_MIN=30, **launcher)
    env.pop("OMP_NUM_THREADS", None)
    proc = _start(cmd, runs_dir, env)
    snapshots = []
    deadline = time.time() + FT_TIMEOUT_S
    while proc.poll() is None and time.time() < deadline:
        q = subprocess.run(["squeue", "-h", "-r", "-n", FISHTUNE_JOB_NAME, "-o", "%i %t %r"],
                           capture_output=True, text=True).stdout
        snapshots.append([tuple(line.split(None, 2)) for line in q.splitlines() if line.strip()])
        time.sleep(0.5)
    rc, log = _finish(proc, runs_dir, timeout=max(1.0, deadline - time.time()))
    from fishtune.harness.results import load_results

    results = {r.seed: r for r in load_results(runs_dir)}
    assert sorted(results) == list(GPU_SEEDS), log
    [array] = {r.slurm["array_job_id"] for r in results.values()}
    jobs = _job_records(array)
    parse = datetime.fromisoformat
    intervals = {seed: (parse(jobs[r.slurm["job_id"]]["StartTime"]), parse(jobs[r.slurm["job_id"]]["EndTime"]))
                 for seed, r in results.items()}
    script = next((_sweep_dir(runs_dir) / ".submitit").glob("*/*_submission.sh")).read_text()
    return GpuSweep(runs_dir, rc, log, results, intervals, snapshots, script)


def _overlap(*spans) -> bool:
    """All these (start, end) intervals share some time."""
    return max(a for a, _ in spans) < min(b for _, b in spans)


@slurm
def test_one_gpu_per_run(slurm_session, tmp_path):
    """A 2-GPU node, FISHTUNE_SLURM_GPUS_PER_TASK=1 and 3 runs: two run at once, each on its own GPU;
    the third waits for a GPU (pending with reason Resources, though CPUs and memory are free) and
    runs on the GPU that was given back first. Every result file records its GPU."""
    _node("--gpus", "2")
    s = _gpu_sweep(tmp_path / "gpu", GPUS_PER_TASK=1)
    assert s.rc == 0, s.log
    assert "--gpus-per-task=1" in s.script and "--gres" not in s.script, s.script
    gpu = {seed: r.slurm["cuda_visible_devices"] for seed, r in s.results.items()}
    assert set(gpu.values()) == {"0", "1"}, s.results
    for r in s.results.values():
        assert r.slurm["job_gpus"] == r.slurm["cuda_visible_devices"]  # no cgroup renumbering here
        assert "shards_on_node" not in r.slurm and r.device == "cpu"  # stand-ins: no CUDA
    first, second, third = sorted(GPU_SEEDS, key=lambda seed: s.intervals[seed][0])
    span = s.intervals
    assert _overlap(span[first], span[second]) and gpu[first] != gpu[second], (span, gpu)
    # the third started only once one of the others had ended, and on that one's GPU
    freed = min((first, second), key=lambda seed: span[seed][1])
    assert span[third][0] >= span[freed][1], span
    for a in GPU_SEEDS:  # never two runs on one GPU at the same time
        for b in GPU_SEEDS:
            if a < b and gpu[a] == gpu[b]:
                assert not _overlap(span[a], span[b]), (span, gpu)
    assert any(sorted(st for _, st, _ in snap) == ["PD", "R", "R"] and
               any(st == "PD" and "Resources" in why for _, st, why in snap) for snap in s.snapshots), s.snapshots
    out = _summary(s.runs_dir)
    assert out.returncode == 0 and "3 finished" in out.stdout, out.stdout + out.stderr
    assert ", GPU 0" in out.stdout and ", GPU 1" in out.stdout, out.stdout


@slurm
def test_runs_share_a_gpu_through_shards(slurm_session, tmp_path):
    """1 GPU x 4 shards, FISHTUNE_SLURM_GRES=shard:1 and 3 runs: all three run at once, on GPU 0."""
    _node("--gpus", "1", "--shards", "4")
    s = _gpu_sweep(tmp_path / "shard", GRES="shard:1")
    assert s.rc == 0, s.log
    assert "--gres=shard:1" in s.script and "--gpus-per-task" not in s.script, s.script
    for r in s.results.values():
        assert r.slurm["cuda_visible_devices"] == "0" and r.slurm["job_gpus"] == "0", r.slurm
        assert r.slurm["shards_on_node"] == "1", r.slurm
    assert _overlap(*s.intervals.values()), s.intervals
    assert any(sorted(st for _, st, _ in snap) == ["R", "R", "R"] for snap in s.snapshots), s.snapshots
    out = _summary(s.runs_dir)
    assert out.returncode == 0 and out.stdout.count(", GPU 0, 1 shard") == 3, out.stdout + out.stderr


# ---- fishtune.sweep_summary without a cluster (runs in `make test`) ------------------------------

def _fake_result(runs_dir: Path, run_id: str, **over) -> None:
    from results_factory import write_result

    write_result(runs_dir, **{**dict(run_id=run_id, task="rte", mask="none", history=[{"epoch": 1}, {"epoch": 2}],
                                     best={"epoch": 2, "score": 61.25}, host="node7", train_seconds=None,
                                     samples_per_second=None), **over})


def test_sweep_summary_lists_finished_failed_and_jobs_without_result(tmp_path, monkeypatch, capsys):
    from submitit.helpers import DelayedSubmission

    from fishtune.reports import sweep_summary

    _fake_result(tmp_path, "a-none")
    _fake_result(tmp_path, "b-fish", mask="fish", resumed_from_epoch=3,
                 slurm={"job_id": "12", "array_job_id": "7", "array_task_id": "1", "restart_count": "1"},
                 train_seconds=41.6, precision="bf16", samples_per_second=48.1, tokens_per_second=1210.4,
                 peak_memory_mb=812.3, threads=1)
    from results_factory import write_failure

    write_failure(tmp_path / "b-fish.failed.json", error="old")  # finished later: not listed
    write_failure(tmp_path / "c-fish.failed.json", error="ValueError: batch_size=0", host="node8",
                  slurm={"job_id": "13", "array_job_id": "7", "array_task_id": "2"})
    # hydra-submitit-launcher's folders: the array's own (script only), one job that returned, one without
    sub = tmp_path / "hydra" / "multirun_x" / ".submitit"
    for job in ("7", "7_0", "7_3"):
        (sub / job).mkdir(parents=True)
    (sub / "7" / "7_submission.sh").write_text("#!/bin/bash\n")
    for job in ("7_0", "7_3"):
        DelayedSubmission(print, ["task=mrpc", "mask=fish"], "hydra.sweep.dir", 3, "job_id_for_3", {}).dump(
            sub / job / f"{job}_submitted.pkl")
    (sub / "7_0" / "7_0_0_result.pkl").write_bytes(b"")

    monkeypatch.setattr(sweep_summary, "_queue_states", lambda: {})  # squeue answers; 7_3 is not queued
    s = sweep_summary.summarize(tmp_path)
    assert [r["run_id"] for r in s["finished"]] == ["a-none", "b-fish"]
    assert [r["run_id"] for r in s["failed"]] == ["c-fish"]
    assert [(j["job"], j["state"], j["overrides"]) for j in s["without_result"]] == [
        ("7_3", "ended without a result", ["task=mrpc", "mask=fish"])]
    assert not s["ok"]
    assert sweep_summary.main([str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert text.startswith(f"sweep summary of {tmp_path}: 2 finished, 1 failed, 1 without a result, 0 in progress\n")
    assert "  a-none  score 61.25 (best epoch 2 of 2, max_epochs)  on node7\n" in text
    assert "  b-fish  score 61.25 (best epoch 2 of 2, max_epochs)  slurm 7_1 on node7, requeued 1x, " \
           "resumed after epoch 3\n    42 s training, bf16, 48.1 samples/s, 1210 tokens/s, peak 812 MB, 1 threads\n" in text
    assert "  c-fish  slurm 7_2 on node8\n    error: ValueError: batch_size=0\n" in text
    assert "  7_3  ended without a result\n    overrides: task=mrpc mask=fish\n    log: " in text

    monkeypatch.setattr(sweep_summary, "_queue_states", lambda: {"7_3": "RUNNING"})
    assert sweep_summary.summarize(tmp_path)["without_result"][0]["state"] == "running"
    monkeypatch.setattr(sweep_summary, "_queue_states", lambda: None)  # no Slurm here
    assert sweep_summary.summarize(tmp_path)["without_result"][0]["state"].startswith("unknown")
    assert sweep_summary.main([str(tmp_path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["failed"][0]["error"] == "ValueError: batch_size=0"


def test_sweep_summary_exit_status(tmp_path, capsys):
    from fishtune.reports import sweep_summary

    _fake_result(tmp_path, "a-none")
    assert sweep_summary.main([str(tmp_path)]) == 0
    assert "1 finished, 0 failed, 0 without a result" in capsys.readouterr().out
    assert sweep_summary.main([str(tmp_path / "nowhere")]) == 2


def test_slurm_record_keeps_the_gpu_the_run_saw(monkeypatch, tmp_path, capsys):
    from fishtune.reports import sweep_summary
    from fishtune.harness.run import slurm_ids

    for k in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert slurm_ids() is None  # outside Slurm: no record, whatever GPU is visible
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_JOB_GPUS", "3")
    monkeypatch.setenv("SLURM_SHARDS_ON_NODE", "1")
    ids = slurm_ids()
    assert {k: ids[k] for k in ("job_id", "job_gpus", "shards_on_node", "cuda_visible_devices")} == {
        "job_id": "12", "job_gpus": "3", "shards_on_node": "1", "cuda_visible_devices": "3"}
    import torch

    assert ("gpu_name" in ids) == torch.cuda.is_available()
    _fake_result(tmp_path, "a-none", slurm={**ids, "gpu_name": "NVIDIA H100 80GB HBM3"})
    _fake_result(tmp_path, "b-none", seed=2, slurm={"job_id": "13", "cuda_visible_devices": "1"})  # another computation
    assert sweep_summary.main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "slurm 12 on node7, GPU 3 (NVIDIA H100 80GB HBM3), 1 shard\n" in text, text
    assert "slurm 13 on node7, GPU 1\n" in text, text
