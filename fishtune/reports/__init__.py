"""The reports: tables, figures and summaries built from result files, never from a training run.

aggregate (the paper's tables and Figure 3), mask_report (masks compared with paired tests, their
placement and overlap), sweep_summary (what became of a sweep), paper (+ paper_data/: the paper's
published numbers), ratios (trainable-parameter ratios from architecture configs), study and study_why
(the seeded study and its mechanism arms), methods_study (the study of all six PEFT methods in Table 1's layout), parity (two sets of runs that differ in one setting), and
stats (the intervals and tests they share). They read result files through fishtune.harness.results
and may use the harness's tables (tasks, schedules, methods); they import nothing of its training loop
(harness.train, harness.run).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import pandas as pd

from ..harness.results import FILE_KEYS, RunResult
from ..modes import MODES


class _Rows(Mapping[str, str]):
    """mode -> row label of the modes the study views show (ModeSpec.row), in MODES' order, read from MODES
    when asked, so a mode added there shows without a word here."""

    def __getitem__(self, mode: str) -> str:
        spec = MODES.get(mode)
        if spec is None or spec.row is None:
            raise KeyError(mode)
        return spec.row

    def __iter__(self) -> Iterator[str]:
        return (name for name, spec in MODES.items() if spec.row is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


# The rows of every table, by the mask mode of their runs, in table order: a row is named after its
# mode, except the runs without a mask, which are the method's "original" configuration.
ROWS: Mapping[str, str] = _Rows()


def row_label(mode: str) -> str:
    """The row a mask mode's runs make: `original` for mask none, else the mode's own name."""
    return ROWS.get(mode, mode)


def row_mode(row: str) -> str:
    """The mask mode of a row's runs (row_label's inverse)."""
    return {label: mode for mode, label in ROWS.items()}.get(row, row)


def results_frame(results: Iterable[RunResult]) -> pd.DataFrame:
    """One line per result: every field of its file (FILE_KEYS, in file order), then `row` (row_label of
    its mask), `score` and `best_epoch` (of its best epoch), `epochs` (trained) and `path`. The one place
    result files become a frame: each report picks and derives its columns from this one. Filter the
    results before, not the frame after: a column's type is inferred from the lines it holds."""
    lines = [{**{k: getattr(r, k) for k in FILE_KEYS}, "row": row_label(r.mask), "score": r.score,
              "best_epoch": r.best.get("epoch"), "epochs": len(r.history or []), "path": r.path} for r in results]
    return pd.DataFrame(lines, columns=[*FILE_KEYS, "row", "score", "best_epoch", "epochs", "path"])


def precision_label(precision: str | None) -> str:
    """A run's precision as the tables show it: files from before it was recorded say `unrecorded`."""
    return precision or "unrecorded"
