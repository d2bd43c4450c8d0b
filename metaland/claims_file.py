"""The schema of ``results/claims.json``, shared by every study (docs/report.md, docs/claims.md).

One record per claim: what the seed says (id, seed, section, the claim in one sentence), whether it
is a *finding* or a sanity *check*, how it is tested here (the rule in words; the method: rule
family and params per component, fixed in code before the data), the statistic (per stratum and
component: the per-seed values, their t inference and one-sided p-values; the claim's p-value and
its Holm adjustment over the study's findings), the verdict at this scale and why, the power of an
inconclusive verdict, the rows that entered the statistic (``results/claims/<study>/<claim>.csv``
with their sha256: ``python -m metaland claim <id>`` recomputes the verdict from them), the scale
profile, the inputs and the MLflow runs of the probe stages that wrote them. Aggregate validates the
record before writing it; :func:`json_schema` gives the same description as a JSON Schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

VERDICTS = ("holds", "fails", "inconclusive")
CATEGORIES = ("finding", "check")
Number = float | int | None  # None stands for NaN (undefined: too few values)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PartRecord(BaseModel):
    """One component × stratum of a claim (families add their own fields: pairs, band, inferences...)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    component: str = Field(description="The named part of an all-of claim ('' for a single rule).")
    stratum: str = Field(description="The identity knobs the inference holds fixed (dataset, backbone, ...).")
    name: str = Field(description="What each seed contributes, e.g. 'Spearman ρ(step, value) per run'.")
    estimate: Number = Field(description="Mean over seeds.")
    ci: list[Number] = Field(description="Two-sided Student-t CI over seeds (aggregate.confidence).")
    n_seeds: int = Field(ge=0)
    sd_between_seeds: Number
    p_holds: Number = Field(description="One-sided p of the claimed direction.")
    p_fails: Number = Field(description="One-sided p of the opposite direction.")
    per_seed: dict[str, Number] = Field(description="Seed -> its value.")
    note: str = Field(description="Why this part cannot decide ('' when it can).")


class StatisticRecord(_Strict):
    name: str = Field(description="The weakest decidable part's per-seed quantity.")
    value: Number = Field(description="Its mean over seeds (null when undefined at this scale).")
    n: int = Field(ge=0, description="Seeds behind it.")
    ci: list[Number] | None = Field(None, description="Its CI over seeds.")
    p_value: Number = Field(description="The claim's p-value: 2 × min(p_holds, p_fails).")
    p_adjusted: Number = Field(description="Holm-adjusted over the study's findings (checks: unadjusted).")
    p_holds: Number = Field(description="Intersection-union p of 'every part holds' (the largest).")
    p_fails: Number = Field(description="Bonferroni p of 'some part shows the opposite'.")
    parts: list[PartRecord]


class RowsRecord(_Strict):
    path: str = Field(description="The rows that entered the statistic, relative to results/.")
    sha256: str
    n_rows: int = Field(ge=0)
    runs: list[str]
    seeds: list[int]
    strata: list[str]


class InputRun(_Strict):
    run: str = Field(description="Run key (params.yaml runs.<run>).")
    checkpoints: str = Field(description="Folder of its extracted checkpoints (extract stage output).")
    steps: list[int] = Field(description="The meta-training steps of its probed checkpoints.")


class Inputs(_Strict):
    runs: list[InputRun] = Field(description="Every run of the study, with its probed checkpoint steps.")


class MlflowRuns(_Strict):
    experiment: str = Field(description="The MLflow experiment of the study's stage runs.")
    probe_runs: dict[str, str | None] = Field(
        description="Per input run, the id of the probe-stage run that wrote its tables; null when the "
        "tracking store holds none (outputs restored from the DVC cache, or another store)."
    )


class ClaimRecord(_Strict):
    id: str = Field(description="Unique claim id; starts with the study key.")
    study: str
    seed: str = Field(description="Seed number (000-004).")
    section: str = Field(description="Where the seed makes the claim (section / figure / table).")
    claim: str = Field(description="The claim in one sentence.")
    category: Literal["finding", "check"] = Field(description="A finding of the seed, or a sanity check.")
    rule: str = Field(description="The rule that turns the statistic into a verdict, fixed before the data.")
    method: dict[str, dict[str, Any]] = Field(description="Component -> {family, params} (metaland.claims).")
    aggregate: dict[str, Any] = Field(description="The study's aggregate params (confidence, alpha, min_seeds).")
    statistic: StatisticRecord
    verdict: Literal["holds", "fails", "inconclusive"]
    reason: str = Field(description="Why the rule gave this verdict here.")
    power: dict[str, Any] = Field(
        description="For an inconclusive verdict: seeds, between-seed s.d., minimal detectable effect and the "
        "seeds that would detect the published (else observed) effect; empty otherwise."
    )
    rows: RowsRecord
    inputs: Inputs
    profile: str = Field(description="The scale profile (params.yaml `profile`) that produced the tables.")
    mlflow: MlflowRuns


Counts = dict[Literal["holds", "fails", "inconclusive"], int]


class ClaimsFile(_Strict):
    profile: str
    counts: Counts = Field(description="Verdicts of the findings (checks apart).")
    checks: Counts = Field(description="Verdicts of the sanity checks.")
    by_study: dict[str, dict[str, Counts]] = Field(description="Study -> {findings, checks} -> verdict counts.")
    claims: list[ClaimRecord]


def counts(claims: list[dict], category: str) -> dict[str, int]:
    return {v: sum(c["verdict"] == v for c in claims if c["category"] == category) for v in VERDICTS}


def summary(profile: str, claims: list[dict]) -> dict:
    """The claims file: the records with their counts, overall and per study."""
    studies = sorted({c["study"] for c in claims})
    return {
        "profile": profile,
        "counts": counts(claims, "finding"),
        "checks": counts(claims, "check"),
        "by_study": {
            s: {
                kind: counts([c for c in claims if c["study"] == s], k)
                for kind, k in (("findings", "finding"), ("checks", "check"))
            }
            for s in studies
        },
        "claims": claims,
    }


def validate(record: dict) -> ClaimsFile:
    """Check a claims record against the schema (pydantic ``ValidationError`` if it does not match)."""
    return ClaimsFile.model_validate(record)


def json_schema() -> dict:
    """The schema as JSON Schema (draft 2020-12), for tools outside Python."""
    return ClaimsFile.model_json_schema()
