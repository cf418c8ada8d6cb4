"""FISH in all six PEFT methods (issue 27, docs/STUDY.md): Table 1's layout from the study's seeded runs,
with the paper's numbers for the same cells beside.

    python -m fishtune.reports.methods_study --runs-dir results/study/methods/runs \
        --runs-dir results/study/mean/runs/core --out results/study/methods

Reads every result file under the `--runs-dir` folders (LoRA's rows are the mean-head core arm's) and
writes under `--out`:
  table1.csv / .tex   per method x budget x {original, fish, rand}: per task (SST-2, STS-B) and Avg the
                      mean, std, n and 95 % t-interval over seeds; first the trivial baseline row;
                      `paper_<task>` the paper's Table 1 value of the same cell (rand: the paper has none);
                      `trivial` marks a cell whose every run scored the trivial baseline (a plumbing table
                      must never pass for a result)
  paired.csv          per method x budget x task x comparison (fish - original, fish - rand): the paired
                      difference over seeds, its 95 % t-interval, the paired t-test p and Holm's p over the
                      whole family (every method, budget and task); then the same per method x budget pooled
                      over the tasks (task "all", family "pooled", its own Holm family); `paper_delta` the
                      paper's fish - original (pooled: the mean of its deltas on the same tasks)
  forest.png / .pdf   those differences with their intervals per method, the paper's deltas marked
  cost.csv            per method and task: runs, seconds of training per run (mean, min, max), seconds of
                      Fisher per fish run, samples per second (median) and peak RSS (max) as recorded
  summary.md          the three tables in Markdown
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..harness.results import RunResult, finished_runs, load_results
from ..modes import MODES
from . import results_frame
from .aggregate import save_figure
from .paper import TASK_TITLES, paper_table
from .stats import baselines_from, holm, on_trivial_baseline, paired_test, t_interval
from .study import format_cell, frame, study_table

# Table 1's methods in its order, and the rows and comparisons this report makes of them.
METHOD_ORDER = ("lora", "dora", "adapter", "prefix", "ia3", "unipelt")
ROWS = ("original", "fish", "rand")
MASKS = ("none", "fish", "rand")   # the masks of ROWS
COMPARISONS = (("fish", "original"), ("fish", "rand"))


def methods_frame(results: list) -> pd.DataFrame:
    """study.frame's lines (task, budget, row, seed, score, ...) with each run's model and method."""
    runs = [r for r in results if r.mask in MASKS]
    df, files = frame(runs), results_frame(runs)
    df["model"], df["method"] = files["model"].to_numpy(), files["method"].to_numpy()
    return df


def _paper() -> pd.DataFrame:
    """The paper's Table 1 cells on bert-base: method, budget, row, task -> value."""
    paper = paper_table(1)
    return paper[paper["model"] == "bert_base"].set_index(["method", "budget", "row", "task"])["value"]


def methods_table(df: pd.DataFrame, baselines: dict[str, float]) -> pd.DataFrame:
    """study.study_table per method, one after another (the baseline row first, once): per task and Avg
    the seeds' mean, std, n and interval, with each line's method, the paper's value of the cell
    (`paper_<task>`) and whether every run sat on the trivial baseline (`<Task>_trivial`)."""
    tasks = [t for t in TASK_TITLES if t in set(df["task"])]
    paper = _paper()
    methods = [m for m in METHOD_ORDER if m in set(df["method"])] + sorted(set(df["method"]) - set(METHOD_ORDER))
    parts = []
    for method in methods:
        runs = df[df["method"] == method]
        table = study_table(runs, baselines, tasks)  # every method's table has every task's column
        if not parts:  # the baseline row, once: it is no method's cell
            parts.append(table[table["row"] == "baseline"].assign(method=""))
        table = table[table["row"] != "baseline"].assign(method=method)
        for t in tasks:
            scores = runs[runs["task"] == t].groupby(["budget", "row"])["score"]
            cells = list(zip(table["budget"], table["row"]))
            table[f"{TASK_TITLES[t]}_trivial"] = [on_trivial_baseline(
                scores.get_group(c) if c in scores.groups else [], baselines.get(t, math.nan)) for c in cells]
            table[f"paper_{t}"] = [paper.get((method, int(b), r, t), math.nan) for b, r in cells]
        parts.append(table)
    out = pd.concat(parts, ignore_index=True)
    return out[["method", *[c for c in out.columns if c != "method"]]]


def methods_paired(df: pd.DataFrame) -> pd.DataFrame:
    """Per method x budget x task x comparison the paired difference over seeds (runs of one precision
    pair), and, where there are two tasks or more, per method x budget x comparison the same pooled over
    tasks (task "all": pairs over task and seed, as docs/STUDY.md's hypotheses are stated). Holm runs over
    each family whole (`family`: "per task", "pooled"), as the claim is one claim about all methods."""
    paper = _paper()
    out = []
    groups = [(method, budget, task, g, ["row", "seed", "precision"])
              for (method, budget, task), g in df.groupby(["method", "budget", "task"])]
    groups += [(method, budget, "all", g, ["row", "task", "seed", "precision"])
               for (method, budget), g in df.groupby(["method", "budget"]) if g["task"].nunique() > 1]
    for method, budget, task, g, index in groups:
        scores = g.set_index(index)["score"]
        for a, b in COMPARISONS:
            if a not in scores.index.get_level_values(0) or b not in scores.index.get_level_values(0):
                continue
            sa, sb = scores.xs(a, level="row"), scores.xs(b, level="row")
            both = pd.concat([sa, sb], axis=1, join="inner").dropna()
            mean, std, n, lo, hi = t_interval(both.iloc[:, 0] - both.iloc[:, 1])
            _, p, _ = paired_test(sa, sb)
            # Pooled: the mean of the paper's deltas on the same tasks (its Avg column is over six tasks).
            tasks = sorted(set(g["task"])) if task == "all" else [task]
            delta = sum(paper.get((method, int(budget), a, t), math.nan) - paper.get((method, int(budget), b, t), math.nan)
                        for t in tasks) / len(tasks)
            out.append({"family": "pooled" if task == "all" else "per task", "method": method, "budget": int(budget),
                        "task": task, "comparison": f"{a} - {b}", "pairs": n, "mean_diff": mean, "std": std,
                        "ci_lo": lo, "ci_hi": hi, "p_ttest": p, "paper_delta": delta})
    table = pd.DataFrame(out)
    if len(table):
        order = {m: i for i, m in enumerate(METHOD_ORDER)}
        table = table.sort_values(["family", "method", "comparison", "budget", "task"],
                                  key=lambda c: c.map(order) if c.name == "method" else c,
                                  ascending=[False, True, True, True, True]).reset_index(drop=True)
        table["p_holm"] = table.groupby("family")["p_ttest"].transform(lambda p: holm(p.to_numpy(float)))
    return table


def methods_cost(results: list[RunResult], by: Sequence[str] = ("method", "task")) -> pd.DataFrame:
    """Per `by` group (method and task; model and task to set two models side by side), what a run of ROWS cost
    as its result files record it (on whatever machines trained them: the files' `host`, `threads` and
    `precision` say which); other masks' runs are left out. The Fisher time is the mean over the runs whose mask
    scores entries (fish; rand's 0 s would halve it)."""
    files = results_frame([r for r in results if r.mask in MASKS])
    files["scored"] = files["mask"].map(lambda m: MODES[m].score is not None)
    out = []
    for key, g in files.groupby(list(by), sort=False):
        train = g["train_seconds"].astype(float)
        out.append({**dict(zip(by, key)), "runs": len(g), "train_s_mean": train.mean(),
                    "train_s_min": train.min(), "train_s_max": train.max(),
                    "fisher_s_mean": g.loc[g["scored"], "fisher_seconds"].astype(float).mean(),
                    "samples_per_s_median": g["samples_per_second"].astype(float).median(),
                    "peak_rss_mb_max": g["peak_rss_mb"].astype(float).max(),
                    "precision": ",".join(sorted(set(g["precision"].dropna())))})
    cost = pd.DataFrame(out)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return cost.sort_values(list(by), key=lambda c: c.map(order) if c.name == "method" else c, ignore_index=True)


def cost_markdown(cost: pd.DataFrame, by: Sequence[str] = ("method", "task")) -> str:
    """cost.csv (of methods_cost with the same `by`) as Markdown."""
    lines = ["| " + " | ".join(by) + " | runs | train s per run, mean (min-max) | Fisher s per fish run | "
             "samples/s (median) | peak RSS MB (max) | precision |", "|" + "---|" * len(by) + "---:|---:|---:|---:|---:|---|"]
    for r in cost.to_dict("records"):
        keys = [TASK_TITLES.get(r[k], r[k]) if k == "task" else str(r[k]) for k in by]
        lines.append(f"| {' | '.join(keys)} | {r['runs']} | {r['train_s_mean']:.0f} "
                     f"({r['train_s_min']:.0f}-{r['train_s_max']:.0f}) | {_num(r['fisher_s_mean'], '.1f')} | "
                     f"{r['samples_per_s_median']:.1f} | {r['peak_rss_mb_max']:.0f} | {r['precision']} |")
    return "\n".join(lines) + "\n"


def _cell(rec: dict, title: str) -> str:
    text = format_cell(rec, title)
    return text + (" (trivial)" if rec.get(f"{title}_trivial") is True else "")


def _task_title(task: str) -> str:
    return "both tasks" if task == "all" else TASK_TITLES.get(task, task)


def _num(v: float, fmt: str = ".2f") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:{fmt}}"


def to_markdown(table: pd.DataFrame, paired: pd.DataFrame) -> str:
    """The table (mean [95 % CI] (n), the paper's value beside) and the paired differences, as Markdown."""
    tasks = [t for t in TASK_TITLES if TASK_TITLES[t] in table.columns and t != "avg"]
    head = " | ".join(f"{TASK_TITLES[t]} | paper" for t in tasks)
    lines = [f"| method | budget | row | precision | {head} | Avg |", "|---|---:|---|---|" + "---:|---:|" * len(tasks) + "---:|"]
    for rec in table.to_dict("records"):
        baseline = rec["row"] == "baseline"
        cells = " | ".join(f"{_cell(rec, TASK_TITLES[t])} | {'' if baseline else _num(rec.get(f'paper_{t}'))}"
                           for t in tasks)
        precision = rec.get("precision") if isinstance(rec.get("precision"), str) else ""
        lines.append(f"| {rec['method']} | {'' if baseline else rec['budget']} | {rec['label']} | {precision} | "
                     f"{cells} | {_cell(rec, 'Avg')} |")
    lines += ["", "| family | method | budget | task | comparison | pairs | mean diff [95 % CI] | p | p (Holm, in its family) "
              "| paper |", "|---|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for rec in paired.to_dict("records"):
        lines.append(f"| {rec['family']} | {rec['method']} | {rec['budget']} | {_task_title(rec['task'])} | "
                     f"{rec['comparison']} | {rec['pairs']} | {rec['mean_diff']:+.2f} [{rec['ci_lo']:+.2f}, "
                     f"{rec['ci_hi']:+.2f}] | {rec['p_ttest']:.3g} | {rec['p_holm']:.3g} | "
                     f"{_num(rec['paper_delta'], '+.2f')} |")
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    """The table as a LaTeX tabular: mean [CI] per task and Avg, the paper's value in parentheses."""
    tasks = [t for t in TASK_TITLES if TASK_TITLES[t] in table.columns and t != "avg"]
    lines = [r"\begin{tabular}{lll" + "r" * (len(tasks) + 1) + "}", r"\toprule",
             "Method & Budget & Row & " + " & ".join(TASK_TITLES[t] for t in tasks) + r" & Avg \\", r"\midrule"]
    for rec in table.to_dict("records"):
        cells = []
        for t in tasks:
            text = _cell(rec, TASK_TITLES[t]).replace("±", r"$\pm$").replace("(n=", "($n$=")
            paper = rec.get(f"paper_{t}", math.nan)
            cells.append(text + (f" ({paper:.2f})" if isinstance(paper, float) and not math.isnan(paper) else ""))
        avg = _cell(rec, "Avg").replace("±", r"$\pm$").replace("(n=", "($n$=")
        lines.append(f"{rec['method']} & {'' if rec['row'] == 'baseline' else rec['budget']} & {rec['label']} & "
                     + " & ".join(cells) + f" & {avg} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def forest(paired: pd.DataFrame, out: Path) -> list[Path]:
    """One panel per comparison: each method x budget x task's difference with its interval (the pooled
    rows as "both tasks"); the paper's fish - original delta of the cell as a cross."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comparisons = list(dict.fromkeys(paired["comparison"]))
    rows = paired[["method", "budget", "task"]].drop_duplicates().reset_index(drop=True)
    fig, axes = plt.subplots(1, len(comparisons), figsize=(5 * len(comparisons), 0.3 * len(rows) + 1.5),
                             sharey=True, squeeze=False)
    labels = [f"{m} b{b} {_task_title(t)}" for m, b, t in rows.itertuples(index=False)]
    y = {tuple(r): i for i, r in enumerate(rows.itertuples(index=False))}
    for ax, comparison in zip(axes[0], comparisons):
        part = paired[paired["comparison"] == comparison]
        for rec in part.to_dict("records"):
            i = y[(rec["method"], rec["budget"], rec["task"])]
            colour = "C0" if rec["p_holm"] < 0.05 else "0.4"
            ax.errorbar(rec["mean_diff"], i, xerr=[[rec["mean_diff"] - rec["ci_lo"]], [rec["ci_hi"] - rec["mean_diff"]]],
                        fmt="o", color=colour, capsize=2, markersize=4)
            if not math.isnan(rec["paper_delta"]):
                ax.plot(rec["paper_delta"], i, "x", color="C3", markersize=6)
        ax.axvline(0, color="0.7", lw=1)
        ax.set_title(comparison, fontsize=10)
        ax.set_xlabel("difference in dev score")
    axes[0][0].set_yticks(range(len(labels)), labels, fontsize=7)
    axes[0][0].invert_yaxis()
    fig.suptitle("points: here, with 95 % CI; blue: Holm < 0.05 in its family; x: the paper's delta", fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out / "forest")


def report(runs_dirs: Sequence[str | Path], out: str | Path, verbose: bool = True) -> dict:
    """Read the runs, write every output (see the module docstring); returns the tables."""
    say = print if verbose else (lambda *a, **k: None)
    out = Path(out)
    damaged: list[str] = []
    results = finished_runs([r for d in runs_dirs for r in load_results(d, damaged)])
    for d in damaged:
        say(f"fishtune.reports.methods_study: skipped unreadable {d}")
    df = methods_frame(results)
    if df.empty:
        say(f"fishtune.reports.methods_study: no result files under {', '.join(map(str, runs_dirs))}")
        return {"table": pd.DataFrame(), "paired": pd.DataFrame()}
    if df["model"].nunique() > 1:
        raise ValueError(f"the runs are of several models ({', '.join(sorted(set(df['model'])))}): Table 1's layout "
                         f"is one model's; point --runs-dir at one study's folders")
    twice = df[df.duplicated(["method", "task", "budget", "row", "seed"], keep=False)]
    if len(twice):
        raise ValueError(f"{len(twice)} runs share a method, cell and seed (e.g. {twice.iloc[0]['path']}): one "
                         f"run per cell and seed; point --runs-dir at one study's folders")
    table, paired = methods_table(df, baselines_from(results)), methods_paired(df)
    cost = methods_cost(results)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table1.csv", index=False, float_format="%.6g")
    (out / "table1.tex").write_text(to_latex(table))
    paired.to_csv(out / "paired.csv", index=False, float_format="%.6g")
    cost.to_csv(out / "cost.csv", index=False, float_format="%.6g")
    (out / "summary.md").write_text(to_markdown(table, paired) + "\n" + cost_markdown(cost))
    figures = forest(paired, out) if len(paired) else []
    say(f"fishtune.reports.methods_study: {len(df)} runs, {df['method'].nunique()} methods; tables in {out / 'summary.md'}"
        + "".join(f", {p}" for p in figures))
    return {"table": table, "paired": paired, "cost": cost, "frame": df}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fishtune.reports.methods_study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", action="append", required=True,
                    help="a folder of result files (repeat: the methods' runs and LoRA's core arm)")
    ap.add_argument("--out", default="results/study/methods", help="where the tables and the figure go")
    args = ap.parse_args(argv)
    try:
        report(args.runs_dir, args.out)
    except ValueError as e:
        raise SystemExit(f"fishtune.reports.methods_study: error: {e}") from None


if __name__ == "__main__":
    main()
