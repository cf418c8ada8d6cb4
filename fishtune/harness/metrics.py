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
    n = len(labels)
    # Resamples drawn in blocks of rows and scored from how often each example was drawn (its count):
    # one call per block, not per resample, and no (resamples, n) copy of the predictions.
    for start in range(0, n_resamples, 250):
        idx = rng.integers(0, n, (min(250, n_resamples - start), n))
        counts = np.bincount((idx + n * np.arange(len(idx))[:, None]).ravel(), minlength=idx.size).reshape(idx.shape)
        diffs[start:start + len(idx)] = (resampled_scores(task, preds_a, labels, counts)
                                         - resampled_scores(task, preds_b, labels, counts))
    below, ties = float(np.mean(diffs < 0)), float(np.mean(diffs == 0))
    p = 2 * min(below + ties / 2, 1 - below - ties / 2)
    return {"diff": glue_metrics(task, preds_a, labels)["score"] - glue_metrics(task, preds_b, labels)["score"],
            "ci_low": float(np.percentile(diffs, 2.5)), "ci_high": float(np.percentile(diffs, 97.5)),
            "p_value": min(1.0, p), "resamples": n_resamples}


def _weighted_corr(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pearson correlation of x with y (1-D, or one row per resample) over each resample, an example
    weighted by how often it was drawn (`weights`, (resamples, n), float); 0 where either is constant."""
    def wmean(v: np.ndarray) -> np.ndarray:  # a matrix product where v is shared by all resamples
        return (weights @ v if v.ndim == 1 else np.einsum("ij,ij->i", weights, v)) / weights.sum(axis=1)

    mx, my = wmean(x), wmean(y)
    var_x, var_y = wmean(x * x) - mx * mx, wmean(y * y) - my * my
    den = np.sqrt(np.clip(var_x, 0, None) * np.clip(var_y, 0, None))
    return np.divide(wmean(x * y) - mx * my, den, out=np.zeros(len(weights)), where=den > 0)


def _resampled_ranks(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each example's average rank (scipy's rankdata, ties averaged) within each resample, and whether
    the resample holds a single distinct value. From cumulative counts over the sorted distinct values,
    so no resample is sorted."""
    order = np.argsort(values, kind="stable")
    _, starts, group_sorted = np.unique(values[order], return_index=True, return_inverse=True)
    group = np.empty_like(group_sorted)
    group[order] = group_sorted
    per_value = np.add.reduceat(counts[:, order], starts, axis=1)  # draws of each distinct value
    below = np.cumsum(per_value, axis=1) - per_value
    ranks = below + (per_value + 1) / 2
    return ranks[:, group], (per_value > 0).sum(axis=1) == 1


def resampled_scores(task: TaskSpec, preds: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """`glue_metrics(task, preds[i], labels[i])["score"]` for every bootstrap resample i at once, where
    `counts[i, j]` is how often resample i drew example j (the bootstrap's inner loop)."""
    if task.metric == "pearson_spearman":
        # Centred first: the moments below subtract squares, and ranks average (n + 1) / 2 in any resample.
        preds, labels = preds - preds.mean(), labels - labels.mean()
        rank_p, const_p = _resampled_ranks(preds, counts)
        rank_y, const_y = _resampled_ranks(labels, counts)
        centre, weights = (counts.shape[1] + 1) / 2, counts.astype(float)
        pearson = _weighted_corr(preds, labels, weights)
        spearman = _weighted_corr(rank_p - centre, rank_y - centre, weights)
        return np.where(const_p | const_y, 0.0, 50 * (pearson + spearman))
    p, y = preds.astype(bool), labels.astype(bool)
    tp, tn = counts @ (p & y), counts @ (~p & ~y)
    fp, fn = counts @ (p & ~y), counts @ (~p & y)
    accuracy = 100 * (tp + tn) / counts.sum(axis=1)
    if task.metric == "accuracy":
        return accuracy
    if task.metric == "f1_acc":  # sklearn's F1 of the positive class, 0 when it is never predicted nor true
        f1 = np.divide(200 * tp, 2 * tp + fp + fn, out=np.zeros(len(tp)), where=(2 * tp + fp + fn) > 0)
        return (f1 + accuracy) / 2
    if task.metric == "matthews":  # sklearn's MCC: 0 when a marginal is empty
        den = np.sqrt(((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)).astype(float))
        return np.divide(100 * (tp * tn - fp * fn), den, out=np.zeros(len(tp)), where=den > 0)
    raise ValueError(f"unknown metric {task.metric!r} for task {task.name!r}")
