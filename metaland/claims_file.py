"""The schema of ``results/claims.json``, shared by every study (docs/report.md).

One record per claim: what the seed says (id, seed, section, the claim in one sentence), how it is
tested here (the rule, fixed in code before the data, and the statistic with its n and CI or
p-value), the verdict at this scale and why, the scale profile, the inputs (runs and the probed
checkpoint steps) and the MLflow runs of the probe stages that wrote them. Aggregate validates the
record before writing it; :func:`json_schema` gives the same description as a JSON Schema.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

VERDICTS = ("holds", "fails", "inconclusive")
Number = float | int | None  # None stands for NaN (undefined: too few values)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StatisticRecord(_Strict):
    name: str = Field(description="What is computed, e.g. 'mean spearman_rho(step, pc) over runs'.")
    value: Number = Field(description="Its value (null when undefined at this scale).")
    n: int = Field(ge=0, description="How many values it summarises (runs, tasks or paired values).")
    p_value: Number = Field(None, description="Two-sided p-value, for correlation rules (the weakest run's).")
    ci: tuple[Number, Number] | None = Field(None, description="Confidence interval (aggregate.confidence).")
    per_run: dict[str, dict[str, Number | str]] = Field(
        default_factory=dict, description="The statistic per run (or per component of an all-hold rule)."
    )


class InputRun(_Strict):
    run: str = Field(description="Run key (params.yaml runs.<run>).")
    checkpoints: str = Field(description="Folder of its extracted checkpoints (extract stage output).")
    steps: list[int] = Field(description="The meta-training steps of its probed checkpoints.")


class Inputs(_Strict):
    runs: list[InputRun] = Field(description="Every run of the study, with its probed checkpoint steps.")
    measured_runs: list[str] = Field(description="The runs the statistic reports one by one (per-run rules).")


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
    rule: str = Field(description="The threshold rule that turns the statistic into a verdict, fixed before the data.")
    statistic: StatisticRecord
    verdict: Literal["holds", "fails", "inconclusive"]
    reason: str = Field(description="Why the rule gave this verdict here.")
    inputs: Inputs
    profile: str = Field(description="The scale profile (params.yaml `profile`) that produced the tables.")
    mlflow: MlflowRuns


class ClaimsFile(_Strict):
    profile: str
    counts: dict[Literal["holds", "fails", "inconclusive"], int]
    claims: list[ClaimRecord]


def validate(record: dict) -> ClaimsFile:
    """Check a claims record against the schema (pydantic ``ValidationError`` if it does not match)."""
    return ClaimsFile.model_validate(record)


def json_schema() -> dict:
    """The schema as JSON Schema (draft 2020-12), for tools outside Python."""
    return ClaimsFile.model_json_schema()
