"""Study ``guiroy2019`` — seed 000, Guiroy (MSc thesis, 2019), Chapter 2.

"On the Properties of the Objective Landscapes and Generalization of Gradient-Based
Meta-Learning": over meta-training, meta-test solutions θ̃_i become flatter (after a peak), lower
in support loss and further from θ^s; the coherence of adaptation trajectories (eq. 2.5) and of
meta-test gradients at θ^s (eq. 2.6) tracks generalization while flatness does not; the finetune
baseline does the opposite; a regulariser on trajectory angles (Algorithm 1) helps.

The run families this module reads (declared in params.yaml, every profile):

* MAML / FOMAML with T = 5 inner steps (T > 1 in the ci profile) — Figs. 2.2, 2.3, 2.5, 2.6c-d,
  2.9, 2.10; the FOMAML 5-way 1-shot run(s) with the most iterations are the "extended"
  overfitting run of Fig. 2.3;
* MAML / FOMAML meta-trained with T = 1 (§2.5.3) — Figs. 2.7, 2.11 (accuracy at θ^s + α g_i);
* ``finetune`` (§2.3.2) — Figs. 2.4, 2.6;
* ``regmaml`` (§2.6, Algorithm 1) against MAML in the same setting — Fig. 2.8.

A figure panel whose runs a profile lacks says so. Choices the thesis leaves open are knobs in
params.yaml (``python -m metaland params``); see README.md, "Choices the seed leaves open".
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metaland.claims import (
    Claim,
    association,
    beside,
    falls_after_peak_of,
    improves_on,
    no_trend,
    peak_then_fall,
    register,
    tracks_better,
    trend,
    where,
    within,
)
from metaland.plots import (
    ALGORITHM_COLORS,
    curves_by_algorithm,
    dual_axis,
    grid,
    label,
    no_data,
    save,
    suptitle,
)
from metaland.results import StudyTables
from metaland.stats import mean_ci
from metaland.studies import STUDIES, Figure, StudySpec

NAME = "guiroy2019"
SEED = "000"
META_LEARNERS = ("maml", "fomaml")


def _multi_step(steps: pd.Series) -> pd.Series:
    return steps > 1


def _after_initialisation(steps: pd.Series) -> pd.Series:
    return steps > 0


MULTI_STEP = where(algorithm=META_LEARNERS, inner_steps=_multi_step)
"""The main runs: MAML / FOMAML meta-trained with T > 1 inner steps (T = 5 in the thesis)."""
ONE_STEP = where(algorithm=META_LEARNERS, inner_steps=1)
"""The §2.5.3 runs, meta-trained and tested with T = 1."""
FINETUNE = where(algorithm="finetune")
OVERFIT = where(algorithm="fomaml", ways=5, shots=1, inner_steps=_multi_step, longest=True)
"""Fig. 2.3: the FOMAML 5-way 1-shot run trained for longer than the others (thesis: +100 epochs)."""
REGULARISED = where(algorithm="regmaml")
MAML_BASELINE = where(algorithm="maml", inner_steps=_multi_step)
ADAPTING = where(algorithm=(*META_LEARNERS, "regmaml"))
FINETUNE_TRAINED = where(algorithm="finetune", step=_after_initialisation)
"""Finetune checkpoints after the initialisation (the thesis measures after each pre-training epoch)."""


# --------------------------------------------------------------------------------------------
# Claims (rules fixed before any data; the statistics in metaland.claims)
# --------------------------------------------------------------------------------------------


CHANCE_MARGIN = 0.02
"""How close to chance "is chance" must be shown to be (TOST): within 2 accuracy points of 1/m."""
THESIS_REGULARISER_GAIN = 0.9538 - 0.9405
"""§2.6: the regulariser's gain in target accuracy (Omniglot 20-way 1-shot, 5 runs × 600 tasks)."""
THESIS_MAML_ACCURACY = 0.9405
"""§2.6, Fig. 2.8: second-order MAML's meta-test target accuracy, Omniglot 20-way 1-shot (5 runs × 600 tasks)."""
MAML_LEVEL_MARGIN = 0.02
"""How near the thesis's 94.05% "lands near" must be shown to be (TOST): within 2 accuracy points, about the
spread of published second-order MAML on Omniglot 20-way 1-shot (Finn et al. 2017: 95.8 ± 0.3; the thesis's own
reproduction: 94.05)."""
THESIS_SETTING = where(algorithm="maml", dataset="omniglot", ways=20, shots=1, inner_steps=_multi_step)
"""The runs the thesis's absolute numbers are for: second-order MAML on the full Omniglot, 20-way 1-shot. The
default profile's Omniglot subset is another dataset, whose accuracy level says nothing of the thesis's."""
ACROSS_SEEDS = "per stratum (dataset, backbone, ways, shots, inner steps and lr), t over seeds"
BESIDE_FINETUNE = (
    "per stratum (dataset, backbone, ways, shots, queries, inner steps and lr, augmentation: finetune is adapted "
    "with MAML's inner loop, so the two share it) that has finetune runs"
)
FINETUNE_NORM_TREND_MARGIN = 0.3
"""§2.5.3: how flat "does not grow" must be shown to be (TOST): the mean over seeds of each finetune run's
Spearman ρ(step, trajectory norm) within ±0.3, at most a weak monotone trend (ρ = 0.3 is Cohen's "medium"
correlation); MAML's norm, which the thesis says grows, is tested for ρ > 0 by ``trajectory-norm-grows``."""


def _claim(slug: str, section: str, claim: str, rule: str, test, **extra) -> None:
    register(
        Claim(id=f"{NAME}/{slug}", study=NAME, seed=SEED, section=section, claim=claim, rule=rule, test=test, **extra)
    )


_claim(
    "chance-before-adaptation",
    "§2.4.1",
    "At the meta-train solution θ^s, before adaptation, target accuracy on meta-test tasks is chance (1/m) on average.",
    f"a sanity check (labels are permuted per task, so 1/m is expected for any θ): holds if, {ACROSS_SEEDS}, TOST "
    f"shows the mean pre-adaptation target accuracy at the final checkpoints within 1/m ± {CHANCE_MARGIN} (MAML, "
    "FOMAML and regularised runs); fails if it lies significantly outside that band.",
    within(
        "pre_query_accuracy",
        -CHANCE_MARGIN,
        CHANCE_MARGIN,
        scope=ADAPTING,
        offset=lambda rows: 1.0 / rows["ways"],
        offset_name="1/m",
    ),
    category="check",
)
_claim(
    "support-loss-falls",
    "§2.5.1, Fig. 2.3b",
    "The support loss at adapted meta-test solutions, E[L(f(D_i; θ̃_i))], decreases over meta-training for "
    "MAML and FOMAML.",
    f"each run gives Spearman ρ(step, support loss) over its checkpoints; holds if, {ACROSS_SEEDS}, the mean ρ is "
    "significantly below 0 in every MAML/FOMAML stratum with T > 1; fails if it is significantly above 0 in any.",
    trend("support_loss", -1, scope=MULTI_STEP),
)
_claim(
    "finetune-support-loss-rises",
    "§2.1, §2.5.1, Fig. 2.4b",
    "For the finetune baseline the opposite occurs: the support loss at meta-test solutions increases over "
    "pre-training.",
    f"each finetune run gives Spearman ρ(step, support loss); holds if, {ACROSS_SEEDS}, the mean ρ is significantly "
    "above 0 in every stratum; fails if it is significantly below 0 in any.",
    trend("support_loss", 1, scope=FINETUNE),
)
_claim(
    "finetune-curvature-rises",
    "§2.1, §2.5.1, Fig. 2.4c",
    "For the finetune baseline the opposite occurs: meta-test solutions become sharper, the curvature "
    "E[‖H(D_i; θ̃_i)‖_σ] rises over pre-training.",
    "checkpoints after the initialisation (the thesis measures after each epoch); each finetune run gives Spearman "
    f"ρ(step, ‖H‖_σ) over them; holds if, {ACROSS_SEEDS}, the mean ρ is significantly above 0 in every stratum; "
    "fails if it is significantly below 0 in any.",
    trend("hessian_spectral_norm", 1, scope=FINETUNE_TRAINED),
)
_claim(
    "curvature-rises-then-falls",
    "§2.5.1, Fig. 2.2",
    "The curvature of meta-test solutions, E[‖H(D_i; θ̃_i)‖_σ], first rises to a peak, then decreases as "
    "meta-training goes on (solutions become flatter).",
    "checkpoints after the initialisation (the thesis measures after each epoch); for each seed the peak is the "
    "interior checkpoint where the other seeds' mean curve peaks (so a seed's own noise does not pick it); holds if, "
    f"{ACROSS_SEEDS}, both the rise (peak − first) and the fall (peak − last) are significantly positive in every "
    "MAML/FOMAML stratum with T > 1; fails if either is significantly negative in any.",
    peak_then_fall("hessian_spectral_norm", scope=MULTI_STEP),
)
_claim(
    "curvature-falls-after-accuracy-peaks",
    "§2.5.1, Fig. 2.3",
    "In the extended FOMAML 5-way 1-shot run, target accuracy peaks and then degrades (meta-overfitting) while "
    "the curvature of meta-test solutions keeps decreasing: flatness is not correlated with generalization.",
    "in the FOMAML 5-way 1-shot runs with the most iterations, at each seed's held-out accuracy peak: holds if, "
    f"{ACROSS_SEEDS}, accuracy degrades significantly from the peak to the last checkpoint and curvature falls "
    "significantly over the same checkpoints; fails if accuracy degrades while curvature rises significantly; "
    "inconclusive otherwise (also when accuracy does not degrade: no overfitting to look at).",
    falls_after_peak_of("hessian_spectral_norm", "query_accuracy", scope=OVERFIT),
)
_claim(
    "trajectory-coherence-tracks-accuracy",
    "§2.5.2, Figs. 2.5, 2.10",
    "Higher coherence of adaptation trajectories E[θ⃗_iᵀθ⃗_j] goes with higher meta-test target accuracy across "
    "meta-training.",
    "each run gives Spearman ρ(trajectory coherence, target accuracy) over its checkpoints; holds if, "
    f"{ACROSS_SEEDS}, the mean ρ is significantly above 0 in every MAML/FOMAML stratum with T > 1; fails if it is "
    "significantly below 0 in any.",
    association("trajectory_coherence", "query_accuracy", sign=1, scope=MULTI_STEP),
)
_claim(
    "gradient-coherence-tracks-accuracy",
    "§2.5.3, Figs. 2.7, 2.11",
    "With T = 1, the coherence of meta-test gradients at θ^s, E[g_iᵀg_j] (raw inner products), correlates with "
    "the target accuracy after one step, θ^s + α g_i, across meta-training.",
    "each run gives Spearman ρ(gradient coherence, target accuracy) over its checkpoints; holds if, "
    f"{ACROSS_SEEDS}, the mean ρ is significantly above 0 in every stratum meta-trained with T = 1; fails if it is "
    "significantly below 0 in any.",
    association("gradient_coherence", "query_accuracy", sign=1, scope=ONE_STEP),
)
_claim(
    "gradient-inner-product-beats-cosine",
    "§2.4.3",
    "The average inner product between meta-test gradients E[g_iᵀg_j], and not just their direction (the mean "
    "cosine), is more correlated with the average target accuracy.",
    "the runs meta-trained and tested with T = 1 (as gradient-coherence-tracks-accuracy); each run gives "
    "Spearman ρ(gradient inner product, target accuracy) − Spearman ρ(gradient cosine, target accuracy) over its "
    f"checkpoints; holds if, {ACROSS_SEEDS}, the mean difference is significantly above 0 in every stratum "
    "meta-trained with T = 1; fails if it is significantly below 0 in any.",
    tracks_better("gradient_coherence", "gradient_cosine", "query_accuracy", scope=ONE_STEP),
)
_claim(
    "finetune-trajectory-coherence-near-zero",
    "§2.5.2, Fig. 2.6a",
    "For the finetune baseline, trajectory coherence stays much closer to zero than for MAML: adaptation "
    "directions are roughly orthogonal, like random high-dimensional vectors.",
    "each run gives its mean |trajectory coherence| over its checkpoints after the initialisation; holds if, per "
    "stratum (dataset, backbone, ways, shots) that has finetune runs, the paired difference MAML − finetune of the "
    "same seed is significantly above 0 over seeds; fails if it is significantly below 0.",
    improves_on(
        "trajectory_coherence",
        FINETUNE,
        beside(MAML_BASELINE, FINETUNE, varies=("inner_steps", "inner_lr")),
        better="lower",
        source="run_means",
        absolute=True,
        varies=("inner_steps", "inner_lr"),
    ),
)
_claim(
    "finetune-accuracy-below-maml",
    "§2.5.2",
    "The finetune baseline reaches much lower meta-test target accuracy than MAML.",
    "each seed gives its mean paired difference (MAML − finetune of the same seed) in target accuracy over the same "
    f"fixed test tasks at each run's final checkpoint; holds if, {BESIDE_FINETUNE}, t over seeds shows the mean "
    "significantly above 0; fails if it is significantly below 0. Only the direction is tested: the thesis gives "
    'no number for "much".',
    improves_on("query_accuracy", beside(MAML_BASELINE, FINETUNE), FINETUNE),
)
_claim(
    "finetune-gradient-coherence-low",
    "§2.5.3, Fig. 2.6b",
    "For the finetune baseline, the coherence between meta-test gradients E[g_iᵀg_j] at θ^s is very low: much "
    "closer to zero than MAML's.",
    'a raw inner product has no scale-free "low", so "very low" is read against MAML of the same seed: each '
    "run gives its mean |gradient coherence| over its checkpoints after the initialisation; holds if, "
    f"{BESIDE_FINETUNE}, the paired difference MAML − finetune of the same seed is significantly above 0 over "
    "seeds; fails if it is significantly below 0.",
    improves_on(
        "gradient_coherence",
        FINETUNE,
        beside(MAML_BASELINE, FINETUNE),
        better="lower",
        source="run_means",
        absolute=True,
    ),
)
_claim(
    "trajectory-norm-grows",
    "§2.5.3, Figs. 2.6c-d",
    "The meta-test trajectory norm E[‖θ̃_i − θ^s‖₂] (T = 5) grows as meta-training progresses with MAML.",
    f"each run gives Spearman ρ(step, trajectory norm); holds if, {ACROSS_SEEDS}, the mean ρ is significantly above 0 "
    "in every MAML/FOMAML stratum with T > 1; fails if it is significantly below 0 in any.",
    trend("trajectory_norm", 1, scope=MULTI_STEP),
)
_claim(
    "finetune-trajectory-norm-flat",
    "§2.5.3, Figs. 2.6c-d",
    "As opposed to MAML, the meta-test trajectory norm E[‖θ̃_i − θ^s‖₂] (T = 5) of the finetune baseline does not "
    "grow over pre-training.",
    "each finetune run gives Spearman ρ(step, trajectory norm) over its checkpoints (as trajectory-norm-grows); "
    f"holds if, {ACROSS_SEEDS}, TOST shows the mean ρ inside ±{FINETUNE_NORM_TREND_MARGIN} "
    "(FINETUNE_NORM_TREND_MARGIN: at most a weak monotone trend) in every stratum; fails if it is significantly "
    f"above +{FINETUNE_NORM_TREND_MARGIN} in any (the norm grows); inconclusive otherwise, also when it falls "
    f"significantly below −{FINETUNE_NORM_TREND_MARGIN} (not flat, but not growing either).",
    no_trend("trajectory_norm", FINETUNE_NORM_TREND_MARGIN, scope=FINETUNE, fails="above"),
)
_claim(
    "regulariser-raises-accuracy",
    "§2.6, Fig. 2.8",
    "Regularising the angles between inner-loop trajectories (Algorithm 1, γ = 0.5) raises meta-test target "
    "accuracy of second-order MAML (Omniglot 20-way 1-shot; thesis: 94.05% → 95.38%, 5 runs × 600 tasks).",
    "each seed gives its mean paired difference (regularised − MAML of the same seed) in target accuracy over the "
    f"same fixed test tasks at the final checkpoints; holds if, {ACROSS_SEEDS}, the mean is significantly above 0; "
    "fails if it is significantly below 0.",
    improves_on("query_accuracy", REGULARISED, MAML_BASELINE),
    published_effect=THESIS_REGULARISER_GAIN,
)


_claim(
    "maml-baseline-near-thesis",
    "§2.6, Fig. 2.8",
    "Before the regulariser is compared with it, the MAML baseline reaches the thesis's level: 94.05% meta-test "
    "target accuracy (second-order MAML, Omniglot 20-way 1-shot, 5 runs × 600 tasks).",
    f"a check of the rebuild's scale (paper profile: the full Omniglot, 20-way 1-shot): holds if, {ACROSS_SEEDS}, "
    f"TOST shows the mean target accuracy of MAML at the final checkpoints within {THESIS_MAML_ACCURACY:.2%} ± "
    f"{MAML_LEVEL_MARGIN:.0%}; fails if it lies significantly outside; inconclusive without such runs (the "
    "default profile trains an Omniglot subset).",
    within(
        "query_accuracy",
        -MAML_LEVEL_MARGIN,
        MAML_LEVEL_MARGIN,
        scope=THESIS_SETTING,
        offset=lambda rows: THESIS_MAML_ACCURACY,
        offset_name="0.9405",
    ),
    category="check",
)


# --------------------------------------------------------------------------------------------
# Figures (one function per figure of Chapter 2; panels as the thesis lays them out)
# --------------------------------------------------------------------------------------------


def _settings(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return list(rows.groupby("setting", sort=True)) if not rows.empty else []


def _by_dataset_ways(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if rows.empty:
        return []
    return [(f"{dataset} {ways}-way", group) for (dataset, ways), group in rows.groupby(["dataset", "ways"], sort=True)]


def fig_curvature(tables: StudyTables, path: Path) -> None:
    """Fig. 2.2: curvature of meta-test solutions over meta-training; one panel per dataset × ways,
    MAML vs FOMAML, 1-shot solid and 5-shot dashed (T > 1 runs)."""
    panels = _by_dataset_ways(MULTI_STEP(tables.checkpoints))
    fig, axes = grid(max(len(panels), 1), columns=2, width=4.6)
    for i, (title, rows) in enumerate(panels):
        curves_by_algorithm(axes[i], rows, "hessian_spectral_norm", title=f"({'abcd'[i % 4]}) {title}", by_shots=True)
    if not panels:
        no_data(axes[0], "(a)", "MAML/FOMAML runs")
    suptitle(fig, "Fig. 2.2 — flatness of meta-test solutions: spectral norm ‖H‖σ of the support-loss Hessian at θ̃ᵢ")
    save(fig, path)


def _characterization(rows: pd.DataFrame, path: Path, title: str, what: str) -> None:
    """Target accuracy (a), support loss (b) and curvature (c) of meta-test solutions; a dotted
    line marks the checkpoint of peak accuracy (mean over runs)."""
    metrics = ("query_accuracy", "support_loss", "hessian_spectral_norm")
    fig, axes = grid(3, columns=3)
    for ax, metric, letter in zip(axes, metrics, "abc", strict=True):
        if rows.empty:
            no_data(ax, f"({letter}) {label(metric)}", what)
            continue
        curves_by_algorithm(ax, rows, metric, title=f"({letter}) {label(metric)}")
        peak = rows.groupby("step")["query_accuracy"].mean().idxmax()
        ax.axvline(peak, color="#777777", linestyle=":", linewidth=1)
    setting = ", ".join(sorted(rows["setting"].unique())) if not rows.empty else ""
    suptitle(fig, f"{title} {setting}".rstrip())
    save(fig, path)


def fig_characterization(tables: StudyTables, path: Path) -> None:
    """Fig. 2.3: the extended FOMAML 5-way 1-shot run (meta-overfitting)."""
    _characterization(
        OVERFIT(tables.checkpoints),
        path,
        "Fig. 2.3 — characterization of meta-test solutions, extended FOMAML run (dotted: peak accuracy):",
        "extended FOMAML 5-way 1-shot run",
    )


def fig_finetune(tables: StudyTables, path: Path) -> None:
    """Fig. 2.4: the same three panels for the finetune baseline."""
    _characterization(
        FINETUNE(tables.checkpoints),
        path,
        "Fig. 2.4 — finetune baseline: characterization of meta-test solutions (dotted: peak accuracy):",
        "finetune runs",
    )


def _dual_panels(rows: pd.DataFrame, path: Path, right: str, title: str, what: str, *, per_run: bool) -> None:
    """One dual-axis panel per setting × algorithm: accuracy (blue) and ``right`` (orange)."""
    groups = list(rows.groupby(["setting", "algorithm"], sort=True)) if not rows.empty else []
    fig, axes = grid(max(len(groups), 1), columns=2, width=4.8)
    for i, ((setting, algorithm), group) in enumerate(groups):
        order = "Second-Order" if algorithm == "maml" else "First-Order"
        dual_axis(axes[i], group, "query_accuracy", right, title=f"({chr(97 + i)}) {setting}, {order}", per_run=per_run)
    if not groups:
        no_data(axes[0], "(a)", what)
    suptitle(fig, title)
    save(fig, path)


def fig_trajectory_coherence(tables: StudyTables, path: Path) -> None:
    """Fig. 2.5: trajectory coherence (orange) vs target accuracy (blue), 5-way 1-shot, FO and SO."""
    _dual_panels(
        where(ways=5, shots=1)(MULTI_STEP(tables.checkpoints)),
        path,
        "trajectory_coherence",
        "Fig. 2.5 — coherence of adaptation trajectories (orange) and target accuracy (blue), 5-way 1-shot, T > 1",
        "5-way 1-shot MAML/FOMAML runs",
        per_run=False,
    )


def fig_trajectory_coherence_all(tables: StudyTables, path: Path) -> None:
    """Fig. 2.10: the same for every setting with T > 1."""
    _dual_panels(
        MULTI_STEP(tables.checkpoints),
        path,
        "trajectory_coherence",
        "Fig. 2.10 — trajectory coherence (orange) and target accuracy (blue), every setting, T > 1",
        "MAML/FOMAML runs",
        per_run=False,
    )


RANDOM_SD = "trajectory_coherence_random_sd"
"""The s.d. of the mean pairwise cosine of random directions in the adapted dimensions (metaland.probes.coherence)."""


def fig_finetune_and_norms(tables: StudyTables, path: Path) -> None:
    """Fig. 2.6: finetune trajectory (a) and gradient (b) coherence, (a) with the band random directions of
    the same number and dimension would fall in; trajectory norms, 1-shot (c) and 5-shot (d), for every
    algorithm with T > 1 and finetune."""
    finetune = FINETUNE(tables.checkpoints)
    norms = pd.concat([MULTI_STEP(tables.checkpoints), finetune])  # the thesis: MAML, FOMAML (T > 1), finetune
    fig, axes = grid(4, columns=2, width=4.6)
    for ax, metric, letter in ((axes[0], "trajectory_coherence", "a"), (axes[1], "gradient_coherence", "b")):
        title = f"({letter}) finetune: {label(metric)}"
        if finetune.empty:
            no_data(ax, title, "finetune runs")
        else:
            curves_by_algorithm(ax, finetune, metric, title=title)
    if not finetune.empty and RANDOM_SD in finetune:  # §2.5.2: "akin to random vectors in high dimension"
        band = 1.96 * finetune[RANDOM_SD].mean()
        axes[0].axhspan(-band, band, color="grey", alpha=0.25, label=f"random directions, 95%: ±{band:.1e}")
        axes[0].axhline(0, color="grey", linewidth=0.6)
        axes[0].legend(fontsize=6)
    for ax, shots, letter in ((axes[2], 1, "c"), (axes[3], 5, "d")):
        rows = where(shots=shots)(norms)
        title = f"({letter}) l2 norm of trajectories ({shots}-shot)"
        if rows.empty:
            no_data(ax, title, f"{shots}-shot runs")
        else:
            curves_by_algorithm(ax, rows, "trajectory_norm", title=title)
    suptitle(fig, "Fig. 2.6 — finetune coherence and trajectory norms E[‖θ̃ᵢ − θˢ‖₂]")
    save(fig, path)


def fig_gradient_coherence(tables: StudyTables, path: Path) -> None:
    """Fig. 2.7: gradient coherence at θ^s (orange) vs accuracy at θ^s + α g_i (blue), T = 1,
    5-way runs, individual runs (not averages)."""
    _dual_panels(
        where(ways=5)(ONE_STEP(tables.checkpoints)),
        path,
        "gradient_coherence",
        "Fig. 2.7 — meta-test gradient coherence E[gᵢᵀgⱼ] at θˢ (orange) and target accuracy after one step "
        "(blue); T = 1, individual runs",
        "T = 1 runs",
        per_run=True,
    )


def fig_gradient_coherence_all(tables: StudyTables, path: Path) -> None:
    """Fig. 2.11: the same for every T = 1 setting."""
    _dual_panels(
        ONE_STEP(tables.checkpoints),
        path,
        "gradient_coherence",
        "Fig. 2.11 — gradient coherence (orange) and target accuracy after one step (blue), every T = 1 setting, "
        "individual runs",
        "T = 1 runs",
        per_run=True,
    )


def fig_regulariser(tables: StudyTables, path: Path) -> None:
    """Fig. 2.8: target accuracy over meta-training, MAML with and without Algorithm 1 (left);
    final accuracy, mean and CI over tasks and runs, beside the thesis' numbers (right)."""
    regularised = REGULARISED(tables.checkpoints)
    settings = set(regularised["setting"]) if not regularised.empty else set()
    baseline = MAML_BASELINE(tables.checkpoints)
    baseline = baseline[baseline["setting"].isin(settings)] if not baseline.empty else baseline
    fig, axes = grid(2, columns=2, width=4.8, height=3.6)
    if regularised.empty:
        no_data(axes[0], "(a) target accuracy", "regularised MAML runs")
        no_data(axes[1], "(b) final target accuracy", "regularised MAML runs")
    else:
        curves_by_algorithm(axes[0], pd.concat([baseline, regularised]), "query_accuracy", title="(a) target accuracy")
        final = tables.final_tasks[tables.final_tasks["run"].isin(set(regularised["run"]) | set(baseline["run"]))]
        _final_bars(axes[1], final)
    setting = ", ".join(sorted(settings))
    suptitle(fig, f"Fig. 2.8 — MAML with the trajectory-coherence regulariser (Algorithm 1)\n{setting}".rstrip())
    save(fig, path)


THESIS_REGULARISER = {"maml": 0.9405, "regmaml": 0.9538}
"""§2.6: Omniglot 20-way 1-shot, 5 runs × 600 tasks (second-order MAML; γ = 0.5)."""


def _final_bars(ax, final: pd.DataFrame) -> None:
    """Final target accuracy per algorithm (mean, 95% CI over tasks and runs), thesis values dashed."""
    algorithms = sorted(final["algorithm"].unique())
    for x, algorithm in enumerate(algorithms):
        ci = mean_ci(final[final["algorithm"] == algorithm]["query_accuracy"], 0.95)
        ax.bar(x, ci.mean, width=0.6, color=ALGORITHM_COLORS.get(algorithm, "#555555"), alpha=0.8)
        if ci.n > 1:
            ax.errorbar(x, ci.mean, yerr=[[ci.mean - ci.low], [ci.high - ci.mean]], color="black", capsize=4)
        ax.text(x, ci.high if ci.n > 1 else ci.mean, f"{ci.mean:.2%}", ha="center", va="bottom", fontsize=8)
        if algorithm in THESIS_REGULARISER:
            thesis = THESIS_REGULARISER[algorithm]
            ax.plot([x - 0.35, x + 0.35], [thesis] * 2, color="black", linestyle="--", linewidth=1)
            ax.text(x - 0.35, thesis, f"thesis {thesis:.2%}", ha="left", va="bottom", fontsize=7)
    ax.set_xticks(range(len(algorithms)), [a.upper() for a in algorithms])
    ax.set_ylabel("final target accuracy")
    ax.set_ylim(0.0, 1.0)  # bars from zero: a 1-point difference must not look large
    ax.set_title("(b) final accuracy: mean, 95% CI over tasks;\ndashed: thesis (Omniglot 20-way 1-shot)")


def fig_accuracies(tables: StudyTables, path: Path) -> None:
    """Fig. 2.9: meta-train (training tasks of each meta-batch) and meta-test target accuracy,
    one row of panels per setting, MAML/FOMAML with T > 1."""
    settings = _settings(MULTI_STEP(tables.checkpoints))
    train_log = MULTI_STEP(tables.train_log)
    fig, axes = grid(max(2 * len(settings), 2), columns=2)
    for i, (setting, rows) in enumerate(settings):
        train = train_log[train_log["setting"] == setting]
        curves_by_algorithm(axes[2 * i], train, "query_accuracy", title=f"(a) meta-train accuracy, {setting}")
        axes[2 * i].set_ylabel("meta-train target accuracy")
        curves_by_algorithm(axes[2 * i + 1], rows, "query_accuracy", title=f"(b) meta-test accuracy, {setting}")
    if not settings:
        no_data(axes[0], "(a) meta-train accuracy", "MAML/FOMAML runs")
        no_data(axes[1], "(b) meta-test accuracy", "MAML/FOMAML runs")
    suptitle(fig, "Fig. 2.9 — MAML reproduction: accuracies on training and testing tasks")
    save(fig, path)


STUDIES.register(
    NAME,
    StudySpec(
        name=NAME,
        seed=SEED,
        title="Guiroy 2019 — objective landscapes and generalization of gradient-based meta-learning",
        figures=(
            Figure(
                "fig2_2_curvature", "Curvature of meta-test solutions over meta-training (Fig. 2.2).", fig_curvature
            ),
            Figure(
                "fig2_3_characterization",
                "Extended FOMAML run: target accuracy, support loss and curvature (Fig. 2.3).",
                fig_characterization,
            ),
            Figure(
                "fig2_4_finetune", "Finetune baseline: accuracy, support loss and curvature (Fig. 2.4).", fig_finetune
            ),
            Figure(
                "fig2_5_trajectory_coherence",
                "Trajectory coherence vs target accuracy, 5-way 1-shot (Fig. 2.5).",
                fig_trajectory_coherence,
            ),
            Figure(
                "fig2_6_finetune_and_norms",
                "Finetune coherence; trajectory norms, 1-shot and 5-shot (Fig. 2.6).",
                fig_finetune_and_norms,
            ),
            Figure(
                "fig2_7_gradient_coherence",
                "Gradient coherence at θ^s vs accuracy after one step, T = 1 runs (Fig. 2.7).",
                fig_gradient_coherence,
            ),
            Figure(
                "fig2_8_regulariser", "MAML with and without the Algorithm 1 regulariser (Fig. 2.8).", fig_regulariser
            ),
            Figure("fig2_9_accuracies", "Meta-train and meta-test accuracy (Fig. 2.9).", fig_accuracies),
            Figure(
                "fig2_10_trajectory_coherence_all",
                "Trajectory coherence vs target accuracy, every setting (Fig. 2.10).",
                fig_trajectory_coherence_all,
            ),
            Figure(
                "fig2_11_gradient_coherence_all",
                "Gradient coherence vs accuracy after one step, every T = 1 setting (Fig. 2.11).",
                fig_gradient_coherence_all,
            ),
        ),
    ),
)
