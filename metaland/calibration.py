"""Calibration of the claim rules on simulated studies whose truth is known (DESIGN.md, "Statistics of
the verdicts": false-``holds`` rate ≤ α under the null).

:func:`simulate` draws the rows a rule family reads (its schema in :data:`metaland.claims.FAMILIES`) for
many independent studies at once, one stratum each, from a model with a between-seed spread larger
than the within-seed noise — the situation in which treating tasks or checkpoints as replicates goes
wrong. :func:`verdict_rates` runs the family's own ``decide`` on them and counts the verdicts.

The truth models (``effect`` in units of the between-seed s.d., 0 = the null; positive = the claimed
direction):

* ``contrast``: per seed a true difference ~ N(effect, 1); per task a shared baseline (the pairing) and
  noise of s.d. ``unit_sd`` on the treatment.
* ``level``: per seed a true mean ~ N(effect, 1) against threshold 0; per task noise.
* ``equivalence``: band ±3; per seed a true mean ~ N(3 − effect, 1): at effect 0 it sits on the band's
  edge (the worst case of TOST's null), at effect 3 in its middle.
* ``trend``: per run a slope ~ N(effect, 1) over the checkpoints plus a random walk (checkpoints of a
  run are autocorrelated): at the null every run trends, in a random direction.
* ``association``: x a random walk; y = β x + a random walk, β ~ N(effect, 1) per run.
* ``no-trend``: band ±0.3 on the mean per-run Spearman ρ(step, value), its units the band's third (0.1,
  the between-seed s.d. of the runs' correlation); per run values with a correlation r ~ N(c, 0.1) with the
  step on independent noise (the design's noise does not enter: the checkpoints' count sets the within-run
  error), c set by bisection on 20,000 simulated runs so that the mean ρ is 0.3 · (1 − effect / 3): at
  effect 0 on the band's upper edge, at effect 3 at 0.
* ``association-gap``: y a random walk; x = (β + effect) y and versus = β y, each plus a random walk of its
  own, β ~ N(0, 1) per run: at the null x and versus are exchangeable (a gap of 0 exactly).
* ``peak``: a hump of height ~ N(effect, 1) per run (a valley when negative) plus a random walk.
* ``after-peak``: the reference peaks mid-run and degrades by 3 in every run; from the peak to the end
  the value falls by ~ N(effect, 1), plus a random walk.
* ``across-runs``: one point per run, x ~ N(0, 1), y = effect · x + N(0, 1) (r = 0.95 at effect 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metaland.claims import FAMILIES, combine, verdict_of
from metaland.config import AggregateConfig

PARAMS = {
    "contrast": {"name": "simulated difference"},
    "level": {"name": "simulated mean", "threshold": 0.0, "direction": 1},
    "equivalence": {"name": "simulated mean", "low": -3.0, "high": 3.0},
    "trend": {"metric": "simulated", "direction": 1},
    "association": {"x": "x", "y": "y", "sign": 1, "method": "spearman"},
    "no-trend": {"metric": "simulated", "margin": 0.3, "fails": "outside"},
    "association-gap": {"x": "x", "versus": "versus", "y": "y", "method": "spearman"},
    "peak": {"metric": "simulated", "skip_initial": False},
    "after-peak": {"metric": "simulated", "peak_of": "reference", "skip_initial": False},
    "across-runs": {"x": "x", "y": "y", "sign": 1, "min_runs": 4},
}
"""The params each simulated family is decided with (the claimed direction is 'positive')."""


@dataclass(frozen=True)
class Design:
    """A simulated study: seeds (training runs per arm), units per seed (tasks, or checkpoints), and the
    within-seed noise relative to the between-seed s.d. of 1."""

    seeds: int = 5
    units: int = 20
    unit_sd: float = 0.3


def _frame(columns: dict, studies: int, per_study: int) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    frame.insert(0, "stratum", np.repeat([f"study-{i:04d}" for i in range(studies)], per_study))
    frame.insert(0, "component", "")
    frame.insert(0, "rule", "")
    return frame


def _walks(rng: np.random.Generator, shape: tuple[int, ...], sd: float) -> np.ndarray:
    return np.cumsum(rng.normal(0, sd, shape), axis=-1)


def _spearman_rows(values: np.ndarray) -> np.ndarray:
    """Spearman ρ of each row of ``values`` with its position (no ties: continuous draws)."""
    ranks = values.argsort(axis=-1).argsort(axis=-1).astype(float)
    m = values.shape[-1]
    position = np.arange(m) - (m - 1) / 2
    return (ranks - (m - 1) / 2) @ position / (position @ position)


def _trending_runs(centre: float, shape: tuple[int, ...], m: int, rng: np.random.Generator) -> np.ndarray:
    """Runs of ``m`` checkpoints whose values correlate with the step at a per-run r ~ N(centre, 0.1)
    (clipped to ±0.95), on independent Gaussian noise (a Gaussian copula: the per-run ρ also varies by
    the sampling error of ``m`` points)."""
    step = (np.arange(m) - (m - 1) / 2) / np.sqrt((m**2 - 1) / 12)
    r = np.clip(rng.normal(centre, 0.1, (*shape, 1)), -0.95, 0.95)
    return r * step + np.sqrt(1 - r**2) * rng.normal(0, 1.0, (*shape, m))


def _centre_for_mean_rho(target: float, m: int, rng: np.random.Generator, runs: int = 20_000) -> float:
    """The centre of :func:`_trending_runs`'s per-run r at which the mean per-run Spearman ρ(step, value)
    is ``target``: bisection on common random numbers (ρ grows with r)."""
    common = int(rng.integers(2**62))  # the same draws at every centre tried
    low, high = -1.0, 1.0
    for _ in range(30):
        mid = (low + high) / 2
        if _spearman_rows(_trending_runs(mid, (runs,), m, np.random.default_rng(common))).mean() < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def simulate(family: str, effect: float, design: Design, studies: int, rng: np.random.Generator) -> pd.DataFrame:
    """Rows of ``studies`` independent simulated studies (stratum ``study-<i>``) for ``family``."""
    k, m, sd = design.seeds, design.units, design.unit_sd
    seed = np.tile(np.repeat(np.arange(k), m), studies)
    unit = np.tile(np.arange(m), studies * k)
    run = np.char.add("run-", seed.astype(str))
    if family == "contrast":
        true = rng.normal(effect, 1.0, (studies, k, 1))
        baseline = rng.normal(0, 1.0, (studies, k, m)) + rng.normal(0, 1.0, (studies, k, 1))
        treatment = baseline + true + rng.normal(0, sd, (studies, k, m))
        values = np.stack([treatment, baseline], axis=-1)  # [studies, k, m, 2]
        n = studies * k * m
        return _frame(
            {
                "seed": np.repeat(seed, 2),
                "run": np.char.add(np.tile(["t-", "b-"], n), np.repeat(run, 2)),
                "arm": np.tile(["treatment", "baseline"], n),
                "weight": np.tile([1.0, -1.0], n),
                "arms": 2,
                "unit": np.repeat(unit, 2).astype(str),
                "value": values.reshape(-1),
            },
            studies,
            2 * k * m,
        )
    if family in ("level", "equivalence"):
        centre = effect if family == "level" else 3.0 - effect
        values = rng.normal(centre, 1.0, (studies, k, 1)) + rng.normal(0, sd, (studies, k, m))
        return _frame({"seed": seed, "run": run, "unit": unit.astype(str), "value": values.reshape(-1)}, studies, k * m)
    steps = np.linspace(0.0, 1.0, m)
    curve = {"seed": seed, "run": run, "step": np.tile(np.arange(m) * 10, studies * k)}
    if family == "trend":
        values = rng.normal(effect, 1.0, (studies, k, 1)) * steps + _walks(rng, (studies, k, m), sd)
        return _frame(curve | {"value": values.reshape(-1)}, studies, k * m)
    if family == "association":
        x = _walks(rng, (studies, k, m), 1.0)
        y = rng.normal(effect, 1.0, (studies, k, 1)) * x + _walks(rng, (studies, k, m), sd * 3)
        return _frame(curve | {"x": x.reshape(-1), "y": y.reshape(-1)}, studies, k * m)
    if family == "no-trend":
        centre = _centre_for_mean_rho(PARAMS["no-trend"]["margin"] * (1 - effect / 3), m, rng)
        values = _trending_runs(centre, (studies, k), m, rng)
        return _frame(curve | {"value": values.reshape(-1)}, studies, k * m)
    if family == "association-gap":
        y = _walks(rng, (studies, k, m), 1.0)
        beta = rng.normal(0.0, 1.0, (studies, k, 1))
        x = (beta + effect) * y + _walks(rng, (studies, k, m), sd * 3)
        versus = beta * y + _walks(rng, (studies, k, m), sd * 3)
        return _frame(curve | {"x": x.reshape(-1), "versus": versus.reshape(-1), "y": y.reshape(-1)}, studies, k * m)
    if family == "peak":
        bump = 1.0 - (2 * steps - 1) ** 2
        values = rng.normal(effect, 1.0, (studies, k, 1)) * bump + _walks(rng, (studies, k, m), sd)
        return _frame(curve | {"value": values.reshape(-1)}, studies, k * m)
    if family == "after-peak":
        reference = 3 * (1.0 - (2 * steps - 1) ** 2) + _walks(rng, (studies, k, m), sd)
        after = 2 * np.clip(steps - 0.5, 0, None)  # from the peak (mid-run) to the end: 0 -> 1
        values = -rng.normal(effect, 1.0, (studies, k, 1)) * after + _walks(rng, (studies, k, m), sd)
        return _frame(curve | {"value": values.reshape(-1), "reference": reference.reshape(-1)}, studies, k * m)
    if family == "across-runs":
        x = rng.normal(0, 1.0, (studies, k))
        y = effect * x + rng.normal(0, 1.0, (studies, k))
        return _frame(
            {"seed": np.tile(np.arange(k), studies), "run": np.tile(np.char.add("run-", np.arange(k).astype(str)),
                                                                     studies), "x": x.reshape(-1),
             "y": y.reshape(-1)},
            studies,
            k,
        )  # fmt: skip
    raise KeyError(f"no simulator for rule family {family!r}")


def verdicts(rows: pd.DataFrame, family: str, cfg: AggregateConfig) -> list[str]:
    """The verdict of every simulated study (each decided alone: a family of one finding)."""
    out = []
    for part in FAMILIES.get(family).decide(rows, PARAMS[family], cfg):
        outcome = combine([part])
        out.append(verdict_of(outcome, outcome.p_value, cfg, "unadjusted")[0])
    return out


def verdict_rates(
    family: str, effect: float, design: Design, studies: int, seed: int, cfg: AggregateConfig | None = None
) -> dict[str, float]:
    """The share of ``studies`` simulated studies that end ``holds``, ``fails`` and ``inconclusive``."""
    cfg = cfg or AggregateConfig()
    found = verdicts(simulate(family, effect, design, studies, np.random.default_rng(seed)), family, cfg)
    return {v: sum(x == v for x in found) / len(found) for v in ("holds", "fails", "inconclusive")}


def monte_carlo_bound(alpha: float, studies: int, z: float = 3.0) -> float:
    """α plus z Monte-Carlo standard errors of a rate estimated from ``studies`` studies."""
    return alpha + z * math.sqrt(alpha * (1 - alpha) / studies)
