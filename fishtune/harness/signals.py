"""SIGTERM, SIGINT and a gone launcher: how a run stops cleanly, and how the rest of the process stops at once.

Inside a run (`signals_interrupt`) a signal raises Interrupted, so the claim is released and temporary
files are removed on the way out; outside a run (a sweep's launcher, Hydra composing) `exit_at_once`
ends the process in one line. A worker of a local parallel sweep watches its launcher (`watch_parent`)
and stops like this when the launcher is gone, even killed with SIGKILL.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Any


class Interrupted(BaseException):
    """SIGTERM or SIGINT, raised in the main thread (signals_interrupt). A BaseException, so that no
    `except Exception` on the way holds it up: every `with` and `finally` on the way out runs (the claim
    is released, temporary files are removed)."""

    def __init__(self, signum: int):
        self.signum, self.run = signum, None   # run: the result path of the run it stopped, if ours
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def exit_at_once(signum: int, frame: Any) -> None:
    """A signal handler that ends the process in one line, without an exception (see cli.main)."""
    print(f"fishtune: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


@contextlib.contextmanager
def signals_interrupt():
    """Within the block, SIGTERM and SIGINT raise Interrupted in the main thread. A signal that someone else
    handles is left to them (submitit's handlers in a Slurm job requeue it), and so is any other thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = (signal.SIG_DFL, signal.default_int_handler, _interrupt, exit_at_once)
    before = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(s) in ours}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


# Set once this process watches its parent, and the parent's pid then. (Module state that the sweep job
# reads only through functions: a parallel sweep pickles the Hydra task function by value, with the globals
# it names.)
_WATCHING_PARENT = threading.Event()
_PARENT = [0]
PARENT_POLL_S = 0.5


def gone_launcher() -> int | None:
    """The pid of this process's launcher when it watches it (watch_parent) and it is gone, else None."""
    return _PARENT[0] if _WATCHING_PARENT.is_set() and _PARENT[0] != os.getppid() else None


def watch_parent() -> None:
    """In a worker process of a local parallel sweep: when the process that launched it goes (killed, even
    with SIGKILL), its pid's parent changes; then SIGTERM this process, which stops its run cleanly
    (Interrupted: claim released, temporary files removed), or, between runs, ends it."""
    if _WATCHING_PARENT.is_set():
        return
    _WATCHING_PARENT.set()
    parent = _PARENT[0] = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)    # a run on its way out releases its claim in well under a minute
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="fishtune parent watch", daemon=True).start()
