"""Study ``ding2023`` — seed 001, "Understanding MAML Through Its Loss Landscape" (Ding, MSc thesis 2023).

First-order MAML (which the thesis calls MAML) and a transfer-learning baseline are trained with
several backbones, with and without data augmentation, over three seeds; then the thesis looks at
their loss landscapes (filter-normalised 2-D surfaces, eqs. 8-9) and SAM sharpness (eqs. 16-17,
Algorithm 3), and correlates sharpness and loss with accuracy (Tables 3-4). Here:

* runs are ``fomaml`` (T = 5 in meta-training, 10 at meta-test: ``probe.inner_steps``) and
  ``transfer`` (``metaland.meta.transfer``), each backbone × augmentation × seed; the checkpoint
  probed is the best on validation (``extract.best``);
* every MAML run is probed on fixed meta-train and meta-test tasks (``adaptation``,
  ``sharpness`` and their ``/train`` twins): Table 2, Tables 3-4, 7-8, Figs. 3, 13, 14;
* the seed-5 runs also get the landscapes (probe set ``landscape``): inner-loop support surfaces
  after 0 / 5 / 10 steps, the head / features decomposition at 0 steps, the meta-loss over 4 tasks
  re-drawn per point and over many fixed tasks, the query-shot sweep (Conv4); transfer runs get
  their pre-training loss surface (probe set ``transfer``): Figs. 4-12;
* claims are tested by rules fixed below before the data; the surface-shape statistics behind
  them (roughness, convex fraction) are in ``metaland.stats``.

See docs/studies/ding2023.md for every choice the thesis leaves open.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import cm
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from metaland.claims import Claim, Rule, all_of, improves_on, register, where
from metaland.config import AggregateConfig
from metaland.data.registry import registered_name
from metaland.plots import KNOB_LABELS, curve, grid, no_data, save, suptitle, varying_knobs
from metaland.results import TABLES, StudyTables, stratum_of
from metaland.stats import convex_fraction, pearson, seed_summary, spearman, surface_roughness
from metaland.studies import STUDIES, Figure, StudySpec, Table

NAME = "ding2023"
SEED = "001"
MAML, TL = "fomaml", "transfer"
METHOD_NAMES = {MAML: "MAML (first order)", TL: "transfer learning"}
BACKBONES = ("Conv4", "Conv6", "ResNet10", "ResNet18")
AUGMENT_NAMES = {"none": "no aug", "chen": "aug"}
SPLIT_SUFFIX = {"train": "/train", "test": ""}
"""Probe outputs on meta-train tasks carry ``/train``; meta-test ones (probe.split) carry nothing."""
SPLIT_NAMES = {"train": "meta-train", "test": "meta-test"}
SHOT_SURFACES = {1: "shots_1", 2: "shots_2", 4: "shots_4"}
"""Seed 001 Fig. 10's query-shot sweep; the run's full query set (15 shots) is the ``meta_many`` surface."""
HEAD_RESEMBLES_MIN_R = 0.9
FEATURE_FLATNESS_MAX_RATIO = 0.5
"""'Head-only ≈ total, feature-only flat' read as: Pearson r(head-only, all) ≥ 0.9 over the grid and
the feature-only surface's range at most half the full one's (the thesis gives no numbers)."""
SHAPE_MIN_RHO = 0.8
"""'Keeps the shape of the 4-task landscape' read as: Spearman ρ between the 4-task and the many-task
surfaces over the grid ≥ 0.8 (the thesis gives no number)."""
REGION_DEPTHS = (0.2, 0.4)
"""Figs. 11-12 paint the area below fixed loss thresholds; the loss scale differs here, so the
thresholds are re-derived per panel as minimum + 0.2 and + 0.4 (seed 001 spec §7)."""
THESIS_REGION_LEVELS = {
    "miniimagenet": {"train": (0.61, 0.81), "test": (1.21, 1.41)},
    "cub": {"train": (0.21, 0.81, 1.01, 1.41), "test": (0.21, 0.81, 1.01, 1.41)},
}
"""The thesis's own absolute thresholds of Figs. 11 (MiniImageNet) and 12 (CUB), drawn beside the relative ones
on panels of those datasets. Fig. 12's caption lists four levels without saying which split each belongs to,
so CUB's panels draw all four on both splits."""
THESIS_COLUMN = {"miniimagenet": 0, "cub": 1}
"""Which of a ``PAPER_*`` pair is a thesis dataset's: (MiniImageNet, CUB)."""

PAPER_ACCURACY = {
    # Table 2, 5-way 1-shot accuracy % (mean over 3 seeds of 1,000 tasks): (method, backbone, augment) -> (mini, CUB)
    (MAML, "Conv4", "none"): (45.62, 53.24),
    (MAML, "Conv4", "chen"): (45.29, 56.36),
    (MAML, "Conv6", "none"): (47.23, 56.40),
    (MAML, "Conv6", "chen"): (51.31, 66.51),
    (MAML, "ResNet10", "none"): (49.38, 56.26),
    (MAML, "ResNet10", "chen"): (54.17, 69.80),
    (MAML, "ResNet18", "none"): (48.78, 55.50),
    (MAML, "ResNet18", "chen"): (51.97, 70.42),
    (TL, "Conv4", "none"): (36.46, 35.83),
    (TL, "Conv4", "chen"): (45.83, 46.69),
    (TL, "Conv6", "none"): (41.66, 40.13),
    (TL, "Conv6", "chen"): (50.13, 53.16),
    (TL, "ResNet10", "none"): (51.30, 58.86),
    (TL, "ResNet10", "chen"): (54.76, 60.6),
    (TL, "ResNet18", "none"): (48.56, 59.90),
    (TL, "ResNet18", "chen"): (55.26, 63.79),
}
PAPER_SHARPNESS = {
    # Tables 7 (MiniImageNet) and 8 (CUB), printed ×10⁻¹: true sharpness = entry / 10 (spec §1.5).
    # (backbone, augment, split) -> (mini, CUB)
    ("Conv4", "none", "train"): (0.2524, 0.2654),
    ("Conv4", "chen", "train"): (0.1978, 0.2048),
    ("Conv4", "none", "test"): (0.2916, 0.3185),
    ("Conv4", "chen", "test"): (0.2320, 0.2533),
    ("Conv6", "none", "train"): (0.2138, 0.2063),
    ("Conv6", "chen", "train"): (0.1705, 0.1601),
    ("Conv6", "none", "test"): (0.2728, 0.2940),
    ("Conv6", "chen", "test"): (0.2205, 0.2663),
    ("ResNet10", "none", "train"): (0.1547, 0.0279),
    ("ResNet10", "chen", "train"): (0.1409, 0.0667),
    ("ResNet10", "none", "test"): (0.2265, 0.4189),
    ("ResNet10", "chen", "test"): (0.2295, 0.2597),
    ("ResNet18", "none", "train"): (0.1530, 0.0299),
    ("ResNet18", "chen", "train"): (0.1174, 0.0641),
    ("ResNet18", "none", "test"): (0.1955, 0.5798),
    ("ResNet18", "chen", "test"): (0.1581, 0.2616),
}
PAPER_CORRELATIONS = {
    # Tables 3 (all runs) and 4 (aug only): (runs, x, x split, accuracy split) -> (r mini, r CUB)
    ("all", "sam_sharpness", "train", "train"): (-0.62, -0.93),
    ("all", "sam_sharpness", "train", "test"): (-0.77, -0.37),
    ("all", "query_loss", "train", "train"): (-0.99, -0.99),
    ("all", "query_loss", "train", "test"): (-0.83, -0.35),
    ("all", "sam_sharpness", "test", "test"): (-0.54, -0.41),
    ("all", "query_loss", "test", "test"): (-0.87, -0.63),
    ("aug", "sam_sharpness", "train", "train"): (-0.80, -0.95),
    ("aug", "sam_sharpness", "train", "test"): (-0.78, -0.89),
    ("aug", "query_loss", "train", "train"): (-0.99, -0.99),
    ("aug", "query_loss", "train", "test"): (-0.95, -0.95),
    ("aug", "sam_sharpness", "test", "test"): (-0.30, 0.38),
    ("aug", "query_loss", "test", "test"): (-0.95, -0.98),
}
CORRELATION_ROWS = tuple(dict.fromkeys((x, xs, acc) for _, x, xs, acc in PAPER_CORRELATIONS))


def metric(name: str, split: str) -> str:
    """The column of a probe metric measured on the fixed tasks of ``split``."""
    return name + SPLIT_SUFFIX[split]


def _method(name: str):
    return where(variant=name)


def _backbone_order(frame: pd.DataFrame) -> list[str]:
    present = set(frame["backbone"]) if not frame.empty else set()
    return [b for b in BACKBONES if b in present] + sorted(present - set(BACKBONES))


# --------------------------------------------------------------------------------------------
# Per-run points and surfaces
# --------------------------------------------------------------------------------------------


def thesis_dataset(dataset: str) -> str:
    """The thesis's dataset a run's dataset is: a variant entry at another image size (``miniimagenet-224``, the
    ResNets' 224 px, §3.2) is its dataset, as in the thesis's Tables 3-4, which pool every backbone of a dataset."""
    return registered_name(dataset) or dataset


def run_points(tables: StudyTables) -> pd.DataFrame:
    """One row per run at its probed (best-on-validation) checkpoint: mean accuracy, loss and
    sharpness over the fixed tasks of each split (Tables 3-4 and Fig. 14 correlate these); ``pooled`` is the
    thesis's dataset the correlations pool over (every backbone, whatever its image size)."""
    final = tables.final_tasks
    if final.empty:
        return pd.DataFrame()
    wanted = [metric(m, s) for m in ("query_accuracy", "query_loss", "sam_sharpness") for s in SPLIT_SUFFIX]
    present = [c for c in wanted if c in final]
    keys = ["run", "variant", "dataset", "backbone", "augment", "seed"]
    points = final.groupby(keys, sort=True)[present].mean().reset_index()
    return points.assign(pooled=points["dataset"].map(thesis_dataset))


def final_grids(tables: StudyTables) -> pd.DataFrame:
    grids = tables.grids
    if grids.empty:
        return grids
    return grids[grids["step"] == grids.groupby("run")["step"].transform("max")]


def surface_of(grids: pd.DataFrame, run: str, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(a, b, values[a, b]) of one surface of one run, or None if it was not probed."""
    rows = grids[(grids["run"] == run) & (grids["grid"] == name)]
    if rows.empty:
        return None
    table = rows.pivot(index="x", columns="y", values="value")
    return table.index.to_numpy(), table.columns.to_numpy(), table.to_numpy()


def landscape_runs(grids: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    """(run, metadata) of every run with surfaces, by method, backbone, augmentation."""
    if grids.empty:
        return []
    meta = grids.drop_duplicates("run").set_index("run")
    order = {b: i for i, b in enumerate(BACKBONES)}
    runs = sorted(meta.index, key=lambda r: (meta.loc[r, "variant"], order.get(meta.loc[r, "backbone"], 9), r))
    return [(run, meta.loc[run]) for run in runs]


def _run_title(row: pd.Series) -> str:
    """A surface panel's run: dataset first (every figure draws each dataset apart), backbone, augmentation, seed."""
    augment = AUGMENT_NAMES.get(row["augment"], row["augment"])
    return f"{row['dataset']}: {row['backbone']}, {augment}, seed {int(row['seed'])}"


def thesis_column(dataset: str) -> int | None:
    """The index of ``dataset``'s numbers in a ``PAPER_*`` pair, or None for a dataset the thesis did not use."""
    return THESIS_COLUMN.get(thesis_dataset(dataset))


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def accuracy_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Table 2: meta-test accuracy per dataset × method × backbone × augmentation (mean and CI over seeds, each
    seed's mean over the fixed tasks; the field's CI over tasks × seeds beside it) and query loss, beside the
    thesis's MiniImageNet and CUB numbers."""
    final = tables.final_tasks
    rows = []
    if final.empty:
        return pd.DataFrame()
    for (dataset, variant, backbone, augment), group in final.groupby(
        ["dataset", "variant", "backbone", "augment"], sort=True
    ):
        paper = PAPER_ACCURACY.get((variant, backbone, augment), (math.nan, math.nan))
        rows.append(
            {
                "dataset": dataset,
                "method": variant,
                "backbone": backbone,
                "augment": augment,
                "runs": group["run"].nunique(),
                **seed_summary(group, "query_accuracy", cfg.confidence, "accuracy"),
                "query_loss": group["query_loss"].mean(),
                "paper_miniimagenet": paper[0] / 100,
                "paper_cub": paper[1] / 100,
            }
        )
    return pd.DataFrame(rows)


def sharpness_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Tables 7-8: MAML's SAM sharpness (ρ = 0.05) per dataset × backbone × augmentation × split (mean and CI over
    seeds; the field's CI over tasks × seeds beside it), beside the thesis's values (unscaled: its tables print
    × 10)."""
    final = _method(MAML)(tables.final_tasks)
    rows = []
    if final.empty:
        return pd.DataFrame()
    for (dataset, backbone, augment), group in final.groupby(["dataset", "backbone", "augment"], sort=True):
        for split in SPLIT_SUFFIX:
            column = metric("sam_sharpness", split)
            if column not in group:
                continue
            paper = PAPER_SHARPNESS.get((backbone, augment, split), (math.nan, math.nan))
            rows.append(
                {
                    "dataset": dataset,
                    "backbone": backbone,
                    "augment": augment,
                    "split": split,
                    "runs": group["run"].nunique(),
                    **seed_summary(group, column, cfg.confidence, "sharpness"),
                    "paper_miniimagenet": paper[0],
                    "paper_cub": paper[1],
                }
            )
    return pd.DataFrame(rows)


def correlation_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Tables 3-4: Pearson r across MAML runs of one dataset (one point per run; every backbone, the ResNets at
    their 224 px too, as the thesis pools them) between mean sharpness / loss and mean accuracy, on meta-train and
    meta-test tasks; all runs (Table 3) and augmented runs (Table 4); the p-value is scipy's exact permutation p
    (two-sided; the t approximation is wrong at a handful of runs)."""
    points = run_points(tables)
    rows = []
    if points.empty:
        return pd.DataFrame()
    maml = points[points["variant"] == MAML]
    for dataset, of_dataset in maml.groupby("pooled", sort=True):
        for runs, subset in (("all", of_dataset), ("aug", of_dataset[of_dataset["augment"] != "none"])):
            for x, x_split, accuracy_split in CORRELATION_ROWS:
                x_column, y_column = metric(x, x_split), metric("query_accuracy", accuracy_split)
                if x_column not in subset or y_column not in subset:
                    continue
                result = pearson(subset[x_column], subset[y_column], exact=True)
                paper = PAPER_CORRELATIONS[(runs, x, x_split, accuracy_split)]
                rows.append(
                    {
                        "dataset": dataset,
                        "runs": runs,
                        "x": x_column,
                        "accuracy": y_column,
                        "n": result.n,
                        "pearson_r": result.r,
                        "p_value": result.p,
                        "paper_r_miniimagenet": paper[0],
                        "paper_r_cub": paper[1],
                    }
                )
    return pd.DataFrame(rows)


def landscape_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Shape of every probed surface: centre, range, mean rise, roughness, convex fraction, and
    (decomposition) Pearson r of the head-only and feature-only surfaces with the full one."""
    grids = final_grids(tables)
    rows = []
    for run, meta in landscape_runs(grids):
        for name in sorted(grids[grids["run"] == run]["grid"].unique()):
            _, _, z = surface_of(grids, run, name)
            centre = z[len(z) // 2, len(z) // 2]
            row = {
                "run": run,
                "method": meta["variant"],
                "backbone": meta["backbone"],
                "augment": meta["augment"],
                "seed": meta["seed"],
                "surface": name,
                "centre": centre,
                "range": float(np.ptp(z)),
                "mean_rise": float((z - centre).mean()),
                "roughness": surface_roughness(z),
                "convex_fraction": convex_fraction(z),
            }
            full = surface_of(grids, run, "inner_0") if name in ("head", "features") else None
            row["r_with_full"] = pearson(z.ravel(), full[2].ravel()).r if full else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Claims (rules fixed before the data)
# --------------------------------------------------------------------------------------------


def _claim(slug: str, section: str, claim: str, rule: str, test, **extra) -> None:
    register(
        Claim(id=f"{NAME}-{slug}", study=NAME, seed=SEED, section=section, claim=claim, rule=rule, test=test, **extra)
    )


LANDSCAPE_COLUMNS = ["stratum", "seed", "run", "unit", "value"]


def _per_surface(measure: Callable[[pd.DataFrame, str], float | None]) -> Callable[[StudyTables], pd.DataFrame]:
    """Rows of one number per run with surfaces (``measure(grids, run)``; None: the run lacks them), in the
    level family's schema: per seed the value, t over seeds within the stratum."""

    def select(tables: StudyTables) -> pd.DataFrame:
        grids = final_grids(tables)
        rows = []
        for run, meta in landscape_runs(grids):
            value = measure(grids, run)
            if value is not None:
                rows.append({**meta.to_dict(), "run": run, "unit": "surface", "value": value})
        frame = pd.DataFrame(rows)
        return frame.assign(stratum=stratum_of(frame))[LANDSCAPE_COLUMNS] if rows else pd.DataFrame()

    return select


def _head_resemblance(grids: pd.DataFrame, run: str) -> float | None:
    head, full = surface_of(grids, run, "head"), surface_of(grids, run, "inner_0")
    return pearson(head[2].ravel(), full[2].ravel()).r if head is not None and full is not None else None


def _feature_range_ratio(grids: pd.DataFrame, run: str) -> float | None:
    features, full = surface_of(grids, run, "features"), surface_of(grids, run, "inner_0")
    if features is None or full is None or np.ptp(full[2]) == 0:
        return None
    return float(np.ptp(features[2]) / np.ptp(full[2]))


def _shape_kept(suffix: str) -> Callable[[pd.DataFrame, str], float | None]:
    def measure(grids: pd.DataFrame, run: str) -> float | None:
        few, many = surface_of(grids, run, f"meta_4{suffix}"), surface_of(grids, run, f"meta_many{suffix}")
        return spearman(few[2].ravel(), many[2].ravel()).r if few is not None and many is not None else None

    return measure


def _roughness_ratio(suffix: str) -> Callable[[pd.DataFrame, str], float | None]:
    """roughness(many fixed tasks) / roughness(as many tasks re-drawn at every point): the same number of loss
    evaluations per point, so only fixing the tasks differs."""

    def measure(grids: pd.DataFrame, run: str) -> float | None:
        fixed, redrawn = (
            surface_of(grids, run, f"meta_many{suffix}"),
            surface_of(grids, run, f"meta_many_resample{suffix}"),
        )
        if fixed is None or redrawn is None or surface_roughness(redrawn[2]) == 0:
            return None
        return surface_roughness(fixed[2]) / surface_roughness(redrawn[2])

    return measure


def _convexity_gain(grids: pd.DataFrame, run: str) -> float | None:
    """Convex fraction at the full query set (15 shots) minus at 1 query shot."""
    one, many = surface_of(grids, run, SHOT_SURFACES[1]), surface_of(grids, run, "meta_many")
    return convex_fraction(many[2]) - convex_fraction(one[2]) if one is not None and many is not None else None


def _landscape(name: str, measure, threshold: float, *, above: bool) -> Rule:
    relation = "≥" if above else "≤"
    params = {
        "name": f"{name} per run {relation} {threshold:g}",
        "threshold": threshold,
        "direction": 1 if above else -1,
    }
    return Rule("level", params, _per_surface(measure))


LANDSCAPE_SEEDS = (
    "per stratum (dataset, backbone, augmentation, ...), one value per run with these surfaces, t over seeds"
)

_claim(
    "feature-reuse",
    "§4.3.1, Figs. 6-7",
    "The head-only landscape resembles the full one while the feature-only landscape is nearly flat: MAML mostly "
    "reuses features and adapts the head.",
    f"on the 0-step support surface of a meta-test task, {LANDSCAPE_SEEDS}: holds if the mean Pearson r(head-only, "
    f"full) over the grid is significantly above {HEAD_RESEMBLES_MIN_R} and the mean ratio of the feature-only "
    f"surface's range to the full one's significantly below {FEATURE_FLATNESS_MAX_RATIO:g}, in every stratum; fails "
    "if either is significantly on the other side in any; inconclusive otherwise",
    all_of(
        {
            "head resembles full": _landscape(
                "r(head-only, full)", _head_resemblance, HEAD_RESEMBLES_MIN_R, above=True
            ),
            "features flat": _landscape(
                "range(features) / range(full)", _feature_range_ratio, FEATURE_FLATNESS_MAX_RATIO, above=False
            ),
        }
    ),
)
_claim(
    "many-tasks-smoother",
    "§4.3.2, Fig. 8",
    "The meta-loss landscape averaged over many fixed tasks keeps the shape of the 4-task one (re-drawn at every "
    "point) but is smooth.",
    f"on meta-train and meta-test tasks, {LANDSCAPE_SEEDS}: holds if (shape) the mean Spearman ρ between the 4-task "
    f"and the many-task surfaces is significantly above {SHAPE_MIN_RHO} and (smoothness, like for like) the mean "
    "roughness (mean |discrete Laplacian|) of the many fixed tasks' surface over that of as many tasks re-drawn at "
    "every point is significantly below 1, in every stratum; fails if any part is significantly on the other side; "
    "inconclusive otherwise",
    all_of(
        {
            f"{kind} {SPLIT_NAMES[split]}": rule
            for split, suffix in SPLIT_SUFFIX.items()
            for kind, rule in (
                ("shape kept", _landscape("ρ(4 tasks, many tasks)", _shape_kept(suffix), SHAPE_MIN_RHO, above=True)),
                (
                    "smoother",
                    _landscape("roughness ratio fixed / re-drawn", _roughness_ratio(suffix), 1.0, above=False),
                ),
            )
        }
    ),
)
_claim(
    "query-shots-convexity",
    "§4.3.2, Fig. 10",
    "The meta-loss landscape becomes more convex as the number of query shots grows (1 → 2 → 4 → 15).",
    f"{LANDSCAPE_SEEDS}: each run gives the share of grid points with a positive semi-definite finite-difference "
    "Hessian at 15 query shots minus at 1; holds if its mean is significantly above 0 in every stratum; fails if "
    "significantly below 0 in any; inconclusive otherwise",
    _landscape("convex fraction at 15 − at 1 query shot", _convexity_gain, 0.0, above=True),
)
_claim(
    "augmentation-lowers-sharpness",
    "§4.4, Tables 7-8, Fig. 13",
    "Data augmentation lowers the sharpness of MAML's meta-loss, on meta-train and meta-test tasks.",
    "on meta-train and on meta-test tasks, each seed gives its mean paired difference no-aug − aug in SAM "
    "sharpness over the same fixed tasks (same dataset, backbone and seed); per stratum, t over seeds: holds if it is "
    "significantly above 0 on both splits in every stratum; fails if significantly below 0 in any; inconclusive "
    "otherwise",
    all_of(
        {
            SPLIT_NAMES[split]: improves_on(
                metric("sam_sharpness", split),
                where(variant=MAML, augment=("chen",)),
                where(variant=MAML, augment=("none",)),
                better="lower",
                varies=("augment",),
            )
            for split in SPLIT_SUFFIX
        }
    ),
)


def _across_runs(x: str, sign: int, *, augmented_only: bool = False) -> Rule:
    """Pearson r across MAML runs (backbone × augmentation × seed pooled, as Tables 3-4 do, the ResNets' 224-px
    variant of a dataset with its 84-px runs; never across datasets) between ``x`` on meta-train tasks and meta-test
    accuracy; ``augmented_only``: the augmented runs alone (Table 4), backbones and seeds pooled."""
    x_column, y_column = metric(x, "train"), metric("query_accuracy", "test")

    def select(tables: StudyTables) -> pd.DataFrame:
        points = run_points(tables)
        points = points[points["variant"] == MAML] if not points.empty else points
        if augmented_only and not points.empty:
            points = points[points["augment"] != "none"]
        if points.empty or x_column not in points or y_column not in points:
            return pd.DataFrame()
        return pd.DataFrame(
            {
                "stratum": "dataset=" + points["pooled"].astype(str),
                "seed": points["seed"],
                "run": points["run"],
                "x": points[x_column],
                "y": points[y_column],
            }
        )

    params = {"x": x_column, "y": y_column, "sign": sign, "min_runs": 4}
    return Rule("across-runs", params | ({"runs": "augmented only"} if augmented_only else {}), select)


for _x, _what, _paper in (
    ("sam_sharpness", "flatter", "−0.77 MiniImageNet, −0.37 CUB; with aug −0.78 / −0.89"),
    ("query_loss", "lower-loss", "−0.83 / −0.35; with aug −0.95 / −0.95"),
):
    _claim(
        f"{'sharpness' if _x == 'sam_sharpness' else 'loss'}-vs-accuracy",
        "§4.4, Tables 3-4, Fig. 14",
        f"MAML runs with a {_what} meta-training landscape reach a higher meta-test accuracy (Pearson r of "
        f"meta-train {'sharpness' if _x == 'sam_sharpness' else 'loss'} with meta-test accuracy: {_paper}).",
        "one point per MAML run (its mean over the fixed tasks), backbones, augmentation and seeds pooled as the "
        "thesis's Tables 3-4 do, per dataset: holds if Pearson r is negative with a one-sided exact permutation p "
        "significant (Holm over the study's findings) in every dataset; fails if it is significantly positive in "
        "any; inconclusive otherwise (also below 4 runs)",
        _across_runs(_x, -1),
    )


# --- Table 2's findings, sharpness across backbones and splits, the remaining surfaces (issue 22) -------------

AUGMENTED, UNAUGMENTED = ("chen",), ("none",)
RESNETS = ("ResNet10", "ResNet18")


def _thesis_dataset_is(name: str) -> Callable[[pd.Series], pd.Series]:
    """A vectorised test for :func:`where`: the run's dataset is the thesis's ``name``, its 224-px variant (the
    ResNets' runs) included. The dataset key stays a stratum knob, so a pair never crosses it."""
    return lambda datasets: datasets.map(thesis_dataset) == name


CUB, MINIIMAGENET = _thesis_dataset_is("cub"), _thesis_dataset_is("miniimagenet")
PAPER_ONLY = "(paper profile only: the default profile trains neither MiniImageNet, CUB nor the ResNets)"
BACKBONE_POSITION = {backbone: i + 1 for i, backbone in enumerate(BACKBONES)}
"""Fig. 13's x-axis: Conv4, Conv6, ResNet10, ResNet18 at equal steps. "From Conv4 to ResNet18 the sharpness value
decreases overall" is read as a negative Pearson r across runs between this position and the run's sharpness: a
linear trend over the ordered backbones, not a strictly monotone one ("overall")."""
SHARPNESS_GAP_MIN_RATIO = 2.0
"""§4.4, Table 8 (CUB, no augmentation): the ResNets' "striking decrease in sharpness in the meta-training set,
accompanied by a considerable increase in the meta-test set" read as: mean meta-test sharpness at least twice the
mean meta-train sharpness of the same run (scale-free; Table 8 prints 15× and 19× for the ResNets, 1.2× and 1.4×
for the ConvNets, which the thesis calls "relatively consistent")."""
TRANSFER_CONVEX_MIN_FRACTION = 0.8
"""§4.3.2, Fig. 9: transfer learning's "smooth, convex loss landscape" read as: at least 80% of the interior grid
points of the pre-training loss surface have a positive semi-definite finite-difference Hessian
(``metaland.stats.convex_fraction``). The thesis judges by eye; the 20% allow a rim where the loss levels off."""
CONVERGED_MAX_CENTRE_POSITION = 0.1
"""§4.3.1, Figs. 4-5: "all the backbones have converged to a local minimum within the target update numbers" read
as: on the support-loss surface after the target number of inner steps (5 on a meta-train task, 10 on a meta-test
one), the centre (θ*'s own adaptation) lies in the lowest tenth of the surface's range,
(F_k(0, 0) − min F_k) / (max F_k − min F_k) ≤ 0.1: no start in the plane reaches a much lower loss in k steps. A
surface still on a slope (the 0-step tilted plane) puts the centre near 0.5."""


def _accuracy_gain(treatment: dict, baseline: dict, *, varies: tuple[str, ...] = ()) -> Rule:
    return improves_on("query_accuracy", where(**treatment), where(**baseline), varies=varies)


_claim(
    "augmentation-raises-accuracy",
    "Abstract, §4.2.1, §4.2.2, Table 2, Fig. 3",
    "Data augmentation raises the meta-test accuracy of both MAML and transfer learning, across backbones and "
    "datasets (Table 2: higher in 15 of its 16 method × backbone × dataset cells).",
    "for MAML and for transfer learning apart, each seed gives its mean paired difference aug − no aug in meta-test "
    "accuracy over the same fixed tasks (same method, dataset, backbone and seed); per stratum, t over seeds: holds "
    "if it is significantly above 0 for both methods in every stratum (the abstract's 'consistently'; §4.2.1's "
    "'almost all' has no number, and Table 2 prints a fall for MAML Conv4 on MiniImageNet); fails if significantly "
    "below 0 in any; inconclusive otherwise",
    all_of(
        {
            METHOD_NAMES[v]: _accuracy_gain(
                {"variant": v, "augment": AUGMENTED}, {"variant": v, "augment": UNAUGMENTED}, varies=("augment",)
            )
            for v in (MAML, TL)
        }
    ),
)
_claim(
    "maml-beats-transfer-cub-aug",
    "§4.2.1, §4.2.2, Table 2, Fig. 3",
    "On CUB, MAML outperforms transfer learning with every backbone when both are trained with data augmentation "
    "(Table 2: 56.36 vs 46.69, 66.51 vs 53.16, 69.80 vs 60.6, 70.42 vs 63.79).",
    "CUB runs with augmentation (Conv4 / Conv6 at 84 px and the ResNets at 224 px, each its own stratum); each seed "
    "gives its mean paired difference MAML − transfer learning of the same seed in meta-test accuracy over the same "
    "fixed tasks; per stratum, t over seeds: holds if it is significantly above 0 in every stratum; fails if "
    f"significantly below 0 in any; inconclusive otherwise {PAPER_ONLY}. Without augmentation Table 2 prints "
    "transfer learning above MAML for both ResNets, so the no-aug runs are not tested",
    _accuracy_gain(
        {"variant": MAML, "dataset": CUB, "augment": AUGMENTED}, {"variant": TL, "dataset": CUB, "augment": AUGMENTED}
    ),
)
_claim(
    "resnet18-below-resnet10-miniimagenet",
    "§4.2.2, Fig. 3, Table 2",
    "On MiniImageNet, both MAML and transfer learning reach a lower meta-test accuracy with ResNet18 than with "
    "ResNet10 (a pattern the thesis does not see on CUB).",
    "MiniImageNet runs (224 px), MAML and transfer learning apart; each seed gives its mean paired difference "
    "ResNet10 − ResNet18 of the same seed and augmentation in meta-test accuracy over the same fixed tasks; per "
    "stratum (with and without augmentation apart), t over seeds: holds if it is significantly above 0 for both "
    "methods in every stratum; fails if significantly below 0 in any; inconclusive otherwise "
    f"{PAPER_ONLY}. Table 2 prints the opposite for transfer learning with augmentation (55.26 vs 54.76)",
    all_of(
        {
            METHOD_NAMES[v]: _accuracy_gain(
                {"variant": v, "dataset": MINIIMAGENET, "backbone": "ResNet10"},
                {"variant": v, "dataset": MINIIMAGENET, "backbone": "ResNet18"},
                varies=("backbone",),
            )
            for v in (MAML, TL)
        }
    ),
)


def _run_means(tables: StudyTables, scope, columns: list[str]) -> pd.DataFrame:
    """One row per run in ``scope`` (its metadata, indexed by run) with its mean of ``columns`` over the fixed
    tasks; empty if a column was not probed."""
    final = tables.final_tasks
    if final.empty or any(c not in final for c in columns):
        return pd.DataFrame()
    rows = scope(final)
    if rows.empty:
        return pd.DataFrame()
    runs = rows.drop_duplicates("run").set_index("run").drop(columns=columns)
    return runs.join(rows.groupby("run")[columns].mean())


def _depth_points(split: str) -> Callable[[StudyTables], pd.DataFrame]:
    """Across-runs rows: per MAML run on MiniImageNet, its backbone's position (x) and mean sharpness on ``split``
    (y); the 84-px ConvNets and 224-px ResNets pooled per thesis dataset, as Tables 3-4 pool them; every other
    knob (augmentation above all) apart."""
    column = metric("sam_sharpness", split)

    def select(tables: StudyTables) -> pd.DataFrame:
        scope = where(variant=MAML, dataset=MINIIMAGENET, backbone=tuple(BACKBONE_POSITION))
        runs = _run_means(tables, scope, [column])
        if runs.empty:
            return pd.DataFrame()
        pooled = "dataset=" + runs["dataset"].map(thesis_dataset) + " "
        return pd.DataFrame(
            {
                "stratum": pooled + stratum_of(runs, varies=("dataset", "backbone")),
                "seed": runs["seed"],
                "run": runs.index,
                "x": runs["backbone"].map(BACKBONE_POSITION),
                "y": runs[column],
            }
        ).reset_index(drop=True)

    return select


_claim(
    "sharpness-falls-with-depth",
    "§4.4, Table 7, Fig. 13",
    "On MiniImageNet, MAML's sharpness decreases overall from Conv4 to ResNet18 (Table 7, × 10⁻¹: 2.524 → 1.530 on "
    "meta-train tasks and 2.916 → 1.955 on meta-test tasks without augmentation).",
    "MiniImageNet MAML runs (the 84-px ConvNets with the 224-px ResNets, as Tables 3-4 pool them), each split and "
    "augmentation setting apart: one point per run, its backbone's position on Fig. 13's axis (Conv4 1, Conv6 2, "
    "ResNet10 3, ResNet18 4: BACKBONE_POSITION) against its mean SAM sharpness over the fixed tasks; holds if "
    "Pearson r is negative with a significant one-sided exact permutation p in every split × augmentation stratum; "
    "fails if significantly positive in any; inconclusive otherwise (also below 4 runs or with one backbone) "
    f"{PAPER_ONLY}. On CUB, Table 8's meta-test sharpness rises with depth, so CUB is not tested",
    all_of(
        {
            SPLIT_NAMES[split]: Rule(
                "across-runs",
                {
                    "x": "backbone position (Conv4 1 … ResNet18 4)",
                    "y": metric("sam_sharpness", split),
                    "sign": -1,
                    "min_runs": 4,
                },
                _depth_points(split),
            )
            for split in SPLIT_SUFFIX
        }
    ),
)


def _sharpness_ratios(tables: StudyTables, scope) -> pd.DataFrame:
    """Per run in ``scope``: mean meta-test sharpness / mean meta-train sharpness (``ratio``), finite ones only."""
    test, train = metric("sam_sharpness", "test"), metric("sam_sharpness", "train")
    runs = _run_means(tables, scope, [test, train])
    if runs.empty:
        return runs
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = runs[test] / runs[train].where(runs[train] > 0)
    runs = runs.assign(ratio=ratio)
    return runs[np.isfinite(runs["ratio"].to_numpy(float))]


CUB_RESNETS = where(variant=MAML, dataset=CUB, backbone=RESNETS)


def _gap_rows(tables: StudyTables) -> pd.DataFrame:
    runs = _sharpness_ratios(tables, CUB_RESNETS)
    runs = runs[runs["augment"].isin(UNAUGMENTED)] if not runs.empty else runs
    if runs.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {"stratum": stratum_of(runs), "seed": runs["seed"], "run": runs.index, "unit": "run", "value": runs["ratio"]}
    ).reset_index(drop=True)


def _narrowing_rows(tables: StudyTables) -> pd.DataFrame:
    runs = _sharpness_ratios(tables, CUB_RESNETS)
    runs = runs[runs["augment"].isin(UNAUGMENTED + AUGMENTED)] if not runs.empty else runs
    if runs.empty:
        return pd.DataFrame()
    unaugmented = runs["augment"].isin(UNAUGMENTED)
    return pd.DataFrame(
        {
            "stratum": stratum_of(runs, varies=("augment",)),
            "seed": runs["seed"],
            "run": runs.index,
            "arm": np.where(unaugmented, "no aug", "aug"),
            "weight": np.where(unaugmented, 1.0, -1.0),
            "arms": 2,
            "unit": "run",
            "value": np.log(runs["ratio"].to_numpy(float)),
        }
    ).reset_index(drop=True)


_claim(
    "cub-resnet-sharpness-gap",
    "§4.4, Table 8",
    "On CUB without data augmentation, the ResNets' sharpness is far lower on meta-train tasks than on meta-test "
    "tasks (Table 8, × 10⁻¹: 0.279 vs 4.189 for ResNet10, 0.299 vs 5.798 for ResNet18).",
    "CUB MAML runs of ResNet10 and ResNet18 without augmentation; each run gives its mean meta-test SAM sharpness "
    f"over its mean meta-train SAM sharpness; per stratum, t over seeds: holds if the mean ratio is significantly "
    f"above {SHARPNESS_GAP_MIN_RATIO:g} (SHARPNESS_GAP_MIN_RATIO: 'striking' and 'considerable', scale-free) in "
    f"every stratum; fails if significantly below it in any; inconclusive otherwise {PAPER_ONLY}",
    Rule(
        "level",
        {
            "name": f"meta-test / meta-train sharpness per run ≥ {SHARPNESS_GAP_MIN_RATIO:g}",
            "threshold": SHARPNESS_GAP_MIN_RATIO,
            "direction": 1,
        },
        _gap_rows,
    ),
)
_claim(
    "augmentation-narrows-cub-resnet-gap",
    "§4.4, Table 8",
    "On CUB, data augmentation brings the ResNets' meta-train and meta-test sharpness closer together (Table 8, "
    "meta-test / meta-train: 15.0 → 3.9 for ResNet10, 19.4 → 4.1 for ResNet18).",
    "CUB MAML runs of ResNet10 and ResNet18; each run gives log(mean meta-test / mean meta-train SAM sharpness); "
    "each seed its paired difference no aug − aug (same backbone and seed); per stratum, t over seeds: holds if it "
    "is significantly above 0 in every stratum; fails if significantly below 0 in any; inconclusive otherwise "
    f"{PAPER_ONLY}",
    Rule(
        "contrast",
        {
            "name": "log(meta-test / meta-train sharpness), no aug − aug of the same seed",
            "arms": {"no aug": 1.0, "aug": -1.0},
        },
        _narrowing_rows,
    ),
)


def _pretraining_convexity(grids: pd.DataFrame, run: str) -> float | None:
    surface = surface_of(grids, run, "pretraining")
    return convex_fraction(surface[2]) if surface is not None else None


def _centre_position(name: str) -> Callable[[pd.DataFrame, str], float | None]:
    """(F(centre) − min F) / (max F − min F) of surface ``name``: 0 when the centre is the surface's minimum."""

    def measure(grids: pd.DataFrame, run: str) -> float | None:
        surface = surface_of(grids, run, name)
        if surface is None or np.ptp(surface[2]) == 0:
            return None
        z = surface[2]
        return float((z[len(z) // 2, len(z) // 2] - z.min()) / np.ptp(z))

    return measure


_claim(
    "transfer-landscape-convex",
    "§4.3.2, Fig. 9",
    "With transfer learning's supervised pre-training, the training-loss landscape around the best weights is "
    "smooth and convex.",
    f"transfer-learning runs, {LANDSCAPE_SEEDS}: each run gives the share of interior grid points of its "
    "pre-training loss surface (fixed meta-train images) with a positive semi-definite finite-difference Hessian; "
    f"holds if the mean is significantly above {TRANSFER_CONVEX_MIN_FRACTION:g} (TRANSFER_CONVEX_MIN_FRACTION: "
    "'convex' judged by eye) in every stratum; fails if significantly below it in any; inconclusive otherwise. "
    "'Smooth' is not tested: roughness has no scale-free threshold, and the thesis allows only a qualitative "
    "comparison with MAML's surfaces. The default profile has one transfer seed per stratum (inconclusive)",
    _landscape(
        "convex fraction of the pre-training surface",
        _pretraining_convexity,
        TRANSFER_CONVEX_MIN_FRACTION,
        above=True,
    ),
)
_claim(
    "inner-loop-converges",
    "§4.3.1, Figs. 4-5",
    "Every backbone's inner loop converges to a local minimum within the target number of updates: 5 on a "
    "meta-train task, 10 on a meta-test task.",
    f"MAML landscape runs, {LANDSCAPE_SEEDS}: each run gives the position of the centre (θ*'s own adaptation) in "
    "the range of the support-loss surface after 5 steps on its meta-train task and after 10 on its meta-test "
    f"task, (F(0, 0) − min F) / (max F − min F); holds if the mean is significantly below "
    f"{CONVERGED_MAX_CENTRE_POSITION:g} (CONVERGED_MAX_CENTRE_POSITION: θ* adapts to the bottom of its basin) on "
    "both splits in every stratum; fails if significantly above it in any; inconclusive otherwise. Only the seed-5 "
    "runs carry these surfaces in both profiles (the thesis draws seed 5), so the verdict is inconclusive until "
    "more seeds are drawn",
    all_of(
        {
            "meta-train, 5 steps": _landscape(
                "centre's position in the 5-step surface's range",
                _centre_position("inner_5/train"),
                CONVERGED_MAX_CENTRE_POSITION,
                above=False,
            ),
            "meta-test, 10 steps": _landscape(
                "centre's position in the 10-step surface's range",
                _centre_position("inner_10"),
                CONVERGED_MAX_CENTRE_POSITION,
                above=False,
            ),
        }
    ),
)
for _x, _what, _paper in (
    ("sam_sharpness", "flatter", "−0.78 MiniImageNet, −0.89 CUB"),
    ("query_loss", "lower-loss", "−0.95 MiniImageNet, −0.95 CUB"),
):
    _pooled = f"{NAME}-{'sharpness' if _x == 'sam_sharpness' else 'loss'}-vs-accuracy"
    _claim(
        f"{'sharpness' if _x == 'sam_sharpness' else 'loss'}-vs-accuracy-aug",
        "§4.4, Table 4, §5",
        f"Among MAML runs trained with data augmentation, those with a {_what} meta-training landscape reach a higher "
        f"meta-test accuracy (Table 4, Pearson r of meta-train {'sharpness' if _x == 'sam_sharpness' else 'loss'} "
        f"with meta-test accuracy: {_paper}); the thesis concludes from this augmented-only version.",
        f"as {_pooled} (Table 3's pooled version, kept beside it), on the augmented runs alone: one point per MAML "
        "run with augmentation (its mean over the fixed tasks), backbones and seeds pooled, per dataset: holds if "
        "Pearson r is negative with a one-sided exact permutation p significant (Holm over the study's findings) in "
        "every dataset; fails if it is significantly positive in any; inconclusive otherwise (also below 4 runs)",
        _across_runs(_x, -1, augmented_only=True),
    )


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

BACKBONE_COLORS = {"Conv4": "#1f77b4", "Conv6": "#ff7f0e", "ResNet10": "#2ca02c", "ResNet18": "#d62728"}
METHOD_MARKERS = {MAML: "o", TL: "s"}


def _empty(path: Path, title: str, what: str) -> None:
    fig, axes = grid(1, width=5, height=3.5)
    no_data(axes[0], title, what)
    save(fig, path)


def of_dataset(tables: StudyTables, dataset: str) -> StudyTables:
    """The study tables of one dataset's runs."""
    frames = {
        name: frame[frame["dataset"] == dataset] if "dataset" in frame else frame
        for name in TABLES
        for frame in [getattr(tables, name)]
    }
    return StudyTables(tables.study, **frames)


def _per_dataset(tables: StudyTables, path: Path, columns: int, draw, *, title: str, what: str) -> None:
    """One row of ``columns`` panels per dataset (datasets are never pooled): ``draw(axes, tables, dataset)``."""
    final = tables.final_tasks
    datasets = sorted(set(final["dataset"])) if not final.empty else []
    if not datasets:
        _empty(path, title, what)
        return
    fig, axes = grid(columns * len(datasets), columns=columns, width=5.2, height=4.0)
    for i, dataset in enumerate(datasets):
        draw(axes[i * columns : (i + 1) * columns], of_dataset(tables, dataset), dataset)
    suptitle(fig, title)
    save(fig, path)


def _draw_accuracy(axes, tables: StudyTables, dataset: str) -> None:
    """Fig. 3 (loss vs accuracy, one point per run) and Table 2 as bars beside the thesis's, for one dataset."""
    points = run_points(tables)
    for row in points.itertuples():
        filled = row.augment != "none"
        color = BACKBONE_COLORS.get(row.backbone, "#555555")
        axes[0].scatter(
            row.query_loss,
            row.query_accuracy,
            marker=METHOD_MARKERS.get(row.variant, "^"),
            facecolors=color if filled else "none",
            edgecolors=color,
            s=42,
        )
    for backbone in _backbone_order(points):
        axes[0].scatter([], [], color=BACKBONE_COLORS.get(backbone, "#555555"), label=backbone)
    for variant in sorted(points["variant"].unique()):
        axes[0].scatter([], [], marker=METHOD_MARKERS.get(variant, "^"), color="grey", label=METHOD_NAMES[variant])
    axes[0].scatter([], [], facecolors="none", edgecolors="grey", label="hollow: no aug")
    axes[0].legend(fontsize=7)
    axes[0].set_xlabel("mean meta-test query loss")
    axes[0].set_ylabel("mean meta-test accuracy")
    axes[0].set_title(f"(a) {dataset}: Fig. 3, loss vs accuracy, one point per run")

    table = accuracy_table(tables, AggregateConfig())
    groups = list(dict.fromkeys(zip(table["method"], table["backbone"], strict=True)))
    position = {group: i for i, group in enumerate(groups)}
    thesis = thesis_dataset(dataset) if thesis_column(dataset) is not None else None
    for offset, augment in ((-0.2, "none"), (0.2, "chen")):
        ours = table[table["augment"] == augment]
        if ours.empty:
            continue
        x = np.array([position[g] for g in zip(ours["method"], ours["backbone"], strict=True)]) + offset
        axes[1].bar(x, ours["accuracy"], width=0.38, label=AUGMENT_NAMES[augment], alpha=0.85)
        axes[1].errorbar(
            x,
            ours["accuracy"],
            yerr=[(ours["accuracy"] - ours["ci_low"]).fillna(0), (ours["ci_high"] - ours["accuracy"]).fillna(0)],
            fmt="none",
            color="black",
            capsize=3,
        )
        if thesis:
            axes[1].scatter(x, ours[f"paper_{thesis}"], marker="_", s=160, color="black")
    labels = [f"{backbone}\n{'TL' if method == TL else 'MAML'}" for method, backbone in groups]
    axes[1].set_xticks(range(len(groups)), labels, fontsize=7)
    if thesis:
        axes[1].scatter([], [], marker="_", s=160, color="black", label=f"thesis ({thesis})")
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("meta-test accuracy (mean, 95% CI over seeds)")
    axes[1].set_title(
        f"(b) {dataset}: Table 2, ours (bars) and the thesis's (dashes)"
        if thesis
        else f"(b) {dataset}: Table 2, ours (the thesis has no {dataset} numbers)"
    )
    axes[1].legend(fontsize=7)


def fig_accuracy(tables: StudyTables, path: Path) -> None:
    """Fig. 3 and Table 2, one row per dataset."""
    _per_dataset(
        tables,
        path,
        2,
        _draw_accuracy,
        title="Accuracy of MAML and transfer learning, by backbone and augmentation (seed 001 Fig. 3, Table 2)",
        what="probed runs",
    )


def _surface_3d(ax, surface, *, title: str, zlim: tuple[float, float] | None = None) -> None:
    a, b, z = surface
    aa, bb = np.meshgrid(a, b, indexing="ij")
    low, high = zlim if zlim else (z.min(), z.max())
    ax.plot_surface(aa, bb, np.clip(z, low, high), cmap=cm.coolwarm, vmin=low, vmax=high, linewidth=0)
    ax.set_zlim(low, high)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("a (δ)", fontsize=7)
    ax.set_ylabel("b (η)", fontsize=7)
    ax.tick_params(labelsize=6)


def _surface_figure(
    tables: StudyTables,
    path: Path,
    columns: list[tuple[str, str]],
    *,
    title: str,
    shared_z: bool = False,
    methods: tuple[str, ...] = (MAML,),
) -> None:
    """One row per landscape run, one 3-D panel per (surface name, column title); ``shared_z`` gives
    every panel of a row the z-range of its first surface (seed 001 Figs. 6-7's fixed scale)."""
    grids = final_grids(tables)
    runs = [(r, m) for r, m in landscape_runs(grids) if m["variant"] in methods]
    runs = [(r, m) for r, m in runs if any(surface_of(grids, r, name) is not None for name, _ in columns)]
    if not runs:
        _empty(path, title, "surfaces")
        return
    fig = plt.figure(figsize=(max(3.4 * len(columns), 5.5), 3.4 * len(runs)))  # a one-panel figure fits its title
    for i, (run, meta) in enumerate(runs):
        surfaces = [surface_of(grids, run, name) for name, _ in columns]
        first = next((s for s in surfaces if s is not None), None)
        zlim = (first[2].min(), first[2].max()) if shared_z and first is not None else None
        for j, (surface, (_, column)) in enumerate(zip(surfaces, columns, strict=True)):
            ax = fig.add_subplot(len(runs), len(columns), i * len(columns) + j + 1, projection="3d")
            if surface is None:
                ax.set_axis_off()
                ax.set_title(f"{column}: not probed", fontsize=8)
                continue
            _surface_3d(ax, surface, title=f"{_run_title(meta)}\n{column}", zlim=zlim)
    suptitle(fig, title)
    save(fig, path)


def fig_inner_loop(tables: StudyTables, path: Path) -> None:
    _surface_figure(
        tables,
        path,
        [
            ("inner_0/train", "meta-train task, 0 steps"),
            ("inner_5/train", "meta-train task, 5 steps"),
            ("inner_0", "meta-test task, 0 steps"),
            ("inner_10", "meta-test task, 10 steps"),
        ],
        title="Inner-loop landscapes: support loss after k steps from θ* + aδ + bη (seed 001 Figs. 4-5)",
    )


def fig_decomposition(tables: StudyTables, path: Path) -> None:
    _surface_figure(
        tables,
        path,
        [("inner_0", "perturb all"), ("head", "head only"), ("features", "feature layers only")],
        title="Decomposition at 0 steps on a meta-test task, one z-range per row (seed 001 Figs. 6-7)",
        shared_z=True,
    )


SECOND_TASK = "_task2"
"""Suffix of the surfaces measured on the second fixed task (``first_task: 1``): seed 001 Figs. 15-18."""


def fig_inner_loop_second_task(tables: StudyTables, path: Path) -> None:
    _surface_figure(
        tables,
        path,
        [
            (f"inner_0{SECOND_TASK}/train", "second meta-train task, 0 steps"),
            (f"inner_5{SECOND_TASK}/train", "second meta-train task, 5 steps"),
            (f"inner_0{SECOND_TASK}", "second meta-test task, 0 steps"),
            (f"inner_10{SECOND_TASK}", "second meta-test task, 10 steps"),
        ],
        title="Inner-loop landscapes on an additional task: support loss after k steps (seed 001 Figs. 15-16)",
    )


def fig_decomposition_second_task(tables: StudyTables, path: Path) -> None:
    _surface_figure(
        tables,
        path,
        [
            (f"inner_0{SECOND_TASK}", "perturb all"),
            (f"head{SECOND_TASK}", "head only"),
            (f"features{SECOND_TASK}", "feature layers only"),
        ],
        title="Decomposition at 0 steps on an additional meta-test task, one z-range per row (seed 001 Figs. 17-18)",
        shared_z=True,
    )


def fig_meta_loss(tables: StudyTables, path: Path) -> None:
    _surface_figure(
        tables,
        path,
        [
            ("meta_4/train", "meta-train, 4 tasks re-drawn per point"),
            ("meta_many/train", "meta-train, many fixed tasks"),
            ("meta_4", "meta-test, 4 tasks re-drawn per point"),
            ("meta_many", "meta-test, many fixed tasks"),
        ],
        title="Meta-loss landscapes: query loss after adaptation from each point (seed 001 Fig. 8)",
    )


def fig_transfer_landscape(tables: StudyTables, path: Path) -> None:
    _surface_figure(
        tables,
        path,
        [("pretraining", "pre-training loss on fixed meta-train images")],
        title="Transfer learning's training-loss landscape around the best pre-trained θ (seed 001 Fig. 9)",
        methods=(TL,),
    )


def fig_query_shots(tables: StudyTables, path: Path) -> None:
    """Fig. 10: meta-loss contours every 0.2 for 1, 2, 4 and all (15) query shots."""
    grids = final_grids(tables)
    runs = [(r, m) for r, m in landscape_runs(grids) if surface_of(grids, r, SHOT_SURFACES[1]) is not None]
    if not runs:
        _empty(path, "Fig. 10: query-shot sweep", "query-shot surfaces")
        return
    shots = [*SHOT_SURFACES.items(), (15, "meta_many")]
    fig, axes = grid(len(shots) * len(runs), columns=len(shots), width=3.4, height=3.0)
    for i, (run, meta) in enumerate(runs):
        for j, (count, name) in enumerate(shots):
            ax = axes[i * len(shots) + j]
            surface = surface_of(grids, run, name)
            if surface is None:
                no_data(ax, f"{count} query shots", "surface")
                continue
            a, b, z = surface
            levels = np.arange(math.floor(z.min() / 0.2) * 0.2, z.max() + 0.2, 0.2)
            lines = ax.contour(a, b, z.T, levels=levels, cmap="summer")
            ax.clabel(lines, fontsize=6, fmt="%.1f")
            ax.plot(0, 0, marker="+", color="red")
            ax.set_title(f"{_run_title(meta)}\n{count} query shot{'s' if count > 1 else ''} per class", fontsize=8)
            ax.set_xlabel("a (δ)")
            ax.set_ylabel("b (η)")
            ax.grid(False)
    suptitle(fig, "More query shots, more convex meta-loss: contours every 0.2 (seed 001 Fig. 10)")
    save(fig, path)


def fig_meta_loss_regions(tables: StudyTables, path: Path) -> None:
    """Figs. 11-12: low-loss regions of the many-task meta-loss, no aug vs aug, meta-train and meta-test; one row
    per dataset and backbone (Fig. 11 is MiniImageNet's, Fig. 12 CUB's: datasets are never pooled). Filled: the
    regions within 0.2 and 0.4 of the panel's minimum; dashed: the thesis's own absolute levels for its datasets."""
    grids = final_grids(tables)
    runs = [(r, m) for r, m in landscape_runs(grids) if m["variant"] == MAML]
    if not runs:
        _empty(path, "Figs. 11-12: low-loss regions", "meta-loss surfaces")
        return
    rows = [
        (dataset, backbone)
        for dataset in sorted({m["dataset"] for _, m in runs})
        for backbone in _backbone_order(pd.DataFrame([m for _, m in runs if m["dataset"] == dataset]))
    ]
    columns = [(split, augment) for split in ("train", "test") for augment in ("none", "chen")]
    fig, axes = grid(len(columns) * len(rows), columns=len(columns), width=3.4, height=3.2)
    colors = {"train": ("#f5d142", "#66bb6a"), "test": ("#e53935", "#42a5f5")}
    for i, (dataset, backbone) in enumerate(rows):
        for j, (split, augment) in enumerate(columns):
            match = [
                (r, m) for r, m in runs if (m["dataset"], m["backbone"], m["augment"]) == (dataset, backbone, augment)
            ]
            surface = surface_of(grids, match[0][0], f"meta_many{SPLIT_SUFFIX[split]}") if match else None
            title = f"{dataset}: {backbone}, {SPLIT_NAMES[split]}, {AUGMENT_NAMES[augment]}"
            if surface is None:
                no_data(axes[i * len(columns) + j], title, "surface")
                continue
            _draw_low_loss_regions(
                axes[i * len(columns) + j], surface, colors[split], thesis_levels(dataset, split), title=title
            )
    key = [
        Patch(color=colors[split][k], label=f"{SPLIT_NAMES[split]}: {band} above the panel's minimum")
        for split in ("train", "test")
        for k, band in enumerate((f"≤ {REGION_DEPTHS[0]:g}", f"{REGION_DEPTHS[0]:g} to {REGION_DEPTHS[1]:g}"))
    ]
    key.append(Line2D([], [], color="black", linestyle="--", label="the thesis's absolute levels (its datasets only)"))
    fig.legend(handles=key, loc="lower center", ncol=3)
    suptitle(
        fig,
        "Where the meta-loss (many tasks) is low: aug vs no aug, one row per dataset and backbone (seed 001 "
        "Figs. 11-12). Filled: within 0.2 / 0.4 of each panel's minimum; dashed: the thesis's absolute levels",
    )
    save(fig, path)


def thesis_levels(dataset: str, split: str) -> tuple[float, ...]:
    """The thesis's absolute Fig. 11-12 thresholds for ``dataset``'s ``split`` panels; none for other datasets."""
    return THESIS_REGION_LEVELS.get(thesis_dataset(dataset), {}).get(split, ())


def _draw_low_loss_regions(ax, surface, colors: tuple[str, str], levels: tuple[float, ...], *, title: str) -> None:
    """One Fig. 11-12 panel: the bands within ``REGION_DEPTHS`` of the minimum filled, grey contours, and the
    thesis's absolute ``levels`` dashed where the surface reaches them (the title says where it does not)."""
    a, b, z = surface
    low, high = float(z.min()), float(z.max())
    bounds = [low - 1e-9, low + REGION_DEPTHS[0], low + REGION_DEPTHS[1]]
    ax.contourf(a, b, z.T, levels=bounds, colors=colors)
    ax.contour(a, b, z.T, levels=10, colors="grey", linewidths=0.4)
    inside = [level for level in levels if low < level < high]
    if inside:
        lines = ax.contour(a, b, z.T, levels=inside, colors="black", linestyles="dashed", linewidths=0.9)
        ax.clabel(lines, fontsize=6, fmt="%.2f")
    below, above = [f"{v:g}" for v in levels if v <= low], [f"{v:g}" for v in levels if v >= high]
    outside = "".join(
        f"; thesis {', '.join(values)} {side} every point"
        for values, side in ((below, "below"), (above, "above"))
        if values
    )
    ax.set_title(f"{title}\nmin {low:.2f}, max {high:.2f}{outside}", fontsize=8)
    ax.set_xlabel("a (δ)")
    ax.set_ylabel("b (η)")
    ax.grid(False)


def _draw_sharpness(axes, tables: StudyTables, dataset: str) -> None:
    """Fig. 13 for one dataset: sharpness by backbone, {aug, no aug} × {meta-train, meta-test}, ours beside
    the thesis's."""
    table = sharpness_table(tables, AggregateConfig())
    if table.empty:
        no_data(axes[0], f"(a) {dataset}", "sharpness probes")
        table = pd.DataFrame(columns=["augment", "split", "backbone"])
    order = _backbone_order(table)
    column = thesis_column(dataset) or 0
    styles = {("none", "train"): ("#1f77b4", "-"), ("chen", "train"): ("#1f77b4", "--")}
    styles |= {("none", "test"): ("#d62728", "-"), ("chen", "test"): ("#d62728", "--")}
    for (augment, split), (color, line) in styles.items():
        rows = table[(table["augment"] == augment) & (table["split"] == split)].set_index("backbone")
        rows = rows.reindex([b for b in order if b in rows.index])
        if rows.empty:
            continue
        name = f"{SPLIT_NAMES[split]}, {AUGMENT_NAMES[augment]}"
        x = [order.index(b) for b in rows.index]
        axes[0].errorbar(
            x,
            rows["sharpness"],
            yerr=[(rows["sharpness"] - rows["ci_low"]).fillna(0), (rows["ci_high"] - rows["sharpness"]).fillna(0)],
            color=color,
            linestyle=line,
            marker="o",
            capsize=3,
            label=name,
        )
        paper = [PAPER_SHARPNESS[(b, augment, split)][column] for b in BACKBONES]
        axes[1].plot(range(len(BACKBONES)), paper, color=color, linestyle=line, marker="o", label=name)
    axes[0].set_xticks(range(len(order)), order)
    axes[0].set_ylabel("SAM sharpness (ρ = 0.05), 95% CI over seeds")
    axes[0].set_title(f"(a) ours, {dataset}")
    axes[0].legend(fontsize=7)
    axes[1].set_xticks(range(len(BACKBONES)), BACKBONES)
    source = "MiniImageNet (Table 7 / 10)" if column == 0 else "CUB (Table 8 / 10)"
    own = "" if thesis_column(dataset) is not None else f"; no {dataset} numbers, MiniImageNet's shown"
    axes[1].set_title(f"(b) thesis, {source}{own}")
    axes[1].legend(fontsize=7)


def fig_sharpness(tables: StudyTables, path: Path) -> None:
    """Fig. 13, one row per dataset."""
    _per_dataset(
        tables,
        path,
        2,
        _draw_sharpness,
        title="Sharpness of MAML's meta-loss by backbone, augmentation and split (seed 001 Fig. 13)",
        what="sharpness probes",
    )


def _draw_sharpness_loss_accuracy(axes, tables: StudyTables, dataset: str) -> None:
    points = run_points(tables)
    points = points[points["variant"] == MAML] if not points.empty else points
    for ax, split in zip(axes, ("train", "test"), strict=True):
        x, y, c = (metric(m, split) for m in ("query_loss", "sam_sharpness", "query_accuracy"))
        if points.empty or x not in points or y not in points:
            no_data(ax, f"{dataset}, {SPLIT_NAMES[split]}", "sharpness probes on this split")
            continue
        dots = ax.scatter(points[x], points[y], c=points[c], cmap="viridis", s=45, edgecolors="black")
        ax.figure.colorbar(dots, ax=ax, label=f"{SPLIT_NAMES[split]} accuracy")
        ax.set_xlabel(f"{SPLIT_NAMES[split]} query loss")
        ax.set_ylabel(f"{SPLIT_NAMES[split]} sharpness")
        ax.set_title(f"{dataset}, {SPLIT_NAMES[split]} tasks, one point per run")


def fig_sharpness_loss_accuracy(tables: StudyTables, path: Path) -> None:
    """Fig. 14: per run, loss (x) against sharpness (y) coloured by accuracy, meta-train and meta-test, one row
    per dataset."""
    _per_dataset(
        tables,
        path,
        2,
        _draw_sharpness_loss_accuracy,
        title="Lower loss and lower sharpness go with higher accuracy? (seed 001 Fig. 14)",
        what="sharpness probes",
    )


def _draw_overfitting(axes, tables: StudyTables, dataset: str) -> None:
    """Figs. 19-20 for one dataset: MAML's accuracy over meta-training, no aug and aug apart; per backbone, the
    validation tasks' accuracy at each checkpoint (solid: mean and 95% CI over seeds) and the meta-training
    batches' (dashed), so a gap that opens with training shows over-fitting and a flat validation curve shows
    that more steps would not change it."""
    validation, train = (_method(MAML)(frame) for frame in (tables.validation, tables.train_log))
    for ax, augment in zip(axes, ("none", "chen"), strict=True):
        title = f"{dataset}, {AUGMENT_NAMES[augment]}: MAML's accuracy over meta-training"
        shown = validation[validation["augment"] == augment] if not validation.empty else validation
        if shown.empty:
            no_data(ax, title, "validation curves")
            continue
        varying = [k for k in varying_knobs(shown) if k != "backbone"]  # e.g. two inner lrs of one backbone
        for _, group in shown.groupby(stratum_of(shown), sort=True):
            backbone = group["backbone"].iloc[0]
            color = BACKBONE_COLORS.get(backbone, "#555555")
            name = " ".join([backbone, *(KNOB_LABELS[k].format(group[k].iloc[0]) for k in varying)])
            curve(ax, group, "query_accuracy", color=color, name=f"{name}: validation ({group['run'].nunique()} runs)")
            batches = train[train["run"].isin(set(group["run"]))] if not train.empty else train
            if not batches.empty and "query_accuracy" in batches:  # the mean over seeds only: no band, it is context
                mean = batches.groupby("step", sort=True)["query_accuracy"].mean()
                ax.plot(
                    mean.index, mean.to_numpy(), color=color, linestyle="--", linewidth=0.9, label=f"{name}: batches"
                )
        ax.set_ylim(0, 1)
        ax.set_xlabel("meta-training step")
        ax.set_ylabel("query accuracy after adaptation")
        ax.set_title(title)
        ax.legend(fontsize=7)


def fig_overfitting(tables: StudyTables, path: Path) -> None:
    """Figs. 19-20 (App. F, "Overfitting": MiniImageNet and CUB accuracy), one row per dataset."""
    _per_dataset(
        tables,
        path,
        2,
        _draw_overfitting,
        title="Accuracy over meta-training: validation tasks (solid) and meta-training batches (dashed) "
        "(seed 001 Figs. 19-20)",
        what="validation curves",
    )


STUDIES.register(
    NAME,
    StudySpec(
        name=NAME,
        seed=SEED,
        title="Ding 2023 — MAML's loss landscape: backbones, augmentation, sharpness",
        figures=(
            Figure("accuracy", "Fig. 3 (loss vs accuracy per run) and Table 2 beside the thesis's.", fig_accuracy),
            Figure(
                "inner_loop", "Figs. 4-5: support loss after 0 / 5 / 10 inner steps from each point.", fig_inner_loop
            ),
            Figure("decomposition", "Figs. 6-7: perturb all / head only / features only.", fig_decomposition),
            Figure("meta_loss", "Fig. 8: meta-loss over 4 re-drawn vs many fixed tasks.", fig_meta_loss),
            Figure(
                "transfer_landscape", "Fig. 9: transfer learning's training-loss landscape.", fig_transfer_landscape
            ),
            Figure("query_shots", "Fig. 10: meta-loss contours for 1, 2, 4, 15 query shots.", fig_query_shots),
            Figure("meta_loss_regions", "Figs. 11-12: low-loss regions, aug vs no aug.", fig_meta_loss_regions),
            Figure("sharpness", "Fig. 13: sharpness by backbone, augmentation and split.", fig_sharpness),
            Figure(
                "sharpness_loss_accuracy",
                "Fig. 14: loss vs sharpness coloured by accuracy.",
                fig_sharpness_loss_accuracy,
            ),
            Figure(
                "inner_loop_task2",
                "Figs. 15-16: the inner-loop landscapes on an additional random task.",
                fig_inner_loop_second_task,
            ),
            Figure(
                "decomposition_task2",
                "Figs. 17-18: the decomposition on an additional random task.",
                fig_decomposition_second_task,
            ),
            Figure("overfitting", "Figs. 19-20: accuracy over meta-training, validation vs batches.", fig_overfitting),
        ),
        tables=(
            Table("accuracy", "Table 2: accuracy ± 95% CI, ours beside the thesis's", accuracy_table),
            Table("sharpness", "Tables 7-8: SAM sharpness (unscaled), ours beside the thesis's", sharpness_table),
            Table("correlations", "Tables 3-4: Pearson r of sharpness / loss with accuracy", correlation_table),
            Table("landscapes", "Shape of every probed surface", landscape_table),
        ),
    ),
)
