"""One computation, one result, on a shared cluster (issue 40).

Several users and sweeps share one runs folder: each reads the others' results and never takes a file it
may not read for a damaged one; a claim is the right to write (an owner that lost it writes nothing);
concurrent writers never share a temporary file; a restarted container's old claim is told from a live
owner; a checkpoint that is not the run's is set aside; SIGTERM, a killed parallel launcher and a full
disk each end in one line, leaving no claim and no temporary file behind.

The processes under test are real (`python -m fishtune.run`, stopped and killed from here); the second
user is this root process with another effective uid (os.seteuid), so that the kernel checks every file
access as that user's.
"""
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch

from conftest import GLUE_FIXTURES, ROOT, run_config
from fishtune.harness import claims
from fishtune.harness.results import (NoSpace, Unreadable, load_failures, load_results, mask_path,
                                      save_mask_file, write_atomic, write_json_atomic)

QUICK = ["model=tiny_bert", "task=rte", "budget=1", "train.max_epochs=1", "fisher.samples=8", "data.train_samples=24",
         "data.dev_samples=12", "mask=rand"]
LONG = ["train.max_epochs=300", "train.patience=300"]   # a run that trains until it is stopped
# What two runs of one config share: everything the seed determines.
SAME = ("run_id", "config_hash", "trainable", "placement", "history", "best", "stop_reason", "dev_predictions")
needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                reason="needs root: a second user (seteuid), a tmpfs mount")


def _start(runs: Path, *overrides: str, env: dict | None = None, multirun: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fishtune.run", *(["-m"] if multirun else []), f"data.glue_dir={GLUE_FIXTURES}",
           f"paths.runs_dir={runs}", *QUICK, *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})})


def _wait_for(what, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not what():
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} early: {proc.communicate()[1][-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out: {proc.communicate()[1][-3000:]}")
        time.sleep(0.1)


def _leftovers(runs: Path) -> list[str]:
    """Claims and temporary files: what no process may leave behind."""
    return sorted(p.name for p in runs.iterdir() if p.name.endswith((".tmp", ".claim")) or ".takeover-" in p.name)


def _fishtune_lines(text: str) -> list[str]:
    return re.findall(r"fishtune: .*", text)


def _same(result: dict) -> dict:
    return {k: result.get(k) for k in SAME}


# ---- two users over one folder ------------------------------------------------------------------------

@contextlib.contextmanager
def _user(uid: int, gid: int, umask: int):
    """This process as another user (effective ids; no supplementary groups) with its own umask."""
    groups, old_umask = os.getgroups(), os.umask(umask)
    os.setgroups([])
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)
        os.umask(old_umask)


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@needs_root
def test_two_users_read_each_others_results_and_nothing_is_renamed_or_retrained(monkeypatch, capsys):
    from fishtune.harness import train as train_module
    from fishtune.harness.run import plan, run

    try:
        other = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user `nobody` to be the second user")
    folder = Path(tempfile.mkdtemp(prefix="fishtune-shared-", dir="/tmp"))
    os.chmod(folder, 0o2777)   # a shared folder (group-setgid; here world-writable, as nobody is in no group of ours)
    trained = []
    real_train = train_module.train

    def counted(*args, checkpoint=None, **kwargs):
        trained.append(checkpoint.name.removesuffix(".ckpt.pt"))
        return real_train(*args, checkpoint=checkpoint, **kwargs)
    monkeypatch.setattr(train_module, "train", counted)
    try:
        cfg = {seed: run_config(folder, *QUICK, f"seed={seed}") for seed in (1, 2, 3)}
        path = {seed: plan(c).path for seed, c in cfg.items()}
        with _umask(0o022):
            first = run(cfg[1], progress=False)
        with _umask(0o077):   # a private umask: this result is root's alone
            run(cfg[2], progress=False)
        assert [p.stat().st_mode & 0o777 for p in (path[1], mask_path(path[1]), path[2])] == \
            [0o644, 0o644, 0o600]
        before = {seed: path[seed].read_bytes() for seed in (1, 2)}

        capsys.readouterr()
        with _user(other.pw_uid, other.pw_gid, 0o002):
            assert run(cfg[1], progress=False) == first   # root's result, read as it is
            with pytest.raises(Unreadable) as e:
                run(cfg[2], progress=False)
            third = run(cfg[3], progress=False)
            unreadable = []
            seen = sorted(r.seed for r in load_results(folder, unreadable))
        assert str(e.value) == f"cannot read {path[2]}: permission denied (owned by root); the run is left alone"
        assert seen == [1, 3] and unreadable == [f"{path[2]}: permission denied (owned by root)"]
        assert capsys.readouterr().out == ""   # root's finished run found quietly, nobody's trained without a word
        assert path[3].stat().st_uid == other.pw_uid and path[3].stat().st_mode & 0o777 == 0o664   # its umask's

        assert run(cfg[3], progress=False) == third   # and root reads nobody's
        assert trained == [path[1].stem, path[2].stem, path[3].stem]   # each run trained once
        assert {seed: path[seed].read_bytes() for seed in (1, 2)} == before

        # Root's private run unfinished (its result gone): its mask file is root's too, and left alone.
        path[2].unlink()
        mask = mask_path(path[2])
        with _user(other.pw_uid, other.pw_gid, 0o002), pytest.raises(Unreadable, match=re.escape(
                f"cannot read {mask}: permission denied (owned by root)")):
            run(cfg[2], progress=False)
        assert mask.stat().st_uid == 0 and len(trained) == 3
        assert not list(folder.rglob("*.damaged")) and not _leftovers(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_sweep_counts_the_runs_it_left_alone_as_not_ours(tmp_path, capsys):
    from omegaconf import OmegaConf

    from fishtune.harness.run import SweepJob, SweepEnd

    for job, (run_id, owner) in enumerate((("a", "alice"), ("b", "bob"))):
        SweepJob(tmp_path, tmp_path / str(job)).note("not_ours", run=str(tmp_path / f"{run_id}.json"), owner=owner)
    SweepJob(tmp_path, tmp_path / "2").note("finished", run=str(tmp_path / "c.json"))
    SweepEnd().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    out = capsys.readouterr().out
    assert "fishtune: sweep done: 3 runs: 0 trained, 1 finished before, 0 failed, 0 left to other live sweeps, " \
           "2 not ours\n" in out
    assert "fishtune: 2 runs not ours: another user's file this user may not read (left alone):\n" \
           "  a.json: owned by alice\n  b.json: owned by bob\n" in out


def test_files_follow_the_umask():
    with tempfile.TemporaryDirectory() as d, _umask(0o002):
        write_json_atomic(Path(d) / "r.json", {"a": 1})
        claim = claims.acquire(Path(d) / "r.json", timeout_s=600, heartbeat_s=60)
        assert (Path(d) / "r.json").stat().st_mode & 0o777 == 0o664 and claim.path.stat().st_mode & 0o777 == 0o664
        claim.release()


# ---- a claim is the right to write -------------------------------------------------------------------

def test_an_owner_stopped_past_its_timeout_writes_nothing_after_it_continues(tmp_path):
    runs = tmp_path / "runs"
    proc = _start(runs, *LONG, "claim.timeout_s=3", "claim.heartbeat_s=0.5")
    _wait_for(lambda: list(runs.glob("*.ckpt.pt")), proc)   # mid-run: its first epoch's checkpoint written
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        [checkpoint] = runs.glob("*.ckpt.pt")
        result = checkpoint.with_name(checkpoint.name.removesuffix(".ckpt.pt") + ".json")
        saved = checkpoint.read_bytes()
        time.sleep(3.5)   # no heartbeat for longer than its timeout: another sweep takes the run over
        ours = claims.acquire(result, timeout_s=3, heartbeat_s=60)
        assert isinstance(ours, claims.Claim) and "no heartbeat for" in ours.took_over
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    lines = _fishtune_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"fishtune: warning: lost the claim on {ours.path.name}") \
        and lines[0].endswith("this process stops the run and writes nothing for it"), err[-3000:]
    assert "Traceback" not in err
    # Nothing written after it continued: no result, the checkpoint as it was, the claim the taker's.
    assert not result.exists() and checkpoint.read_bytes() == saved and ours.path.read_bytes() == ours.data
    assert not list(runs.glob("*.interrupted.json")) and not list(runs.glob("*.failed.json"))
    assert _leftovers(runs) == [ours.path.name]
    ours.release()


def test_600_concurrent_checkpoint_saves_to_one_path(tmp_path):
    from fishtune.harness.train import load_checkpoint, save_checkpoint

    path = tmp_path / "run.ckpt.pt"
    errors, start = [], threading.Barrier(12)

    def save(writer: int) -> None:
        start.wait()
        for i in range(50):
            try:
                save_checkpoint(path, {"epoch": writer * 100 + i, "trainable": {"w": torch.full((64,), float(i))},
                                       "optimizer": {}, "result": None})
            except Exception as e:  # noqa: BLE001 - every error counts
                errors.append(repr(e))
    threads = [threading.Thread(target=save, args=(w,)) for w in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    state = load_checkpoint(path)   # whole: one writer's file, never a torn mix
    assert state["run"] == path.name and state["epoch"] % 100 < 50
    assert torch.equal(state["trainable"]["w"], torch.full((64,), float(state["epoch"] % 100)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_write_stopped_before_its_rename_leaves_nothing(tmp_path):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"v": 1})

    class Stop(BaseException):
        pass

    def lost():
        raise Stop
    with pytest.raises(Stop):   # a lost claim, or a signal's exception, just before the rename
        write_json_atomic(target, {"v": 2}, guard=lost)
    assert json.loads(target.read_text()) == {"v": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_signal_the_moment_the_temporary_file_is_made_leaves_nothing(tmp_path, monkeypatch):
    """The race a killed sweep's worker once hit: its signal's exception raised right after the temporary
    file was created, before the writer knew the file's name (mkstemp), so nothing removed it."""
    from fishtune.harness.signals import Interrupted
    from fishtune.harness.train import save_checkpoint
    real_open = os.open

    def open_then_signal(path, flags, *args, **kw):
        fd = real_open(path, flags, *args, **kw)
        if str(path).endswith(".tmp"):
            os.close(fd)
            raise Interrupted(signal.SIGTERM)
        return fd
    monkeypatch.setattr(os, "open", open_then_signal)
    for write, name in ((lambda p: write_json_atomic(p, {"v": 1}), "r.json"),
                        (lambda p: save_checkpoint(p, {"w": torch.zeros(4)}), "r.ckpt.pt")):
        with pytest.raises(Interrupted):
            write(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_of_killed_writers_are_removed_by_the_next_owner(tmp_path):
    result = tmp_path / "run.json"
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = [tmp_path / f".run.json.{dead.pid}@{host}.a1b2c3.tmp",             # its writer is gone
            tmp_path / f".run.mask.safetensors.{dead.pid}@{host}.b2c3.tmp",   # its mask's, the same
            tmp_path / f".run.ckpt.pt.{os.getpid()}@node-elsewhere.d4e5.tmp",   # old: past the timeout
            tmp_path / "run.ckpt.pt.tmp"]                                       # an older harness's fixed name
    live = tmp_path / f".run.ckpt.pt.{os.getpid()}@{host}.f6g7.tmp"             # a live writer's, fresh
    for p in (*left, live):
        p.write_bytes(b"x")
    for p in left[1:]:
        os.utime(p, (time.time() - 700,) * 2)
    assert sorted(claims.remove_abandoned_temps(result, timeout_s=600)) == sorted(left)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]


# ---- a restarted container's old claim -----------------------------------------------------------------

def _claim_file(result: Path, **owner) -> Path:
    path = claims.claim_path(result)
    record = {"run_id": result.stem, "host": socket.gethostname(), "pid": os.getpid(), "slurm": None,
              "started_at": "2026-01-01T00:00:00+00:00", "timeout_s": 600, "heartbeat_s": 60, "token": "t",
              "boot_id": claims.boot_id(), "start_time": claims.process_start_time(os.getpid()), **owner}
    path.write_text(json.dumps(record))   # a heartbeat just now
    return path


@pytest.mark.skipif(claims.boot_id() is None, reason="no /proc: pids cannot be told apart")
@pytest.mark.parametrize("then,why", [
    ({}, None),                                                  # this very process: a live owner
    ({"start_time": "1"}, f"pid {os.getpid()} on {socket.gethostname()} is another process now"),
    ({"boot_id": "0" * 36}, f"{socket.gethostname()} has booted since"),
])
def test_a_restarted_containers_claim_is_taken_over(tmp_path, then, why):
    """Same host name and pid (a restarted container numbers its processes alike), a fresh heartbeat:
    only the start time or the boot id in the claim tells that its owner is gone."""
    result = tmp_path / "run.json"
    _claim_file(result, **then)
    got = claims.acquire(result, timeout_s=600, heartbeat_s=60)
    if why is None:
        assert isinstance(got, claims.Busy)
    else:
        assert isinstance(got, claims.Claim) and got.took_over.split(": ", 1)[1].startswith(why), got.took_over
        assert json.loads(got.path.read_text())["start_time"] == claims.process_start_time(os.getpid())
        got.release()


# ---- a checkpoint that is not the run's ---------------------------------------------------------------

def test_a_checkpoint_that_does_not_fit_the_run_is_set_aside_and_the_run_starts_fresh(tmp_path, monkeypatch, capsys):
    from fishtune.harness import train as train_module
    from fishtune.harness.run import plan, run

    kept = tmp_path / "kept.pt"
    real_save = train_module.save_checkpoint

    def keep(path, state, guard=None):
        real_save(path, state, guard)
        shutil.copy(path, kept)
    monkeypatch.setattr(train_module, "save_checkpoint", keep)
    other = run_config(tmp_path / "other", *QUICK, "seed=2")
    run(other, progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)

    cfg = run_config(tmp_path / "runs", *QUICK, "seed=1")
    reference = run(cfg, progress=False)
    path = plan(cfg).path
    checkpoint = path.with_suffix(".ckpt.pt")
    state = torch.load(kept, weights_only=False)
    name = next(iter(state["trainable"]))
    wrong_shape = {**state, "run": checkpoint.name,
                   "trainable": {**state["trainable"], name: torch.zeros(3, *state["trainable"][name].shape)}}
    for why, put in ((f"another run's checkpoint: {plan(other).path.stem}.ckpt.pt",
                      lambda: shutil.copy(kept, checkpoint)),
                     (f"{name} has shape", lambda: torch.save(wrong_shape, checkpoint))):
        path.unlink()   # the run unfinished, with that checkpoint under its name
        put()
        capsys.readouterr()
        result = run(cfg, progress=False)
        err = capsys.readouterr().err
        assert f"fishtune: warning: {checkpoint} is damaged (ValueError: {why}" in err, err
        assert "the run starts over" in err and checkpoint.with_name(checkpoint.name + ".damaged").exists()
        assert result["resumed_from_epoch"] is None and _same(result) == _same(reference)


# ---- signals ------------------------------------------------------------------------------------------

def test_sigterm_releases_the_claim_removes_temp_files_and_records_an_interrupt(tmp_path):
    runs = tmp_path / "runs"
    proc = _start(runs, *LONG)
    _wait_for(lambda: list(runs.glob("*.ckpt.pt")), proc)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    [record] = runs.glob("*.interrupted.json")
    run_id = record.name.removesuffix(".interrupted.json")
    assert _fishtune_lines(err) == [f"fishtune: interrupted by SIGTERM: {run_id}.json stopped and released its claim; "
                                    f"details in {record}"], err[-3000:]
    assert "Traceback" not in err
    data = json.loads(record.read_text())
    assert data["status"] == "interrupted" and data["reason"] == "interrupted by SIGTERM" and data["traceback"] is None
    assert not load_failures(runs) and not _leftovers(runs)   # not a failure; no claim, no temporary file
    assert (runs / f"{run_id}.ckpt.pt").exists()   # kept: the next sweep resumes from it


def _marked(marker: str) -> list[int]:
    """The processes whose environment holds `marker`."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if marker.encode() in environ.read_bytes():
                pids.append(int(environ.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc")
def test_killing_a_parallel_sweeps_launcher_stops_its_workers(tmp_path):
    runs, marker = tmp_path / "runs", f"FISHTUNE_TEST_MARKER={uuid.uuid4().hex}"
    key, value = marker.split("=")
    launcher = _start(runs, "hydra/launcher=parallel", "seed=1,2", *LONG, env={"FISHTUNE_JOBS": "2", key: value},
                      multirun=True)
    _wait_for(lambda: len(list(runs.glob("*.ckpt.pt"))) == 2, launcher)   # both workers mid-run
    workers = [pid for pid in _marked(marker) if pid != launcher.pid]
    assert workers
    os.kill(launcher.pid, signal.SIGKILL)   # the launcher alone; its workers are left to notice
    launcher.communicate(timeout=30)
    deadline = time.time() + 60
    while _marked(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert _marked(marker) == [], "workers outlived their launcher"
    assert not _leftovers(runs)   # each released its claim on the way out
    records = [json.loads(p.read_text()) for p in runs.glob("*.interrupted.json")]
    assert len(records) == 2 and {r["status"] for r in records} == {"interrupted"}


# ---- a full disk ----------------------------------------------------------------------------------------

@needs_root
def test_a_full_disk_is_said_as_such_in_one_line(tmp_path):
    from fishtune.harness.train import save_checkpoint

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:
            f.write(b"\0" * 2**20)   # fills it: ENOSPC after 256 KiB
        for write, name in ((lambda p: write_json_atomic(p, {"x": "y" * 20000}), "r.json"),
                            (lambda p: save_checkpoint(p, {"w": torch.zeros(20000)}), "r.ckpt.pt"),
                            (lambda p: save_mask_file(p, {"w": torch.ones(300_000, dtype=torch.bool)}),
                             "r.mask.safetensors")):
            with pytest.raises(NoSpace) as e:
                write(disk / name)
            assert str(e.value) == f"no space left on device: {disk / name}"
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]   # no temporary file left

        os.truncate(disk / "filler", (disk / "filler").stat().st_size - 8192)   # room for a claim, not a mask
        proc = _start(disk, f"hydra.run.dir={tmp_path / 'hydra'}")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err[-3000:]
        lines = _fishtune_lines(err)
        assert len(lines) == 1 and re.fullmatch(rf"fishtune: FAILED: no space left on device: {re.escape(str(disk))}/"
                                                r"\S+; (details in \S+|no record written \(no space left on "
                                                r"device\))", lines[0]), err
        assert "Traceback" not in err and "unexpected pos" not in err and not _leftovers(disk)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
