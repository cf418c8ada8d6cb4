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
    """
    preds, labels = np.asarray(preds), np.asarray(labels)
    if task.metric == "pearson_spearman":
        # A constant prediction has no correlation; report 0 rather than NaN.
        if np.ptp(preds) == 0 or np.ptp(labels) == 0:
            out = {"pearson": 0.0, "spearman": 0.0}
        else:
            out = {"pearson": 100 * float(pearsonr(preds, labels)[0]),
                   "spearman": 100 * float(spearmanr(preds, labels)[0])}
        out["score"] = (out["pearson"] + out["spearman"]) / 2
    elif task.metric == "matthews":
        out = {"matthews": 100 * float(matthews_corrcoef(labels, preds))}
        out["score"] = out["matthews"]
    elif task.metric == "f1_acc":
        out = {"f1": 100 * float(f1_score(labels, preds)), "accuracy": 100 * float(accuracy_score(labels, preds))}
        out["score"] = (out["f1"] + out["accuracy"]) / 2
    elif task.metric == "accuracy":
        out = {"accuracy": 100 * float(accuracy_score(labels, preds))}
        out["score"] = out["accuracy"]
    else:
        raise ValueError(f"unknown metric {task.metric!r} for task {task.name!r}")
    return out


def paired_bootstrap(task: TaskSpec, preds_a, preds_b, labels, n_resamples: int = 1000,
                     seed: int = 0) -> dict[str, float]:
    """Is run A better than run B on the same dev examples? A paired bootstrap over the examples.

    Each resample draws the dev examples with replacement and scores both runs on the same draw with
    `glue_metrics`, so the comparison keeps the pairing (the same hard examples count for both).
    Returns `diff` (score A - score B on the whole set), the 2.5 and 97.5 percentiles of the
    resampled differences (`ci_low`, `ci_high`) and a two-sided `p_value`: twice the smaller share of
    resamples on either side of zero (ties count half to each), at most 1.
    """
    preds_a, preds_b, labels = np.asarray(preds_a), np.asarray(preds_b), np.asarray(labels)
    if not (len(preds_a) == len(preds_b) == len(labels)):
        raise ValueError(f"paired bootstrap needs one prediction per example: {len(preds_a)}, {len(preds_b)} "
                         f"predictions for {len(labels)} labels")
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    # Resamples drawn and scored in blocks of rows (resampled_scores): one call per block, not per resample.
    for start in range(0, n_resamples, 250):
        idx = rng.integers(0, len(labels), (min(250, n_resamples - start), len(labels)))
        diffs[start:start + len(idx)] = (resampled_scores(task, preds_a[idx], labels[idx])
                                         - resampled_scores(task, preds_b[idx], labels[idx]))
    below, ties = float(np.mean(diffs < 0)), float(np.mean(diffs == 0))
    p = 2 * min(below + ties / 2, 1 - below - ties / 2)
    return {"diff": glue_metrics(task, preds_a, labels)["score"] - glue_metrics(task, preds_b, labels)["score"],
            "ci_low": float(np.percentile(diffs, 2.5)), "ci_high": float(np.percentile(diffs, 97.5)),
            "p_value": min(1.0, p), "resamples": n_resamples}


def _rowwise_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of a with the same row of b; 0 where either row is constant."""
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.divide((a * b).sum(axis=1), den, out=np.zeros(len(a)), where=den > 0)


def resampled_scores(task: TaskSpec, preds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`glue_metrics(task, preds[i], labels[i])["score"]` for every row i of two (resamples, n) arrays,
    computed for all rows at once (the bootstrap's inner loop)."""
    if task.metric == "pearson_spearman":
        from scipy.stats import rankdata

        const = (np.ptp(preds, axis=1) == 0) | (np.ptp(labels, axis=1) == 0)
        pearson = _rowwise_corr(preds.astype(float), labels.astype(float))
        spearman = _rowwise_corr(rankdata(preds, axis=1), rankdata(labels, axis=1))
        return np.where(const, 0.0, 50 * (pearson + spearman))
    p, y = preds.astype(bool), labels.astype(bool)
    tp, tn = (p & y).sum(axis=1), (~p & ~y).sum(axis=1)
    fp, fn = (p & ~y).sum(axis=1), (~p & y).sum(axis=1)
    accuracy = 100 * (tp + tn) / labels.shape[1]
    if task.metric == "accuracy":
        return accuracy
    if task.metric == "f1_acc":  # sklearn's F1 of the positive class, 0 when it is never predicted nor true
        f1 = np.divide(200 * tp, 2 * tp + fp + fn, out=np.zeros(len(tp)), where=(2 * tp + fp + fn) > 0)
        return (f1 + accuracy) / 2
    if task.metric == "matthews":  # sklearn's MCC: 0 when a marginal is empty
        den = np.sqrt(((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)).astype(float))
        return np.divide(100 * (tp * tn - fp * fn), den, out=np.zeros(len(tp)), where=den > 0)
    raise ValueError(f"unknown metric {task.metric!r} for task {task.name!r}")
