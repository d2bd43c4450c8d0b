"""Claim rules on synthetic study tables whose verdicts are known by construction."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from metaland.claims import (
    CLAIMS,
    all_hold,
    claims_of,
    correlation,
    evaluate,
    falls_after_peak_of,
    improves_on,
    improves_over_training,
    mean_equals,
    mean_exceeds,
    mean_within,
    peak_then_fall,
    stays_within,
    trend,
    where,
)
from metaland.config import AggregateConfig
from metaland.results import StudyTables

CFG = AggregateConfig()
STEPS = np.arange(0, 110, 10)
RUN_META = {"algorithm": "maml", "dataset": "d", "ways": 5, "shots": 1, "inner_steps": 5, "iterations": 100}


def tables(series: dict[str, np.ndarray], *, metric: str = "m", other: dict | None = None) -> StudyTables:
    rows = []
    for run, values in series.items():
        for i, (step, value) in enumerate(zip(STEPS[: len(values)], values, strict=True)):
            row = {**RUN_META, "run": run, "step": int(step), metric: float(value)}
            if other:
                row.update({k: float(v[run][i]) for k, v in other.items()})
            rows.append(row)
    return StudyTables("s", pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame())


def falling(offset: float = 0.0) -> np.ndarray:
    return 5.0 - 0.4 * np.arange(11) + offset + np.sin(np.arange(11)) * 0.05


def test_trend_holds_when_every_run_falls():
    evidence = trend("m", -1)(tables({"a": falling(), "b": falling(1)}), CFG)
    assert evidence.verdict == "holds"
    assert evidence.statistic.n == 2 and evidence.statistic.value < -0.9


def test_trend_fails_when_a_run_significantly_rises():
    evidence = trend("m", -1)(tables({"a": falling(), "b": -falling()}), CFG)
    assert evidence.verdict == "fails" and "b" in evidence.reason


def test_trend_is_inconclusive_on_noise_or_too_few_checkpoints():
    noise = np.random.default_rng(0).normal(size=11)
    assert trend("m", -1)(tables({"a": falling(), "b": noise}), CFG).verdict == "inconclusive"
    assert trend("m", -1)(tables({"a": falling()[:3]}), CFG).verdict == "inconclusive"


def test_algorithm_scope():
    frame = tables({"a": falling()}).checkpoints.assign(algorithm="finetune")
    evidence = trend("m", -1, scope=where(algorithm="maml"))(
        StudyTables("s", frame, pd.DataFrame(), pd.DataFrame()), CFG
    )
    assert evidence.verdict == "inconclusive" and evidence.statistic.n == 0


def test_scope_matches_any_of_a_tuple_and_keeps_the_longest_runs():
    frame = pd.DataFrame(
        {"run": list("abcd"), "algorithm": ["maml", "fomaml", "fomaml", "finetune"], "iterations": [5, 5, 9, 9]}
    )
    assert where(algorithm=("maml", "fomaml"))(frame)["run"].tolist() == ["a", "b", "c"]
    assert where(algorithm="fomaml", longest=True)(frame)["run"].tolist() == ["c"]
    assert where(algorithm="maml")(pd.DataFrame()).empty


def test_rank_correlation_rule():
    acc = {"a": np.linspace(0.2, 0.9, 11)}
    coherent = {"a": np.exp(np.linspace(0, 3, 11))}  # monotone, far from linear
    rule = correlation("coh", "acc", method="spearman")
    evidence = rule(tables(coherent, metric="coh", other={"acc": acc}), CFG)
    assert evidence.verdict == "holds" and evidence.statistic.value == pytest.approx(1.0)


def test_correlation_rule():
    acc = {"a": np.linspace(0.2, 0.9, 11), "b": np.linspace(0.3, 0.8, 11)}
    coherent = {"a": np.linspace(0.0, 0.3, 11) + np.cos(np.arange(11)) * 0.01, "b": np.linspace(0.1, 0.2, 11)}
    up = tables(coherent, metric="coh", other={"acc": acc})
    assert correlation("coh", "acc")(up, CFG).verdict == "holds"
    down = tables({k: -v for k, v in coherent.items()}, metric="coh", other={"acc": acc})
    assert correlation("coh", "acc")(down, CFG).verdict == "fails"


def test_peak_then_fall():
    rise_fall = np.array([1, 3, 5, 4.5, 4, 3.6, 3.1, 2.7, 2.2, 1.9, 1.5])
    assert peak_then_fall("m")(tables({"a": rise_fall}), CFG).verdict == "holds"
    statistic = peak_then_fall("m")(tables({"a": rise_fall}), CFG).statistic
    assert statistic.per_run["a"]["peak_step"] == 20
    monotone = np.linspace(1, 5, 11)
    evidence = peak_then_fall("m")(tables({"a": monotone}), CFG)
    assert evidence.verdict == "fails" and "peaks at the first or last checkpoint" in evidence.reason


def test_falls_after_peak_of_accuracy():
    accuracy = np.array([0.2, 0.5, 0.7, 0.8, 0.75, 0.7, 0.68, 0.66, 0.6, 0.58, 0.55])
    falling_curvature = np.linspace(5, 1, 11)
    overfit = tables({"a": falling_curvature}, other={"acc": {"a": accuracy}})
    evidence = falls_after_peak_of("m", "acc")(overfit, CFG)
    assert evidence.verdict == "holds"
    assert evidence.statistic.per_run["a"]["acc_peak_step"] == 30
    assert evidence.statistic.per_run["a"]["acc_drop_after_peak"] == pytest.approx(0.25)
    rising = tables({"a": falling_curvature[::-1]}, other={"acc": {"a": accuracy}})
    assert falls_after_peak_of("m", "acc")(rising, CFG).verdict == "fails"
    still_learning = tables({"a": falling_curvature}, other={"acc": {"a": np.linspace(0.2, 0.9, 11)}})
    evidence = falls_after_peak_of("m", "acc")(still_learning, CFG)
    assert evidence.verdict == "inconclusive" and "no overfitting" in evidence.reason


def test_stays_within():
    near_zero = tables({"a": np.full(11, 0.01), "b": np.linspace(-0.02, 0.03, 11)})
    assert stays_within("m", 0.0, 0.05)(near_zero, CFG).verdict == "holds"
    evidence = stays_within("m", 0.0, 0.05)(tables({"a": np.full(11, 0.01), "b": np.linspace(0, 0.3, 11)}), CFG)
    assert evidence.verdict == "fails" and "b" in evidence.reason


def test_improves_on_pairs_tasks_of_the_same_seed():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.85, 0.95, size=200)
    rows = pd.DataFrame(
        {
            "algorithm": ["maml"] * 200 + ["regmaml"] * 200,
            "seed": 0,
            "task": list(range(200)) * 2,
            "acc": np.concatenate([base, base + 0.01 + rng.normal(0, 0.005, 200)]),
        }
    )
    final = StudyTables("s", pd.DataFrame(), rows, pd.DataFrame())
    better = improves_on("acc", where(algorithm="regmaml"), where(algorithm="maml"))
    evidence = better(final, CFG)
    assert evidence.verdict == "holds" and evidence.statistic.value == pytest.approx(0.01, abs=0.002)
    assert evidence.statistic.n == 200
    worse = improves_on("acc", where(algorithm="maml"), where(algorithm="regmaml"))
    assert worse(final, CFG).verdict == "fails"
    absent = improves_on("acc", where(algorithm="other"), where(algorithm="maml"))
    assert absent(final, CFG).verdict == "inconclusive"


def _paired(treatment_shift: dict[str, float], *, metric: str = "sharp", seeds: int = 2) -> StudyTables:
    """Per-task values of a baseline and shifted treatments on the same tasks and seeds (the last
    task of each seed unmeasured, as first-k probes leave it)."""
    rng = np.random.default_rng(3)
    base = rng.uniform(0.5, 1.0, size=(seeds, 60))
    rows = []
    for name, shift in {"maml": 0.0, **treatment_shift}.items():
        noise = rng.normal(0, 0.01, size=base.shape)
        for seed in range(seeds):
            for task in range(60):
                value = np.nan if task == 59 else base[seed, task] + shift + noise[seed, task]
                rows.append({"variant": name, "seed": seed, "task": task, metric: value})
    return StudyTables("s", pd.DataFrame(), pd.DataFrame(rows), pd.DataFrame())


def test_improves_on_lower_is_better_and_skips_unmeasured_tasks():
    final = _paired({"flat": -0.05, "sharp": 0.05})
    flatter = improves_on("sharp", where(variant="flat"), where(variant="maml"), better="lower")
    evidence = flatter(final, CFG)
    assert evidence.verdict == "holds" and evidence.statistic.n == 2 * 59
    assert (
        evidence.statistic.value == pytest.approx(0.05, abs=0.005) and "baseline − treatment" in evidence.statistic.name
    )
    assert (
        improves_on("sharp", where(variant="sharp"), where(variant="maml"), better="lower")(final, CFG).verdict
        == "fails"
    )


def test_all_hold_needs_every_component():
    final = _paired({"a": -0.05, "b": -0.03, "c": 0.0})

    def flatter(*names):
        return all_hold(
            {n: improves_on("sharp", where(variant=n), where(variant="maml"), better="lower") for n in names}
        )

    both = flatter("a", "b")(final, CFG)
    assert both.verdict == "holds" and both.statistic.value == pytest.approx(0.03, abs=0.005)  # the weakest
    assert set(both.statistic.per_run) == {"a", "b"} and both.statistic.per_run["b"]["verdict"] == "holds"
    assert flatter("a", "c")(final, CFG).verdict == "inconclusive"
    mixed = _paired({"a": -0.05, "d": 0.05})
    assert (
        all_hold(
            {n: improves_on("sharp", where(variant=n), where(variant="maml"), better="lower") for n in ("a", "d")}
        )(mixed, CFG).verdict
        == "fails"
    )


def test_mean_equals():
    rng = np.random.default_rng(1)
    chance = pd.DataFrame({"ways": 5, "pre": rng.binomial(75, 0.2, size=400) / 75})
    rule = mean_equals("pre", lambda rows: float((1 / rows["ways"]).mean()))
    assert rule(StudyTables("s", pd.DataFrame(), chance, pd.DataFrame()), CFG).verdict == "holds"
    biased = chance.assign(pre=rng.binomial(75, 0.3, size=400) / 75)
    assert rule(StudyTables("s", pd.DataFrame(), biased, pd.DataFrame()), CFG).verdict == "fails"


def test_mean_within():
    rng = np.random.default_rng(2)

    def verdict(p: float, n: int = 400) -> str:
        frame = pd.DataFrame({"acc": rng.binomial(100, p, size=n) / 100})
        return mean_within("acc", 0.45, 0.55)(StudyTables("s", pd.DataFrame(), frame, pd.DataFrame()), CFG).verdict

    assert verdict(0.5) == "holds"
    assert verdict(0.7) == "fails" and verdict(0.3) == "fails"
    assert verdict(0.55, n=20) == "inconclusive"  # the CI straddles the upper bound
    empty = StudyTables("s", pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    assert mean_within("acc", 0, 1)(empty, CFG).verdict == "inconclusive"


def test_improves_over_training_pairs_seeds_and_checkpoints_after_the_first():
    """A curve below the baseline's at every trained checkpoint (same seed and setting) is "lower";
    step 0, where both start from the same θ, is left out; other settings are never paired."""
    rows = []
    rng = np.random.default_rng(4)
    for seed in (0, 1):
        for step in STEPS:
            base = 2.0 - step / 100 + rng.normal(0, 0.01)
            for variant, shift in (("maml", 0.0), ("lil", -0.2 if step else 0.0)):
                rows.append({"variant": variant, "setting": "s1", "seed": seed, "step": int(step), "pc": base + shift})
            rows.append({"variant": "maml", "setting": "s5", "seed": seed, "step": int(step), "pc": 9.0})
    checkpoints = StudyTables("s", pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame())
    lower = improves_over_training("pc", where(variant="lil"), where(variant="maml"), better="lower")(checkpoints, CFG)
    assert lower.verdict == "holds" and lower.statistic.n == 2 * (len(STEPS) - 1)
    assert lower.statistic.value == pytest.approx(0.2)
    higher = improves_over_training("pc", where(variant="lil"), where(variant="maml"))(checkpoints, CFG)
    assert higher.verdict == "fails"
    absent = improves_over_training("pc", where(variant="anil"), where(variant="maml"))(checkpoints, CFG)
    assert absent.verdict == "inconclusive" and "no paired checkpoints" in absent.reason


def test_mean_exceeds():
    rng = np.random.default_rng(5)
    final = pd.DataFrame({"variant": "maml", "cos": rng.uniform(0.92, 0.98, size=40)})
    above = mean_exceeds("cos", 0.9, scope=where(variant="maml"))
    assert above(StudyTables("s", pd.DataFrame(), final, pd.DataFrame()), CFG).verdict == "holds"
    low = final.assign(cos=final["cos"] - 0.5)
    assert above(StudyTables("s", pd.DataFrame(), low, pd.DataFrame()), CFG).verdict == "fails"
    spread = rng.uniform(-0.1, 0.1, size=40)
    straddling = final.assign(cos=0.9 + spread - spread.mean())
    assert above(StudyTables("s", pd.DataFrame(), straddling, pd.DataFrame()), CFG).verdict == "inconclusive"


def test_registered_claims_are_complete_and_serialise():
    claims = claims_of("guiroy2019")
    assert len(claims) >= 5
    for claim in claims:
        assert claim.id.startswith("guiroy2019/") and claim.seed == "000" and claim.section and claim.rule
    record = evaluate(
        CLAIMS.get("guiroy2019/support-loss-falls"), tables({"a": falling()[:2]}, metric="support_loss"), CFG
    )
    text = json.dumps(record, allow_nan=False)  # NaN must have become null
    assert record["verdict"] == "inconclusive" and "NaN" not in text


@pytest.mark.parametrize("value", [math.nan])
def test_nan_series_are_inconclusive(value):
    assert trend("m", 1)(tables({"a": np.full(11, value)}), CFG).verdict == "inconclusive"
