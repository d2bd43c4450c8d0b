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


def test_correlations_are_scipys_pearson_on_the_per_run_means():
    final = _final_tasks()
    table = correlation_table(_tables(final), AggregateConfig()).set_index(["runs", "x", "accuracy"])
    means = final.groupby("run").mean(numeric_only=True)
    for subset, runs in (("all", means), ("aug", means[final.groupby("run")["augment"].first() == "chen"])):
        for x, y in (("sam_sharpness/train", "query_accuracy"), ("query_loss", "query_accuracy")):
            expected = sps.pearsonr(runs[x], runs[y])
            row = table.loc[(subset, x, y)]
            assert row["pearson_r"] == pytest.approx(expected.statistic, rel=1e-12)
            assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
            assert row["n"] == len(runs)
    assert table.loc[("all", "sam_sharpness/train", "query_accuracy"), "paper_r_miniimagenet"] == -0.77


def test_run_points_and_sharpness_table_average_over_tasks_and_seeds():
    final = _final_tasks()
    points = run_points(_tables(final)).set_index("run")
    assert points.loc["ding2023-r0", "sam_sharpness"] == pytest.approx(
        final[final["run"] == "ding2023-r0"]["sam_sharpness"].mean()
    )
    table = sharpness_table(_tables(final), AggregateConfig()).set_index(["backbone", "augment", "split"])
    rows = final[(final["backbone"] == "Conv4") & (final["augment"] == "none")]
    assert table.loc[("Conv4", "none", "train"), "sharpness"] == pytest.approx(rows["sam_sharpness/train"].mean())
    assert table.loc[("Conv4", "none", "test"), "paper_miniimagenet"] == pytest.approx(0.2916)  # Table 7 / 10


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


def _grid_rows(run: str, surfaces: dict[str, np.ndarray]) -> list[dict]:
    a = np.linspace(-1, 1, 7)
    rows = []
    for name, z in surfaces.items():
        for i, x in enumerate(a):
            for j, y in enumerate(a):
                rows.append(
                    {"run": run, "variant": "fomaml", "backbone": "Conv4", "augment": "none", "seed": 5, "step": 10}
                    | {"grid": name, "x": x, "y": y, "value": z[i, j]}
                )
    return rows


def _claims_on(surfaces: dict[str, np.ndarray]) -> dict[str, str]:
    from metaland.claims import claims_of

    grids = pd.DataFrame(_grid_rows("ding2023-r0", surfaces))
    tables = StudyTables("ding2023", pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), grids)
    wanted = ("feature-reuse", "many-tasks-smoother", "query-shots-convexity")
    return {
        c.id.split("ding2023-")[1]: c.test(tables, AggregateConfig()).verdict
        for c in claims_of("ding2023")
        if c.id.split("ding2023-")[1] in wanted
    }


def test_landscape_claims_follow_their_rules_on_constructed_surfaces():
    a = np.linspace(-1, 1, 7)
    aa, bb = np.meshgrid(a, a, indexing="ij")
    bowl, saddle = aa**2 + bb**2, aa**2 - bb**2
    spikes = np.random.default_rng(0).normal(0, 0.3, bowl.shape)
    agreeing = {
        "inner_0": bowl + 0.1 * aa,
        "head": bowl,  # carries the shape
        "features": 0.05 * saddle,  # nearly flat
        "meta_4": bowl + spikes,
        "meta_many": bowl,
        "meta_4/train": bowl + spikes,
        "meta_many/train": bowl,
        "shots_1": saddle,
        "shots_2": 0.5 * saddle + bowl,
        "shots_4": bowl,
    }
    assert set(_claims_on(agreeing).values()) == {"holds"}
    opposing = {
        **agreeing,
        "features": 2 * saddle,  # rougher than the full surface
        "meta_4": bowl,
        "meta_many": bowl + spikes,
        "shots_1": bowl,
        "meta_many/train": bowl + spikes,
        "meta_4/train": bowl,
    }
    opposing["shots_4"] = opposing["shots_2"] = bowl
    verdicts = _claims_on({**opposing, "meta_many": saddle + spikes})
    assert verdicts == {"feature-reuse": "fails", "many-tasks-smoother": "fails", "query-shots-convexity": "fails"}
