"""The sharpmaml study's own claims: every profile measures what the flatness claims read, and the poster-level
check reads only runs of the poster's setting."""

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
