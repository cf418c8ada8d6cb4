"""Sweeps that share a runs folder share its runs (fishtune/harness/claims.py): two sweeps started at
once train each run once and leave the files one sweep leaves; a sweep killed with SIGKILL mid-run
leaves a claim that is taken over (after the timeout from another host, at once where its pid is
visibly dead) and the run finishes from its checkpoint; nothing finished is retrained or lost.

The sweeps are real processes (tests/claims_app.py: `python -m fishtune.run` that logs each training it
starts, so trainings are counted from outside the code under test); the rules of a claim are checked
on claim files written by hand."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import GLUE_FIXTURES, ROOT, run_config
from fishtune.harness import claims
from fishtune.harness.results import RunResult, load_results

APP = ROOT / "tests" / "claims_app.py"
QUICK = ["model=tiny_bert", "task=rte", "budget=1", "train.max_epochs=1", "fisher.samples=8", "data.train_samples=24",
         "data.dev_samples=12"]
SWEEP = ["mask=fish,rand", "seed=1,2,3"]  # 6 runs
# What two runs of one config share: everything the seed determines (timings and where it ran differ).
SAME = ("run_id", "config_hash", "trainable", "placement", "history", "best", "stop_reason", "dev_predictions",
        "zero_fisher_filled", "resumed_from_epoch")


def _start(runs: Path, log: Path, *overrides: str, **env: str) -> subprocess.Popen:
    cmd = [sys.executable, str(APP), "-m", f"data.glue_dir={GLUE_FIXTURES}", f"paths.runs_dir={runs}", *QUICK,
           *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                         "CLAIMS_APP_LOG": str(log), **env})


def _trainings(log: Path) -> list[tuple[int, str]]:
    return [(int(pid), run) for pid, run in (line.split() for line in log.read_text().splitlines())] \
        if log.exists() else []


def _same(result: dict | RunResult) -> dict:
    """The fields two runs of one config share, of a run's returned dict or a loaded RunResult."""
    return {k: result.get(k) if isinstance(result, dict) else getattr(result, k) for k in SAME}


def _reference(tmp_path: Path, *overrides: str) -> dict:
    """run_id -> result of each config run in this process, one after the other: one sweep's files."""
    from fishtune.harness.run import run

    out = {}
    for mask in ("fish", "rand"):
        for seed in (1, 2, 3):
            r = run(run_config(tmp_path / "reference", *QUICK, f"mask={mask}", f"seed={seed}", *overrides),
                    progress=False)
            out[r["run_id"]] = r
    return out


def test_two_sweeps_started_at_once_train_each_run_once(tmp_path):
    runs, log = tmp_path / "runs", tmp_path / "trainings.log"
    sweeps = [_start(runs, log, *SWEEP) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in sweeps]
    for p, (out, err) in zip(sweeps, outs):
        assert p.returncode == 0, err[-3000:]

    trainings = _trainings(log)
    assert len(trainings) == 6 and len({run for _, run in trainings}) == 6, trainings  # not 12
    results = {r.run_id: r for r in load_results(runs)}
    reference = _reference(tmp_path)
    assert sorted(results) == sorted(reference) and {run for _, run in trainings} == set(reference)
    for run_id, r in results.items():
        assert _same(r) == _same(reference[run_id]), run_id
    assert not list(runs.glob("*.claim*")) and not list(runs.glob("*.ckpt.pt"))
    assert len(list(runs.glob("hydra/multirun_*"))) == 2  # one Hydra folder each, though started together

    # Each sweep trained its share, left runs another sweep had claimed, found the rest finished, and said so
    # in one line at its end (no line per run it did not train), naming the runs it left.
    for p, (out, err) in zip(sweeps, outs):
        mine = sum(pid == p.pid for pid, _ in trainings)
        [done] = [line for line in out.splitlines() if line.startswith("fishtune: sweep done: ")]
        trained, found, failed, left = map(int, re.fullmatch(
            r"fishtune: sweep done: 6 runs: (\d+) trained, (\d+) finished before, (\d+) failed, "
            r"(\d+) left to other live sweeps", done).groups())
        assert trained == mine and failed == 0 and mine + left + found == 6, out
        assert "skip," not in out + err and out.count(": best rte score ") == mine, out
        named = [line for line in out.splitlines() if re.fullmatch(r"  \S+\.json: .+, heartbeat \d+ s ago", line)]
        assert len(named) == left, out


def test_a_sigkilled_sweep_leaves_a_claim_taken_over_after_the_timeout(tmp_path, capsys):
    from fishtune.harness.run import run

    runs, log, hang = tmp_path / "runs", tmp_path / "trainings.log", tmp_path / "hang"
    epochs = ["train.max_epochs=3", "train.patience=3", "mask=fish", "seed=1"]
    sweep = _start(runs, log, *epochs, CLAIMS_APP_HANG=str(hang))
    deadline = time.time() + 240
    while not hang.exists() and sweep.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert hang.exists(), sweep.communicate(timeout=10)[1][-3000:] if sweep.poll() is not None else "no checkpoint"
    os.killpg(sweep.pid, signal.SIGKILL)  # mid-run: after epoch 1 of 3, its checkpoint on disk
    sweep.wait()
    [result_file] = [p.with_name(p.name.removesuffix(".ckpt.pt") + ".json") for p in runs.glob("*.ckpt.pt")]
    claim = claims.claim_path(result_file)
    owner = json.loads(claim.read_text())
    assert owner["pid"] == sweep.pid and owner["host"] == socket.gethostname() and not result_file.exists()

    # As if the killed sweep had run on another node: there its pid says nothing, only its heartbeat does.
    claim.write_text(json.dumps({**owner, "host": "node-elsewhere"}))
    cfg = run_config(runs, *QUICK, *epochs)
    with pytest.raises(claims.ClaimedElsewhere, match="claimed by pid .* on node-elsewhere"):
        run(cfg, progress=False)  # within claim.timeout_s (600 s) of its last heartbeat: left to its owner
    assert claim.exists() and not result_file.exists()

    old = time.time() - 601
    os.utime(claim, (old, old))  # the timeout has passed without a heartbeat
    capsys.readouterr()
    result = run(cfg, progress=False)
    err = capsys.readouterr().err
    assert f"fishtune: took over the claim on {claim.name} from pid {sweep.pid} on node-elsewhere" in err, err
    assert "no heartbeat for 60" in err, err
    # It finished from the killed sweep's checkpoint, with the result of a run never interrupted.
    assert result["resumed_from_epoch"] == 1 and [h["epoch"] for h in result["history"]] == [1, 2, 3]
    reference = run(run_config(tmp_path / "reference", *QUICK, *epochs), progress=False)
    assert reference["resumed_from_epoch"] is None
    assert {**_same(result), "resumed_from_epoch": None} == _same(reference)
    assert not claim.exists() and not result_file.with_suffix(".ckpt.pt").exists()
    assert len(_trainings(log)) == 1  # the killed sweep started it once; the rest was this process's


# ---- the rules of a claim, on claim files written by hand ----------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: no such process any more
    return proc.pid


def _write_claim(result: Path, age_s: float = 0.0, **owner) -> Path:
    path = claims.claim_path(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"run_id": result.stem, "host": socket.gethostname(), "pid": os.getpid(), "slurm": None,
              "started_at": "2026-01-01T00:00:00+00:00", "timeout_s": 600, "heartbeat_s": 60, "token": "t", **owner}
    path.write_text(json.dumps(record))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_a_dead_pid_on_this_host_is_taken_over_at_once(tmp_path, capsys):
    result = tmp_path / "run.json"
    dead = _dead_pid()
    _write_claim(result, pid=dead)  # a heartbeat just now: only the pid says the owner is gone
    claim = claims.acquire(result, timeout_s=600, heartbeat_s=60)
    assert isinstance(claim, claims.Claim) and claim.took_over.endswith(f"pid {dead} no longer runs on "
                                                                       f"{socket.gethostname()}")
    assert f"fishtune: took over the claim on run.claim from pid {dead} on " in capsys.readouterr().err
    assert json.loads(claim.path.read_text())["pid"] == os.getpid()
    claim.release()
    assert not claim.path.exists()


@pytest.mark.parametrize("owner,age_s,busy", [
    ({}, 0, True),                                      # this very process, alive, heartbeat fresh
    ({}, 601, False),                                   # alive, but no heartbeat past the timeout
    ({"host": "node-elsewhere", "pid": 1}, 599, True),  # another host: only the heartbeat counts
    ({"host": "node-elsewhere", "pid": 1}, 601, False),
])
def test_live_owners_keep_their_claims_and_silent_ones_lose_them(tmp_path, owner, age_s, busy):
    result = tmp_path / "run.json"
    before = _write_claim(result, age_s, **owner).read_bytes()
    got = claims.acquire(result, timeout_s=600, heartbeat_s=60)
    assert isinstance(got, claims.Busy) == busy
    if busy:
        assert claims.claim_path(result).read_bytes() == before and got.owner["token"] == "t"
    else:
        assert "no heartbeat for 60" in got.took_over


def test_a_requeued_slurm_job_takes_back_its_own_claim(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "812")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "800")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    job = {"job_id": "812", "array_job_id": "800", "array_task_id": "3"}
    result = tmp_path / "run.json"
    # its first attempt, on another node, a heartbeat a moment ago: taken back at once
    _write_claim(result, host="node-elsewhere", pid=1, slurm=job)
    claim = claims.acquire(result, timeout_s=600, heartbeat_s=60)
    assert isinstance(claim, claims.Claim) and claim.took_over.endswith("its own Slurm job 800_3, requeued")
    assert json.loads(claim.path.read_text())["slurm"] == {**job, "restart_count": "1"}
    claim.release()
    # another task of the array, or another process of this same job that still runs here: theirs
    for owner in ({"host": "node-elsewhere", "pid": 1, "slurm": {**job, "array_task_id": "4"}}, {"slurm": job}):
        _write_claim(result, **owner)
        assert isinstance(claims.acquire(result, timeout_s=600, heartbeat_s=60), claims.Busy)


def test_an_unreadable_claim_waits_for_the_timeout(tmp_path):
    result = tmp_path / "run.json"
    path = _write_claim(result)
    path.write_text("")  # its writer is between the create and the write, or died there
    assert isinstance(claims.acquire(result, timeout_s=600, heartbeat_s=60), claims.Busy)
    os.utime(path, (time.time() - 601,) * 2)
    assert isinstance(claims.acquire(result, timeout_s=600, heartbeat_s=60), claims.Claim)


def test_a_stale_claim_is_taken_over_by_exactly_one_of_many(tmp_path):
    """Eight takers at once, twenty times over (a stale claim by timeout, then one by a dead pid): exactly
    one ends up holding the run, and no takeover file or half-made claim is left behind."""
    result = tmp_path / "run.json"
    for round_ in range(20):
        _write_claim(result, pid=_dead_pid() if round_ % 2 else os.getpid(), age_s=0 if round_ % 2 else 601)
        start, got = threading.Barrier(8), []

        def take():
            start.wait()
            got.append(claims.acquire(result, timeout_s=600, heartbeat_s=60))
        threads = [threading.Thread(target=take) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [c for c in got if isinstance(c, claims.Claim)]
        assert len(winners) == 1, round_
        assert claims.claim_path(result).read_bytes() == winners[0].data
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run.claim"]
        winners[0].release()


def test_heartbeats_refresh_the_claim_and_a_lost_claim_is_said_and_never_removed(tmp_path, capsys):
    result = tmp_path / "run.json"
    claim = claims.acquire(result, timeout_s=1, heartbeat_s=0.05)
    old = time.time() - 100
    os.utime(claim.path, (old, old))
    with claim:  # the daemon thread beats every 0.05 s
        deadline = time.time() + 30
        while claim.path.stat().st_mtime < old + 50 and time.time() < deadline:
            time.sleep(0.02)
        assert claim.path.stat().st_mtime > old + 50
    assert not claim.path.exists()  # released at the end of the block

    claim = claims.acquire(result, timeout_s=600, heartbeat_s=60)
    other = _write_claim(result, host="node-elsewhere", token="theirs")  # taken over while we looked away
    assert claim.beat() is False and "fishtune: warning: lost the claim on run.claim" in capsys.readouterr().err
    claim.release()
    assert json.loads(other.read_text())["token"] == "theirs"  # theirs, left alone


# ---- runs: nothing finished is retrained or lost ------------------------------------------------------

def test_a_finished_run_is_never_retrained_whatever_claim_lies_beside_it(tmp_path, monkeypatch):
    from fishtune.harness import run as run_module

    cfg = run_config(tmp_path, *QUICK, "mask=rand")
    first = run_module.run(cfg, progress=False)
    path = run_module.plan(cfg).path
    data = path.read_bytes()
    monkeypatch.setattr(run_module, "execute", lambda *a, **k: pytest.fail("a finished run trained again"))
    for owner in ({"pid": _dead_pid()}, {"host": "node-elsewhere"}):
        _write_claim(path, **owner)
        assert run_module.run(cfg, progress=False) == first and path.read_bytes() == data

    # Finished by another sweep between this one's look and its claim: found after the claim, not redone.
    other = run_config(tmp_path / "other", *QUICK, "mask=rand")
    other_path = run_module.plan(other).path
    acquire = claims.acquire

    def finished_meanwhile(result, *args):
        got = acquire(result, *args)
        other_path.write_bytes(data)
        return got
    monkeypatch.setattr(claims, "acquire", finished_meanwhile)
    assert run_module.run(other, progress=False) == first
    assert not claims.claim_path(other_path).exists()


def test_a_run_holds_its_claim_while_it_trains_and_drops_it_when_it_fails(tmp_path, monkeypatch):
    from fishtune.harness import run as run_module
    from fishtune.harness.results import Diverged

    seen = {}
    execute = run_module.execute

    def watched(p, *args, **kwargs):
        seen[p.config["claim"]["enabled"]] = claims.claim_path(p.path).exists()
        return execute(p, *args, **kwargs)
    monkeypatch.setattr(run_module, "execute", watched)
    for enabled in ("true", "false"):
        run_module.run(run_config(tmp_path / enabled, *QUICK, "mask=rand", f"claim.enabled={enabled}"), progress=False)
    assert seen == {True: True, False: False}
    diverging = run_config(tmp_path / "diverged", *QUICK, "mask=rand", "train.lr=1e12")
    with pytest.raises(Diverged):
        run_module.run(diverging, progress=False)
    assert not list((tmp_path / "diverged").glob("*.claim"))


# ---- the summaries show runs in progress with their owner -------------------------------------------

def test_sweep_summary_and_the_page_show_runs_in_progress_with_their_owner(tmp_path, monkeypatch):
    import re

    from fishtune.reports.report import build_page
    from fishtune.reports.sweep_summary import format_summary, summarize

    runs = tmp_path / "runs"
    monkeypatch.setenv("SLURM_JOB_ID", "812")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "800")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    live = claims.acquire(runs / "a-live.json", timeout_s=600, heartbeat_s=60)
    dead = _dead_pid()
    _write_claim(runs / "b-gone.json", pid=dead)
    _write_claim(runs / "c-done.json")
    (runs / "c-done.json").write_text("{}")  # a finished run's file: its claim is no run in progress

    s = summarize(runs)
    progress = {r["run_id"]: r for r in s["in_progress"]}
    assert sorted(progress) == ["a-live", "b-gone"] and not s["ok"]
    assert progress["a-live"]["state"] == "live" and progress["a-live"]["pid"] == os.getpid()
    assert progress["a-live"]["slurm"] == "800_3" and progress["a-live"]["host"] == socket.gethostname()
    assert progress["b-gone"]["state"] == f"stale: pid {dead} no longer runs on {socket.gethostname()}"
    text = format_summary(s)
    assert ", 2 in progress" in text.splitlines()[0]
    assert re.search(rf"  a-live  live: pid {os.getpid()} on \S+, slurm 800_3, since \S+, heartbeat \d+ s ago", text), text
    assert f"  b-gone  stale: pid {dead} no longer runs" in text, text

    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>',
                                build_page(runs), re.S).group(1))
    view = next(v for v in data["views"] if v["id"] == "in_progress")
    assert [(r["run_id"], r["owner"].split(",")[0]) for r in view["rows"]] == \
        [("a-live", f"pid {os.getpid()} on {socket.gethostname()}"), ("b-gone", f"pid {dead} on {socket.gethostname()}")]
    live.release()
    assert [r["run_id"] for r in summarize(runs)["in_progress"]] == ["b-gone"]
