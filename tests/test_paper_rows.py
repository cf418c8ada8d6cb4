"""fishtune.reports.paper_rows: a study beside the paper's Table 2 rows of the model it stands in for."""
import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from conftest import plain_holm
from fishtune.reports import paper_rows
from results_factory import write_result

TABLE2 = Path(paper_rows.__file__).parent / "paper_data" / "table2.csv"


def _study(runs_dir: Path) -> dict:
    """smollm2 runs: original, fish and rand x SST-2, STS-B x budgets 1, 2 x seeds 1-4, fish and rand with a
    placement over two layers. Returns (mask, budget, task, seed) -> score."""
    rng = np.random.default_rng(0)
    scores = {}
    for mask, budget, task, seed in itertools.product(("none", "fish", "rand"), (1, 2), ("sst2", "stsb"), range(1, 5)):
        score = float(70 + 3 * (mask == "fish") + budget + rng.normal(0, 1.5))
        scores[mask, budget, task, seed] = score
        chosen = (3, 1) if mask == "fish" else (2, 2)
        placement = None if mask == "none" else [
            {"name": f"l{layer}", "layer": layer, "module": "o_proj.lora_A", "chosen": chosen[layer], "entries": 8}
            for layer in (0, 1)]
        write_result(runs_dir, run_id=f"smollm2-{task}-{mask}-{budget}-{seed}", model="smollm2", task=task, mask=mask,
                     budget=budget, seed=seed, score=score, placement=placement)
    return scores


def test_paper_rows_beside_the_paired_differences_with_holm(tmp_path):
    scores = _study(tmp_path / "runs")
    out = paper_rows.report(tmp_path / "runs", tmp_path / "out", "llama32_1b", n_resamples=50)
    beside = out["paper"].set_index(["budget", "task"])
    assert sorted(beside.index) == [(1, "sst2"), (1, "stsb"), (2, "sst2"), (2, "stsb")]

    with open(TABLE2) as f:   # the paper's printed values, read apart from the report's reader
        printed = {(int(r["budget"]), r["task"], r["row"]): float(r["value"]) for r in csv.DictReader(f)
                   if r["model"] == "llama32_1b" and r["method"] == "lora"}
    # L3's families: fish - original one-sided (greater) over the 4 cells, fish - rand two-sided over its 4.
    cells = [(budget, task) for budget in (1, 2) for task in ("sst2", "stsb")]
    holm = {}
    for a, b, side in (("fish", "none", "greater"), ("fish", "rand", "two-sided")):
        p = [stats.ttest_rel([scores[a, bu, t, s] for s in range(1, 5)], [scores[b, bu, t, s] for s in range(1, 5)],
                             alternative=side).pvalue for bu, t in cells]
        holm.update({(a, b, *cell): q for cell, q in zip(cells, plain_holm(p))})
    for (budget, task), rec in beside.iterrows():
        assert rec["paper_original"] == printed[budget, task, "original"]
        assert rec["paper_fish"] == printed[budget, task, "fish"]
        assert rec["paper_diff"] == pytest.approx(printed[budget, task, "fish"] - printed[budget, task, "original"])
        for a, b, key in (("fish", "none", "fish_original"), ("fish", "rand", "fish_rand")):
            diffs = [scores[a, budget, task, s] - scores[b, budget, task, s] for s in range(1, 5)]
            lo, hi = stats.t.interval(0.95, 3, loc=np.mean(diffs), scale=stats.sem(diffs))
            assert (rec[key], rec[f"{key}_lo"], rec[f"{key}_hi"], rec[f"{key}_n"]) == (
                pytest.approx(np.mean(diffs)), pytest.approx(lo), pytest.approx(hi), 4)
            assert rec[f"{key}_holm"] == pytest.approx(holm[a, b, budget, task])
        assert rec["original"] == pytest.approx(np.mean([scores["none", budget, task, s] for s in range(1, 5)]))

    place = out["placement"].set_index(["mode", "budget", "by", "value"])["share_mean"]
    assert place["fish", 1, "layer", "0"] == pytest.approx(0.75) and place["rand", 2, "layer", "1"] == pytest.approx(0.5)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "Beside the paper's Table 2 (llama32_1b)" in summary and "| 1 | SST-2 | 89.68 | 90.94 | +1.26 |" in summary
    # Rebuilt from the same files: the same bytes, the appended sections not doubled.
    before = {n: (tmp_path / "out" / n).read_bytes() for n in ("paper.csv", "placement.csv", "summary.md")}
    paper_rows.report(tmp_path / "runs", tmp_path / "out", "llama32_1b", n_resamples=50)
    assert {n: (tmp_path / "out" / n).read_bytes() for n in before} == before


def test_an_unknown_paper_model_is_one_line_before_any_work(tmp_path, capsys):
    _study(tmp_path / "runs")
    with pytest.raises(SystemExit) as e:
        paper_rows.main(["--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--paper-model", "llama3"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("fishtune.paper_rows: error: Table 2 has no LoRA rows of model 'llama3'; it has ")
    assert "llama32_1b" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_study_with_only_its_original_rows_so_far_reports_them_and_no_pair(tmp_path):
    """The first runs of a seed-major sweep are original rows: the tables say so, nothing is paired yet."""
    for task, seed in itertools.product(("sst2", "stsb"), (1, 2)):
        write_result(tmp_path / "runs", run_id=f"{task}-{seed}", model="smollm2", task=task, seed=seed, score=60.0 + seed)
    out = paper_rows.report(tmp_path / "runs", tmp_path / "out", "llama32_1b", n_resamples=10)
    assert list(out["table"]["row"]) == ["baseline", "original"] and out["table"]["SST-2"].iloc[1] == pytest.approx(61.5)
    assert out["paired"].empty and out["paper"].empty and out["placement"].empty
    assert "| 1 | original |" in (tmp_path / "out" / "summary.md").read_text()


def test_cost_beside_another_study_per_model_and_task_as_the_files_record_it(tmp_path, capsys):
    """cost.csv sets a run of each study side by side: per model and task the mean, min and max seconds of
    training, the Fisher seconds of fish runs (rand's 0 s left out), the median samples/s and the highest peak
    RSS, checked against a plain loop over the written files."""
    rng = np.random.default_rng(1)
    written = []
    for folder, model in (("runs", "smollm2"), ("beside", "minilm")):
        for mask, task, seed in itertools.product(("none", "fish", "rand"), ("sst2", "stsb"), (1, 2)):
            written.append(write_result(
                tmp_path / folder, run_id=f"{model}-{task}-{mask}-{seed}", model=model, task=task, mask=mask, seed=seed,
                score=70.0 + seed, train_seconds=float(rng.uniform(50, 900)), samples_per_second=float(rng.uniform(1, 60)),
                fisher_seconds=float(rng.uniform(1, 60)) if mask == "fish" else 0.0,
                peak_rss_mb=float(rng.uniform(900, 4000))))
    # a head-only run of the other folder is no row of the study: left out of the cost
    write_result(tmp_path / "beside", run_id="minilm-sst2-head_only-1", model="minilm", mask="head_only", train_seconds=1e6)
    paper_rows.main(["--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--paper-model", "llama32_1b",
                     "--resamples", "10", "--cost-beside", str(tmp_path / "beside")])
    with open(tmp_path / "out" / "cost.csv") as f:
        cost = {(r["model"], r["task"]): r for r in csv.DictReader(f)}
    assert sorted(cost) == [("minilm", "sst2"), ("minilm", "stsb"), ("smollm2", "sst2"), ("smollm2", "stsb")]
    for (model, task), row in cost.items():
        runs = [r for r in written if (r.model, r.task) == (model, task)]
        train = [r.train_seconds for r in runs]
        assert int(row["runs"]) == len(runs) == 6
        assert float(row["train_s_mean"]) == pytest.approx(sum(train) / len(train), rel=1e-5)
        assert (float(row["train_s_min"]), float(row["train_s_max"])) == pytest.approx((min(train), max(train)), rel=1e-5)
        fisher = [r.fisher_seconds for r in runs if r.mask == "fish"]
        assert float(row["fisher_s_mean"]) == pytest.approx(sum(fisher) / len(fisher), rel=1e-5)
        median = float(np.median([r.samples_per_second for r in runs]))
        assert float(row["samples_per_s_median"]) == pytest.approx(median, rel=1e-5)
        assert float(row["peak_rss_mb_max"]) == pytest.approx(max(r.peak_rss_mb for r in runs), rel=1e-5)
    assert "## Cost of a run beside" in (tmp_path / "out" / "summary.md").read_text()
    with pytest.raises(SystemExit) as e:
        paper_rows.main(["--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "o2"), "--paper-model",
                         "llama32_1b", "--cost-beside", str(tmp_path / "nowhere")])
    assert e.value.code == 2 and "--cost-beside" in capsys.readouterr().err and not (tmp_path / "o2").exists()
