"""Study ding2023 (seed 001): the statistics behind its tables and claims against independent
computations — Pearson r and p against scipy on the same per-run means (Tables 3-4), the surface-
shape statistics on analytic surfaces, and the per-split probe outputs of the runner."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from metaland.config import AggregateConfig
from metaland.results import StudyTables
from metaland.stats import convex_fraction, surface_roughness
from metaland.studies.ding2023 import correlation_table, run_points, sharpness_table


def _final_tasks(n_runs: int = 6, tasks: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for r in range(n_runs):
        augment = "chen" if r % 2 else "none"
        for t in range(tasks):
            rows.append(
                {
                    "run": f"ding2023-r{r}",
                    "variant": "fomaml",
                    "dataset": "miniimagenet",
                    "backbone": "Conv4" if r < 3 else "Conv6",
                    "augment": augment,
                    "seed": 5 + r % 3,
                    "task": t,
                    "query_accuracy": rng.uniform(0.3, 0.9),
                    "query_loss": rng.uniform(0.5, 1.5),
                    "sam_sharpness": rng.uniform(0.0, 0.3),
                    "query_accuracy/train": rng.uniform(0.3, 0.9),
                    "query_loss/train": rng.uniform(0.5, 1.5),
                    "sam_sharpness/train": rng.uniform(0.0, 0.3),
                }
            )
    return pd.DataFrame(rows)


def _tables(final: pd.DataFrame) -> StudyTables:
    return StudyTables("ding2023", pd.DataFrame(), final, pd.DataFrame())


def test_correlations_are_scipys_pearson_on_the_per_run_means_with_exact_p():
    final = pd.concat([_final_tasks(), _final_tasks().assign(dataset="cub", run=lambda f: f["run"] + "-cub")])
    table = correlation_table(_tables(final), AggregateConfig()).set_index(["dataset", "runs", "x", "accuracy"])
    assert set(table.index.get_level_values("dataset")) == {"cub", "miniimagenet"}  # never pooled over datasets
    mini = final[final["dataset"] == "miniimagenet"]
    means = mini.groupby("run").mean(numeric_only=True)
    exact = sps.PermutationMethod(n_resamples=9999, rng=np.random.default_rng(1))
    for subset, runs in (("all", means), ("aug", means[mini.groupby("run")["augment"].first() == "chen"])):
        for x, y in (("sam_sharpness/train", "query_accuracy"), ("query_loss", "query_accuracy")):
            expected = sps.pearsonr(runs[x], runs[y], method=exact)  # 6! or 3! orderings: exhaustive
            row = table.loc[("miniimagenet", subset, x, y)]
            assert row["pearson_r"] == pytest.approx(expected.statistic, rel=1e-12)
            assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
            assert row["n"] == len(runs)
    assert table.loc[("miniimagenet", "all", "sam_sharpness/train", "query_accuracy"), "paper_r_miniimagenet"] == -0.77


def test_run_points_and_sharpness_table_average_over_tasks_and_seeds():
    final = _final_tasks()
    points = run_points(_tables(final)).set_index("run")
    assert points.loc["ding2023-r0", "sam_sharpness"] == pytest.approx(
        final[final["run"] == "ding2023-r0"]["sam_sharpness"].mean()
    )
    table = sharpness_table(_tables(final), AggregateConfig()).set_index(["dataset", "backbone", "augment", "split"])
    rows = final[(final["backbone"] == "Conv4") & (final["augment"] == "none")]
    per_seed = rows.groupby("seed")["sam_sharpness/train"].mean()
    cell = table.loc[("miniimagenet", "Conv4", "none", "train")]
    assert cell["sharpness"] == pytest.approx(per_seed.mean())
    assert cell["ci_low"] == pytest.approx(sps.ttest_1samp(per_seed, 0).confidence_interval().low)
    assert table.loc[("miniimagenet", "Conv4", "none", "test"), "paper_miniimagenet"] == pytest.approx(0.2916)


def test_surface_shape_statistics_on_analytic_surfaces():
    a = np.linspace(-1, 1, 9)
    aa, bb = np.meshgrid(a, a, indexing="ij")
    bowl, cap, saddle = aa**2 + 2 * bb**2, -(aa**2) - bb**2, aa**2 - bb**2
    assert convex_fraction(bowl) == 1.0 and convex_fraction(cap) == 0.0 and convex_fraction(saddle) == 0.0
    h = a[1] - a[0]
    assert surface_roughness(bowl) == pytest.approx(6 * h**2)  # |Δ²f| = (2 + 4) h² everywhere inside
    spiky = bowl.copy()
    spiky[4, 4] += 1.0
    assert surface_roughness(spiky) > surface_roughness(bowl)
    assert surface_roughness(aa + 3 * bb) == pytest.approx(0.0, abs=1e-12)  # a plane has no curvature


def _grid_rows(run: str, seed: int, surfaces: dict[str, np.ndarray]) -> list[dict]:
    a = np.linspace(-1, 1, 7)
    rows = []
    for name, z in surfaces.items():
        for i, x in enumerate(a):
            for j, y in enumerate(a):
                rows.append(
                    {"run": run, "variant": "fomaml", "dataset": "d", "backbone": "Conv4", "augment": "none"}
                    | {"seed": seed, "step": 10, "grid": name, "x": x, "y": y, "value": z[i, j]}
                )
    return rows


def _claims_on(surfaces: dict[str, np.ndarray], seeds: int = 8) -> dict[str, str]:
    """The landscape claims on ``seeds`` runs whose surfaces are ``surfaces`` plus a little noise of their own."""
    from metaland.claims import claims_of, evaluate_study

    g = np.random.default_rng(2)
    rows = []
    for seed in range(seeds):
        jittered = {name: z + g.normal(0, 0.002, z.shape) for name, z in surfaces.items()}
        rows += _grid_rows(f"ding2023-r{seed}", seed, jittered)
    tables = StudyTables("ding2023", pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(rows))
    wanted = ("feature-reuse", "many-tasks-smoother", "query-shots-convexity")
    results = evaluate_study([c for c in claims_of("ding2023") if c.slug in wanted], tables, AggregateConfig())
    return {r.claim.slug: r.verdict for r in results}


def test_landscape_claims_follow_their_rules_on_constructed_surfaces():
    a = np.linspace(-1, 1, 7)
    aa, bb = np.meshgrid(a, a, indexing="ij")
    bowl, saddle = aa**2 + bb**2, aa**2 - bb**2
    spikes = np.random.default_rng(0).normal(0, 0.3, bowl.shape)
    agreeing = {
        "inner_0": bowl + 0.1 * aa,
        "head": bowl,  # carries the shape
        "features": 0.05 * saddle,  # nearly flat
        "meta_4": bowl + 0.3 * spikes,  # the 4 re-drawn tasks: the same bowl, noisier
        "meta_many": bowl,
        "meta_many_resample": bowl + 0.3 * spikes,
        "meta_4/train": bowl + 0.3 * spikes,
        "meta_many/train": bowl,
        "meta_many_resample/train": bowl + 0.3 * spikes,
        "shots_1": saddle,
        "shots_2": 0.5 * saddle + bowl,
        "shots_4": bowl,
    }
    assert set(_claims_on(agreeing).values()) == {"holds"}
    assert set(_claims_on(agreeing, seeds=2).values()) == {"inconclusive"}  # below min_seeds
    opposing = {
        **agreeing,
        "features": 2 * saddle,  # wider than the full surface
        "meta_many": saddle + spikes,  # another shape, and rougher than its re-drawn twin
        "meta_many/train": saddle + spikes,
        "meta_many_resample": saddle,
        "meta_many_resample/train": saddle,
        "shots_1": bowl,  # convex at 1 query shot, not at 15
    }
    verdicts = _claims_on(opposing)
    assert verdicts == {"feature-reuse": "fails", "many-tasks-smoother": "fails", "query-shots-convexity": "fails"}
