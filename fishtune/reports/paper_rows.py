"""A study beside the paper's own rows for the model it stands in for (docs/STUDY.md "A second real model"):
SmolLM2-135M's original, fish and rand LoRA rows next to Table 2's LLaMA-3.2-1B rows.

    python -m fishtune.reports.paper_rows --runs-dir results/study/smollm2/runs/core \\
        --paper-model llama32_1b --out results/study/smollm2/core       (make report NAME=smollm2)

writes under --out what `fishtune.study` writes (table5.csv, paired.csv with Holm, figure, summary.md) and:
  paper.csv     per budget x task: the paper's original and FISH values and their difference (Table 2,
                fishtune/reports/paper_data), beside this study's original and fish means and its paired
                fish - original and fish - rand (mean, 95 % t-interval, n, the t-test's p and its Holm
                adjustment within FAMILIES: hypothesis L3's families, fixed before the runs)
  placement.csv per mode x budget: the mean share of the chosen entries per layer and per module
                (fish: where the Fisher mask puts its k entries among the fish_layers; rand: at random)
  cost.csv      with --cost-beside DIR: per model x task, seconds of training per run, Fisher seconds,
                samples/s and peak memory of this study's runs beside another study's (e.g. MiniLM's core arm)
and appends these tables to summary.md.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..harness.results import finished_runs, load_results
from ..harness.tasks import TASK_ORDER
from .methods_study import cost_markdown, methods_cost
from .paper import TASK_TITLES, paper_table
from .study import report as study_report
from .stats import holm
from .study_why import placement_table

PAPER_TABLE = 2
# Hypothesis L3 (docs/STUDY.md, fixed before the runs): fish - original > 0, one-sided, Holm over its cells;
# fish - rand two-sided, Holm over its own cells.
FAMILIES = {("fish", "original"): "greater", ("fish", "rand"): "two-sided"}


def paper_rows(paper_model: str) -> pd.DataFrame:
    """The paper's original and FISH LoRA rows of `paper_model` (ValueError naming the models it has)."""
    paper = paper_table(PAPER_TABLE)
    rows = paper[(paper["model"] == paper_model) & (paper["method"] == "lora") & paper["row"].isin(["original", "fish"])]
    if rows.empty:
        raise ValueError(f"Table {PAPER_TABLE} has no LoRA rows of model {paper_model!r}; it has "
                         f"{', '.join(sorted(set(paper['model'])))}")
    return rows


def paper_beside(table: pd.DataFrame, paired: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """One line per budget x task that this study's table and the paper's rows (paper_rows) both have."""
    lines = []
    for (budget, task), cells in paper.groupby(["budget", "task"]):
        ours = table[table["budget"] == budget].set_index("row")
        title = TASK_TITLES.get(task)
        if task not in TASK_ORDER or title not in ours.columns or not {"original", "fish"} <= set(ours.index):
            continue
        value = dict(zip(cells["row"], cells["value"].astype(float)))
        line = {"budget": int(budget), "task": task, "paper_original": value.get("original"),
                "paper_fish": value.get("fish"), "paper_diff": value.get("fish", math.nan) - value.get("original", math.nan),
                "original": ours.loc["original", title], "original_n": ours.loc["original", f"{title}_n"],
                "fish": ours.loc["fish", title], "fish_n": ours.loc["fish", f"{title}_n"]}
        for a, b in FAMILIES:
            rec = paired[(paired["budget"] == budget) & (paired["task"] == task) & (paired["comparison"] == f"{a} - {b}")]
            rec = rec.iloc[0].to_dict() if len(rec) else {}
            key = f"{a}_{b}"
            for col, name in (("mean_diff", ""), ("ci_lo", "_lo"), ("ci_hi", "_hi"), ("pairs", "_n"), ("p_ttest", "_p")):
                line[key + name] = rec.get(col, math.nan)
            if FAMILIES[a, b] == "greater" and not math.isnan(line[key + "_p"]):  # the t-test's one-sided p
                p = line[key + "_p"] / 2
                line[key + "_p"] = p if line[key] > 0 else 1 - p
        lines.append(line)
    beside = pd.DataFrame(lines)
    for a, b in FAMILIES:   # each family: its comparison over the cells here (budget x task)
        key = f"{a}_{b}"
        beside[key + "_holm"] = holm(beside[key + "_p"].to_numpy(float)) if len(beside) else []
    return beside


def _diff(rec: dict, key: str) -> str:
    if math.isnan(rec[key]):
        return ""
    ci = f" [{rec[key + '_lo']:+.1f}, {rec[key + '_hi']:+.1f}]" if not math.isnan(rec[key + "_lo"]) else ""
    return f"{rec[key]:+.1f}{ci} (n={int(rec[key + '_n'])}, Holm {rec[key + '_holm']:.2g})"


def to_markdown(beside: pd.DataFrame, placement: pd.DataFrame, paper_model: str) -> str:
    """The paper's rows beside ours, and where the masks put their entries, as Markdown."""
    lines = [f"## Beside the paper's Table {PAPER_TABLE} ({paper_model})", "",
             "Paired over seeds, mean [95 % t-interval] (n, Holm p). fish - original: one-sided (fish > original), "
             "Holm over its cells; fish - rand: two-sided, Holm over its cells (hypothesis L3, docs/STUDY.md).", "",
             "| budget | task | paper original | paper FISH | paper FISH - original | original | fish | "
             "fish - original | fish - rand |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for rec in beside.to_dict("records"):
        lines.append(f"| {rec['budget']} | {TASK_TITLES[rec['task']]} | {rec['paper_original']:.2f} | "
                     f"{rec['paper_fish']:.2f} | {rec['paper_diff']:+.2f} | {rec['original']:.1f} | {rec['fish']:.1f} | "
                     f"{_diff(rec, 'fish_original')} | {_diff(rec, 'fish_rand')} |")
    lines += ["", "## Where the masks put their entries (mean share of the chosen entries, over runs)", "",
              "| mode | budget | by | value | share | runs |", "|---|---:|---|---|---:|---:|"]
    for rec in placement.to_dict("records"):
        lines.append(f"| {rec['mode']} | {rec['budget']} | {rec['by']} | {rec['value']} | {rec['share_mean']:.3f} | "
                     f"{rec['runs']} |")
    return "\n".join(lines) + "\n"


COST_BY = ("model", "task")


def report(runs_dir: str | Path, out: str | Path, paper_model: str, n_resamples: int = 1000,
           cost_beside: str | Path | None = None) -> dict:
    """fishtune.study's outputs, then the paper's rows beside them, the placement and, with `cost_beside`
    (another study's runs folder), the cost of a run of each (the module's doc)."""
    out, paper = Path(out), paper_rows(paper_model)
    tables = study_report(runs_dir, out, n_resamples)
    if tables["table"].empty:
        return tables
    beside = paper_beside(tables["table"], tables["paired"], paper)
    placement = placement_table(tables["results"])
    beside.to_csv(out / "paper.csv", index=False, float_format="%.6g")
    placement.to_csv(out / "placement.csv", index=False, float_format="%.6g")
    markdown = to_markdown(beside, placement, paper_model)
    written = [out / "paper.csv", out / "placement.csv"]
    cost = None
    if cost_beside is not None:
        other = finished_runs(load_results(cost_beside))
        cost = methods_cost([*tables["results"], *other], COST_BY)
        cost.to_csv(out / "cost.csv", index=False, float_format="%.6g")
        markdown += (f"\n## Cost of a run beside {cost_beside}\n\nAs the result files record it (the machines and "
                     f"their load differ between studies).\n\n" + cost_markdown(cost, COST_BY))
        written.append(out / "cost.csv")
    with open(out / "summary.md", "a") as f:
        f.write("\n" + markdown)
    print(f"fishtune.paper_rows: {', '.join(map(str, written))} (appended to {out / 'summary.md'})")
    return {**tables, "paper": beside, "placement": placement, "cost": cost}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fishtune.reports.paper_rows", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", required=True, help="the study's result files (one run per cell and seed)")
    ap.add_argument("--out", required=True, help="where the tables and the figure go")
    ap.add_argument("--paper-model", required=True, help=f"the model column of Table {PAPER_TABLE}, e.g. llama32_1b")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per pair (default 1000)")
    ap.add_argument("--cost-beside", metavar="DIR", help="another study's runs folder: cost.csv sets a run of each "
                    "side by side (e.g. results/study/mean/runs/core, MiniLM's)")
    args = ap.parse_args(argv)
    if args.cost_beside is not None and not Path(args.cost_beside).is_dir():
        print(f"fishtune.paper_rows: error: --cost-beside {args.cost_beside}: not a folder", file=sys.stderr)
        raise SystemExit(2)
    try:
        paper_rows(args.paper_model)
    except ValueError as e:   # a bad argument: one line, exit 2, before any work
        print(f"fishtune.paper_rows: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        report(args.runs_dir, args.out, args.paper_model, args.resamples, args.cost_beside)
    except ValueError as e:
        raise SystemExit(f"fishtune.paper_rows: error: {e}") from None


if __name__ == "__main__":
    main()
