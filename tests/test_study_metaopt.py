"""The metaopt study's own claim rules, tables and run-key parsing on tables built by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metaland.claims import claims_of, evaluate_study
from metaland.config import AggregateConfig
from metaland.results import StudyTables
from metaland.studies.metaopt import annotate, depth_of, layerwise_table, linear_table, model_of

CFG = AggregateConfig()
TASKS = 60
SEEDS = 4


def final_tasks(accuracy: dict[str, float], extra: dict[str, dict[str, float]] | None = None) -> StudyTables:
    """Per-task rows of runs (one per seed) whose accuracy is ``accuracy[run]`` plus a task effect shared by
    all runs and a small effect per run."""
    g = np.random.default_rng(0)
    noise = g.normal(0, 0.02, TASKS)
    rows = []
    for run, mean in accuracy.items():
        for seed in range(SEEDS):
            offset = g.normal(0, 0.002)
            for t in range(TASKS):
                row = {
                    "run": run.replace("-s0", f"-s{seed}"),
                    "algorithm": run.split("-")[1],
                    "backbone": f"CNN-{depth_of(run)}" if depth_of(run) else model_of(run),
                    "dataset": "omniglot-small",
                    "seed": seed,
                    "task": t,
                    "setting": "omniglot-small 10-way 5-shot",
                    "inner_steps": 4,
                    "query_accuracy": mean + noise[t] + offset,
                    "pre_query_accuracy": 0.1,
                }
                row.update({k: v + noise[t] + offset for k, v in (extra or {}).get(run, {}).items()})
                rows.append(row)
    return StudyTables("metaopt", pd.DataFrame(), pd.DataFrame(rows), pd.DataFrame())


def verdicts(tables: StudyTables) -> dict[str, object]:
    return {r.claim.id.removeprefix("metaopt-"): r for r in evaluate_study(claims_of("metaopt"), tables, CFG)}


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
    found = verdicts(paper_like)
    assert found["deeper-adapts-better"].verdict == "holds"
    degrades = found["optimizer-degrades-slower"]
    assert degrades.verdict == "holds"
    (contrast,) = [p for p in degrades.outcome.parts if p.component.startswith("gain larger")]
    assert contrast.inference.estimate == pytest.approx(0.36 - 0.31, abs=0.01)
    assert {p.component for p in degrades.outcome.parts} == {
        "KFC beats MAML at 1 layers",
        "KFC beats MAML at 2 layers",
        "gain larger at 1 than at 2 layers",
    }
    reversed_ = verdicts(
        final_tasks(
            {key("maml", "cnn1"): 0.6, key("maml", "cnn2"): 0.3, key("kfc", "cnn1"): 0.6, key("kfc", "cnn2"): 0.5}
        )
    )
    assert reversed_["deeper-adapts-better"].verdict == "fails"
    assert reversed_["optimizer-degrades-slower"].verdict == "fails"
    assert verdicts(final_tasks({key("maml", "cnn2"): 0.5}))["optimizer-degrades-slower"].verdict == "inconclusive"


def test_layerwise_claim_and_table():
    run = key("maml", "cnn2")
    columns = {
        "layerwise_freeze_conv1_accuracy": 0.6,
        "layerwise_freeze_conv2_accuracy": 0.3,
        "layerwise_only_fc_accuracy": 0.4,
    }
    tables = final_tasks({run: 0.6}, {run: columns})
    assert verdicts(tables)["last-conv-carries-adaptation"].verdict == "holds"
    flipped = final_tasks({run: 0.6}, {run: {**columns, "layerwise_freeze_conv1_accuracy": 0.2}})
    assert verdicts(flipped)["last-conv-carries-adaptation"].verdict == "fails"
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
    assert (row["method"], row["paper_accuracy"], row["tasks"]) == ("LinNet", 0.92, TASKS * SEEDS)
    assert abs(row["accuracy"] - 0.8) < 0.01


def test_cnn_table_puts_each_datasets_published_cell_beside_ours_and_shows_the_rest():
    """Tables 2 / A1: a CIFAR-FS run beside the CIFAR-FS column (a variant entry counts as its dataset), an
    Omniglot-subset run beside Omniglot's; the written table lists every other published cell as not run."""
    from metaland.studies import NOT_RUN, STUDIES
    from metaland.studies.metaopt import PAPER_CNN_BY_DATASET, cnn_table

    omniglot = final_tasks({key("maml", "cnn2"): 0.6}).final_tasks
    cifar = omniglot.assign(
        dataset="cifar-fs-64",
        setting="cifar-fs-64 10-way 3-shot",
        run=omniglot["run"].str.replace("omniglot-small", "cifar-fs-64"),
    )
    tables = StudyTables("metaopt", pd.DataFrame(), pd.concat([omniglot, cifar], ignore_index=True), pd.DataFrame())
    table = cnn_table(tables, CFG).set_index("dataset")
    assert (table.loc["cifar-fs-64", "paper_dataset"], table.loc["cifar-fs-64", "paper_accuracy"]) == (
        "cifar-fs",
        0.3844,
    )
    assert (table.loc["omniglot-small", "paper_dataset"], table.loc["omniglot-small", "paper_accuracy"]) == (
        "omniglot",
        0.6094,
    )
    (spec,) = [t for t in STUDIES.get("metaopt").tables if t.name == "cnn"]
    written = spec.frame(tables, CFG)
    not_run = written[written["status"] == NOT_RUN]
    assert len(not_run) == sum(len(cells) for cells in PAPER_CNN_BY_DATASET.values()) - 2
    assert set(not_run["paper_dataset"]) == {"omniglot", "cifar-fs", "miniimagenet"}
    assert not_run["accuracy"].isna().all() and (written["status"] == "run").sum() == 2
