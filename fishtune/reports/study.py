"""The study: does a FISH mask beat the original PEFT run at the same budget, with seeds and intervals?

    python -m fishtune.study --runs-dir results/study/runs --out results/study    (make report NAME=pooler does this)

Reads the result files of `+experiment=study` (docs/STUDY.md) and writes under `--out`:
  table5.csv / .tex   Table 5's layout (rows original, fish, rand, rev, adaptive per budget level, one
                      column per task, Avg): mean, sample std, n and the 95 % t-interval of the mean
                      over seeds per cell; first the trivial baseline row (majority class, or a
                      constant prediction for STS-B) computed from the dev labels in the result files
  paired.csv          per budget and comparison (fish - original, rand - original, rev - original,
                      adaptive - original, fish - rand, rand - rev): over (task, seed) pairs and per
                      task, the mean paired difference, its 95 % t-interval, the paired t-test p-value
                      and its Holm adjustment (p_holm; one family for the pooled rows, one for the
                      per-task rows),
                      the smallest difference the test would detect with 80 % power, and the paired
                      bootstrap over dev examples per pair (counts better / worse at p < 0.05)
  figure.png / .pdf   per task, each row's mean with its interval and the seeds, the baseline drawn in
  summary.md          the two tables in Markdown, for the README

`adaptive` (FisherAdapTune starting from the FISH mask, conf/mask/adaptive_fish.yaml) only freezes, so
its trainable count shrinks below the budget's k during training. Its row counts as budget-matched when
every run's mean trainable count over training (the result's ratio_pct_mean) is within 10 % of k;
otherwise the row and its comparisons are labelled "not budget-matched" (reported apart, not as a
same-budget result).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .aggregate import save_figure
from .paper import TASK_TITLES
from ..harness.results import RunResult, finished_runs, load_results
from .stats import baselines_from, detectable_difference, holm, paired_bootstrap, paired_test, t_interval
from ..harness.tasks import TASK_ORDER, get_task
from . import ROWS, precision_label, results_frame

COMPARISONS = (("fish", "original"), ("rand", "original"), ("rev", "original"), ("adaptive", "original"),
               ("fish", "rand"), ("rand", "rev"))
MATCH_TOLERANCE = 0.10   # adaptive: mean trainable count within 10 % of k
PAIRED_COLUMNS = ["budget", "comparison", "task", "pairs", "mean_diff", "std", "ci_lo", "ci_hi", "p_ttest",
                  "detectable_80", "a_wins", "b_wins", "boot_better", "boot_worse", "boot_pairs", "budget_matched"]


def _row(result: RunResult) -> str:
    return ROWS[result.mask]


def frame(results: list[RunResult]) -> pd.DataFrame:
    """One line per run: task, budget, row, seed, score, the budget's k and (adaptive) the mean count."""
    runs = [r for r in results if r.mask in ROWS]
    df = results_frame(runs)
    # adaptive starts from the FISH mask of k entries and only freezes: its mean count over training
    mean_count = [r.trainable if r.ratio_pct_mean is None else r.ratio_pct_mean * r.total / 100 for r in runs]
    return pd.DataFrame({"task": df["task"], "budget": df["budget"].astype(int), "row": df["row"], "seed": df["seed"],
                         "score": df["score"].astype(float), "ratio_pct": df["budget_ratio_pct"], "k": df["trainable"],
                         "mean_trainable": pd.Series(mean_count),
                         "precision": df["precision"].map(precision_label), "path": df["path"]})


def adaptive_matched(df: pd.DataFrame) -> dict[int, tuple[float, float, float, bool]]:
    """budget -> (mean, min, max) over adaptive runs of (mean trainable count over training) / k, and
    whether every run is within MATCH_TOLERANCE of k (budget-matched)."""
    out = {}
    for b, g in df[df["row"] == "adaptive"].groupby("budget"):
        r = g["mean_trainable"] / g["k"]
        out[int(b)] = (float(r.mean()), float(r.min()), float(r.max()), bool(((r - 1).abs() <= MATCH_TOLERANCE).all()))
    return out


def study_table(df: pd.DataFrame, baselines: dict[str, float], tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 5's layout with the baseline row first; per task mean, std, n, low, high; Avg. `tasks`: the
    table's task columns (default: those of `df`); Avg needs a seed's score on each of them."""
    tasks = [t for t in TASK_ORDER if t in set(df["task"] if tasks is None else tasks)]
    matched = adaptive_matched(df)
    records = [{"budget": 0, "row": "baseline", "label": "trivial baseline (majority class / constant)",
                "ratio_pct": 0.0, **{f"{TASK_TITLES[t]}{s}": v for t in tasks
                                     for s, v in (("", baselines.get(t, math.nan)), ("_n", 0))},
                "Avg": float(np.mean([baselines.get(t, math.nan) for t in tasks]))}]
    for budget in sorted(set(df["budget"])):
        for row in ROWS.values():
            cell = df[(df["budget"] == budget) & (df["row"] == row)]
            if cell.empty:
                continue
            label = row
            if row == "adaptive":
                mean, low, high, ok = matched[budget]
                label += f" (mean count {mean:.2f} k, runs {low:.2f}-{high:.2f} k{'' if ok else ', not budget-matched'})"
            rec = {"budget": budget, "row": row, "label": label, "ratio_pct": float(cell["ratio_pct"].median()),
                   "precision": ",".join(sorted(set(cell["precision"].dropna())))}
            for t in tasks:
                title = TASK_TITLES[t]
                m, s, n, lo, hi = t_interval(cell[cell["task"] == t]["score"])
                rec.update({title: m, f"{title}_std": s, f"{title}_n": n, f"{title}_lo": lo, f"{title}_hi": hi})
            # Avg: over the seeds that have every task, the mean of the task columns, with its interval.
            wide = cell.pivot_table(index="seed", columns="task", values="score").reindex(columns=tasks).dropna()
            m, s, n, lo, hi = t_interval(wide.mean(axis=1)) if len(wide) else t_interval([])
            rec.update({"Avg": m, "Avg_std": s, "Avg_n": n, "Avg_lo": lo, "Avg_hi": hi})
            records.append(rec)
    return pd.DataFrame(records)


def paired_table(df: pd.DataFrame, results: list[RunResult], n_resamples: int = 1000) -> pd.DataFrame:
    """Per budget and comparison, pooled over tasks and per task: paired t-test and per-pair bootstraps.
    Two runs pair only when they trained in the same precision (fishtune.parity compares precisions)."""
    by_key = {(_row(r), int(r.budget), r.task, r.seed): r for r in results if r.mask in ROWS}
    matched = adaptive_matched(df)
    out = []
    for budget in sorted(set(df["budget"])):
        for a, b in COMPARISONS:
            scores = {row: df[(df["budget"] == budget) & (df["row"] == row)].set_index(["task", "seed", "precision"])["score"]
                      for row in (a, b)}
            if scores[a].empty or scores[b].empty:
                continue
            # Per pair: the bootstrap over the dev examples both runs predicted.
            boot = {}
            for task, seed, _ in scores[a].index.intersection(scores[b].index):
                ra, rb = by_key.get((a, budget, task, seed)), by_key.get((b, budget, task, seed))
                if ra and rb and ra.dev_predictions and rb.dev_predictions:
                    res = paired_bootstrap(get_task(task), ra.dev_predictions, rb.dev_predictions,
                                           ra.dev_labels, n_resamples=n_resamples, seed=int(seed))
                    boot[(task, seed)] = res
            not_matched = "adaptive" in (a, b) and not matched.get(budget, (0, 0, 0, False))[3]
            for task in ["all", *[t for t in TASK_ORDER if t in set(df["task"])]]:
                sa, sb = scores[a], scores[b]
                if task != "all":
                    sa = sa[sa.index.get_level_values("task") == task]
                    sb = sb[sb.index.get_level_values("task") == task]
                both = pd.concat([sa, sb], axis=1, join="inner").dropna()
                diffs = both.iloc[:, 0] - both.iloc[:, 1]
                mean, std, n, lo, hi = t_interval(diffs)
                _, p, _ = paired_test(sa, sb)
                pairs = [boot[i[:2]] for i in both.index if i[:2] in boot]
                out.append({"budget": budget, "comparison": f"{a} - {b}", "task": task, "pairs": n,
                            "mean_diff": mean, "std": std, "ci_lo": lo, "ci_hi": hi, "p_ttest": p,
                            "detectable_80": detectable_difference(std, n),
                            "a_wins": int((diffs > 0).sum()), "b_wins": int((diffs < 0).sum()),
                            "boot_better": sum(r["p_value"] < 0.05 and r["diff"] > 0 for r in pairs),
                            "boot_worse": sum(r["p_value"] < 0.05 and r["diff"] < 0 for r in pairs),
                            "boot_pairs": len(pairs), "budget_matched": not not_matched})
    table = pd.DataFrame(out, columns=PAIRED_COLUMNS)   # no pair yet (a study's first runs): the columns alone
    if len(table):  # two families: the pooled comparisons, and the per-task ones
        pooled = table["task"] == "all"
        table["p_holm"] = np.nan
        for family in (pooled, ~pooled):
            table.loc[family, "p_holm"] = holm(table.loc[family, "p_ttest"].to_numpy(float))
    return table


def format_cell(rec: dict, title: str) -> str:
    """One table cell: 'mean ± std [95 % CI] (n=N)' of column `title` of a table line (the baseline row's
    value alone; '' where the cell is empty)."""
    m = rec.get(title, math.nan)
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return ""
    if rec["row"] == "baseline":
        return f"{m:.1f}"
    lo, hi, n = rec.get(f"{title}_lo"), rec.get(f"{title}_hi"), rec.get(f"{title}_n")
    ci = f" [{lo:.1f}, {hi:.1f}]" if lo is not None and not math.isnan(lo) else ""
    return f"{m:.1f} ± {rec[f'{title}_std']:.1f}{ci} (n={int(n)})" if n and n > 1 else f"{m:.1f} (n={int(n)})"


def to_markdown(table: pd.DataFrame, paired: pd.DataFrame) -> str:
    """The study table (mean ± std [95 % CI] (n)) and the pooled paired comparisons, as Markdown."""
    titles = [c for c in table.columns if c in TASK_TITLES.values() and c != "Avg"] + ["Avg"]
    lines = ["| budget | row | ratio % | precision | " + " | ".join(titles) + " |",
             "|---|---|---:|---|" + "---:|" * len(titles)]
    for rec in table.to_dict("records"):
        budget = "" if rec["row"] == "baseline" else str(rec["budget"])
        ratio = "" if rec["row"] == "baseline" else f"{rec['ratio_pct']:.4f}"
        precision = rec.get("precision") if isinstance(rec.get("precision"), str) else ""
        lines.append(f"| {budget} | {rec['label']} | {ratio} | {precision} | "
                     + " | ".join(format_cell(rec, t) for t in titles) + " |")
    lines += ["", "| budget | comparison | pairs | mean diff [95 % CI] | p (paired t) | p (Holm) | detectable (80 % power) | "
              "wins a / b | bootstrap better / worse (p < 0.05) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for rec in paired[paired["task"] == "all"].to_dict("records"):
        note = "" if rec["budget_matched"] else " (not budget-matched)"
        lines.append(f"| {rec['budget']} | {rec['comparison']}{note} | {rec['pairs']} | {rec['mean_diff']:+.2f} "
                     f"[{rec['ci_lo']:+.2f}, {rec['ci_hi']:+.2f}] | {rec['p_ttest']:.3g} | {rec['p_holm']:.3g} | "
                     f"{rec['detectable_80']:.2f} | "
                     f"{rec['a_wins']} / {rec['b_wins']} | {rec['boot_better']} / {rec['boot_worse']} of {rec['boot_pairs']} |")
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs tabular of the study table: mean ± std and [CI] per cell."""
    titles = [c for c in table.columns if c in TASK_TITLES.values() and c != "Avg"] + ["Avg"]
    lines = [r"\begin{tabular}{l l r " + "r" * len(titles) + "}", r"\toprule",
             " & ".join(["Budget", "Row", r"Ratio (\%)", *titles]) + r" \\", r"\midrule"]
    prev = None
    for rec in table.to_dict("records"):
        if prev is not None and rec["budget"] != prev:
            lines.append(r"\midrule")
        prev = rec["budget"]
        cells = [format_cell(rec, t).replace("±", r"$\pm$").replace("(n=", "($n$=") for t in titles]
        budget = "" if rec["row"] == "baseline" else str(rec["budget"])
        ratio = "" if rec["row"] == "baseline" else f"{rec['ratio_pct']:.4f}"
        lines.append(" & ".join([budget, rec["label"].replace("%", r"\%"), ratio, *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def plot(df: pd.DataFrame, baselines: dict[str, float], out: Path, setting: str) -> list[Path]:
    """Per task one panel: each row's seeds (dots) and mean with its 95 % interval, per budget level;
    the trivial baseline as a dashed line. `setting` names the model and method in the title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASK_ORDER if t in set(df["task"])]
    budgets = sorted(set(df["budget"]))
    rows = [r for r in ROWS.values() if r in set(df["row"])]
    colours = dict(zip(ROWS.values(), ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                                       "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]))  # matplotlib's tab10
    unmatched = [str(b) for b, (*_, ok) in adaptive_matched(df).items() if not ok]
    adaptive_label = f"adaptive (not budget-matched: budget {', '.join(unmatched)})" if unmatched else "adaptive"
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(3.2 * len(tasks), 8), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for bi, budget in enumerate(budgets):
            for ri, row in enumerate(rows):
                x = bi * (len(rows) + 1) + ri
                vals = df[(df["task"] == task) & (df["budget"] == budget) & (df["row"] == row)]["score"]
                if vals.empty:
                    continue
                m, _, n, lo, hi = t_interval(vals)
                ax.scatter(np.full(len(vals), x) + np.linspace(-0.2, 0.2, len(vals)), vals, s=6,
                           color=colours[row], alpha=0.35, linewidths=0)
                err = [[m - lo], [hi - m]] if n > 1 else None
                ax.errorbar([x], [m], yerr=err, fmt="o", ms=5, color=colours[row], capsize=3,
                            label=(adaptive_label if row == "adaptive" else row) if (task == tasks[0] and bi == 0) else None)
        ax.axhline(baselines.get(task, math.nan), color="0.4", ls="--", lw=1)
        # With few seeds a t-interval can span hundreds of points: the axis follows the seeds and the
        # baseline, and longer bars run off it (the table has their ends).
        shown = [*df[df["task"] == task]["score"], baselines.get(task, 0.0)]
        pad = 0.15 * (max(shown) - min(shown)) or 1.0
        ax.set_ylim(min(shown) - pad, max(shown) + pad)
        centres = [bi * (len(rows) + 1) + (len(rows) - 1) / 2 for bi in range(len(budgets))]
        ax.set_xticks(centres, [f"budget {b}" for b in budgets])
        metric = get_task(task).metric.replace("_", " / ").replace("f1 / acc", "F1+acc / 2")
        ax.set_title(f"{TASK_TITLES[task]} ({metric})", fontsize=10)
    axes[0][0].set_ylabel("best dev score (x100)")
    fig.legend(loc="lower center", ncol=len(rows) + 1, fontsize=8, frameon=False,
               handles=[*axes[0][0].get_legend_handles_labels()[0],
                        plt.Line2D([], [], color="0.4", ls="--", lw=1)],
               labels=[*axes[0][0].get_legend_handles_labels()[1], "trivial baseline"])
    fig.suptitle(f"FISH-Tuning study: {setting}; mean and 95 % interval over seeds (dots: seeds; "
                 "the axis shows the seeds' range, longer intervals run off it)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    out.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out / "figure")


def report(runs_dir: str | Path, out: str | Path, n_resamples: int = 1000, verbose: bool = True) -> dict:
    """Write every output of the study (see the module docstring); returns the tables and the finished runs."""
    say = print if verbose else (lambda *a, **k: None)
    out = Path(out)
    unreadable: list[str] = []
    results = finished_runs(load_results(runs_dir, unreadable))
    for u in unreadable:  # a cut file is skipped (its run redoes it), never fatal
        say(f"fishtune.study: skipped unreadable {u}")
    df = frame(results)
    if df.empty:
        say(f"fishtune.study: no study result files under {runs_dir}")
        return {"table": pd.DataFrame(), "paired": pd.DataFrame()}
    twice = df[df.duplicated(["task", "budget", "row", "seed"], keep=False)]
    if len(twice):  # e.g. the folder above several arms, or two learning rates of one cell
        first = twice.iloc[0]
        same = twice[(twice[["task", "budget", "row", "seed"]] == first[["task", "budget", "row", "seed"]]).all(axis=1)]
        raise ValueError(f"{runs_dir} holds {len(same)} runs of {first['row']} on {first['task']} at budget "
                         f"{first['budget']}, seed {first['seed']} ({len(twice)} runs share a cell and seed): one run "
                         f"per cell and seed is a study; point --runs-dir at one study's folder (e.g. "
                         f"{Path(first['path']).parent})")
    baselines = baselines_from(results)
    table = study_table(df, baselines)
    paired = paired_table(df, results, n_resamples)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table5.csv", index=False, float_format="%.6g")
    (out / "table5.tex").write_text(to_latex(table))
    paired.to_csv(out / "paired.csv", index=False, float_format="%.6g")
    (out / "summary.md").write_text(to_markdown(table, paired))
    models = "/".join(sorted({r.model for r in results if r.mask in ROWS}))
    figures = plot(df, baselines, out, "MiniLM + LoRA r1" if models == "minilm" else f"{models} + LoRA r1")
    counts = df.groupby(["budget", "row", "task"]).size()
    say(f"fishtune.study: {len(df)} runs under {runs_dir}; cells {len(counts)}, seeds per cell "
        f"{counts.min()}..{counts.max()}")
    say(f"  {out / 'table5.csv'}, .tex, {out / 'paired.csv'}, {out / 'summary.md'} (the tables), "
        + ", ".join(str(p) for p in figures))
    return {"table": table, "paired": paired, "frame": df, "results": results}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fishtune.study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", default="results/study/runs", help="the study's result files")
    ap.add_argument("--out", default="results/study", help="where the tables and the figure go")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per pair (default 1000)")
    args = ap.parse_args(argv)
    try:
        report(args.runs_dir, args.out, args.resamples)
    except ValueError as e:
        raise SystemExit(f"fishtune.study: error: {e}") from None


if __name__ == "__main__":
    main()
