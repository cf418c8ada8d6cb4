"""The aggregator on synthetic result files: the paper's layout, blanks and a missing list, seed
statistics, LaTeX rules, Figure 3 files. No training: each test writes a handful of JSON files."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from fishtune.reports.aggregate import aggregate, build_table, parse_model_map, RunIndex
from fishtune.reports.paper import paper_wide
from fishtune.harness.results import result_path
from results_factory import write_failure, write_result

TASKS6 = ["cola", "mrpc", "rte", "sst2", "stsb", "wnli"]


def fake_result(runs_dir, *, model="bert_base", method="lora", task="rte", mask="none", budget=1, layers=None,
                rank=1, budget_rank=None, seed=42, score=50.0, losses=(0.7, 0.6, 0.5), finished="2026-01-01T00:00:00",
                schedule=None):
    """Write one result file (a RunResult, tests/results_factory.py) as fishtune.run would."""
    explicit = layers  # peft.layers=N, as Table 3's rows set it
    if layers is None:
        layers = budget if mask == "none" else 5
    config = {
        "model": {"name": model, "family": "bert", "source": "hub", "path": None},
        "peft": {"name": method, "rank": rank, "budget_layers": [1, 2, 3, 4], "fish_layers": 5, "layers": explicit},
        "mask": {"mode": mask} if mask == "none" else {"mode": mask, "k": None, "budget_rank": budget_rank},
        "task": {"name": task}, "budget": budget, "seed": seed, "logger": {"mode": "none"},
        "paths": {"runs_dir": str(runs_dir)}, "force": False,
    }
    if schedule is not None:  # (budget_layers, fish_layers) of another method's config
        config["peft"].update(budget_layers=list(schedule[0]), fish_layers=schedule[1])
    history = [{"epoch": e + 1, "train_loss": l + 0.1, "dev_loss": l, "metrics": {"accuracy": score}, "score": score}
               for e, l in enumerate(losses)]
    path = result_path(runs_dir, config, layers)   # named as fishtune.run names it: its run_id, its config's hash
    return write_result(path, run_id=path.stem, config=config, model=model, task=task,
                        method=method, layers=layers, rank=rank, mask=mask, budget=budget, seed=seed, trainable=6146,
                        total=109_489_538, ratio_pct=0.0056, budget_ratio_pct=0.0056, history=history,
                        best={"epoch": len(losses), "score": score, "metrics": {}, "dev_loss": losses[-1]},
                        finished_at=finished)


def test_layout_follows_the_paper_with_blanks_and_a_missing_list(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_result(runs, task="rte", mask="none", budget=2, score=61.0)
    fake_result(runs, task="rte", mask="rand", budget=2, score=55.0)
    out = aggregate(runs, tmp_path / "results", ["5"])
    frame = pd.read_csv(tmp_path / "results" / "table5.csv")
    paper = paper_wide(5)
    assert list(frame["label"]) == list(paper["label"]) and list(frame["budget"]) == list(paper["budget"])
    assert [c for c in frame.columns if c in ("CoLA", "MRPC", "RTE", "SST-2", "STS-B", "WNLI", "Avg")] == \
        ["CoLA", "MRPC", "RTE", "SST-2", "STS-B", "WNLI", "Avg"]
    original_b2 = frame[(frame.row == "original") & (frame.budget == 2)].iloc[0]
    assert original_b2["RTE"] == 61.0 and math.isnan(original_b2["CoLA"]) and math.isnan(original_b2["Avg"])
    assert frame[(frame.row == "rand") & (frame.budget == 2)].iloc[0]["RTE"] == 55.0
    assert frame["RTE"].notna().sum() == 2
    # 16 rows, all with blanks: each listed once, with the overrides that would fill it.
    assert len(out["missing"]) == 16
    printed = capsys.readouterr().out
    assert "missing runs" in printed
    assert "model=bert_base peft=lora mask=none budget=2 task=cola,mrpc,sst2,stsb,wnli" in printed


def test_no_sst2_column_where_the_paper_has_none_and_explicit_layers_and_ranks(tmp_path):
    runs = tmp_path / "runs"
    fake_result(runs, task="mrpc", mask="fish", budget=3, layers=8, score=70.0)            # Table 3 lay8
    fake_result(runs, task="mrpc", mask="fish", budget=3, rank=4, budget_rank=1, score=71.0)  # Table 4 rk4
    fake_result(runs, task="mrpc", mask="fish", budget=3, rank=4, score=99.0)   # budget of a rank-4 original: no row
    built3 = build_table(3, RunIndex(_load(runs)))
    built4 = build_table(4, RunIndex(_load(runs)))
    assert "SST-2" not in built3.frame.columns and "SST-2" not in built4.frame.columns
    t3 = built3.frame.set_index(["budget", "label"])
    assert t3.loc[(3, "LoRA-FISH-rk1-lay8"), "MRPC"] == 70.0
    assert t3["MRPC"].notna().sum() == 1
    t4 = built4.frame.set_index(["budget", "label"])
    assert t4.loc[(3, "LoRA-FISH-rk4-lay5"), "MRPC"] == 71.0
    assert t4["MRPC"].notna().sum() == 1
    missing = " ".join(built3.missing + built4.missing)
    assert "peft.layers=12" in missing and "peft.rank=32 mask.budget_rank=1" in missing


def test_schedules_fitted_to_a_shallow_model_still_fill_the_paper_rows(tmp_path):
    # IA3's schedule (3, 5, 8, 10; FISH 12) ran on the 6-layer MiniLM as 2, 3, 4, 5 and 6 layers.
    runs, ia3 = tmp_path / "runs", ([3, 5, 8, 10], 12)
    fake_result(runs, method="ia3", model="minilm", budget=1, layers=None, schedule=ia3, score=61.0)
    fake_result(runs, method="ia3", model="minilm", budget=4, schedule=ia3, score=64.0)
    fake_result(runs, method="ia3", model="minilm", mask="fish", budget=1, schedule=ia3, score=70.0)
    for r in _load(runs):
        assert r.layers in (1, 4, 5)  # fake_result's stand-ins for the fitted 2, 5 and 6
    built = build_table(1, RunIndex(_load(runs)), model_map={"bert_base": "minilm"})
    t1 = built.frame.set_index(["budget", "label"])
    assert t1.loc[(1, "Original-(IA)3"), "RTE"] == 61.0 and t1.loc[(4, "Original-(IA)3"), "RTE"] == 64.0
    assert t1.loc[(1, "(IA)3-FISH"), "RTE"] == 70.0


def test_a_run_shared_by_two_tables_shows_in_both(tmp_path):
    runs = tmp_path / "runs"
    fake_result(runs, task="cola", mask="fish", budget=1, score=44.0)
    index = RunIndex(_load(runs))
    cells = {n: build_table(n, index).frame for n in (1, 3, 4, 5)}
    for n, frame in cells.items():
        assert (frame["CoLA"] == 44.0).sum() == 1, n


def test_mean_and_std_over_seeds_equal_numpys(tmp_path):
    runs = tmp_path / "runs"
    scores = {task: [40.0 + i + 3 * s for s in range(3)] for i, task in enumerate(TASKS6)}
    for task, values in scores.items():
        for seed, v in enumerate(values):
            fake_result(runs, task=task, mask="fish", budget=4, seed=seed, score=v)
    row = build_table(5, RunIndex(_load(runs))).frame.query("row == 'fish' and budget == 4").iloc[0]
    for task, title in zip(TASKS6, ["CoLA", "MRPC", "RTE", "SST-2", "STS-B", "WNLI"]):
        assert row[title] == pytest.approx(np.mean(scores[task]))
        assert row[f"{title}_std"] == pytest.approx(np.std(scores[task], ddof=1))
        assert row[f"{title}_n"] == 3
    per_seed_avg = np.mean([scores[t] for t in TASKS6], axis=0)
    assert row["Avg"] == pytest.approx(per_seed_avg.mean())
    assert row["Avg_std"] == pytest.approx(np.std(per_seed_avg, ddof=1))


def test_duplicate_seed_keeps_the_newest(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_result(runs, task="rte", score=50.0, finished="2026-01-01T00:00:00")
    # Same cell and seed, another config (different data setting) -> another file.
    fake_result(runs / "other", task="rte", score=52.0, finished="2026-02-01T00:00:00")
    out = aggregate(runs, tmp_path / "res", ["5"])
    cell = out["5"].frame.query("row == 'original' and budget == 1").iloc[0]
    # one seed kept: its score, a count of 1 and no std (ddof=1 of one value is undefined)
    assert cell["RTE"] == 52.0 and cell["RTE_n"] == 1 and math.isnan(cell["RTE_std"])
    assert "2 results for seed 42" in capsys.readouterr().out


def test_latex_has_booktabs_rules_and_paper_comparison(tmp_path):
    runs = tmp_path / "runs"
    for seed, v in enumerate((43.0, 45.0)):
        fake_result(runs, task="cola", seed=seed, score=v)
    aggregate(runs, tmp_path / "res", ["1"], paper=True, verbose=False)
    tex = (tmp_path / "res" / "table1.tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\end{tabular}"):
        assert rule in tex
    assert tex.count(r"\midrule") == 1 + 5          # under the header, and between the six methods
    assert r"44.00 $\pm$ 1.41" in tex               # mean +- sample std of 43 and 45
    assert r"\quad\textit{paper}" in tex and "43.27" in tex and "+0.73" in tex   # 44.00 - 43.27
    assert "(IA)$^3$-FISH" in tex
    frame = pd.read_csv(tmp_path / "res" / "table1.csv")
    first = frame.iloc[0]
    assert first["CoLA_paper"] == 43.27 and first["CoLA_diff"] == pytest.approx(0.73)
    assert first["ratio_paper"] == 0.0057


def test_figure3_files_and_model_map(tmp_path):
    runs = tmp_path / "runs"
    for task in TASKS6:
        fake_result(runs, model="minilm", task=task, mask="none", losses=(0.9, 0.8, 0.7, 0.65))
        fake_result(runs, model="minilm", task=task, mask="fish", losses=(0.8, 0.7, 0.6))
    out = aggregate(runs, tmp_path / "res", ["figure3", "1"], model_map=parse_model_map("bert_base=minilm"),
                    verbose=False)
    for name in ("figure3.png", "figure3.pdf", "figure3.csv"):
        assert (tmp_path / "res" / name).stat().st_size > 0
    curve = pd.read_csv(tmp_path / "res" / "figure3.csv", index_col="epoch")
    # Each row is plotted while every task still has a dev loss: original 4 epochs, FISH 3.
    assert list(curve.index) == [1, 2, 3, 4] and math.isnan(curve.loc[4, "fish"])
    assert curve.loc[1, "original"] == pytest.approx(0.9) and curve.loc[3, "fish"] == pytest.approx(0.6)
    assert out["1"].frame.iloc[0]["model"] == "minilm" and out["1"].frame.iloc[0]["Avg"] == 50.0


def test_failed_runs_are_listed_with_their_error(tmp_path, capsys):
    runs = tmp_path / "runs"
    ok = fake_result(runs, task="rte", mask="fish", budget=1, layers=8)          # Table 3's lay8 row
    failed = {**ok.config, "peft": {**ok.config["peft"], "layers": 10}}    # lay10: the model is too small
    write_failure(runs / "invalid-0.failed.json", config=failed, error="ConfigError: minilm has 6 layers\ntrace")
    out = aggregate(runs, tmp_path / "res", ["3"])
    assert "    rte failed: ConfigError: minilm has 6 layers" in out["missing"]
    assert "1 failure records" in capsys.readouterr().out


def test_a_missing_or_empty_runs_dir_writes_nothing(tmp_path):
    """A mistyped --runs-dir or a folder without a finished result is refused; the tables already in the
    out folder stay as they were."""
    from fishtune.harness.checks import ConfigError

    res = tmp_path / "res"
    res.mkdir()
    (res / "table2.csv").write_text("the real table")
    with pytest.raises(ConfigError, match="no such folder"):
        aggregate(tmp_path / "nothing", res, ["all"], verbose=False)
    (tmp_path / "empty").mkdir()
    out = aggregate(tmp_path / "empty", res, ["all"], verbose=False)
    assert "holds no finished result files" in out["nothing_written"]
    assert sorted(p.name for p in res.iterdir()) == ["table2.csv"] and (res / "table2.csv").read_text() == "the real table"


def _load(runs):
    from fishtune.harness.results import load_results
    return load_results(runs)


def test_a_cell_whose_runs_all_score_the_trivial_baseline_is_marked(tmp_path, capsys):
    """RTE dev labels 1, 1, 0: the majority class scores 66.67 (scikit-learn's accuracy of predicting 1);
    a cell of runs at that score learned nothing and is marked in the CSV, the .tex and the console."""
    from sklearn.metrics import accuracy_score

    labels = [1, 1, 0]
    baseline = 100 * accuracy_score(labels, [1, 1, 1])
    runs = tmp_path / "runs"
    for seed in (1, 2):
        fake_result(runs, task="rte", mask="none", budget=1, seed=seed, score=baseline)  # learned nothing
        fake_result(runs, task="rte", mask="fish", budget=1, seed=seed, score=baseline + 5 * seed)
    for path in runs.rglob("*.json"):   # the dev labels the baseline is computed from
        data = json.loads(path.read_text())
        data["dev_labels"] = labels
        path.write_text(json.dumps(data))
    aggregate(runs, tmp_path / "results", ["5"])
    frame = pd.read_csv(tmp_path / "results" / "table5.csv")
    b1 = frame[frame.budget == 1].set_index("row")
    assert bool(b1.loc["original", "RTE_trivial"]) and not bool(b1.loc["fish", "RTE_trivial"])
    assert not frame["CoLA_trivial"].any()   # an empty cell is not marked
    tex = (tmp_path / "results" / "table5.tex").read_text()
    assert tex.count(r"\textsuperscript{0}") == 1
    assert "1 of them only the trivial baseline" in capsys.readouterr().out
