"""Claims: each quantitative claim of a seed, the statistic that tests it here, and a verdict.

A claim is code, registered by its study module before any data exists: an id, the seed and
section, the claim in one sentence, a rule written out in words, and a ``test`` that computes
the statistic from the study tables and applies the rule. Verdicts are ``holds``, ``fails`` or
``inconclusive`` *at this scale* (the profile that produced the tables); ``results/claims.json``
collects them all.

The rule builders below are shared by every study:

* :func:`trend` — a metric rises (or falls) over meta-training: Spearman ρ(step, metric) per run.
* :func:`correlation` — two metrics move together across checkpoints: Pearson r per run.
* :func:`peak_then_fall` — a metric first rises to an interior peak, then falls.
* :func:`mean_equals` — a mean is statistically indistinguishable from a value (CI contains it).

Per-run rules give ``holds`` only if every run in scope passes, ``fails`` if any run shows the
opposite significantly, and ``inconclusive`` otherwise (including too few runs or checkpoints).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Literal

import pandas as pd

from metaland.config import AggregateConfig
from metaland.registry import Registry
from metaland.results import StudyTables
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
    """The claims a study module registered (importing the study registry registers them)."""
    import metaland.studies  # noqa: F401  (lazy: study modules import this module)

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


def _runs(tables: StudyTables, algorithms: Iterable[str] | None) -> dict[str, pd.DataFrame]:
    frame = tables.checkpoints
    if algorithms is not None:
        frame = frame[frame["algorithm"].isin(list(algorithms))]
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


def trend(metric: str, direction: int, *, algorithms: Iterable[str] | None = None, min_rho: float = 0.5) -> Test:
    """``metric`` rises (direction +1) or falls (-1) with the meta-training step, in every run."""
    word = "rises" if direction > 0 else "falls"

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        per_run, passes, opposes = {}, {}, {}
        for run, rows in _runs(tables, algorithms).items():
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


def correlation(x: str, y: str, *, sign: int = 1, algorithms: Iterable[str] | None = None) -> Test:
    """``x`` and ``y`` correlate with the given sign across checkpoints, in every run (Pearson)."""

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        per_run, passes, opposes = {}, {}, {}
        for run, rows in _runs(tables, algorithms).items():
            if len(rows) < MIN_CHECKPOINTS:
                continue
            c = pearson(rows[x], rows[y])
            per_run[run] = {"r": c.r, "p_value": c.p, "n": c.n}
            signed = sign * c.r if not math.isnan(c.r) else math.nan
            passes[run] = signed > 0 and c.p < cfg.alpha
            opposes[run] = signed < 0 and c.p < cfg.alpha
        relation = "positive" if sign > 0 else "negative"
        verdict, reason = _per_run_verdict(passes, opposes, f"a significant {relation} Pearson r({x}, {y})")
        return Evidence(_summary(f"pearson_r({x}, {y})", per_run, "r"), verdict, reason)

    return test


def peak_then_fall(metric: str, *, algorithms: Iterable[str] | None = None, min_rho: float = 0.5) -> Test:
    """``metric`` peaks strictly inside the run, then falls (Spearman over the peak and after)."""

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        per_run, passes, opposes = {}, {}, {}
        for run, rows in _runs(tables, algorithms).items():
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


def mean_equals(metric: str, expected: Callable[[pd.DataFrame], float]) -> Test:
    """The mean of a per-task ``metric`` at the final checkpoints is compatible with ``expected``
    (its confidence interval over tasks contains it)."""

    def test(tables: StudyTables, cfg: AggregateConfig) -> Evidence:
        rows = tables.final_tasks
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


def _summary(name: str, per_run: dict[str, dict[str, float]], key: str) -> Statistic:
    """Mean of the per-run statistic; ``p_value`` is the largest per-run p-value (the weakest run)."""
    values = [v[key] for v in per_run.values() if not math.isnan(v[key])]
    p_values = [v["p_value"] for v in per_run.values() if not math.isnan(v["p_value"])]
    mean = sum(values) / len(values) if values else math.nan
    return Statistic(f"mean {name} over runs", mean, len(per_run), max(p_values) if p_values else None, per_run=per_run)
