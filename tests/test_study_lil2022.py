"""Study lil2022's tables and claims on synthetic study tables: baselines are paired with their
"+ LIL" within a setting (same seed and task), and the paper's numbers sit beside ours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metaland.claims import claims_of, evaluate
from metaland.config import AggregateConfig
from metaland.results import StudyTables
from metaland.studies.lil2022 import PAPER_ACCURACY, PAPER_INIT_ACCURACY, ablation_table, accuracy_table, init_table

CFG = AggregateConfig()


def final_tasks(shift: dict[tuple[str, int], float]) -> pd.DataFrame:
    """60 tasks × 2 seeds per (variant, shots); ``shift`` moves a variant's accuracy in one setting."""
    rng = np.random.default_rng(0)
    rows = []
    for shots in (1, 5):
        base = rng.uniform(0.4, 0.8, size=(2, 60))
        for variant in (
            "maml",
            "maml+lil",
            "anil",
            "anil+lil-phase",
            "maml+lil-phase",
            "fomaml",
            "fomaml+lil-pretrain",
        ):
            noise = rng.normal(0, 0.005, size=base.shape)
            for seed in range(2):
                for task in range(60):
                    value = base[seed, task] + shift.get((variant, shots), 0.0) + noise[seed, task]
                    rows.append(
                        {
                            "run": f"{variant}-{shots}-{seed}",
                            "variant": variant,
                            "setting": f"d 5-way {shots}-shot",
                            "shots": shots,
                            "seed": seed,
                            "task": task,
                            "query_accuracy": value,
                        }
                    )
    return pd.DataFrame(rows)


def test_accuracy_table_pairs_each_lil_variant_with_its_baseline_within_a_setting():
    tables = StudyTables(
        "lil2022",
        pd.DataFrame(),
        final_tasks({("maml+lil", 1): 0.05, ("anil+lil-phase", 5): -0.03, ("fomaml+lil-pretrain", 5): 0.02}),
        pd.DataFrame(),
    )
    table = accuracy_table(tables, CFG).set_index(["setting", "variant"])
    one, five = "d 5-way 1-shot", "d 5-way 5-shot"
    assert table.loc[(five, "fomaml+lil-pretrain"), "baseline"] == "fomaml"
    assert table.loc[(five, "fomaml+lil-pretrain"), "gain_over_baseline"] == pytest.approx(0.02, abs=0.005)
    assert table.loc[(five, "fomaml+lil-pretrain"), "paper_gain_over_baseline"] == pytest.approx((65.05 - 62.91) / 100)
    assert table.loc[(one, "maml+lil"), "gain_over_baseline"] == pytest.approx(0.05, abs=0.005)
    assert table.loc[(one, "maml+lil"), "gain_ci_low"] > 0
    assert table.loc[(five, "maml+lil"), "gain_over_baseline"] == pytest.approx(0.0, abs=0.005)
    assert table.loc[(five, "anil+lil-phase"), "gain_over_baseline"] == pytest.approx(-0.03, abs=0.005)
    assert table.loc[(five, "anil+lil-phase"), "baseline"] == "anil"
    assert np.isnan(table.loc[(one, "maml"), "gain_over_baseline"])
    assert table.loc[(five, "maml+lil"), "paper_accuracy"] == pytest.approx(PAPER_ACCURACY[("maml+lil", 5)][0] / 100)
    assert table.loc[(one, "anil+lil-phase"), "paper_gain_over_baseline"] == pytest.approx((49.45 - 48.53) / 100)
    assert "maml+lil-phase" not in table.index.get_level_values("variant")
    ablation = ablation_table(tables, CFG)
    assert set(ablation["variant"]) == {"maml", "maml+lil", "maml+lil-phase"}


def test_claims_follow_the_data():
    tables = StudyTables(
        "lil2022", pd.DataFrame(), final_tasks({("maml+lil", 1): 0.05, ("anil+lil-phase", 1): -0.03}), pd.DataFrame()
    )
    verdicts = {c.id: evaluate(c, tables, CFG)["verdict"] for c in claims_of("lil2022") if "improves" in c.id}
    # 5-shot pairs show no gain, so the pooled CI over both settings decides; BOIL has no runs.
    assert verdicts["lil2022-lil-improves-boil"] == "inconclusive"
    assert verdicts["lil2022-lil-improves-maml"] == "holds"
    assert verdicts["lil2022-lil-improves-anil"] == "fails"


def milestone_tasks(lil_gain: float) -> pd.DataFrame:
    """Two lil-pretrain runs × 40 tasks at step 0 (random init) and at the end of pretraining (LIL-init,
    ``lil_gain`` better after adaptation); raw θ^0 accuracy is chance at both; a MAML run's step 0 too."""
    rng = np.random.default_rng(1)
    rows = []
    for seed in range(2):
        base = rng.uniform(0.2, 0.3, size=40)
        for algorithm, milestone, step, shift in (
            ("lil-pretrain", "initial", 0, 0.0),
            ("lil-pretrain", "pretrained", 10, lil_gain),
            ("lil", "initial", 0, 0.5),
        ):
            for task in range(40):
                rows.append(
                    {
                        "run": f"{algorithm}-{seed}",
                        "algorithm": algorithm,
                        "setting": "d 5-way 1-shot",
                        "shots": 1,
                        "ways": 5,
                        "seed": seed,
                        "task": task,
                        "step": step,
                        "milestone": milestone,
                        "query_accuracy": base[task] + shift + rng.normal(0, 0.002),
                        "pre_query_accuracy": 0.2 + rng.normal(0, 0.01),
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("gain", "verdict"), [(0.04, "holds"), (-0.04, "fails"), (0.0, "inconclusive")])
def test_table_1_pairs_the_lil_init_with_the_random_init_of_the_same_runs(gain, verdict):
    tables = StudyTables(
        "lil2022", pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), milestone_tasks=milestone_tasks(gain)
    )
    table = init_table(tables, CFG).set_index("init")
    assert table.loc["lil", "gain_over_random"] == pytest.approx(gain, abs=0.002)
    assert table.loc["lil", "step"] == 10 and table.loc["random", "runs"] == 2
    assert table.loc["random", "pre_adaptation_accuracy"] == pytest.approx(0.2, abs=0.01)
    assert table.loc["lil", "paper_accuracy"] == pytest.approx(PAPER_INIT_ACCURACY[("lil", 1)][0] / 100)
    claim = next(c for c in claims_of("lil2022") if c.id == "lil2022-lil-init-beats-random-init")
    assert evaluate(claim, tables, CFG)["verdict"] == verdict


def test_table_1_is_empty_and_its_claim_inconclusive_without_pretraining_runs():
    tables = StudyTables("lil2022", pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    table = init_table(tables, CFG)
    assert table.empty and "pre_adaptation_accuracy" in table  # a header, so the report can read it back
    claim = next(c for c in claims_of("lil2022") if c.id == "lil2022-lil-init-beats-random-init")
    assert evaluate(claim, tables, CFG)["verdict"] == "inconclusive"
