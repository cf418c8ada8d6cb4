"""FisherAdapTune under the mean head (docs/STUDY.md "FisherAdapTune"): its two arms against the core arm's
original, fish and rand rows, budget-matched by the mean trainable count over training.

    python -m fishtune.reports.adaptive_study --runs-dir results/study/adaptive/runs \\
        --core-runs results/study/mean/runs/core --out results/study/adaptive

writes under --out:
  runs.csv     one line per adaptive run: its arm, cell, seed, score, start / mean / final trainable count,
               the mean and final count over the budget's k (the original run's trainable count), the mean
               and final active ratio (active adapter entries over those it started with) and whether the
               mean is within 10 % of k
  paired.csv   per task x budget, each comparison of COMPARISONS over the seeds both rows have: the mean
               paired difference, its 95 % t-interval, n, the paired t-test p and its Holm adjustment over
               the whole family (4 comparisons x 4 cells, fixed before the runs)
  summary.md   the two tables in Markdown
The calibration runs (seed 6, outside the comparison's seeds 1-5) are listed in runs.csv, never compared.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..harness.results import RunResult, finished_runs, load_results
from .stats import holm, paired_test, t_interval

MATCH_TOLERANCE = 0.10   # the mean trainable count within 10 % of k
# (row, the row it is compared with): the family Holm adjusts over, fixed in docs/STUDY.md before the runs
COMPARISONS = (("adaptive_fish", "fish"), ("adaptive_fish", "original"),
               ("adaptive_all", "original"), ("adaptive_all", "fish"))
CORE_ROWS = {"none": "original", "fish": "fish", "rand": "rand"}
SEEDS = (1, 2, 3, 4, 5)


def arm(result: RunResult) -> str:
    """adaptive_fish (starts from the FISH mask) or adaptive_all (from every inserted entry)."""
    return "adaptive_fish" if result.config["mask"].get("start") == "fish" else "adaptive_all"


def counts(result: RunResult) -> dict[str, float]:
    """Start, mean and final trainable counts (head included) and the mean and final active ratios of an
    adaptive run. The file gives the start (trainable), final and mean counts and the active ratio per
    epoch; the head is the start minus the adapter entries it started with, which follow from the final
    count and the final ratio (the head never freezes)."""
    start, final = result.trainable, result.trainable_final
    mean = result.ratio_pct_mean * result.total / 100
    final_ratio = result.active_ratio_history[-1]
    adapter = round((start - final) / (1 - final_ratio)) if final_ratio < 1 else None
    head = start - adapter if adapter else None
    mean_ratio = (mean - head) / adapter if adapter else 1.0
    return {"start": start, "mean": mean, "final": final, "mean_active_ratio": mean_ratio,
            "final_active_ratio": final_ratio}


def runs_table(adaptive: list[RunResult], k: dict[tuple[str, int], int]) -> pd.DataFrame:
    """One line per adaptive run (see the module's doc)."""
    lines = []
    for r in adaptive:
        c = counts(r)
        budget_k = k.get((r.task, r.budget))
        lines.append({"arm": arm(r), "task": r.task, "budget": r.budget, "seed": r.seed, "score": r.score,
                      **c, "k": budget_k,
                      "mean_over_k": c["mean"] / budget_k if budget_k else np.nan,
                      "final_over_k": c["final"] / budget_k if budget_k else np.nan})
    df = pd.DataFrame(lines).sort_values(["arm", "task", "budget", "seed"], ignore_index=True)
    df["matched"] = (df["mean_over_k"] - 1).abs() <= MATCH_TOLERANCE
    return df


def paired_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per task x budget x comparison: mean paired difference over seeds, its t-interval, n, p and Holm."""
    records = []
    for (task, budget), cell in scores.groupby(["task", "budget"], sort=True):
        by_row = {row: g.set_index("seed")["score"] for row, g in cell.groupby("row")}
        for a, b in COMPARISONS:
            if a not in by_row or b not in by_row:
                continue
            diff, p, n = paired_test(by_row[a], by_row[b])
            both = pd.concat([by_row[a], by_row[b]], axis=1, join="inner").dropna()
            _, _, _, lo, hi = t_interval((both.iloc[:, 0] - both.iloc[:, 1]).tolist())
            records.append({"task": task, "budget": budget, "comparison": f"{a} - {b}", "diff": diff,
                            "ci_low": lo, "ci_high": hi, "n": n, "p": p})
    table = pd.DataFrame(records)
    if len(table):
        table["p_holm"] = holm(table["p"].to_numpy())
    return table


def to_markdown(runs: pd.DataFrame, paired: pd.DataFrame, means: pd.DataFrame) -> str:
    """The cell means, the paired table and the budget match, for docs/STUDY.md."""
    lines = ["| task | budget | " + " | ".join(means.columns) + " |", "|---|---|" + "---:|" * len(means.columns)]
    for (task, budget), row in means.iterrows():
        lines.append(f"| {task} | {budget} | " + " | ".join(f"{v:.1f}" if pd.notna(v) else "" for v in row) + " |")
    lines += ["", "| task | budget | comparison | diff [95 % CI] | n | p | Holm |", "|---|---|---|---:|---:|---:|---:|"]
    for r in paired.itertuples(index=False):
        lines.append(f"| {r.task} | {r.budget} | {r.comparison} | {r.diff:+.1f} [{r.ci_low:+.1f}, {r.ci_high:+.1f}] "
                     f"| {r.n} | {r.p:.3g} | {r.p_holm:.3g}{' *' if r.p_holm < 0.05 else ''} |")
    match = runs[runs["seed"].isin(SEEDS)].groupby(["arm", "task", "budget"]).agg(
        n=("seed", "size"), mean_over_k=("mean_over_k", "mean"), min_over_k=("mean_over_k", "min"),
        max_over_k=("mean_over_k", "max"), mean_active=("mean_active_ratio", "mean"),
        final_active=("final_active_ratio", "mean"), matched=("matched", "all"))
    lines += ["", "| arm | task | budget | n | mean count / k (min-max) | mean active ratio | final active ratio | "
                  "all within 10 % |", "|---|---|---|---:|---:|---:|---:|---|"]
    for (a, task, budget), m in match.iterrows():
        lines.append(f"| {a} | {task} | {budget} | {m.n} | {m.mean_over_k:.3f} ({m.min_over_k:.3f}-{m.max_over_k:.3f}) "
                     f"| {m.mean_active:.3f} | {m.final_active:.3f} | {'yes' if m.matched else 'no'} |")
    return "\n".join(lines) + "\n"


def report(runs_dir: str | Path, core_runs: str | Path, out: str | Path) -> dict:
    """Write runs.csv, paired.csv and summary.md (see the module's doc); returns the three tables."""
    adaptive = [r for r in finished_runs(load_results(runs_dir)) if r.mask == "adaptive"]
    core = [r for r in finished_runs(load_results(core_runs)) if r.mask in CORE_ROWS]
    if not adaptive:
        raise SystemExit(f"fishtune: error: no finished adaptive runs under {runs_dir}")
    k = {(r.task, r.budget): r.trainable for r in core if r.mask == "none"}
    runs = runs_table(adaptive, k)
    compared = [(arm(r), r) for r in adaptive if r.seed in SEEDS] + [(CORE_ROWS[r.mask], r) for r in core]
    scores = pd.DataFrame([{"task": r.task, "budget": int(r.budget), "row": row, "seed": r.seed, "score": r.score}
                           for row, r in compared])
    paired = paired_table(scores)
    order = ["original", "fish", "rand", "adaptive_fish", "adaptive_all"]
    means = scores.pivot_table(index=["task", "budget"], columns="row", values="score", aggfunc="mean")
    means = means[[c for c in order if c in means.columns]]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "runs.csv", index=False, float_format="%.6g")
    paired.to_csv(out / "paired.csv", index=False, float_format="%.6g")
    (out / "summary.md").write_text(to_markdown(runs, paired, means))
    print(f"fishtune.reports.adaptive_study: {len(adaptive)} adaptive runs, {len(core)} core runs -> {out}")
    return {"runs": runs, "paired": paired, "means": means}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fishtune.reports.adaptive_study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", required=True, help="the adaptive arms' result files")
    ap.add_argument("--core-runs", required=True, help="the core arm's result files (original, fish, rand)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    report(args.runs_dir, args.core_runs, args.out)


if __name__ == "__main__":
    main()
