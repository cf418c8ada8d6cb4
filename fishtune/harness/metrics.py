"""Dev metrics with scikit-learn and scipy (evaluate's hub scripts do not load offline). All x100.

One formula per metric (`FORMULAS`); a task's `metric` names the numbers it reports (`METRICS`) and its
`score`, the one number a table shows, is their mean: GLUE's own are Matthews correlation (CoLA), the mean
of F1 and accuracy (MRPC), the mean of Pearson and Spearman (STS-B) and accuracy; your own data
(conf/task/file.yaml) picks any of them. scipy and scikit-learn are imported where a metric is computed,
so the config checks (validate.py) read the vocabulary below without loading them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from .tasks import TaskSpec

# Every value is a finite number, also where a metric is undefined: constant predictions (or labels) have
# Pearson, Spearman and Matthews correlation 0, and F1 without a positive prediction or label is 0 (what a
# diverging or collapsed run predicts must not turn into NaN in a result file).


def accuracy(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """Share of examples whose predicted class is the label."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, preds))


def f1(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """Two classes: F1 of class id 1 (the second label in sorted order; MRPC's 'equivalent'). More: the
    macro average, the unweighted mean of each class's F1 over the classes in the labels or predictions
    (scikit-learn's average='macro'). A class never predicted nor true counts 0, not NaN."""
    from sklearn.metrics import f1_score

    average = "binary" if num_labels <= 2 else "macro"
    return float(f1_score(labels, preds, average=average, zero_division=0.0))


def matthews(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """Matthews correlation (its multi-class form, Gorodkin's R_K, for more than two classes)."""
    from sklearn.metrics import matthews_corrcoef

    # sklearn gives 0 when a class is never predicted; constant labels too, with a warning.
    if len(np.unique(np.r_[labels, preds])) < 2:
        return 0.0
    mcc = float(matthews_corrcoef(labels, preds))
    return mcc if np.isfinite(mcc) else 0.0


def _correlation(fn: Callable, preds: np.ndarray, labels: np.ndarray) -> float:
    # A constant (or non-finite) prediction has no correlation; report 0 rather than NaN.
    if np.ptp(preds) == 0 or np.ptp(labels) == 0 or not np.isfinite(preds).all():
        return 0.0
    return float(fn(preds, labels)[0])


def pearson(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """Pearson correlation of predicted and true scores."""
    from scipy.stats import pearsonr

    return _correlation(pearsonr, preds, labels)


def spearman(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """Spearman (rank) correlation of predicted and true scores, ties averaged."""
    from scipy.stats import spearmanr

    return _correlation(spearmanr, preds, labels)


FORMULAS: dict[str, Callable[[np.ndarray, np.ndarray, int], float]] = {
    "accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson, "spearman": spearman}

# A task's metric -> the numbers it reports, in the order a result file holds them; its score is their mean.
METRICS: dict[str, tuple[str, ...]] = {
    "accuracy": ("accuracy",),
    "f1": ("f1",),
    "matthews": ("matthews",),                          # CoLA's
    "f1_acc": ("f1", "accuracy"),                       # MRPC's
    "pearson": ("pearson",),
    "spearman": ("spearman",),
    "pearson_spearman": ("pearson", "spearman"),        # STS-B's
}
ALIASES = {"mcc": "matthews"}   # what a config may also call a metric
REGRESSION_METRICS = ("pearson", "spearman", "pearson_spearman")   # the others compare class ids


def metric_name(name: str) -> str:
    """The METRICS key a config's metric name stands for (mcc -> matthews); ValueError naming the allowed."""
    name = ALIASES.get(name, name)
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of: {', '.join([*METRICS, *ALIASES])}")
    return name


def glue_metrics(task: TaskSpec, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics x100 and `score`, the one number a table shows for it (GLUE or your own data).

    `preds` are class ids (classification) or predicted scores (regression)."""
    if task.metric not in METRICS:
        raise ValueError(f"unknown metric {task.metric!r} for task {task.name!r}")
    preds, labels = np.asarray(preds), np.asarray(labels)
    out = {name: 100 * FORMULAS[name](preds, labels, task.num_labels) for name in METRICS[task.metric]}
    out["score"] = sum(out.values()) / len(out)
    return out
