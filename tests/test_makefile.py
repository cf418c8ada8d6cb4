"""The Makefile's table targets under PROFILE=study: table1 is the methods study (its sweeps, then its report),
the other tables are refused in one line before any work (results/study/ holds the LoRA study's tables)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(*args: str) -> subprocess.CompletedProcess:
    # not the flags of a make that runs these tests (make test): this make is a top-level one
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


def test_table1_under_the_study_profile_is_the_methods_study():
    dry = _make("-n", "table1", "PROFILE=study")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == _make("-n", "study-methods").stdout
    assert "for experiment in study_methods study_methods_ia3" in dry.stdout
    assert "paths.runs_dir=results/study/methods/runs" in dry.stdout and "fishtune.reports.methods_study" in dry.stdout


@pytest.mark.parametrize("target", ["table2", "table3", "table5", "figure3", "tables"])
def test_the_study_profile_refuses_the_other_tables_in_one_line(target):
    run = _make(target, "PROFILE=study")
    lines = [line for line in run.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert run.returncode == 2 and run.stdout == ""
    assert lines == [f"make {target}: PROFILE=study builds table1 only (the methods study, docs/STUDY.md); "
                     f"{target} takes PROFILE=quick or paper"]


def test_the_quick_profile_still_runs_table1s_own_sweep():
    dry = _make("-n", "table1")
    assert dry.returncode == 0 and "+experiment=table1" in dry.stdout and "methods_study" not in dry.stdout
