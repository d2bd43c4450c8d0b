"""Statistics used by aggregate, the claim rules and the figures: pure functions over arrays.

The claim rules infer across **training runs** (seeds), the unit of replication (Bouthillier et al.
2021, "Accounting for Variance in Machine Learning Benchmarks"; Agarwal et al. 2021, "Deep RL at the
Edge of the Statistical Precipice"): each run contributes one value (its mean over fixed tasks, or one
statistic of its curve), and :func:`across_seeds` puts a Student-t interval and one-sided p-values over
those values. :func:`mean_ci` is the field's convention (a t interval over test tasks of one model),
shown beside the verdicts, never used for them. Equivalence is TOST (:func:`equivalence_p`), the
family of a study's claims is Holm-adjusted (:func:`holm`), and an inconclusive verdict states its
minimal detectable effect and the seeds that would detect a given one (:func:`minimal_detectable_effect`,
:func:`seeds_to_detect`). scipy and statsmodels do the arithmetic.
"""

from __future__ import annotations

import math
import warnings
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
class SeedInference:
    """Inference over one value per training run (seed): mean, two-sided CI, one-sided p-values
    against ``null`` and the between-seed standard deviation."""

    estimate: float
    ci_low: float
    ci_high: float
    p_greater: float
    p_less: float
    n: int
    sd: float


def across_seeds(values, *, null: float = 0.0, confidence: float = 0.95) -> SeedInference:
    """Student t over per-seed values: the mean, its ``confidence`` interval and the one-sided p-values
    of "mean > null" and "mean < null" (NaN when n < 2). Identical values (zero spread, e.g. a rank
    correlation of ±1 in every run) have no t statistic; their p-value is that of the exact sign-flip
    test, 2⁻ⁿ on their side of ``null`` and 1 on the other (n identical signs are what a symmetric null
    gives with that probability)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return SeedInference(math.nan, math.nan, math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(x.mean())
    if n < 2:
        return SeedInference(mean, math.nan, math.nan, math.nan, math.nan, 1, math.nan)
    sd = float(x.std(ddof=1))
    if sd == 0.0:
        exact = 0.5**n
        above, below = (exact, 1.0) if mean > null else (1.0, exact) if mean < null else (1.0, 1.0)
        return SeedInference(mean, mean, mean, above, below, n, 0.0)
    with warnings.catch_warnings():  # nearly identical values: scipy warns, the t statistic is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        test = sps.ttest_1samp(x, null)
    ci = test.confidence_interval(confidence)
    greater, less = sps.t.sf(test.statistic, test.df), sps.t.cdf(test.statistic, test.df)  # the one-sided p-values
    return SeedInference(mean, float(ci.low), float(ci.high), float(greater), float(less), n, sd)


def seed_level(frame, metric: str, confidence: float) -> SeedInference:
    """:func:`across_seeds` over each seed's mean of ``metric`` (a frame with a ``seed`` column)."""
    if len(frame) == 0 or metric not in frame:
        return across_seeds([], confidence=confidence)
    return across_seeds(frame.groupby("seed")[metric].mean().to_numpy(), confidence=confidence)


def seed_summary(frame, column: str, confidence: float, name: str) -> dict:
    """Table cells of ``column``: ``name`` and ``ci_low`` / ``ci_high`` over seeds (each seed's mean over the
    fixed tasks: what the claims read) with their number ``seeds``, and the field's CI over tasks × seeds
    beside them (``tasks``, ``tasks_ci_low`` / ``tasks_ci_high``)."""
    seeds, tasks = seed_level(frame, column, confidence), mean_ci(frame[column], confidence)
    return {
        "seeds": seeds.n,
        name: seeds.estimate,
        "ci_low": seeds.ci_low,
        "ci_high": seeds.ci_high,
        "tasks": tasks.n,
        "tasks_ci_low": tasks.low,
        "tasks_ci_high": tasks.high,
    }


def equivalence_p(values, low: float, high: float) -> float:
    """TOST p-value that the mean of per-seed ``values`` lies inside (low, high): the larger of the two
    one-sided t-tests (Schuirmann 1987; statsmodels ``ttost_mean``). NaN when n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return math.nan
    if float(x.std(ddof=1)) == 0.0:
        return 0.0 if low < x[0] < high else 1.0
    from statsmodels.stats.weightstats import DescrStatsW

    return float(DescrStatsW(x).ttost_mean(low, high)[0])


def holm(p_values) -> list[float]:
    """Holm-adjusted p-values of a family (statsmodels ``multipletests``); NaN entries stay NaN and do
    not count towards the family's size."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(np.clip(p[finite], 0.0, 1.0), method="holm")[1]
    return [float(v) for v in out]


def minimal_detectable_effect(n: int, sd: float, alpha: float, power: float = 0.8) -> float:
    """The smallest true mean a one-sided t-test over ``n`` seeds detects with ``power`` at level
    ``alpha``, given the between-seed standard deviation ``sd`` (statsmodels ``TTestPower``)."""
    if n < 2 or not math.isfinite(sd) or sd <= 0:
        return math.nan
    from statsmodels.stats.power import TTestPower

    return float(TTestPower().solve_power(nobs=n, alpha=alpha, power=power, alternative="larger")) * sd


def seeds_to_detect(effect: float, sd: float, alpha: float, power: float = 0.8) -> float:
    """Seeds a one-sided t-test needs to detect a true mean ``effect`` with ``power`` at level ``alpha``
    when seeds spread by ``sd``: at least 2; inf beyond a million (an effect lost in the spread); NaN
    when undefined."""
    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0 or sd <= 0:
        return math.nan
    from statsmodels.stats.power import TTestPower

    size, analysis = abs(effect) / sd, TTestPower()
    if analysis.power(effect_size=size, nobs=2, alpha=alpha, alternative="larger") >= power:
        return 2.0
    if analysis.power(effect_size=size, nobs=1e6, alpha=alpha, alternative="larger") < power:
        return math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = analysis.solve_power(effect_size=size, alpha=alpha, power=power, alternative="larger")
    n = float(np.asarray(n).item())
    return float(math.ceil(n)) if math.isfinite(n) else math.nan


@dataclass(frozen=True)
class Correlation:
    r: float
    p: float
    n: int


def _finite_pairs(x, y):
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def pearson(x, y, *, exact: bool = False) -> Correlation:
    """Pearson r with its two-sided p-value (NaN when undefined: n < 3 or a constant series); ``exact``
    takes the p-value from the permutation distribution (all n! orderings when n ≤ 7), which stays right
    at the handful of points where the t approximation does not (n = 3 gives p ≥ 1/3, not 0)."""
    return _correlation(x, y, ranks=False, exact=exact)


def spearman(x, y, *, exact: bool = False) -> Correlation:
    """Spearman ρ with its two-sided p-value (NaN when undefined); ``exact`` as in :func:`pearson`."""
    return _correlation(x, y, ranks=True, exact=exact)


def _correlation(x, y, *, ranks: bool, exact: bool) -> Correlation:
    x, y = _finite_pairs(x, y)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(math.nan, math.nan, int(x.size))
    if ranks:  # twice the mid-ranks: integers, so every ordering's statistic below is exact and ties compare equal
        x, y = 2 * sps.rankdata(x), 2 * sps.rankdata(y)
    result = sps.pearsonr(x, y)
    if not exact:
        return Correlation(float(result.statistic), float(result.pvalue), int(x.size))
    # Σ x·y_π orders the pairings exactly as r does (means and spreads do not depend on the pairing), and
    # stays away from 0, where scipy's relative tie tolerance would split a tie of r ≈ 0 by rounding.
    permuted = sps.permutation_test(
        (y,),
        lambda y_pairing, axis: np.sum(x * y_pairing, axis=axis),
        permutation_type="pairings",
        n_resamples=9999,
        vectorized=True,
        rng=np.random.default_rng(0),
    )
    return Correlation(float(result.statistic), float(permuted.pvalue), int(x.size))


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
