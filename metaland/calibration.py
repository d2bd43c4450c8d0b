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
