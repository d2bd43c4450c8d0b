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


# --------------------------------------------------------------------------------------------
# Simulated studies with a known truth for the claims of issue 22: with the effect built in the claim
# holds, without it it does not, reversed it fails.
# --------------------------------------------------------------------------------------------

KNOBS = {"ways": 5, "shots": 1, "queries": 15, "inner_steps": 5, "inner_lr": 0.01}
CONVS, RESNETS = ("Conv4", "Conv6"), ("ResNet10", "ResNet18")


def _dataset_of(thesis_dataset: str, backbone: str) -> str:
    """The dataset key of a run: the ResNets read the 224-px variant, as in the paper profile."""
    return f"{thesis_dataset}-224" if backbone.startswith("ResNet") else thesis_dataset


def _study(cells: list[dict], means, *, seeds: int = 6, tasks: int = 10, seed_sd: float = 0.01) -> StudyTables:
    """Per-task rows of a simulated ding2023 study: one run per cell (its dataset, variant, backbone, augment) and
    seed; each column of ``means(cell)`` is its mean × a run's own factor exp(N(0, seed_sd)) × a task's exp(N(0,
    0.02)), on tasks shared by every run (so arms pair task by task)."""
    g = np.random.default_rng(7)
    rows = []
    for cell in cells:
        for seed in range(5, 5 + seeds):
            run = f"ding2023-{cell['variant']}-{cell['backbone']}-{cell['augment']}-{cell['dataset']}-s{seed}"
            factors = {column: np.exp(g.normal(0, seed_sd)) for column in means(cell)}
            for task in range(tasks):
                values = {c: m * factors[c] * np.exp(g.normal(0, 0.02)) for c, m in means(cell).items()}
                rows.append({"run": run, **cell, **KNOBS, "seed": seed, "step": 100, "task": task, **values})
    return StudyTables("ding2023", pd.DataFrame(), pd.DataFrame(rows), pd.DataFrame())


def _cells(thesis_datasets=("miniimagenet", "cub"), variants=("fomaml", "transfer"), backbones=CONVS + RESNETS):
    return [
        {"dataset": _dataset_of(d, b), "variant": v, "backbone": b, "augment": a}
        for d in thesis_datasets
        for v in variants
        for b in backbones
        for a in ("none", "chen")
    ]


def _verdicts(tables: StudyTables, slugs: tuple[str, ...]) -> dict[str, str]:
    from metaland.claims import claims_of, evaluate_study

    claims = [c for c in claims_of("ding2023") if c.slug in slugs]
    assert {c.slug for c in claims} == set(slugs)
    return {r.claim.slug: r.verdict for r in evaluate_study(claims, tables, AggregateConfig())}


TABLE2 = ("augmentation-raises-accuracy", "maml-beats-transfer-cub-aug", "resnet18-below-resnet10-miniimagenet")


@pytest.mark.parametrize(
    ("effect", "expected"),
    [(0.05, "holds"), (0.0, "not holds"), (-0.05, "fails")],
)
def test_table2_claims_on_simulated_accuracies(effect, expected):
    """Augmentation's gain, MAML's lead over transfer learning on CUB with augmentation and ResNet10's lead over
    ResNet18 on MiniImageNet are built in with the same sign; MiniImageNet carries the opposite MAML-vs-transfer
    effect and CUB the opposite ResNet effect, which the claims must not read."""

    def means(cell):
        aug, maml, cub = cell["augment"] == "chen", cell["variant"] == "fomaml", cell["dataset"].startswith("cub")
        accuracy = 0.5 + effect * aug
        accuracy += effect * (maml and aug and cub)  # MAML − TL: claimed on CUB with augmentation only …
        accuracy += 0.05 * (not maml and not cub)  # … so transfer learning's lead on MiniImageNet is not read
        accuracy -= effect * (cell["backbone"] == "ResNet18") * (-1 if cub else 1)  # R10 − R18: only MiniImageNet
        return {"query_accuracy": accuracy}

    verdicts = _verdicts(_study(_cells(), means), TABLE2)
    if expected == "not holds":
        assert "holds" not in verdicts.values(), verdicts
    else:
        assert verdicts == dict.fromkeys(TABLE2, expected)


def test_table2_claims_need_every_stratum_and_the_thesis_datasets():
    """One stratum against the claim is enough to stop "holds" (transfer learning's ResNet18 above ResNet10 with
    augmentation, as Table 2 prints it); runs of another dataset (the default profile's) are not in scope."""

    def means(cell):
        accuracy = 0.5 + 0.05 * (cell["augment"] == "chen") + 0.05 * (cell["variant"] == "fomaml")
        if cell["backbone"] == "ResNet18" and not cell["dataset"].startswith("cub"):
            table2_exception = cell["variant"] == "transfer" and cell["augment"] == "chen"
            accuracy += 0.03 if table2_exception else -0.03
        return {"query_accuracy": accuracy}

    verdicts = _verdicts(_study(_cells(), means), TABLE2)
    assert verdicts == {**dict.fromkeys(TABLE2, "holds"), "resnet18-below-resnet10-miniimagenet": "fails"}
    omniglot = _cells(("omniglot-small",), backbones=CONVS)
    verdicts = _verdicts(_study(omniglot, means), TABLE2)
    assert verdicts == {
        "augmentation-raises-accuracy": "holds",
        "maml-beats-transfer-cub-aug": "inconclusive",  # no CUB run: nothing in scope
        "resnet18-below-resnet10-miniimagenet": "inconclusive",
    }


@pytest.mark.parametrize(("slope", "expected"), [(0.03, "holds"), (0.0, "not holds"), (-0.03, "fails")])
def test_sharpness_falls_with_depth_on_simulated_miniimagenet(slope, expected):
    """Sharpness falls by ``slope`` per backbone step (Conv4 → ResNet18) on MiniImageNet, 84-px ConvNets and 224-px
    ResNets read together; CUB carries the opposite trend on meta-test tasks, as Table 8 prints, and is not read."""
    position = {b: i for i, b in enumerate(CONVS + RESNETS)}

    def means(cell):
        step = position[cell["backbone"]]
        cub = cell["dataset"].startswith("cub")
        return {"sam_sharpness": 0.25 + step * (slope if cub else -slope), "sam_sharpness/train": 0.2 - step * slope}

    tables = _study(_cells(variants=("fomaml",)), means, seeds=4)
    verdict = _verdicts(tables, ("sharpness-falls-with-depth",))["sharpness-falls-with-depth"]
    assert verdict != "holds" if expected == "not holds" else verdict == expected


def test_sharpness_falls_with_depth_keeps_augmentation_apart():
    """Falls without augmentation, rises with it: not "holds" (each augmentation setting is its own stratum)."""
    position = {b: i for i, b in enumerate(CONVS + RESNETS)}

    def means(cell):
        slope = 0.03 if cell["augment"] == "none" else -0.03
        value = 0.25 - position[cell["backbone"]] * slope
        return {"sam_sharpness": value, "sam_sharpness/train": value}

    tables = _study(_cells(("miniimagenet",), ("fomaml",)), means, seeds=4)
    assert _verdicts(tables, ("sharpness-falls-with-depth",)) == {"sharpness-falls-with-depth": "fails"}


GAP = ("cub-resnet-sharpness-gap", "augmentation-narrows-cub-resnet-gap")


@pytest.mark.parametrize(
    ("train_test", "expected"),
    [
        # (no aug: train, test), (aug: train, test) → the two claims' verdicts
        ((0.03, 0.45, 0.065, 0.26), {GAP[0]: "holds", GAP[1]: "holds"}),  # Table 8's ResNet10: 15× → 4×
        ((0.3, 0.3, 0.3, 0.3), {GAP[0]: "fails", GAP[1]: "not holds"}),  # no gap, nothing to narrow
        ((0.2, 0.3, 0.05, 0.4), {GAP[0]: "fails", GAP[1]: "fails"}),  # 1.5× without aug, 8× with
    ],
)
def test_cub_resnet_sharpness_gap_on_simulated_runs(train_test, expected):
    """The CUB ResNets' meta-test / meta-train sharpness ratio; the ConvNets (ratio 1, every setting) and
    MiniImageNet's ResNets (ratio 1) are out of scope and must not move the verdicts."""
    none_train, none_test, aug_train, aug_test = train_test

    def means(cell):
        if cell["dataset"] == "cub-224":
            train, test = (none_train, none_test) if cell["augment"] == "none" else (aug_train, aug_test)
        else:
            train = test = 0.25
        return {"sam_sharpness/train": train, "sam_sharpness": test}

    verdicts = _verdicts(_study(_cells(variants=("fomaml",)), means, seeds=5), GAP)
    for slug, verdict in expected.items():
        assert verdicts[slug] != "holds" if verdict == "not holds" else verdicts[slug] == verdict, verdicts


def _surfaces(variant: str, surfaces: dict[str, np.ndarray], seeds: int) -> pd.DataFrame:
    a = np.linspace(-1, 1, len(next(iter(surfaces.values()))))
    g = np.random.default_rng(3)
    rows = []
    for seed in range(5, 5 + seeds):
        for name, z in surfaces.items():
            z = z + g.normal(0, 0.002, z.shape)
            for i, x in enumerate(a):
                for j, y in enumerate(a):
                    rows.append(
                        {"run": f"ding2023-{variant}-s{seed}", "variant": variant, "dataset": "cub", "seed": seed}
                        | {"backbone": "Conv4", "augment": "chen", **KNOBS, "step": 10, "grid": name}
                        | {"x": x, "y": y, "value": z[i, j]}
                    )
    return pd.DataFrame(rows)


def _landscape_verdicts(pretraining: np.ndarray, adapted: np.ndarray, seeds: int = 8) -> dict[str, str]:
    """Both surface claims on ``seeds`` transfer runs (pre-training surface) and MAML runs (5- and 10-step
    support surfaces), each surface with a little noise of its own (identical per-seed values have only the
    exact sign-flip p, 2⁻ⁿ: 8 seeds reach α after Holm)."""
    grids = pd.concat(
        [
            _surfaces("transfer", {"pretraining": pretraining}, seeds),
            _surfaces("fomaml", {"inner_5/train": adapted, "inner_10": adapted}, seeds),
        ],
        ignore_index=True,
    )
    tables = StudyTables("ding2023", pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), grids)
    return _verdicts(tables, ("transfer-landscape-convex", "inner-loop-converges"))


def test_transfer_convexity_and_inner_loop_convergence_on_constructed_surfaces():
    a = np.linspace(-1, 1, 9)
    aa, bb = np.meshgrid(a, a, indexing="ij")
    bowl, saddle, tilted = aa**2 + bb**2, aa**2 - bb**2, aa + 0.5 * bb
    rim, cut = np.minimum(bowl, 1.2), np.minimum(bowl, 0.5)  # levels off at the corners / on most of the plane
    both = ("transfer-landscape-convex", "inner-loop-converges")
    assert _landscape_verdicts(bowl, bowl) == dict.fromkeys(both, "holds")  # convex; adapted to the bottom
    assert _landscape_verdicts(saddle, tilted) == dict.fromkeys(both, "fails")  # centre halfway up a slope
    assert convex_fraction(rim) == pytest.approx(45 / 49) and convex_fraction(cut) == pytest.approx(17 / 49)
    assert _landscape_verdicts(rim, bowl)["transfer-landscape-convex"] == "holds"  # a rim is allowed
    assert _landscape_verdicts(cut, bowl)["transfer-landscape-convex"] == "fails"
    off_centre = (aa - 1) ** 2 + bb**2  # the bottom at the plane's edge: the centre at 1 / 5 of the range
    assert _landscape_verdicts(bowl, off_centre)["inner-loop-converges"] == "fails"
    assert set(_landscape_verdicts(bowl, bowl, seeds=1).values()) == {"inconclusive"}  # seed 5 alone, as drawn


def test_augmented_only_correlations_beside_the_pooled_ones():
    """Among augmented runs, flatter and lower-loss runs reach higher accuracy; among unaugmented runs the
    opposite, so the pooled (Table 3) claims do not hold while the augmented-only (Table 4) ones do; reversed
    within the augmented runs, the augmented-only claims fail."""
    g = np.random.default_rng(11)
    accuracy = {(b, a, s): g.uniform(0.4, 0.7) for b in CONVS + RESNETS for a in ("none", "chen") for s in range(5, 8)}
    slugs = ("sharpness-vs-accuracy-aug", "loss-vs-accuracy-aug", "sharpness-vs-accuracy", "loss-vs-accuracy")

    def tables(sign_aug: int):
        frames = []
        for (backbone, augment, seed), acc in accuracy.items():
            sign = sign_aug if augment == "chen" else -sign_aug
            x = 0.5 - sign * (acc - 0.55)
            cell = {"dataset": _dataset_of("miniimagenet", backbone), "variant": "fomaml", "backbone": backbone}
            frames.append(
                pd.DataFrame(
                    {"run": f"ding2023-{backbone}-{augment}-s{seed}", **cell, "augment": augment, **KNOBS}
                    | {"seed": seed, "task": range(4), "query_accuracy": acc}
                    | {"sam_sharpness/train": x * 0.3, "query_loss/train": x + g.normal(0, 0.002, 4)}
                )
            )
        return StudyTables("ding2023", pd.DataFrame(), pd.concat(frames, ignore_index=True), pd.DataFrame())

    verdicts = _verdicts(tables(1), slugs)
    assert verdicts["sharpness-vs-accuracy-aug"] == verdicts["loss-vs-accuracy-aug"] == "holds"
    assert "holds" not in (verdicts["sharpness-vs-accuracy"], verdicts["loss-vs-accuracy"])
    verdicts = _verdicts(tables(-1), slugs)
    assert verdicts["sharpness-vs-accuracy-aug"] == verdicts["loss-vs-accuracy-aug"] == "fails"


def test_the_rows_file_recomputes_the_claims_with_their_own_rows(tmp_path):
    """The claims whose rows the study module builds itself (per-run sharpness ratios, backbone positions) are
    recomputed from their rows file alone, as ``python -m metaland claim`` does."""
    from metaland.claims import claims_of, decide, evaluate_study, method_of, rows_csv

    position = {b: i for i, b in enumerate(CONVS + RESNETS)}

    def means(cell):
        ratio = 15.0 if cell["augment"] == "none" else 4.0
        train = 0.25 - 0.03 * position[cell["backbone"]]
        return {"sam_sharpness/train": train, "sam_sharpness": train * ratio, "query_accuracy": 0.5}

    tables = _study(_cells(variants=("fomaml",)), means, seeds=4)
    slugs = (*GAP, "sharpness-falls-with-depth")
    claims = [c for c in claims_of("ding2023") if c.slug in slugs]
    for found in evaluate_study(claims, tables, AggregateConfig()):
        assert not found.rows.empty, found.claim.id
        path = tmp_path / f"{found.claim.slug}.csv"
        path.write_text(rows_csv(found.rows))
        read = pd.read_csv(path)
        for column in ("rule", "component"):
            read[column] = read[column].astype(object).fillna("").astype(str)
        again = decide(method_of(found.claim), read, AggregateConfig())
        assert [(p.component, p.stratum, p.p_holds) for p in again] == [
            (p.component, p.stratum, pytest.approx(p.p_holds, nan_ok=True)) for p in found.outcome.parts
        ], found.claim.id


# --------------------------------------------------------------------------------------------
# Figures per dataset (issue 22): Figs. 11-12 draw each dataset apart, name it, and add the thesis's own levels
# --------------------------------------------------------------------------------------------


def _drawn(draw, tables: StudyTables, monkeypatch, tmp_path):
    """The matplotlib figure ``draw`` builds, caught before it is saved and closed."""
    import metaland.studies.ding2023 as ding

    caught = []
    monkeypatch.setattr(ding, "save", lambda fig, path: caught.append(fig))
    draw(tables, tmp_path / "figure.png")
    return caught[0]


def test_low_loss_regions_draw_every_dataset_apart_with_the_thesis_levels(monkeypatch, tmp_path):
    from matplotlib.contour import ContourSet

    from metaland.studies.ding2023 import fig_meta_loss_regions

    a = np.linspace(-1, 1, 9)
    aa, bb = np.meshgrid(a, a, indexing="ij")
    bowl = 0.5 + aa**2 + bb**2  # from 0.5 to 2.5: reaches every level of the thesis
    rows = []
    for dataset, offset in (("miniimagenet", 0.0), ("cub", 0.0), ("omniglot-small", 0.0), ("tieredimagenet", 5.0)):
        for augment in ("none", "chen"):
            surfaces = {"meta_many": bowl + offset, "meta_many/train": bowl + offset}
            meta = {"dataset": dataset, "augment": augment}
            rows += [{**row, **meta} for row in _grid_rows(f"ding2023-{dataset}-{augment}", 5, surfaces)]
    fig = _drawn(
        fig_meta_loss_regions, StudyTables("ding2023", *[pd.DataFrame()] * 3, pd.DataFrame(rows)), monkeypatch, tmp_path
    )
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(panels) == 4 * 4  # a row per dataset (one backbone each), never one row of pooled datasets
    for ax in panels:
        dataset = ax.get_title().split(":")[0]
        dashed = sorted(
            level for c in ax.collections if isinstance(c, ContourSet) and c.get_linestyle()[0][1] for level in c.levels
        )
        split = "train" if "meta-train" in ax.get_title() else "test"
        expected = {
            ("miniimagenet", "train"): [0.61, 0.81],
            ("miniimagenet", "test"): [1.21, 1.41],
            ("cub", "train"): [0.21, 0.81, 1.01, 1.41],
            ("cub", "test"): [0.21, 0.81, 1.01, 1.41],
        }.get((dataset, split), [])
        reached = [level for level in expected if level > 0.5]  # 0.21 lies below this bowl's minimum
        assert dashed == pytest.approx(reached), ax.get_title()
        if dataset == "cub":
            assert "thesis 0.21 below every point" in ax.get_title()
    assert {ax.get_title().split(":")[0] for ax in panels} == {
        "miniimagenet",
        "cub",
        "omniglot-small",
        "tieredimagenet",
    }


def test_table2_and_fig13_panels_show_the_thesis_numbers_of_their_own_dataset(monkeypatch, tmp_path):
    from matplotlib.collections import PathCollection

    from metaland.studies.ding2023 import PAPER_ACCURACY, fig_accuracy, fig_sharpness

    final = pd.concat(
        [
            _final_tasks().assign(dataset=dataset, run=lambda f, d=dataset: f["run"] + d)
            for dataset in ("cub", "omniglot-small")
        ],
        ignore_index=True,
    )
    tables = _tables(final)
    fig = _drawn(fig_accuracy, tables, monkeypatch, tmp_path)
    bars = {
        ax.get_title().split(":")[0].removeprefix("(b) "): ax for ax in fig.axes if ax.get_title().startswith("(b)")
    }

    def dashes(ax):
        return sorted(
            np.round(
                np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if isinstance(c, PathCollection)] + [[]]),
                4,
            )
        )

    cub_dashes = dashes(bars["cub"])
    expected = sorted(
        round(PAPER_ACCURACY[("fomaml", b, aug)][1] / 100, 4) for b in ("Conv4", "Conv6") for aug in ("none", "chen")
    )
    assert cub_dashes == expected  # CUB's column of Table 2, not MiniImageNet's
    assert dashes(bars["omniglot-small"]) == []
    assert "the thesis has no omniglot-small numbers" in bars["omniglot-small"].get_title()
    fig = _drawn(fig_sharpness, tables, monkeypatch, tmp_path)
    thesis_titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("(b) thesis")]
    assert thesis_titles == [
        "(b) thesis, CUB (Table 8 / 10)",
        "(b) thesis, MiniImageNet (Table 7 / 10); no omniglot-small numbers, MiniImageNet's shown",
    ]


def test_overfitting_curves_are_per_dataset_and_augmentation_means_over_seeds(monkeypatch, tmp_path):
    from metaland.studies.ding2023 import fig_overfitting

    meta = {"variant": "fomaml", "ways": 5, "shots": 1, "queries": 15, "inner_steps": 5, "inner_lr": 0.01}
    validation, final = [], []
    for dataset in ("cub", "miniimagenet"):
        for augment in ("none", "chen"):
            for seed in (5, 6, 7):
                run = f"ding2023-{dataset}-{augment}-s{seed}"
                cell = meta | {"run": run, "dataset": dataset, "backbone": "Conv4", "augment": augment, "seed": seed}
                offset = (0.1 if dataset == "cub" else 0.0) + (0.05 if augment == "chen" else 0.0)
                validation += [cell | {"step": s, "query_accuracy": offset + s / 100 + seed / 100} for s in (0, 10, 20)]
                final.append(cell | {"task": 0, "query_accuracy": 0.5})
    tables = StudyTables(
        "ding2023", pd.DataFrame(), pd.DataFrame(final), pd.DataFrame(), validation=pd.DataFrame(validation)
    )
    fig = _drawn(fig_overfitting, tables, monkeypatch, tmp_path)
    panels = {ax.get_title().split(":")[0]: ax for ax in fig.axes if ax.get_visible() and ax.lines}
    assert set(panels) == {"cub, no aug", "cub, aug", "miniimagenet, no aug", "miniimagenet, aug"}
    for title, ax in panels.items():
        offset = (0.1 if title.startswith("cub") else 0.0) + (0.0 if "no aug" in title else 0.05)
        (line,) = [ln for ln in ax.lines if ln.get_label().endswith("validation (3 runs)")]
        assert line.get_xdata().tolist() == [0, 10, 20]
        assert line.get_ydata() == pytest.approx([offset + s / 100 + 0.06 for s in (0, 10, 20)])  # seeds 5-7: 0.06
