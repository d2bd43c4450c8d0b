"""Study guiroy2019's claims on simulated study tables whose truth is known by construction: where the
thesis's effect is built in, the claim holds; where it is absent or reversed, it does not. Pairs with MAML
read only the settings finetune was run in, strata are never mixed, and each claim's rows file recomputes
its per-seed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from metaland.claims import claim_rows, claims_of, decide, evaluate_study, method_of, rows_csv
from metaland.config import AggregateConfig
from metaland.results import StudyTables
from metaland.studies.guiroy2019 import FINETUNE_NORM_TREND_MARGIN

CFG = AggregateConfig()
STEPS = np.arange(0, 310, 10)
"""31 checkpoints: the initialisation and 30 after it."""
SEEDS = range(5)
BASE = {
    "dataset": "omniglot-small-alphabets",
    "backbone": "Conv4",
    "ways": 5,
    "shots": 1,
    "queries": 15,
    "inner_steps": 5,
    "inner_lr": 0.1,
    "augment": "none",
    "iterations": 300,
}


def meta(algorithm: str, seed: int, **over) -> dict:
    m = {**BASE, "algorithm": algorithm, "variant": algorithm, "seed": seed, **over}
    m["run"] = f"guiroy2019-{algorithm}-{m['ways']}w{m['shots']}s-t{m['inner_steps']}-s{seed}"
    m["setting"] = f"{m['dataset']} {m['ways']}-way {m['shots']}-shot"
    return m


def curve_rows(run: dict, **columns: np.ndarray) -> list[dict]:
    """One checkpoint row per step of STEPS, with ``columns`` (values over STEPS)."""
    return [{**run, "step": int(step), **{c: float(v[i]) for c, v in columns.items()}} for i, step in enumerate(STEPS)]


def task_rows(run: dict, accuracy: np.ndarray) -> list[dict]:
    return [{**run, "step": int(STEPS[-1]), "task": t, "query_accuracy": float(a)} for t, a in enumerate(accuracy)]


def tables(checkpoints: list[dict], final: list[dict] | None = None) -> StudyTables:
    return StudyTables("guiroy2019", pd.DataFrame(checkpoints), pd.DataFrame(final or []), pd.DataFrame())


def claim(slug: str):
    (found,) = [c for c in claims_of("guiroy2019") if c.slug == slug]
    return found


def result(slug: str, study: StudyTables):
    return evaluate_study([claim(slug)], study, CFG)[0]


def verdict(slug: str, study: StudyTables) -> str:
    return result(slug, study).verdict


def noise(g: np.random.Generator, sd: float) -> np.ndarray:
    return g.normal(0, sd, len(STEPS))


TIME = STEPS / STEPS[-1]
"""Meta-training progress, 0 → 1."""


# --------------------------------------------------------------------------------------------
# Fig. 2.4c: finetune solutions become sharper
# --------------------------------------------------------------------------------------------


def finetune_curvature(slope: float, seed: int = 0) -> StudyTables:
    """Finetune runs whose curvature moves by ``slope`` over pre-training after the initialisation, which
    is the sharpest point of every run (a random head), and MAML runs whose curvature rises (not read)."""
    g = np.random.default_rng(seed)
    rows = []
    for s in SEEDS:
        curvature = 5 + slope * TIME + noise(g, 0.3)
        curvature[0] = 50.0
        rows += curve_rows(meta("finetune", s), hessian_spectral_norm=curvature)
        rows += curve_rows(meta("maml", s), hessian_spectral_norm=5 - 2 * slope * TIME + noise(g, 0.3))
    return tables(rows)


@pytest.mark.parametrize("slope, expected", [(2.0, "holds"), (-2.0, "fails"), (0.0, "inconclusive")])
def test_finetune_curvature_rises_follows_the_finetune_runs_after_the_initialisation(slope, expected):
    study = finetune_curvature(slope)
    assert verdict("finetune-curvature-rises", study) == expected
    rows = claim_rows(claim("finetune-curvature-rises"), study)
    assert rows["step"].min() > 0 and rows["run"].str.contains("finetune").all()


# --------------------------------------------------------------------------------------------
# §2.5.2: finetune reaches much lower accuracy than MAML
# --------------------------------------------------------------------------------------------


def accuracies(gap: float, seed: int = 0) -> StudyTables:
    """MAML (T = 5) and finetune of each seed on the same 30 fixed tasks, MAML ahead by ``gap``; beside
    them, settings finetune was not run in (MAML 20-way, MAML T = 1), far behind finetune."""
    g = np.random.default_rng(seed)
    final = []
    for s in SEEDS:
        task = g.uniform(0.3, 0.7, 30)
        finetune = task + g.normal(0, 0.02) + g.normal(0, 0.01, 30)
        final += task_rows(meta("finetune", s), finetune)
        final += task_rows(meta("maml", s), task + gap + g.normal(0, 0.02) + g.normal(0, 0.01, 30))
        final += task_rows(meta("maml", s, ways=20, queries=5), task - 0.5)
        final += task_rows(meta("maml", s, inner_steps=1), task - 0.5)
    return tables([], final)


@pytest.mark.parametrize("gap, expected", [(0.2, "holds"), (-0.2, "fails"), (0.0, "inconclusive")])
def test_finetune_accuracy_below_maml_pairs_maml_and_finetune_within_the_finetune_setting(gap, expected):
    study = accuracies(gap)
    outcome = result("finetune-accuracy-below-maml", study)
    assert outcome.verdict == expected
    (part,) = outcome.outcome.parts  # one stratum: MAML settings without finetune do not make the claim undecidable
    assert part.decidable and "ways=5" in part.stratum and "inner_steps=5" in part.stratum
    assert np.mean(list(part.per_seed.values())) == pytest.approx(gap, abs=0.05)
    rows = claim_rows(claim("finetune-accuracy-below-maml"), study)
    assert set(rows["run"].str.extract(r"-(\d+w\d+s-t\d)-")[0]) == {"5w1s-t5"}


def test_a_finetune_setting_without_maml_cannot_decide():
    study = accuracies(0.2)
    extra = task_rows(meta("finetune", 0, shots=5), np.full(30, 0.5))
    study = tables([], [*study.final_tasks.to_dict("records"), *extra])
    outcome = result("finetune-accuracy-below-maml", study)
    assert outcome.verdict == "inconclusive"
    (lonely,) = [p for p in outcome.outcome.parts if not p.decidable]
    assert "shots=5" in lonely.stratum and "nothing to pair" in lonely.note


# --------------------------------------------------------------------------------------------
# §2.5.3, Fig. 2.6b: finetune's gradient coherence is very low
# --------------------------------------------------------------------------------------------


def gradient_coherences(finetune_level: float, seed: int = 0) -> StudyTables:
    """MAML's gradient coherence about 0.5 at every checkpoint; finetune's about ``finetune_level``."""
    g = np.random.default_rng(seed)
    rows = []
    for s in SEEDS:
        maml = 0.5 + g.normal(0, 0.05) + noise(g, 0.05)
        rows += curve_rows(meta("maml", s), gradient_coherence=maml)
        rows += curve_rows(meta("finetune", s), gradient_coherence=finetune_level + g.normal(0, 0.02) + noise(g, 0.05))
        rows += curve_rows(meta("maml", s, ways=20, queries=5), gradient_coherence=0.0 * maml)
    return tables(rows)


@pytest.mark.parametrize(
    "finetune_level, expected",
    [
        (0.0, "holds"),  # near zero, as the thesis's Fig. 2.6b
        (0.5, "inconclusive"),  # as coherent as MAML
        (-1.0, "fails"),  # far from zero (negative): not "low" under the |·| reading
        (1.0, "fails"),
    ],
)
def test_finetune_gradient_coherence_low_is_read_against_maml_of_the_same_seed(finetune_level, expected):
    study = gradient_coherences(finetune_level)
    outcome = result("finetune-gradient-coherence-low", study)
    assert outcome.verdict == expected
    (part,) = outcome.outcome.parts
    assert part.decidable and "ways=5" in part.stratum


# --------------------------------------------------------------------------------------------
# §2.5.3, Figs. 2.6c-d: finetune's trajectory norm does not grow
# --------------------------------------------------------------------------------------------


def finetune_norms(slope: float, seed: int = 0) -> StudyTables:
    """Finetune's trajectory norm moves by ``slope`` over pre-training (0: flat with noise); MAML's grows."""
    g = np.random.default_rng(seed)
    rows = []
    for s in SEEDS:
        rows += curve_rows(meta("finetune", s), trajectory_norm=1 + slope * TIME + noise(g, 0.2))
        rows += curve_rows(meta("maml", s), trajectory_norm=1 + 2 * TIME + noise(g, 0.2))
    return tables(rows)


@pytest.mark.parametrize(
    "slope, expected",
    [
        (0.0, "holds"),  # flat: TOST puts the mean ρ inside ±margin
        (2.0, "fails"),  # grows: ρ significantly above +margin
        (-2.0, "inconclusive"),  # falls: not flat, but not growing either
    ],
)
def test_finetune_trajectory_norm_flat_is_an_equivalence_test_on_the_per_run_trend(slope, expected):
    study = finetune_norms(slope)
    outcome = result("finetune-trajectory-norm-flat", study)
    assert outcome.verdict == expected
    (part,) = outcome.outcome.parts
    assert part.extra["band"] == [-FINETUNE_NORM_TREND_MARGIN, FINETUNE_NORM_TREND_MARGIN]
    runs = study.checkpoints[study.checkpoints["algorithm"] == "finetune"]
    rhos = {s: sps.spearmanr(r["step"], r["trajectory_norm"]).statistic for s, r in runs.groupby("seed")}
    assert part.per_seed == pytest.approx(rhos)


def test_a_flat_norm_with_few_seeds_is_not_shown_flat():
    """Equivalence needs evidence: two seeds are below aggregate.min_seeds, so a flat norm stays inconclusive."""
    study = finetune_norms(0.0)
    study = tables(study.checkpoints[study.checkpoints["seed"] < 2].to_dict("records"))
    assert verdict("finetune-trajectory-norm-flat", study) == "inconclusive"


# --------------------------------------------------------------------------------------------
# §2.4.3: the raw inner product tracks accuracy better than the cosine
# --------------------------------------------------------------------------------------------


def one_step_runs(inner_tracks: bool, cosine_tracks: bool, seed: int = 0) -> StudyTables:
    """T = 1 MAML and FOMAML runs whose accuracy rises; the gradient inner product and cosine each follow it
    (with a little noise) or not (noise only). T = 5 runs, whose cosine tracks and inner product does not, are
    out of scope."""
    g = np.random.default_rng(seed)
    rows = []
    for s in SEEDS:
        for algorithm in ("maml", "fomaml"):
            accuracy = 0.3 + 0.5 * TIME + noise(g, 0.03)
            inner = (accuracy if inner_tracks else 0.5) + noise(g, 0.05)
            cosine = (accuracy if cosine_tracks else 0.5) + noise(g, 0.05)
            rows += curve_rows(
                meta(algorithm, s, inner_steps=1),
                query_accuracy=accuracy,
                gradient_coherence=inner,
                gradient_cosine=cosine,
            )
            rows += curve_rows(
                meta(algorithm, s),
                query_accuracy=accuracy,
                gradient_coherence=noise(g, 0.05),
                gradient_cosine=accuracy,
            )
    return tables(rows)


@pytest.mark.parametrize(
    "inner_tracks, cosine_tracks, expected",
    [(True, False, "holds"), (False, True, "fails"), (True, True, "inconclusive")],
)
def test_gradient_inner_product_beats_cosine_compares_the_two_correlations_per_run(
    inner_tracks, cosine_tracks, expected
):
    study = one_step_runs(inner_tracks, cosine_tracks)
    outcome = result("gradient-inner-product-beats-cosine", study)
    assert outcome.verdict == expected
    assert len(outcome.outcome.parts) == 1 and "inner_steps=1" in outcome.outcome.parts[0].stratum
    runs = study.checkpoints[study.checkpoints["inner_steps"] == 1]
    gaps = {}
    for (s, _), r in runs.groupby(["seed", "run"]):
        gap = (
            sps.spearmanr(r["gradient_coherence"], r["query_accuracy"]).statistic
            - sps.spearmanr(r["gradient_cosine"], r["query_accuracy"]).statistic
        )
        gaps.setdefault(s, []).append(gap)
    assert outcome.outcome.parts[0].per_seed == pytest.approx({s: np.mean(v) for s, v in gaps.items()})


# --------------------------------------------------------------------------------------------
# Traceable: the rows file alone gives the same parts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "slug, study",
    [
        ("finetune-curvature-rises", finetune_curvature(2.0)),
        ("finetune-accuracy-below-maml", accuracies(0.2)),
        ("finetune-gradient-coherence-low", gradient_coherences(0.0)),
        ("finetune-trajectory-norm-flat", finetune_norms(0.0)),
        ("gradient-inner-product-beats-cosine", one_step_runs(True, False)),
    ],
)
def test_the_rows_file_recomputes_the_new_claims(tmp_path, slug, study):
    found = result(slug, study)
    path = tmp_path / "rows.csv"
    path.write_text(rows_csv(found.rows))
    read = pd.read_csv(path)
    for column in ("rule", "component"):
        read[column] = read[column].astype(object).fillna("").astype(str)
    again = decide(method_of(found.claim), read, CFG)
    assert [(p.stratum, p.per_seed, p.p_holds) for p in again] == [
        (p.stratum, pytest.approx(p.per_seed), pytest.approx(p.p_holds)) for p in found.outcome.parts
    ]
    assert sorted(read["seed"].unique()) == list(SEEDS)


# --------------------------------------------------------------------------------------------
# §2.6: the MAML baseline lands near the thesis's 94.05% (a check, paper profile only)
# --------------------------------------------------------------------------------------------


def baseline_levels(level: float, dataset: str = "omniglot", seed: int = 0) -> StudyTables:
    """Second-order MAML 20-way 1-shot runs on ``dataset`` whose mean accuracy over 600 tasks is ``level``, with
    seed-to-seed spread; beside them 5-way runs far below (another stratum, never read)."""
    g = np.random.default_rng(seed)
    final = []
    for s in SEEDS:
        final += task_rows(
            meta("maml", s, dataset=dataset, ways=20), level + g.normal(0, 0.004) + g.normal(0, 0.05, 600)
        )
        final += task_rows(meta("maml", s, dataset=dataset), np.full(600, 0.5))
    return tables([], final)


@pytest.mark.parametrize("level, expected", [(0.9405, "holds"), (0.945, "holds"), (0.90, "fails"), (0.985, "fails")])
def test_maml_baseline_near_thesis_is_a_tost_around_94_percent_on_the_full_omniglot(level, expected):
    outcome = result("maml-baseline-near-thesis", baseline_levels(level))
    assert claim("maml-baseline-near-thesis").category == "check"
    assert outcome.verdict == expected
    (part,) = outcome.outcome.parts
    assert "ways=20" in part.stratum
    assert np.mean(list(part.per_seed.values())) == pytest.approx(level - 0.9405, abs=0.01)


def test_maml_baseline_near_thesis_reads_no_omniglot_subset():
    """The default profile's subset of Omniglot is another dataset: its level is not compared with the thesis's."""
    outcome = result("maml-baseline-near-thesis", baseline_levels(0.9405, dataset="omniglot-small-alphabets"))
    assert outcome.verdict == "inconclusive" and not outcome.outcome.parts


def test_fig_2_6a_draws_the_band_random_directions_fall_in(monkeypatch, tmp_path):
    """Finetune's trajectory coherence beside ±1.96 s.d. of the mean cosine of random directions (the probe's
    ``trajectory_coherence_random_sd``, averaged over the finetune checkpoints): the thesis's "akin to random
    vectors" made visible; no band without the column."""
    import metaland.studies.guiroy2019 as guiroy

    g = np.random.default_rng(2)
    rows = []
    for s in SEEDS:
        coherence, spread = g.normal(0, 0.01, len(STEPS)), np.full(len(STEPS), 0.004 + 0.001 * s)
        rows += curve_rows(
            meta("finetune", s),
            trajectory_coherence=coherence,
            trajectory_coherence_random_sd=spread,
            gradient_coherence=coherence,
            trajectory_norm=1.0 + coherence,
        )
    caught = []
    monkeypatch.setattr(guiroy, "save", lambda fig, path: caught.append(fig))
    guiroy.fig_finetune_and_norms(tables(rows), tmp_path / "fig.png")
    bare = [{k: v for k, v in r.items() if k != "trajectory_coherence_random_sd"} for r in rows]
    guiroy.fig_finetune_and_norms(tables(bare), tmp_path / "fig.png")
    with_band, without = (fig.axes[0] for fig in caught)
    (band,) = [p for p in with_band.patches if p.get_label().startswith("random directions")]
    low, high = band.get_path().get_extents().transformed(band.get_transform() - with_band.transData).intervaly
    assert high == pytest.approx(1.96 * 0.006) and low == pytest.approx(-1.96 * 0.006)
    assert not [p for p in without.patches if p.get_label().startswith("random directions")]
