"""The study's three arms (docs/STUDY.md "Why rand beats fish"): the sweeps pair with the study's runs,
and the report's 2 x 2 effects, lr and converged comparisons equal an independent computation (numpy
contrasts, scipy's one-sample t-test and t-interval) on synthetic result files."""
import itertools

import numpy as np
import pytest
from scipy import stats
from sklearn.dummy import DummyClassifier

from fishtune.reports.study_why import report
from fishtune.harness.sweeps import job_overrides, run_configs
from results_factory import write_result


@pytest.mark.parametrize("experiment,runs,seeds", [("study_mechanism", 40, "12345"), ("study_lr", 20, "12345"),
                                                   ("study_converged", 18, "123")])
def test_arm_sweeps_have_the_documented_size_seed_major(experiment, runs, seeds):
    jobs = job_overrides(experiment)
    launched = [next(o.split("=")[1] for o in job if o.startswith("seed=")) for job in jobs]
    assert len(jobs) == runs and launched == sorted(launched) and set(launched) == set(seeds)


def test_mechanism_and_lr_runs_pair_with_the_study_runs():
    point = ["seed=3", "budget=2", "task=sst2"]
    study = {c["mask"]["mode"]: c for c in run_configs("study", point)}
    for c in run_configs("study_mechanism", point):
        assert c["mask"]["mode"] in ("fish_shuffled", "fish_spread")
        # everything but the mode is the study's: same profile, data subsample, seed, settings
        assert {k: v for k, v in c.items() if k != "mask"} == {k: v for k, v in study["fish"].items() if k != "mask"}
        assert c["train"]["precision"] == "fp32"
    lr = run_configs("study_lr", ["seed=3"])
    assert sorted({c["train"]["lr_scale"] for c in lr}) == [20.0, 400.0]
    for c in lr:
        assert {k: v for k, v in c.items() if k != "train"} == {k: v for k, v in study[c["mask"]["mode"]].items()
                                                                if k != "train"}
    converged = run_configs("study_converged", ["seed=1"])
    assert {(c["data"]["train_samples"], c["train"]["max_epochs"], c["train"]["patience"]) for c in converged} == {
        (8000, 20, 3)}


def _write(runs_dir, task, mode, budget, seed, score, lr=0.005, epochs=3, max_epochs=3, stop="max_epochs",
           dev_labels=None):
    write_result(runs_dir, run_id=f"{task}-{mode}-{budget}-{seed}-{lr}", task=task, mask=mode, budget=budget,
                 dev_labels=dev_labels, seed=seed, lr=lr, best={"epoch": epochs, "score": score},
                 history=[{}] * epochs, config={"train": {"max_epochs": max_epochs}, "data": {"train_samples": 1000}},
                 stop_reason=stop, train_seconds=10.0, precision="fp32",
                 placement=[{"name": "q", "layer": 0, "module": "query.lora_A", "chosen": 3 if mode == "fish" else 1,
                             "entries": 8},
                            {"name": "v", "layer": 4, "module": "value.lora_A", "chosen": 1, "entries": 8}])


def test_2x2_effects_lr_and_converged_tables_equal_an_independent_computation(tmp_path):
    rng = np.random.default_rng(1)
    study, arms = tmp_path / "study", tmp_path / "why"
    scores = {}
    # scores with an allocation effect of -3 (Fisher allocation hurts), no entry effect, noise per seed
    for task, budget, seed in itertools.product(("sst2", "stsb"), (1, 2), range(1, 6)):
        base = 70 + rng.normal(0, 2)
        for mode, (alloc, entries) in {"fish": (1, 1), "fish_shuffled": (1, 0), "fish_spread": (0, 1),
                                       "rand": (0, 0)}.items():
            scores[task, budget, seed, mode] = base - 3 * alloc + rng.normal(0, 0.5)
            folder = study if mode in ("fish", "rand") else arms / "mechanism"
            _write(folder, task, mode, budget, seed, scores[task, budget, seed, mode])
        _write(study, task, "none", budget, seed, base - 1)   # other study rows are read, not mixed in
    for lr, seed in itertools.product((0.001, 0.02), range(1, 6)):
        for mode in ("fish", "rand"):
            scores["lr", lr, seed, mode] = 60 + 10 * (lr == 0.02) * (mode == "rand") + rng.normal(0, 1)
            _write(arms / "lr", "sst2", mode, 2, seed, scores["lr", lr, seed, mode], lr=lr)
    conv_labels = [1, 0, 1, 1, 0, 1, 0]
    for seed, mode in itertools.product(range(1, 4), ("none", "fish", "rand")):
        scores["conv", seed, mode] = 80 + rng.normal(0, 1)
        early = seed != 3   # 2 of 3 seeds per mode stop by patience
        _write(arms / "converged", "sst2", mode, 1, seed, scores["conv", seed, mode], epochs=8 if early else 20,
               max_epochs=20, stop="early_stopping" if early else "max_epochs", dev_labels=conv_labels)

    tables = report(study, arms, tmp_path / "out", verbose=False)
    mech = tables["mechanism"].set_index(["task", "budget", "effect"])
    assert len(mech) == 12
    pvalues = []
    for task, budget in itertools.product(("sst2", "stsb"), (1, 2)):
        s = {m: np.array([scores[task, budget, seed, m] for seed in range(1, 6)])
             for m in ("fish", "fish_shuffled", "fish_spread", "rand")}
        expected = {"allocation": (s["fish"] + s["fish_shuffled"] - s["fish_spread"] - s["rand"]) / 2,
                    "entries": (s["fish"] + s["fish_spread"] - s["fish_shuffled"] - s["rand"]) / 2,
                    "interaction": (s["fish"] - s["fish_spread"] - s["fish_shuffled"] + s["rand"]) / 2}
        for effect, c in expected.items():
            rec = mech.loc[(task, budget, effect)]
            lo, hi = stats.t.interval(0.95, 4, loc=c.mean(), scale=stats.sem(c))
            assert (rec["pairs"], rec["mean_diff"]) == (5, pytest.approx(c.mean()))
            assert (rec["ci_lo"], rec["ci_hi"]) == (pytest.approx(lo), pytest.approx(hi))
            assert rec["p_ttest"] == pytest.approx(stats.ttest_1samp(c, 0).pvalue)
            pvalues.append(rec["p_ttest"])
            assert rec["fish"] == pytest.approx(s["fish"].mean())
        assert mech.loc[(task, budget, "allocation"), "ci_hi"] < 0   # the planted effect is found
    # Holm over the 12 rows, by a plain loop
    order = np.argsort(pvalues)
    holm, running = np.empty(12), 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (12 - i) * pvalues[j]))
        holm[j] = running
    assert list(tables["mechanism"]["p_holm"]) == pytest.approx(list(holm))

    lr = tables["lr"].set_index("lr")
    assert sorted(lr.index) == [0.001, 0.005, 0.02]   # the study's own lr joins the arm's two
    d = np.array([scores["lr", 0.02, s, "fish"] - scores["lr", 0.02, s, "rand"] for s in range(1, 6)])
    assert lr.loc[0.02, "mean_diff"] == pytest.approx(d.mean()) and lr.loc[0.02, "ci_hi"] < 0
    study_fish = np.mean([scores["sst2", 2, s, "fish"] for s in range(1, 6)])
    assert lr.loc[0.005, "fish"] == pytest.approx(study_fish)

    conv = tables["converged"].set_index("comparison")
    assert list(conv.index) == ["fish - rand", "fish - original", "rand - original"]
    assert (conv.loc["fish - rand", "stopped_early"], conv.loc["fish - rand", "runs"]) == (6, 9)
    d = np.array([scores["conv", s, "fish"] - scores["conv", s, "none"] for s in range(1, 4)])
    assert conv.loc["fish - original", "mean_diff"] == pytest.approx(d.mean())
    d = np.array([scores["conv", s, "rand"] - scores["conv", s, "none"] for s in range(1, 4)])
    assert conv.loc["rand - original", "mean_diff"] == pytest.approx(d.mean())
    assert conv.loc["rand - original", "p_ttest"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    majority = DummyClassifier(strategy="most_frequent").fit([[0]] * 7, conv_labels).score([[0]] * 7, conv_labels)
    assert conv.loc["fish - rand", "baseline"] == pytest.approx(100 * majority)

    place = tables["placement"].set_index(["mode", "budget", "by", "value"])["share_mean"]
    assert place[("fish", 1, "module", "query")] == pytest.approx(0.75)
    assert place[("rand", 1, "layer", "4")] == pytest.approx(0.5)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| sst2 | 1 |" in summary and "fish - rand" in summary and "Preferred lr" in summary


def test_placement_reads_the_2x2_runs_not_the_converged_or_lr_arms(tmp_path):
    """placement.csv describes the masks of the study's cells: a converged run (other training data, so
    another Fisher) or an lr-arm run must not enter the shares or the run counts."""
    def put(folder, mode, seed, query, lr=0.005):
        write_result(folder, run_id=f"{folder.name}-{mode}-{seed}-{lr}", task="stsb", mask=mode, budget=1, seed=seed,
                     lr=lr, best={"epoch": 3, "score": 50.0}, history=[{}] * 3, precision="fp32",
                     config={"train": {"max_epochs": 3}, "data": {"train_samples": 1000}}, stop_reason="max_epochs",
                     train_seconds=1.0, placement=[{"name": "q", "layer": 0, "module": "query.lora_A", "chosen": query,
                                                    "entries": 8},
                                                   {"name": "v", "layer": 4, "module": "value.lora_A", "chosen": 1,
                                                    "entries": 8}])
    study, arms = tmp_path / "study", tmp_path / "why"
    for seed in (1, 2):
        put(study, "fish", seed, query=3)               # 3 of 4 entries on query in the study's cells
        put(study, "rand", seed, query=1)
        put(arms / "mechanism", "fish_shuffled", seed, query=3)
        put(arms / "converged", "fish", seed, query=7)  # 7 of 8: must not move fish's share
        put(arms / "lr", "fish", seed, query=1, lr=0.02)
    tables = report(study, arms, tmp_path / "out", verbose=False)
    place = tables["placement"].set_index(["mode", "budget", "by", "value"])
    assert place.loc[("fish", 1, "module", "query"), "share_mean"] == pytest.approx(0.75)
    assert place.loc[("fish", 1, "module", "query"), "runs"] == 2
    assert place.loc[("fish_shuffled", 1, "module", "query"), "runs"] == 2
