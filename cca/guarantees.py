"""Precision you can promise: exact binomial bounds and Learn-then-Test threshold selection.

A threshold chosen because it looked right on some tickets looks better on them than it is.
Learn-then-Test (Angelopoulos et al., 2021) turns the choice into multiple testing: each
candidate threshold is a null hypothesis "precision here is below the target", tested with an
exact binomial p-value, and thresholds are tested in a fixed order, from the most cautious
down, stopping at the first that fails. Every threshold accepted before the stop then meets the
target with the stated confidence, *including* the one picked, with no correction: that is the
fixed-sequence procedure, valid because the order is fixed before the data is seen.

The exact one-sided binomial test rejects "precision < target" at level ``1 - confidence``
exactly when the Clopper-Pearson lower bound is at least the target, so one function serves
both the test and the figure shown to people.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from scipy.stats import beta

# Candidate thresholds on a calibrated score, most cautious first. Fixed here, in code, and not
# derived from any data: that is what makes the fixed-sequence test valid.
THRESHOLD_GRID: tuple[float, ...] = (
    0.999, 0.998, 0.997, 0.995, 0.993, 0.99, 0.987, 0.985, 0.98, 0.975, 0.97, 0.965, 0.96,
    0.955, 0.95, 0.94, 0.93, 0.92, 0.91, 0.9, 0.89, 0.88, 0.87, 0.86, 0.85, 0.84, 0.83, 0.82,
    0.81, 0.8, 0.78, 0.76, 0.74, 0.72, 0.7, 0.68, 0.66, 0.64, 0.62, 0.6, 0.58, 0.56, 0.54,
    0.52, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1,
)


def precision_lower_bound(correct: int, answered: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower bound on a precision seen as ``correct``/``answered``."""
    if answered <= 0 or correct <= 0:
        return 0.0
    if not 0 <= correct <= answered:
        raise ValueError(f"correct ({correct}) must be between 0 and answered ({answered})")
    return float(beta.ppf(1 - confidence, correct, answered - correct + 1))


def min_support(target: float, confidence: float = 0.95) -> int:
    """The fewest answers whose bound can reach ``target`` even if every one is right.

    A threshold answering fewer tickets than this is no test at all (it would fail however
    good the model is), so the sequence skips it instead of stopping there.
    """
    if target <= 0:
        return 1
    if target >= 1:
        raise ValueError("a precision target of 1 can never be shown with finite evidence")
    return math.ceil(math.log(1 - confidence) / math.log(target))


Counts = Callable[[float], tuple[int, int]]  # threshold -> (correct, answered)


def fixed_sequence(counts: Counts, target: float, confidence: float = 0.95,
                   grid: Sequence[float] = THRESHOLD_GRID, start: int = 0
                   ) -> tuple[float, int, int] | None:
    """The lowest threshold of ``grid`` reached before the first failed test.

    Returns (threshold, correct, answered) at that threshold, or None when not even the most
    cautious testable threshold meets the target. Thresholds answering fewer than
    ``min_support`` tickets, or fewer than ``start``, are skipped (see there). How many
    tickets a threshold answers depends on the scores alone, not on which answers are right,
    so where the sequence starts is fixed before any test looks at the outcomes; starting
    where a few errors can be absorbed keeps one mislabelled ticket among the most confident
    from closing a class for good.
    """
    need = max(min_support(target, confidence), start)
    chosen: tuple[float, int, int] | None = None
    for threshold in grid:
        correct, answered = counts(threshold)
        if answered < need:
            continue
        if precision_lower_bound(correct, answered, confidence) < target:
            break
        chosen = (threshold, correct, answered)
    return chosen
