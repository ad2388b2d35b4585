"""Uncertainty of accuracies and of paired differences between two models on the same images.

Every accuracy squeeze reports carries a Wilson 95% interval (statsmodels `proportion_confint`).
Every comparison that drives a decision is paired on the same images, which cancels the
difficulty of the images themselves and leaves only where the two models disagree:

- McNemar's exact test (statsmodels `mcnemar(exact=True)`; McNemar 1947, as recommended for
  comparing classifiers by Dietterich 1998): is one model more accurate than the other?
- a paired bootstrap interval of the accuracy difference (scipy `stats.bootstrap`, percentile
  method, fixed seed so a decision is reproducible): how much worse can the candidate be?
  Its bound decides non-inferiority within a margin (absolute accuracy points as fractions).

The 2×2 table `[[both right, only a right], [only b right, both wrong]]` holds everything a
paired comparison needs; evaluate records it so the gate can decide without the predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LEVEL = 0.95  # the level of every reported interval
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0  # a decision must not change between two runs on the same predictions
BOOTSTRAP_BATCH = 500  # resamples held in memory at once: 500 × N booleans


def accuracy_ci(correct: int, total: int, level: float = LEVEL) -> list[float]:
    """Wilson score interval [low, high] (fractions, rounded to 5 places) of correct/total.

    Raises:
        ValueError: total is 0 (an accuracy of no images has no interval).
    """
    from statsmodels.stats.proportion import proportion_confint

    if total <= 0:
        raise ValueError("an accuracy interval needs at least one image")
    low, high = proportion_confint(correct, total, alpha=1 - level, method="wilson")
    return [round(float(low), 5), round(float(high), 5)]


def paired_table(a_correct: np.ndarray, b_correct: np.ndarray) -> list[list[int]]:
    """The 2×2 table of two models' per-image correctness (bool arrays of shape (N,)):
    [[both right, only a right], [only b right, both wrong]].

    Raises:
        ValueError: the arrays differ in shape (they must score the same images).
    """
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired comparison needs two (N,) arrays, got {a.shape} and {b.shape}")
    return [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]


def _differences(table: list[list[int]]) -> np.ndarray:
    """Per-image a_correct - b_correct ∈ {-1, 0, 1}, rebuilt from the table (the paired
    bootstrap resamples images, and the difference is all it reads of each)."""
    (_, only_a), (only_b, _) = table
    same = sum(map(sum, table)) - only_a - only_b
    return np.concatenate([np.ones(only_a), -np.ones(only_b), np.zeros(same)])


def mcnemar_p(table: list[list[int]]) -> float:
    """Two-sided p-value of McNemar's exact test that a and b are equally accurate."""
    from statsmodels.stats.contingency_tables import mcnemar

    if table[0][1] + table[1][0] == 0:
        return 1.0  # no image on which they disagree: no evidence of any difference
    return float(mcnemar(np.asarray(table), exact=True).pvalue)


def difference_ci(table: list[list[int]], level: float = LEVEL) -> list[float]:
    """Paired bootstrap percentile interval [low, high] of accuracy(a) - accuracy(b)."""
    from scipy.stats import bootstrap

    diff = _differences(table)
    if not diff.any():  # every resample has difference 0 (and scipy refuses constant data)
        return [0.0, 0.0]
    result = bootstrap(
        (diff,), np.mean, confidence_level=level, n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile", batch=BOOTSTRAP_BATCH, rng=np.random.default_rng(BOOTSTRAP_SEED),
    )  # fmt: skip
    ci = result.confidence_interval
    return [round(float(ci.low), 5), round(float(ci.high), 5)]


def compare(table: list[list[int]], alpha: float, margin: float) -> dict[str, Any]:
    """Paired comparison of model a against reference b on the same images.

    Args:
        table: paired_table(a_correct, b_correct).
        alpha: significance level; non-inferiority is one-sided at alpha, so it reads the
            two-sided (1 - 2·alpha) bootstrap interval's lower bound.
        margin: how far a may fall below b (accuracy as a fraction, e.g. 0.005 = 0.5 points).
    Returns:
        {"difference": acc(a) - acc(b), "ci95": [low, high] (95% paired bootstrap),
         "lower_bound": one-sided (1 - alpha) lower bound of the difference,
         "p_value": McNemar exact, "noninferior": lower_bound >= -margin,
         "better": a significantly more accurate (p < alpha and difference > 0),
         "worse": a significantly less accurate, "table": table}.
    """
    n = sum(map(sum, table))
    difference = round((table[0][1] - table[1][0]) / n, 5) if n else 0.0
    p_value = mcnemar_p(table)
    lower = difference_ci(table, level=1 - 2 * alpha)[0]
    return {
        "difference": difference,
        "ci95": difference_ci(table),
        "lower_bound": lower,
        "alpha": alpha,
        "margin": margin,
        "p_value": round(p_value, 6),
        "noninferior": lower >= -margin,
        "better": p_value < alpha and difference > 0,
        "worse": p_value < alpha and difference < 0,
        "table": table,
    }
