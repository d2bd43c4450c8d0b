"""Study lil2022's tables and claims on synthetic study tables: baselines are paired with their
"+ LIL" within a setting (same seed and task), and the paper's numbers sit beside ours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metaland.claims import claims_of, evaluate
from metaland.config import AggregateConfig
from metaland.results import StudyTables
from metaland.studies.lil2022 import PAPER_ACCURACY, ablation_table, accuracy_table

CFG = AggregateConfig()


def final_tasks(shift: dict[tuple[str, int], float]) -> pd.DataFrame:
    """60 tasks × 2 seeds per (variant, shots); ``shift`` moves a variant's accuracy in one setting."""
    rng = np.random.default_rng(0)
    rows = []
    for shots in (1, 5):
        base = rng.uniform(0.4, 0.8, size=(2, 60))
        for variant in ("maml", "maml+lil", "anil", "anil+lil-phase", "maml+lil-phase"):
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
        "lil2022", pd.DataFrame(), final_tasks({("maml+lil", 1): 0.05, ("anil+lil-phase", 5): -0.03}), pd.DataFrame()
    )
    table = accuracy_table(tables, CFG).set_index(["setting", "variant"])
    one, five = "d 5-way 1-shot", "d 5-way 5-shot"
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
