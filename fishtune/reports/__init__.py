"""The reports: tables, figures and summaries built from result files, never from a training run.

aggregate (the paper's tables and Figure 3), mask_report (masks compared with paired tests, their
placement and overlap), sweep_summary (what became of a sweep), paper (+ paper_data/: the paper's
published numbers), ratios (trainable-parameter ratios from architecture configs), study and study_why
(the seeded study and its mechanism arms), parity (two sets of runs that differ in one setting), and
stats (the intervals and tests they share). They read result files through fishtune.harness.results
and may use the harness's tables (tasks, schedules, methods); they import nothing of its training loop
(harness.train, harness.run).
"""
from __future__ import annotations

# The rows of every table, by the mask mode of their runs, in table order: a row is named after its
# mode, except the runs without a mask, which are the method's "original" configuration.
ROWS = {"none": "original", "fish": "fish", "rand": "rand", "rev": "rev", "adaptive": "adaptive", "head_only": "head only"}


def row_label(mode: str) -> str:
    """The row a mask mode's runs make: `original` for mask none, else the mode's own name."""
    return ROWS.get(mode, mode)


def row_mode(row: str) -> str:
    """The mask mode of a row's runs (row_label's inverse)."""
    return {label: mode for mode, label in ROWS.items()}.get(row, row)
