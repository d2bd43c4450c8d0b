"""The sharpmaml study's own claims: every profile measures what the flatness claims read, the poster-level
check reads only runs of the poster's setting, and the surface-smoothness claim on simulated surfaces with a known
effect (present, absent, reversed; per stratum; scale-free); the radius sweep's table against explicit pairing,
apart from the claims; the running ‖∇F‖² against a per-iteration loop."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from metaland.claims import CLAIMS, claim_rows
from metaland.config import AggregateConfig, load_params
from metaland.meta import ALGORITHMS
from metaland.results import StudyTables
from metaland.studies.sharpmaml import (
    FLATTER,
    OTHER_RADII,
    TRAINED_RADIUS,
    VARIANTS,
    convergence_table,
    fig_convergence,
    fig_radii,
    radius_table,
    sweep_radius,
)


@pytest.mark.parametrize("profile", ["ci", "default", "long", "paper"])
def test_every_profile_measures_what_the_flatness_claims_read(profile):
    """The sharpness probe runs at α_up and at the claims' other radii, the meta-loss curvature and the surface
    probe are in the probe set, and every Sharp-MAML run perturbs at the radius the claims call trained."""
    config = load_params(f"profiles/{profile}.yaml")
    probes = config.studies["sharpmaml"].probe.probes
    assert probes["sharpness"]["rho"] == TRAINED_RADIUS
    assert probes["sharpness"]["radii"] == list(OTHER_RADII.values())
    assert {"curvature", "meta_loss_curvature", "surface"} <= set(probes)
    for run in config.runs_of("sharpmaml"):
        variant = ALGORITHMS.get(run.algorithm).variant_of(run.algorithm_options)
        radii = run.train.algorithm_options
        if variant in VARIANTS:  # the poster's four; the paper profile's radius sweep names its own variants
            assert {radii["alpha_low"], radii["alpha_up"]} <= {0.0, TRAINED_RADIUS}, run.key
        else:
            assert sweep_radius(variant) == radii["alpha_low"] == radii["alpha_up"] != TRAINED_RADIUS, run.key
    assert {metric for metric, _, _ in FLATTER.values()} >= {"sam_sharpness_rho0.01", "meta_hessian_spectral_norm"}


def test_the_poster_level_check_reads_only_maml_runs_of_the_posters_setting():
    rows = []
    for dataset, shots in (("miniimagenet", 1), ("miniimagenet", 5), ("omniglot-small", 1)):
        for variant in ("maml", "sharpmaml-up"):
            for seed in range(3):
                for task in range(4):
                    rows.append({
                        "run": f"sharpmaml-{variant}-{dataset}-{shots}-s{seed}", "variant": variant, "dataset": dataset,
                        "backbone": "Conv4", "ways": 5, "shots": shots, "queries": 15, "inner_steps": 1,
                        "inner_lr": 0.1, "augment": "none", "seed": seed, "step": 100, "task": task,
                        "query_accuracy": 0.47 + 0.001 * np.sin(seed + task),
                    })  # fmt: skip
    tables = StudyTables("sharpmaml", pd.DataFrame(), pd.DataFrame(rows), pd.DataFrame())
    claim = CLAIMS.get("sharpmaml-maml-at-poster-level")
    read = claim_rows(claim, tables)
    assert claim.category == "check"
    assert set(read["run"]) == {f"sharpmaml-maml-miniimagenet-1-s{s}" for s in range(3)}


# --- the smoothness of the meta-loss surfaces (sharpmaml-smoother-meta-loss-surface) -----------------------------

SMOOTHER = "sharpmaml-smoother-meta-loss-surface"
STRATUM = {"backbone": "Conv4", "ways": 5, "shots": 1, "queries": 15, "inner_steps": 1, "inner_lr": 0.4}


def _surface_rows(run: str, variant: str, dataset: str, seed: int, step: int, z: np.ndarray) -> list[dict]:
    a = np.linspace(-1, 1, len(z))
    meta = {"run": run, "variant": variant, "dataset": dataset, "augment": "none", "seed": seed, **STRATUM}
    return [
        meta | {"step": step, "grid": "meta_loss", "x": x, "y": y, "value": z[i, j]}
        for i, x in enumerate(a)
        for j, y in enumerate(a)
    ]


def _surface_study(
    factor: dict[str, float], *, seeds: int = 6, points: int = 11, scale: float = 1.0, noise: float = 0.002
) -> StudyTables:
    """Every variant's final meta-loss surface a bowl c·(a² + b²) around its centre: MAML's curvature c drawn per
    seed, a Sharp-MAML variant's ``factor[dataset]`` times MAML's of the same seed (with a few % of jitter per
    run and a little noise per grid point), and its centre 0.3 higher (a worse but smoother solution); at an
    earlier checkpoint the effect is reversed, which the claim must not read. ``scale`` multiplies every loss."""
    g, jitter = np.random.default_rng(5), np.random.default_rng(6)  # the draws of c and k do not depend on the grid
    a = np.linspace(-1, 1, points)
    bowl = np.add.outer(a**2, a**2)
    rows = []
    for dataset, k in factor.items():
        for seed in range(seeds):
            c = g.uniform(0.5, 2.0)
            for variant in ("maml", "sharpmaml-low", "sharpmaml-up", "sharpmaml-both"):
                ratio, centre = (1.0, 1.0) if variant == "maml" else (k * g.uniform(0.97, 1.03), 1.3)
                run = f"sharpmaml-{variant}-{dataset}-s{seed}"
                for step, curvature in ((300, c * ratio), (100, c / ratio)):
                    z = centre + curvature * bowl + jitter.normal(0, noise, bowl.shape)
                    rows += _surface_rows(run, variant, dataset, seed, step, scale * z)
    grids = pd.DataFrame(rows)
    return StudyTables("sharpmaml", pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), grids)


def _smoother_verdict(tables: StudyTables) -> str:
    from metaland.claims import evaluate_study
    from metaland.config import AggregateConfig

    (result,) = evaluate_study([CLAIMS.get(SMOOTHER)], tables, AggregateConfig())
    return result.verdict


def test_log_roughness_of_a_bowl_is_its_laplacian():
    """On c·(a² + b²) with grid step h every interior Laplacian is 4·c·h², so the measure is log(4·c·h²); it needs
    the interior of a full grid."""
    from metaland.studies.sharpmaml import log_roughness

    a = np.linspace(-1, 1, 11)
    bowl = 3.0 * np.add.outer(a**2, a**2)
    surface = pd.DataFrame(_surface_rows("r", "maml", "d", 0, 1, bowl))
    assert log_roughness(surface) == pytest.approx(np.log(4 * 3.0 * 0.2**2))
    assert log_roughness(surface.assign(value=2.0)) == -np.inf  # perfectly flat
    assert np.isnan(log_roughness(surface[surface["x"] > 0.7]))  # two columns: no interior


@pytest.mark.parametrize(
    ("factor", "expected"),
    [(0.7, "holds"), (1.0, "inconclusive"), (1.4, "fails")],
)
def test_the_surface_smoothness_claim_on_simulated_surfaces(factor, expected):
    """Sharp-MAML's surfaces 0.7× as curved as MAML's of the same seed: holds, though their centres are higher; as
    curved: not holds; 1.4× as curved: fails."""
    assert _smoother_verdict(_surface_study({"omniglot-small": factor})) == expected


def test_the_surface_smoothness_claim_holds_only_where_every_stratum_does():
    """Smoother on one dataset, not on another: the claim does not hold (the strata are read apart, never pooled);
    reversed on the other: it fails."""
    assert _smoother_verdict(_surface_study({"omniglot-small": 0.7, "miniimagenet": 1.0})) != "holds"
    assert _smoother_verdict(_surface_study({"omniglot-small": 0.7, "miniimagenet": 1.4})) == "fails"


def test_the_surface_smoothness_claim_is_scale_free_and_pairs_within_seed_and_stratum():
    """Its per-seed values do not change with the loss's units or the grid's resolution; one row per run at its final
    checkpoint; a seed's arms pair within their stratum only."""
    from metaland.claims import decide, method_of
    from metaland.config import AggregateConfig

    claim = CLAIMS.get(SMOOTHER)
    base = claim_rows(claim, _surface_study({"omniglot-small": 0.7}, noise=0.0))
    assert len(base) == 3 * 2 * 6 and set(base["unit"]) == {"meta_loss"}
    scaled = claim_rows(claim, _surface_study({"omniglot-small": 0.7}, scale=10.0, points=21, noise=0.0))
    parts = {(p.component, p.stratum): p.per_seed for p in decide(method_of(claim), base, AggregateConfig())}
    again = {(p.component, p.stratum): p.per_seed for p in decide(method_of(claim), scaled, AggregateConfig())}
    assert parts.keys() == again.keys() and len(parts) == 3
    for key, per_seed in parts.items():
        assert again[key] == pytest.approx(per_seed, rel=1e-9)
        assert all(v == pytest.approx(-np.log(0.7), abs=0.05) for v in per_seed.values())
    mixed = _surface_study({"omniglot-small": 0.7, "miniimagenet": 0.7})
    grids = mixed.grids
    sharp = grids["variant"] != "maml"
    grids = pd.concat(
        [grids[~sharp & (grids["dataset"] == "miniimagenet")], grids[sharp & (grids["dataset"] == "omniglot-small")]]
    )
    apart = StudyTables("sharpmaml", pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), grids)
    assert _smoother_verdict(apart) == "inconclusive"  # MAML on one dataset, Sharp-MAML on the other: nothing to pair


# --- the radius sweep (paper profile) and the convergence curve ----------------------------------------------------

SWEEP = {"maml": 0.0, "sharpmaml-both": 0.05, "sharpmaml-both@0.1": 0.1, "sharpmaml-both@0.2": 0.2}


def _sweep_study(sweep: dict[str, float], *, datasets=("miniimagenet",), seeds: int = 3, tasks: int = 5) -> StudyTables:
    """Final test tasks of each variant and seed: accuracy 0.45 + 0.1·α + a seed effect + a task effect, so the
    gain over MAML of a seed is 0.1·α exactly and the radius-0.1 run is better than the poster's _both."""
    g = np.random.default_rng(3)
    rows = []
    for dataset in datasets:
        for seed in range(seeds):
            seed_effect = g.normal(0, 0.02)
            task_effect = g.normal(0, 0.05, tasks)
            for variant, alpha in sweep.items():
                for task in range(tasks):
                    rows.append({
                        "run": f"{variant}-{dataset}-s{seed}", "variant": variant, "dataset": dataset, "seed": seed,
                        "step": 300, "task": task,
                        "query_accuracy": 0.45 + 0.1 * alpha + seed_effect + task_effect[task],
                        "hessian_spectral_norm": 2.0 - alpha + 0.1 * seed, **STRATUM, "augment": "none",
                    })  # fmt: skip
    return StudyTables("sharpmaml", pd.DataFrame(), pd.DataFrame(rows), pd.DataFrame())


def test_the_radius_table_pairs_each_radius_with_maml_of_the_same_seed(tmp_path):
    tables = _sweep_study(SWEEP)
    table = radius_table(tables, AggregateConfig())
    assert list(table["alpha"]) == [0.0, 0.05, 0.1, 0.2] and list(table["variant"]) == list(SWEEP)
    final = tables.final_tasks
    for row in table.itertuples():
        mine = final[final["variant"] == row.variant]
        assert row.accuracy == pytest.approx(mine.groupby("seed")["query_accuracy"].mean().mean())
        assert row.gain_over_maml == pytest.approx(0.1 * row.alpha, abs=1e-12)  # explicit: 0.1·α in every seed
        assert row.hessian_spectral_norm == pytest.approx(2.0 - row.alpha + 0.1)
    fig_radii(tables, tmp_path / "radii.png")
    assert (tmp_path / "radii.png").stat().st_size > 0


def test_a_sweep_is_kept_apart_from_the_posters_variants():
    """The radius-0.1 and 0.2 runs are better than MAML by more than the poster's _both; the claims about _both
    read the α = 0.05 runs only, and a stratum with the poster's variants alone has no sweep rows."""
    tables = _sweep_study(SWEEP)
    read = claim_rows(CLAIMS.get("sharpmaml-both-beats-maml"), tables)
    assert set(read["run"]) == {f"{v}-miniimagenet-s{seed}" for v in ("maml", "sharpmaml-both") for seed in range(3)}
    poster_only = _sweep_study({"maml": 0.0, "sharpmaml-both": 0.05, "sharpmaml-up@0.1": 0.1})
    for table in (radius_table, convergence_table):  # no rows, but a header the report can read back
        frame = table(poster_only, AggregateConfig())
        assert frame.empty and list(pd.read_csv(io.StringIO(frame.to_csv(index=False))).columns) == list(frame)
    assert sweep_radius("sharpmaml-up@0.1") is None and sweep_radius("sharpmaml-low") is None


def test_the_running_gradient_norm_is_the_mean_over_every_iteration_so_far(tmp_path):
    """The log keeps window means (every 25 iterations, a shorter last window); the table's running mean at t
    equals (1/t) Σ_{s ≤ t} of the per-iteration values, computed by a loop, averaged over seeds; the sweep's
    variant is left out."""
    g = np.random.default_rng(8)
    iterations, every, rows, truth = 110, 25, [], {}
    for variant in ("maml", "sharpmaml-both", "sharpmaml-both@0.1"):
        for seed in range(3):
            values = 1.0 / np.sqrt(np.arange(1, iterations + 1)) * g.uniform(0.5, 2.0, iterations)
            for end in [*range(every, iterations + 1, every), iterations]:
                start = (end - 1) // every * every if end % every else end - every
                rows.append({"run": f"{variant}-s{seed}", "variant": variant, "seed": seed, "step": end,
                             "meta_gradient_sq_norm": values[start:end].mean(), "dataset": "omniglot-small",
                             "augment": "none", **STRATUM})  # fmt: skip
                truth.setdefault((variant, end), []).append(sum(values[s] for s in range(end)) / end)
    log = pd.DataFrame(rows).drop_duplicates(["run", "step"])
    tables = StudyTables("sharpmaml", pd.DataFrame(), pd.DataFrame(), log)
    table = convergence_table(tables, AggregateConfig())
    assert set(table["variant"]) == {"maml", "sharpmaml-both"}
    assert sorted(set(table["step"])) == [25, 50, 75, 100, 110]
    for row in table.itertuples():
        assert row.running_sq_norm == pytest.approx(np.mean(truth[(row.variant, row.step)]), rel=1e-12)
        assert row.seeds == 3 and row.ci_low < row.running_sq_norm < row.ci_high
    fig_convergence(tables, tmp_path / "convergence.png")
    assert (tmp_path / "convergence.png").stat().st_size > 0
