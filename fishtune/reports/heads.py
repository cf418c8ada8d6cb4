"""The embedded model's two heads side by side: the mean-head study's cells beside the pooler-head
study's, and the mean head's original row against its references (docs/STUDY.md, issue 26).

    python -m fishtune.reports.heads --old results/study/runs results/study/why/runs \
        --new results/study/mean/runs --probe results/probe/heads.csv --out results/study/mean

Writes under `--out`:
  heads.csv     per cell both studies hold (task, budget, row, setting: 1,000 examples / 3 epochs, or
                the converged arm's early stopping), each head's mean with its 95 % t-interval and n,
                the precisions, and mean - pooler paired over seeds (a seed draws the same training
                subset under both heads; two runs pair only in one precision) with the t-test p and
                Holm's p over the table
  original.csv  per task and budget, the original row under each head (mean, interval, n, the mean
                prediction std for STS-B), the head-only reference, original - head only paired over
                seeds (p, Holm over the table) and the probe's closed-form ceiling on 1,000 examples
  heads.md      both tables in Markdown
The two heads also differ in their rates (the mean head's study gives the classifier its own, 2e-2), so
a difference is the setup's, not the pooler's alone.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..harness.results import RunResult, finished_runs, load_results
from . import precision_label, results_frame
from .stats import holm, one_sample_test, t_interval

KEY = ["setting", "task", "budget", "row"]


def pred_std(task: str, predictions: list | None) -> float:
    """The std of a run's dev predictions on STS-B (a collapsed regressor predicts one constant); NaN elsewhere."""
    preds = np.asarray(predictions or [], dtype=float)
    return float(preds.std()) if task == "stsb" and preds.size else math.nan


def runs_frame(results: list[RunResult]) -> pd.DataFrame:
    """One line per finished run: its head, setting, task, budget, row, seed, score, prediction std."""
    df = results_frame(finished_runs(results))
    config = df["config"]
    return pd.DataFrame({
        "head": config.map(lambda c: c["model"].get("head", "pooler")), "task": df["task"],
        "budget": df["budget"].astype(int), "row": df["row"], "seed": df["seed"].astype(int),
        "lr": df["lr"].astype(float),
        "setting": config.map(lambda c: f"{c['data']['train_samples']} ex, {c['train']['max_epochs']} ep"),
        "score": df["score"].astype(float), "precision": df["precision"].map(precision_label),
        "pred_std": [pred_std(t, p) for t, p in zip(df["task"], df["dev_predictions"])]},
        columns=["head", "task", "budget", "row", "seed", "lr", "setting", "score", "precision", "pred_std"])


def _cell(scores: pd.Series, prefix: str) -> dict:
    m, _, n, lo, hi = t_interval(scores)
    return {prefix: m, f"{prefix}_lo": lo, f"{prefix}_hi": hi, f"{prefix}_n": n}


def heads_table(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Every cell of `new` that `old` holds at the new study's learning rate: both heads' means and
    mean - pooler paired over the seeds both have; Holm over the table."""
    out = []
    for key, g_new in new.groupby(KEY):
        lr = g_new["lr"].mode().iloc[0]   # the old study's lr arm ran other rates: compare like with like
        g_old = old[(old[KEY] == pd.Series(key, index=KEY)).all(axis=1) & np.isclose(old["lr"], lr)]
        if g_old.empty:
            continue
        # paired only within one precision: the old converged arm's bf16 runs pair with no fp32 run
        both = pd.concat([g_new.set_index(["seed", "precision"])["score"].rename("mean"),
                          g_old.set_index(["seed", "precision"])["score"].rename("pooler")], axis=1, join="inner")
        out.append({**dict(zip(KEY, key)), "lr": lr, **_cell(g_old["score"], "pooler"), **_cell(g_new["score"], "mean"),
                    "precision_pooler": ",".join(sorted(set(g_old["precision"].dropna()))),
                    "precision_mean": ",".join(sorted(set(g_new["precision"].dropna()))),
                    **one_sample_test(both["mean"] - both["pooler"])})
    table = pd.DataFrame(out)
    if len(table):
        table["p_holm"] = holm(table["p_ttest"].to_numpy(float))
    return table


def original_table(old: pd.DataFrame, new: pd.DataFrame, probe: pd.DataFrame | None) -> pd.DataFrame:
    """Per task and budget of the new study's 1,000-example setting: the original row under each head
    (with STS-B's prediction std), the head-only reference and the probe's mean-feature ceiling."""
    setting = new["setting"].mode().iloc[0] if len(new) else ""
    out = []
    for (task, budget), g in new[(new["row"] == "original") & (new["setting"] == setting)].groupby(["task", "budget"]):
        lr = g["lr"].mode().iloc[0]
        g_old = old[(old["row"] == "original") & (old["task"] == task) & (old["budget"] == budget)
                    & (old["setting"] == setting) & np.isclose(old["lr"], lr)]
        ref = new[(new["row"] == "head only") & (new["task"] == task) & (new["setting"] == setting)]
        ceiling = math.nan
        if probe is not None:
            hits = probe[(probe["task"] == task) & (probe["head"] == "mean") & probe["train"].str.startswith("1000")]
            ceiling = float(hits["dev_score"].mean()) if len(hits) else math.nan
        both = pd.concat([g.set_index(["seed", "precision"])["score"].rename("original"),
                          ref.set_index(["seed", "precision"])["score"].rename("head_only")], axis=1, join="inner")
        test = one_sample_test(both["original"] - both["head_only"])
        out.append({"task": task, "budget": int(budget), **_cell(g["score"], "mean"),
                    **{f"vs_head_only_{k}": v for k, v in test.items()},
                    "mean_pred_std": float(g["pred_std"].mean()), **_cell(g_old["score"], "pooler"),
                    "pooler_pred_std": float(g_old["pred_std"].mean()) if len(g_old) else math.nan,
                    **_cell(ref["score"], "head_only"),
                    "head_only_pred_std": float(ref["pred_std"].mean()) if len(ref) else math.nan,
                    "probe_ceiling": ceiling})
    table = pd.DataFrame(out)
    if len(table):   # does training the adapter add to the head alone? One family: the table's rows
        table["vs_head_only_p_holm"] = holm(table["vs_head_only_p_ttest"].to_numpy(float))
    return table


def _ci(rec: dict, key: str, sign: str = "") -> str:
    m, lo, hi = rec.get(key, math.nan), rec.get(f"{key}_lo", math.nan), rec.get(f"{key}_hi", math.nan)
    if m is None or math.isnan(m):
        return ""
    n = rec.get(f"{key}_n")
    tail = f" (n={int(n)})" if n is not None else ""
    return (f"{m:{sign}.1f} [{lo:{sign}.1f}, {hi:{sign}.1f}]" if not math.isnan(lo) else f"{m:{sign}.1f}") + tail


def _std(v: float) -> str:
    return "" if v is None or math.isnan(v) else f"{v:.2f}"


def to_markdown(heads: pd.DataFrame, original: pd.DataFrame) -> str:
    """Both tables as Markdown."""
    lines = ["### The original row under each head (1,000 examples, 3 epochs); STS-B: prediction std (label std 1.50)", "",
             "| task | budget | mean head | pred std | pooler head | pred std | head only (mean head) | pred std | "
             "original - head only [95 % CI] | p | p (Holm) | probe ceiling (1,000) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for rec in original.to_dict("records"):
        diff = {"d": rec["vs_head_only_mean_diff"], "d_lo": rec["vs_head_only_ci_lo"],
                "d_hi": rec["vs_head_only_ci_hi"], "d_n": rec["vs_head_only_pairs"]}
        lines.append(f"| {rec['task']} | {rec['budget']} | {_ci(rec, 'mean')} | {_std(rec['mean_pred_std'])} | "
                     f"{_ci(rec, 'pooler')} | {_std(rec['pooler_pred_std'])} | {_ci(rec, 'head_only')} | "
                     f"{_std(rec['head_only_pred_std'])} | {_ci(diff, 'd', '+')} | {rec['vs_head_only_p_ttest']:.3g} | "
                     f"{rec['vs_head_only_p_holm']:.3g} | {rec['probe_ceiling']:.1f} |")
    lines += ["", "### Every shared cell: mean head against pooler head, paired over seeds", "",
              "| setting | task | budget | row | pooler head | mean head | mean - pooler [95 % CI] | p | p (Holm) | precision (pooler / mean) |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for rec in heads.to_dict("records"):
        diff = {"d": rec["mean_diff"], "d_lo": rec["ci_lo"], "d_hi": rec["ci_hi"], "d_n": rec["pairs"]}
        lines.append(f"| {rec['setting']} | {rec['task']} | {rec['budget']} | {rec['row']} | {_ci(rec, 'pooler')} | "
                     f"{_ci(rec, 'mean')} | {_ci(diff, 'd', '+')} | {rec['p_ttest']:.3g} | {rec['p_holm']:.3g} | "
                     f"{rec['precision_pooler']} / {rec['precision_mean']} |")
    return "\n".join(lines) + "\n"


def report(old_dirs: Sequence[str | Path], new_dir: str | Path, out: str | Path, probe: str | Path | None = None,
           verbose: bool = True) -> dict:
    """Read both studies' result files, write heads.csv, original.csv and heads.md; returns the tables."""
    old = runs_frame([r for d in old_dirs for r in load_results(d)])
    new = runs_frame(load_results(new_dir))
    old, new = old[old["head"] == "pooler"], new[new["head"] != "pooler"]
    probe_df = pd.read_csv(probe) if probe and Path(probe).exists() else None
    tables = {"heads": heads_table(old, new), "original": original_table(old, new, probe_df)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")
    (out / "heads.md").write_text(to_markdown(tables["heads"], tables["original"]))
    if verbose:
        print(f"fishtune.reports.heads: {len(old)} pooler-head runs, {len(new)} mean-head runs; "
              f"{len(tables['heads'])} shared cells -> {out / 'heads.md'}")
    return tables


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fishtune.reports.heads", description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", nargs="+", default=["results/study/runs", "results/study/why/runs"],
                    help="the pooler-head study's result folders")
    ap.add_argument("--new", default="results/study/mean/runs", help="the mean-head study's result files")
    ap.add_argument("--probe", default="results/probe/heads.csv", help="the frozen-feature probe's table")
    ap.add_argument("--out", default="results/study/mean", help="where the tables go")
    args = ap.parse_args(argv)
    report(args.old, args.new, args.out, args.probe)


if __name__ == "__main__":
    main()
