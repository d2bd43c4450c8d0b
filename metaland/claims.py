"""Claims: each quantitative claim of a seed, the statistic that tests it here, and a verdict.

A claim is code, registered by its study module before any data exists: an id, the seed and
section, the claim in one sentence, a rule written out in words, and a ``test`` that computes
the statistic from the study tables and applies the rule. Verdicts are ``holds``, ``fails`` or
``inconclusive`` *at this scale* (the profile that produced the tables); ``results/claims.json``
collects them all.

The rule builders below are shared by every study; each takes a ``scope`` (:func:`where`) naming
the runs the claim speaks about:

* :func:`trend` — a metric rises (or falls) over meta-training: Spearman ρ(step, metric) per run.
* :func:`correlation` — two metrics move together across checkpoints: Pearson r or Spearman ρ per run.
* :func:`peak_then_fall` — a metric first rises to an interior peak, then falls.
* :func:`falls_after_peak_of` — a metric keeps falling after another one (accuracy) has peaked.
* :func:`stays_within` — a metric stays within ± a tolerance of a value at every checkpoint.
* :func:`mean_equals` — a mean is statistically indistinguishable from a value (CI contains it).
* :func:`mean_within` — a mean lies in a band (its CI inside it; fails if the CI is outside it).
* :func:`improves_on` — one algorithm beats another on the same tasks (paired CI of the difference).
* :func:`improves_over_training` — one algorithm's curve lies above (below) another's over
  meta-training (paired CI over seeds × checkpoints: "converges faster").
* :func:`improves_at_milestone` — a run's metric at a milestone of its training (the end of a
  pretraining phase) beats its value at the initialisation, on the same tasks (paired CI).
* :func:`mean_exceeds` — a mean at the final checkpoints lies above a threshold (its CI does).
* :func:`all_hold` — several named tests must all hold (one claim about several variants).

Per-run rules give ``holds`` only if every run in scope passes, ``fails`` if any run shows the
opposite significantly, and ``inconclusive`` otherwise (including too few runs or checkpoints).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import pandas as pd

from metaland.config import AggregateConfig
from metaland.registry import Registry
from metaland.results import INITIAL, StudyTables
from metaland.stats import mean_ci, pearson, spearman

Verdict = Literal["holds", "fails", "inconclusive"]
MIN_CHECKPOINTS = 4


@dataclass(frozen=True)
class Statistic:
    name: str
    value: float
    n: int
    p_value: float | None = None
    ci: tuple[float, float] | None = None
    per_run: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Evidence:
    statistic: Statistic
    verdict: Verdict
    reason: str


Test = Callable[[StudyTables, AggregateConfig], Evidence]


@dataclass(frozen=True)
class Claim:
    id: str
    study: str
    seed: str
    section: str
    claim: str
    rule: str
    test: Test


CLAIMS: Registry[Claim] = Registry("claim")


def register(claim: Claim) -> Claim:
    return CLAIMS.register(claim.id, claim)


def claims_of(study: str) -> list[Claim]:
    """The claims a study module registered (looking the study up imports its module)."""
    from metaland.studies import STUDIES  # lazy: study modules import this module

    STUDIES.get(study)
    return [claim for _, claim in CLAIMS.items() if claim.study == study]


def evaluate(claim: Claim, tables: StudyTables, cfg: AggregateConfig) -> dict:
    """The JSON record of one claim: what it says, how it is tested, and the verdict here."""
    evidence = claim.test(tables, cfg)
    return {
        "id": claim.id,
        "study": claim.study,
        "seed": claim.seed,
        "section": claim.section,
        "claim": claim.claim,
        "rule": claim.rule,
        "statistic": _clean(asdict(evidence.statistic)),
        "verdict": evidence.verdict,
        "reason": evidence.reason,
        "inputs": claim_inputs(tables, evidence.statistic),
    }


def claim_inputs(tables: StudyTables, statistic: Statistic) -> dict:
    """What a claim was tested on: every run of the study's tables with its probed checkpoint steps
    (a claim's scope is code inside its test, so these are the runs it *could* read), and the runs
    its statistic reports one by one (per-run rules; empty for pooled ones)."""
    frame = tables.checkpoints
    steps = {} if frame.empty else {str(r): sorted(int(s) for s in g["step"]) for r, g in frame.groupby("run")}
    return {
        "runs": [{"run": run, "checkpoints": f"checkpoints/{run}", "steps": s} for run, s in sorted(steps.items())],
        "measured_runs": sorted(set(statistic.per_run) & set(steps)),
    }


def _clean(value):
    """JSON-safe: NaN -> None, tuples -> lists, recursively."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Rule builders
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


def every_run(frame: pd.DataFrame) -> pd.DataFrame:
    return frame


def _runs(tables: StudyTables, scope: Scope) -> dict[str, pd.DataFrame]:
    frame = scope(tables.checkpoints)
    return {run: rows.sort_values("step") for run, rows in frame.groupby("run", sort=True)}


def _per_run_verdict(
    passes: dict[str, bool], opposes: dict[str, bool], what: str, against: str | None = None
) -> tuple[Verdict, str]:
    """Combine per-run outcomes; ``against`` names what a failing run shows (default: the opposite)."""
    if not passes:
        return "inconclusive", f"no run in scope has {MIN_CHECKPOINTS} or more probed checkpoints"
    against_runs = sorted(run for run, bad in opposes.items() if bad)
    against_text = against or f"the opposite of {what} is significant"
    if against_runs:
        return "fails", f"{against_text} in {', '.join(against_runs)}"
    if all(passes.values()):
        return "holds", f"{what} in all {len(passes)} runs"
    short = sorted(run for run, ok in passes.items() if not ok)
    return "inconclusive", f"{what} is not significant in {', '.join(short)}"


def trend(metric: str, direction: int, *, scope: Scope = every_run, min_rho: float = 0.5) -> Test:
    """``metric`` rises (direction +1) or falls (-1) with the meta-training step, in every run."""
    word = "rises" if direction > 0 else "falls"

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        per_run, passes, opposes = {}, {}, {}
        for run, rows in _runs(tables, scope).items():
            if len(rows) < MIN_CHECKPOINTS:
                continue
            c = spearman(rows["step"], rows[metric])
            per_run[run] = {"rho": c.r, "p_value": c.p, "n": c.n}
            signed = direction * c.r if not math.isnan(c.r) else math.nan
            passes[run] = signed >= min_rho and c.p < cfg.alpha
            opposes[run] = signed < 0 and c.p < cfg.alpha
        verdict, reason = _per_run_verdict(
            passes, opposes, f"{metric} {word} (Spearman ρ ≥ {min_rho}, p < {cfg.alpha})"
        )
        return Evidence(_summary(f"spearman_rho(step, {metric})", per_run, "rho"), verdict, reason)

    return test


def correlation(
    x: str, y: str, *, sign: int = 1, scope: Scope = every_run, method: Literal["pearson", "spearman"] = "pearson"
) -> Test:
    """``x`` and ``y`` correlate with the given sign across checkpoints, in every run (Pearson r or
    Spearman's rank ρ, with its two-sided p-value)."""
    measure = pearson if method == "pearson" else spearman
    name = "Pearson r" if method == "pearson" else "Spearman ρ"

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        per_run, passes, opposes = {}, {}, {}
        for run, rows in _runs(tables, scope).items():
            if len(rows) < MIN_CHECKPOINTS:
                continue
            c = measure(rows[x], rows[y])
            per_run[run] = {"r": c.r, "p_value": c.p, "n": c.n}
            signed = sign * c.r if not math.isnan(c.r) else math.nan
            passes[run] = signed > 0 and c.p < cfg.alpha
            opposes[run] = signed < 0 and c.p < cfg.alpha
        relation = "positive" if sign > 0 else "negative"
        verdict, reason = _per_run_verdict(passes, opposes, f"a significant {relation} {name}({x}, {y})")
        return Evidence(_summary(f"{method}({x}, {y})", per_run, "r"), verdict, reason)

    return test


def peak_then_fall(metric: str, *, scope: Scope = every_run, min_rho: float = 0.5) -> Test:
    """``metric`` peaks strictly inside the run, then falls (Spearman over the peak and after)."""

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        per_run, passes, opposes = {}, {}, {}
        for run, rows in _runs(tables, scope).items():
            if len(rows) < MIN_CHECKPOINTS:
                continue
            values = rows[metric].to_numpy()
            peak = int(values.argmax())
            after = rows.iloc[peak:]
            c = spearman(after["step"], after[metric])
            interior = 0 < peak < len(rows) - 1
            per_run[run] = {
                "peak_step": float(rows["step"].iloc[peak]),
                "rho_after_peak": c.r,
                "p_value": c.p,
                "n_after_peak": c.n,
            }
            passes[run] = interior and c.n >= 3 and -c.r >= min_rho and c.p < cfg.alpha
            opposes[run] = not interior
        verdict, reason = _per_run_verdict(
            passes,
            opposes,
            f"an interior peak of {metric} followed by a significant fall",
            against=f"{metric} peaks at the first or last checkpoint (no rise-then-fall)",
        )
        return Evidence(
            _summary(f"spearman_rho(step, {metric}) after its peak", per_run, "rho_after_peak"), verdict, reason
        )

    return test


def falls_after_peak_of(metric: str, peak_of: str, *, scope: Scope = every_run, min_rho: float = 0.5) -> Test:
    """After ``peak_of`` (accuracy) peaks at an interior checkpoint, ``metric`` keeps falling
    (Spearman ρ(step, metric) from that checkpoint on). A run whose ``peak_of`` peaks at its
    last checkpoint did not overfit and counts as inconclusive."""

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        per_run, passes, opposes = {}, {}, {}
        for run, rows in _runs(tables, scope).items():
            if len(rows) < MIN_CHECKPOINTS:
                continue
            peak = int(rows[peak_of].to_numpy().argmax())
            after = rows.iloc[peak:]
            c = spearman(after["step"], after[metric])
            per_run[run] = {
                f"{peak_of}_peak_step": float(rows["step"].iloc[peak]),
                f"{peak_of}_drop_after_peak": float(rows[peak_of].iloc[peak] - rows[peak_of].iloc[-1]),
                "rho_after_peak": c.r,
                "p_value": c.p,
                "n_after_peak": c.n,
            }
            significant = c.n >= 3 and c.p < cfg.alpha
            passes[run] = peak < len(rows) - 1 and significant and -c.r >= min_rho
            opposes[run] = significant and c.r > 0
        verdict, reason = _per_run_verdict(
            passes,
            opposes,
            f"{metric} falls significantly after {peak_of} peaks",
            against=f"{metric} rises significantly after {peak_of} peaks",
        )
        if verdict == "inconclusive" and per_run and all(v["n_after_peak"] <= 1 for v in per_run.values()):
            reason = f"{peak_of} peaks at the last checkpoint of every run in scope: no overfitting to look at"
        return Evidence(
            _summary(f"spearman_rho(step, {metric}) after the {peak_of} peak", per_run, "rho_after_peak"),
            verdict,
            reason,
        )

    return test


def stays_within(metric: str, value: float, tolerance: float, *, scope: Scope = every_run) -> Test:
    """|metric − value| ≤ tolerance at every probed checkpoint of every run in scope."""

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        runs = _runs(tables, scope)
        per_run = {
            run: {"max_abs_deviation": float((rows[metric] - value).abs().max()), "p_value": math.nan, "n": len(rows)}
            for run, rows in runs.items()
        }
        stat = _summary(f"max |{metric} − {value}|", per_run, "max_abs_deviation")
        if not per_run:
            return Evidence(stat, "inconclusive", "no run in scope")
        outside = sorted(run for run, v in per_run.items() if not v["max_abs_deviation"] <= tolerance)
        if outside:
            return Evidence(stat, "fails", f"{metric} leaves {value} ± {tolerance} in {', '.join(outside)}")
        return Evidence(stat, "holds", f"{metric} stays within {value} ± {tolerance} in all {len(per_run)} runs")

    return test


def improves_on(
    metric: str,
    treatment: Scope,
    baseline: Scope,
    *,
    pair_on: tuple[str, ...] = ("seed", "task"),
    better: Literal["higher", "lower"] = "higher",
) -> Test:
    """``treatment`` runs have a better (higher, or ``lower``) per-task ``metric`` than ``baseline``
    runs at their final checkpoints, on the same fixed tasks (paired over ``pair_on``): CI of the
    mean improvement. Tasks a probe did not measure (first-k probes) are left out of the pairs."""
    sign, order = (1.0, "treatment − baseline") if better == "higher" else (-1.0, "baseline − treatment")

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        keep = [*pair_on, metric]
        pairs = (
            treatment(tables.final_tasks)[keep]
            .merge(baseline(tables.final_tasks)[keep], on=list(pair_on), suffixes=("_treatment", "_baseline"))
            .dropna()
        )
        return _paired_verdict(
            f"mean paired difference in {metric} ({order})",
            pairs[f"{metric}_treatment"],
            pairs[f"{metric}_baseline"],
            sign,
            cfg,
            what="tasks",
        )

    return test


def _paired_verdict(
    stat_name: str, treatment: pd.Series, baseline: pd.Series, sign: float, cfg: AggregateConfig, *, what: str
) -> Evidence:
    """Mean and CI of sign × (treatment − baseline) over paired ``what``: holds above 0, fails below 0."""
    ci = mean_ci(sign * (treatment - baseline), cfg.confidence)
    means = {
        "treatment": float(treatment.mean()) if ci.n else math.nan,
        "baseline": float(baseline.mean()) if ci.n else math.nan,
    }
    stat = Statistic(stat_name, ci.mean, ci.n, ci=(ci.low, ci.high), per_run={"means": means})
    if math.isnan(ci.low):
        return Evidence(stat, "inconclusive", f"no paired {what} (are both runs in this profile?)")
    level = f"{cfg.confidence:.0%}"
    if ci.low > 0:
        return Evidence(stat, "holds", f"the {level} CI of the paired difference lies above 0")
    if ci.high < 0:
        return Evidence(stat, "fails", f"the {level} CI of the paired difference lies below 0")
    return Evidence(stat, "inconclusive", f"the {level} CI of the paired difference contains 0")


def improves_over_training(
    metric: str,
    treatment: Scope,
    baseline: Scope,
    *,
    pair_on: tuple[str, ...] = ("setting", "seed", "step"),
    better: Literal["higher", "lower"] = "higher",
) -> Test:
    """``treatment``'s per-checkpoint ``metric`` is better than ``baseline``'s along meta-training:
    CI of the mean paired difference over every probed checkpoint after the initial one (the two
    start from the same θ when they share a seed), paired over ``pair_on``."""
    sign, order = (1.0, "treatment − baseline") if better == "higher" else (-1.0, "baseline − treatment")

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        keep = [*pair_on, metric]
        trained = tables.checkpoints[tables.checkpoints["step"] > 0]
        pairs = (
            treatment(trained)[keep]
            .merge(baseline(trained)[keep], on=list(pair_on), suffixes=("_treatment", "_baseline"))
            .dropna()
        )
        return _paired_verdict(
            f"mean paired difference in {metric} over meta-training ({order})",
            pairs[f"{metric}_treatment"],
            pairs[f"{metric}_baseline"],
            sign,
            cfg,
            what="checkpoints",
        )

    return test


def improves_at_milestone(
    metric: str,
    milestone: str,
    *,
    reference: str = INITIAL,
    scope: Scope = every_run,
    pair_on: tuple[str, ...] = ("run", "task"),
) -> Test:
    """Each run's per-task ``metric`` at its ``milestone`` checkpoint is higher than at ``reference``
    (default: the initialisation), on the same fixed tasks (paired over ``pair_on``): CI of the mean gain."""

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        rows = scope(tables.milestone_tasks)
        keep = [*pair_on, metric]
        if "milestone" not in rows:
            rows = pd.DataFrame(columns=[*keep, "milestone"])
        pairs = (
            rows[rows["milestone"] == milestone][keep]
            .merge(rows[rows["milestone"] == reference][keep], on=list(pair_on), suffixes=("_treatment", "_baseline"))
            .dropna()
        )
        return _paired_verdict(
            f"mean paired difference in {metric} ({milestone} − {reference})",
            pairs[f"{metric}_treatment"].astype(float),
            pairs[f"{metric}_baseline"].astype(float),
            1.0,
            cfg,
            what="tasks",
        )

    return test


def mean_exceeds(metric: str, threshold: float, *, scope: Scope = every_run) -> Test:
    """The mean of a per-task ``metric`` over the final checkpoints of the runs in scope exceeds
    ``threshold``: holds if its CI lies above it, fails if below, inconclusive otherwise."""

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        ci = mean_ci(scope(tables.final_tasks)[metric].dropna(), cfg.confidence)
        stat = Statistic(
            f"mean {metric} − {threshold}", ci.mean - threshold, ci.n, ci=(ci.low - threshold, ci.high - threshold)
        )
        if math.isnan(ci.low):
            return Evidence(stat, "inconclusive", "too few probed tasks for an interval")
        level = f"{cfg.confidence:.0%}"
        if ci.low > threshold:
            return Evidence(stat, "holds", f"the {level} CI of the mean lies above {threshold}")
        if ci.high < threshold:
            return Evidence(stat, "fails", f"the {level} CI of the mean lies below {threshold}")
        return Evidence(stat, "inconclusive", f"the {level} CI of the mean contains {threshold}")

    return test


def all_hold(tests: dict[str, Test]) -> Test:
    """Every named test holds: ``fails`` if any fails, ``holds`` if all hold, else ``inconclusive``.
    The statistic is the weakest component's (smallest value), with every component's in ``per_run``."""

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        evidence = {name: part(tables, cfg) for name, part in tests.items()}
        components = {
            name: {
                "value": e.statistic.value,
                "ci_low": e.statistic.ci[0] if e.statistic.ci else math.nan,
                "ci_high": e.statistic.ci[1] if e.statistic.ci else math.nan,
                "n": e.statistic.n,
                "verdict": e.verdict,
            }
            for name, e in evidence.items()
        }
        measured = [name for name, e in evidence.items() if not math.isnan(e.statistic.value)]
        weakest = evidence[min(measured, key=lambda n: evidence[n].statistic.value)] if measured else None
        first = next(iter(evidence.values()))
        stat = Statistic(
            f"weakest of {len(tests)}: {first.statistic.name}",
            weakest.statistic.value if weakest else math.nan,
            weakest.statistic.n if weakest else 0,
            ci=weakest.statistic.ci if weakest else None,
            per_run=components,
        )
        by_verdict = {v: sorted(n for n, e in evidence.items() if e.verdict == v) for v in ("holds", "fails")}
        if by_verdict["fails"]:
            return Evidence(stat, "fails", f"it fails for {', '.join(by_verdict['fails'])}")
        if len(by_verdict["holds"]) == len(tests):
            return Evidence(stat, "holds", f"it holds for all of {', '.join(tests)}")
        open_ = "; ".join(f"{n}: {e.reason}" for n, e in sorted(evidence.items()) if e.verdict != "holds")
        return Evidence(stat, "inconclusive", f"not every part holds ({open_})")

    return test


def mean_equals(metric: str, expected: Callable[[pd.DataFrame], float], *, scope: Scope = every_run) -> Test:
    """The mean of a per-task ``metric`` at the final checkpoints is compatible with ``expected``
    (its confidence interval over tasks contains it)."""

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        rows = scope(tables.final_tasks)
        if rows.empty:
            return Evidence(Statistic(f"mean {metric}", math.nan, 0), "inconclusive", "no probed tasks")
        target = expected(rows)
        ci = mean_ci(rows[metric], cfg.confidence)
        stat = Statistic(f"mean {metric} − expected", ci.mean - target, ci.n, ci=(ci.low - target, ci.high - target))
        if math.isnan(ci.low):
            return Evidence(stat, "inconclusive", "too few tasks for an interval")
        if ci.low <= target <= ci.high:
            return Evidence(stat, "holds", f"the {cfg.confidence:.0%} CI of the mean contains {target:.4g}")
        return Evidence(stat, "fails", f"the {cfg.confidence:.0%} CI of the mean excludes {target:.4g}")

    return test


def sign_of_mean(name: str, values, cfg: AggregateConfig, *, above: str, below: str) -> Evidence:
    """Verdict on a mean difference: holds if its CI lies above 0, fails if below, else inconclusive;
    ``above`` / ``below`` say in words what each side means (for the reason)."""
    ci = mean_ci(values, cfg.confidence)
    stat = Statistic(name, ci.mean, ci.n, ci=(ci.low, ci.high))
    level = f"{cfg.confidence:.0%}"
    if math.isnan(ci.low):
        return Evidence(stat, "inconclusive", "too few paired values for an interval")
    if ci.low > 0:
        return Evidence(stat, "holds", f"the {level} CI lies above 0: {above}")
    if ci.high < 0:
        return Evidence(stat, "fails", f"the {level} CI lies below 0: {below}")
    return Evidence(stat, "inconclusive", f"the {level} CI contains 0")


def mean_within(metric: str, low: float, high: float, *, scope: Scope = every_run) -> Test:
    """The mean of a per-task ``metric`` at the final checkpoints lies in [low, high]: holds if its
    CI over tasks is inside the band, fails if the CI is entirely outside it, else inconclusive."""

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        rows = scope(tables.final_tasks)
        values = rows.get(metric, [])
        ci = mean_ci(values, cfg.confidence)
        stat = Statistic(f"mean {metric}", ci.mean, ci.n, ci=(ci.low, ci.high))
        level, band = f"{cfg.confidence:.0%}", f"[{low:.4g}, {high:.4g}]"
        if math.isnan(ci.low):
            return Evidence(stat, "inconclusive", "too few probed tasks for an interval (is the run in this profile?)")
        if low <= ci.low and ci.high <= high:
            return Evidence(stat, "holds", f"the {level} CI of the mean lies inside {band}")
        if ci.high < low or ci.low > high:
            return Evidence(stat, "fails", f"the {level} CI of the mean lies outside {band}")
        return Evidence(stat, "inconclusive", f"the {level} CI of the mean straddles a bound of {band}")

    return test


def _summary(name: str, per_run: dict[str, dict[str, float]], key: str) -> Statistic:
    """Mean of the per-run statistic; ``p_value`` is the largest per-run p-value (the weakest run)."""
    values = [v[key] for v in per_run.values() if not math.isnan(v[key])]
    p_values = [v["p_value"] for v in per_run.values() if not math.isnan(v["p_value"])]
    mean = sum(values) / len(values) if values else math.nan
    return Statistic(f"mean {name} over runs", mean, len(per_run), max(p_values) if p_values else None, per_run=per_run)
