"""Study ``guiroy2019`` — seed 000, Guiroy (MSc thesis, 2019), Chapter 2.

"On the Properties of the Objective Landscapes and Generalization of Gradient-Based
Meta-Learning": over meta-training, meta-test solutions θ̃_i become flatter (after a peak), lower
in support loss and further from θ^s; the coherence of adaptation trajectories (eq. 2.5) and of
meta-test gradients at θ^s (eq. 2.6) tracks generalization while flatness does not.

What this module holds: the claims the foundation runs (MAML, FOMAML; T = 5) can test, and the
figures of the shapes of Figs. 2.2, 2.3, 2.5, 2.6c, 2.7 and 2.9. Choices the thesis leaves open
are knobs in params.yaml (see ``python -m metaland params``): Omniglot class split and rotations
(cbfinn/maml convention), query samples per class (15), BatchNorm with batch statistics, the
power-iteration cap and tolerance, and the number of probe tasks (thesis: 60 for curvature, 500
for coherence; fewer in the CPU-sized default profile).
"""

from __future__ import annotations

from pathlib import Path

from metaland.claims import Claim, correlation, mean_equals, peak_then_fall, register, trend
from metaland.plots import curves_by_algorithm, dual_axis, grid, save
from metaland.results import StudyTables
from metaland.studies import STUDIES, Figure, StudySpec

NAME = "guiroy2019"
SEED = "000"
META_LEARNERS = ("maml", "fomaml")


# --------------------------------------------------------------------------------------------
# Claims (rules fixed before any data; thresholds in metaland.claims)
# --------------------------------------------------------------------------------------------

register(
    Claim(
        id=f"{NAME}/chance-before-adaptation",
        study=NAME,
        seed=SEED,
        section="§2.4.1",
        claim="At the meta-train solution θ^s, before adaptation, target accuracy on meta-test tasks is chance "
        "(1/m) on average.",
        rule="holds if the CI over probe tasks (final checkpoints, all runs) of pre-adaptation target accuracy "
        "contains 1/m; fails if it excludes it.",
        test=mean_equals("pre_query_accuracy", lambda rows: float((1.0 / rows["ways"]).mean())),
    )
)
register(
    Claim(
        id=f"{NAME}/support-loss-falls",
        study=NAME,
        seed=SEED,
        section="§2.5.1, Fig. 2.3b",
        claim="The support loss at adapted meta-test solutions, E[L(f(D_i; θ̃_i))], decreases over meta-training "
        "for MAML and FOMAML.",
        rule="holds if Spearman ρ(step, support loss) ≤ −0.5 with p < α in every MAML/FOMAML run; fails if it "
        "rises significantly in any.",
        test=trend("support_loss", -1, algorithms=META_LEARNERS),
    )
)
register(
    Claim(
        id=f"{NAME}/curvature-rises-then-falls",
        study=NAME,
        seed=SEED,
        section="§2.5.1, Fig. 2.2",
        claim="The curvature of meta-test solutions, E[‖H(D_i; θ̃_i)‖_σ], first rises to a peak, then decreases "
        "as meta-training goes on (solutions become flatter).",
        rule="holds if, in every MAML/FOMAML run, curvature peaks at an interior checkpoint and Spearman ρ(step, "
        "curvature) from the peak on is ≤ −0.5 with p < α; fails if any run peaks at its first or last checkpoint.",
        test=peak_then_fall("hessian_top_eigenvalue", algorithms=META_LEARNERS),
    )
)
register(
    Claim(
        id=f"{NAME}/trajectory-coherence-tracks-accuracy",
        study=NAME,
        seed=SEED,
        section="§2.5.2, Figs. 2.5, 2.10",
        claim="Higher coherence of adaptation trajectories E[θ⃗_iᵀθ⃗_j] goes with higher meta-test target accuracy "
        "across meta-training.",
        rule="holds if Pearson r(trajectory coherence, target accuracy) across checkpoints is > 0 with p < α in "
        "every MAML/FOMAML run; fails if it is significantly negative in any.",
        test=correlation("trajectory_coherence", "query_accuracy", sign=1, algorithms=META_LEARNERS),
    )
)
register(
    Claim(
        id=f"{NAME}/trajectory-norm-grows",
        study=NAME,
        seed=SEED,
        section="§2.5.3, Figs. 2.6c-d",
        claim="The meta-test trajectory norm E[‖θ̃_i − θ^s‖₂] (T = 5) grows as meta-training progresses with MAML.",
        rule="holds if Spearman ρ(step, trajectory norm) ≥ 0.5 with p < α in every MAML/FOMAML run; fails if it "
        "falls significantly in any.",
        test=trend("trajectory_norm", 1, algorithms=META_LEARNERS),
    )
)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _settings(tables: StudyTables):
    return list(tables.checkpoints.groupby("setting", sort=True))


def _metric_by_setting(tables: StudyTables, path: Path, metric: str, title: str) -> None:
    """One panel per setting: ``metric`` over meta-training, one curve per algorithm."""
    settings = _settings(tables)
    fig, axes = grid(len(settings))
    for ax, (setting, rows) in zip(axes, settings, strict=True):
        curves_by_algorithm(ax, rows, metric, title=setting)
    fig.suptitle(title)
    save(fig, path)


def fig_curvature(tables: StudyTables, path: Path) -> None:
    """Fig. 2.2: curvature of meta-test solutions over meta-training, MAML vs FOMAML."""
    _metric_by_setting(
        tables,
        path,
        "hessian_top_eigenvalue",
        "Fig. 2.2 — flatness of meta-test solutions (top Hessian eigenvalue of the support loss at θ̃ᵢ)",
    )


def fig_characterization(tables: StudyTables, path: Path) -> None:
    """Fig. 2.3: target accuracy, support loss and curvature of meta-test solutions."""
    metrics = ("query_accuracy", "support_loss", "hessian_top_eigenvalue")
    settings = _settings(tables)
    fig, axes = grid(len(metrics) * len(settings), columns=3)
    for i, (setting, rows) in enumerate(settings):
        for j, metric in enumerate(metrics):
            curves_by_algorithm(axes[3 * i + j], rows, metric, title=f"({'abc'[j]}) {setting}")
    fig.suptitle("Fig. 2.3 — characterization of meta-test solutions over meta-training")
    save(fig, path)


def _per_run_dual(tables: StudyTables, path: Path, right: str, title: str, algorithms=META_LEARNERS) -> None:
    rows = tables.checkpoints[tables.checkpoints["algorithm"].isin(algorithms)]
    groups = list(rows.groupby(["setting", "algorithm"], sort=True))
    fig, axes = grid(len(groups), columns=2, width=4.6)
    for ax, ((setting, algorithm), group) in zip(axes, groups, strict=True):
        dual_axis(ax, group, "query_accuracy", right, title=f"{setting}, {algorithm.upper()}")
    fig.suptitle(title)
    save(fig, path)


def fig_trajectory_coherence(tables: StudyTables, path: Path) -> None:
    """Fig. 2.5 / 2.10: trajectory coherence (orange) vs target accuracy (blue)."""
    _per_run_dual(
        tables,
        path,
        "trajectory_coherence",
        "Fig. 2.5 — coherence of adaptation trajectories (orange) and target accuracy (blue)",
    )


def fig_gradient_coherence(tables: StudyTables, path: Path) -> None:
    """Fig. 2.7 / 2.11 shape: gradient coherence at θ^s vs target accuracy (here from the T = 5 runs)."""
    steps = sorted(tables.checkpoints["inner_steps"].unique())
    _per_run_dual(
        tables,
        path,
        "gradient_coherence",
        f"Fig. 2.7 shape — meta-test gradient coherence at θˢ (orange) and target accuracy (blue); "
        f"runs with T = {', '.join(map(str, steps))} (thesis: T = 1)",
    )


def fig_trajectory_norm(tables: StudyTables, path: Path) -> None:
    """Fig. 2.6c-d: trajectory norm over meta-training."""
    _metric_by_setting(tables, path, "trajectory_norm", "Fig. 2.6c-d — l2 norm of meta-test adaptation trajectories")


def fig_accuracies(tables: StudyTables, path: Path) -> None:
    """Fig. 2.9: meta-train (training tasks of each meta-batch) and meta-test target accuracy."""
    settings = _settings(tables)
    fig, axes = grid(2 * len(settings), columns=2)
    for i, (setting, rows) in enumerate(settings):
        train = tables.train_log[tables.train_log["setting"] == setting]
        curves_by_algorithm(axes[2 * i], train, "query_accuracy", title=f"(a) meta-train accuracy, {setting}")
        axes[2 * i].set_ylabel("meta-train target accuracy")
        curves_by_algorithm(axes[2 * i + 1], rows, "query_accuracy", title=f"(b) meta-test accuracy, {setting}")
    fig.suptitle("Fig. 2.9 — MAML reproduction: accuracies on training and testing tasks")
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
                "Target accuracy, support loss and curvature (Fig. 2.3).",
                fig_characterization,
            ),
            Figure(
                "fig2_5_trajectory_coherence",
                "Trajectory coherence vs target accuracy (Fig. 2.5).",
                fig_trajectory_coherence,
            ),
            Figure("fig2_6_trajectory_norm", "Trajectory norm over meta-training (Fig. 2.6c-d).", fig_trajectory_norm),
            Figure(
                "fig2_7_gradient_coherence",
                "Gradient coherence at θ^s vs target accuracy (Fig. 2.7 shape).",
                fig_gradient_coherence,
            ),
            Figure("fig2_9_accuracies", "Meta-train and meta-test accuracy (Fig. 2.9).", fig_accuracies),
        ),
    ),
)
