"""Does a mask really help? Mask comparison with paired tests, and where masks put their entries.

`python -m fishtune.mask_report --runs-dir runs --out results` writes
  masks.csv / masks.tex    original, fish, rand, rev and adaptive at each budget: mean and std over
                           seeds per task, Avg, and for each mode against original the mean paired
                           difference over (task, seed) pairs with a paired t-test p-value
  mask_placement.csv/.png  chosen entries per layer and module type (per model, method, mask)
  mask_overlap.csv/.png    Jaccard overlap of fish masks across tasks and seeds (same model, method,
                           layers, budget)
  mask_bootstrap.csv       each masked run against its original (same task and seed): paired
                           bootstrap over the dev examples, difference, 95 % interval, p-value
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..masks import mask_placement
from ..harness.results import RunResult, find_mask_file, finished_runs, load_mask_file, load_results
from ..harness.tasks import TASK_ORDER, get_task
from . import ROWS, precision_label, results_frame
from .stats import paired_bootstrap, paired_test



def _frame(results: list[RunResult]) -> pd.DataFrame:
    df = results_frame(results)
    # adaptive: the mean over training; masked rows: the budget row's ratio
    ratio = [r.budget_ratio_pct if r.ratio_pct_mean is None else r.ratio_pct_mean for r in results]
    return pd.DataFrame({**{k: df[k] for k in ("model", "method", "rank", "mask", "budget", "task", "seed", "score")},
                         "ratio_pct": pd.Series(ratio, dtype=float), "precision": df["precision"].map(precision_label)},
                        columns=["model", "method", "rank", "mask", "budget", "task", "seed", "score", "ratio_pct",
                                 "precision"])


def mask_table(results: list[RunResult]) -> pd.DataFrame:
    """One row per (model, method, rank, budget, mode): per-task mean and std over seeds, Avg, and the
    paired comparison with the original row at the same budget; runs of two precisions make two rows
    and never pair."""
    df = _frame(finished_runs(results))
    out = []
    for (model, method, rank, budget, precision), group in df.groupby(["model", "method", "rank", "budget", "precision"],
                                                                      dropna=False):
        tasks = [t for t in TASK_ORDER if t in set(group["task"])]
        by_mode = {m: g.set_index(["task", "seed"])["score"] for m, g in group.groupby("mask")}
        for mode in [m for m in ROWS if m in by_mode]:
            scores = by_mode[mode]
            row = {"model": model, "method": method, "rank": rank, "budget": budget, "precision": precision,
                   "row": ROWS[mode],
                   "ratio_pct": float(group[group["mask"] == mode]["ratio_pct"].mean()),
                   "seeds": int(scores.index.get_level_values("seed").nunique())}
            per_task = scores.groupby(level="task")
            for task in tasks:
                vals = per_task.get_group(task) if task in per_task.groups else pd.Series(dtype=float)
                row[task] = float(vals.mean()) if len(vals) else math.nan
                row[f"{task}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
            row["avg"] = float(np.mean([row[t] for t in tasks])) if tasks else math.nan
            if mode != "none" and "none" in by_mode:
                row["diff_vs_original"], row["p_value"], row["pairs"] = paired_test(scores, by_mode["none"])
            out.append(row)
    return pd.DataFrame(out)


def bootstrap_table(results: list[RunResult], n_resamples: int = 1000) -> pd.DataFrame:
    """Each masked run against the original run of the same model, method, rank, budget, task, seed and
    precision, by a paired bootstrap over their shared dev examples (fishtune.reports.stats.paired_bootstrap).
    Runs written before result files kept per-example predictions are left out."""
    keyed: dict[tuple, dict[str, RunResult]] = {}
    for r in results:
        if r.dev_predictions is not None:
            key = (r.model, r.method, r.rank, r.budget, r.task, r.seed, r.precision)
            keyed.setdefault(key, {})[r.mask] = r
    rows = []
    for (model, method, rank, budget, task, seed, _), by_mode in sorted(keyed.items(), key=lambda kv: str(kv[0])):
        original = by_mode.get("none")
        for mode in [m for m in ROWS if m != "none" and m in by_mode]:
            run = by_mode[mode]
            if original is None or run.dev_labels != original.dev_labels:
                continue  # no original on the same dev examples: nothing to pair with
            stats = paired_bootstrap(get_task(task), run.dev_predictions, original.dev_predictions,
                                     run.dev_labels, n_resamples=n_resamples, seed=int(seed))
            rows.append({"model": model, "method": method, "rank": rank, "budget": budget, "row": ROWS[mode],
                         "task": task, "seed": seed, "examples": len(run.dev_labels), **stats})
    return pd.DataFrame(rows, columns=["model", "method", "rank", "budget", "row", "task", "seed", "examples",
                                       "diff", "ci_low", "ci_high", "p_value", "resamples"])


def mask_table_latex(table: pd.DataFrame) -> str:
    tasks = [t for t in TASK_ORDER if t in table.columns]
    header = " & ".join(["Budget", "Row", "Ratio (\\%)", *[t.upper() for t in tasks], "Avg", "$\\Delta$", "$p$"])
    lines = ["\\begin{tabular}{ll" + "r" * (len(tasks) + 4) + "}", "\\toprule", header + " \\\\", "\\midrule"]
    for (model, method), group in table.groupby(["model", "method"]):
        lines.append(f"\\multicolumn{{{len(tasks) + 6}}}{{l}}{{{model} / {method}}} \\\\")
        for _, r in group.iterrows():
            cells = [f"{r[t]:.2f} $\\pm$ {r[t + '_std']:.2f}" if not math.isnan(r.get(t + "_std", math.nan))
                     else ("" if math.isnan(r[t]) else f"{r[t]:.2f}") for t in tasks]
            diff = r.get("diff_vs_original", math.nan)
            p = r.get("p_value", math.nan)
            lines.append(" & ".join([str(r["budget"]), r["row"], f"{r['ratio_pct']:.4f}", *cells, f"{r['avg']:.2f}",
                                     "" if pd.isna(diff) else f"{diff:+.2f}", "" if pd.isna(p) else f"{p:.3f}"])
                         + " \\\\")
        lines.append("\\midrule")
    lines[-1] = "\\bottomrule"
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


def saved_mask(result: RunResult) -> dict[str, torch.Tensor] | None:
    """The mask a run saved beside its result, or None: none saved, or a file that cannot be read
    (truncated; said on stderr and skipped, never fatal)."""
    path = find_mask_file(result.path)   # <run>.mask.safetensors, or an older run's <run>.mask.pt
    if path is None:
        return None
    try:
        return load_mask_file(path)[0]
    except Exception as e:  # noqa: BLE001 - whatever safetensors or torch.load make of a broken file
        print(f"mask_report: skipped unreadable mask file {path} ({type(e).__name__})", file=sys.stderr)
        return None


def placement(results: list[RunResult]) -> pd.DataFrame:
    """Chosen entries per layer and module type for every run that recorded its placement (the result
    file's `placement`) or saved a mask."""
    rows = []
    for r in results:
        for t in r.placement or mask_placement(saved_mask(r) or {}):
            rows.append({"model": r.model, "method": r.method, "mask": r.mask, "budget": r.budget,
                         "task": r.task, "seed": r.seed, "layer": t["layer"], "module": t["module"],
                         "chosen": t["chosen"], "entries": t["entries"]})
    return pd.DataFrame(rows)


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|A and B| / |A or B| over all entries of two masks on the same parameters."""
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union if union else 1.0


def overlap(results: list[RunResult], mode: str = "fish") -> pd.DataFrame:
    """Pairwise Jaccard overlap of `mode` masks of runs with the same model, method, layers and budget."""
    runs = [(r, m) for r in results if r.mask == mode and (m := saved_mask(r)) is not None]
    rows = []
    key = lambda rm: (rm[0].model, rm[0].method, rm[0].layers, rm[0].rank, rm[0].budget)  # noqa: E731
    for k, group in itertools.groupby(sorted(runs, key=lambda rm: (key(rm), rm[0].task, rm[0].seed)), key=key):
        for (ra, ma), (rb, mb) in itertools.combinations(list(group), 2):
            rows.append({"model": k[0], "method": k[1], "layers": k[2], "rank": k[3], "budget": k[4],
                         "task_a": ra.task, "seed_a": ra.seed, "task_b": rb.task, "seed_b": rb.seed,
                         "same": "seed" if ra.task == rb.task else ("task" if ra.seed == rb.seed else "both"),
                         "jaccard": jaccard(ma, mb)})
    return pd.DataFrame(rows)


def _plots(place: pd.DataFrame, lap: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if not place.empty:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        chosen = place[place["mask"] != "none"]
        for ax, by in zip(axes, ("layer", "module")):
            share = chosen.groupby(["mask", by])["chosen"].sum().unstack(0).fillna(0)
            (share / share.sum()).plot.bar(ax=ax)
            ax.set_ylabel("share of chosen entries")
            ax.set_title(f"mask entries per {by}")
        fig.tight_layout()
        fig.savefig(out / "mask_placement.png", dpi=120)
        plt.close(fig)
        written.append(out / "mask_placement.png")
    if not lap.empty:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        lap.boxplot(column="jaccard", by="same", ax=ax)
        ax.set_title("Jaccard overlap of fish masks")
        ax.set_xlabel("pairs differing in")
        fig.suptitle("")
        fig.tight_layout()
        fig.savefig(out / "mask_overlap.png", dpi=120)
        plt.close(fig)
        written.append(out / "mask_overlap.png")
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--out", default="results")
    ap.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples (0: skip)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    unreadable: list[str] = []
    results = load_results(args.runs_dir, unreadable)
    for u in unreadable:
        print(f"mask_report: skipped unreadable {u}", file=sys.stderr)
    if not results:
        print(f"mask_report: no result files under {args.runs_dir}")
        return
    table = mask_table(results)
    table.to_csv(out / "masks.csv", index=False, float_format="%.4f")
    (out / "masks.tex").write_text(mask_table_latex(table))
    place, lap = placement(results), overlap(results)
    place.to_csv(out / "mask_placement.csv", index=False)
    lap.to_csv(out / "mask_overlap.csv", index=False, float_format="%.4f")
    written = [out / f for f in ("masks.csv", "masks.tex", "mask_placement.csv", "mask_overlap.csv")]
    written += _plots(place, lap, out)
    show = [c for c in ["budget", "row", "seeds", *TASK_ORDER, "avg", "diff_vs_original", "p_value"] if c in table]
    print(table[show].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if args.resamples > 0:
        boot = bootstrap_table(results, args.resamples)
        boot.to_csv(out / "mask_bootstrap.csv", index=False, float_format="%.4f")
        written.append(out / "mask_bootstrap.csv")
        if len(boot):
            significant = boot[boot["p_value"] < 0.05]
            summary = boot.groupby(["budget", "row"]).agg(pairs=("diff", "size"), mean_diff=("diff", "mean")).join(
                significant.assign(better=significant["diff"] > 0).groupby(["budget", "row"]).agg(
                    better_p05=("better", "sum"), worse_p05=("better", lambda b: int((~b).sum()))))
            print("paired bootstrap per (task, seed) against the original run:")
            print(summary.fillna(0).to_string(float_format=lambda v: f"{v:.2f}"))
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
