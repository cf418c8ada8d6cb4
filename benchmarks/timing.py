"""Side-by-side timing (loops in threads that take turns, one step at a time) and peak memory.

Other processes on a shared machine change the load from minute to minute, so two loops timed one
after the other can differ by tens of percent for no reason of their own. Here the loops alternate
step by step, so neighbouring steps of different loops see the same load and their ratio is robust.
Only the loop holding the turn runs; the others wait on a condition, so they never compete for cores.
Each round starts one loop later than the last, so no loop always runs right after the same other one.

A loop receives `tick` and calls it at every step boundary. The segment before the first tick is
setup, the one after the last tick teardown; neither is timed. Each segment in between is one step.

Memory is measured apart from the timing, in a run of its own (`peak_memory`), because measuring it
on CPU means handing freed heap pages back to the OS first, which slows the next step down (~10 %).
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Any, Callable, Iterable

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE")
try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: RSS still works, freed pages may just stay counted as resident
    _LIBC = None


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def trim_heap() -> None:
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def peak_memory(fn: Callable[[], Any], device: str = "cpu", every: float = 0.002) -> tuple[Any, int]:
    """(fn(), bytes): the working memory fn needs on top of what already exists.

    CPU: the highest resident set size (RSS) of this process while fn runs, sampled every `every`
    seconds by a thread, minus the RSS before it; malloc_trim first returns freed heap pages to the
    OS, so memory fn reuses counts too. Peaks shorter than the interval can be missed.
    CUDA: torch.cuda.max_memory_allocated during fn minus memory_allocated before it.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - base
    trim_heap()
    base = rss_bytes()
    peak, running = [base], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = fn()
    finally:
        running[0] = False
        sampler.join()
    return out, max(peak[0], rss_bytes()) - base


class Turns:
    """Run `loops` (name -> fn(tick)) in threads, one step at a time in turn; collect step times."""

    def __init__(self, device: str = "cpu", verbose: bool = True):
        self.cuda = torch.device(device).type == "cuda"
        self.verbose = verbose
        self.cond = threading.Condition()
        self.order: list[str] = []  # loops still running, in this round's order
        self.pos = 0                # index in `order` of the loop holding the turn
        self.holder: str | None = None
        self.steps: dict[str, list[float]] = {}  # wall seconds of each step
        self.cpu: dict[str, list[float]] = {}    # CPU seconds of this process (all threads) in each step

    def _wait_turn(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.holder == name)

    def _pass_turn(self, name: str, finished: bool = False) -> None:
        with self.cond:
            if finished:  # only the holder passes the turn, so the next loop moves up to `pos`
                self.order.remove(name)
            else:
                self.pos += 1
            if self.pos >= len(self.order):  # a new round, starting one loop later
                self.order = self.order[1:] + self.order[:1]
                self.pos = 0
            self.holder = self.order[self.pos] if self.order else None
            self.cond.notify_all()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def run(self, loops: dict[str, Callable[[Callable[[], None]], Any]]) -> dict[str, Any]:
        self.order, self.pos = list(loops), 0
        self.steps = {n: [] for n in loops}
        self.cpu = {n: [] for n in loops}
        results: dict[str, Any] = {}
        errors: dict[str, BaseException] = {}

        def worker(name: str, fn: Callable) -> None:
            state = {"ticks": 0, "t0": 0.0, "c0": 0.0}

            def tick() -> None:
                if state["ticks"] > 0:  # the segment since the previous tick was a step
                    self._sync()
                    self.steps[name].append(time.perf_counter() - state["t0"])
                    self.cpu[name].append(time.process_time() - state["c0"])
                    if self.verbose:
                        print(f"    {name:<12} step {len(self.steps[name]):>3}: {self.steps[name][-1]:7.3f} s "
                              f"(CPU {self.cpu[name][-1]:7.3f} s)", flush=True)
                state["ticks"] += 1
                self._pass_turn(name)
                self._wait_turn(name)
                self._sync()
                state["t0"], state["c0"] = time.perf_counter(), time.process_time()

            self._wait_turn(name)
            try:
                results[name] = fn(tick)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors[name] = e
            finally:
                self._pass_turn(name, finished=True)

        threads = [threading.Thread(target=worker, args=(n, f), name=f"bench-{n}") for n, f in loops.items()]
        with self.cond:
            self.holder = self.order[0]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            name, err = next(iter(errors.items()))
            raise RuntimeError(f"benchmark loop {name!r} failed: {err!r}") from err
        return results


class TickLoader:
    """Wraps a data loader: ticks before every batch and once at the end; stops after `limit` batches.
    A step's time thus includes fetching and collating its batch."""

    def __init__(self, loader: Iterable, tick: Callable[[], None], limit: int | None = None):
        self.loader, self.tick, self.limit = loader, tick, limit
        self.generator = getattr(loader, "generator", None)

    def __len__(self) -> int:
        n = len(self.loader)
        return n if self.limit is None else min(n, self.limit)

    def __iter__(self):
        it = iter(self.loader)
        for _ in range(len(self)):
            self.tick()
            yield next(it)
        self.tick()


def no_tick() -> None:
    """For loops run outside a Turns session (memory probes)."""
