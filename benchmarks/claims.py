"""What claims cost: a 6-run tiny sweep with claims (claim.enabled=true) against the same sweep without,
in one process (docs/BENCH.md, "Claims").

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/claims.py [--rounds 5]

Each round runs the 6 runs (tiny_bert on the RTE fixtures, mask=fish,rand x seed=1,2,3, one epoch) into a
fresh runs folder, once with claims and once without, the order alternating from round to round so that
neither side always runs first on a machine whose load drifts. The figure is the median over rounds of
the per-round ratio of the sweeps' wall times (with / without). A run's claim work is also timed alone
(acquire, the heartbeat thread, one beat, release), which the noise of whole sweeps hides.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")

from fishtune.harness.run import run  # noqa: E402
from fishtune.harness.sweeps import compose_run  # noqa: E402

QUICK = ["model=tiny_bert", "task=rte", "budget=1", "train.max_epochs=1", "fisher.samples=8", "data.train_samples=24",
         "data.dev_samples=12", f"data.glue_dir={ROOT / 'tests' / 'fixtures' / 'glue'}"]
RUNS = [(mask, seed) for mask in ("fish", "rand") for seed in (1, 2, 3)]


def sweep(runs_dir: Path, claims: bool) -> float:
    """Seconds for the 6 runs, one after the other, as a sweep's process runs them."""
    configs = [compose_run([*QUICK, f"mask={m}", f"seed={s}", f"paths.runs_dir={runs_dir}",
                            f"claim.enabled={str(claims).lower()}"]) for m, s in RUNS]
    t0 = time.perf_counter()
    for config in configs:
        run(config, progress=False)
    return time.perf_counter() - t0


def claim_cycle_seconds(folder: Path, n: int = 200) -> float:
    """Seconds of one run's claim work alone: acquire, start the heartbeat, one beat, release (mean of n)."""
    from fishtune.harness import claims

    t0 = time.perf_counter()
    for i in range(n):
        claim = claims.acquire(folder / f"run{i}.json", timeout_s=600, heartbeat_s=60)
        with claim:
            claim.beat()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        sweep(Path(tmp) / "warmup", True)  # imports, tokenizer and model caches: not part of either side
        ratios, seconds = [], {True: [], False: []}
        for i in range(args.rounds):
            order = (True, False) if i % 2 == 0 else (False, True)
            t = {c: sweep(Path(tmp) / f"r{i}-{c}", c) for c in order}
            for c in t:
                seconds[c].append(t[c])
            ratios.append(t[True] / t[False])
            print(f"round {i + 1}: with claims {t[True]:.2f} s, without {t[False]:.2f} s, ratio {ratios[-1]:.3f}")
        cycle = claim_cycle_seconds(Path(tmp) / "cycles")
    print(f"one run's claim work alone (acquire, heartbeat thread, one beat, release): {cycle * 1e3:.2f} ms, "
          f"{100 * 6 * cycle / statistics.median(seconds[False]):.3f} % of the 6-run sweep")
    print(f"claims overhead on a 6-run tiny sweep: median ratio {statistics.median(ratios):.3f} "
          f"(with claims {statistics.median(seconds[True]):.2f} s, without {statistics.median(seconds[False]):.2f} s; "
          f"{args.rounds} rounds, torch {torch.__version__}, {torch.get_num_threads()} thread)")


if __name__ == "__main__":
    main()
