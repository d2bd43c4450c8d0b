"""The sharpmaml study's own claims: every profile measures what the flatness claims read, the poster-level
check reads only runs of the poster's setting, and the surface-smoothness claim on simulated surfaces with a known
effect (present, absent, reversed; per stratum; scale-free)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metaland.claims import CLAIMS, claim_rows
from metaland.config import load_params
from metaland.results import StudyTables
from metaland.studies.sharpmaml import FLATTER, OTHER_RADII, TRAINED_RADIUS


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
        radii = run.train.algorithm_options
        assert {radii["alpha_low"], radii["alpha_up"]} <= {0.0, TRAINED_RADIUS}, run.key
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
