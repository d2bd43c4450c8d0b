"""Study ``sharpmaml`` — seed 002, the Sharp-MAML poster (Abbas et al., ICML 2022).

Sharp-MAML adds sharpness-aware (SAM) perturbations to MAML: in the inner step (α_low, variant
_low), on θ along the meta-gradient (α_up, _up), or both (_both). The poster claims every variant
beats MAML (miniImageNet 5-way 1-shot, Conv-4-64: 47.13 → 48.87 / 49.03 / 49.60 %) and that
Sharp-MAML "seeks out landscapes that are smoother". Here both claims are tested, not assumed:
accuracy on the same fixed test tasks (paired over tasks and seeds), and flatness of each
variant's final solution with the project's landscape probes (SAM sharpness of the meta-loss,
curvature at adapted solutions, the 2-D meta-loss surface). The poster gives no cost; the cost
table counts gradient evaluations per meta-iteration (wall time: MLflow's
``train/seconds_per_iteration`` and ``benchmarks/sharpmaml_cost.py``).

Runs (params.yaml): algorithm ``sharpmaml`` with (α_low, α_up) = (0, 0) for MAML (the same
update bit for bit), (α, 0), (0, α), (α, α), the same seeds for every variant.
See docs/studies/sharpmaml.md for the choices the poster leaves open.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from metaland.claims import Claim, Rule, all_of, improves_on, register, rule_parts, where, within
from metaland.config import AggregateConfig
from metaland.meta.sharp import DEFAULT_RADIUS, radii_of
from metaland.plots import ALGORITHM_COLORS, curves_by_algorithm, grid, no_data, save, suptitle
from metaland.results import StudyTables, stratum_of
from metaland.stats import seed_level, seed_summary, surface_roughness
from metaland.studies import STUDIES, Figure, StudySpec, Table

NAME = "sharpmaml"
SEED = "002"
BASELINE = "maml"
SHARP = ("sharpmaml-low", "sharpmaml-up", "sharpmaml-both")
VARIANTS = (BASELINE, *SHARP)
SHORT = {"maml": "MAML", "sharpmaml-low": "_low", "sharpmaml-up": "_up", "sharpmaml-both": "_both"}
LEGEND = {name: "Sharp-MAML" + short if name != "maml" else short for name, short in SHORT.items()}
"""Legend names (matplotlib hides legend labels that start with an underscore)."""
POSTER_ACCURACY = {"maml": 0.4713, "sharpmaml-low": 0.4887, "sharpmaml-up": 0.4903, "sharpmaml-both": 0.4960}
"""The poster's table: miniImageNet 5-way 1-shot, Conv-4-64, means only (Matching Nets: 43.56%)."""
POSTER_SETTING = "poster: miniImageNet 5-way 1-shot, Conv-4-64"
POSTER_MARGIN = 0.0184
"""Half-width of the band around the poster's MAML accuracy within which our MAML counts as the poster's: the
95% CI of MAML on miniImageNet 5-way 1-shot in Finn et al. (2017; 48.70 ± 1.84%), the row the poster's MAML
reproduces; the poster gives no interval of its own."""
TRAINED_RADIUS = DEFAULT_RADIUS
"""α_up of every profile: the radius _up and _both were trained to be flat at, and the sharpness probe's ρ."""
OTHER_RADII = {"smaller": 0.01, "larger": 0.1}
"""Further radii the sharpness probe measures (its ``radii`` option in every profile): one fifth and twice α_up,
so that "flatter" is not read off the one radius the training objective targets."""
FLATNESS = ("sam_sharpness", *(f"sam_sharpness_rho{r:g}" for r in OTHER_RADII.values()), "hessian_spectral_norm")
CHECKPOINT_FLATNESS = ("meta_hessian_spectral_norm", "meta_loss_centre", "meta_loss_mean_rise")
"""Flatness measured once per checkpoint (no per-task values): the meta-loss Hessian and the 2-D surface."""
LABELS = {
    "sam_sharpness": f"SAM sharpness at ρ = {TRAINED_RADIUS:g} (= α_up)",
    **{f"sam_sharpness_rho{r:g}": f"SAM sharpness at ρ = {r:g}" for r in OTHER_RADII.values()},
    "hessian_spectral_norm": "support-loss curvature ‖H‖σ at θ̃ᵢ",
    "meta_hessian_spectral_norm": "meta-loss curvature ‖∇²F(θ)‖σ",
    "meta_loss_mean_rise": "mean rise of the 2-D meta-loss surface",
}


def _variant(name: str):
    return where(variant=name)


# --------------------------------------------------------------------------------------------
# Claims (rules fixed before the data)
# --------------------------------------------------------------------------------------------

PAIRED = (
    "each seed gives its mean paired difference against MAML of the same seed over the same fixed test tasks at the "
    "final checkpoints; per stratum (dataset, backbone, ways, shots, inner steps and lr), t over seeds"
)

for _name in SHARP:
    register(
        Claim(
            id=f"{NAME}-{_name.split('-')[1]}-beats-maml",
            study=NAME,
            seed=SEED,
            section="Empirical comparison with MAML (table)",
            claim=f"Sharp-MAML{SHORT[_name]} reaches a higher meta-test accuracy than MAML "
            f"(poster: {POSTER_ACCURACY[_name]:.2%} vs {POSTER_ACCURACY['maml']:.2%}).",
            rule=f"{PAIRED}: holds if the mean gain is significantly above 0 (Holm over the study's findings); "
            "fails if significantly below 0; inconclusive otherwise",
            test=improves_on("query_accuracy", _variant(_name), _variant(BASELINE)),
            published_effect=POSTER_ACCURACY[_name] - POSTER_ACCURACY[BASELINE],
        )
    )

register(
    Claim(
        id=f"{NAME}-both-best",
        study=NAME,
        seed=SEED,
        section="Empirical comparison with MAML (table)",
        claim="Sharp-MAML_both is the most accurate of MAML, _low, _up and _both (poster: 49.60%).",
        rule=f"for each of MAML, _low and _up as the baseline, {PAIRED}: holds if _both's gain is significantly above "
        "0 against all three; fails if it is significantly below 0 against any; inconclusive otherwise",
        test=all_of(
            {
                SHORT[other]: improves_on("query_accuracy", _variant("sharpmaml-both"), _variant(other))
                for other in (BASELINE, "sharpmaml-low", "sharpmaml-up")
            }
        ),
        published_effect=POSTER_ACCURACY["sharpmaml-both"] - POSTER_ACCURACY["sharpmaml-up"],
    )
)

register(
    Claim(
        id=f"{NAME}-maml-at-poster-level",
        study=NAME,
        seed=SEED,
        section="Empirical comparison with MAML (table)",
        claim=f"In the poster's setting, our MAML baseline reaches the poster's MAML accuracy "
        f"({POSTER_ACCURACY[BASELINE]:.2%}), so the variants are compared against the same baseline.",
        rule=f"a sanity check on the runs of the poster's setting only (miniImageNet 5-way 1-shot; the paper profile): "
        f"each seed gives its mean final accuracy over the fixed test tasks; holds if TOST over seeds shows the mean "
        f"within {POSTER_ACCURACY[BASELINE]:.2%} ± {POSTER_MARGIN:.2%} (Finn et al.'s CI half-width); fails if it "
        "lies significantly outside; inconclusive otherwise (no such runs in the default profile)",
        test=within(
            "query_accuracy",
            POSTER_ACCURACY[BASELINE] - POSTER_MARGIN,
            POSTER_ACCURACY[BASELINE] + POSTER_MARGIN,
            scope=where(variant=BASELINE, dataset="miniimagenet", ways=5, shots=1),
        ),
        category="check",
    )
)

FLATTER = {
    "sharpness": ("sam_sharpness", f"SAM sharpness of the meta-loss at ρ = α_up = {TRAINED_RADIUS:g}", "final_tasks"),
    **{
        f"sharpness-{size}-radius": (
            f"sam_sharpness_rho{r:g}",
            f"SAM sharpness of the meta-loss at ρ = {r:g}, a radius none of the variants was trained at",
            "final_tasks",
        )
        for size, r in OTHER_RADII.items()
    },
    "curvature": ("hessian_spectral_norm", "curvature of the support loss at the adapted solutions θ̃ᵢ", "final_tasks"),
    "meta-loss-surface": (
        "meta_loss_mean_rise",
        "mean rise of the 2-D meta-loss surface over its grid above its centre (filter-normalised directions, the "
        "same draw for every variant; the poster's landscape figure)",
        "final_checkpoints",
    ),
    "meta-loss-curvature": (
        "meta_hessian_spectral_norm",
        "curvature of the meta-loss F at θ (‖∇²F‖σ over the first fixed probe tasks, the landscape the upper "
        "perturbation flattens)",
        "final_checkpoints",
    ),
}  # fmt: skip
"""Claim suffix -> (metric, what it measures, the rows it reads)."""

for _suffix, (_metric, _what, _source) in FLATTER.items():
    _over = (
        "over the same fixed probe tasks at the final checkpoints"
        if _source == "final_tasks"
        else "at the final checkpoints (one value per run, the meta-loss of the same fixed probe tasks)"
    )
    register(
        Claim(
            id=f"{NAME}-flatter-{_suffix}",
            study=NAME,
            seed=SEED,
            section="Sharp-MAML improves the landscape of MAML",
            claim=f"Every Sharp-MAML variant finds flatter solutions than MAML: lower {_what}.",
            rule=f"for each of _low, _up and _both, each seed gives its paired reduction in {_metric} against MAML of "
            f"the same seed {_over}; per stratum (dataset, backbone, ways, shots, inner steps and lr), t over seeds: "
            "holds if it is significantly above 0 for all three; fails if significantly below 0 for any; inconclusive "
            "otherwise",
            test=all_of(
                {
                    SHORT[name]: improves_on(
                        _metric, _variant(name), _variant(BASELINE), better="lower", source=_source
                    )
                    for name in SHARP
                }
            ),
        )
    )

SURFACE = "meta_loss"
"""The surface probe's 2-D meta-loss surface (``tables.grids``): what ``fig_surfaces`` draws and the smoothness
claim reads."""


def final_surfaces(grids: pd.DataFrame) -> pd.DataFrame:
    """The grid rows of each run's meta-loss surface at its last probed checkpoint."""
    if grids.empty:
        return grids
    grids = grids[grids["grid"] == SURFACE]
    return grids[grids["step"] == grids.groupby("run")["step"].transform("max")]


def log_roughness(surface: pd.DataFrame) -> float:
    """log of the surface's roughness (``metaland.stats.surface_roughness``: the mean |discrete Laplacian| over the
    interior grid points, the surface's own curvature plus any spikes) from one run's grid rows; −inf for a
    perfectly flat surface, NaN without a full grid. A paired difference of logs is the log of the ratio of the two
    roughnesses: free of the loss's units and of the grid step, which both arms of a pair share."""
    z = surface.pivot(index="x", columns="y", values="value").to_numpy(float)
    if min(z.shape) < 3 or not np.isfinite(z).all():
        return math.nan
    roughness = surface_roughness(z)
    return math.log(roughness) if roughness > 0 else -math.inf


SMOOTHER_COLUMNS = ["stratum", "seed", "run", "arm", "weight", "arms", "unit", "value"]


def smoother_than_maml(name: str) -> Rule:
    """Variant ``name``'s final meta-loss surface is smoother than MAML's of the same stratum and seed: per seed,
    log roughness(MAML) − log roughness(variant) (the contrast family: one unit per run, arms paired by seed)."""

    def select(tables: StudyTables) -> pd.DataFrame:
        surfaces = final_surfaces(tables.grids)
        rows = []
        for arm, variant, weight in (("treatment", name, -1.0), ("baseline", BASELINE, 1.0)):
            mine = _variant(variant)(surfaces)
            for run, surface in mine.groupby("run", sort=True) if not mine.empty else []:
                rows.append(
                    {"stratum": stratum_of(surface).iloc[0], "seed": int(surface["seed"].iloc[0]), "run": run}
                    | {"arm": arm, "weight": weight, "arms": 2, "unit": SURFACE, "value": log_roughness(surface)}
                )
        return pd.DataFrame(rows, columns=SMOOTHER_COLUMNS)

    label = "mean paired difference in log roughness of the final meta-loss surface (MAML − variant), per seed"
    params = {
        "name": label,
        "metric": f"log surface_roughness({SURFACE})",
        "arms": {"treatment": -1.0, "baseline": 1.0},
    }
    return Rule("contrast", params | {"source": "final meta-loss surfaces (grids)"}, select)


register(
    Claim(
        id=f"{NAME}-smoother-meta-loss-surface",
        study=NAME,
        seed=SEED,
        section="Sharp-MAML improves the landscape of MAML",
        claim="Sharp-MAML seeks out landscapes that are smoother than MAML's: every variant's 2-D meta-loss surface "
        "around its final θ is less rough than MAML's.",
        rule="for each of _low, _up and _both, each seed gives log(R_MAML / R_variant), R the roughness of the run's "
        "2-D meta-loss surface at its final checkpoint (the mean |discrete Laplacian| over the interior grid points, "
        "metaland.stats.surface_roughness; filter-normalised directions of the same draw for every variant, the "
        "surfaces of figures/sharpmaml/surfaces.png), against MAML of the same seed; per stratum (dataset, backbone, "
        "ways, shots, inner steps and lr), t over seeds: holds if it is significantly above 0 for all three; fails "
        "if significantly below 0 for any; inconclusive otherwise. A ratio, so free of the loss's units and the grid "
        "step; no threshold: the poster gives no size",
        test=all_of({SHORT[name]: smoother_than_maml(name) for name in SHARP}),
    )
)

# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _present(frame: pd.DataFrame) -> list[str]:
    return [v for v in VARIANTS if not frame.empty and v in set(frame["variant"])]


def accuracy_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Final meta-test accuracy per stratum and variant: mean and CI over seeds (each seed's mean over the
    fixed tasks; what the claims read), the field's CI over tasks × seeds beside it (labelled), the gain
    over MAML of the same seed (paired, CI over seeds) and the poster's numbers."""
    final = tables.final_tasks
    gains = {
        name: {
            p.stratum: p
            for p in rule_parts(improves_on("query_accuracy", _variant(name), _variant(BASELINE)), tables, cfg)
        }
        for name in SHARP
    }
    rows = []
    for stratum, group in final.groupby(stratum_of(final)) if not final.empty else []:
        for name in _present(group):
            mine = group[group["variant"] == name]
            gain = gains.get(name, {}).get(stratum)
            rows.append(
                {
                    "stratum": stratum,
                    "variant": name,
                    **seed_summary(mine, "query_accuracy", cfg.confidence, "accuracy"),
                    "gain_over_maml": 0.0 if name == BASELINE else (gain.inference.estimate if gain else np.nan),
                    "gain_ci_low": gain.inference.ci_low if gain else np.nan,
                    "gain_ci_high": gain.inference.ci_high if gain else np.nan,
                    "poster_accuracy": POSTER_ACCURACY[name],
                    "poster_gain_over_maml": POSTER_ACCURACY[name] - POSTER_ACCURACY[BASELINE],
                }
            )
    return pd.DataFrame(rows)


def _seed_cells(frame: pd.DataFrame, metric: str, cfg: AggregateConfig) -> dict:
    """``metric``'s mean over seeds and its CI as table cells (none where ``frame`` lacks the column)."""
    if metric not in frame:
        return {}
    ci = seed_level(frame, metric, cfg.confidence)
    return {metric: ci.estimate, f"{metric}_ci_low": ci.ci_low, f"{metric}_ci_high": ci.ci_high}


def flatness_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Per stratum and variant at the final checkpoints: SAM sharpness at α_up and at the other radii, the
    support-loss curvature at θ̃ᵢ, the meta-loss curvature at θ, and the 2-D meta-loss surface's centre value
    and mean rise (each: mean and CI over seeds, a seed's value its mean over the fixed tasks where there are
    tasks)."""
    final, last = tables.final_tasks, final_checkpoints(tables.checkpoints)
    rows = []
    for stratum, group in final.groupby(stratum_of(final)) if not final.empty else []:
        surfaces = last[stratum_of(last) == stratum] if not last.empty else last
        for name in _present(group):
            row: dict = {"stratum": stratum, "variant": name}
            for metric, frame in [*((m, group) for m in FLATNESS), *((m, surfaces) for m in CHECKPOINT_FLATNESS)]:
                row |= _seed_cells(frame[frame["variant"] == name], metric, cfg) if metric in frame else {}
            rows.append(row)
    return pd.DataFrame(rows)


def cost_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Gradient evaluations per task and meta-iteration, and relative to MAML with the same inner
    steps (from the training log; wall time is machine-dependent and lives in MLflow)."""
    log = tables.train_log
    rows = []
    if not log.empty and "gradient_evaluations" in log:
        count = log.groupby(["variant", "inner_steps"])["gradient_evaluations"].max()
        for name in _present(log):
            for steps, value in count[name].items():
                base = count.get((BASELINE, steps), np.nan)
                rows.append(
                    {
                        "variant": name,
                        "inner_steps": steps,
                        "gradient_evaluations": value,
                        "relative_to_maml": value / base,
                    }
                )
    return pd.DataFrame(rows, columns=["variant", "inner_steps", "gradient_evaluations", "relative_to_maml"])


def sweep_radius(variant: str) -> float | None:
    """α of a run on the radius sweep: Sharp-MAML_both with α_low = α_up = α (the official code's one
    ``--alpha``; ``sharpmaml-both`` itself at the default 0.05), MAML at 0; None for any other variant."""
    try:
        low, up = radii_of(variant)
    except ValueError:
        return None
    return low if low == up else None


def radius_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """The radius sweep, per stratum that trains Sharp-MAML_both at two or more radii (the paper profile):
    for each α, final meta-test accuracy (mean and CI over seeds), its gain over MAML of the same seed
    (paired on the fixed tasks, CI over seeds) and the flatness of the final solutions. Strata with the
    poster's variants only give no rows."""
    final = tables.final_tasks
    radii = {v: r for v in set(final["variant"]) if (r := sweep_radius(v)) is not None} if not final.empty else {}
    gains = {  # per variant on the sweep, its paired gain over MAML in every stratum (one rule evaluation each)
        name: {
            p.stratum: p
            for p in rule_parts(improves_on("query_accuracy", _variant(name), _variant(BASELINE)), tables, cfg)
        }
        for name, radius in radii.items()
        if radius > 0
    }
    rows = []
    for stratum, group in final.groupby(stratum_of(final)) if not final.empty else []:
        swept = {v: radii[v] for v in set(group["variant"]) if v in radii}
        if sum(r > 0 for r in swept.values()) < 2:
            continue
        for variant, radius in sorted(swept.items(), key=lambda item: item[1]):
            mine = group[group["variant"] == variant]
            gain = gains.get(variant, {}).get(stratum)
            row = {
                "stratum": stratum,
                "variant": variant,
                "alpha": radius,
                **seed_summary(mine, "query_accuracy", cfg.confidence, "accuracy"),
                "gain_over_maml": 0.0 if variant == BASELINE else (gain.inference.estimate if gain else np.nan),
                "gain_ci_low": gain.inference.ci_low if gain and variant != BASELINE else np.nan,
                "gain_ci_high": gain.inference.ci_high if gain and variant != BASELINE else np.nan,
            }
            for metric in FLATNESS:
                row |= _seed_cells(mine, metric, cfg)
            rows.append(row)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["stratum", "variant", "alpha", "seeds", "accuracy"])


GRADIENT_NORM = "meta_gradient_sq_norm"
"""The training log's meta-batch estimate of ‖∇F(θ^t)‖² (metaland.meta.sharp)."""


def running_gradient_norm(log: pd.DataFrame) -> pd.DataFrame:
    """Each run's training log with ``running_sq_norm``: (1/t) Σ_{s ≤ t} ‖∇F(θ^s)‖², the left-hand side of
    the main theorem, from the logged window means (a row at step t covers the iterations since the row
    before it). The poster's variants only, so a sweep's radii are never averaged into them."""
    if log.empty or GRADIENT_NORM not in log:
        return pd.DataFrame()
    log = log[log["variant"].isin(VARIANTS)].sort_values(["run", "step"])
    covered = log.groupby("run")["step"].diff().fillna(log["step"])
    total = (log[GRADIENT_NORM] * covered).groupby(log["run"]).cumsum()
    return log.assign(running_sq_norm=total / log["step"])


CONVERGENCE_COLUMNS = [
    "stratum",
    "variant",
    "step",
    "seeds",
    "running_sq_norm",
    "ci_low",
    "ci_high",
    "sqrt_t_times_running",
]


def convergence_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Per stratum, variant and logged step t: the running mean (1/t) Σ ‖∇F(θ^s)‖² (:func:`running_gradient_norm`),
    mean and CI over seeds, and t^½ times it (flat where the running mean falls as 1/√t, the theorem's rate)."""
    frame = running_gradient_norm(tables.train_log)
    rows = []
    for (stratum, variant, step), group in frame.groupby([stratum_of(frame), "variant", "step"]) if len(frame) else []:
        ci = seed_level(group, "running_sq_norm", cfg.confidence)
        rows.append(
            {
                "stratum": stratum,
                "variant": variant,
                "step": step,
                "seeds": ci.n,
                "running_sq_norm": ci.estimate,
                "ci_low": ci.ci_low,
                "ci_high": ci.ci_high,
                "sqrt_t_times_running": ci.estimate * math.sqrt(step),
            }
        )
    return pd.DataFrame(rows, columns=CONVERGENCE_COLUMNS)


def final_checkpoints(checkpoints: pd.DataFrame) -> pd.DataFrame:
    """Each run's last probed checkpoint."""
    if checkpoints.empty:
        return checkpoints
    return checkpoints[checkpoints["step"] == checkpoints.groupby("run")["step"].transform("max")]


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _bars(ax, values: dict[str, tuple[float, float, float]], *, ylabel: str, title: str, fmt: str = "{:.3g}") -> None:
    """One bar per variant from 0: mean with its CI (low, high) over seeds; the value under each bar's name."""
    for x, (name, (mean, low, high)) in enumerate(values.items()):
        ax.bar(x, mean, width=0.6, color=ALGORITHM_COLORS.get(name, "#555555"), alpha=0.85)
        if not np.isnan(low):
            ax.errorbar(x, mean, yerr=[[mean - low], [high - mean]], color="black", capsize=4)
    ax.set_xticks(range(len(values)), [f"{SHORT[n]}\n{fmt.format(v[0])}" for n, v in values.items()])
    ax.set_ylim(bottom=0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def _by_variant(table: pd.DataFrame, metric: str) -> dict[str, tuple[float, float, float]]:
    """Variant -> (mean, CI low, CI high) of ``metric`` from a table with one row per variant."""
    return {
        r["variant"]: (
            r[metric],
            r.get(f"{metric}_ci_low", r.get("ci_low")),
            r.get(f"{metric}_ci_high", r.get("ci_high")),
        )
        for _, r in table.iterrows()
        if metric in table and not pd.isna(r[metric])
    }


def _strata_of(frame: pd.DataFrame) -> list[str]:
    return sorted(set(frame["stratum"])) if "stratum" in frame else []


def fig_accuracy(tables: StudyTables, path: Path) -> None:
    """Per stratum: (a) our final meta-test accuracy per variant, (c) meta-training curves; (b) the poster's."""
    table = accuracy_table(tables, AggregateConfig())
    strata = _strata_of(table)
    fig, axes = grid(3 * max(len(strata), 1), columns=3, width=4.2, height=3.4)
    if not strata:
        no_data(axes[0], "(a) meta-test accuracy, ours", "Sharp-MAML runs")
    log = tables.train_log
    for i, stratum in enumerate(strata):
        mine = table[table["stratum"] == stratum]
        _bars(
            axes[3 * i],
            {r.variant: (r.accuracy, r.ci_low, r.ci_high) for r in mine.itertuples()},
            ylabel="final meta-test accuracy",
            title=f"(a) ours, {mine['seeds'].max()} seed(s): mean, 95% CI over seeds",
            fmt="{:.1%}",
        )
        axes[3 * i].set_ylim(0, 1)
        axes[3 * i].set_xlabel(stratum, fontsize=6, wrap=True)
        rows = log[(stratum_of(log) == stratum) & log["variant"].isin(VARIANTS)] if not log.empty else log
        if rows.empty:
            no_data(axes[3 * i + 2], "(c) meta-training", "training logs")
        else:
            curves_by_algorithm(
                axes[3 * i + 2], rows, "query_accuracy", title="(c) meta-training: query accuracy at θ̃¹", key="variant",
                names=LEGEND,
            )  # fmt: skip
            axes[3 * i + 2].set_ylabel("meta-train query accuracy (running mean)")
        if i:
            axes[3 * i + 1].axis("off")
    poster = {name: (acc, np.nan, np.nan) for name, acc in POSTER_ACCURACY.items()}
    _bars(axes[1], poster, ylabel="accuracy (poster)", title=f"(b) {POSTER_SETTING}\n(means only)", fmt="{:.2%}")
    axes[1].set_ylim(0, 1)
    suptitle(fig, 'Sharp-MAML vs MAML — accuracy (seed 002, table "Empirical comparison with MAML")')
    save(fig, path)


def _grouped_bars(ax, table: pd.DataFrame, metrics: dict[str, str], *, ylabel: str, title: str) -> None:
    """Bars from 0 grouped by ``metrics`` (column -> group label), one bar per variant in each group, with the
    95% CI over seeds; the key names the variants' colours."""
    names = [n for n in VARIANTS if n in set(table["variant"])]
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        row = table[table["variant"] == name].iloc[0]
        for g, metric in enumerate(metrics):
            mean = row.get(metric, np.nan)
            if pd.isna(mean):
                continue
            x = g - 0.4 + (i + 0.5) * width
            ax.bar(x, mean, width=width, color=ALGORITHM_COLORS.get(name, "#555555"), alpha=0.85,
                   label=LEGEND[name] if g == 0 else None)  # fmt: skip
            low, high = row.get(f"{metric}_ci_low", np.nan), row.get(f"{metric}_ci_high", np.nan)
            if not pd.isna(low):
                ax.errorbar(x, mean, yerr=[[mean - low], [high - mean]], color="black", capsize=2, linewidth=0.8)
    ax.set_xticks(range(len(metrics)), list(metrics.values()))
    ax.set_ylim(bottom=0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)


SHARPNESS_BY_RADIUS = {
    f"sam_sharpness_rho{OTHER_RADII['smaller']:g}": f"ρ = {OTHER_RADII['smaller']:g}",
    "sam_sharpness": f"ρ = {TRAINED_RADIUS:g}\n(= α_up)",
    f"sam_sharpness_rho{OTHER_RADII['larger']:g}": f"ρ = {OTHER_RADII['larger']:g}",
}


def fig_flatness(tables: StudyTables, path: Path) -> None:
    """Per stratum: flatness of each variant's final solutions: SAM sharpness at three radii, the support-loss
    curvature at θ̃ᵢ, the meta-loss curvature at θ and the surface's mean rise."""
    table = flatness_table(tables, AggregateConfig())
    strata = _strata_of(table)
    fig, axes = grid(4 * max(len(strata), 1), columns=4, width=4.2, height=3.4)
    panels = (
        ("hessian_spectral_norm", LABELS["hessian_spectral_norm"]),
        ("meta_hessian_spectral_norm", LABELS["meta_hessian_spectral_norm"]),
        ("meta_loss_mean_rise", LABELS["meta_loss_mean_rise"]),
    )
    for i, stratum in enumerate(strata or [""]):
        mine = table[table["stratum"] == stratum] if strata else table
        radii = {m: label for m, label in SHARPNESS_BY_RADIUS.items() if m in mine and mine[m].notna().any()}
        if radii:
            _grouped_bars(axes[4 * i], mine, radii, ylabel="L(θ + ε*) − L(θ) after adaptation",
                          title="(a) SAM sharpness by radius ρ\nmean, 95% CI over seeds")  # fmt: skip
            axes[4 * i].set_xlabel(stratum, fontsize=6)
        else:
            no_data(axes[4 * i], "(a) SAM sharpness by radius", "sharpness probe")
        for j, (metric, what) in enumerate(panels, start=1):
            ax, letter = axes[4 * i + j], "abcd"[j]
            values = _by_variant(mine, metric)
            if not values:
                no_data(ax, f"({letter}) {what}", f"{metric} probe")
                continue
            _bars(ax, values, ylabel=what, title=f"({letter}) {what}\nmean, 95% CI over seeds")
            ax.set_xlabel(stratum, fontsize=6)
    suptitle(
        fig, 'Does Sharp-MAML find flatter solutions? Lower is flatter (seed 002, "Sharp-MAML improves the landscape")'
    )
    save(fig, path)


def fig_surfaces(tables: StudyTables, path: Path) -> None:
    """The 2-D meta-loss surface around each variant's final θ (lowest seed), one row per stratum, on shared
    contour levels."""
    grids = tables.grids
    if grids.empty:
        fig, axes = grid(1)
        no_data(axes[0], "meta-loss surfaces", "surface probe")
        save(fig, path)
        return
    grids = final_surfaces(grids)
    grids = grids.assign(stratum=stratum_of(grids))
    shown = []
    for stratum in sorted(set(grids["stratum"])):
        for name in _present(grids[grids["stratum"] == stratum]):
            rows = grids[(grids["variant"] == name) & (grids["stratum"] == stratum)]
            shown.append((name, rows[rows["seed"] == rows["seed"].min()]))
    fig, axes = grid(len(shown), columns=4, width=4.0, height=3.2)
    low, high = grids["value"].min(), np.quantile(grids["value"], 0.95)
    levels = np.linspace(low, high, 12)
    for ax, (name, rows) in zip(axes, shown, strict=True):
        table = rows.pivot(index="y", columns="x", values="value")
        contour = ax.contourf(table.columns, table.index, table.to_numpy(), levels=levels, cmap="viridis", extend="max")
        ax.contour(table.columns, table.index, table.to_numpy(), levels=levels, colors="white", linewidths=0.4)
        ax.plot(0, 0, marker="+", color="red", markersize=9)
        ax.set_title(f"{SHORT[name]} (seed {int(rows['seed'].iloc[0])}), {rows['dataset'].iloc[0]}", fontsize=8)
        ax.set_xlabel("a (direction δ)")
        ax.set_ylabel("b (direction η)")
        ax.grid(False)
        fig.colorbar(contour, ax=ax, label="meta-loss after adaptation")
    suptitle(fig, "Meta-loss f(a, b) around the final θ, filter-normalised directions (same draw for all)")
    save(fig, path)


def fig_radii(tables: StudyTables, path: Path) -> None:
    """Per stratum with a radius sweep: (a) final meta-test accuracy against α, (b) the gain over MAML of the
    same seed, (c) the support-loss curvature ‖H‖σ at θ̃ᵢ; MAML (α = 0) as a line with its band."""
    table = radius_table(tables, AggregateConfig())
    strata = _strata_of(table)
    fig, axes = grid(3 * max(len(strata), 1), columns=3, width=4.2, height=3.4)
    if not strata:
        no_data(axes[0], "radius sweep", "Sharp-MAML_both runs at two or more radii (the paper profile)")
        for ax in axes[1:3]:
            ax.axis("off")
    panels = (
        ("accuracy", "ci_low", "ci_high", "final meta-test accuracy", "(a) accuracy"),
        ("gain_over_maml", "gain_ci_low", "gain_ci_high", "gain over MAML, same seed", "(b) paired gain over MAML"),
        (
            "hessian_spectral_norm",
            "hessian_spectral_norm_ci_low",
            "hessian_spectral_norm_ci_high",
            LABELS["hessian_spectral_norm"],
            "(c) curvature",
        ),
    )
    for i, stratum in enumerate(strata):
        mine = table[table["stratum"] == stratum].sort_values("alpha")
        swept, maml = mine[mine["alpha"] > 0], mine[mine["variant"] == BASELINE]
        for j, (metric, low, high, ylabel, title) in enumerate(panels):
            ax = axes[3 * i + j]
            if metric not in mine:
                no_data(ax, title, f"{metric} probe")
                continue
            ax.errorbar(swept["alpha"], swept[metric], yerr=[swept[metric] - swept[low], swept[high] - swept[metric]],
                        color=ALGORITHM_COLORS.get("sharpmaml-both", "#555555"), marker="o", capsize=3,
                        label="Sharp-MAML_both, α_low = α_up = α")  # fmt: skip
            if not maml.empty and metric != "gain_over_maml":
                row = maml.iloc[0]
                ax.axhline(row[metric], color=ALGORITHM_COLORS.get(BASELINE, "#555555"), label="MAML (α = 0)")
                if not pd.isna(row[low]):
                    ax.axhspan(row[low], row[high], color=ALGORITHM_COLORS.get(BASELINE, "#555555"), alpha=0.15)
            if metric == "gain_over_maml":
                ax.axhline(0, color="black", linewidth=0.8, label="no gain")
            ax.axvline(DEFAULT_RADIUS, color="grey", linestyle=":", label=f"α of the other runs ({DEFAULT_RADIUS:g})")
            ax.set_xscale("log")
            ax.set_xlabel(f"radius α (log scale)\n{stratum}", fontsize=7)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title}\nmean, 95% CI over {int(mine['seeds'].max())} seed(s)")
            ax.legend(fontsize=6)
    suptitle(fig, "Sharp-MAML_both across radii (the official code's one --alpha; the poster gives none)")
    save(fig, path)


def fig_convergence(tables: StudyTables, path: Path) -> None:
    """Per stratum: log₁₀ of the running mean (1/t) Σ ‖∇F(θ^s)‖² of each variant over meta-training against
    log t, mean and CI over seeds of the log (a CI of the raw values crosses zero with few seeds and cannot be
    drawn on a log axis), beside a line of slope −½ (∝ 1/√t, the main theorem's rate for every variant)."""
    frame = running_gradient_norm(tables.train_log)
    if len(frame):
        frame = frame.assign(log_running_sq_norm=np.log10(frame["running_sq_norm"]))
    strata = sorted(set(stratum_of(frame))) if len(frame) else []
    fig, axes = grid(max(len(strata), 1), columns=2, width=5.0, height=3.8)
    if not strata:
        no_data(axes[0], "‖∇F(θ^t)‖² over meta-training", f"training logs with {GRADIENT_NORM}")
    for ax, stratum in zip(axes, strata, strict=False):
        rows = frame[stratum_of(frame) == stratum]
        curves_by_algorithm(ax, rows, "log_running_sq_norm", key="variant", names=LEGEND,
                            title=f"{stratum}\n(1/t) Σ ‖∇F(θˢ)‖², meta-batch estimates")  # fmt: skip
        first = rows[rows["step"] == rows["step"].min()]
        steps = np.array(sorted(set(rows["step"])), dtype=float)
        reference = first["log_running_sq_norm"].mean() - 0.5 * np.log10(steps / steps[0])
        ax.plot(steps, reference, color="black", linestyle="--", linewidth=0.9, label="slope −½: ∝ 1/√t (the theorem)")
        ax.set_xscale("log")
        ax.set_ylabel("log₁₀ running mean of ‖∇F‖²\n(mean, 95% CI over seeds)")
        ax.set_xlabel("meta-iteration t (log scale)")
        ax.legend(fontsize=6)
    suptitle(fig, 'Convergence (seed 002, main theorem):\n"Sharp-MAML matches the convergence rate of MAML"')
    save(fig, path)


def fig_cost(tables: StudyTables, path: Path) -> None:
    """Gradient evaluations per task and meta-iteration, per variant."""
    fig, axes = grid(1, width=4.6, height=3.4)
    cost = cost_table(tables, AggregateConfig())
    if cost.empty:
        no_data(axes[0], "cost", "training logs with gradient counts")
    else:
        values = {r.variant: (r.gradient_evaluations, np.nan, np.nan) for r in cost.itertuples()}
        steps = ", ".join(str(s) for s in sorted(cost["inner_steps"].unique()))
        _bars(axes[0], values, ylabel="gradient evaluations per task", title=f"T = {steps} inner step(s)", fmt="{:.0f}")
    suptitle(fig, "Cost per meta-iteration (the poster gives none)")
    save(fig, path)


STUDIES.register(
    NAME,
    StudySpec(
        name=NAME,
        seed=SEED,
        title="Sharp-MAML 2022 — sharpness-aware MAML, variants low / up / both",
        figures=(
            Figure(
                "accuracy",
                "Final meta-test accuracy per variant, the poster's table beside it, and meta-training curves.",
                fig_accuracy,
            ),
            Figure(
                "flatness",
                "Flatness of the final solutions: SAM sharpness at three radii, the support-loss and meta-loss "
                "curvatures, and the meta-loss surface's mean rise.",
                fig_flatness,
            ),
            Figure("surfaces", "2-D meta-loss surfaces around each variant's final θ on shared levels.", fig_surfaces),
            Figure("cost", "Gradient evaluations per task and meta-iteration.", fig_cost),
            Figure(
                "radii",
                "Sharp-MAML_both across radii α_low = α_up = α: accuracy, paired gain over MAML, curvature.",
                fig_radii,
            ),
            Figure(
                "convergence",
                "Running mean of the meta-batch ‖∇F(θ^t)‖² over meta-training, per variant, beside 1/√t.",
                fig_convergence,
            ),
        ),
        tables=(
            Table(
                "accuracy", "Accuracy: ours beside the poster's (miniImageNet 5-way 1-shot, Conv-4-64)", accuracy_table
            ),
            Table("flatness", "Flatness of the final solutions (lower is flatter)", flatness_table),
            Table("cost", "Cost per meta-iteration", cost_table),
            Table("radii", "Radius sweep of Sharp-MAML_both (paper profile)", radius_table),
            Table("convergence", "Running mean of ‖∇F(θ^t)‖² over meta-training", convergence_table),
        ),
    ),
)
