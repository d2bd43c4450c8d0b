"""``python -m metaland claim <id>``: a claim's verdict recomputed, step by step, from its rows file.

Reads ``results/claims.json`` for what the claim says and how it is decided (rule family and params
per component, the study's aggregate params, the other findings' p-values for Holm's adjustment) and
``results/claims/<study>/<claim>.csv`` for the rows, checks the rows' sha256, recomputes every part,
the combination, the adjustment and the verdict with :mod:`metaland.claims`, and says whether it
matches the recorded one.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path

import pandas as pd

from metaland.claims import Part, combine, decide, power_of, verdict_of
from metaland.config import AggregateConfig
from metaland.errors import MetalandError
from metaland.io import file_digest
from metaland.stats import holm


def _load(results_dir: Path, claim_id: str) -> tuple[dict, list[dict], pd.DataFrame]:
    path = Path(results_dir) / "claims.json"
    if not path.is_file():
        raise MetalandError(f"{path} is missing. Fix: run the aggregate stage (`dvc repro aggregate`).")
    claims = json.loads(path.read_text())["claims"]
    by_id = {c["id"]: c for c in claims}
    if claim_id not in by_id:
        close = difflib.get_close_matches(claim_id, by_id, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise MetalandError(
            f"no claim {claim_id!r} in {path}. Fix: {hint}`python -m metaland claim --list` lists the "
            f"{len(by_id)} claim ids."
        )
    record = by_id[claim_id]
    rows_path = Path(results_dir) / record["rows"]["path"]
    if not rows_path.is_file():
        raise MetalandError(f"{rows_path} is missing. Fix: rerun the aggregate stage (`dvc repro aggregate`).")
    if file_digest(rows_path) != record["rows"]["sha256"]:
        raise MetalandError(
            f"{rows_path} is not the file the verdict was computed from (its sha256 differs from claims.json). "
            "Fix: rerun the aggregate stage (`dvc repro aggregate --force`)."
        )
    rows = pd.read_csv(rows_path, keep_default_na=True)
    for column in ("rule", "component"):
        rows[column] = rows[column].astype(object).fillna("").astype(str) if column in rows else ""
    return record, claims, rows


def _number(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "undefined"
    return f"{value:.4g}"


def _part_lines(index: int, part: Part) -> list[str]:
    i = part.inference
    where = " / ".join(x for x in (part.component, part.stratum) if x)
    seeds = ", ".join(f"{s}: {_number(v)}" for s, v in part.per_seed.items()) or "none"
    lines = [f"  part {index}: {where}", f"    {part.name}"]
    if "points" not in part.extra:
        lines += [
            f"    per seed: {seeds}",
            f"    over {i.n} seeds: mean {_number(i.estimate)}, s.d. {_number(i.sd)}, "
            f"CI [{_number(i.ci_low)}, {_number(i.ci_high)}]",
        ]
    lines.append(f"    one-sided p: claimed direction {_number(part.p_holds)}, opposite {_number(part.p_fails)}")
    if "points" in part.extra:
        lines.append(
            f"    r = {_number(i.estimate)} over {i.n} runs: "
            + ", ".join(f"{run} ({_number(x)}, {_number(y)})" for run, x, y in part.extra["points"])
        )
    for inference in part.extra.get("inferences", []):
        lines.append(
            f"      {inference['name']}: mean {_number(inference['estimate'])}, "
            f"p(> 0) {_number(inference['p_greater'])}, p(< 0) {_number(inference['p_less'])}"
        )
    if "convention" in part.extra:
        mean, low, high, n = part.extra["convention"]
        lines.append(
            f"    field convention (not the verdict): mean {_number(mean)}, CI [{_number(low)}, {_number(high)}] "
            f"over {n} tasks × seeds pooled"
        )
    if part.note:
        lines.append(f"    cannot decide: {part.note}")
    return lines


def explain_claim(results_dir: Path, claim_id: str) -> tuple[list[str], bool]:
    """The step-by-step recomputation as lines, and whether it matches the recorded verdict."""
    record, claims, rows = _load(results_dir, claim_id)
    cfg = AggregateConfig(**record["aggregate"])
    parts = decide(record["method"], rows, cfg)
    outcome = combine(parts)
    family = [c for c in claims if c["study"] == record["study"] and c["category"] == "finding"]
    if record["category"] == "finding":
        p_values = [outcome.p_value if c["id"] == claim_id else _nan(c["statistic"]["p_value"]) for c in family]
        p_adjusted = holm(p_values)[[c["id"] for c in family].index(claim_id)]
        adjusted_by = f"Holm-adjusted (over {len(family)} findings)"
    else:
        p_adjusted, adjusted_by = outcome.p_value, "unadjusted (a check)"
    verdict, reason = verdict_of(outcome, p_adjusted, cfg, adjusted_by)
    lines = [
        f"claim {record['id']} ({record['category']}; seed {record['seed']}, {record['section']})",
        f"  {record['claim']}",
        f"rule: {record['rule']}",
        f"method: {json.dumps(record['method'], ensure_ascii=False, sort_keys=True)}",
        f"aggregate: confidence {cfg.confidence}, alpha {cfg.alpha}, min_seeds {cfg.min_seeds}",
        f"1. rows: {record['rows']['path']} (sha256 matches claims.json), {len(rows)} rows, "
        f"{rows['run'].nunique() if 'run' in rows else 0} runs, seeds {record['rows']['seeds']}",
        f"2. parts (one per component × stratum; seeds are the replicates): {len(parts)}",
    ]
    for index, part in enumerate(parts, 1):
        lines += _part_lines(index, part)
    lines += [
        f"3. combined: p(every part holds) = {_number(outcome.p_holds)} (the largest), p(some part opposes) = "
        f"{_number(outcome.p_fails)} (Bonferroni); claim p = 2 × min = {_number(outcome.p_value)}",
        f"4. {adjusted_by}: p = {_number(p_adjusted)}",
        f"5. verdict: {verdict} — {reason}",
    ]
    if verdict == "inconclusive":
        recorded = record["power"]
        published = recorded.get("effect") if recorded.get("effect_source") == "published" else None
        power = power_of(outcome, cfg, published, len(family) if record["category"] == "finding" else 1)
        if "minimal_detectable_effect" in power:
            lines.append(
                f"   power ({power['part']}): with {power['seeds']} seeds (s.d. {_number(power['sd_between_seeds'])})"
                f" the smallest effect detected with probability 0.8 at level {_number(power['level'])}"
                f" (α / (2 × findings)) is {_number(power['minimal_detectable_effect'])}"
                f"; {_number(power['seeds_needed'])} seeds would detect the {power['effect_source']} effect "
                f"{_number(power['effect'])}"
            )
        else:
            lines.append(f"   power: {power['note']}")
    matches = verdict == record["verdict"]
    lines.append(
        f"recorded in results/claims.json: {record['verdict']} — "
        + ("the recomputation matches." if matches else "MISMATCH: the recomputed verdict differs.")
    )
    return lines, matches


def _nan(value) -> float:
    return math.nan if value is None else float(value)


def list_claims(results_dir: Path) -> list[str]:
    path = Path(results_dir) / "claims.json"
    if not path.is_file():
        raise MetalandError(f"{path} is missing. Fix: run the aggregate stage (`dvc repro aggregate`).")
    return [f"{c['id']}  [{c['category']}] {c['verdict']}" for c in json.loads(path.read_text())["claims"]]
