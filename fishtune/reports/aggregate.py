"""Result files -> the paper's tables (CSV and LaTeX) and Figure 3.

    python -m fishtune.aggregate                          # every table and Figure 3: runs/ -> results/
    python -m fishtune.aggregate --tables 1,5 --paper     # two tables, the paper's numbers beside ours
    python -m fishtune.aggregate --model-map bert_base=minilm   # quick-profile runs stand in for bert-base

Rows. Each table has the paper's rows in the paper's order; they come from fishtune/paper_data (see
fishtune/reports/paper.py), so the layout and the runs a row stands for are written down once. A row stands for
the runs whose result has its model, method, mask, budget level, inserted layer count and rank, and,
for a masked row, the budget of the rank-1 original run (mask.budget_rank 1 or null with rank 1; no
explicit mask.k). Runs are matched on these values, not on the sweep that produced them, so a run
shared by two tables shows in both.

Cells. A cell is the best dev score of its task (`best.score`, x100). Several seeds give the mean,
the sample standard deviation (ddof=1) and their count; two results with one seed (e.g. a rerun with
other data settings in the same runs dir) keep the newest and are reported. Avg is the mean of the
task columns shown, blank unless every task of the row is there; its std is that of the per-seed
averages over the seeds that have every task. A missing run leaves its cell blank and is listed, with
the reason of its failure record (`*.failed.json`, written by fishtune.run) when there is one, e.g.
"diverged: non-finite loss at epoch 2, step 5". Files that are not counted are listed, each with why
(fishtune.harness.results.load_results: unreadable, no result, against the schema, not the computation
its name or config says, a second file of one computation), and so are the files runs set aside as
damaged (`*.damaged`). A runs folder that does not exist or holds no finished result is refused (exit 2,
one line) and nothing is written: tables already there are never replaced by blank ones.

CSV (results/tableN.csv): one line per paper row: table, model, method, budget, row, layers, rank, label,
ratio_pct (the budget row's ratio, median over the row's runs: STS-B's one-output head makes its ratio a little lower), then per
task and Avg three columns `CoLA`, `CoLA_std`, `CoLA_n`; with --paper also `ratio_paper`, `CoLA_paper`
and `CoLA_diff` (ours minus paper). LaTeX (results/tableN.tex): a booktabs tabular, `mean $\\pm$ std`
when there are several seeds; with --paper each row is followed by the paper's row and the difference.

Figure 3: mean dev loss over the six tasks per epoch, original LoRA vs LoRA-FISH on bert-base at budget
level 1 (results/figure3.png, .pdf, and the plotted numbers in figure3.csv). Seeds are averaged per task
first; an epoch is plotted while every task used still has a dev loss for it.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from . import row_mode
from .paper import TABLES, TASK_TITLES, paper_tasks, paper_wide
from .stats import baselines_from, on_trivial_baseline, t_interval
from ..harness.checks import ConfigError
from ..harness.methods import METHODS
from ..harness.results import RunFailure, RunResult, finished_runs, load_failures, load_results, set_aside_files
from ..harness.schedules import run_layers

FIGURES = ("figure3",)


@dataclass(frozen=True)
class Row:
    """One printed row of a paper table and the config values its runs must have."""
    table: int
    model: str              # the paper's model (our config name), before --model-map
    method: str
    row: str                # original | fish | rand | rev
    budget: int
    layers: int
    rank: int | None        # None: the method has no rank, do not match on it
    label: str
    paper_ratio: float
    paper: dict = field(hash=False, compare=False)   # task -> the paper's value, "avg" included

    @property
    def mask(self) -> str:
        return row_mode(self.row)


def table_rows(n: int) -> list[Row]:
    """The rows of paper Table `n`, in the paper's order."""
    wide = paper_wide(n)
    values = [*paper_tasks(n), "avg"]
    return [Row(n, r.model, r.method, r.row, int(r.budget), int(r.layers),
                None if pd.isna(r.rank) else int(r.rank), r.label, float(r.ratio_pct),
                {t: float(getattr(r, t)) for t in values})
            for r in wide.itertuples(index=False)]


# ---------------------------------------------------------------------------------------------------
# Matching result files to rows

@dataclass(frozen=True)
class FailedCell:
    """A failure record where its run's result would be: the values a row matches on (read from its
    config, the only part of the run a failure records) and the one-line reason."""
    model: str
    method: str
    mask: str
    budget: int
    task: str
    layers: int | None
    rank: int | None
    seed: Any
    config: dict = field(hash=False, compare=False)
    error: str = ""

    @classmethod
    def of(cls, record: RunFailure) -> FailedCell | None:
        """The cell of a failure record, or None when its config names none (a config that did not parse)."""
        c = record.config or {}
        try:
            peft, mode, budget = c["peft"], c["mask"]["mode"], int(c["budget"])
            return cls(model=c["model"]["name"], method=peft["name"], mask=mode, budget=budget, task=c["task"]["name"],
                       layers=_nominal_layers(c, None, None, None), rank=peft.get("rank"), seed=c.get("seed"),
                       config=c, error=record.reason.splitlines()[0][:160] if record.reason else "")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            return None


def _budget_rank(run: RunResult | FailedCell) -> Any:
    mask = (run.config or {}).get("mask") or {}
    return mask.get("budget_rank") or run.rank


def nominal_layers(run: RunResult | FailedCell) -> int | None:
    """The layers a run asked for, which is what a paper row names: peft.layers, else its method's
    schedule (budget_layers for an original run, fish_layers for a masked one) before a schedule
    deeper than the model is fitted to its depth (IA3's 3/5/8/10 and 12 on the 6-layer MiniLM become
    2/3/4/5 and 6): fishtune.harness.schedules.run_layers without a depth. Runs without a config: the
    layers they used."""
    return _nominal_layers(run.config, run.mask, run.budget, run.layers)


def _nominal_layers(config: dict | None, mask: str | None, budget: int | None, layers: int | None) -> int | None:
    c = config or {}
    try:
        mode = (c.get("mask") or {}).get("mode", mask)
        return run_layers(c["peft"], mode, int(c.get("budget", budget)))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return layers


def matches(run: RunResult | FailedCell, row: Row) -> bool:
    """Whether `run` (already of the row's model, method, mask, budget and a task) belongs to `row`."""
    if nominal_layers(run) != row.layers:
        return False
    if row.rank is not None and run.rank != row.rank:
        return False
    if row.mask != "none":
        mask_cfg = (run.config or {}).get("mask") or {}
        if mask_cfg.get("k") is not None:           # a hand-set budget is no paper row
            return False
        if row.rank is not None and _budget_rank(run) != 1:   # every paper budget is a rank-1 original's
            return False
    return True


class RunIndex:
    """Result files indexed by (model, method, mask, budget, task) for quick row lookups; failure
    records (`*.failed.json`) indexed the same way, to say why a cell is blank."""

    def __init__(self, runs: Iterable[RunResult], failures: Iterable[RunFailure] = ()):
        self.by_key: dict[tuple, list[RunResult]] = defaultdict(list)
        self.failed: dict[tuple, list[FailedCell]] = defaultdict(list)
        self.skipped: list[str] = []
        for record in failures:
            cell = FailedCell.of(record)
            if cell is not None:
                self.failed[self._key(cell)].append(cell)
        for run in finished_runs(runs, self.skipped):
            self.by_key[self._key(run)].append(run)

    @staticmethod
    def _key(run: RunResult | FailedCell) -> tuple:
        return run.model, run.method, run.mask, run.budget, run.task

    def errors(self, row: Row, model: str, task: str) -> list[str]:
        """The recorded errors of failed runs of one cell."""
        return sorted({f.error for f in self.failed.get((model, row.method, row.mask, row.budget, task), [])
                       if matches(f, row)})

    def cell(self, row: Row, model: str, task: str) -> tuple[list[RunResult], list[str]]:
        """The row's runs for one task, one per seed (the newest wins), and notes on dropped duplicates."""
        found = [r for r in self.by_key.get((model, row.method, row.mask, row.budget, task), []) if matches(r, row)]
        by_seed: dict[Any, list[RunResult]] = defaultdict(list)
        for r in found:
            by_seed[r.seed].append(r)
        kept, notes = [], []
        for seed, group in sorted(by_seed.items(), key=lambda kv: str(kv[0])):
            group.sort(key=lambda r: str(r.finished_at))
            kept.append(group[-1])
            if len(group) > 1:
                notes.append(f"{len(group)} results for seed {seed} of {row.label} b{row.budget} {task}; kept "
                             f"{group[-1].path or group[-1].run_id}")
        return kept, notes


# ---------------------------------------------------------------------------------------------------
# Building a table

def run_overrides(row: Row, model: str, task: str) -> str:
    """The fishtune.run overrides that produce the run of one cell."""
    out = [f"model={model}", f"peft={row.method}", f"mask={row.mask}", f"budget={row.budget}", f"task={task}"]
    budget_layers, fish_layers = METHODS[row.method].schedule()  # as shipped: what needs no override
    default = (budget_layers[row.budget - 1] if len(budget_layers) >= row.budget else None) \
        if row.mask == "none" else fish_layers
    if row.layers != default:
        out.append(f"peft.layers={row.layers}")
    if row.rank not in (None, 1):
        out += [f"peft.rank={row.rank}", "mask.budget_rank=1"]
    return " ".join(out)


@dataclass
class Built:
    """A table's frame and what the console should hear about it."""
    frame: pd.DataFrame
    rows: list[Row]
    tasks: list[str]
    missing: list[str]
    notes: list[str]
    cells: int
    filled: int


def build_table(n: int, index: RunIndex, model_map: dict[str, str] | None = None,
                paper: bool = False) -> Built:
    """Table `n` in the paper's layout from the indexed results (see the module docstring)."""
    model_map = model_map or {}
    rows, tasks = table_rows(n), paper_tasks(n)
    records, missing, notes, filled = [], [], [], 0
    baselines = baselines_from([r for runs in index.by_key.values() for r in runs])
    for row in rows:
        model = model_map.get(row.model, row.model)
        rec: dict[str, Any] = dict(table=n, model=model, method=row.method, budget=row.budget, row=row.row,
                                   layers=row.layers, rank=row.rank, label=row.label)
        per_seed: dict[Any, dict[str, float]] = defaultdict(dict)
        ratios, absent = [], []
        for task in tasks:
            runs, dup = index.cell(row, model, task)
            notes += dup
            if not runs:
                absent.append(task)
            filled += bool(runs)
            for r in runs:
                per_seed[r.seed][task] = float(r.score)
                # the budget row's ratio (over the original run's model): one number for both rows of a pair
                if r.budget_ratio_pct is not None:
                    ratios.append(float(r.budget_ratio_pct))
            mean, std, count, _, _ = t_interval([float(r.score) for r in runs])
            title = TASK_TITLES[task]
            rec[title], rec[f"{title}_std"], rec[f"{title}_n"] = mean, std, count
            rec[f"{title}_trivial"] = on_trivial_baseline([r.score for r in runs], baselines.get(task, math.nan))
        rec["ratio_pct"] = float(np.median(ratios)) if ratios else math.nan
        complete = [sum(v.values()) / len(tasks) for v in per_seed.values() if len(v) == len(tasks)]
        avg_mean = float(np.mean([rec[TASK_TITLES[t]] for t in tasks])) if not absent else math.nan
        _, avg_std, *_ = t_interval(complete)
        rec["Avg"], rec["Avg_std"], rec["Avg_n"] = avg_mean, avg_std if not absent else math.nan, len(complete)
        if paper:
            rec["ratio_paper"] = row.paper_ratio
            for t in [*tasks, "avg"]:
                title = TASK_TITLES[t]
                rec[f"{title}_paper"] = row.paper[t]
                rec[f"{title}_diff"] = rec[title] - row.paper[t]
        records.append(rec)
        if absent:
            missing.append(f"Table {n}: {row.label} b{row.budget}: {' '.join(absent)}  "
                           f"[{run_overrides(row, model, 'X').replace('task=X', 'task=' + ','.join(absent))}]")
            for task in absent:
                missing += [f"    {task} failed: {e}" for e in index.errors(row, model, task)]
    columns = ["table", "model", "method", "budget", "row", "layers", "rank", "label", "ratio_pct"]
    for t in [*tasks, "avg"]:
        title = TASK_TITLES[t]
        columns += [title, f"{title}_std", f"{title}_n"] + ([f"{title}_trivial"] if t != "avg" else [])
    if paper:
        columns.insert(columns.index("ratio_pct") + 1, "ratio_paper")
        for t in [*tasks, "avg"]:
            title = TASK_TITLES[t]
            columns += [f"{title}_paper", f"{title}_diff"]
    frame = pd.DataFrame(records, columns=columns).astype({"rank": "Int64"})
    return Built(frame, rows, tasks, missing, notes, len(rows) * len(tasks), filled)


# ---------------------------------------------------------------------------------------------------
# LaTeX

def _tex_label(label: str) -> str:
    label = re.sub(r"([&%#_$])", r"\\\1", label)
    return label.replace("(IA)3", "(IA)$^3$")


def _fmt(mean: float, std: float = math.nan, signed: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    if std is not None and not math.isnan(std):
        text += f" $\\pm$ {std:.2f}"
    return text


def to_latex(built: Built, paper: bool = False, comment: str = "") -> str:
    """A booktabs tabular in the paper's layout: solid rules between methods/models, space between budgets."""
    titles = [TASK_TITLES[t] for t in [*built.tasks, "avg"]]
    lines = [f"% {comment}"] if comment else []
    lines += [r"\begin{tabular}{l r " + "r" * len(titles) + "}", r"\toprule",
              " & ".join(["Method", r"Ratio (\%)", *titles]) + r" \\", r"\midrule"]
    prev = None
    for row, rec in zip(built.rows, built.frame.to_dict("records")):
        if prev is not None:
            if (row.model, row.method) != (prev.model, prev.method):
                lines.append(r"\midrule")
            elif row.budget != prev.budget:
                lines.append(r"\addlinespace")
        prev = row
        ratio = "" if math.isnan(rec["ratio_pct"]) else f"{rec['ratio_pct']:.4f}"
        # a cell whose every run scored the trivial baseline learned nothing: marked, never read as a result
        cells = [_fmt(rec[t], rec[f"{t}_std"]) + (r"\textsuperscript{0}" if rec.get(f"{t}_trivial") else "")
                 for t in titles]
        lines.append(" & ".join([_tex_label(row.label), ratio, *cells]) + r" \\")
        if paper:
            lines.append(" & ".join([r"\quad\textit{paper}", f"{row.paper_ratio:.4f}",
                                     *[_fmt(rec[f"{t}_paper"]) for t in titles]]) + r" \\")
            lines.append(" & ".join([r"\quad$\Delta$", "", *[_fmt(rec[f"{t}_diff"], signed=True) for t in titles]])
                         + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Figure 3

def figure3_data(index: RunIndex, model_map: dict[str, str] | None = None,
                 budget: int = 1) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(epoch x {original, fish} mean dev loss, tasks used, missing cells) for Figure 3."""
    model_map = model_map or {}
    rows = {r.row: r for r in table_rows(1) if r.method == "lora" and r.budget == budget}
    curves: dict[str, dict[str, pd.Series]] = {}
    missing = []
    for kind in ("original", "fish"):
        row = rows[kind]
        model = model_map.get(row.model, row.model)
        curves[kind] = {}
        for task in paper_tasks(1):
            runs, _ = index.cell(row, model, task)
            points = [(h["epoch"], h["dev_loss"]) for r in runs for h in r.history or []
                      if h.get("dev_loss") is not None]
            if not points:
                missing.append(f"Figure 3: {row.label} b{budget}: {task}  [{run_overrides(row, model, task)}]")
                continue
            # Seeds first: the mean over the seeds that reached each epoch.
            curves[kind][task] = pd.DataFrame(points, columns=["epoch", "loss"]).groupby("epoch")["loss"].mean()
    tasks = [t for t in paper_tasks(1) if t in curves["original"] and t in curves["fish"]]
    frame = pd.DataFrame({kind: pd.concat([curves[kind][t] for t in tasks], axis=1).dropna().mean(axis=1)
                          for kind in ("original", "fish")} if tasks else {"original": [], "fish": []})
    frame.index.name = "epoch"
    return frame, tasks, missing


def plot_figure3(frame: pd.DataFrame, tasks: list[str], out: Path, title_note: str = "") -> list[Path]:
    """Write figure3.png/.pdf (and the plotted numbers as figure3.csv) under `out`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "figure3.csv")
    fig, ax = plt.subplots(figsize=(5, 3.4))
    # The paper's colours: original blue, FISH orange (matplotlib's first two).
    ax.plot(frame.index, frame["original"], marker="o", ms=3, label="Original LoRA")
    ax.plot(frame.index, frame["fish"], marker="o", ms=3, label="LoRA-FISH")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"mean dev loss ({len(tasks)} tasks)")
    ax.set_title(f"Figure 3{title_note}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, out / "figure3")


# ---------------------------------------------------------------------------------------------------
# Command line

def parse_model_map(text: str | None) -> dict[str, str]:
    """'bert_base=minilm,llama32_1b=tiny_llama' -> dict; empty parts are ignored."""
    out = {}
    for part in filter(None, (text or "").split(",")):
        paper_model, _, ours = part.partition("=")
        if not ours:
            raise ValueError(f"--model-map wants PAPER=OURS pairs, got {part!r}")
        out[paper_model.strip()] = ours.strip()
    return out


def save_figure(fig: "matplotlib.figure.Figure", stem: Path) -> list[Path]:
    """Write `fig` as <stem>.png and <stem>.pdf and close it. The PDF carries no creation date, so a
    figure rebuilt from the same result files is the same file (git sees no change)."""
    import matplotlib.pyplot as plt

    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=150, **({"metadata": {"CreationDate": None}} if p.suffix == ".pdf" else {}))
    plt.close(fig)
    return paths


def parse_tables(text: str) -> list[str]:
    """'1,5' -> ['1', '5']; 'all' -> every table and figure."""
    everything = [str(n) for n in TABLES] + list(FIGURES)
    if text.strip() == "all":
        return everything
    chosen = [t.strip().removeprefix("table") for t in text.split(",") if t.strip()]
    for t in chosen:
        if t not in everything:
            raise ValueError(f"unknown table {t!r}; choose from {', '.join(everything)} or all")
    return chosen


def aggregate(runs_dir: str | Path = "runs", out: str | Path = "results", tables: Sequence[str] = ("all",),
              paper: bool = False, model_map: dict[str, str] | None = None, figure_budget: int = 1,
              verbose: bool = True) -> dict[str, Any]:
    """Write the chosen tables and figures; returns {name: Built or figure paths} and the missing list."""
    say = print if verbose else (lambda *a, **k: None)
    out = Path(out)
    chosen = parse_tables(",".join(tables))
    if not Path(runs_dir).is_dir():   # a mistyped folder must not write blank tables over real ones
        raise ConfigError(f"--runs-dir {runs_dir}: no such folder; nothing written")
    unreadable: list[str] = []
    results = load_results(runs_dir, unreadable)
    failures = load_failures(runs_dir, unreadable)
    set_aside = set_aside_files(runs_dir)
    index = RunIndex(results, failures)
    say(f"fishtune.aggregate: {len(results)} result files, {len(failures)} failure records under {runs_dir}")
    for s in index.skipped:
        say(f"  skipped {s}")
    for s in unreadable:   # each file not counted, and why (unreadable, no result, not its computation's)
        say(f"  skipped unreadable {s}")
    for path in set_aside:
        say(f"  set aside as damaged by its run (which started over): {path}")
    if not index.by_key:   # nothing to count: the tables already in `out` stay as they are
        return {"missing": [], "unreadable": unreadable, "set_aside": [str(p) for p in set_aside],
                "nothing_written": f"{runs_dir} holds no finished result files; nothing written to {out}"}
    if model_map:
        say("  stand-in models: " + ", ".join(f"{k} -> {v}" for k, v in model_map.items()))
    done: dict[str, Any] = {}
    missing: list[str] = []
    for name in chosen:
        if name == "figure3":
            frame, tasks, miss = figure3_data(index, model_map, figure_budget)
            missing += miss
            if frame.empty:
                say("figure3: no epoch with dev losses of both rows; nothing plotted")
                continue
            note = "" if len(tasks) == 6 else f" ({', '.join(tasks)} only)"
            done[name] = plot_figure3(frame, tasks, out, note)
            say(f"figure3: {', '.join(str(p) for p in done[name])} ({len(frame)} epochs, {len(tasks)} tasks)")
            continue
        n = int(name)
        built = build_table(n, index, model_map, paper)
        out.mkdir(parents=True, exist_ok=True)
        built.frame.to_csv(out / f"table{n}.csv", index=False, float_format="%.6g")
        trivial = int(built.frame.filter(like="_trivial").to_numpy(bool).sum())
        comment = (f"FISH-Tuning Table {n}, generated by python -m fishtune.aggregate from {runs_dir}: "
                   f"{built.filled}/{built.cells} cells; ^0: all of a cell's runs scored the trivial baseline "
                   f"(majority class or a constant prediction), {trivial} cells")
        (out / f"table{n}.tex").write_text(to_latex(built, paper, comment))
        say(f"table{n}: {out / f'table{n}.csv'}, .tex: {built.filled}/{built.cells} cells filled"
            + (f"; {trivial} of them only the trivial baseline (majority class / constant: learned nothing; "
               f"column <task>_trivial, ^0 in the .tex)" if trivial else ""))
        for note in built.notes:
            say(f"  note: {note}")
        missing += built.missing
        done[name] = built
    if missing:
        rows = sum(not m.startswith(" ") for m in missing)
        say(f"missing runs ({rows} rows with blank cells; [overrides to run them]; errors of failed runs):")
        for m in missing:
            say(f"  {m}")
    done["missing"] = missing
    done["unreadable"], done["set_aside"] = unreadable, [str(p) for p in set_aside]
    return done


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fishtune.aggregate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", default="runs", help="where the result files are (searched recursively)")
    ap.add_argument("--out", default="results", help="where tableN.csv/.tex and figure3.* go")
    ap.add_argument("--tables", default="all", help="comma list from 1,2,3,4,5,figure3 (default all)")
    ap.add_argument("--paper", action="store_true", help="put the paper's numbers and the difference beside ours")
    ap.add_argument("--model-map", default="", help="PAPER=OURS,...: read runs of OURS where the paper has PAPER "
                                                     "(e.g. bert_base=minilm for quick-profile runs)")
    ap.add_argument("--figure-budget", type=int, default=1, help="budget level of Figure 3 (default 1)")
    args = ap.parse_args(argv)
    try:
        done = aggregate(args.runs_dir, args.out, [args.tables], args.paper, parse_model_map(args.model_map),
                         args.figure_budget)
    except ConfigError as e:
        print(f"fishtune.aggregate: error: {e}", file=sys.stderr)
        sys.exit(2)
    except ValueError as e:
        ap.error(str(e))
    if "nothing_written" in done:
        print(f"fishtune.aggregate: error: {done['nothing_written']}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
