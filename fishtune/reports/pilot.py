"""The mean-head study's pilot (docs/STUDY.md): the original row and the head-only reference per task and
learning rate, and the rule that picks the study's rate from them, applied to the committed files.

    python -m fishtune.reports.pilot --runs-dir results/study/mean/runs/pilot --out results/study/mean

writes pilot.csv (one line per task x row x lr: the seeds' scores, their mean, and for STS-B the
prediction std) and pilot.md (that table and the rule's outcome). The rule, fixed before the pilot
ran: a rate qualifies when the original row's mean beats the best head-only mean of the grid on every
task; of those, the highest mean over the tasks of the original's scores wins. SmolLM2's pilot (`--rule
clears-trivial`) qualifies a rate whose original mean clears the task's trivial baseline by 10 points on every
task instead (docs/STUDY.md); the head-only rows are then a reference beside it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..harness.results import RunResult, finished_runs, load_results
from . import results_frame
from .heads import pred_std
from .stats import baselines_from

RULES = ("beats-head-only", "clears-trivial")
TRIVIAL_MARGIN = 10.0   # clears-trivial: points above the trivial baseline on every task


def head_lr(result: RunResult) -> float:
    """The head's learning rate: the run's, unless train.head_lr_scale gives the head one of its own."""
    train = result.config["train"]
    scale = train.get("head_lr_scale")
    return result.lr if scale is None else result.lr / float(train["lr_scale"]) * float(scale)


def pilot_table(runs: list[RunResult]) -> pd.DataFrame:
    """One row per task x row x lr (and the head's, which is lr unless train.head_lr_scale) with the seeds' best dev scores, their mean and the prediction std."""
    runs = finished_runs(runs)
    frame = results_frame(runs)
    df = pd.DataFrame({"task": frame["task"], "row": frame["row"], "lr": frame["lr"],
                       "head_lr": [head_lr(r) for r in runs], "seed": frame["seed"], "score": frame["score"],
                       "pred_std": [pred_std(t, p) for t, p in zip(frame["task"], frame["dev_predictions"])]})
    out = df.groupby(["task", "row", "lr", "head_lr"]).agg(n=("score", "size"), mean=("score", "mean"),
                                                scores=("score", lambda s: ", ".join(f"{x:.1f}" for x in s)),
                                                pred_std=("pred_std", "mean")).reset_index()
    return out.round({"mean": 2, "pred_std": 3})


def choose_lr(table: pd.DataFrame, bar: dict[str, float] | None = None) -> tuple[float | None, dict[str, float]]:
    """(the chosen lr or None, {task: the bar}) by the pilot's rule: the original's mean must beat the bar on
    every task, by default the best head-only mean of the grid."""
    if bar is None:
        bar = table[table["row"] == "head only"].groupby("task")["mean"].max().to_dict()
    original = table[table["row"] == "original"].pivot(index="lr", columns="task", values="mean")
    qualified = original[(original > pd.Series(bar)).all(axis=1)]
    return (float(qualified.mean(axis=1).idxmax()) if len(qualified) else None), bar


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--reference-runs", help="a folder whose head-only runs are the reference (stage 2)")
    parser.add_argument("--rule", choices=RULES, default=RULES[0], help="which bar a rate's original row must beat")
    args = parser.parse_args(argv)
    runs = load_results(args.runs_dir)
    if args.reference_runs:
        runs += [r for r in load_results(args.reference_runs) if r.mask == "head_only"]
    if not runs:
        raise SystemExit(f"fishtune: error: no finished runs under {args.runs_dir}")
    table = pilot_table(runs)
    trivial = {t: b + TRIVIAL_MARGIN for t, b in baselines_from(finished_runs(runs)).items()}
    lr, reference = choose_lr(table, trivial if args.rule == "clears-trivial" else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "pilot.csv", index=False)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in table.itertuples(index=False)]
    best = ", ".join(f"{t} {v:.1f}" for t, v in reference.items())
    what = "the best head-only mean" if args.rule == "beats-head-only" else f"the trivial baseline + {TRIVIAL_MARGIN:g}"
    verdict = (f"chosen lr: {lr:g} (the original beats {what} on every task: {best})" if lr
               else f"no lr qualifies: the original never beats {what} on every task ({best})")
    (out / "pilot.md").write_text("\n".join(lines) + f"\n\n{verdict}; {len(runs)} runs\n")
    print(verdict)


if __name__ == "__main__":
    main()
