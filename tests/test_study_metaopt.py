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


def final_tasks(
    accuracy: dict[str, float],
    extra: dict[str, dict[str, float]] | None = None,
    meta: dict[str, dict[str, object]] | None = None,
    jitter: float = 0.0,
) -> StudyTables:
    """Per-task rows of runs (one per seed) whose accuracy is ``accuracy[run]`` plus a task effect shared by
    all runs and a small effect per run; ``meta[run]`` overrides its metadata (dataset, inner lr, ...), and
    ``jitter`` adds a seed effect of that s.d. to each ``extra`` column of a run apart (so a column's difference
    from the accuracy varies between seeds)."""
    g = np.random.default_rng(0)
    noise = g.normal(0, 0.02, TASKS)
    rows = []
    for run, mean in accuracy.items():
        for seed in range(SEEDS):
            offset = g.normal(0, 0.002)
            shifts = {k: g.normal(0, jitter) if jitter else 0.0 for k in (extra or {}).get(run, {})}
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
                    **(meta or {}).get(run, {}),
                }
                row.update({k: v + noise[t] + offset + shifts[k] for k, v in (extra or {}).get(run, {}).items()})
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


def test_methods_are_compared_at_their_own_adaptation_lr():
    """The profiles tune the adaptation lr per method (MAML 0.8, KFC 0.5): a comparison of methods pairs their
    runs anyway, while a setting the seed keeps apart (the dataset) still never pairs."""
    accuracy = {
        key("maml", "cnn1"): 0.3,
        key("maml", "cnn2"): 0.6,
        key("kfc", "cnn1"): 0.66,
        key("kfc", "cnn2"): 0.91,
        key("metasgd", "cnn2"): 0.7,
        key("metacurvature", "cnn2"): 0.8,
    }
    lr = {run: {"inner_lr": 0.8 if "-maml-" in run else 0.5} for run in accuracy}
    found = verdicts(final_tasks(accuracy, meta=lr))
    for claim in ("scnn-optimizers-beat-maml", "optimizer-degrades-slower", "deeper-adapts-better"):
        assert found[claim].verdict == "holds", (claim, found[claim].reason)
    apart = {run: {**lr[run], "dataset": "omniglot-small" if "-maml-" in run else "cifar-fs"} for run in accuracy}
    assert verdicts(final_tasks(accuracy, meta=apart))["scnn-optimizers-beat-maml"].verdict == "inconclusive"


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


# --- issue 22's claims: each on a simulated study whose truth is built in -------------------------------------


def scnn(accuracy: dict[str, float]) -> StudyTables:
    """2-layer CNNs on omniglot-small, each method at the adaptation lr the profiles give it (MAML 0.8, MSGD and MC
    0.5, KFC 0.4 here), so a pair has to cross the lr and nothing else."""
    lrs = {"maml": 0.8, "metasgd": 0.5, "metacurvature": 0.5, "kfc": 0.4}
    runs = {key(a, "cnn2"): v for a, v in accuracy.items()}
    return final_tasks(runs, meta={key(a, "cnn2"): {"inner_lr": lrs[a]} for a in accuracy})


def test_kfc_best_on_scnn_needs_kfc_above_msgd_and_mc():
    paper_like = {"maml": 0.61, "metasgd": 0.69, "metacurvature": 0.86, "kfc": 0.91}
    result = verdicts(scnn(paper_like))["kfc-best-on-scnn"]
    assert result.verdict == "holds"
    assert {p.component: round(p.inference.estimate, 2) for p in result.outcome.parts} == {
        "KFC beats MSGD": 0.22,
        "KFC beats MC": 0.05,
    }
    assert all("inner_lr" not in p.stratum and "dataset=omniglot-small" in p.stratum for p in result.outcome.parts)
    # miniImageNet's order (MC above KFC) fails it; a tie decides nothing; without MC it cannot hold
    assert verdicts(scnn({**paper_like, "metacurvature": 0.95}))["kfc-best-on-scnn"].verdict == "fails"
    assert verdicts(scnn({**paper_like, "metacurvature": 0.91}))["kfc-best-on-scnn"].verdict == "inconclusive"
    no_mc = {k: v for k, v in paper_like.items() if k != "metacurvature"}
    assert verdicts(scnn(no_mc))["kfc-best-on-scnn"].verdict == "inconclusive"


def cnn_depths(maml: dict[int, float], kfc: dict[int, float]) -> StudyTables:
    """MAML and KFC CNNs per depth on omniglot-small, at the profiles' different adaptation lrs."""
    runs = {key("maml", f"cnn{d}"): v for d, v in maml.items()} | {key("kfc", f"cnn{d}"): v for d, v in kfc.items()}
    meta = {run: {"inner_lr": 0.8 if "-maml-" in run else 0.5} for run in runs}
    return final_tasks(runs, meta=meta)


def test_kfc_matches_deeper_maml_is_an_equivalence_with_its_margin():
    from metaland.studies.metaopt import SAME_LEVEL_MARGIN

    maml = {1: 0.30, 2: 0.60, 3: 0.91, 4: 0.97}
    inside = {1: 0.62, 2: 0.90, 3: 0.95}  # KFC(L) − MAML(L + 1): +0.02, −0.01, −0.02
    result = verdicts(cnn_depths(maml, inside))["kfc-matches-deeper-maml"]
    assert result.verdict == "holds"
    estimates = {p.component: round(p.inference.estimate, 2) for p in result.outcome.parts}
    assert estimates == {
        "KFC at 1 vs MAML at 2 layers": 0.02,
        "KFC at 2 vs MAML at 3 layers": -0.01,
        "KFC at 3 vs MAML at 4 layers": -0.02,
    }
    assert all("backbone" not in p.stratum and "inner_lr" not in p.stratum for p in result.outcome.parts)
    assert set(result.rows["run"].str.split("-").str[1]) == {"kfc"}  # one row per task: KFC's run, the difference
    # KFC far above or far below the deeper MAML is not "the same level"; a gap at the margin decides nothing
    for kfc1, verdict in ((0.75, "fails"), (0.45, "fails"), (0.60 + SAME_LEVEL_MARGIN, "inconclusive")):
        found = verdicts(cnn_depths(maml, {**inside, 1: kfc1}))["kfc-matches-deeper-maml"]
        assert found.verdict == verdict, (kfc1, found.reason)
    # a task probed for one arm only enters no pair (half the 2-layer MAML's tasks missing: the same verdict)
    tables = cnn_depths(maml, inside)
    frame = tables.final_tasks
    partial = frame[~((frame["run"].str.contains("-maml-cnn2-")) & (frame["task"] < TASKS // 2))]
    halved = verdicts(StudyTables("metaopt", pd.DataFrame(), partial, pd.DataFrame()))["kfc-matches-deeper-maml"]
    assert halved.verdict == "holds"
    (part,) = [p for p in halved.outcome.parts if p.component == "KFC at 1 vs MAML at 2 layers"]
    assert part.inference.estimate == pytest.approx(0.02, abs=0.005)
    # no MAML run one layer deeper than any KFC run: nothing to test
    assert verdicts(cnn_depths({1: 0.3}, {1: 0.6}))["kfc-matches-deeper-maml"].verdict == "inconclusive"


def linear_runs(accuracy: dict[str, float]) -> StudyTables:
    """Synthetic-task linear models (LR under MAML, LinNet, LR w/ KLin, LR w/ KFC), at the default profile's lrs."""
    model = {"maml-lr": "lr", "linnet": "linnet", "klin": "lr", "kfc": "lr"}
    algorithm = {"maml-lr": "maml", "linnet": "maml", "klin": "klin", "kfc": "kfc"}
    runs = {f"metaopt-{algorithm[m]}-{model[m]}-synthetic-binary-2w50s-s0": v for m, v in accuracy.items()}
    meta = {
        run: {"dataset": "synthetic-binary", "inner_steps": 1, "inner_lr": 0.1 if "linnet" in run else 0.5}
        for run in runs
    }
    return final_tasks(runs, meta=meta)


def test_metaopt_not_worse_than_linnet_is_a_non_inferiority_with_its_margin():
    from metaland.studies.metaopt import LINNET_NONINFERIORITY_MARGIN

    base = {"maml-lr": 0.69, "linnet": 0.80}
    similar = verdicts(linear_runs({**base, "klin": 0.79, "kfc": 0.78}))["metaopt-not-worse-than-linnet"]
    assert similar.verdict == "holds"
    assert {p.component for p in similar.outcome.parts} == {"KLin synthetic", "KFC synthetic"}  # no Omniglot runs
    assert {round(p.inference.estimate, 2) for p in similar.outcome.parts} == {-0.01, -0.02}
    # "or better": no upper limit
    better = verdicts(linear_runs({**base, "klin": 0.95, "kfc": 0.90}))["metaopt-not-worse-than-linnet"]
    assert better.verdict == "holds"
    worse = verdicts(linear_runs({**base, "klin": 0.79, "kfc": 0.65}))["metaopt-not-worse-than-linnet"]
    assert worse.verdict == "fails"
    edge = 0.80 - LINNET_NONINFERIORITY_MARGIN
    assert verdicts(linear_runs({**base, "klin": 0.79, "kfc": edge}))["metaopt-not-worse-than-linnet"].verdict == (
        "inconclusive"
    )


def layerwise_runs(frozen: dict[str, float], accuracy: float = 0.9) -> StudyTables:
    """A 4-layer MAML CNN (every layer adapting: ``accuracy``) with the layer-wise probe's freezing columns, a
    2-layer one, and a KFC CNN whose freezing costs a lot (it is not in the claim's scope)."""
    maml, kfc, two = key("maml", "cnn4"), key("kfc", "cnn4"), key("maml", "cnn2")
    columns = {f"layerwise_freeze_{layer}_accuracy": value for layer, value in frozen.items()}
    kfc_columns = {f"layerwise_freeze_{layer}_accuracy": 0.3 for layer in frozen}
    # a 2-layer MAML CNN: conv1 is its only lower conv; freezing conv2, its last, costs a lot and is not tested
    two_columns = {"layerwise_freeze_conv1_accuracy": 0.6, "layerwise_freeze_conv2_accuracy": 0.3}
    return final_tasks(
        {maml: accuracy, kfc: 0.95, two: 0.6}, {maml: columns, kfc: kfc_columns, two: two_columns}, jitter=0.002
    )


def test_freezing_early_convs_costs_nothing_reads_c1_to_c3_within_the_margin():
    from metaland.studies.metaopt import FREEZE_NOTICEABLE_MARGIN

    harmless = {"conv1": 0.895, "conv2": 0.89, "conv3": 0.905, "conv4": 0.5, "fc": 0.6}
    result = verdicts(layerwise_runs(harmless))["freezing-early-convs-costs-nothing"]
    assert result.verdict == "holds"
    four = {p.component: p.inference.estimate for p in result.outcome.parts if "CNN-4" in p.stratum}
    assert four == pytest.approx({"conv1 frozen": -0.005, "conv2 frozen": -0.01, "conv3 frozen": 0.005}, abs=0.004)
    assert sorted((p.component, p.stratum.split()[1]) for p in result.outcome.parts) == [
        ("conv1 frozen", "backbone=CNN-2"),
        ("conv1 frozen", "backbone=CNN-4"),
        ("conv2 frozen", "backbone=CNN-4"),
        ("conv3 frozen", "backbone=CNN-4"),
    ]
    costly = verdicts(layerwise_runs({**harmless, "conv2": 0.8}))["freezing-early-convs-costs-nothing"]
    assert costly.verdict == "fails"
    edge = verdicts(layerwise_runs({**harmless, "conv3": 0.9 - FREEZE_NOTICEABLE_MARGIN}))
    assert edge["freezing-early-convs-costs-nothing"].verdict == "inconclusive"


def test_last_conv_claim_reads_each_depth_apart():
    """Two depths with opposite effects: pooled they would give +0.1; each depth is its own stratum, so it fails."""
    two, four = key("maml", "cnn2"), key("maml", "cnn4")
    columns = {
        two: {"layerwise_freeze_conv1_accuracy": 0.6, "layerwise_freeze_conv2_accuracy": 0.3},
        four: {"layerwise_freeze_conv1_accuracy": 0.5, "layerwise_freeze_conv4_accuracy": 0.6},
    }
    result = verdicts(final_tasks({two: 0.6, four: 0.6}, columns))["last-conv-carries-adaptation"]
    assert result.verdict == "fails"
    assert {p.stratum.split()[1]: round(p.inference.estimate, 2) for p in result.outcome.parts} == {
        "backbone=CNN-2": 0.3,
        "backbone=CNN-4": -0.1,
    }
    columns[four]["layerwise_freeze_conv4_accuracy"] = 0.2
    assert verdicts(final_tasks({two: 0.6, four: 0.6}, columns))["last-conv-carries-adaptation"].verdict == "holds"


def test_cnn_training_figure_draws_training_beside_test_accuracy_per_setting(monkeypatch, tmp_path):
    """Figs. A.2-A.3: per setting, the meta-training batches' accuracy (train_log) beside the test tasks'
    (checkpoints), each method's curve the mean over its seeds."""
    import metaland.studies.metaopt as metaopt

    def rows(value, steps, dataset):
        return [
            {"run": f"{key(a, 'cnn2')}-{dataset}-s{seed}", "algorithm": a, "dataset": dataset, "step": step}
            | {"setting": f"{dataset} 10-way 5-shot", "seed": seed, "query_accuracy": value(a, step) + seed / 100}
            for a in ("maml", "kfc")
            for seed in range(3)
            for step in steps
        ]

    def test(a, step):
        return 0.5 + step / 1000

    def train(a, step):
        return 0.9 if a == "kfc" else 0.8

    checkpoints = pd.DataFrame(rows(test, (0, 50, 100), "omniglot") + rows(test, (0, 50, 100), "cifar-fs"))
    train_log = pd.DataFrame(rows(train, (10, 20), "omniglot") + rows(train, (10, 20), "cifar-fs"))
    caught = []
    monkeypatch.setattr(metaopt, "save", lambda fig, path: caught.append(fig))
    metaopt.fig_cnn_training(StudyTables("metaopt", checkpoints, pd.DataFrame(), train_log), tmp_path / "f.png")
    titles = [ax.get_title() for ax in caught[0].axes if ax.get_visible()]
    assert titles == [
        "cifar-fs 10-way 5-shot: training accuracy (meta-training batches)",
        "cifar-fs 10-way 5-shot: test accuracy (fixed test tasks)",
        "omniglot 10-way 5-shot: training accuracy (meta-training batches)",
        "omniglot 10-way 5-shot: test accuracy (fixed test tasks)",
    ]
    training = {line.get_label(): line.get_ydata().tolist() for line in caught[0].axes[0].lines}
    assert training == {"CNN-2 w/ KFC": pytest.approx([0.91, 0.91]), "CNN-2 w/ MAML": pytest.approx([0.81, 0.81])}
    test_curve = {line.get_label(): line.get_ydata().tolist() for line in caught[0].axes[1].lines}
    assert test_curve["CNN-2 w/ MAML"] == pytest.approx([0.51, 0.56, 0.61])


def test_fc_noise_table_and_figure_give_each_cnn_its_curve_over_sigma(monkeypatch, tmp_path):
    """Fig. 2 (right): per trained CNN, the accuracy at each noise strength σ is the mean over seeds of each seed's
    mean over tasks; two datasets are two panels, never one pooled curve."""
    import metaland.studies.metaopt as metaopt

    rows = []
    for dataset, level in (("omniglot", 0.9), ("cifar-fs", 0.6)):
        for seed in range(3):
            for task in range(4):
                rows.append(
                    {
                        "run": f"{key('maml', 'cnn4')}-{dataset}-s{seed}",
                        "algorithm": "maml",
                        "dataset": dataset,
                        "ways": 5,
                    }
                    | {"seed": seed, "task": task, "query_accuracy": level, "layerwise_noise_0_accuracy": level}
                    | {
                        "layerwise_noise_1_accuracy": level - 0.2 - seed / 100,
                        "layerwise_noise_0.5_accuracy": level - 0.1,
                    }
                )
    tables = StudyTables("metaopt", pd.DataFrame(rows), pd.DataFrame(rows), pd.DataFrame())
    table = metaopt.noise_table(tables, CFG).set_index(["dataset", "sigma"])
    assert table.loc[("omniglot", 1.0), "accuracy"] == pytest.approx(0.9 - 0.2 - 0.01)
    assert table.loc[("cifar-fs", 0.5), "accuracy"] == pytest.approx(0.5)
    assert list(table.loc["omniglot"].index) == [0.0, 0.5, 1.0] and set(table["runs"]) == {3}
    caught = []
    monkeypatch.setattr(metaopt, "save", lambda fig, path: caught.append(fig))
    metaopt.fig_fc_noise(tables, tmp_path / "f.png")
    panels = {ax.get_title().split(":")[0]: ax for ax in caught[0].axes if ax.get_visible() and ax.lines}
    assert set(panels) == {"omniglot", "cifar-fs"}
    (curve_,) = [line for line in panels["cifar-fs"].lines if line.get_label().startswith("CNN-4")]
    assert curve_.get_ydata().tolist() == pytest.approx([0.6, 0.5, 0.6 - 0.21])


@pytest.mark.parametrize("drop, verdict", [(0.2, "holds"), (-0.2, "fails"), (0.0, "inconclusive")])
def test_fc_noise_degrades_contrasts_no_noise_with_the_strongest_per_maml_cnn(drop, verdict):
    g = np.random.default_rng(0)
    rows = []
    for seed in range(4):
        for task in range(20):
            base = g.uniform(0.5, 0.9)
            for algorithm, other in (("maml", drop), ("kfc", -drop)):  # KFC's opposite effect is never read
                rows.append(
                    {"run": f"{key(algorithm, 'cnn4')}-s{seed}", "algorithm": algorithm, "seed": seed, "task": task}
                    | {"dataset": "omniglot", "backbone": "CNN-4", "ways": 10, "shots": 5, "query_accuracy": base}
                    | {"layerwise_noise_0_accuracy": base, "layerwise_noise_0.5_accuracy": base - other / 2}
                    | {"layerwise_noise_2_accuracy": base - other + g.normal(0, 0.01)}
                )
    tables = StudyTables("metaopt", pd.DataFrame(), pd.DataFrame(rows), pd.DataFrame())
    found = verdicts(tables)["fc-noise-degrades"]
    assert found.verdict == verdict
    if drop:
        (part,) = found.outcome.parts
        assert np.mean(list(part.per_seed.values())) == pytest.approx(drop, abs=0.01)
