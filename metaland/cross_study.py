"""Cross-study view: every landscape metric against accuracy, across every run of every study.

The five seeds circle one question — does a landscape property (curvature, sharpness, coherence,
linearity, gradient change, surface flatness) go with how well the meta-learned model generalises? —
each on its own runs. Here it is asked once, across runs: every run of every study contributes **one
point**, its last probed checkpoint (``results/<study>/checkpoints.csv``) — checkpoints of one run are
not independent observations, so they never enter as separate points. Spearman's rank correlation ρ of
each metric with ``query_accuracy`` (the meta-test accuracy on the study's fixed probe tasks), pooled
over all studies (scope ``all``) and per study, with its two-sided p-value from the permutation
distribution (exact for up to 7 runs; scipy's t approximation is wrong at a handful of points) and n.
Rank correlation because the metrics' scales differ between studies and models; pooled ranks still mix
studies whose accuracies differ by task, so the per-study rows are the ones to read first, and the
figure draws no ρ below :data:`MIN_RUNS` runs.

Columns suffixed ``/train`` (ding2023: the same probe on meta-*train* tasks) are kept as metrics of
their own, correlated with the meta-test accuracy as seed 001 Tables 3-4 do. Surface summaries
(``<surface>_mean_rise``: mean loss rise over a 2-D filter-normalised surface, a flatness measure)
are included where a study draws surfaces. Each cell covers the checkpoints of the studies that
measure the metric; one of those that lacks the metric or the accuracy is left out of that cell
only, and counted in ``n_missing``: no value is dropped silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metaland import plots
from metaland.stats import spearman

ACCURACY = "query_accuracy"
LANDSCAPE_METRICS = {
    "hessian_spectral_norm": "curvature: spectral norm of the support-loss Hessian (seed 000 §2.4.1)",
    "sam_sharpness": "sharpness: SAM (seed 001 eqs. 16-17)",
    "trajectory_coherence": "coherence of adaptation trajectories (seed 000 §2.4.2)",
    "gradient_coherence": "meta-test gradient coherence (seed 000 §2.4.3)",
    "pc": "phase consistency PC (seed 004 eq. 3)",
    "ac_jacobian": "amplitude consistency AC, logit Jacobian (seed 004 eq. 4)",
    "ac_lossgrad": "AC, support-loss gradient (seed 004)",
    "gradient_cosine_final": "gradient change: cos(g⁰, gˢ) along the inner loop (seed 004 §4.1)",
}
SURFACE_SUFFIX = "_mean_rise"
TRAIN_SUFFIX = "/train"
ALL = "all"
STUDY_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
COLUMNS = ["scope", "metric", "description", "n", "n_missing", "n_runs", "spearman_rho", "spearman_p"]
MIN_RUNS = 5
"""Fewest runs a panel of the figure states a correlation for (a rank correlation of 3 or 4 points says
little: its smallest two-sided exact p is 0.33 or 0.08)."""


def describe(metric: str) -> str:
    """What a cross-study metric is, in words."""
    base, on_train = metric.removesuffix(TRAIN_SUFFIX), metric.endswith(TRAIN_SUFFIX)
    if base.endswith(SURFACE_SUFFIX):
        text = f"surface flatness: mean loss rise over the '{base.removesuffix(SURFACE_SUFFIX)}' surface (seed 001)"
    else:
        text = LANDSCAPE_METRICS[base]
    return f"{text}, on meta-train tasks" if on_train else text


def landscape_columns(columns) -> list[str]:
    """The landscape metrics among ``columns``: the named ones (and their ``/train`` variants) in
    :data:`LANDSCAPE_METRICS` order, then the surface summaries, sorted."""
    present = set(columns)
    named = [m for base in LANDSCAPE_METRICS for m in (base, base + TRAIN_SUFFIX) if m in present]
    surfaces = sorted(c for c in present if c.removesuffix(TRAIN_SUFFIX).endswith(SURFACE_SUFFIX))
    return named + surfaces


def pooled(checkpoints: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per run of every study, at its last probed checkpoint: study, run, step, accuracy, metrics."""
    frames = []
    for study, frame in checkpoints.items():
        if frame.empty:
            continue
        keep = ["run", "step", ACCURACY, *landscape_columns(frame.columns)]
        last = frame[frame["step"] == frame.groupby("run")["step"].transform("max")]
        frames.append(last[keep].assign(study=study)[["study", *keep]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["study", "run", "step", ACCURACY])


def correlations(points: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ(metric, accuracy) across runs per metric, over all studies and per study, with the exact
    permutation p (tidy, :data:`COLUMNS`)."""
    rows = []
    metrics = landscape_columns(points.columns)
    for scope, scoped in [(ALL, points), *points.groupby("study", sort=True)]:
        for metric in metrics:
            measuring = scoped.groupby("study")[metric].transform(lambda v: v.notna().any())
            frame = scoped[measuring]  # the checkpoints of the studies that measure the metric
            if frame.empty:
                continue
            both = np.isfinite(frame[metric].to_numpy(float)) & np.isfinite(frame[ACCURACY].to_numpy(float))
            c = spearman(frame[metric], frame[ACCURACY], exact=True)
            rows.append(
                {
                    "scope": scope,
                    "metric": metric,
                    "description": describe(metric),
                    "n": c.n,
                    "n_missing": int(len(frame) - both.sum()),
                    "n_runs": int(frame.loc[both, "run"].nunique()),
                    "spearman_rho": c.r,
                    "spearman_p": c.p,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def draw(points: pd.DataFrame, path: Path) -> None:
    """Every landscape metric (x log-scaled where positive and spread over two decades) against
    accuracy, one point per run, one colour per study (only studies with points in the panel get a key),
    the pooled Spearman ρ with its exact p in each panel's title from :data:`MIN_RUNS` runs on."""
    metrics = landscape_columns(points.columns)
    fig, axes = plots.grid(len(metrics) + 1, columns=4, width=3.6, height=3.0)
    studies = sorted(points["study"].unique())
    colours = {study: STUDY_COLOURS[i % len(STUDY_COLOURS)] for i, study in enumerate(studies)}
    for ax, metric in zip(axes, metrics, strict=False):
        for study in studies:
            rows = points[(points["study"] == study) & points[metric].notna()]
            ax.scatter(rows[metric], rows[ACCURACY], s=14, alpha=0.8, color=colours[study])
        c = spearman(points[metric], points[ACCURACY], exact=True)
        if c.n < MIN_RUNS:
            rho = f"no ρ below {MIN_RUNS} runs"
        else:
            rho = "ρ undefined" if np.isnan(c.r) else f"ρ = {c.r:.2f} (exact p = {c.p:.2g})"
        ax.set_title(f"{metric}\n{rho}, n = {c.n} runs", fontsize=8)
        ax.set_xlabel(plots.label(metric), fontsize=8)
        ax.set_ylabel(plots.label(ACCURACY), fontsize=8)
        values = points[metric].dropna()
        if len(values) and (values > 0).all() and values.max() > 100 * values.min():
            ax.set_xscale("log")
    legend = axes[-1]
    for study in studies:
        legend.scatter([], [], s=30, color=colours[study], label=study)
    legend.legend(loc="center", fontsize=9, title="study")
    legend.axis("off")
    plots.save(fig, path)
