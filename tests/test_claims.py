"""Claim rules on study tables whose truth is known by construction, each statistic checked against an
explicit loop and scipy, and the claim's rows file recomputing its verdict."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from metaland.claims import (
    CLAIMS,
    FAMILIES,
    Claim,
    Part,
    all_of,
    association,
    claim_record,
    claim_rows,
    claims_of,
    combine,
    decide,
    evaluate_study,
    falls_after_peak_of,
    improves_on,
    level,
    method_of,
    peak_then_fall,
    power_of,
    rows_csv,
    trend,
    where,
    within,
)
from metaland.config import AggregateConfig
from metaland.results import StudyTables
from metaland.stats import across_seeds, holm, minimal_detectable_effect, seeds_to_detect

CFG = AggregateConfig()
STEPS = np.arange(0, 110, 10)
META = {
    "algorithm": "maml",
    "variant": "maml",
    "dataset": "d",
    "backbone": "Conv4",
    "ways": 5,
    "shots": 1,
    "queries": 15,
    "inner_steps": 5,
    "inner_lr": 0.4,
    "augment": "none",
    "iterations": 100,
}


def curves(series: dict[tuple[int, str], np.ndarray], **meta) -> StudyTables:
    """Checkpoint tables: ``{(seed, variant): values over STEPS}``; ``meta`` overrides run metadata."""
    rows = []
    for (seed, variant), values in series.items():
        run = f"{variant}-{meta.get('dataset', 'd')}-{meta.get('backbone', 'Conv4')}-s{seed}"
        for step, value in zip(STEPS[: len(values)], values, strict=False):
            rows.append({**META, **meta, "variant": variant, "run": run, "seed": seed, "step": int(step), "m": value})
    return StudyTables("s", pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame())


def tasks(values: dict[tuple[int, str], np.ndarray], **meta) -> pd.DataFrame:
    """Final-task rows: ``{(seed, variant): per-task values}``."""
    rows = []
    for (seed, variant), per_task in values.items():
        run = f"{variant}-{meta.get('dataset', 'd')}-{meta.get('backbone', 'Conv4')}-s{seed}"
        for task, value in enumerate(per_task):
            rows.append(
                {**META, **meta, "variant": variant, "run": run, "seed": seed, "step": 100, "task": task, "m": value}
            )
    return pd.DataFrame(rows)


def final(frame: pd.DataFrame) -> StudyTables:
    return StudyTables("s", pd.DataFrame(), frame, pd.DataFrame())


def one(claim_test, tables: StudyTables, category="finding", published=None):
    claim = Claim("s-x", "s", "000", "§0", "a claim", "a rule", claim_test, category, published)
    return evaluate_study([claim], tables, CFG)[0]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------------------------
# contrast: one paired effect per seed, t over seeds
# --------------------------------------------------------------------------------------------


def paired_study(effect: float, seeds: int = 5, tasks_per_seed: int = 30, seed_sd: float = 0.02, seed: int = 0):
    """Treatment and baseline share per-seed offsets (the pairing) and per-task noise."""
    g = rng(seed)
    values = {}
    for s in range(seeds):
        base = 0.5 + g.normal(0, 0.05) + g.normal(0, 0.05, tasks_per_seed)
        values[(s, "maml")] = base
        values[(s, "new")] = base + effect + g.normal(0, seed_sd) + g.normal(0, 0.01, tasks_per_seed)
    return final(tasks(values))


def test_contrast_is_a_t_test_over_per_seed_paired_means():
    tables = paired_study(0.05)
    result = one(improves_on("m", where(variant="new"), where(variant="maml")), tables)
    frame = tables.final_tasks
    wide = frame.pivot_table(index=["seed", "task"], columns="variant", values="m")
    per_seed = (wide["new"] - wide["maml"]).groupby("seed").mean()  # the oracle: explicit pairing
    (part,) = result.outcome.parts
    assert part.per_seed == pytest.approx(per_seed.to_dict())
    expected = sps.ttest_1samp(per_seed, 0, alternative="greater")
    assert part.p_holds == pytest.approx(expected.pvalue)
    assert part.inference.n == 5 and result.verdict == "holds"
    assert result.outcome.p_value == pytest.approx(2 * expected.pvalue)
    mean, low, high, n = part.extra["convention"]  # the field's CI over tasks × seeds, beside it
    assert n == 150 and low < mean < high


def test_contrast_fails_on_the_opposite_and_is_inconclusive_below_min_seeds():
    assert one(improves_on("m", where(variant="new"), where(variant="maml")), paired_study(-0.05)).verdict == "fails"
    few = one(improves_on("m", where(variant="new"), where(variant="maml")), paired_study(0.05, seeds=2))
    assert few.verdict == "inconclusive" and "2 seed(s) < aggregate.min_seeds = 3" in few.reason
    assert few.power["seeds_needed"] == 3


def _agreeing_part(values) -> Part:
    inference = across_seeds(values)
    return Part("", "omniglot", "x", dict(enumerate(values)), inference, inference.p_greater, inference.p_less)


@pytest.mark.parametrize("findings", [1, 5, 16])
def test_power_of_seeds_that_all_agree_names_the_seeds_the_sign_flip_test_needs(findings):
    """Three seeds giving ρ = 1 exactly: no t statistic, p = 2⁻³. The seeds the note names are the fewest
    whose agreeing values reach a decision through the verdict's own path (claim p, Holm over the study's
    findings, α), found by trying n = 1, 2, …; one fewer does not."""
    outcome = combine([_agreeing_part([1.0, 1.0, 1.0])])
    power = power_of(outcome, CFG, None, findings)

    def decided(n: int) -> bool:
        p = combine([_agreeing_part([1.0] * n)]).p_value
        return holm([p] + [1.0] * (findings - 1))[0] < CFG.alpha

    first = next(n for n in range(1, 64) if decided(n))
    assert power["seeds_needed"] == max(first, CFG.min_seeds) and not decided(first - 1)
    assert power["seeds"] == 3 and "no t statistic" in power["note"] and "minimal_detectable_effect" not in power


def test_power_of_reports_the_weakest_part_and_never_fewer_seeds_than_min_seeds():
    """A large, clear effect in one stratum and seeds that all agree in another: the agreeing stratum is what
    keeps the claim undecided, so the note is about it, not about the stratum a t test already settles."""
    clear = across_seeds([1.0, 1.01, 0.99])
    clear_part = Part("", "cub", "x", {0: 1.0, 1: 1.01, 2: 0.99}, clear, clear.p_greater, clear.p_less)
    power = power_of(combine([clear_part, _agreeing_part([0.5] * 3)]), CFG, None, 16)
    assert power["part"] == "omniglot" and power["seeds_needed"] == 10
    alone = power_of(combine([clear_part]), CFG, None, 1)  # a check: level α / 2
    at_level = CFG.alpha / 2
    assert alone["level"] == pytest.approx(at_level)
    assert alone["minimal_detectable_effect"] == pytest.approx(minimal_detectable_effect(3, clear.sd, at_level))
    assert seeds_to_detect(1.0, clear.sd, at_level) < CFG.min_seeds <= alone["seeds_needed"]


@pytest.mark.parametrize("source", ["checkpoints", "run_means", "final_checkpoints"])
def test_checkpoint_sources_pair_the_arms_runs_of_each_seed(source):
    """Per-checkpoint values (no task axis): the treatment run and the baseline run of a seed pair at each
    checkpoint after the initialisation, on their means over those checkpoints, or at their final checkpoints;
    the per-seed effect equals an explicit pairing of the two runs (the oracle)."""
    g = rng(4)
    series = {}
    for s in range(5):
        base = 1.0 + g.normal(0, 0.1) + g.normal(0, 0.02, len(STEPS))
        series[(s, "maml")] = base
        series[(s, "new")] = base - 0.1 + g.normal(0, 0.01, len(STEPS))
    tables = curves(series)
    result = one(improves_on("m", where(variant="new"), where(variant="maml"), better="lower", source=source), tables)
    (part,) = result.outcome.parts
    wide = tables.checkpoints[tables.checkpoints["step"] > 0].pivot_table(
        index=["seed", "step"], columns="variant", values="m"
    )
    gain = (wide["maml"] - wide["new"]).groupby("seed")
    expected = gain.last() if source == "final_checkpoints" else gain.mean()
    assert part.per_seed == pytest.approx(expected.to_dict())
    assert part.extra["pairs"] == (5 * (len(STEPS) - 1) if source == "checkpoints" else 5)
    assert result.verdict == "holds"


def test_many_tasks_of_one_seed_are_not_replicates():
    """A large effect in one seed and none in the others: the pooled task CI would call it; seeds do not."""
    g = rng(1)
    values = {}
    for s in range(3):
        base = 0.5 + g.normal(0, 0.05, 600)
        values[(s, "maml")] = base
        values[(s, "new")] = base + (0.08 if s == 0 else -0.01 * s) + g.normal(0, 0.01, 600)
    result = one(improves_on("m", where(variant="new"), where(variant="maml")), final(tasks(values)))
    _, low, _, _ = result.outcome.parts[0].extra["convention"]
    assert low > 0  # the field's convention says "significant"
    assert result.verdict == "inconclusive"
    assert result.power["minimal_detectable_effect"] > 0.02


def test_pairs_never_cross_strata():
    """Two datasets × two backbones: four parts, each from its own runs; the claim holds only where all do."""
    frames = []
    for dataset, backbone, effect in [
        ("d1", "Conv4", 0.05),
        ("d1", "ResNet10", 0.05),
        ("d2", "Conv4", 0.05),
        ("d2", "ResNet10", -0.05),
    ]:
        g = rng(hash((dataset, backbone)) % 1000)
        values = {}
        for s in range(5):
            base = 0.5 + g.normal(0, 0.05, 20)
            values[(s, "maml")], values[(s, "new")] = base, base + effect + g.normal(0, 0.005)
        frames.append(tasks(values, dataset=dataset, backbone=backbone))
    result = one(improves_on("m", where(variant="new"), where(variant="maml")), final(pd.concat(frames)))
    parts = result.outcome.parts
    assert len(parts) == 4
    for part in parts:
        rows = result.rows[result.rows["stratum"] == part.stratum]
        assert rows["run"].str.split("-").str[1:3].map(tuple).nunique() == 1, "one dataset and backbone per part"
    assert {p.stratum.split()[0] for p in parts if p.inference.estimate < 0} == {"dataset=d2"}
    assert result.verdict == "fails"


def test_arms_that_differ_in_a_stratum_knob_pair_only_when_it_is_declared():
    g = rng(2)
    values_none, values_aug = {}, {}
    for s in range(4):
        base = 1.0 + g.normal(0, 0.1, 10)
        values_none[(s, "maml")], values_aug[(s, "maml")] = base, base - 0.2 + g.normal(0, 0.01)
    frame = pd.concat([tasks(values_none, augment="none"), tasks(values_aug, augment="chen")])
    frame["run"] = frame["run"] + "-" + frame["augment"]
    undeclared = improves_on("m", where(augment="chen"), where(augment="none"), better="lower")
    declared = improves_on("m", where(augment="chen"), where(augment="none"), better="lower", varies=("augment",))
    assert one(undeclared, final(frame)).verdict == "inconclusive"  # no pairs: augment splits the strata
    assert one(declared, final(frame)).verdict == "holds"


# --------------------------------------------------------------------------------------------
# curves: one statistic per run
# --------------------------------------------------------------------------------------------


def falling(g, noise=0.05):
    return 5.0 - 0.4 * np.arange(11) + g.normal(0, noise, 11)


def test_trend_is_a_t_test_over_per_run_spearman():
    g = rng(3)
    tables = curves({(s, "maml"): falling(g, noise=0.8) for s in range(4)})
    result = one(trend("m", -1), tables)
    rhos = [sps.spearmanr(STEPS, tables.checkpoints[tables.checkpoints["seed"] == s]["m"]).statistic for s in range(4)]
    assert list(result.outcome.parts[0].per_seed.values()) == pytest.approx(rhos)
    assert result.verdict == "holds"
    assert one(trend("m", 1), tables).verdict == "fails"
    noise = curves({(s, "maml"): g.normal(0, 1, 11) for s in range(4)})
    assert one(trend("m", -1), noise).verdict == "inconclusive"


def test_identical_per_seed_values_get_the_exact_sign_flip_p():
    """ρ = −1 in every run has no t statistic: p = 2⁻ⁿ, so 4 perfectly falling runs cannot decide (p = 1/16
    per direction), 6 can (1/64)."""
    g = rng(4)
    four = one(trend("m", -1), curves({(s, "maml"): falling(g, noise=0.01) for s in range(4)}))
    assert four.outcome.parts[0].p_holds == pytest.approx(1 / 16) and four.verdict == "inconclusive"
    six = one(trend("m", -1), curves({(s, "maml"): falling(g, noise=0.01) for s in range(6)}))
    assert six.outcome.parts[0].p_holds == pytest.approx(1 / 64) and six.verdict == "holds"


def test_association_per_run():
    g = rng(4)
    series = {}
    for s in range(4):
        x = g.normal(0, 1, 11)
        series[(s, "maml")] = x
    tables = curves(series)
    frame = tables.checkpoints.assign(y=lambda f: 2 * f["m"] + rng(5).normal(0, 0.1, len(f)))
    tables = StudyTables("s", frame, pd.DataFrame(), pd.DataFrame())
    assert one(association("m", "y", sign=1), tables).verdict == "holds"
    assert one(association("m", "y", sign=-1), tables).verdict == "fails"


def hump(g, peak=5, noise=0.05):
    x = np.arange(11)
    return 10 - 0.3 * (x - peak) ** 2 + g.normal(0, noise, 11)


def test_peak_then_fall_uses_the_held_out_peak():
    g = rng(6)
    assert one(peak_then_fall("m"), curves({(s, "maml"): hump(g) for s in range(4)})).verdict == "holds"
    assert one(peak_then_fall("m"), curves({(s, "maml"): falling(g) for s in range(4)})).verdict == "fails"
    assert one(peak_then_fall("m"), curves({(s, "maml"): -falling(g) for s in range(4)})).verdict == "fails"


def test_a_peak_at_the_initialisation_is_left_out_by_default():
    """Step 0 high (a random init), then a hump: the thesis's curve after the first epoch rises then falls."""
    g = rng(7)
    series = {(s, "maml"): np.r_[50.0, hump(g)[1:]] for s in range(4)}
    assert one(peak_then_fall("m"), curves(series)).verdict == "holds"
    with_initial = one(peak_then_fall("m", skip_initial=False), curves(series))
    assert with_initial.verdict == "fails"  # the first checkpoint is above the peak


def test_falls_after_peak_of_needs_a_significant_degradation():
    g = rng(8)
    series, acc = {}, {}
    for s in range(4):
        series[(s, "maml")] = falling(g)
        acc[s] = hump(g, peak=4)
    tables = curves(series)
    frame = tables.checkpoints.copy()
    frame["acc"] = np.concatenate([acc[s] for s in range(4)])
    overfit = one(falls_after_peak_of("m", "acc"), StudyTables("s", frame, pd.DataFrame(), pd.DataFrame()))
    assert overfit.verdict == "holds"
    frame["acc"] = np.tile(np.arange(11.0), 4) + rng(9).normal(0, 0.01, 44)  # accuracy never degrades
    rising = one(falls_after_peak_of("m", "acc"), StudyTables("s", frame, pd.DataFrame(), pd.DataFrame()))
    assert rising.verdict == "inconclusive"


# --------------------------------------------------------------------------------------------
# levels and equivalence
# --------------------------------------------------------------------------------------------


def level_study(mean: float, seeds: int = 5, sd_seed: float = 0.01, seed: int = 0) -> StudyTables:
    g = rng(seed)
    return final(tasks({(s, "maml"): mean + g.normal(0, sd_seed) + g.normal(0, 0.05, 40) for s in range(seeds)}))


def test_level_and_equivalence():
    assert one(level("m", 0.9), level_study(0.95)).verdict == "holds"
    assert one(level("m", 0.9), level_study(0.85)).verdict == "fails"
    assert one(level("m", 0.9, above=False), level_study(0.85)).verdict == "holds"
    assert one(within("m", 0.45, 0.55), level_study(0.5)).verdict == "holds"
    assert one(within("m", 0.45, 0.55), level_study(0.7)).verdict == "fails"
    assert one(within("m", 0.45, 0.55), level_study(0.54, seeds=3, sd_seed=0.05)).verdict == "inconclusive"


def test_equivalence_is_tost_not_a_failure_to_reject():
    """A mean near the edge with wide seed spread: no difference from 0.5 is found, and that is not equality."""
    tables = level_study(0.52, seeds=3, sd_seed=0.1, seed=3)
    result = one(within("m", 0.45, 0.55), tables)
    per_seed = list(result.outcome.parts[0].per_seed.values())
    assert sps.ttest_1samp(per_seed, 0.5).pvalue > 0.05
    assert result.verdict == "inconclusive"


def test_checks_are_not_adjusted_and_findings_are_holm_adjusted():
    tables = paired_study(0.02, seeds=4, seed=11)
    rule = improves_on("m", where(variant="new"), where(variant="maml"))
    claims = [Claim(f"s-{i}", "s", "000", "§", "c", "r", rule) for i in range(6)]
    claims.append(Claim("s-check", "s", "000", "§", "c", "r", rule, "check"))
    results = evaluate_study(claims, tables, CFG)
    raw = results[0].outcome.p_value
    assert results[0].p_adjusted == pytest.approx(min(1.0, 6 * raw))  # equal p-values: Holm multiplies by m
    assert results[-1].p_adjusted == pytest.approx(raw) and "a check" in results[-1].reason


def test_all_of_holds_only_if_every_component_holds():
    tables = paired_study(0.05)
    good = improves_on("m", where(variant="new"), where(variant="maml"))
    missing = improves_on("m", where(variant="other"), where(variant="maml"))
    assert one(all_of({"a": good, "b": good}), tables).verdict == "holds"
    result = one(all_of({"a": good, "b": missing}), tables)
    assert result.verdict == "inconclusive"
    bad = improves_on("m", where(variant="maml"), where(variant="new"))
    assert one(all_of({"a": good, "b": bad}), tables).verdict == "fails"


# --------------------------------------------------------------------------------------------
# traceability: the rows file alone recomputes the verdict
# --------------------------------------------------------------------------------------------


def test_the_rows_file_recomputes_every_part(tmp_path):
    tables = paired_study(0.03)
    rule = all_of({"x": improves_on("m", where(variant="new"), where(variant="maml")), "y": level("m", 0.4)})
    claim = Claim("s-x", "s", "000", "§", "c", "r", rule)
    result = evaluate_study([claim], tables, CFG)[0]
    path = tmp_path / "rows.csv"
    path.write_text(rows_csv(result.rows))
    read = pd.read_csv(path)
    for column in ("rule", "component"):
        read[column] = read[column].fillna("").astype(str)
    again = decide(method_of(claim), read, CFG)
    assert [(p.component, p.stratum, p.per_seed) for p in again] == [
        (p.component, p.stratum, pytest.approx(p.per_seed)) for p in result.outcome.parts
    ]
    record = claim_record(result, "claims/s/x.csv", "0" * 64, tables, CFG)
    assert record["rows"]["seeds"] == list(range(5)) and record["rows"]["n_rows"] == len(result.rows)


def test_every_registered_claim_has_a_known_family_and_serialises():
    from metaland.studies import STUDIES

    for study, _ in STUDIES.items():
        for claim in claims_of(study):
            for rule in claim.rules.values():
                assert rule.family in dict(FAMILIES.items())
            assert claim.slug and "/" not in claim.slug
            assert claim.category in ("finding", "check")
            empty = StudyTables(study, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
            rows = claim_rows(claim, empty)
            assert rows.empty
    assert len(dict(CLAIMS.items())) >= 41


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_undefined_values_make_a_claim_inconclusive(value):
    frame = tasks({(s, "maml"): np.full(5, value) for s in range(4)})
    assert one(level("m", 0.5), final(frame)).verdict == "inconclusive"


@pytest.mark.parametrize(
    "x, y",
    [
        ([1, 2, 3, 4, 5, 6, 7], [1, 1, 2, 2, 2, 1, 1]),  # ρ = 0 exactly, with tied ranks: p is 1
        # ρ = 0 with ties, which floating point gives as ±1e-17 and scipy's relative tie tolerance split (p 0.95)
        ([-0.46, -1.36, 0.05, -0.26, -0.63, -0.25, -0.59], [2, 2, 1, 1, 0, 1, 0]),
        ([-1.77, 1.93, -3.08, -1.14, -1.06, 0.58], [0, 2, 2, 0, 0, 0]),
        ([0.3, 0.1, 0.2, 0.5, 0.4], [2.0, 1.0, 1.0, 3.0, 3.0]),
        ([1.0, 2.0, 3.0], [0.5, 0.7, 0.6]),
    ],
)
def test_exact_spearman_p_enumerates_every_ordering(x, y):
    """The exact p of ρ equals an explicit loop over all n! pairings of the ranks (ties counted as ties,
    not split by rounding), and ρ equals scipy's."""
    import itertools

    from metaland.stats import spearman

    c = spearman(x, y, exact=True)
    rx, ry = sps.rankdata(x), sps.rankdata(y)
    rho = sps.spearmanr(x, y).statistic
    null = np.array([sps.pearsonr(rx, np.array(order)).statistic for order in itertools.permutations(ry)])
    exact = min(1.0, 2 * min(np.mean(null <= rho + 1e-12), np.mean(null >= rho - 1e-12)))
    assert c.r == pytest.approx(rho, abs=1e-12)
    assert c.p == pytest.approx(exact, abs=1e-12)
