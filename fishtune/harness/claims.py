"""Claims: sweeps that share a runs folder share its runs instead of each training all of them.

Before a run trains, its sweep claims it: `<run>.claim` beside the result file, made with an exclusive
create (O_CREAT | O_EXCL, which NFS honours; no lock that a shared file system might break). The claim
holds its owner (host, pid, Slurm job and array task, when it started) and a token of its own. While
the run trains its owner refreshes the claim's mtime (a heartbeat: every epoch and every
`claim.heartbeat_s` seconds from a daemon thread), and it removes the claim when the run finishes or
fails.

A sweep that finds a claim leaves the run to its owner while the owner lives, and takes the claim over
when the owner is gone:
  * its own Slurm job, requeued (same job id and array task, the old process gone or on another node);
  * on this host, a pid that no longer runs, or that runs but is another process: its start time (field 22
    of /proc/<pid>/stat) or the kernel's boot id differs from the claim's (a restarted container reuses
    hostname and pids);
  * on any host, no heartbeat for `claim.timeout_s` seconds (the only test across hosts: keep it well
    above the heartbeat and any clock skew between the nodes).
A takeover is race-safe: of all the sweeps that judge one version of a claim stale, the one whose
exclusive create of that version's takeover file succeeds checks that the claim is still that version
and renames its own claim over it (a rename replaces atomically: there is never a moment without a
claim in which a fresh create could slip in). Each takeover is logged on stderr.

A claim is the right to write: its owner checks it at every training step (the heartbeat thread's last
look) and reads it again just before it writes a checkpoint, a mask or the result. An owner that finds it
gone or taken (it was stopped past the timeout, SIGSTOP, a frozen node) raises ClaimLost: it stops
training at once, writes nothing, and says so in one line. Claim files follow the umask (0o666 & ~umask),
so a group that shares a folder reads each other's claims.

Torch-free: the reports read claims too (fishtune.sweep_summary, the results page).
"""
from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .results import OLD_MASK_SUFFIX, NoSpace, mask_path, temp_writer

CLAIM = ".claim"  # suffix of a claim file: <run>.claim beside <run>.json
# The Slurm variables that name a job; a requeued job keeps them (SLURM_RESTART_COUNT grows).
_SLURM = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID", "array_task_id": "SLURM_ARRAY_TASK_ID",
          "restart_count": "SLURM_RESTART_COUNT"}
_ATTEMPTS = 5  # exclusive creates per acquire: each lost race means someone else now holds a fresh claim
# A takeover file older than this was left by a taker that died between its two steps (which take
# milliseconds); it is removed, so that the claim it names can be taken over.
ABANDONED_TAKEOVER_S = 60.0
# What a summary judges an unreadable claim by (it declares no timeout of its own): an hour.
UNREADABLE_TIMEOUT_S = 3600.0


def claim_path(result: str | Path) -> Path:
    """The claim file of the run whose result file is `result`."""
    return Path(result).with_suffix(CLAIM)


def slurm_job() -> dict[str, str] | None:
    """This process's Slurm job ids (job_id, array_job_id, array_task_id, restart_count); None outside Slurm."""
    ids = {key: os.environ[var] for key, var in _SLURM.items() if os.environ.get(var)}
    return ids or None


def slurm_label(slurm: dict | None) -> str | None:
    """ARRAYID_TASK for an array task (what squeue and submitit show), else the job id; None outside Slurm."""
    if not slurm:
        return None
    if slurm.get("array_job_id") and slurm.get("array_task_id") is not None:
        return f"{slurm['array_job_id']}_{slurm['array_task_id']}"
    return slurm.get("job_id")


def describe(owner: dict | None) -> str:
    """An owner in words: 'pid 123 on node7, slurm 456_2, since 2026-...'."""
    if not owner:
        return "an owner whose claim cannot be read"
    text = f"pid {owner.get('pid')} on {owner.get('host')}"
    if label := slurm_label(owner.get("slurm")):
        text += f", slurm {label}"
    return text + f", since {owner.get('started_at')}"


def pid_running(pid: Any) -> bool:
    """Whether a process with this pid runs on this host (a zombie, killed but not yet reaped, does not)."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, OverflowError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):  # no /proc (not Linux): kill's answer stands
        return True


def process_start_time(pid: Any) -> str | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat); None without
    /proc or without such a process. With the boot id it tells a process from a later one with its pid."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[19]   # fields from the 3rd on, after the command's ")"
    except (OSError, ValueError, IndexError):
        return None


def boot_id() -> str | None:
    """This kernel's boot id (a new one at every boot); None without /proc."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _another_process(owner: dict) -> str | None:
    """Why the live pid of a claim made on this host is not its owner (None while nothing says so): a
    restarted container or machine has the same host name and reuses pids."""
    pid, host = owner.get("pid"), owner.get("host")
    if owner.get("boot_id") and boot_id() and owner["boot_id"] != boot_id():
        return f"{host} has booted since (boot id {owner['boot_id'][:8]}... then, {boot_id()[:8]}... now)"
    now = process_start_time(pid)
    if owner.get("start_time") and now and str(owner["start_time"]) != now:
        return f"pid {pid} on {host} is another process now (started at tick {now}, the owner at {owner['start_time']})"
    return None


def owner_gone(owner: dict | None, mtime: float, timeout_s: float, now: float | None = None) -> str | None:
    """Why the owner of a claim (its content, None when unreadable, and its file's mtime) is gone, or
    None while it counts as live."""
    if owner:
        here = owner.get("host") == socket.gethostname()
        mine, theirs = slurm_job(), owner.get("slurm") or {}
        if mine and [theirs.get(k) for k in ("job_id", "array_job_id", "array_task_id")] == \
                [mine.get(k) for k in ("job_id", "array_job_id", "array_task_id")]:
            # Two processes of one job (on one node) can both be alive; a requeued job's old process is not.
            if not here or not pid_running(owner.get("pid")):
                return f"its own Slurm job {slurm_label(mine)}, requeued"
        if here and not pid_running(owner.get("pid")):
            return f"pid {owner.get('pid')} no longer runs on {owner.get('host')}"
        if here and (why := _another_process(owner)):
            return why
    # An unreadable claim is being written this instant, or its writer died mid-write: the timeout decides.
    age = (time.time() if now is None else now) - mtime
    if age > timeout_s:
        return f"no heartbeat for {age:.0f} s (timeout {timeout_s:g} s)"
    return None


@dataclass
class Seen:
    """A claim file as read once: its bytes and mtime identify that version of it."""
    path: Path
    data: bytes
    mtime_ns: int

    @property
    def owner(self) -> dict | None:
        try:
            owner = json.loads(self.data)
        except ValueError:
            return None
        return owner if isinstance(owner, dict) else None


def look(path: Path) -> Seen | None:
    """The claim file now, or None when there is none. A claim this user may not read (another user's,
    under a private umask) is seen as unreadable: its mtime, the timeout, decides."""
    try:
        with open(path, "rb") as f:
            data = f.read()
            mtime_ns = os.fstat(f.fileno()).st_mtime_ns
    except FileNotFoundError:
        return None
    except PermissionError:
        try:
            return Seen(path, b"", os.stat(path).st_mtime_ns)
        except FileNotFoundError:
            return None
    return Seen(path, data, mtime_ns)


@dataclass
class Busy:
    """A run that a live owner holds: leave it to them."""
    path: Path
    owner: dict | None
    heartbeat_age_s: float

    def describe(self) -> str:
        return f"{describe(self.owner)}, heartbeat {self.heartbeat_age_s:.0f} s ago"


class ClaimedElsewhere(RuntimeError):
    """The run is claimed by a live owner (another sweep trains it): nothing was done here."""

    def __init__(self, busy: Busy, result: Path):
        self.busy, self.result = busy, Path(result)
        super().__init__(f"{self.result.name} is claimed by {busy.describe()}")


class ClaimLost(RuntimeError):
    """This process's claim on a run is gone or someone else's: it must stop the run and write nothing."""


@dataclass
class Claim:
    """A claim this process holds. `with claim:` beats in a daemon thread and releases at the end."""
    path: Path
    data: bytes
    heartbeat_s: float
    took_over: str | None = None    # why the previous owner was judged gone, when this was a takeover
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def beat(self, *_: Any) -> bool:
        """Refresh the claim's mtime if it is still ours; False (and one line, once) when it is not: it was
        taken over after missing heartbeats, and the other owner may be training the run too."""
        seen = look(self.path) if not self.lost else None
        if self.lost or seen is None or seen.data != self.data:
            self._lose(seen)
            return False
        try:
            os.utime(self.path)
        except FileNotFoundError:
            self._lose(None)
            return False
        return True

    def check(self, fresh: bool = True) -> None:
        """Raise ClaimLost unless the claim is still ours: read again (`fresh`, before every write), or as
        the heartbeat thread last found it (at every training step, at no cost)."""
        if self.lost or (fresh and not self.beat()):
            raise ClaimLost(f"lost the claim on {self.path.name}")

    def _lose(self, seen: Seen | None) -> None:
        if not self.lost:
            self.lost = True
            print(f"fishtune: warning: lost the claim on {self.path.name} (no heartbeat for too long?), now "
                  f"{describe(seen.owner) if seen else 'unclaimed'}: this process stops the run and writes nothing "
                  f"for it", file=sys.stderr)

    def release(self) -> None:
        """Stop the heartbeat and remove the claim, if it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        seen = look(self.path)
        if seen is not None and seen.data == self.data:
            self.path.unlink(missing_ok=True)

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.beat()

    def __enter__(self) -> Claim:
        self._thread = threading.Thread(target=self._beat_until_stopped, name=f"claim {self.path.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _owner_record(run_id: str, timeout_s: float, heartbeat_s: float) -> bytes:
    """A claim's content. Its timeout and heartbeat go with it, so that a summary judges it by them."""
    owner = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "slurm": slurm_job(),
             "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "timeout_s": timeout_s,
             "heartbeat_s": heartbeat_s, "token": uuid.uuid4().hex,
             # what tells this process from a later one with its host name and pid (a restarted container)
             "boot_id": boot_id(), "start_time": process_start_time(os.getpid())}
    return json.dumps(owner, indent=1).encode()


def _create(path: Path, data: bytes) -> bool:
    """Create `path` holding `data` if no file is there (atomically, also on NFS); False if one is."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)   # the umask decides who reads it
    except FileExistsError:
        return False
    except OSError as e:
        _no_space(e, path)
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as e:   # no half-made claim left: it would hold the run for a whole timeout
        path.unlink(missing_ok=True)
        _no_space(e, path)
        raise
    return True


def _no_space(error: OSError, path: Path) -> None:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise NoSpace(path) from error


def _take_over(seen: Seen, data: bytes) -> bool:
    """Replace the claim version `seen` (judged stale) with ours, and only that version: True if done.

    Of the takers of one version, one wins: the one whose exclusive create of the version's takeover file
    (named after the version's bytes and mtime) succeeds. It checks that the claim is still that version
    (a heartbeat or a new claim meanwhile changes it) and renames its own claim over it: never a moment
    without a claim file, in which a fresh create could slip in. Then it removes the takeover file; a slow
    taker of the old version that creates it afterwards finds the version gone."""
    version = hashlib.sha1(seen.data + str(seen.mtime_ns).encode()).hexdigest()[:16]
    token = seen.path.with_name(f"{seen.path.name}.takeover-{version}")
    try:
        fd = os.open(token, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        try:  # a takeover takes milliseconds: a file this old was left by a taker that died midway
            if time.time() - token.stat().st_mtime > ABANDONED_TAKEOVER_S:
                token.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    os.close(fd)
    try:
        current = look(seen.path)
        if current is None or (current.data, current.mtime_ns) != (seen.data, seen.mtime_ns):
            return False
        new = seen.path.with_name(f"{seen.path.name}.new-{uuid.uuid4().hex}")
        new.write_bytes(data)
        os.replace(new, seen.path)
        return True
    finally:
        token.unlink(missing_ok=True)


def acquire(result: str | Path, timeout_s: float, heartbeat_s: float) -> Claim | Busy:
    """Claim the run whose result file is `result`: a Claim (ours; use it as `with claim:`), or Busy when
    a live owner holds it. A stale claim is taken over, and the takeover logged on stderr."""
    path = claim_path(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _owner_record(Path(result).stem, timeout_s, heartbeat_s)
    seen = None
    for _ in range(_ATTEMPTS):
        if _create(path, data):
            return Claim(path, data, heartbeat_s)
        seen = look(path)
        if seen is None:  # released between our create and our look: try again
            continue
        why = owner_gone(seen.owner, seen.mtime_ns / 1e9, timeout_s)
        if why is None:
            break
        if _take_over(seen, data):
            took_over = f"{describe(seen.owner)}: {why}"
            print(f"fishtune: took over the claim on {path.name} from {took_over}", file=sys.stderr)
            return Claim(path, data, heartbeat_s, took_over)
        seen = None  # another taker won, or the claim changed: look again
    seen = seen or look(path)
    age = time.time() - seen.mtime_ns / 1e9 if seen is not None else 0.0
    return Busy(path, seen.owner if seen is not None else None, age)


def remove_abandoned_temps(result: str | Path, timeout_s: float) -> list[Path]:
    """Remove the temporary files (results.temp_prefix) of the run whose result file is `result` that their
    writers left: a writer on this host whose pid no longer runs, or any file older than `timeout_s`
    (a killed process cannot remove its own). Called by the claim's holder, so no live owner is writing."""
    result = Path(result)
    names = [result.name, result.with_suffix(".ckpt.pt").name, mask_path(result).name,
             result.with_suffix(OLD_MASK_SUFFIX).name, result.with_suffix(".failed.json").name,
             result.with_suffix(".interrupted.json").name]
    removed = []
    for name in names:
        target = result.with_name(name)
        for temp in [*result.parent.glob(f".{glob.escape(name)}.*.tmp"), target.with_name(name + ".tmp")]:
            writer = temp_writer(target, temp)
            try:
                age = time.time() - temp.stat().st_mtime
            except FileNotFoundError:
                continue
            dead = writer is not None and writer[1] == socket.gethostname() and not pid_running(writer[0])
            if dead or age > timeout_s:
                temp.unlink(missing_ok=True)
                removed.append(temp)
    return removed


@dataclass
class InProgress:
    """A claim found in a runs folder, for the summaries: whose it is and whether its owner counts as live."""
    run_id: str
    path: str
    owner: dict | None
    heartbeat: str                  # the claim's mtime, ISO 8601 UTC
    heartbeat_age_s: float
    gone: str | None                # why the owner is gone (the next sweep takes it over), None while live

    def to_json(self) -> dict[str, Any]:
        owner = self.owner or {}
        return {"run_id": self.run_id, "path": self.path, "host": owner.get("host"), "pid": owner.get("pid"),
                "slurm": slurm_label(owner.get("slurm")), "started_at": owner.get("started_at"),
                "heartbeat": self.heartbeat, "heartbeat_age_s": round(self.heartbeat_age_s, 1),
                "owner": describe(self.owner), "state": "live" if self.gone is None else f"stale: {self.gone}"}


def in_progress(runs_dir: str | Path) -> list[InProgress]:
    """The claims under `runs_dir` (recursively) whose run has no result file yet: the runs being trained,
    each judged live or stale by the timeout its owner declared."""
    out = []
    for path in sorted(Path(runs_dir).rglob(f"*{CLAIM}")):
        if path.with_suffix(".json").exists() or (seen := look(path)) is None:
            continue
        mtime, owner = seen.mtime_ns / 1e9, seen.owner
        timeout_s = float((owner or {}).get("timeout_s") or UNREADABLE_TIMEOUT_S)
        out.append(InProgress(path.name.removesuffix(CLAIM), str(path), owner,
                              datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds"),
                              time.time() - mtime, owner_gone(owner, mtime, timeout_s)))
    return out
