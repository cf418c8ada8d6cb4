"""The mean-head study's pilot (docs/STUDY.md): the original row and the head-only reference per task and
learning rate, and the rule that picks the study's rate from them, applied to the committed files.

    python -m fishtune.reports.pilot --runs-dir results/study/mean/runs/pilot --out results/study/mean

writes pilot.csv (one line per task x row x lr: the seeds' scores, their mean, and for STS-B the
prediction std) and pilot.md (that table and the rule's outcome). The rule, fixed before the pilot
ran: a rate qualifies when the original row's mean beats the best head-only mean of the grid on every
task; of those, the highest mean over the tasks of the original's scores wins.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ..harness.results import load_results
from . import row_label


def pilot_table(runs: list[dict]) -> pd.DataFrame:
    """One row per task x row x lr (and the head's, which is lr unless train.head_lr_scale) with the seeds' best dev scores, their mean and the prediction std."""
    lines = []
    for r in runs:
        preds = np.asarray(r.get("dev_predictions") or [], dtype=float)
        train = r["config"]["train"]
        head_scale = train.get("head_lr_scale")
        head_lr = r["lr"] if head_scale is None else r["lr"] / float(train["lr_scale"]) * float(head_scale)
        lines.append({"task": r["task"], "row": row_label(r["mask"]), "lr": r["lr"], "head_lr": head_lr,
                      "seed": r["seed"],
                      "score": r["best"]["score"],
                      "pred_std": float(preds.std()) if r["task"] == "stsb" and preds.size else np.nan})
    df = pd.DataFrame(lines)
    out = df.groupby(["task", "row", "lr", "head_lr"]).agg(n=("score", "size"), mean=("score", "mean"),
                                                scores=("score", lambda s: ", ".join(f"{x:.1f}" for x in s)),
                                                pred_std=("pred_std", "mean")).reset_index()
    return out.round({"mean": 2, "pred_std": 3})


def choose_lr(table: pd.DataFrame) -> tuple[float | None, dict[str, float]]:
    """(the chosen lr or None, {task: the best head-only mean}) by the pilot's rule."""
    reference = table[table["row"] == "head only"].groupby("task")["mean"].max().to_dict()
    original = table[table["row"] == "original"].pivot(index="lr", columns="task", values="mean")
    qualified = original[(original > pd.Series(reference)).all(axis=1)]
    return (float(qualified.mean(axis=1).idxmax()) if len(qualified) else None), reference


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--reference-runs", help="a folder whose head-only runs are the reference (stage 2)")
    args = parser.parse_args(argv)
    runs = load_results(args.runs_dir)
    if args.reference_runs:
        runs += [r for r in load_results(args.reference_runs) if r["mask"] == "head_only"]
    if not runs:
        raise SystemExit(f"fishtune: error: no finished runs under {args.runs_dir}")
    table = pilot_table(runs)
    lr, reference = choose_lr(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "pilot.csv", index=False)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in table.itertuples(index=False)]
    best = ", ".join(f"{t} {v:.1f}" for t, v in reference.items())
    verdict = (f"chosen lr: {lr:g} (the original beats the best head-only mean on every task: {best})" if lr
               else f"no lr qualifies: the original never beats the best head-only mean on every task ({best})")
    (out / "pilot.md").write_text("\n".join(lines) + f"\n\n{verdict}; {len(runs)} runs\n")
    print(verdict)


if __name__ == "__main__":
    main()
