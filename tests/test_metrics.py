import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from fishtune.metrics import glue_metrics
from fishtune.tasks import get_task

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
