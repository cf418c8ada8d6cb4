"""GLUE dev metrics with scikit-learn and scipy (evaluate's hub scripts do not load offline). All x100."""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from .tasks import TaskSpec


def glue_metrics(task: TaskSpec, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics x100 and `score`, the one number a table shows for it.

    `preds` are class ids (classification) or predicted scores (STS-B). The score is Matthews
    correlation (CoLA), the mean of F1 and accuracy (MRPC), the mean of Pearson and Spearman
    (STS-B) and accuracy for the rest.

    Every value is a finite number, also where a metric is undefined: constant predictions (or labels)
    have Pearson, Spearman and Matthews correlation 0, and F1 without a positive prediction or label
    is 0 (what a diverging or collapsed run predicts must not turn into NaN in a result file).
    """
    preds, labels = np.asarray(preds), np.asarray(labels)
    if task.metric == "pearson_spearman":
        # A constant prediction has no correlation; report 0 rather than NaN.
        if np.ptp(preds) == 0 or np.ptp(labels) == 0 or not np.isfinite(preds).all():
            out = {"pearson": 0.0, "spearman": 0.0}
        else:
            out = {"pearson": 100 * float(pearsonr(preds, labels)[0]),
                   "spearman": 100 * float(spearmanr(preds, labels)[0])}
        out["score"] = (out["pearson"] + out["spearman"]) / 2
    elif task.metric == "matthews":
        # sklearn gives 0 when a class is never predicted; constant labels too, with a warning.
        mcc = float(matthews_corrcoef(labels, preds)) if len(np.unique(np.r_[labels, preds])) > 1 else 0.0
        out = {"matthews": 100 * (mcc if np.isfinite(mcc) else 0.0)}
        out["score"] = out["matthews"]
    elif task.metric == "f1_acc":
        out = {"f1": 100 * float(f1_score(labels, preds, zero_division=0.0)),
               "accuracy": 100 * float(accuracy_score(labels, preds))}
        out["score"] = (out["f1"] + out["accuracy"]) / 2
    elif task.metric == "accuracy":
        out = {"accuracy": 100 * float(accuracy_score(labels, preds))}
        out["score"] = out["accuracy"]
    else:
        raise ValueError(f"unknown metric {task.metric!r} for task {task.name!r}")
    return out
