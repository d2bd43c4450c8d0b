"""Claims: each quantitative claim of a seed, the rows that test it here, the statistic and a verdict.

A claim is code, registered by its study module before any data exists: an id, the seed and
section, the claim in one sentence, a rule written out in words, and an executable :class:`Rule`
(or several, :func:`all_of`). A rule is a *family* (how a verdict is reached, :data:`FAMILIES`),
its *params* (direction, threshold, margin: fixed before the data) and a *select* that takes the
study tables to the tidy rows the family reads. Those rows are written next to the verdict
(``results/claims/<study>/<claim>.csv``), so ``python -m metaland claim <id>`` recomputes the
verdict from them alone.

Statistics (DESIGN.md, "Statistics of the verdicts"):

* The unit of replication is the **training run** (seed). Every family reduces a run to one value
  (its mean paired difference over the fixed tasks, its rank correlation over checkpoints, ...) and
  infers across seeds with a Student t (:func:`metaland.stats.across_seeds`). Tasks and checkpoints
  of one run are never treated as independent replicates. The field's convention (a CI over test
  tasks) is recorded beside it as ``convention``, never used for the verdict.
* A **stratum** is every identity knob a seed keeps apart (:data:`STRATUM_KNOBS`). Inference runs per
  stratum; pairs never cross strata; a claim over several strata (or components) holds only if it
  holds in every one (intersection-union test: its p-value is the largest) and fails if the opposite
  is significant in any (Bonferroni over them).
* A stratum with fewer than ``aggregate.min_seeds`` seeds cannot decide: the claim is
  ``inconclusive`` with that reason.
* Each claim has one p-value, 2 × min(p of "holds", p of "fails"); a study's *findings* form one
  family, Holm-adjusted (:func:`metaland.stats.holm`); the verdict reads the adjusted value. *Checks*
  (sanity checks such as chance accuracy before adaptation) are shown apart and not adjusted.
* An ``inconclusive`` verdict states the minimal detectable effect at its number of seeds, and the
  seeds that would detect the seed's published effect (or, without one, the observed one).
* Equivalence ("is chance", "≈ x") is TOST with a margin that is a named constant of the study.

The rule builders below are shared by every study; each takes a ``scope`` (:func:`where`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from metaland.config import AggregateConfig
from metaland.registry import Registry
from metaland.results import INITIAL, STRATUM_KNOBS, StudyTables, stratum_of
from metaland.stats import (
    SeedInference,
    across_seeds,
    equivalence_p,
    holm,
    mean_ci,
    minimal_detectable_effect,
    seeds_to_detect,
)

Verdict = Literal["holds", "fails", "inconclusive"]
Category = Literal["finding", "check"]
MIN_CHECKPOINTS = 4
"""Checkpoints a run needs for a rank correlation over meta-training."""
POWER = 0.8


# --------------------------------------------------------------------------------------------
# Rules, parts and decisions
# --------------------------------------------------------------------------------------------


Select = Callable[[StudyTables], pd.DataFrame]


@dataclass(frozen=True)
class Rule:
    """An executable rule: ``select(tables)`` gives the rows, family ``family`` decides on them."""

    family: str
    params: dict
    select: Select


@dataclass(frozen=True)
class Part:
    """The inference of one component × stratum: per-seed values, their t inference, and the
    one-sided p-values of the claim's direction (``p_holds``) and its opposite (``p_fails``)."""

    component: str
    stratum: str
    name: str
    per_seed: dict[int, float]
    inference: SeedInference
    p_holds: float
    p_fails: float
    note: str = ""
    extra: dict = field(default_factory=dict)
    null: float = 0.0
    direction: int = 1

    @property
    def decidable(self) -> bool:
        return not self.note


@dataclass(frozen=True)
class Family:
    """How a verdict is reached from rows: ``decide(rows, params, cfg)`` gives one :class:`Part` per
    stratum of the rows (one component's rows)."""

    name: str
    description: str
    columns: tuple[str, ...]
    decide: Callable[[pd.DataFrame, dict, AggregateConfig], list[Part]]


FAMILIES: Registry[Family] = Registry("rule family")


def _part(component, stratum, name, per_seed, cfg, *, null=0.0, direction=1, note="", extra=None) -> Part:
    """A part whose claim is "the per-seed values lie above ``null``" (``direction`` −1: below)."""
    values = dict(sorted(per_seed.items()))
    inference = across_seeds(list(values.values()), null=null, confidence=cfg.confidence)
    if not note and inference.n < cfg.min_seeds:
        note = f"{inference.n} seed(s) < aggregate.min_seeds = {cfg.min_seeds}"
    up, down = (inference.p_greater, inference.p_less) if direction > 0 else (inference.p_less, inference.p_greater)
    return Part(component, stratum, name, values, inference, up, down, note, extra or {}, null, direction)


KEYS = ["component", "stratum"]


def _strata(rows: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    if rows.empty:
        return []
    return [(str(c), str(s), g) for (c, s), g in rows.groupby(KEYS, sort=True)]


def _groups(frame: pd.DataFrame | pd.Series) -> list[tuple[str, str]]:
    """The (component, stratum) keys of a frame indexed or columned by them, sorted."""
    index = frame.index if isinstance(frame, pd.Series) else frame.set_index(KEYS).index
    return sorted({(str(c), str(s)) for c, s, *_ in index})


def _by_key(series: pd.Series) -> dict[tuple[str, str], dict[int, float]]:
    """A series indexed by (component, stratum, seed) as {(component, stratum): {seed: value}}."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    for (component, stratum, seed), value in series.items():
        out.setdefault((str(component), str(stratum)), {})[int(seed)] = float(value)
    return out


def _conventions(values: pd.Series, confidence: float) -> dict[tuple[str, str], list]:
    """The field's convention per (component, stratum): mean and t CI over every unit of every seed pooled."""
    return {
        (str(c), str(s)): [ci.mean, ci.low, ci.high, ci.n]
        for (c, s), group in values.groupby(level=[0, 1], sort=True)
        for ci in [mean_ci(group.to_numpy(), confidence)]
    }


# --- contrast: paired differences (treatment vs baseline, differences of differences) --------


def decide_contrast(rows: pd.DataFrame, params: dict, cfg: AggregateConfig) -> list[Part]:
    """Per seed, the mean over paired units of Σ weight × value (a unit needs every arm; a stratum lacking
    one of the ``arms`` the rule declares cannot decide), then t over seeds."""
    if rows.empty:
        return []
    frame = rows.assign(weighted=rows["weight"] * rows["value"], finite=np.isfinite(rows["value"].to_numpy(float)))
    units = frame.groupby([*KEYS, "seed", "unit"], sort=True).agg(
        weighted=("weighted", "sum"), n=("arm", "size"), arms=("arm", "nunique"), expected=("arms", "max"),
        finite=("finite", "sum"),
    )  # fmt: skip
    complete = units[
        (units["n"] == units["expected"])
        & (units["arms"] == units["expected"])
        & (units["finite"] == units["expected"])
    ]
    per_unit = complete["weighted"]
    per_seed = _by_key(per_unit.groupby(level=[0, 1, 2]).mean())
    present = frame.groupby(KEYS)["arm"].nunique()
    expected = frame.groupby(KEYS)["arms"].max()
    runs = frame.groupby([*KEYS, "arm", "seed"])["run"].nunique()
    clashes = runs[runs > 1]
    conventions = _conventions(per_unit, cfg.confidence)
    pairs = per_unit.groupby(level=[0, 1]).size()
    parts = []
    for key in _groups(present):
        note = ""
        if present[key] < expected[key]:
            note = f"{present[key]} of the {expected[key]} arms have runs in this stratum: nothing to pair"
        elif key in clashes.droplevel([2, 3]).index:
            (arm, seed) = clashes.loc[key].index[0]
            note = f"arm {arm!r} has several runs of seed {seed} in this stratum (they differ in a knob outside it)"
        parts.append(
            _part(*key, params.get("name", "paired difference"), per_seed.get(key, {}), cfg, note=note,
                  extra={"pairs": int(pairs.get(key, 0)), "convention": conventions.get(key, [math.nan] * 3 + [0])})
        )  # fmt: skip
    return parts


# --- level: a mean above (or below) a threshold ----------------------------------------------


def decide_level(rows: pd.DataFrame, params: dict, cfg: AggregateConfig) -> list[Part]:
    """Per seed, the mean over units; t over seeds against ``params['threshold']`` in ``direction``."""
    if rows.empty:
        return []
    per_seed = _by_key(rows.set_index([*KEYS, "seed"])["value"].groupby(level=[0, 1, 2]).mean())
    conventions = _conventions(rows.set_index(KEYS)["value"], cfg.confidence)
    return [
        _part(*key, params.get("name", "mean"), per_seed[key], cfg, null=params["threshold"],
              direction=params["direction"], extra={"convention": conventions[key]})
        for key in sorted(per_seed)
    ]  # fmt: skip


# --- equivalence: a mean inside a band (TOST) -------------------------------------------------


def decide_equivalence(rows: pd.DataFrame, params: dict, cfg: AggregateConfig) -> list[Part]:
    """Per seed, the mean over units; holds by TOST inside (low, high), fails if the mean lies
    significantly outside the band (the smaller one-sided p, doubled)."""
    if rows.empty:
        return []
    per_seed = _by_key(rows.set_index([*KEYS, "seed"])["value"].groupby(level=[0, 1, 2]).mean())
    conventions = _conventions(rows.set_index(KEYS)["value"], cfg.confidence)
    return [
        _band_part(key, params.get("name", "mean"), per_seed[key], params["low"], params["high"], cfg,
                   extra={"convention": conventions[key]})
        for key in sorted(per_seed)
    ]  # fmt: skip


def _band_part(key, name, per_seed, low, high, cfg, *, fails: str = "outside", extra=None) -> Part:
    """A part whose claim is "the mean of the per-seed values lies inside (low, high)": TOST for holds; for
    fails, the mean lies significantly outside the band (``outside``: the smaller one-sided p, doubled) or,
    with ``fails="above"``, significantly above ``high`` only (a fall below ``low`` then decides nothing)."""
    values = list(per_seed.values())
    base = _part(*key, name, per_seed, cfg)
    above = across_seeds(values, null=high).p_greater
    if fails == "above":  # only a significant rise beyond the band opposes the claim
        outside = above
    else:
        below = across_seeds(values, null=low).p_less
        outside = min(1.0, 2 * min(above, below)) if math.isfinite(above) else math.nan
    extra = {"band": [low, high], **(extra or {})}
    return Part(*key, base.name, base.per_seed, base.inference, equivalence_p(values, low, high), outside, base.note,
                extra)  # fmt: skip


# --- curves over meta-training: trend, association, no-trend, association-gap, peak, after-peak -------


def _per_run_correlation(rows: pd.DataFrame, x: str, y: str, ranks: bool) -> dict[tuple[str, str], dict[int, float]]:
    """Per (component, stratum, seed): the mean over its runs of each run's Pearson r (of ranks: Spearman ρ)
    of ``x`` and ``y`` over its checkpoints; runs with fewer than MIN_CHECKPOINTS finite pairs give none."""
    return _by_key(_run_correlations(rows, x, y, ranks).groupby(level=[0, 1, 2]).mean())


def _run_correlations(rows: pd.DataFrame, x: str, y: str, ranks: bool) -> pd.Series:
    """Each run's Pearson r (of ranks: Spearman ρ) of ``x`` and ``y`` over its checkpoints, indexed by
    (component, stratum, seed, run); runs with fewer than MIN_CHECKPOINTS finite pairs, or no spread, give none."""
    keys = [*KEYS, "seed", "run"]
    frame = rows[np.isfinite(rows[x].to_numpy(float)) & np.isfinite(rows[y].to_numpy(float))][[*keys, x, y]]
    frame = frame.rename(columns={x: "_x", y: "_y"})
    groups = frame.groupby(keys, sort=True)
    if ranks:
        frame = frame.assign(_x=groups["_x"].rank(), _y=groups["_y"].rank())
        groups = frame.groupby(keys, sort=True)
    dx, dy = frame["_x"] - groups["_x"].transform("mean"), frame["_y"] - groups["_y"].transform("mean")
    sums = frame.assign(xy=dx * dy, xx=dx * dx, yy=dy * dy).groupby(keys, sort=True)[["xy", "xx", "yy"]].sum()
    count = groups.size()
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sums["xy"] / np.sqrt(sums["xx"] * sums["yy"])
    return r[(count >= MIN_CHECKPOINTS) & (sums["xx"] > 0) & (sums["yy"] > 0)]


def _correlation_parts(rows, x, y, ranks, name, direction, cfg) -> list[Part]:
    if rows.empty:
        return []
    per_seed = _per_run_correlation(rows, x, y, ranks)
    return [_part(*key, name, per_seed.get(key, {}), cfg, direction=direction) for key in _groups(rows)]


def decide_trend(rows: pd.DataFrame, params: dict, cfg: AggregateConfig) -> list[Part]:
    """Per run, Spearman ρ(step, value) over its checkpoints; t over seeds that ρ has the sign of
    ``direction`` (one statistic per run: checkpoints of a run are not replicates)."""
    return _correlation_parts(rows, "step", "value", True, "Spearman ρ(step, value) per run", params["direction"], cfg)


def decide_association(rows: pd.DataFrame, params: dict, cfg: AggregateConfig) -> list[Part]:
    """Per run, the correlation of x and y over its checkpoints; t over seeds that it has ``sign``."""
    method = params.get("method", "spearman")
    return _correlation_parts(rows, "x", "y", method == "spearman", f"{method} r(x, y) per run", params["sign"], cfg)


def decide_no_trend(rows: pd.DataFrame, params: dict, cfg: AggregateConfig) -> list[Part]:
    """Per run, Spearman ρ(step, value) over its checkpoints (as :func:`decide_trend`); holds if TOST over
    seeds puts the mean ρ inside ±``margin`` (no more than a weak monotone trend either way); fails if it
    lies significantly above ``margin`` (``fails="above"``: the value grows) or outside the band."""
    if rows.empty:
        return []
    margin = params["margin"]
    per_seed = _per_run_correlation(rows, "step", "value", True)
    return [
        _band_part(key, "Spearman ρ(step, value) per run", per_seed.get(key, {}), -margin, margin, cfg,
                   fails=params.get("fails", "outside"))
        for key in _groups(rows)
    ]  # fmt: skip


def decide_association_gap(rows: pd.DataFrame, params: dict, cfg: AggregateConfig) -> list[Part]:
    """Per run, the correlation of x and y minus that of ``versus`` and y over the same checkpoints (those
    where all three are finite); t over seeds that the gap is positive (x tracks y better than versus)."""
    if rows.empty:
        return []
    method = params.get("method", "spearman")
    frame = rows[np.isfinite(rows[["x", "versus", "y"]].to_numpy(float)).all(axis=1)]
    per_seed = {}
    if not frame.empty:
        gap = _run_correlations(frame, "x", "y", method == "spearman") - _run_correlations(
            frame, "versus", "y", method == "spearman"
        )
        per_seed = _by_key(gap.dropna().groupby(level=[0, 1, 2]).mean())
    name = f"{method} r(x, y) − {method} r(versus, y) per run"
    return [_part(*key, name, per_seed.get(key, {}), cfg) for key in _groups(rows)]


def _curves(rows: pd.DataFrame, column: str, skip_initial: bool) -> dict[tuple[str, str], pd.DataFrame]:
    """Per (component, stratum): seeds × steps of ``column`` (the steps every seed has; step 0 dropped when
    ``skip_initial``; several runs of a seed averaged)."""
    wide = rows.pivot_table(index=[*KEYS, "seed"], columns="step", values=column, aggfunc="mean", sort=True)
    if skip_initial:
        wide = wide.loc[:, wide.columns > 0]
    return {
        (str(c), str(s)): group.droplevel([0, 1]).dropna(axis=1)
        for (c, s), group in wide.groupby(level=[0, 1], sort=True)
    }


def _held_out_peaks(curves: pd.DataFrame) -> dict[int, int]:
    """For each seed, the interior checkpoint where the *other* seeds' mean curve peaks: the peak is
    located without the seed's own noise (leave-one-out), so its rise and fall are unbiased."""
    values = curves.to_numpy()
    total, n = values.sum(axis=0), len(values)
    return {int(seed): 1 + int(np.argmax(((total - values[i]) / (n - 1))[1:-1])) for i, seed in enumerate(curves.index)}


def _too_short(curves: pd.DataFrame) -> str:
    if curves.shape[0] < 2:
        return f"{curves.shape[0]} seed(s): the peak of one run cannot be located without its own noise"
    if curves.shape[1] < 3:
        return f"{curves.shape[1]} common checkpoint(s): a peak needs a first, an interior and a last one"
    return ""


def decide_peak(rows: pd.DataFrame, params: dict, cfg: AggregateConfig) -> list[Part]:
    """Rises to an interior peak, then falls: per seed, rise = v(peak) − v(first) and fall = v(peak) −
    v(last) at the held-out peak (:func:`_held_out_peaks`); holds if both are significantly positive
    across seeds (the larger p), fails if either is significantly negative (twice the smaller p)."""
    if rows.empty:
        return []
    parts = []
    for key, curves in _curves(rows, "value", params.get("skip_initial", True)).items():
        note = _too_short(curves)
        rise, fall = {}, {}
        if not note:
            for seed, peak in _held_out_peaks(curves).items():
                v = curves.loc[seed].to_numpy()
                rise[seed], fall[seed] = float(v[peak] - v[0]), float(v[peak] - v[-1])
        parts.append(_two_sided_part(*key, "rise to the peak", rise, "fall after it", fall, cfg, note))
    return parts


def decide_after_peak(rows: pd.DataFrame, params: dict, cfg: AggregateConfig) -> list[Part]:
    """After the reference (accuracy) peaks, the value keeps falling: per seed, at the held-out peak of
    the reference, degradation = ref(peak) − ref(last) and fall = v(peak) − v(last). Holds if both are
    significantly positive; fails if the reference degrades significantly while the value rises
    significantly; inconclusive otherwise (e.g. no significant degradation: nothing to look at)."""
    if rows.empty:
        return []
    skip = params.get("skip_initial", True)
    references, values = _curves(rows, "reference", skip), _curves(rows, "value", skip)
    parts = []
    for key, reference in references.items():
        value = values.get(key, reference.iloc[:, :0])
        common = reference.columns.intersection(value.columns)
        reference, value = reference[common], value[common].reindex(reference.index)
        note = _too_short(reference)
        degradation, fall = {}, {}
        if not note:
            for seed, peak in _held_out_peaks(reference).items():
                r, v = reference.loc[seed].to_numpy(), value.loc[seed].to_numpy()
                degradation[seed], fall[seed] = float(r[peak] - r[-1]), float(v[peak] - v[-1])
        part = _two_sided_part(*key, "degradation of the reference", degradation, "fall of the value", fall, cfg, note)
        deg, fal = part.extra["inferences"]
        p_fails = max(deg["p_greater"], fal["p_less"]) if part.decidable else math.nan
        parts.append(
            Part(part.component, part.stratum, part.name, part.per_seed, part.inference, part.p_holds, p_fails,
                 part.note, part.extra)
        )  # fmt: skip
    return parts


def _two_sided_part(component, stratum, first_name, first, second_name, second, cfg, note) -> Part:
    """A part made of two per-seed quantities that must both be positive (the first is reported)."""
    a = _part(component, stratum, first_name, first, cfg, note=note)
    b = _part(component, stratum, second_name, second, cfg, note=note)
    inferences = [
        {
            "name": p.name,
            "estimate": p.inference.estimate,
            "ci": [p.inference.ci_low, p.inference.ci_high],
            "p_greater": p.inference.p_greater,
            "p_less": p.inference.p_less,
            "per_seed": p.per_seed,
        }
        for p in (a, b)
    ]
    p_holds = max(a.p_holds, b.p_holds)
    p_fails = min(1.0, 2 * min(a.p_fails, b.p_fails))
    weaker = a if a.p_holds >= b.p_holds else b
    return Part(
        component,
        stratum,
        f"{first_name} and {second_name}",
        weaker.per_seed,
        weaker.inference,
        p_holds,
        p_fails,
        a.note or b.note,
        {"inferences": inferences},
    )


# --- across runs: a correlation whose points are runs -----------------------------------------


def decide_across_runs(rows: pd.DataFrame, params: dict, cfg: AggregateConfig) -> list[Part]:
    """Pearson r of x and y across runs (one point per run, several settings pooled as the seed does),
    with an exact permutation p-value (scipy), one-sided in the direction of ``sign``."""
    from scipy import stats as sps

    parts = []
    for component, stratum, group in _strata(rows):
        x, y = group["x"].to_numpy(float), group["y"].to_numpy(float)
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        n = int(x.size)
        note = "" if n >= params.get("min_runs", 4) else f"{n} run(s) < {params.get('min_runs', 4)}"
        r = p_pos = p_neg = math.nan
        if not note and np.ptp(x) > 0 and np.ptp(y) > 0:
            method = sps.PermutationMethod(n_resamples=9999, rng=np.random.default_rng(0))
            r = float(sps.pearsonr(x, y).statistic)
            p_pos = float(sps.pearsonr(x, y, alternative="greater", method=method).pvalue)
            p_neg = float(sps.pearsonr(x, y, alternative="less", method=method).pvalue)
        elif not note:
            note = "no spread in x or y"
        up, down = (p_pos, p_neg) if params["sign"] > 0 else (p_neg, p_pos)
        inference = SeedInference(r, math.nan, math.nan, p_pos, p_neg, n, math.nan)
        parts.append(
            Part(
                component,
                stratum,
                "Pearson r across runs (one point per run)",
                {},
                inference,
                up,
                down,
                note,
                {
                    "points": [
                        [run, a, b] for run, a, b in zip(group.loc[keep, "run"], x.tolist(), y.tolist(), strict=True)
                    ]
                },
            )
        )
    return parts


for _family in (
    Family(
        "contrast",
        "paired differences per seed, t over seeds",
        ("arm", "weight", "arms", "unit", "value"),
        decide_contrast,
    ),
    Family("level", "mean per seed against a threshold, t over seeds", ("unit", "value"), decide_level),
    Family("equivalence", "mean per seed inside a band, TOST over seeds", ("unit", "value"), decide_equivalence),
    Family("trend", "Spearman ρ(step, value) per run, t over seeds", ("step", "value"), decide_trend),
    Family("association", "correlation of x and y per run, t over seeds", ("step", "x", "y"), decide_association),
    Family(
        "no-trend",
        "Spearman ρ(step, value) per run, TOST over seeds inside ±margin",
        ("step", "value"),
        decide_no_trend,
    ),
    Family(
        "association-gap",
        "correlation of x and y minus that of versus and y per run, t over seeds",
        ("step", "x", "versus", "y"),
        decide_association_gap,
    ),
    Family("peak", "held-out peak: rise and fall per seed, t over seeds", ("step", "value"), decide_peak),
    Family(
        "after-peak",
        "held-out peak of a reference: its degradation and the value's fall per seed, t over seeds",
        ("step", "value", "reference"),
        decide_after_peak,
    ),
    Family("across-runs", "Pearson r across runs, exact permutation p", ("x", "y"), decide_across_runs),
):
    FAMILIES.register(_family.name, _family)


# --------------------------------------------------------------------------------------------
# Claims and their evaluation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    id: str
    study: str
    seed: str
    section: str
    claim: str
    rule: str
    test: Rule | dict[str, Rule]
    category: Category = "finding"
    published_effect: float | None = None
    """The seed's effect in the units of the rule's per-seed values (e.g. +0.0133 accuracy), for the
    power statement of an inconclusive verdict; None where the seed gives none."""

    @property
    def rules(self) -> dict[str, Rule]:
        """Component name -> rule ("" for a claim with one rule)."""
        return self.test if isinstance(self.test, dict) else {"": self.test}

    @property
    def slug(self) -> str:
        """The id without its study prefix: the claim's file name under ``results/claims/<study>/``."""
        return self.id.removeprefix(self.study).lstrip("-/")


CLAIMS: Registry[Claim] = Registry("claim")


def register(claim: Claim) -> Claim:
    return CLAIMS.register(claim.id, claim)


def claims_of(study: str) -> list[Claim]:
    """The claims a study module registered (looking the study up imports its module)."""
    from metaland.studies import STUDIES  # lazy: study modules import this module

    STUDIES.get(study)
    return [claim for _, claim in CLAIMS.items() if claim.study == study]


def all_of(rules: dict[str, Rule]) -> dict[str, Rule]:
    """Several named rules that must all hold (one claim about several variants, splits or depths)."""
    return dict(rules)


def claim_rows(claim: Claim, tables: StudyTables) -> pd.DataFrame:
    """Every row that enters the claim's statistic, with its component (the traceable input)."""
    frames = []
    for component, rule in claim.rules.items():
        family = FAMILIES.get(rule.family)
        rows = rule.select(tables)
        if rows.empty:
            continue
        # a select may name data-driven components itself (e.g. one per pair of depths present)
        own = rows["component"].astype(str) if "component" in rows else ""
        named = (component + " " + own).str.strip() if "component" in rows else component
        columns = ["rule", "component", "stratum", "seed", "run", *family.columns]
        frames.append(rows.assign(rule=component, component=named).reindex(columns=columns))
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["rule", "component", "stratum", "seed"])
    )


def method_of(claim: Claim) -> dict[str, dict]:
    """Component -> {family, params}: what :func:`decide` needs besides the rows (JSON-safe)."""
    return {component: {"family": rule.family, "params": rule.params} for component, rule in claim.rules.items()}


def decide(method: dict[str, dict], rows: pd.DataFrame, cfg: AggregateConfig) -> list[Part]:
    """Every part of a claim from its rows alone (what ``metaland claim`` recomputes)."""
    parts = []
    for component, spec in method.items():
        mine = rows[rows["rule"].fillna("").astype(str) == component] if not rows.empty else rows
        parts += FAMILIES.get(spec["family"]).decide(mine, spec["params"], cfg)
    return parts


def rule_parts(rule: Rule, tables: StudyTables, cfg: AggregateConfig) -> list[Part]:
    """One rule's parts on the study tables (for the study tables that show a rule's statistic)."""
    rows = rule.select(tables)
    return FAMILIES.get(rule.family).decide(rows.assign(component="") if not rows.empty else rows, rule.params, cfg)


@dataclass(frozen=True)
class Outcome:
    """A claim's parts combined: the intersection-union p of "holds", the Bonferroni p of "fails",
    the claim's p-value 2 × min of them, and what kept it from deciding."""

    parts: list[Part]
    p_holds: float
    p_fails: float
    p_value: float
    undecided: list[str]


def combine(parts: list[Part]) -> Outcome:
    """Holds only if every part holds (the largest p); fails if any part shows the opposite (the
    smallest p times the number of decidable parts)."""
    decided = [p for p in parts if p.decidable and math.isfinite(p.p_holds) and math.isfinite(p.p_fails)]
    undecided = [f"{_where(p)}: {p.note or 'undefined statistic'}" for p in parts if p not in decided]
    if not parts:
        undecided = ["no run of this profile is in the claim's scope"]
    p_holds = max((p.p_holds for p in decided), default=1.0) if not undecided else 1.0
    p_fails = min(1.0, min((p.p_fails for p in decided), default=1.0) * max(len(decided), 1))
    p_value = min(1.0, 2 * min(p_holds, p_fails)) if decided else math.nan
    return Outcome(parts, p_holds, p_fails, p_value, undecided)


def _where(part: Part) -> str:
    return " / ".join(x for x in (part.component, part.stratum) if x) or "the claim"


def verdict_of(outcome: Outcome, p_adjusted: float, cfg: AggregateConfig, adjusted_by: str) -> tuple[Verdict, str]:
    """The verdict and its reason, from the combined outcome and its (Holm-)adjusted p-value."""
    if math.isfinite(p_adjusted) and p_adjusted < cfg.alpha:
        side = "holds" if outcome.p_holds <= outcome.p_fails else "fails"
        what = "every part in the claimed direction" if side == "holds" else "a part in the opposite direction"
        return side, f"{adjusted_by} p = {p_adjusted:.3g} < α = {cfg.alpha}: {what}"
    if outcome.undecided and not (math.isfinite(p_adjusted) and outcome.p_fails < outcome.p_holds):
        return "inconclusive", "cannot decide: " + "; ".join(outcome.undecided)
    shown = "undefined" if not math.isfinite(p_adjusted) else f"{p_adjusted:.3g}"
    return "inconclusive", f"{adjusted_by} p = {shown} ≥ α = {cfg.alpha}"


def power_of(outcome: Outcome, cfg: AggregateConfig, published_effect: float | None, family_size: int = 1) -> dict:
    """What would decide an inconclusive claim, for its weakest decidable part (the largest ``p_holds``):
    its seeds, the between-seed s.d., the minimal detectable effect (one-sided t, power 0.8) and the seeds
    that would detect the published (else observed) effect, never fewer than ``min_seeds``.

    The level is α / (2m): a claim's p is twice its smaller one-sided p, and Holm multiplies the smallest
    p of the study's m findings (``family_size``; 1 for a check) by m. A weakest part whose seeds all give
    the same value has no t statistic; its exact sign-flip p is 2⁻ⁿ (:func:`~metaland.stats.across_seeds`),
    which reaches the level only with n > log₂(1 / level) seeds, whatever the value."""
    level = cfg.alpha / (2 * max(family_size, 1))
    decidable = [p for p in outcome.parts if p.decidable and math.isfinite(p.p_holds)]
    if not decidable:
        return {"note": f"needs ≥ {cfg.min_seeds} seeds with spread in every stratum", "seeds_needed": cfg.min_seeds}
    weakest = max(decidable, key=lambda p: p.p_holds)
    n, sd = weakest.inference.n, weakest.inference.sd
    if sd == 0:
        needed = max(cfg.min_seeds, math.floor(math.log2(1 / level)) + 1)
        return {
            "part": _where(weakest),
            "seeds": n,
            "level": level,
            "seeds_needed": needed,
            "note": f"all {n} seeds of {_where(weakest)} give the same value, so there is no t statistic; the exact "
            f"sign-flip p = 2^-{n} reaches the level α / (2 × {max(family_size, 1)}) = {level:.3g} only with "
            f"≥ {needed} seeds",
        }
    observed = weakest.direction * (weakest.inference.estimate - weakest.null)
    if "band" in weakest.extra:  # equivalence: the distance to the nearer edge is what must be shown
        low, high = weakest.extra["band"]
        observed = min(weakest.inference.estimate - low, high - weakest.inference.estimate)
    effect, source = (published_effect, "published") if published_effect is not None else (observed, "observed")
    needed = seeds_to_detect(effect, sd, level, POWER) if effect and effect > 0 else math.inf
    return {
        "part": _where(weakest),
        "seeds": n,
        "level": level,
        "sd_between_seeds": sd,
        "minimal_detectable_effect": minimal_detectable_effect(n, sd, level, POWER),
        "effect": effect,
        "effect_source": source,
        "seeds_needed": max(float(cfg.min_seeds), needed) if math.isfinite(needed) else needed,
    }


def part_record(part: Part) -> dict:
    i = part.inference
    return _clean(
        {
            "component": part.component,
            "stratum": part.stratum,
            "name": part.name,
            "estimate": i.estimate,
            "ci": [i.ci_low, i.ci_high],
            "n_seeds": i.n,
            "sd_between_seeds": i.sd,
            "p_holds": part.p_holds,
            "p_fails": part.p_fails,
            "per_seed": {str(k): v for k, v in part.per_seed.items()},
            "note": part.note,
            **part.extra,
        }
    )


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    rows: pd.DataFrame
    outcome: Outcome
    p_adjusted: float
    verdict: Verdict
    reason: str
    power: dict

    def statistic(self) -> dict:
        decided = [p for p in self.outcome.parts if p.decidable]
        weakest = max(decided, key=lambda p: p.p_holds) if decided else None
        return _clean(
            {
                "name": weakest.name if weakest else "no decidable part",
                "value": weakest.inference.estimate if weakest else math.nan,
                "n": weakest.inference.n if weakest else 0,
                "ci": [weakest.inference.ci_low, weakest.inference.ci_high] if weakest else None,
                "p_value": self.outcome.p_value,
                "p_adjusted": self.p_adjusted,
                "p_holds": self.outcome.p_holds,
                "p_fails": self.outcome.p_fails,
                "parts": [part_record(p) for p in self.outcome.parts],
            }
        )


def evaluate_study(claims: list[Claim], tables: StudyTables, cfg: AggregateConfig) -> list[ClaimResult]:
    """Every claim of one study: rows, parts, the family of findings Holm-adjusted, verdicts."""
    rows = [claim_rows(c, tables) for c in claims]
    outcomes = [combine(decide(method_of(c), r, cfg)) for c, r in zip(claims, rows, strict=True)]
    findings = [i for i, c in enumerate(claims) if c.category == "finding"]
    adjusted = dict(zip(findings, holm([outcomes[i].p_value for i in findings]), strict=True))
    results = []
    for i, (claim, claim_rows_, outcome) in enumerate(zip(claims, rows, outcomes, strict=True)):
        p_adj = adjusted.get(i, outcome.p_value)
        by = f"Holm-adjusted (over {len(findings)} findings)" if i in adjusted else "unadjusted (a check)"
        verdict, reason = verdict_of(outcome, p_adj, cfg, by)
        family_size = len(findings) if i in adjusted else 1
        power = power_of(outcome, cfg, claim.published_effect, family_size) if verdict == "inconclusive" else {}
        results.append(ClaimResult(claim, claim_rows_, outcome, p_adj, verdict, reason, _clean(power)))
    return results


def _clean(value):
    """JSON-safe: NaN and ±inf -> None, tuples -> lists, numpy scalars -> Python, recursively."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Scopes, strata and rule builders
# --------------------------------------------------------------------------------------------


Scope = Callable[[pd.DataFrame], pd.DataFrame]


def where(*, longest: bool = False, **columns: object) -> Scope:
    """The rows of runs whose metadata match: ``where(algorithm=("maml", "fomaml"), inner_steps=5)``.

    A tuple means "any of", a callable is a vectorised test of the column (``lambda t: t > 1``);
    ``longest`` keeps only the runs with the most iterations among them (the extended run of an
    overfitting experiment)."""

    def select(frame: pd.DataFrame) -> pd.DataFrame:
        if frame.empty:
            return frame
        for column, wanted in columns.items():
            if callable(wanted):
                frame = frame[wanted(frame[column])]
            else:
                frame = frame[frame[column].isin(wanted if isinstance(wanted, tuple) else (wanted,))]
        if longest and not frame.empty:
            frame = frame[frame["iterations"] == frame["iterations"].max()]
        return frame

    return select


def beside(scope: Scope, present: Scope, varies: tuple[str, ...] = ()) -> Scope:
    """The rows of ``scope`` in a stratum (less the knobs in ``varies``) that also has rows of ``present``: a
    baseline compared with runs that a profile has in some of its settings only (finetune beside MAML; Table 5's
    ablations beside MAML) is read in those settings, so a setting with the baseline alone leaves the claim
    untouched instead of making it undecidable."""

    def select(frame: pd.DataFrame) -> pd.DataFrame:
        rows = scope(frame)
        if rows.empty:
            return rows
        knobs = [k for k in STRATUM_KNOBS if k not in varies and k in rows.columns]
        wanted = pd.MultiIndex.from_frame(present(frame)[knobs].astype(str).drop_duplicates())
        return rows[pd.MultiIndex.from_frame(rows[knobs].astype(str)).isin(wanted)]

    return select


def every_run(frame: pd.DataFrame) -> pd.DataFrame:
    return frame


def _base(frame: pd.DataFrame, varies: tuple[str, ...]) -> pd.DataFrame:
    return frame.assign(stratum=stratum_of(frame, varies)) if not frame.empty else frame


def _empty(*columns: str) -> pd.DataFrame:
    return pd.DataFrame(columns=["stratum", "seed", "run", *columns])


Source = Literal["final_tasks", "checkpoints", "milestone_tasks", "run_means", "final_checkpoints"]


def _source(tables: StudyTables, source: Source, metric: str, absolute: bool) -> pd.DataFrame:
    """The table a contrast reads: per-task rows at final checkpoints or milestones, checkpoint rows after
    the initial one (the arms start from the same θ when they share a seed), one row per run with the
    mean over those checkpoints (``run_means``), or each run's row at its final checkpoint
    (``final_checkpoints``: per-checkpoint probes, such as the meta-loss Hessian); ``absolute`` takes
    |metric| first."""
    checkpoint_sources = ("checkpoints", "run_means", "final_checkpoints")
    frame = tables.checkpoints if source in checkpoint_sources else getattr(tables, source)
    if frame.empty or metric not in frame:
        return frame
    if source in checkpoint_sources:
        frame = frame[frame["step"] > 0]
    if absolute:
        frame = frame.assign(**{metric: frame[metric].abs()})
    if source == "run_means":
        means = frame.groupby("run")[metric].mean()
        frame = frame.drop_duplicates("run").drop(columns=metric).merge(means.reset_index(), on="run")
    if source == "final_checkpoints":
        frame = frame[frame["step"] == frame.groupby("run")["step"].transform("max")]
    return frame


UNITS: dict[str, str | None] = {
    "final_tasks": "task",
    "milestone_tasks": "task",
    "checkpoints": "step",
    "run_means": None,
    "final_checkpoints": None,
}
"""The column whose values pair the arms' rows within a seed; None: one row per run, so the arms' runs of a seed
pair with each other (their unit is the source's name)."""
WHERE = {
    "final_tasks": "on the same tasks",
    "milestone_tasks": "on the same tasks",
    "checkpoints": "at the same checkpoints",
    "run_means": "over each run's checkpoints",
    "final_checkpoints": "at each run's final checkpoint",
}


def contrast(
    metric: str,
    arms: dict[str, tuple[Scope, float]],
    *,
    varies: tuple[str, ...] = (),
    source: Source = "final_tasks",
    absolute: bool = False,
    name: str | None = None,
) -> Rule:
    """Σ weight × ``metric`` over named arms (scope, weight), paired within stratum, seed and unit (a
    fixed task, a checkpoint step, or the run itself: :data:`UNITS` of ``source``): a difference, or a
    difference of differences. ``varies`` names the identity knobs the arms differ in (left out of
    the stratum)."""
    columns = ("arm", "weight", "arms", "unit", "value")
    unit = UNITS[source]

    def select(tables: StudyTables) -> pd.DataFrame:
        frame = _source(tables, source, metric, absolute)
        parts = []
        for arm, (scope, weight) in arms.items():
            rows = scope(frame)
            if rows.empty or metric not in rows:
                continue
            parts.append(
                _base(rows, varies).assign(
                    arm=arm,
                    weight=weight,
                    arms=len(arms),
                    unit=rows[unit].astype(str) if unit else source,
                    value=rows[metric],
                )
            )
        return pd.concat(parts, ignore_index=True)[["stratum", "seed", "run", *columns]] if parts else _empty(*columns)

    label = name or f"paired {' '.join(f'{w:+g}×{a}' for a, (_, w) in arms.items())} in {metric}"
    params = {"name": label, "metric": metric, "arms": {a: w for a, (_, w) in arms.items()}, "source": source}
    return Rule("contrast", params | ({"absolute": True} if absolute else {}), select)


def improves_on(
    metric: str,
    treatment: Scope,
    baseline: Scope,
    *,
    better: Literal["higher", "lower"] = "higher",
    varies: tuple[str, ...] = (),
    source: Source = "final_tasks",
    absolute: bool = False,
) -> Rule:
    """``treatment`` runs have a better (higher, or ``lower``) ``metric`` than ``baseline`` runs of the
    same stratum and seed: on the same fixed tasks at the final checkpoints (``final_tasks``), at the
    same checkpoints along meta-training after the initial one (``checkpoints``), or averaged over
    those checkpoints (``run_means``)."""
    sign = 1.0 if better == "higher" else -1.0
    order = "treatment − baseline" if better == "higher" else "baseline − treatment"
    what = f"|{metric}|" if absolute else metric
    return contrast(
        metric,
        {"treatment": (treatment, sign), "baseline": (baseline, -sign)},
        varies=varies,
        source=source,
        absolute=absolute,
        name=f"mean paired difference in {what} ({order}) {WHERE[source]}, per seed",
    )


def improves_at_milestone(metric: str, milestone: str, *, reference: str = INITIAL, scope: Scope = every_run) -> Rule:
    """Each run's ``metric`` at its ``milestone`` checkpoint is higher than at ``reference`` (default:
    the initialisation), on the same fixed tasks: per seed, the mean gain over tasks."""

    def at(name: str) -> Scope:
        def rows(frame: pd.DataFrame) -> pd.DataFrame:
            mine = scope(frame)
            return mine[mine["milestone"] == name] if "milestone" in mine else mine[:0]

        return rows

    return contrast(
        metric,
        {milestone: (at(milestone), 1.0), reference: (at(reference), -1.0)},
        source="milestone_tasks",
        name=f"mean paired difference in {metric} ({milestone} − {reference}) on the same tasks, per seed",
    )


def column_contrast(columns: dict[str, float], *, scope: Scope = every_run, name: str) -> Rule:
    """Σ weight × column over several probe outputs of the same run, per fixed task at its final
    checkpoint (e.g. accuracy with one layer frozen minus with another frozen)."""
    out = ("arm", "weight", "arms", "unit", "value")

    def select(tables: StudyTables) -> pd.DataFrame:
        rows = scope(tables.final_tasks)
        parts = [
            _base(rows, ()).assign(
                arm=column, weight=weight, arms=len(columns), unit=rows["task"].astype(str), value=rows[column]
            )
            for column, weight in columns.items()
            if not rows.empty and column in rows
        ]
        return pd.concat(parts, ignore_index=True)[["stratum", "seed", "run", *out]] if parts else _empty(*out)

    return Rule("contrast", {"name": name, "arms": dict(columns)}, select)


Offset = Callable[[pd.DataFrame], pd.Series]


def _final_values(metric: str, scope: Scope, offset: Offset | None = None) -> Select:
    """Per-task ``metric`` (minus ``offset(rows)``, e.g. chance) at the final checkpoints of the runs in scope."""

    def select(tables: StudyTables) -> pd.DataFrame:
        rows = scope(tables.final_tasks)
        if rows.empty or metric not in rows:
            return _empty("unit", "value")
        value = rows[metric] - (offset(rows) if offset is not None else 0.0)
        return _base(rows, ()).assign(unit=rows["task"].astype(str), value=value)[
            ["stratum", "seed", "run", "unit", "value"]
        ]

    return select


def level(metric: str, threshold: float, *, above: bool = True, scope: Scope = every_run) -> Rule:
    """Per seed, the mean of ``metric`` over the fixed tasks at the final checkpoint lies above (or
    below) ``threshold``: t over seeds."""
    relation = ">" if above else "<"
    return Rule(
        "level",
        {
            "name": f"mean {metric} per seed {relation} {threshold}",
            "threshold": threshold,
            "direction": 1 if above else -1,
        },
        _final_values(metric, scope),
    )


def within(
    metric: str,
    low: float,
    high: float,
    *,
    scope: Scope = every_run,
    offset: Offset | None = None,
    offset_name: str = "",
) -> Rule:
    """Per seed, the mean of ``metric`` (minus ``offset(rows)``, named ``offset_name``, e.g. chance 1/m)
    lies inside (low, high): TOST over seeds; fails if it lies significantly outside."""
    what = f"{metric} − {offset_name}" if offset is not None else metric
    return Rule(
        "equivalence", {"name": f"mean {what} per seed", "low": low, "high": high}, _final_values(metric, scope, offset)
    )


def _curve(columns: dict[str, str], scope: Scope) -> Select:
    """Checkpoint rows of the runs in scope: ``columns`` maps output column -> table column."""
    out = tuple(["step", *columns])

    def select(tables: StudyTables) -> pd.DataFrame:
        rows = scope(tables.checkpoints)
        if rows.empty or any(c not in rows for c in columns.values()):
            return _empty(*out)
        renamed = _base(rows, ()).assign(**{new: rows[old] for new, old in columns.items()})
        return renamed[["stratum", "seed", "run", *out]]

    return select


def trend(metric: str, direction: int, *, scope: Scope = every_run) -> Rule:
    """``metric`` rises (direction +1) or falls (−1) over meta-training: Spearman ρ(step, metric) of
    each run, t over seeds."""
    return Rule("trend", {"metric": metric, "direction": direction}, _curve({"value": metric}, scope))


def association(
    x: str, y: str, *, sign: int = 1, scope: Scope = every_run, method: Literal["pearson", "spearman"] = "spearman"
) -> Rule:
    """``x`` and ``y`` move together over meta-training (``sign``): their correlation over each run's
    checkpoints, t over seeds."""
    return Rule("association", {"x": x, "y": y, "sign": sign, "method": method}, _curve({"x": x, "y": y}, scope))


def no_trend(
    metric: str, margin: float, *, scope: Scope = every_run, fails: Literal["outside", "above"] = "outside"
) -> Rule:
    """``metric`` neither rises nor falls over meta-training: Spearman ρ(step, metric) of each run, TOST over
    seeds that the mean ρ lies inside ±``margin`` (:func:`decide_no_trend`); ``fails="above"`` lets only a
    significant rise beyond ``margin`` fail the claim ("does not grow")."""
    return Rule("no-trend", {"metric": metric, "margin": margin, "fails": fails}, _curve({"value": metric}, scope))


def tracks_better(
    x: str, versus: str, y: str, *, scope: Scope = every_run, method: Literal["pearson", "spearman"] = "spearman"
) -> Rule:
    """``x`` moves with ``y`` over meta-training more than ``versus`` does: per run, r(x, y) − r(versus, y)
    over its checkpoints, t over seeds that the gap is positive (:func:`decide_association_gap`)."""
    return Rule(
        "association-gap",
        {"x": x, "versus": versus, "y": y, "method": method},
        _curve({"x": x, "versus": versus, "y": y}, scope),
    )


def peak_then_fall(metric: str, *, scope: Scope = every_run, skip_initial: bool = True) -> Rule:
    """``metric`` rises to an interior peak, then falls (:func:`decide_peak`); ``skip_initial`` leaves
    the initialisation (step 0) out, as the thesis measures after each epoch."""
    return Rule("peak", {"metric": metric, "skip_initial": skip_initial}, _curve({"value": metric}, scope))


def falls_after_peak_of(metric: str, peak_of: str, *, scope: Scope = every_run, skip_initial: bool = True) -> Rule:
    """After ``peak_of`` (accuracy) peaks and degrades significantly, ``metric`` keeps falling
    (:func:`decide_after_peak`)."""
    return Rule(
        "after-peak",
        {"metric": metric, "peak_of": peak_of, "skip_initial": skip_initial},
        _curve({"value": metric, "reference": peak_of}, scope),
    )


# --------------------------------------------------------------------------------------------
# Records (results/claims.json) and the rows files
# --------------------------------------------------------------------------------------------


def rows_csv(rows: pd.DataFrame) -> str:
    """The rows file's text (tidy CSV, one row per observation that entered the statistic)."""
    return rows.to_csv(index=False, lineterminator="\n")


def claim_record(
    result: ClaimResult, rows_path: str, rows_sha256: str, tables: StudyTables, cfg: AggregateConfig
) -> dict:
    """The JSON record of one evaluated claim (metaland.claims_file.ClaimRecord, less profile and mlflow)."""
    claim, rows = result.claim, result.rows
    return {
        "id": claim.id,
        "study": claim.study,
        "seed": claim.seed,
        "section": claim.section,
        "claim": claim.claim,
        "category": claim.category,
        "rule": claim.rule,
        "method": _clean(method_of(claim)),
        "aggregate": cfg.model_dump(),
        "statistic": result.statistic(),
        "verdict": result.verdict,
        "reason": result.reason,
        "power": result.power,
        "rows": {
            "path": rows_path,
            "sha256": rows_sha256,
            "n_rows": len(rows),
            "runs": sorted(rows["run"].dropna().astype(str).unique()) if "run" in rows else [],
            "seeds": sorted(int(s) for s in rows["seed"].dropna().unique()) if "seed" in rows else [],
            "strata": sorted(rows["stratum"].dropna().astype(str).unique()) if "stratum" in rows else [],
        },
        "inputs": claim_inputs(tables),
    }


def claim_inputs(tables: StudyTables) -> dict:
    """Every run of the study's tables with its probed checkpoint steps."""
    frame = tables.checkpoints
    steps = {} if frame.empty else {str(r): sorted(int(s) for s in g["step"]) for r, g in frame.groupby("run")}
    return {"runs": [{"run": run, "checkpoints": f"checkpoints/{run}", "steps": s} for run, s in sorted(steps.items())]}
