"""One self-contained HTML page of a runs folder's results: tables, figures, curves, placement, cost.

    python -m fishtune.report RUNS_DIR [RUNS_DIR ...] --out results/study/index.html   (make report [NAME=...])

Built from the result files alone (any folder: the study's, a quick table's), the page needs no server
and asks none for anything: its script, styles, data and the plotting library (plotly.js) are inline.
It opens with the verdict: does fish beat the original and rand? A line per method (Table 1's layout) or
study group and budget, per task and pooled the paired mean difference fish - original and fish - rand
with its 95 % interval, n and its Holm-adjusted p (survivors shaded), its Holm family named, then the same
as a forest plot (inline SVG); a line saying so where no runs pair fish with original or rand. Each
comparison has one Holm p on the page: where Table 1's layout holds a group's comparisons, the group's
own table shows the unadjusted p. Below it, each table sortable, filterable and exportable as CSV:
  study tables   per (model, method, rank) group of study-like runs (two or more of fishtune.study's rows,
                 no (task, mask, budget) cell mixing learning rates or layer counts): fishtune.study's
                 table with 95 % intervals and the trivial baseline, and its paired comparisons (p, Holm p)
  cells          per (model, method, rank, layers, lr, task, budget, mask) the seeds' mean and 95 %
                 t-interval, with a figure of the seeds as points (the interactive results/study/figure.png)
  runs           one line per run; a click shows its per-epoch curves, best epoch, stop reason and costs,
                 and `zero-Fisher filled`: entries its mask had to choose with a zero Fisher score
  placement      chosen mask entries per layer and module, from the result files' `placement` or the
                 `<run>.mask.safetensors` (or an older run's `.mask.pt`) saved beside them
  cost           score against train_seconds (and peak memory where recorded), per mode
  in progress    runs a sweep has claimed and trains (`<run>.claim`): the owner (host, pid, Slurm job),
                 when it started and its last heartbeat
  problems       failed runs (`*.failed.json`) and damaged or unreadable files
The statistics are fishtune.reports.stats' t_interval and baselines_from and fishtune.reports.study's
study_table and paired_table; the paired bootstrap runs with fewer resamples than the study's own
tables (--resamples, default 200) to keep the build quick. The figures are plotly.js's basic bundle
(fishtune/reports/vendor/README.md says why not the full one), so the study's page is about 1.4 MB.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections import defaultdict
from html import escape
from importlib.resources import files
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..harness.claims import in_progress
from ..harness.results import (FILE_KEYS, RunResult, find_mask_file, finished_runs, load_failures, load_results,
                               set_aside_files)
from ..harness.tasks import TASK_ORDER
from . import ROWS
from .paper import TASK_TITLES
from .stats import baselines_from, t_interval
from .methods_study import METHOD_ORDER, methods_frame, methods_paired, methods_table
from .study import frame, paired_table, study_table

# What a run's line leaves out of its result file: the config and the dev examples (too big for a page of
# hundreds of runs), what it shows in a shape of its own (best, history, throughput, placement: run_record),
# and what no view reads (the bookkeeping of where and with what it ran, the adaptive run's details).
RUN_LEAVES_OUT = ("schema", "config_hash", "config", "head_entries", "placement", "train_examples", "dev_examples",
                  "history", "best", "dev_labels", "dev_predictions", "throughput", "peak_rss_mb", "peak_rss_source",
                  "slurm", "versions", "git_commit", "trainable_final", "ratio_pct_final", "active_ratio_history")
RUN_FIELDS = tuple(k for k in FILE_KEYS if k not in RUN_LEAVES_OUT)
HISTORY_FIELDS = ("epoch", "train_loss", "dev_loss", "score")
THROUGHPUT_FIELDS = ("samples_per_second", "tokens_per_second")  # per epoch, in the result's `throughput`
CELL_KEY = ["folder", "model", "method", "rank", "layers", "lr", "task", "budget", "mask"]
TASK_IDS = {title: task for task, title in TASK_TITLES.items()}
DEFAULT_RESAMPLES = 200
PLOTLY_VERSION = "4.1.1"   # of fishtune/reports/vendor/plotly-basic.min.js
TABLE1_FAMILY = "comparisons of Table 1's family"   # how the verdict names methods_paired's Holm families


def compact(value: Any) -> Any:
    """`value` made small and valid for JSON: floats to 6 significant digits, NaN and infinities to
    null (pandas' missing values are NaN), numpy scalars to Python ones."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()  # numpy scalar
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [compact(v) for v in value]
    return value


def run_placement(result: RunResult) -> list[list] | None:
    """[layer, module, chosen, entries] per (layer, module) of a run's mask: from the result's
    `placement` where recorded, else from the mask file saved beside it (find_mask_file); None when neither."""
    tensors = result.placement
    if not tensors and find_mask_file(result.path) is not None:
        from .mask_report import saved_mask
        from ..masks import mask_placement
        tensors = mask_placement(saved_mask(result) or {})
    if not tensors:
        return None
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for t in tensors:  # a module's weight and bias count together
        s = sums[(t["layer"], t["module"])]
        s[0] += int(t["chosen"])
        s[1] += int(t["entries"])
    return [[layer, module, c, e] for (layer, module), (c, e) in sums.items()]


def run_record(result: RunResult, runs_dir: Path) -> dict:
    """What the page keeps of one result file: RUN_FIELDS, the best epoch, the history as columns
    (with each metric), the placement, and the file's path under the runs folder."""
    best = result.best or {}
    history = result.history or []
    record = {k: getattr(result, k) for k in RUN_FIELDS}
    record.update(score=best.get("score"), best_epoch=best.get("epoch"), best_dev_loss=best.get("dev_loss"),
                  epochs=len(history), path=str(Path(result.path).relative_to(runs_dir)),
                  folder=_folder(result, runs_dir),
                  placement=run_placement(result))
    columns = {f: [h.get(f) for h in history] for f in HISTORY_FIELDS if any(f in h for h in history)}
    metric_names = sorted({m for h in history for m in (h.get("metrics") or {}) if m != "score"})
    columns.update({f"metric:{m}": [(h.get("metrics") or {}).get(m) for h in history] for m in metric_names})
    throughput = result.throughput or []
    columns.update({f"train_{f}": [t.get(f) for t in throughput] for f in THROUGHPUT_FIELDS
                    if any(f in t for t in throughput)})
    record["history"] = columns
    return compact({k: v for k, v in record.items() if v is not None})  # the page reads a missing field as empty


def _view(view_id: str, title: str, df: pd.DataFrame, columns: Sequence[tuple[str, str, str]],
          filters: Sequence[str] = (), **extra: Any) -> dict:
    """A table for the page: columns as (key, header, format: text | int | f1 | f2 | f4 | g3), the
    columns to offer filters on, its rows, and what the page's script adds (figure, click, notes)."""
    shown = [c for c in columns if c[0] in df.columns]
    return {"id": view_id, "title": title, "columns": shown, "filters": [f for f in filters if f in df.columns],
            "rows": compact(df.to_dict("records")), **extra}


def _long_study_table(table: pd.DataFrame) -> pd.DataFrame:
    """fishtune.study's wide table (a column group per task) as one line per (budget, row, task)."""
    lines = []
    for rec in table.to_dict("records"):
        baseline = rec["row"] == "baseline"   # one number per task, no budget, seeds or interval
        for title, task in TASK_IDS.items():
            if title in rec:
                lines.append({"budget": None if baseline else rec["budget"], "row": rec["row"], "label": rec["label"],
                              "ratio_pct": None if baseline else rec["ratio_pct"], "task": task, "mean": rec[title],
                              "std": rec.get(f"{title}_std"), "n": None if baseline else rec.get(f"{title}_n"),
                              "ci_lo": rec.get(f"{title}_lo"), "ci_hi": rec.get(f"{title}_hi")})
    return pd.DataFrame(lines)


def study_groups(results: list[RunResult], runs_dir: Path) -> tuple[dict[tuple, list[RunResult]], list[str]]:
    """(folder, model, method, rank[, lr]) -> its study-like results, and why the other groups are not.
    Arms of a study live in folders of their own, so the folder under `runs_dir` is part of the key; a
    group is split by learning rate where a (task, mask, budget) cell mixes rates. A group is study-like
    with two or more of fishtune.study's rows and one run per (task, mask, budget, seed) on one layer
    count per cell; the cells view covers every run either way."""
    rows = set(ROWS)
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    for r in results:
        if r.mask in rows:
            groups[(_folder(r, runs_dir), r.model, r.method, r.rank)].append(r)

    def mixed(rs: list[RunResult], field: str) -> bool:
        seen: dict[tuple, set] = defaultdict(set)
        for r in rs:
            seen[(r.task, r.mask, r.budget)].add(getattr(r, field))
        return any(len(v) > 1 for v in seen.values())

    out, skipped = {}, []
    for key, rs in groups.items():
        parts = {key: rs}
        if mixed(rs, "lr"):
            parts = defaultdict(list)
            for r in rs:
                parts[(*key, r.lr)].append(r)
        for k, part in parts.items():
            name = _group_name(k)
            cells = [(r.task, r.mask, r.budget, r.seed) for r in part]
            if mixed(part, "layers"):
                skipped.append(f"{name}: a (task, mask, budget) cell mixes layer counts")
            elif len(set(cells)) < len(cells):
                skipped.append(f"{name}: more than one run of a (task, mask, budget, seed)")
            elif len({r.mask for r in part}) >= 2:
                out[k] = part
    return out, skipped


def _folder(result: RunResult, runs_dir: Path) -> str:
    """The result file's folder under the runs folder ('.' for the runs folder itself)."""
    return str(Path(result.path).parent.relative_to(runs_dir))


def _one_folder(runs: list[dict]) -> bool:
    return len({r["folder"] for r in runs}) == 1


def _with_folder(runs: list[dict], key: list[str]) -> list[str]:
    """`key`, led by the folder where the runs come from more than one (arms of a study)."""
    return key if _one_folder(runs) else ["folder", *key]


def _group_name(key: tuple) -> str:
    """A study group's heading: folder (where not the runs folder itself), model, method, then the rank and
    the learning rate where the key has them (methods without a rank, such as Adapter, have None)."""
    return " / ".join(_group_parts(key))


def _group_parts(key: tuple) -> list[str]:
    folder, model, method, rank, *lr = key
    return [*([folder] if folder != "." else []), str(model), str(method),
            *([f"rank {rank}"] if rank is not None else []), *(f"lr {v:g}" for v in lr)]


def study_views(results: list[RunResult], runs_dir: Path, baselines: dict[str, float], n_resamples: int,
                holm_in_table1: bool = False) -> tuple[list[dict], list[tuple[tuple, pd.DataFrame]]]:
    """Per study-like group, fishtune.study's table (long form) and its paired comparisons; and each
    group's key with its paired table (for the verdict). `holm_in_table1`: the page's Table 1 layout
    holds these groups' comparisons in its Holm family, so their tables show the unadjusted p only (one
    adjusted p per comparison on the page)."""
    views, paired_tables = [], []
    groups, skipped = study_groups(results, runs_dir)
    for key, rs in groups.items():
        name = _group_name(key)
        df = frame(rs)
        table = _long_study_table(study_table(df, baselines))
        paired = paired_table(df, rs, n_resamples)
        paired_tables.append((key, paired))
        lrs = sorted({r.lr for r in rs}, key=str)
        views.append(_view(f"study-{len(views)}", f"Study table: {name}", table, [
            ("budget", "budget", "int"), ("row", "row", "text"), ("task", "task", "text"), ("mean", "mean", "f2"),
            ("std", "std", "f2"), ("n", "n", "int"), ("ci_lo", "95 % low", "f2"), ("ci_hi", "95 % high", "f2"),
            ("ratio_pct", "ratio %", "f4"), ("label", "note", "text")], ["task", "budget", "row"],
            note=f"Best dev score (x100) over seeds: mean, sample std, n and the 95 % t-interval of the mean "
                 f"(fishtune.reports.study.study_table); the baseline rows are the trivial baseline. lr: {lrs}."))
        if holm_in_table1:
            holm_note = ("p is unadjusted here: the Holm-adjusted p of fish - original and fish - rand is the "
                         "verdict's and Table 1's layout's (Table 1's family, over every method), shown there once.")
            paired = paired.drop(columns="p_holm")
        else:
            holm_note = f"p (Holm): {_holm_families(name, paired)}."
        views.append(_view(f"paired-{len(views)}", f"Paired comparisons: {name}", paired, [
            ("budget", "budget", "int"), ("comparison", "comparison", "text"), ("task", "task", "text"),
            ("pairs", "pairs", "int"), ("mean_diff", "mean diff", "f2"), ("ci_lo", "95 % low", "f2"),
            ("ci_hi", "95 % high", "f2"), ("p_ttest", "p (paired t)", "g3"), ("p_holm", "p (Holm)", "g3"),
            ("detectable_80", "detectable (80 %)", "f2"), ("a_wins", "a wins", "int"), ("b_wins", "b wins", "int"),
            ("boot_better", "boot better", "int"), ("boot_worse", "boot worse", "int"),
            ("boot_pairs", "boot pairs", "int"), ("budget_matched", "budget-matched", "text")],
            ["task", "budget", "comparison"], significance=[c for c in ("p_ttest", "p_holm") if c in paired],
            note=f"fishtune.reports.study.paired_table over (task, seed) pairs; task 'all' pools the tasks. "
                 f"{holm_note} The bootstrap columns use {n_resamples} resamples per pair "
                 f"(the study reports use their own)."))
    if skipped:
        views.append(_view("not-study", "Groups without study tables", pd.DataFrame({"why": skipped}),
                           [("why", "group: why", "text")], empty=""))
    return views, paired_tables


def _holm_families(name: str, paired: pd.DataFrame) -> str:
    """How a group's paired table adjusts (fishtune.reports.study.paired_table): two families."""
    pooled = int((paired["task"] == "all").sum())
    return (f"Holm over {name}'s {len(paired) - pooled} per-task comparisons (one family) and over its "
            f"{pooled} pooled comparisons (task all, another)")


def methods_views(results: list[RunResult], baselines: dict[str, float]) -> tuple[list[dict], pd.DataFrame]:
    """Table 1's layout over the methods (fishtune.reports.methods_study), when the runs are of one model
    and two or more methods, one run per method, cell and seed: the cells with the paper's values, and the
    paired differences with Holm over all of them and the paper's deltas, each filterable by method; and
    those paired differences (methods_paired; empty where the layout does not apply)."""
    df = methods_frame(results)
    if (df["model"].nunique() != 1 or df["method"].nunique() < 2
            or df.duplicated(["method", "task", "budget", "row", "seed"]).any()):
        return [], pd.DataFrame()
    table = methods_table(df, baselines)
    lines = [{"method": rec["method"], "budget": rec["budget"], "row": rec["row"], "task": task,
              **{k: rec.get(f"{TASK_TITLES[task]}{suffix}") for k, suffix in
                 (("mean", ""), ("std", "_std"), ("n", "_n"), ("ci_lo", "_lo"), ("ci_hi", "_hi"))},
              "paper": rec.get(f"paper_{task}"), "trivial": "yes" if rec.get(f"{TASK_TITLES[task]}_trivial") is True else ""}
             for rec in table[table["row"] != "baseline"].to_dict("records")
             for task in TASK_TITLES if f"paper_{task}" in rec]
    paired = methods_paired(df)
    # The page lists the per-task rows first (the verdict above leads with them too).
    shown = paired.sort_values("family", kind="stable") if len(paired) else paired
    return [
        _view("methods", "Table 1's layout: every method", pd.DataFrame(lines), [
            ("method", "method", "text"), ("budget", "budget", "int"), ("row", "row", "text"), ("task", "task", "text"),
            ("mean", "mean", "f2"), ("std", "std", "f2"), ("n", "n", "int"), ("ci_lo", "95 % low", "f2"),
            ("ci_hi", "95 % high", "f2"), ("paper", "paper", "f2"), ("trivial", "trivial baseline only", "text")],
            ["method", "task", "budget", "row"],
            note="Best dev score (x100) over seeds with its 95 % t-interval (fishtune.reports.methods_study); "
                 "paper: the paper's Table 1 value of the same cell (bert-base; it has no rand rows)."),
        _view("methods-paired", "Table 1's layout: fish - original and fish - rand per method", shown, [
            ("family", "family", "text"), ("method", "method", "text"), ("budget", "budget", "int"),
            ("task", "task", "text"), ("comparison", "comparison", "text"), ("pairs", "pairs", "int"),
            ("mean_diff", "mean diff", "f2"), ("ci_lo", "95 % low", "f2"), ("ci_hi", "95 % high", "f2"),
            ("p_ttest", "p (paired t)", "g3"), ("p_holm", "p (Holm)", "g3"),
            ("paper_delta", "paper", "f2")],
            ["family", "method", "task", "budget", "comparison"], significance=["p_ttest", "p_holm"],
            note=f"per task: paired over seeds; pooled (task all): paired over task and seed per method x budget. "
                 f"p (Holm): {_table1_families(paired)}. paper: the paper's fish - original of the cell (pooled: "
                 f"the mean over the same tasks).")], paired


def _table1_families(paired: pd.DataFrame) -> str:
    """How methods_paired adjusts: Holm over each family whole."""
    sizes = paired.groupby("family").size()
    return " and ".join(f"Holm over the {sizes[f]} {f.replace(' ', '-')} {TABLE1_FAMILY}"
                        for f in ("per task", "pooled") if f in sizes)


# ---- the verdict: does fish beat the original and rand? (the top of the page) -------------------------

VERDICT_COMPARISONS = ("fish - original", "fish - rand")
VERDICT_COLUMNS = ["label", "name", "budget", "task", "comparison", "pairs", "mean_diff", "ci_lo", "ci_hi", "p_holm",
                   "family"]
TASK_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")   # per task; pooled is black
SIGNIFICANT = 0.05


def verdict_frame(table1_paired: pd.DataFrame, group_paired: Sequence[tuple[tuple, pd.DataFrame]]) -> pd.DataFrame:
    """fish - original and fish - rand per method (or study group) x budget x task (`all`: pooled), with the
    paired mean difference, its 95 % t-interval, the pairs and the one Holm-adjusted p the page shows for
    it, and `family` naming the Holm family. From Table 1's layout (methods_paired) where the page has it,
    else from each study group's paired table (fishtune.reports.study.paired_table); a group's pooled
    rows are left out where it has one task (they repeat that task's pairs)."""
    parts = []
    if len(table1_paired):
        sizes = table1_paired.groupby("family").size()
        parts.append(table1_paired.assign(
            label=table1_paired["method"], name=table1_paired["method"],
            family=[f"Holm over the {sizes[f]} {f.replace(' ', '-')} {TABLE1_FAMILY}"
                    for f in table1_paired["family"]]))
    else:
        keys = [_group_parts(k) for k, _ in group_paired]
        common = set.intersection(*map(set, keys)) if len(keys) > 1 else set()
        for (key, paired), part_names in zip(group_paired, keys):
            if not len(paired):
                continue
            name = _group_name(key)
            pooled = paired["task"] == "all"
            size = {True: int(pooled.sum()), False: int((~pooled).sum())}
            label = " / ".join(p for p in part_names if p not in common) or name
            part = paired.assign(label=label, name=name, family=[
                f"Holm over {name}'s {size[p]} {'pooled' if p else 'per-task'} comparison{'s' * (size[p] != 1)}"
                for p in pooled])
            if paired.loc[~pooled, "task"].nunique() < 2:
                part = part[~pooled]
            parts.append(part)
    if not parts:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    return out[out["comparison"].isin(VERDICT_COMPARISONS)][VERDICT_COLUMNS].reset_index(drop=True)


def _verdict_layout(verdict: pd.DataFrame) -> tuple[list[str], list[str], list[tuple[str, str, int]]]:
    """The verdict's comparisons, tasks (TASK_ORDER, then `all`) and rows (label, name, budget), in order."""
    comparisons = [c for c in VERDICT_COMPARISONS if c in set(verdict["comparison"])]
    present = set(verdict["task"])
    tasks = [t for t in TASK_ORDER if t in present] + sorted(present - {*TASK_ORDER, "all"}) + (
        ["all"] if "all" in present else [])
    rows = list(dict.fromkeys(zip(verdict["label"], verdict["name"], verdict["budget"])))
    order = {m: i for i, m in enumerate(METHOD_ORDER)}  # Table 1's methods in its order and by budget
    rows.sort(key=lambda r: (order[r[1]], r[2]) if r[1] in order else (len(order), 0))  # groups as found
    return comparisons, tasks, rows


def _task_name(task: str) -> str:
    return "pooled" if task == "all" else TASK_TITLES.get(task, task)


def format_p(p: float) -> str:
    """A p-value with 3 significant digits, positional (as the page's tables print it: 0.000464, 1)."""
    return np.format_float_positional(float(f"{p:.3g}"), trim="-") if math.isfinite(p) else "n/a"


def _signed(v: float) -> str:
    return f"{v:+.2f}" if math.isfinite(v) else "n/a"


def verdict_html(verdict: pd.DataFrame) -> str:
    """The verdict table (a line per method x budget; per comparison a column per task and pooled) and the
    forest plot, as HTML for the top of the page; a one-line note where no runs pair fish with original
    or rand."""
    head = '<section id="verdict"><h2>Does fish beat the original and rand?</h2>'
    if verdict.empty:
        return (head + '<p class="empty">No verdict: no study-like group here has fish runs paired with '
                'original or rand runs (the tables below have what there is).</p></section>')
    comparisons, tasks, rows = _verdict_layout(verdict)
    cells = {(r["name"], r["budget"], r["task"], r["comparison"]): r for r in verdict.to_dict("records")}
    table1 = verdict["family"].str.endswith(TABLE1_FAMILY).any()
    out = [head, '<p class="note">Mean paired difference in best dev score (x100) with its 95 % t-interval, the '
           'pairs n (seeds; pooled: task and seed), and the Holm-adjusted p; shaded and marked &#10003;: Holm p &lt; '
           f'{SIGNIFICANT} (green: fish higher, red: fish lower).</p>',
           # Past three task columns per comparison, the interval goes on a line of its own (narrower cells).
           f'<div class="verdict-wrap"><table class="verdict{" many" if len(tasks) > 3 else ""}"><thead><tr>',
           f'<th rowspan="2">{"method" if table1 else "group"}</th><th rowspan="2">budget</th>',
           *(f'<th colspan="{len(tasks)}" class="cmp">{escape(c).replace(" - ", " &minus; ")}</th>'
             for c in comparisons),
           "</tr><tr>", *(f'<th class="cmp-task{" first" if i == 0 else ""}">{escape(_task_name(t))}</th>'
                          for _ in comparisons for i, t in enumerate(tasks)), "</tr></thead><tbody>"]
    budgets_of = {label: [r for r in rows if r[0] == label] for label, _, _ in rows}
    for label, name, budget in rows:
        out.append("<tr>")
        if budgets_of[label][0] == (label, name, budget):
            out.append(f'<th rowspan="{len(budgets_of[label])}" title="{escape(name)}">{escape(label)}</th>')
        out.append(f'<td class="num">{budget}</td>')
        for c in comparisons:
            for i, t in enumerate(tasks):
                rec = cells.get((name, budget, t, c))
                first = " first" if i == 0 else ""
                if rec is None:
                    out.append(f'<td class="v{first}"></td>')
                    continue
                p = rec["p_holm"]
                won = math.isfinite(p) and p < SIGNIFICANT
                kind = (" win" if rec["mean_diff"] > 0 else " loss") if won else ""
                ci = f' <span class="ci">[{_signed(rec["ci_lo"])}, {_signed(rec["ci_hi"])}]</span>'
                out.append(f'<td class="v{first}{kind}" data-key="{escape(f"{name}|{budget}|{t}|{c}")}" '
                           f'data-holm="{float(p)!r}" title="{escape(rec["family"])}"><b>{_signed(rec["mean_diff"])}'
                           f'</b>{ci}<span class="p">n {rec["pairs"]} &middot; Holm {format_p(p)}'
                           f'{" &#10003;" if won else ""}</span></td>')
        out.append("</tr>")
    families = list(dict.fromkeys(verdict.sort_values("task", key=lambda t: t == "all", kind="stable")["family"]))
    out += ["</tbody></table></div>",
            f'<p class="note families">One Holm-adjusted p per comparison on this page: {escape("; ".join(families))}.'
            + (" The study groups' tables below show the unadjusted p of the same comparisons." if table1 else "")
            + "</p>", forest_svg(verdict), "</section>"]
    return "".join(out)


def _ticks(lo: float, hi: float) -> list[float]:
    """Round tick values spanning [lo, hi]: a step of 1, 2 or 5 times a power of ten, at most 7 ticks."""
    span = hi - lo
    base = 10 ** math.floor(math.log10(span / 5))
    step = next(m * base for m in (1, 2, 5, 10) if span / (m * base) <= 6)
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def forest_svg(verdict: pd.DataFrame) -> str:
    """The forest plot, as inline SVG: a panel per comparison, a block per method (or group) x budget, in it a
    line per task and pooled: the mean paired difference (dot) and its 95 % interval (line); a filled dot
    where Holm p < 0.05. Every number is written with fixed decimals, so the same data give the same bytes."""
    comparisons, tasks, rows = _verdict_layout(verdict)
    colours = {t: "#222" if t == "all" else TASK_COLOURS[i % len(TASK_COLOURS)] for i, t in enumerate(tasks)}
    left, panel, gap, right, top, bottom, sub = 150, 420, 40, 12, 52, 44, 9
    block = sub * len(tasks) + 10
    width = left + len(comparisons) * panel + (len(comparisons) - 1) * gap + right
    height = top + block * len(rows) + bottom
    cells = {(r["name"], r["budget"], r["task"], r["comparison"]): r for r in verdict.to_dict("records")}
    one_budget = len({b for _, _, b in rows}) == 1
    out = [f'<svg id="forest" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="forest plot of fish - original and fish - rand" '
           f'font-size="11" font-family="system-ui, sans-serif">']
    for i in range(0, len(rows), 2):   # stripes: every other block shaded, across the panels
        out.append(f'<rect x="0" y="{top + i * block}" width="{width}" height="{block}" fill="#f4f6f9"/>')
    for i, (label, name, budget) in enumerate(rows):
        text = label if one_budget else f"{label}  b{budget}"
        out.append(f'<text x="{left - 10}" y="{top + i * block + block / 2 + 4:.1f}" text-anchor="end">'
                   f'{escape(text)}</text>')
    x_legend = left
    for t in tasks:   # the legend, above the panels
        out.append(f'<line x1="{x_legend}" x2="{x_legend + 18}" y1="12" y2="12" stroke="{colours[t]}" '
                   f'stroke-width="1.6"/>'
                   f'<circle cx="{x_legend + 9}" cy="12" r="3.5" fill="{colours[t]}"/>'
                   f'<text x="{x_legend + 24}" y="16">{escape(_task_name(t))}</text>')
        x_legend += 34 + 7 * len(_task_name(t))
    out.append(f'<circle cx="{x_legend + 9}" cy="12" r="3.5" fill="#555"/><text x="{x_legend + 17}" y="16">'
               f'Holm p &lt; {SIGNIFICANT}</text><circle cx="{x_legend + 120}" cy="12" r="3.5" fill="#fff" '
               f'stroke="#555" stroke-width="1.3"/><text x="{x_legend + 128}" y="16">not</text>')
    for k, c in enumerate(comparisons):
        x0 = left + k * (panel + gap)
        part = verdict[verdict["comparison"] == c]
        ends = [0.0, *[v for col in ("ci_lo", "ci_hi", "mean_diff") for v in part[col] if math.isfinite(v)]]
        lo, hi = min(ends), max(ends)
        pad = 0.04 * (hi - lo) or 1.0
        lo, hi = lo - pad, hi + pad
        def x(v: float) -> float:
            return x0 + (v - lo) / (hi - lo) * panel
        y_end = top + block * len(rows)
        out.append(f'<text x="{x0 + panel / 2:.1f}" y="{top - 10}" text-anchor="middle" font-weight="600" '
                   f'font-size="12">{escape(c.replace(" - ", " − "))}</text>'
                   f'<rect x="{x0}" y="{top}" width="{panel}" height="{y_end - top}" fill="none" stroke="#bbb"/>')
        for v in _ticks(lo, hi):
            out.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{top}" y2="{y_end + 4}" stroke="#e2e2e2"/>'
                       f'<text x="{x(v):.1f}" y="{y_end + 16}" text-anchor="middle">{v:g}</text>')
        out.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top}" y2="{y_end}" stroke="#777" '
                   f'stroke-dasharray="4 3"/><text x="{x0 + panel / 2:.1f}" y="{y_end + 34}" text-anchor="middle">'
                   f'difference in best dev score (x100)</text>')
        for i, (label, name, budget) in enumerate(rows):
            for j, t in enumerate(tasks):
                rec = cells.get((name, budget, t, c))
                if rec is None or not math.isfinite(rec["mean_diff"]):
                    continue
                y = top + i * block + 5 + j * sub + sub / 2
                won = math.isfinite(rec["p_holm"]) and rec["p_holm"] < SIGNIFICANT
                tip = (f"{name}, budget {budget}, {_task_name(t)}, {c}: {_signed(rec['mean_diff'])} "
                       f"[{_signed(rec['ci_lo'])}, {_signed(rec['ci_hi'])}], n {rec['pairs']}, Holm "
                       f"{format_p(rec['p_holm'])} ({rec['family']})")
                out.append(f'<g><title>{escape(tip)}</title>')
                if math.isfinite(rec["ci_lo"]) and math.isfinite(rec["ci_hi"]):
                    out.append(f'<line x1="{x(rec["ci_lo"]):.1f}" x2="{x(rec["ci_hi"]):.1f}" y1="{y:.1f}" '
                               f'y2="{y:.1f}" stroke="{colours[t]}" stroke-width="1.6"/>')
                out.append(f'<circle cx="{x(rec["mean_diff"]):.1f}" cy="{y:.1f}" r="3.5" '
                           f'fill="{colours[t] if won else "#fff"}" stroke="{colours[t]}" stroke-width="1.3"/></g>')
    out.append("</svg>")
    return "".join(out)


def cells_view(runs: list[dict], baselines: dict[str, float]) -> dict:
    """Per cell (CELL_KEY), the seeds' mean and 95 % t-interval (fishtune.reports.stats.t_interval)."""
    df = pd.DataFrame([{k: r.get(k) for k in CELL_KEY} | {"score": r["score"], "i": i} for i, r in enumerate(runs)])
    lines = []
    for key, g in df.groupby(CELL_KEY, dropna=False, sort=True):
        mean, std, n, lo, hi = t_interval(g["score"])
        lines.append(dict(zip(CELL_KEY, key)) | {"n": n, "mean": mean, "std": std, "ci_lo": lo, "ci_hi": hi,
                                                  "baseline": baselines.get(key[CELL_KEY.index("task")]),
                                                  "runs": g["i"].tolist()})
    order = list(ROWS)  # the study's row order, then other modes by name
    lines.sort(key=lambda c: (c["folder"], str(c["model"]), str(c["method"]), str(c["task"]), c["budget"],
                              order.index(c["mask"]) if c["mask"] in order else len(order), str(c["mask"]),
                              str(c["layers"]), str(c["lr"])))
    cells = pd.DataFrame(lines)
    keys = _with_folder(runs, CELL_KEY[1:])
    return _view("cells", "Cells: seeds and 95 % intervals", cells, [
        *[(k, k, "text") for k in keys], ("n", "seeds", "int"), ("mean", "mean", "f2"), ("std", "std", "f2"),
        ("ci_lo", "95 % low", "f2"), ("ci_hi", "95 % high", "f2"), ("baseline", "trivial baseline", "f2")],
        ["folder", "model", "method", "task", "budget", "mask", "lr", "layers"], figure="cells",
        note="Dots: seeds (click one for its run); bars: the mean and its 95 % t-interval. The axis follows the "
             "seeds and the baseline (dashed), so long intervals run off it; the table has their ends.")


def runs_view(runs: list[dict]) -> dict:
    """One line per run (the page makes them from its runs, which it holds once); a click opens the
    run's curves. Columns that no result file has (peak memory in older files) are left out."""
    present = pd.DataFrame(columns=sorted({k for r in runs for k in r}))
    return _view("runs", "Runs (click a line for its curves)", present, [
        ("run_id", "run", "text"), *[(k, k, "text") for k in _with_folder(runs, [])], ("model", "model", "text"),
        ("method", "method", "text"), ("task", "task", "text"),
        ("layers", "layers", "int"), ("rank", "rank", "int"), ("mask", "mask", "text"), ("budget", "budget", "int"),
        ("seed", "seed", "int"), ("lr", "lr", "g3"), ("score", "best score", "f2"), ("best_epoch", "best epoch", "int"),
        ("epochs", "epochs", "int"), ("stop_reason", "stop", "text"), ("trainable", "trainable", "int"),
        ("ratio_pct", "ratio %", "f4"), ("train_seconds", "train s", "f1"), ("fisher_seconds", "Fisher s", "f1"),
        ("zero_fisher_filled", "zero-Fisher filled", "int"), ("samples_per_second", "samples/s", "f1"),
        ("tokens_per_second", "tokens/s", "f1"),
        ("peak_memory_mb", "peak MB", "f1"), ("cuda_max_allocated_mb", "CUDA alloc MB", "f1"),
        ("device", "device", "text"), ("precision", "precision", "text")],
        ["folder", "model", "method", "task", "budget", "mask", "lr", "precision", "stop_reason"], click="run",
        rows_from="runs")


def placement_view(runs: list[dict]) -> dict:
    """Chosen entries per (model, method, task, budget, mask, layer, module), summed over seeds."""
    lines = [{**{k: r[k] for k in ("folder", "model", "method", "task", "budget", "mask")},
              "layer": "other" if layer is None else layer, "module": module, "chosen": c, "entries": e, "run": i}
             for i, r in enumerate(runs) for layer, module, c, e in r.get("placement", [])]
    note = ("Entries a mask lets train, per layer and module, summed over the seeds; share: of the mode's "
            "chosen entries in that (model, method, task, budget). Bars: share per layer and per module.")
    if not lines:
        return _view("placement", "Mask placement", pd.DataFrame(), [], figure=None, empty=(
            "No mask placement: no result file here has a `placement` field and no mask file "
            "(`<run>.mask.safetensors`) is saved beside one."))
    df = pd.DataFrame(lines)
    key = _with_folder(runs, ["model", "method", "task", "budget", "mask"])
    agg = (df.groupby([*key, "layer", "module"], sort=False)
           .agg(runs=("run", "nunique"), chosen=("chosen", "sum"), entries=("entries", "sum")).reset_index())
    agg["density_pct"] = 100 * agg["chosen"] / agg["entries"]
    agg["share_pct"] = 100 * agg["chosen"] / agg.groupby(key)["chosen"].transform("sum")
    missing = sum("placement" not in r and r["mask"] != "none" for r in runs)
    if missing:
        note += f" {missing} masked runs record no placement and saved no mask: they are not counted."
    return _view("placement", "Mask placement", agg, [
        *[(k, k, "text") for k in key], ("layer", "layer", "text"), ("module", "module", "text"),
        ("runs", "runs", "int"), ("chosen", "chosen", "int"), ("entries", "entries", "int"),
        ("density_pct", "chosen of entries %", "f2"), ("share_pct", "share %", "f2")],
        [*key, "layer", "module"], figure="placement", note=note)


def cost_view(runs: list[dict]) -> dict:
    """Per (model, method, task, budget, mask) the mean score and costs; the figure has every run."""
    key = _with_folder(runs, ["model", "method", "task", "budget", "mask"])
    df = pd.DataFrame([{k: r.get(k) for k in (*key, "score", "train_seconds", "fisher_seconds", "samples_per_second",
                                              "peak_memory_mb")} | {"i": i} for i, r in enumerate(runs)])
    agg = df.groupby(key, dropna=False).agg(runs=("i", list), n=("i", "size"), score=("score", "mean"),
                                            train_seconds=("train_seconds", "mean"),
                                            fisher_seconds=("fisher_seconds", "mean"),
                                            samples_per_second=("samples_per_second", "mean"),
                                            peak_memory_mb=("peak_memory_mb", "mean")).reset_index()
    agg = agg.dropna(axis=1, how="all")
    return _view("cost", "Cost: score against training time and memory", agg, [
        *[(k, k, "text") for k in key], ("n", "runs", "int"), ("score", "mean score", "f2"),
        ("train_seconds", "mean train s", "f1"), ("fisher_seconds", "mean Fisher s", "f1"),
        ("samples_per_second", "mean samples/s", "f1"), ("peak_memory_mb", "mean peak MB", "f1")],
        key, figure="cost", note="Each dot a run (click for its curves); means per line of the table. "
                                 "Peak memory is drawn where the result files record it.")


def in_progress_view(folders: Sequence[Path], base: Path) -> dict:
    """The runs being trained under `folders`: their claims' owners and last heartbeats (as of the page's
    build: the only part of the page that changes without a result file changing); paths under `base`."""
    rows = pd.DataFrame([{**{k: v for k, v in c.to_json().items() if k != "heartbeat_age_s"},
                          "path": str(Path(c.path).relative_to(base))}
                         for folder in folders for c in in_progress(folder)])
    return _view("in_progress", f"In progress ({len(rows)})", rows, [
        ("run_id", "run", "text"), ("owner", "owner", "text"), ("host", "host", "text"), ("pid", "pid", "int"),
        ("slurm", "Slurm job", "text"), ("started_at", "started", "text"), ("heartbeat", "last heartbeat", "text"),
        ("state", "state when the page was built", "text")], ["host", "slurm"],
        empty="No run in progress: no sweep holds a claim here.")


def problem_views(folders: Sequence[Path], base: Path, damaged: list[str]) -> list[dict]:
    """The failed runs under `folders` (their reason and error) and the files that could not be read or were
    set aside; paths under `base`."""
    failures = pd.DataFrame([{"path": str(Path(f.path).relative_to(base)), "reason": f.reason,
                              "error": str(f.error or "")[:300], "host": f.host, "finished_at": f.finished_at}
                             for folder in folders for f in load_failures(folder, damaged)])
    bad = [d.split(": ", 1) for d in damaged]
    bad += [[str(p), "set aside by its run as damaged (the run is redone)"]
            for folder in folders for p in set_aside_files(folder)]
    bad_df = pd.DataFrame([{"path": str(Path(p).relative_to(base)) if Path(p).is_relative_to(base) else p,
                            "why": why} for p, why in bad])
    return [_view("failed", f"Failed runs ({len(failures)})", failures, [
                ("path", "file", "text"), ("reason", "reason", "text"), ("error", "error", "text"),
                ("host", "host", "text"), ("finished_at", "finished", "text")], empty="No failed runs."),
            _view("damaged", f"Damaged or unreadable files ({len(bad_df)})", bad_df, [
                ("path", "file", "text"), ("why", "why", "text")], empty="No damaged files.")]


def build_page(runs_dir: str | Path | Sequence[str | Path], n_resamples: int = DEFAULT_RESAMPLES,
               title: str | None = None, table1_runs: Sequence[str | Path] = (),
               skipped: list[str] | None = None) -> str:
    """The page's HTML for the result files under `runs_dir`, one folder or several (two studies on one
    page: their folders under the common one key the groups and cells, so they never mix; the trivial
    baseline of a task stays the mean over its distinct dev sets). The finished runs under `table1_runs` join
    Table 1's layout only (the methods study's LoRA rows are the core arm's), so that its cells and its
    Holm family are those of `fishtune.reports.methods_study` over the same folders. Every file not
    counted ('path: why': unreadable, no result, not its computation's, no best score; load_results and
    finished_runs) is on the page and, with `skipped`, appended to it."""
    folders = [Path(runs_dir)] if isinstance(runs_dir, (str, Path)) else [Path(d) for d in runs_dir]
    nested = [(a, b) for a in folders for b in folders if a != b and b.resolve().is_relative_to(a.resolve())]
    if nested:
        raise ValueError(f"runs folders {nested[0][1]} and {nested[0][0]}: one lies in the other (its runs would "
                         f"count twice); give folders side by side")
    # One folder is its own base (the page of one runs folder is as it always was); several, their common one.
    base = folders[0] if len(folders) == 1 else Path(os.path.commonpath(folders))
    damaged: list[str] = []
    results = finished_runs([r for folder in folders for r in load_results(folder, damaged)], damaged)
    results.sort(key=lambda r: (r.model, r.method, r.task, str(r.mask), r.budget, r.seed))
    runs = [run_record(r, base) for r in results]
    baselines = baselines_from(results)
    table1 = results + [r for folder in table1_runs for r in finished_runs(load_results(Path(folder), damaged), damaged)]
    views, verdict = [], verdict_frame(pd.DataFrame(), [])
    if results:
        table1_views, table1_paired = methods_views(table1, baselines)
        group_views, group_paired = study_views(results, base, baselines, n_resamples,
                                                holm_in_table1=len(table1_paired) > 0)
        views = [*table1_views, *group_views]
        verdict = verdict_frame(table1_paired, group_paired)
    if runs:
        views += [cells_view(runs, baselines), runs_view(runs), placement_view(runs), cost_view(runs)]
    views += [in_progress_view(folders, base), *problem_views(folders, base, damaged)]
    if skipped is not None:
        skipped += damaged
    where = ", ".join(map(str, folders))
    data = {"title": title or f"fishtune results: {where}", "runs_dir": where, "runs": runs,
            # No build time: the same result files give the same page, byte for byte.
            "latest": max((r.finished_at or "" for r in results), default=""), "views": views,
            "baselines": compact(baselines), "study_groups": sum(v["id"].startswith("study") for v in views)}
    # "</" inside a string would end the script element early; "<\/" is the same JSON string.
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    package = files("fishtune.reports")
    plotly = package.joinpath("vendor", "plotly-basic.min.js").read_text(encoding="utf-8")
    template = package.joinpath("report_template.html").read_text(encoding="utf-8")
    # One pass over the template: what goes in (the data, plotly.js) is never searched for placeholders.
    parts = {"PLOTLY_JS": plotly, "REPORT_DATA": blob, "VERDICT": verdict_html(verdict)}
    return re.sub(r"__(PLOTLY_JS|REPORT_DATA|VERDICT)__", lambda m: parts[m.group(1)], template)


def write_report(runs_dir: str | Path | Sequence[str | Path], out: str | Path,
                 n_resamples: int = DEFAULT_RESAMPLES, title: str | None = None,
                 table1_runs: Sequence[str | Path] = (), skipped: list[str] | None = None) -> Path:
    """Write the page for `runs_dir` (one folder or several; `table1_runs`, `skipped`: as in build_page) to
    `out` (its folder is created); returns `out`."""
    out = Path(out)
    page = build_page(runs_dir, n_resamples, title, table1_runs, skipped)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fishtune.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs_dir", nargs="+", help="a folder of result files (searched recursively), or several: "
                    "one page of them all, each group and cell keyed by its folder")
    ap.add_argument("--out", required=True, help="the HTML file to write")
    ap.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                    help=f"paired-bootstrap resamples per pair in the study tables (default {DEFAULT_RESAMPLES})")
    ap.add_argument("--title", help="the page's title (default: the runs folder)")
    ap.add_argument("--table1-runs", action="append", default=[], metavar="DIR",
                    help="a further folder of result files for Table 1's layout only (repeatable)")
    args = ap.parse_args(argv)
    for folder in (*args.runs_dir, *args.table1_runs):
        if not Path(folder).is_dir():
            ap.error(f"{folder} is not a folder")
    skipped: list[str] = []
    try:
        out = write_report(args.runs_dir, args.out, args.resamples, args.title, args.table1_runs, skipped)
    except ValueError as e:
        ap.error(str(e))
    print(f"fishtune.report: wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    if skipped:
        print(f"fishtune.report: {len(skipped)} file(s) not counted (on the page under 'Damaged or unreadable "
              f"files'):")
        for line in skipped:
            print(f"  skipped {line}")


if __name__ == "__main__":
    main()
