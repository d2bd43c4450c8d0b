"""The metaopt study's own claim rules, tables and run-key parsing on tables built by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd

from metaland.claims import claims_of
from metaland.config import AggregateConfig
from metaland.results import StudyTables
from metaland.studies.metaopt import (
    annotate,
    deeper_adapts_better,
    depth_of,
    layerwise_table,
    linear_table,
    model_of,
    optimizer_degrades_slower,
)

CFG = AggregateConfig()
TASKS = 60


def final_tasks(accuracy: dict[str, float], extra: dict[str, dict[str, float]] | None = None) -> StudyTables:
    """Per-task rows of runs whose accuracy is ``accuracy[run]`` plus a task effect shared by all runs."""
    noise = np.random.default_rng(0).normal(0, 0.02, TASKS)
    rows = []
    for run, mean in accuracy.items():
        for t in range(TASKS):
            row = {
                "run": run,
                "algorithm": run.split("-")[1],
                "dataset": "omniglot-small",
                "seed": 0,
                "task": t,
                "setting": "omniglot-small 10-way 5-shot",
                "inner_steps": 4,
                "query_accuracy": mean + noise[t],
                "pre_query_accuracy": 0.1,
            }
            row.update({k: v + noise[t] for k, v in (extra or {}).get(run, {}).items()})
            rows.append(row)
    return StudyTables("metaopt", pd.DataFrame(), pd.DataFrame(rows), pd.DataFrame())


def key(algorithm: str, model: str) -> str:
    return f"metaopt-{algorithm}-{model}-omniglot-small-10w5s-s0"


def test_run_keys_give_model_depth_and_the_papers_names():
    assert (model_of(key("kfc", "cnn3")), depth_of(key("kfc", "cnn3")), depth_of(key("maml", "linnet"))) == (
        "cnn3",
        3,
        None,
    )
    frame = pd.DataFrame(
        {
            "run": [key("klin", "lr"), key("maml", "linnet"), key("metasgd", "cnn2")],
            "algorithm": ["klin", "maml", "metasgd"],
        }
    )
    assert list(annotate(frame)["method"]) == ["LR w/ KLin", "LinNet", "CNN-2 w/ MSGD"]


def test_depth_claims_follow_the_accuracies():
    paper_like = final_tasks(
        {
            key("maml", "cnn1"): 0.3,
            key("maml", "cnn2"): 0.6,
            key("kfc", "cnn1"): 0.66,
            key("kfc", "cnn2"): 0.91,
            key("maml", "lr"): 0.2,  # linear runs have no depth and do not take part
        }
    )
    assert deeper_adapts_better(paper_like, CFG).verdict == "holds"
    evidence = optimizer_degrades_slower(paper_like, CFG)
    assert evidence.verdict == "holds" and abs(evidence.statistic.value - (0.36 - 0.31)) < 1e-9
    reversed_ = final_tasks(
        {key("maml", "cnn1"): 0.6, key("maml", "cnn2"): 0.3, key("kfc", "cnn1"): 0.6, key("kfc", "cnn2"): 0.5}
    )
    assert deeper_adapts_better(reversed_, CFG).verdict == "fails"
    assert optimizer_degrades_slower(reversed_, CFG).verdict == "fails"
    assert optimizer_degrades_slower(final_tasks({key("maml", "cnn2"): 0.5}), CFG).verdict == "inconclusive"


def test_layerwise_claim_and_table():
    run = key("maml", "cnn2")
    columns = {
        "layerwise_freeze_conv1_accuracy": 0.6,
        "layerwise_freeze_conv2_accuracy": 0.3,
        "layerwise_only_fc_accuracy": 0.4,
    }
    tables = final_tasks({run: 0.6}, {run: columns})
    [claim] = [c for c in claims_of("metaopt") if c.id == "metaopt-last-conv-carries-adaptation"]
    assert claim.test(tables, CFG).verdict == "holds"
    flipped = final_tasks({run: 0.6}, {run: {**columns, "layerwise_freeze_conv1_accuracy": 0.2}})
    assert claim.test(flipped, CFG).verdict == "fails"
    table = layerwise_table(tables, CFG)
    assert list(zip(table["layer"], table["mode"], strict=True)) == [
        ("fc", "adapting only"),
        ("conv1", "freezing only"),
        ("conv2", "freezing only"),
    ]
    assert np.allclose(table["accuracy"], [0.4, 0.6, 0.3], atol=0.01)


def test_linear_table_puts_the_papers_numbers_beside_ours():
    tables = final_tasks({"metaopt-maml-linnet-synthetic-binary-2w50s-s0": 0.8})
    tables.final_tasks["dataset"] = "synthetic-binary"
    row = linear_table(tables, CFG).iloc[0]
    assert (row["method"], row["paper_accuracy"], row["tasks"]) == ("LinNet", 0.92, TASKS)
    assert abs(row["accuracy"] - 0.8) < 0.01
