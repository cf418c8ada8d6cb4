import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from fishtune.harness.metrics import glue_metrics
from fishtune.harness.tasks import get_task

PREDS = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1])
LABELS = np.array([1, 0, 0, 1, 0, 1, 1, 0, 1, 0])


def test_cola_matthews_by_hand_and_sklearn():
    out = glue_metrics(get_task("cola"), PREDS, LABELS)
    tp, tn, fp, fn = 4, 3, 2, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert out["matthews"] == pytest.approx(100 * mcc)
    assert out["matthews"] == pytest.approx(100 * matthews_corrcoef(LABELS, PREDS))
    assert out["score"] == out["matthews"]


def test_mrpc_mean_of_f1_and_accuracy():
    out = glue_metrics(get_task("mrpc"), PREDS, LABELS)
    assert out["accuracy"] == pytest.approx(70.0)
    assert out["f1"] == pytest.approx(100 * 2 * 4 / (2 * 4 + 2 + 1))
    assert out["f1"] == pytest.approx(100 * f1_score(LABELS, PREDS))
    assert out["score"] == pytest.approx((out["f1"] + out["accuracy"]) / 2)


@pytest.mark.parametrize("task", ["sst2", "rte", "wnli"])
def test_accuracy_tasks(task):
    out = glue_metrics(get_task(task), PREDS, LABELS)
    assert out == {"accuracy": pytest.approx(100 * accuracy_score(LABELS, PREDS)), "score": pytest.approx(70.0)}


def test_stsb_pearson_spearman_mean():
    rng = np.random.default_rng(0)
    labels = rng.uniform(0, 5, 50)
    preds = labels + rng.normal(0, 1, 50)
    out = glue_metrics(get_task("stsb"), preds, labels)
    assert out["pearson"] == pytest.approx(100 * pearsonr(preds, labels)[0])
    assert out["spearman"] == pytest.approx(100 * spearmanr(preds, labels)[0])
    assert out["score"] == pytest.approx((out["pearson"] + out["spearman"]) / 2)
    # A perfectly monotone but non-linear prediction: Spearman 100, Pearson below.
    out = glue_metrics(get_task("stsb"), np.exp(labels), labels)
    assert out["spearman"] == pytest.approx(100) and out["pearson"] < 100
    assert glue_metrics(get_task("stsb"), np.ones(5), np.arange(5.0))["score"] == 0.0


def test_paired_bootstrap_identical_runs_and_a_clear_winner():
    from fishtune.reports.stats import paired_bootstrap

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    noisy = np.where(rng.random(200) < 0.5, labels, 1 - labels)  # ~50 % right
    same = paired_bootstrap(get_task("sst2"), noisy, noisy, labels, n_resamples=200)
    assert same["diff"] == same["ci_low"] == same["ci_high"] == 0 and same["p_value"] == 1.0
    better = paired_bootstrap(get_task("sst2"), labels, noisy, labels, n_resamples=200, seed=3)
    assert better["diff"] == pytest.approx(100 * (1 - accuracy_score(labels, noisy)))
    assert 0 < better["ci_low"] <= better["diff"] <= better["ci_high"] and better["p_value"] < 0.05
    worse = paired_bootstrap(get_task("sst2"), noisy, labels, labels, n_resamples=200, seed=3)
    assert worse["diff"] == -better["diff"] and worse["ci_high"] == -better["ci_low"]  # the same draws
    assert worse["p_value"] == better["p_value"]
    with pytest.raises(ValueError, match="one prediction per example"):
        paired_bootstrap(get_task("sst2"), labels[:10], labels, labels)


def test_paired_bootstrap_resamples_examples_with_the_task_metric():
    # A slow reference: the same draws, each scored with scipy directly (STS-B: mean of Pearson, Spearman).
    from fishtune.reports.stats import paired_bootstrap

    rng = np.random.default_rng(1)
    labels = rng.uniform(0, 5, 60)
    a, b = labels + rng.normal(0, 1, 60), labels + rng.normal(0, 2, 60)
    got = paired_bootstrap(get_task("stsb"), a, b, labels, n_resamples=50, seed=7)
    draws = np.random.default_rng(7)
    score = lambda p, y: 50 * (pearsonr(p, y)[0] + spearmanr(p, y)[0])  # noqa: E731
    diffs = []
    for _ in range(50):
        i = draws.integers(0, 60, 60)
        diffs.append(score(a[i], labels[i]) - score(b[i], labels[i]))
    assert got["ci_low"] == pytest.approx(np.percentile(diffs, 2.5))
    assert got["ci_high"] == pytest.approx(np.percentile(diffs, 97.5))
    assert got["diff"] == pytest.approx(score(a, labels) - score(b, labels))


@pytest.mark.parametrize("task_name", ["stsb", "cola", "mrpc", "sst2"])
def test_resampled_scores_equal_glue_metrics_on_each_draw(task_name):
    # The counts form against the plain loop: glue_metrics (sklearn / scipy) on every resample, with
    # tied values (STS-B labels on a 0.2 grid, predictions rounded) and resamples of a single value.
    from fishtune.reports.stats import resampled_scores

    task, rng, n = get_task(task_name), np.random.default_rng(4), 40
    if task_name == "stsb":
        labels = np.round(rng.uniform(0, 5, n) * 5) / 5
        preds = np.round(labels + rng.normal(0, 1, n), 1)
    else:
        labels = rng.integers(0, 2, n)
        preds = np.where(rng.random(n) < 0.7, labels, 1 - labels)
    idx = rng.integers(0, n, (30, n))
    idx[0] = 3  # one example drawn n times: a constant resample
    idx[1, : n // 2] = 5  # half the draws on one example
    counts = np.stack([np.bincount(i, minlength=n) for i in idx])
    want = [glue_metrics(task, preds[i], labels[i])["score"] for i in idx]
    np.testing.assert_allclose(resampled_scores(task, preds, labels, counts), want, rtol=1e-10, atol=1e-10)


# --- the metrics your own data may pick (conf/task/file.yaml): each formula against scikit-learn / scipy ---

def _file_task(metric, labels=("a", "b", "c")):
    from fishtune.harness.tasks import TaskSpec

    return TaskSpec("own", ("text", None), labels, metric, 128, "{text_a}")


def test_f1_is_binary_for_two_classes_and_macro_for_more():
    rng = np.random.default_rng(5)
    labels, preds = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
    out = glue_metrics(_file_task("f1"), preds, labels)
    assert out == {"f1": pytest.approx(100 * f1_score(labels, preds, average="macro")), "score": out["f1"]}
    # by hand: the unweighted mean of each class's 2TP / (2TP + FP + FN)
    per_class = [2 * np.sum((preds == c) & (labels == c)) / (np.sum(preds == c) + np.sum(labels == c)) for c in range(3)]
    assert out["f1"] == pytest.approx(100 * np.mean(per_class))
    two = glue_metrics(_file_task("f1", ("no", "yes")), PREDS, LABELS)["f1"]
    assert two == pytest.approx(100 * f1_score(LABELS, PREDS)) == glue_metrics(get_task("mrpc"), PREDS, LABELS)["f1"]
    assert glue_metrics(_file_task("f1", ("no", "yes")), np.zeros(4), np.zeros(4))["f1"] == 0.0   # no positive


def test_multiclass_matthews_accuracy_and_f1_acc_against_sklearn():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 4, 80)
    preds = np.where(rng.random(80) < 0.6, labels, rng.integers(0, 4, 80))
    task = _file_task("matthews", ("w", "x", "y", "z"))
    assert glue_metrics(task, preds, labels)["matthews"] == pytest.approx(100 * matthews_corrcoef(labels, preds))
    out = glue_metrics(_file_task("f1_acc", ("w", "x", "y", "z")), preds, labels)
    assert out["accuracy"] == pytest.approx(100 * accuracy_score(labels, preds))
    assert out["f1"] == pytest.approx(100 * f1_score(labels, preds, average="macro"))
    assert out["score"] == pytest.approx((out["f1"] + out["accuracy"]) / 2)
    assert glue_metrics(task, np.full(80, 2), labels)["matthews"] == 0.0   # one class predicted: 0, not NaN


@pytest.mark.parametrize("metric", ["pearson", "spearman"])
def test_a_single_correlation(metric):
    rng = np.random.default_rng(2)
    labels = rng.uniform(0, 1, 40)
    preds = labels ** 3 + rng.normal(0, 0.1, 40)
    reference = {"pearson": pearsonr, "spearman": spearmanr}[metric](preds, labels)[0]
    assert glue_metrics(_file_task(metric, None), preds, labels) == {metric: pytest.approx(100 * reference),
                                                                    "score": pytest.approx(100 * reference)}


def test_each_glue_task_reports_its_own_numbers_in_order():
    got = {name: list(glue_metrics(get_task(name), PREDS, LABELS)) for name in ("cola", "mrpc", "sst2", "rte", "wnli")}
    assert got == {"cola": ["matthews", "score"], "mrpc": ["f1", "accuracy", "score"], "sst2": ["accuracy", "score"],
                   "rte": ["accuracy", "score"], "wnli": ["accuracy", "score"]}
    assert list(glue_metrics(get_task("stsb"), np.arange(5.0), np.arange(5.0))) == ["pearson", "spearman", "score"]


def test_metric_names_and_the_mcc_alias():
    from fishtune.harness.metrics import metric_name

    assert metric_name("mcc") == "matthews" and metric_name("f1") == "f1"
    with pytest.raises(ValueError, match="unknown metric 'auc'; choose one of: accuracy, f1, matthews, f1_acc, "
                                         "pearson, spearman, pearson_spearman, mcc"):
        metric_name("auc")
