"""Small statistics used by aggregate and the claim rules (scipy underneath)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class MeanCI:
    mean: float
    low: float
    high: float
    n: int


def mean_ci(values, confidence: float) -> MeanCI:
    """Mean with a Student-t confidence interval (NaN bounds when n < 2)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = x.size
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return MeanCI(mean, math.nan, math.nan, 1)
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return MeanCI(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class Correlation:
    r: float
    p: float
    n: int


def _finite_pairs(x, y):
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def pearson(x, y) -> Correlation:
    """Pearson r with its two-sided p-value (NaN when undefined: n < 3 or a constant series)."""
    return _correlation(sps.pearsonr, x, y)


def spearman(x, y) -> Correlation:
    """Spearman ρ with its two-sided p-value (NaN when undefined)."""
    return _correlation(sps.spearmanr, x, y)


def _correlation(test, x, y) -> Correlation:
    x, y = _finite_pairs(x, y)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(math.nan, math.nan, int(x.size))
    result = test(x, y)
    return Correlation(float(result.statistic), float(result.pvalue), int(x.size))
