"""fishtune.reports.methods_study (issue 27's Table 1 layout): cells, paired differences and Holm against
independent computations (numpy, scipy, a slow Holm loop), the paper's values read from its CSV by hand,
and the mark on a cell that learned nothing."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fishtune.reports import methods_study as methods
from results_factory import write_result
from conftest import plain_holm

SST2_LABELS = [1, 1, 1, 0, 0]          # majority class 1: the trivial baseline is 60.0
STSB_LABELS = [0.5, 2.0, 3.5, 4.0, 1.0]
SEEDS = (1, 2, 3)


def _score(method: str, mask: str, task: str, budget: int, seed: int) -> float:
    """Scores with a known structure: fish above rand above original, prefix stuck on the baseline."""
    if method == "prefix":
        return 60.0 if task == "sst2" else 0.0
    base = {"none": 70.0, "rand": 72.0, "fish": 74.0}[mask] + (5.0 if task == "stsb" else 0.0)
    return base + budget + 0.7 * seed + (0.9 * seed ** 2 if mask == "fish" else 0.0)


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    folder = tmp_path / "runs"
    for method in ("lora", "prefix"):
        for mask in ("none", "fish", "rand"):
            for task, labels in (("sst2", SST2_LABELS), ("stsb", STSB_LABELS)):
                for budget in (1, 2):
                    for seed in SEEDS:
                        write_result(folder, method=method, mask=mask, task=task, budget=budget, seed=seed,
                                     score=_score(method, mask, task, budget, seed), dev_labels=labels,
                                     precision="fp32")
    return folder


def _paper_value(method: str, budget: int, row: str, task: str) -> float:
    path = Path(methods.__file__).parent / "paper_data" / "table1.csv"
    with open(path) as f:
        for rec in csv.DictReader(f):
            if (rec["model"], rec["method"], rec["budget"], rec["row"], rec["task"]) == \
                    ("bert_base", method, str(budget), row, task):
                return float(rec["value"])
    return math.nan


def test_table_cells_paper_values_and_trivial_mark(runs, tmp_path):
    tables = methods.report([runs], tmp_path / "out", verbose=False)
    table = tables["table"].set_index(["method", "budget", "row"])
    assert table.loc[("", 0, "baseline"), "SST-2"] == pytest.approx(60.0)
    assert table.loc[("", 0, "baseline"), "STS-B"] == pytest.approx(0.0)
    for budget in (1, 2):
        for mask, row in (("none", "original"), ("fish", "fish"), ("rand", "rand")):
            rec = table.loc[("lora", budget, row)]
            scores = np.array([_score("lora", mask, "stsb", budget, s) for s in SEEDS])
            half = stats.t.ppf(0.975, len(scores) - 1) * scores.std(ddof=1) / math.sqrt(len(scores))
            assert rec["STS-B"] == pytest.approx(scores.mean())
            assert (rec["STS-B_lo"], rec["STS-B_hi"]) == pytest.approx((scores.mean() - half, scores.mean() + half))
            assert rec["STS-B_n"] == len(SEEDS)
            avg = np.mean([[_score("lora", mask, t, budget, s) for t in ("sst2", "stsb")] for s in SEEDS], axis=1)
            assert rec["Avg"] == pytest.approx(avg.mean())
            assert not rec["SST-2_trivial"] and not rec["STS-B_trivial"]
            paper = _paper_value("lora", budget, row, "sst2")
            assert (math.isnan(rec["paper_sst2"]) and math.isnan(paper)) or rec["paper_sst2"] == pytest.approx(paper)
    assert table.loc[("lora", 1, "fish"), "paper_sst2"] == pytest.approx(90.48)   # printed in the paper
    assert math.isnan(table.loc[("lora", 1, "rand"), "paper_sst2"])                # the paper has no rand rows
    # prefix learned nothing: every cell of it is marked, and the Markdown says so
    assert table.loc[("prefix", 1, "fish"), "SST-2_trivial"] and table.loc[("prefix", 2, "original"), "STS-B_trivial"]
    assert "(trivial)" in (tmp_path / "out" / "summary.md").read_text()
    for name in ("table1.csv", "table1.tex", "paired.csv", "forest.png", "forest.pdf"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_paired_differences_and_holm_over_the_whole_family(runs, tmp_path):
    paired = methods.report([runs], tmp_path / "out", verbose=False)["paired"]
    per_task, pooled = paired[paired["family"] == "per task"], paired[paired["family"] == "pooled"]
    assert len(per_task) == 2 * 2 * 2 * 2   # methods x budgets x tasks x comparisons
    assert len(pooled) == 2 * 2 * 2 and set(pooled["task"]) == {"all"}
    lora = paired[(paired["method"] == "lora")].set_index(["budget", "task", "comparison"])
    for budget in (1, 2):
        for a, b in (("fish", "none"), ("fish", "rand")):
            comparison = f"fish - {'original' if b == 'none' else b}"
            for task in ("sst2", "stsb"):
                sa = [_score("lora", a, task, budget, s) for s in SEEDS]
                sb = [_score("lora", b, task, budget, s) for s in SEEDS]
                rec = lora.loc[(budget, task, comparison)]
                assert rec["mean_diff"] == pytest.approx(np.mean(np.subtract(sa, sb)))
                assert rec["p_ttest"] == pytest.approx(stats.ttest_rel(sa, sb).pvalue)
            # pooled: one pair per task and seed (6 pairs), the paper's delta the mean of its two tasks'
            sa = [_score("lora", a, t, budget, s) for t in ("sst2", "stsb") for s in SEEDS]
            sb = [_score("lora", b, t, budget, s) for t in ("sst2", "stsb") for s in SEEDS]
            rec = lora.loc[(budget, "all", comparison)]
            assert rec["pairs"] == 6 and rec["mean_diff"] == pytest.approx(np.mean(np.subtract(sa, sb)))
            assert rec["p_ttest"] == pytest.approx(stats.ttest_rel(sa, sb).pvalue)
        for task in ("sst2", "stsb"):
            delta = _paper_value("lora", budget, "fish", task) - _paper_value("lora", budget, "original", task)
            assert lora.loc[(budget, task, "fish - original"), "paper_delta"] == pytest.approx(delta)
        deltas = [_paper_value("lora", budget, "fish", t) - _paper_value("lora", budget, "original", t)
                  for t in ("sst2", "stsb")]
        assert lora.loc[(budget, "all", "fish - original"), "paper_delta"] == pytest.approx(np.mean(deltas))
    for family in (per_task, pooled):   # Holm within each family, not over both
        assert family["p_holm"].tolist() == pytest.approx(plain_holm(family["p_ttest"].tolist()), nan_ok=True)


def test_one_run_per_cell_and_seed(runs, tmp_path):
    write_result(tmp_path / "again", method="lora", mask="fish", task="sst2", budget=1, seed=1, score=1.0,
                 dev_labels=SST2_LABELS, precision="fp32", run_id="another")
    with pytest.raises(ValueError, match="share a method, cell and seed"):
        methods.report([runs, tmp_path / "again"], tmp_path / "out", verbose=False)


def test_cost_per_method_and_task_from_the_files(tmp_path):
    """cost.csv's figures equal the recorded fields, computed here with plain loops; Fisher seconds count
    only the fish runs (original and rand compute none and record 0 s, as the harness writes them)."""
    folder = tmp_path / "runs"
    rng = np.random.default_rng(3)
    written = []
    for method in ("lora", "ia3"):
        for mask in ("none", "fish", "rand"):
            for seed in SEEDS:
                written.append(write_result(folder, method=method, mask=mask, task="sst2", seed=seed, precision="fp32",
                                            dev_labels=SST2_LABELS, train_seconds=float(rng.uniform(50, 90)),
                                            fisher_seconds=float(rng.uniform(1, 2)) if mask == "fish" else 0.0,
                                            samples_per_second=float(rng.uniform(10, 60)),
                                            peak_rss_mb=float(rng.uniform(900, 1400))))
    cost = methods.report([folder], tmp_path / "out", verbose=False)["cost"].set_index("method")
    assert list(cost.index) == ["lora", "ia3"]   # Table 1's order
    for method in ("lora", "ia3"):
        mine = [r for r in written if r.method == method]
        train = [r.train_seconds for r in mine]
        row = cost.loc[method]
        assert row["runs"] == 9 and row["precision"] == "fp32"
        assert (row["train_s_mean"], row["train_s_min"], row["train_s_max"]) == (
            pytest.approx(sum(train) / 9), min(train), max(train))
        assert row["fisher_s_mean"] == pytest.approx(np.mean([r.fisher_seconds for r in mine if r.mask == "fish"]))
        assert row["samples_per_s_median"] == pytest.approx(np.median([r.samples_per_second for r in mine]))
        assert row["peak_rss_mb_max"] == max(r.peak_rss_mb for r in mine)
    assert "| ia3 | SST-2 | 9 |" in (tmp_path / "out" / "summary.md").read_text()
