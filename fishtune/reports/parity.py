"""Parity of two sets of runs that differ in one setting only (bf16 against fp32, `make study NAME=bf16-parity`).

    python -m fishtune.parity --a results/bf16-parity/runs --b results/study/runs --out results/bf16-parity

Each run of `--a` is paired with the run of `--b` whose config is the same but for the keys in `--differ`
(default train.precision). parity.csv / parity.md: per method, task, mode and budget, the mean paired
difference a - b of the best dev score over seeds with its 95 % t-interval and paired t-test p, the runs' samples per second
(a / b), and whether the interval lies within +-`--margin` points (default 1.5) or contains 0.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..harness.results import RunResult, finished_runs, identity, load_results
from . import results_frame
from .stats import paired_test, t_interval


def _without(config: dict, keys: Sequence[str]) -> str:
    """The run's identity (harness.results.identity) without `keys`, as a comparable string."""
    config = json.loads(json.dumps(identity(config)))
    for key in keys:
        *parents, last = key.split(".")
        node = config
        for p in parents:
            node = node.get(p, {})
        node.pop(last, None)
    return json.dumps(config, sort_keys=True)


def pairs(a: list[RunResult], b: list[RunResult], differ: Sequence[str]) -> pd.DataFrame:
    """One line per finished run of `a` that has a twin in `b` (same config but for `differ`)."""
    twins = {_without(r.config, differ): r for r in finished_runs(b)}
    found = [(r, twin) for r in finished_runs(a) if (twin := twins.get(_without(r.config, differ))) is not None]
    if not found:
        return pd.DataFrame()
    runs, refs = results_frame([r for r, _ in found]), results_frame([t for _, t in found])
    return pd.DataFrame({"method": runs["method"], "task": runs["task"], "mode": runs["mask"],
                         "budget": runs["budget"].astype(int), "seed": runs["seed"].astype(int), "a": runs["score"], "b": refs["score"],
                         "a_precision": runs["precision"], "b_precision": refs["precision"],
                         "a_samples_per_second": runs["samples_per_second"],
                         "b_samples_per_second": refs["samples_per_second"]})


def parity_table(df: pd.DataFrame, margin: float = 1.5) -> pd.DataFrame:
    """Per method, task, mode and budget: a - b paired over seeds, its interval, and the speed ratio."""
    out = []
    for (method, task, mode, budget), g in df.groupby(["method", "task", "mode", "budget"]):
        g = g.set_index("seed")
        mean, std, n, lo, hi = t_interval(g["a"] - g["b"])
        _, p, _ = paired_test(g["a"], g["b"])
        out.append({"method": method, "task": task, "mode": mode, "budget": budget, "pairs": n, "mean_diff": mean,
                    "std": std, "ci_lo": lo, "ci_hi": hi, "p_ttest": p,
                    # one pair has no interval: neither answer, not "no"
                    "contains_0": bool(lo <= 0 <= hi) if n > 1 else None,
                    "within_margin": bool(-margin <= lo and hi <= margin) if n > 1 else None,
                    "speed_ratio": float((g["a_samples_per_second"] / g["b_samples_per_second"]).median()),
                    "a_precision": ",".join(sorted(set(g["a_precision"].dropna()))),
                    "b_precision": ",".join(sorted(set(g["b_precision"].dropna())))})
    return pd.DataFrame(out)


def _yes_no(answer: bool | None) -> str:
    """A yes/no column's cell: blank where there is no answer (one pair)."""
    return "" if answer is None else "yes" if answer else "no"


def to_markdown(table: pd.DataFrame, margin: float) -> str:
    lines = [f"| method | task | mode | budget | pairs | a - b [95 % CI] | p | CI contains 0 | CI within ±{margin:g} | "
             "samples/s a / b |", "|---|---|---|---:|---:|---:|---:|---|---|---:|"]
    for r in table.to_dict("records"):
        lines.append(f"| {r['method']} | {r['task']} | {'original' if r['mode'] == 'none' else r['mode']} | {r['budget']} | "
                     f"{r['pairs']} | {r['mean_diff']:+.2f} [{r['ci_lo']:+.2f}, {r['ci_hi']:+.2f}] | "
                     f"{r['p_ttest']:.3g} | {_yes_no(r['contains_0'])} | {_yes_no(r['within_margin'])} | "
                     f"{r['speed_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fishtune.parity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", default="results/bf16-parity/runs", help="the runs under test (bf16)")
    ap.add_argument("--b", default="results/study/runs", help="their reference twins (fp32)")
    ap.add_argument("--differ", nargs="+", default=["train.precision"], help="config keys a and b may differ in")
    ap.add_argument("--margin", type=float, default=1.5, help="points within which the interval must lie")
    ap.add_argument("--out", default="results/bf16-parity")
    args = ap.parse_args(argv)
    found = pairs(load_results(args.a), load_results(args.b), args.differ)
    if found.empty:
        raise SystemExit(f"fishtune.parity: no run of {args.a} has a twin in {args.b} (same config but "
                         f"{', '.join(args.differ)})")
    table = parity_table(found, args.margin)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "parity.csv", index=False, float_format="%.6g")
    (out / "parity.md").write_text(to_markdown(table, args.margin))
    print(to_markdown(table, args.margin))


if __name__ == "__main__":
    main()
