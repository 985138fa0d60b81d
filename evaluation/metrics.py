"""The arithmetic the evaluation reports share, so a figure means the same in each of them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LATENCY_PERCENTILES = (("p50", 50), ("p95", 95), ("p99", 99))


def percentiles(ms: Sequence[float], digits: int) -> dict[str, float | None]:
    """p50, p95 and p99 of ``ms``, rounded to ``digits``; None each when nothing was timed."""
    if not len(ms):
        return dict.fromkeys((name for name, _ in LATENCY_PERCENTILES), None)
    arr = np.asarray(ms)
    return {name: round(float(np.percentile(arr, q)), digits) for name, q in LATENCY_PERCENTILES}


def rate(part: float, whole: float, digits: int = 4) -> float:
    """``part / whole`` rounded to ``digits``; 0.0 when ``whole`` is 0 (nothing to count)."""
    return round(part / whole, digits) if whole else 0.0
