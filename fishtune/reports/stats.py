"""The statistics the reports share: intervals over seeds, paired tests, Holm, power, the paired bootstrap,
and the trivial baseline (the best constant prediction) a cell must clear to mean anything.

Over seeds (each run one number): `t_interval` (the t-interval of a mean), `paired_test` (two-sided
paired t-test), `one_sample_test` (mean, interval and t-test of per-seed contrasts against 0), `holm`
(Holm's step-down adjustment of a family of p-values), `detectable_difference` (what a paired test
finds with 80 % power). Over the dev examples of two runs: `paired_bootstrap`, with `resampled_scores`
computing every resample's GLUE score at once.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..harness.metrics import glue_metrics
from ..harness.tasks import TaskSpec, get_task

if TYPE_CHECKING:
    from ..harness.results import RunResult

LEVEL = 0.95


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, int, float, float]:
    """(mean, sample std, n, low, high): the t-interval of the mean; NaN bounds for fewer than two values."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return math.nan, math.nan, 0, math.nan, math.nan
    mean = float(a.mean())
    if a.size < 2:
        return mean, math.nan, 1, math.nan, math.nan
    std = float(a.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, a.size - 1)) * std / math.sqrt(a.size)
    return mean, std, int(a.size), mean - half, mean + half


def detectable_difference(std: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The mean paired difference a two-sided paired t-test at `alpha` finds with probability `power`,
    given the differences' std and n pairs (the usual t approximation)."""
    if n < 2 or not std > 0:
        return math.nan
    return (stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * std / math.sqrt(n)


def paired_test(mode_scores: pd.Series, original_scores: pd.Series) -> tuple[float, float, int]:
    """(mean difference, two-sided paired t-test p-value, pairs) over the index both series share."""
    both = pd.concat([mode_scores, original_scores], axis=1, join="inner").dropna()
    n = len(both)
    if n == 0:
        return math.nan, math.nan, 0
    diffs = both.iloc[:, 0] - both.iloc[:, 1]
    diff = float(diffs.mean())
    if n < 2:
        return diff, math.nan, n
    if np.isclose(diffs.std(ddof=1), 0):  # identical differences: t is 0 (no change) or infinite
        return diff, (1.0 if np.isclose(diff, 0) else 0.0), n
    return diff, float(stats.ttest_rel(both.iloc[:, 0], both.iloc[:, 1]).pvalue), n


def one_sample_test(values: Sequence[float]) -> dict:
    """Mean, std, n, 95 % t-interval and the one-sample t-test p (against 0) of per-seed contrasts."""
    a = np.asarray(values, dtype=float)
    mean, std, n, lo, hi = t_interval(a)
    if n < 2:
        p = math.nan
    elif np.isclose(std, 0):  # identical contrasts: t is 0 (no effect) or infinite
        p = 1.0 if np.isclose(mean, 0) else 0.0
    else:
        p = float(stats.ttest_1samp(a, 0.0).pvalue)
    return {"pairs": n, "mean_diff": mean, "std": std, "ci_lo": lo, "ci_hi": hi, "p_ttest": p}


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (a NaN p-value is left out of the family and
    stays NaN): the i-th smallest of m is multiplied by m - i + 1, then made non-decreasing, at most 1."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
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


def trivial_baseline(task_name: str, labels: Sequence[float]) -> float:
    """The task's score of the best constant prediction: the majority class, or for STS-B any constant
    (its correlations are 0 by definition, fishtune.harness.metrics)."""
    task = get_task(task_name)
    labels = np.asarray(labels)
    if task.is_regression:
        constant = np.full(len(labels), float(labels.mean()))
    else:
        counts = Counter(labels.astype(int).tolist())
        constant = np.full(len(labels), max(counts, key=lambda c: (counts[c], -c)))
    return glue_metrics(task, constant, labels)["score"]


def baselines_from(results: list[RunResult]) -> dict[str, float]:
    """task -> trivial baseline score from the result files' dev labels: the mean over the distinct dev sets of
    each task (one when every run reads the whole dev set; one per seed when each seed draws its own subset)."""
    dev_sets: dict[str, dict[tuple, float]] = {}
    for r in results:
        if r.dev_labels:
            labels = tuple(r.dev_labels)
            seen = dev_sets.setdefault(r.task, {})
            if labels not in seen:
                seen[labels] = trivial_baseline(r.task, r.dev_labels)
    return {task: float(np.mean(list(scores.values()))) for task, scores in dev_sets.items()}


# Dev scores are printed with one decimal or two; a run within this of its trivial baseline learned nothing.
TRIVIAL_TOLERANCE = 0.05


def on_trivial_baseline(scores: Sequence[float], baseline: float) -> bool:
    """Whether a cell has runs and every one of them scored its task's trivial baseline (majority class or
    a constant prediction): a plumbing result, never to be read as a finding."""
    scores = [float(x) for x in scores]
    return bool(scores) and not math.isnan(baseline) and all(abs(x - baseline) <= TRIVIAL_TOLERANCE for x in scores)
