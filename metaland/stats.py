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


def surface_roughness(values) -> float:
    """Mean |discrete Laplacian| f(i±1, j) + f(i, j±1) − 4 f(i, j) over the interior of a grid: the
    small spikes of a noisy surface (seed 001 Fig. 8, 4 re-sampled tasks) raise it, a smooth bowl keeps
    it at its curvature."""
    z = np.asarray(values, dtype=float)
    laplacian = z[2:, 1:-1] + z[:-2, 1:-1] + z[1:-1, 2:] + z[1:-1, :-2] - 4 * z[1:-1, 1:-1]
    return float(np.abs(laplacian).mean())


def convex_fraction(values) -> float:
    """Share of interior grid points where the central finite-difference Hessian of the surface is
    positive semi-definite (f_aa ≥ 0, f_bb ≥ 0, f_aa f_bb ≥ f_ab²): 1 for a convex bowl, 0 for a
    concave cap or a saddle (seed 001 §4.3.2, "convexity increases with query shots")."""
    z = np.asarray(values, dtype=float)
    f_aa = z[2:, 1:-1] - 2 * z[1:-1, 1:-1] + z[:-2, 1:-1]
    f_bb = z[1:-1, 2:] - 2 * z[1:-1, 1:-1] + z[1:-1, :-2]
    f_ab = (z[2:, 2:] - z[2:, :-2] - z[:-2, 2:] + z[:-2, :-2]) / 4
    convex = (f_aa >= 0) & (f_bb >= 0) & (f_aa * f_bb - f_ab**2 >= 0)
    return float(convex.mean())
