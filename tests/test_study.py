"""The study: its sweep expands to exactly the documented runs, and its report's numbers equal their
independent references (scipy's t-interval and paired t-test, scikit-learn's majority-class scores)."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from fishtune.reports.stats import t_interval
from fishtune.reports.stats import trivial_baseline
from fishtune.reports.study import report
from fishtune.harness.sweeps import job_overrides, run_configs
from results_factory import write_result

# docs/STUDY.md: 5 seeds x 2 budget levels x 5 rows x 4 tasks.
AXES = {"seed": ["1", "2", "3", "4", "5"], "budget": ["1", "2"],
        "mask": ["none", "fish", "rand", "rev", "adaptive_fish"], "task": ["sst2", "stsb", "cola", "wnli"]}


def test_study_sweep_is_the_documented_product_seed_major():
    jobs = job_overrides("study")
    assert len(jobs) == 200
    chosen = [{o.split("=")[0]: o.split("=")[1] for o in job if "=" in o and not o.startswith("+")} for job in jobs]
    assert {tuple(c[k] for k in AXES) for c in chosen} == set(itertools.product(*AXES.values()))
    assert all(c["profile"] == "study" and c["model"] == "minilm" and c["peft"] == "lora" for c in chosen)
    # The seed varies slowest: an interrupted study has whole seeds done first.
    assert [c["seed"] for c in chosen] == sorted(c["seed"] for c in chosen)


def test_study_profile_and_adaptive_row_compose_as_documented():
    configs = run_configs("study", ["seed=1", "budget=1", "task=sst2"])
    assert len(configs) == 5
    for c in configs:
        assert c["data"] == {**c["data"], "train_samples": 1000, "dev_samples": None}
        assert (c["train"]["batch_size"], c["train"]["max_epochs"], c["train"]["lr_scale"]) == (16, 3, 100.0)
        assert c["fisher"]["samples"] == 128
    adaptive = [c for c in configs if c["mask"]["mode"] == "adaptive"]
    assert len(adaptive) == 1 and adaptive[0]["mask"]["start"] == "fish"   # starts at the budget's k


def test_t_interval_equals_scipy():
    values = [71.2, 74.8, 69.9, 75.3, 72.0]
    mean, std, n, lo, hi = t_interval(values)
    ref = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert (n, mean, std) == (5, pytest.approx(np.mean(values)), pytest.approx(np.std(values, ddof=1)))
    assert (lo, hi) == (pytest.approx(ref[0]), pytest.approx(ref[1]))
    assert math.isnan(t_interval([3.0])[3]) and t_interval([])[2] == 0


@pytest.mark.parametrize("task,labels,expected", [
    ("sst2", [1, 1, 0, 1, 0, 1, 1], lambda y: 100 * accuracy_score(y, [1] * len(y))),
    ("mrpc", [1, 0, 1, 1, 0], lambda y: 50 * (f1_score(y, [1] * len(y)) + accuracy_score(y, [1] * len(y)))),
    ("mrpc", [0, 0, 1, 0, 0], lambda y: 50 * (f1_score(y, [0] * len(y)) + accuracy_score(y, [0] * len(y)))),
    ("cola", [1, 0, 1, 1], lambda y: 100 * matthews_corrcoef(y, [1] * len(y))),
    ("stsb", [0.5, 4.2, 3.1, 2.0], lambda y: 0.0),
])
def test_trivial_baseline_is_the_majority_class_score(task, labels, expected):
    assert trivial_baseline(task, labels) == pytest.approx(expected(labels))


def _result(runs_dir, task, mask, budget, seed, preds, labels, score):
    # adaptive: a mean count 5 % below k, budget-matched
    write_result(runs_dir, run_id=f"{task}-{mask}-{budget}-{seed}", task=task, mask=mask, budget=budget, seed=seed,
                 score=score, dev_labels=labels, dev_predictions=preds,
                 ratio_pct_mean=0.0135 * 0.95 if mask == "adaptive" else None)


def test_report_cells_paired_tests_and_baseline_row(tmp_path):
    rng = np.random.default_rng(0)
    labels = [int(v) for v in rng.integers(0, 2, 60)]
    scores = {}
    for mask, seed in itertools.product(("none", "fish", "adaptive"), range(1, 6)):
        flip = rng.random(60) < (0.2 if mask == "fish" else 0.35)   # fish predicts better
        preds = [1 - y if f else y for y, f in zip(labels, flip)]
        scores[mask, seed] = 100 * accuracy_score(labels, preds)
        _result(tmp_path, "sst2", mask, 1, seed, preds, labels, scores[mask, seed])
    out = report(tmp_path, tmp_path / "out", n_resamples=200, verbose=False)
    table, paired = out["table"], out["paired"]

    base = table[table["row"] == "baseline"].iloc[0]
    majority = max(set(labels), key=labels.count)
    assert base["SST-2"] == pytest.approx(100 * accuracy_score(labels, [majority] * 60))

    fish = table[(table["row"] == "fish") & (table["budget"] == 1)].iloc[0]
    values = [scores["fish", s] for s in range(1, 6)]
    lo, hi = stats.t.interval(0.95, 4, loc=np.mean(values), scale=stats.sem(values))
    assert (fish["SST-2_n"], fish["SST-2"], fish["SST-2_lo"], fish["SST-2_hi"]) == (
        5, pytest.approx(np.mean(values)), pytest.approx(lo), pytest.approx(hi))
    assert "not budget-matched" not in table[table["row"] == "adaptive"].iloc[0]["label"]

    row = paired[(paired["comparison"] == "fish - original") & (paired["task"] == "all")].iloc[0]
    original = [scores["none", s] for s in range(1, 6)]
    assert row["pairs"] == 5
    assert row["mean_diff"] == pytest.approx(np.mean(values) - np.mean(original))
    assert row["p_ttest"] == pytest.approx(stats.ttest_rel(values, original).pvalue)
    assert row["boot_pairs"] == 5 and row["boot_better"] + row["boot_worse"] <= 5
    for name in ("table5.csv", "table5.tex", "paired.csv", "summary.md", "figure.png", "figure.pdf"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    # Rebuilt from the same result files, every output is the same bytes (git sees no change).
    before = {name: (tmp_path / "out" / name).read_bytes() for name in ("paired.csv", "summary.md", "figure.pdf")}
    report(tmp_path, tmp_path / "out", n_resamples=200, verbose=False)
    assert all((tmp_path / "out" / name).read_bytes() == data for name, data in before.items())


def test_holm_adjustment_equals_the_step_down_definition():
    from fishtune.reports.stats import holm

    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan, 0.5])
    # Holm (1979) by its definition: the i-th smallest of m finite p-values is significant at level a when
    # all p_(j) <= a / (m - j + 1) for j <= i; the adjusted p is the smallest such a (capped at 1).
    finite = sorted((v, i) for i, v in enumerate(p) if not np.isnan(v))
    m, want = len(finite), np.full(len(p), np.nan)
    for rank, (_, i) in enumerate(finite):
        want[i] = min(1.0, max((m - j) * finite[j][0] for j in range(rank + 1)))
    np.testing.assert_allclose(holm(p), want)
    np.testing.assert_allclose(holm(p)[[3, 0, 2, 1, 5]], [0.025, 0.04, 0.09, 0.09, 0.5])
    assert np.isnan(holm(p)[4])


def test_a_folder_with_two_runs_of_one_cell_is_one_clear_error(tmp_path, capsys):
    from fishtune.reports.study import main

    labels = [1, 0, 1, 1]
    for sub in ("a", "b"):  # the same cell and seed in two arms' folders, read together
        (tmp_path / sub).mkdir()
        _result(tmp_path / sub, "sst2", "fish", 1, 1, labels, labels, 100.0)
    with pytest.raises(SystemExit) as e:
        main(["--runs-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    message = str(e.value)
    assert message.startswith("fishtune.study: error: ") and "\n" not in message
    assert "2 runs of fish on sst2 at budget 1, seed 1" in message and not (tmp_path / "out").exists()


def test_smollm2_comparison_is_table2s_llama_rows_at_the_chosen_rate_seed_major():
    """docs/STUDY.md "A second real model": original, fish and rand x SST-2, STS-B x budgets 1, 2 x seeds 1-5,
    at the pilot's 5e-3 on the cut profile; fish and rand over the bottom 5 layers, the original row on 1 or 2."""
    configs = run_configs("study_smollm2")
    assert len(configs) == 60
    axes = {"seed": [1, 2, 3, 4, 5], "budget": [1, 2], "mask": ["none", "fish", "rand"], "task": ["sst2", "stsb"]}
    cells = [(c["seed"], c["budget"], c["mask"]["mode"], c["task"]["name"]) for c in configs]
    assert set(cells) == set(itertools.product(*axes.values())) and [c[0] for c in cells] == sorted(c[0] for c in cells)
    for c in configs:
        assert (c["model"]["name"], c["peft"]["name"], c["peft"]["rank"], c["peft"]["init"]) == ("smollm2", "lora", 1, "pissa")
        assert c["train"]["lr_scale"] == 100 and c["train"]["precision"] == "fp32"
        assert c["data"] == {**c["data"], "train_samples": 400, "dev_samples": 400}
        assert c["peft"]["fish_layers"] == 5 and c["fisher"]["samples"] == 128
