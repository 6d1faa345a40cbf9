"""The percentile definition every evaluation report uses, so their p50 and p95 compare."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def percentiles(values: Iterable[float], qs: Iterable[float]) -> dict[str, float]:
    """``{"p50": ..., "p95": ...}`` for each ``q`` in ``qs``, in that order; empty without values.

    Linear interpolation between the two nearest ranks (numpy's default, Excel's
    PERCENTILE.INC): on the few hundred samples of a run it moves smoothly, where nearest-rank
    would jump from one sample to the next.
    """
    samples = np.fromiter(values, dtype=np.float64)
    if samples.size == 0:
        return {}
    qs = list(qs)
    return {
        f"p{q:g}": float(value)
        for q, value in zip(qs, np.percentile(samples, qs), strict=True)
    }
