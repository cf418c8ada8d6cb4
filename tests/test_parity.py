"""fishtune.parity pairs runs by config (all but the keys that may differ) and its paired difference
and interval equal scipy's."""
import json

import numpy as np
import pytest
from scipy import stats

from fishtune.reports.parity import pairs, parity_table
from fishtune.harness.sweeps import job_overrides
from results_factory import make_result


def _run(seed, precision, score, task="sst2", lr_scale=100.0, method="lora"):
    return make_result(task=task, method=method, mask="fish", budget=1, seed=seed, score=score, precision=precision,
                       samples_per_second=50.0 if precision == "bf16" else 20.0,
                       config={"seed": seed, "task": {"name": task}, "peft": {"name": method},
                               "train": {"precision": precision, "lr_scale": lr_scale},
                               "paths": {"runs_dir": f"runs/{precision}"}})   # where files go is no difference


def test_pairs_by_config_and_the_interval_equals_scipy():
    rng = np.random.default_rng(0)
    fp32 = [_run(s, "fp32", 70 + rng.normal()) for s in range(1, 6)]
    bf16 = [_run(s, "bf16", r.score + rng.normal(0, 0.3)) for s, r in zip(range(1, 6), fp32)]
    bf16.append(_run(1, "bf16", 10.0, lr_scale=20.0))   # another config: no twin, left out
    df = pairs(bf16, fp32, ["train.precision"])
    assert len(df) == 5
    table = parity_table(df)
    assert len(table) == 1
    rec = table.iloc[0]
    d = np.array([a.score - b.score for a, b in zip(bf16, fp32)])
    lo, hi = stats.t.interval(0.95, 4, loc=d.mean(), scale=stats.sem(d))
    assert (rec["mean_diff"], rec["ci_lo"], rec["ci_hi"]) == (pytest.approx(d.mean()), pytest.approx(lo), pytest.approx(hi))
    assert rec["p_ttest"] == pytest.approx(stats.ttest_rel([a.score for a in bf16[:5]], [b.score for b in fp32]).pvalue)
    assert rec["speed_ratio"] == pytest.approx(2.5) and rec["within_margin"] and (rec["a_precision"], rec["b_precision"]) == ("bf16", "fp32")


def test_parity_sweep_is_the_study_cells_in_bf16():
    jobs = job_overrides("bf16_parity")
    assert len(jobs) == 20 and all("train.precision=bf16" in job for job in jobs)


def test_each_method_is_paired_apart():
    """Two methods' runs of the same seeds give one line each, each the difference of its own pairs."""
    fp32 = [_run(s, "fp32", 70.0 + s, method=m) for m in ("lora", "ia3") for s in (1, 2, 3)]
    shift = {"lora": 0.5, "ia3": -2.0}
    bf16 = [_run(r.seed, "bf16", r.score + shift[r.method] + 0.1 * r.seed, method=r.method) for r in fp32]
    table = parity_table(pairs(bf16, fp32, ["train.precision"])).set_index("method")
    assert sorted(table.index) == ["ia3", "lora"] and (table["pairs"] == 3).all()
    for method, d in shift.items():
        assert table.loc[method, "mean_diff"] == pytest.approx(d + 0.2)


def test_one_pair_has_no_interval_and_no_answer():
    table = parity_table(pairs([_run(1, "bf16", 71.0)], [_run(1, "fp32", 70.0)], ["train.precision"]))
    rec = table.iloc[0]
    assert rec["pairs"] == 1 and rec["mean_diff"] == pytest.approx(1.0) and np.isnan(rec["ci_lo"])
    assert rec["contains_0"] is None and rec["within_margin"] is None
