"""Why a random mask beats FISH in the study, and whether it lasts (docs/STUDY.md, `make study NAME=pooler-why`).

    python -m fishtune.study_why --study-runs results/study/runs --runs-dir results/study/why/runs \
        --out results/study/why

Three arms, each in its own folder of result files under `--runs-dir`, read with the study's 200 runs:
  mechanism/  fish_shuffled and fish_spread under the study profile. With the study's fish and rand
              they make a 2 x 2 design, allocation {Fisher, by size} x entries {Fisher, random}:
                                   entries Fisher     entries random
                allocation Fisher  fish               fish_shuffled
                allocation size    fish_spread        rand
              mechanism.csv: per task and budget, per seed the contrasts
                allocation  = ((fish - fish_spread) + (fish_shuffled - rand)) / 2
                entries     = ((fish - fish_shuffled) + (fish_spread - rand)) / 2
                interaction = ((fish - fish_spread) - (fish_shuffled - rand)) / 2
              with mean, 95 % t-interval, one-sample t-test p over seeds and Holm's p over the table.
  lr/         fish and rand on one cell (SST-2 at budget 2) at other learning rates; the study's own lr is read
              from the study's runs. lr.csv: per lr each mode's mean and interval and fish - rand
              paired over seeds (Holm over the lrs); which lr each mode prefers (highest mean).
  converged/  original, fish and rand trained to early stopping (profile converged). converged.csv:
              per task the trivial baseline (majority class / constant prediction on the dev set),
              each mode's mean, interval, best epoch and how many runs stopped by patience;
              fish - rand, fish - original and rand - original paired over seeds (Holm over the table).
placement.csv: per mode, the share of the method's chosen entries per module and per layer, from the
study's runs and the mechanism arm's that record `placement` (every run since the mechanism arm): the
2 x 2's runs, at the study's settings. The lr arm's masks repeat the study's (the mask does not depend
on the rate) and the converged arm's come from other training data, so neither is mixed in.
summary.md: all of it in Markdown, for the README.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..harness.results import RunResult, finished_runs, load_results
from . import precision_label, results_frame, row_label
from .paper import TASK_TITLES
from .stats import baselines_from, holm, one_sample_test, t_interval

ARMS = ("mechanism", "lr", "converged")
# The 2 x 2: mode -> (allocation, entries).
DESIGN = {"fish": ("Fisher", "Fisher"), "fish_shuffled": ("Fisher", "random"),
          "fish_spread": ("size", "Fisher"), "rand": ("size", "random")}
CONTRASTS = {  # per seed, from the four cells' scores
    "allocation": lambda s: ((s["fish"] - s["fish_spread"]) + (s["fish_shuffled"] - s["rand"])) / 2,
    "entries": lambda s: ((s["fish"] - s["fish_shuffled"]) + (s["fish_spread"] - s["rand"])) / 2,
    "interaction": lambda s: ((s["fish"] - s["fish_spread"]) - (s["fish_shuffled"] - s["rand"])) / 2,
}


def runs_frame(results: list[RunResult]) -> pd.DataFrame:
    """One line per finished run: task, budget, mode, lr, seed, best score and epoch, how it stopped."""
    df = results_frame(finished_runs(results))
    config = df["config"]
    return pd.DataFrame({
        "task": df["task"], "budget": df["budget"].astype(int), "mode": df["mask"],
        "lr": df["lr"].map(lambda v: round(float(v), 10)),   # one rate, however the config wrote it
        "seed": df["seed"].astype(int), "score": df["score"].astype(float), "best_epoch": df["best_epoch"].astype(int),
        "epochs": df["epochs"], "max_epochs": config.map(lambda c: int(c["train"]["max_epochs"])),
        "patience": config.map(lambda c: c["train"].get("patience")),
        "stop_reason": df["stop_reason"], "train_seconds": df["train_seconds"].astype(float),
        "precision": df["precision"].map(precision_label),
        "profile_train_samples": config.map(lambda c: c["data"]["train_samples"])})


def _with_holm(table: pd.DataFrame) -> pd.DataFrame:
    if len(table):
        table["p_holm"] = holm(table["p_ttest"].to_numpy(float))
    return table


def _cell_means(df: pd.DataFrame, modes: Sequence[str]) -> dict:
    """Per mode, mean and interval over seeds, as `<mode>` and `<mode>_lo/_hi/_n` columns."""
    out = {}
    for mode in modes:
        m, _, n, lo, hi = t_interval(df[df["mode"] == mode]["score"])
        out.update({mode: m, f"{mode}_lo": lo, f"{mode}_hi": hi, f"{mode}_n": n})
    return out


def mechanism_table(df: pd.DataFrame) -> pd.DataFrame:
    """The 2 x 2 per task and budget: the four cells and the three contrasts, paired over seeds."""
    out = []
    for (task, budget), g in df[df["mode"].isin(DESIGN)].groupby(["task", "budget"]):
        # A seed's four cells contrast only within one precision (as every paired table here).
        wide = g.pivot_table(index=["seed", "precision"], columns="mode", values="score").reindex(columns=list(DESIGN)).dropna()
        if wide.empty:   # no seed has all four cells (yet): nothing to contrast
            continue
        cells = _cell_means(g[g["seed"].isin(wide.index.get_level_values("seed"))], DESIGN)
        for name, f in CONTRASTS.items():
            out.append({"task": task, "budget": budget, "effect": name, **one_sample_test(f(wide)), **cells})
    return _with_holm(pd.DataFrame(out))


def lr_table(df: pd.DataFrame) -> pd.DataFrame:
    """fish and rand per learning rate (SST-2, budget 2), and fish - rand paired over seeds."""
    out = []
    for (task, budget, lr), g in df[df["mode"].isin(("fish", "rand"))].groupby(["task", "budget", "lr"]):
        wide = g.pivot_table(index=["seed", "precision"], columns="mode", values="score").reindex(columns=["fish", "rand"]).dropna()
        out.append({"task": task, "budget": budget, "lr": lr, "comparison": "fish - rand",
                    **one_sample_test(wide["fish"] - wide["rand"]), **_cell_means(g, ("fish", "rand"))})
    return _with_holm(pd.DataFrame(out))


def preferred_lr(lr: pd.DataFrame) -> dict[str, float]:
    """mode -> the learning rate with the highest mean score (per task and budget of the lr table)."""
    return {mode: float(lr.loc[lr[mode].idxmax(), "lr"]) for mode in ("fish", "rand") if len(lr)}


def converged_table(df: pd.DataFrame, baselines: dict[str, float] | None = None) -> pd.DataFrame:
    """Per task: the trivial baseline, each mode's mean with interval, best epoch, runs stopped by
    patience; fish - rand, fish - original and rand - original paired over seeds."""
    out = []
    for task, g in df.groupby("task"):
        cells = _cell_means(g, ("none", "fish", "rand"))
        stopped = g[(g["stop_reason"] == "early_stopping") & (g["epochs"] < g["max_epochs"])]
        info = {"baseline": (baselines or {}).get(task, math.nan),
                "runs": len(g), "stopped_early": len(stopped), "best_epoch_mean": float(g["best_epoch"].mean()),
                "epochs_mean": float(g["epochs"].mean()), "train_seconds_mean": float(g["train_seconds"].mean()),
                "precision": ",".join(sorted(set(g["precision"].dropna())))}
        wide = g.pivot_table(index=["seed", "precision"], columns="mode", values="score")
        for a, b in (("fish", "rand"), ("fish", "none"), ("rand", "none")):
            if {a, b} <= set(wide.columns):
                both = wide[[a, b]].dropna()
                out.append({"task": task, "comparison": f"{a} - {row_label(b)}", **one_sample_test(both[a] - both[b]),
                            **cells, **info})
    return _with_holm(pd.DataFrame(out))


def placement_table(results: list[RunResult]) -> pd.DataFrame:
    """Per mode, budget and task: the share of the method's chosen entries per module and per layer,
    averaged over the runs that record their placement."""
    rows = []
    for r in results:
        chosen = sum(t["chosen"] for t in r.placement or [])
        if not chosen or r.mask == "none":
            continue
        for t in r.placement:
            module = t["module"].split(".")[0]
            for by, value in (("module", module), ("layer", str(t["layer"]))):
                rows.append({"mode": r.mask, "budget": int(r.budget), "task": r.task, "run": r.path,
                             "by": by, "value": value, "share": t["chosen"] / chosen})
    if not rows:
        return pd.DataFrame(columns=["mode", "budget", "by", "value", "share_mean", "runs"])
    per_run = pd.DataFrame(rows).groupby(["mode", "budget", "by", "value", "run"], as_index=False)["share"].sum()
    table = (per_run.groupby(["mode", "budget", "by", "value"])
             .agg(share_mean=("share", "mean"), runs=("run", "nunique")).reset_index())
    # layers in numeric order (a 30-layer model's "10" after "9"), modules by name
    order = pd.to_numeric(table["value"], errors="coerce")
    return table.assign(order=order).sort_values(["mode", "budget", "by", "order", "value"]).drop(columns="order") \
        .reset_index(drop=True)


def _values(values: pd.Series, name=str) -> str:
    """The distinct values of a column as a table's title states them: '2', or '1/2' when they differ."""
    return "/".join(name(v) for v in sorted(set(values)))


def settings(lr: pd.DataFrame, converged: pd.DataFrame) -> dict[str, str]:
    """What the runs of the lr and converged tables share, in words for their titles: read from the runs
    (their experiment files set it), never restated here."""
    return {"lr": f"{_values(lr['task'], lambda t: TASK_TITLES.get(t, t))}, budget {_values(lr['budget'])}",
            "converged": f"patience {_values(converged['patience'])}, at most {_values(converged['max_epochs'])} "
                         f"epochs), budget {_values(converged['budget'])}"}


def _ci(rec: dict, key: str = "") -> str:
    m = rec[key] if key else rec["mean_diff"]
    lo, hi = (rec[f"{key}_lo"], rec[f"{key}_hi"]) if key else (rec["ci_lo"], rec["ci_hi"])
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return ""
    sign = "+" if not key else ""
    return f"{m:{sign}.1f} [{lo:{sign}.1f}, {hi:{sign}.1f}]" if not math.isnan(lo) else f"{m:{sign}.1f}"


def to_markdown(mech: pd.DataFrame, lr: pd.DataFrame, conv: pd.DataFrame, place: pd.DataFrame,
                setting: dict[str, str]) -> str:
    """The three arms' tables and the placement shares, as Markdown; `setting` (settings()) titles them."""
    lines = []
    if len(mech):
        lines += ["### Mechanism: the 2 x 2 (allocation x entries), paired over seeds", "",
                  "| task | budget | " + " | ".join(DESIGN) + " | effect | n | mean [95 % CI] | p | p (Holm) |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        for rec in mech.to_dict("records"):
            cells = " | ".join(_ci(rec, m) for m in DESIGN) if rec["effect"] == "allocation" else " | " * 3
            lines.append(f"| {rec['task']} | {rec['budget']} | {cells} | {rec['effect']} | {rec['pairs']} | "
                         f"{_ci(rec)} | {rec['p_ttest']:.3g} | {rec['p_holm']:.3g} |")
    if len(lr):
        pref = preferred_lr(lr)
        lines += ["", f"### Learning rate: fish - rand ({setting['lr']})", "",
                  "| lr | fish | rand | n | fish - rand [95 % CI] | p | p (Holm) |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for rec in lr.to_dict("records"):
            lines.append(f"| {rec['lr']:g} | {_ci(rec, 'fish')} | {_ci(rec, 'rand')} | {rec['pairs']} | {_ci(rec)} | "
                         f"{rec['p_ttest']:.3g} | {rec['p_holm']:.3g} |")
        lines += ["", "Preferred lr (highest mean): " + ", ".join(f"{m} {v:g}" for m, v in pref.items())]
    if len(conv):
        lines += ["", f"### Converged: early stopping ({setting['converged']}", "",
                  "| task | baseline | original | fish | rand | stopped early | best epoch (mean) | comparison | n | "
                  "mean [95 % CI] | p | p (Holm) |", "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        for rec in conv.to_dict("records"):
            lines.append(f"| {rec['task']} | {rec['baseline']:.1f} | {_ci(rec, 'none')} | {_ci(rec, 'fish')} | "
                         f"{_ci(rec, 'rand')} | "
                         f"{rec['stopped_early']} / {rec['runs']} | {rec['best_epoch_mean']:.1f} | {rec['comparison']} | "
                         f"{rec['pairs']} | {_ci(rec)} | {rec['p_ttest']:.3g} | {rec['p_holm']:.3g} |")
    for by, title in (("module", "module"), ("layer", "adapted layer (0 = the bottom one)")):
        shares = place[place["by"] == by]
        if shares.empty:
            continue
        table = shares.pivot_table(index=["mode", "budget"], columns="value", values="share_mean")
        runs = shares.groupby(["mode", "budget"])["runs"].max()
        lines += ["", f"### Placement: share of the method's chosen entries per {title} (mean over runs)", "",
                  "| mode | budget | runs | " + " | ".join(table.columns) + " |",
                  "|---|---:|---:|" + "---:|" * len(table.columns)]
        for (mode, budget), rec in table.iterrows():
            lines.append(f"| {mode} | {budget} | {runs[(mode, budget)]} | "
                         + " | ".join(f"{100 * v:.1f} %" for v in rec) + " |")
    return "\n".join(lines) + "\n"


def report(study_runs: str | Path, runs_dir: str | Path, out: str | Path, verbose: bool = True) -> dict:
    """Read the study's runs and the three arms', write the tables (see the module docstring)."""
    say = print if verbose else (lambda *a, **k: None)
    runs_dir, out = Path(runs_dir), Path(out)
    damaged: list[str] = []
    study = load_results(study_runs, damaged)
    arms = {arm: load_results(runs_dir / arm, damaged) for arm in ARMS}
    for d in damaged:
        say(f"fishtune.study_why: skipped unreadable {d}")
    base = runs_frame(study)
    study_lr = base["lr"].mode().iloc[0] if len(base) else math.nan  # the study's single learning rate
    def same_cells(arm: pd.DataFrame) -> pd.DataFrame:  # the study's runs on the (task, budget) cells of an arm
        cells = set(zip(arm["task"], arm["budget"]))
        return base[[c in cells for c in zip(base["task"], base["budget"])]]

    mech_runs, lr_runs, conv_runs = (runs_frame(arms[arm]) for arm in ("mechanism", "lr", "converged"))
    mechanism = pd.concat([same_cells(mech_runs).query("lr == @study_lr"), mech_runs])
    lr = pd.concat([lr_runs, same_cells(lr_runs)])
    tables = {"mechanism": mechanism_table(mechanism), "lr": lr_table(lr),
              "converged": converged_table(conv_runs, baselines_from(arms["converged"])),
              # the 2 x 2's runs only: converged masks come from other data, the lr arm's repeat the study's
              "placement": placement_table([*study, *arms["mechanism"]])}
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")
    (out / "summary.md").write_text(to_markdown(*tables.values(), settings(lr_runs, conv_runs)))
    counts = {arm: len(rs) for arm, rs in arms.items()}
    say(f"fishtune.study_why: {len(study)} study runs, arms {counts}; tables in {out / 'summary.md'}")
    return tables


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fishtune.study_why", description=__doc__.split("\n\n")[0])
    ap.add_argument("--study-runs", default="results/study/runs", help="the study's 200 result files")
    ap.add_argument("--runs-dir", default="results/study/why/runs", help="the arms' result files, one folder per arm")
    ap.add_argument("--out", default="results/study/why", help="where the tables go")
    args = ap.parse_args(argv)
    report(args.study_runs, args.runs_dir, args.out)


if __name__ == "__main__":
    main()
