"""Study ``metaopt`` — seed 003, "Decoupling adaptation from modeling with meta-optimizers"
(Arnold, Iqbal & Sha 2019; anonymous submission text).

The paper argues that shallow models cannot be meta-learned by MAML (a convex task loss has one
minimiser per task, §3.2): logistic regression (LR) on the synthetic boundary tasks of §A.1.1 stays
at chance, while LinNet — the same function class, over-parameterised by linear hidden layers —
reaches 92%. Learned inner updates (§4: Meta-SGD, Meta-Curvature, and its own KLin / KFC) give the
shallow model back its adaptability. Deeper CNNs adapt better, meta-optimizers degrade more slowly
as depth shrinks (Fig. 3, Table A1), and in a CNN the last conv layer carries the adaptation
(§3.2, Fig. 2). Every one of these is a claim under test here, not an assumed outcome.

Run keys name their parts: ``metaopt-<algorithm>-<model>-<dataset>-...`` with model ``lr``,
``linnet`` or ``cnn<L>`` (L conv layers); tables, figures and claims read the model from the key
(``tests/test_config.py`` checks that every key matches its run's model).
See docs/studies/metaopt.md for the choices the seed leaves open.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from metaland.claims import (
    Claim,
    Rule,
    Select,
    all_of,
    column_contrast,
    contrast,
    improves_on,
    level,
    register,
    where,
    within,
)
from metaland.config import AggregateConfig
from metaland.data.registry import registered_name
from metaland.plots import curve, grid, no_data, save, suptitle
from metaland.results import StudyTables
from metaland.stats import seed_level, seed_summary
from metaland.studies import STUDIES, Figure, StudySpec, Table

NAME = "metaopt"
SEED = "003"
CONFIDENCE = 0.95
SYNTHETIC = "synthetic-binary"
LINEAR_METHODS = {
    ("maml", "lr"): "LR",
    ("maml", "linnet"): "LinNet",
    ("klin", "lr"): "LR w/ KLin",
    ("kfc", "lr"): "LR w/ KFC",
}
OPTIMIZER_NAMES = {"maml": "MAML", "metasgd": "MSGD", "metacurvature": "MC", "klin": "KLin", "kfc": "KFC"}
COLORS = {"maml": "#1f77b4", "metasgd": "#2ca02c", "metacurvature": "#9467bd", "klin": "#ff7f0e", "kfc": "#d62728"}
PAPER_LINEAR = {
    ("synthetic", "LR"): 0.50,
    ("synthetic", "LinNet"): 0.92,
    ("omniglot", "LR"): 0.45,
    ("omniglot", "LinNet"): 0.70,
}
"""Seed 003 §3.2 (Table 1's body is missing from the seed): synthetic LR "fails to perform better than
chance" (50%), LinNet 92% (1 step); Omniglot 5-way 1-shot, 2 steps: LR 45%, LinNet 70%. KLin / KFC
values are not stated."""
PAPER_CNN = {
    ("maml", 1): 0.2920,
    ("kfc", 1): 0.6645,
    ("maml", 2): 0.6094,
    ("metasgd", 2): 0.6925,
    ("metacurvature", 2): 0.8570,
    ("kfc", 2): 0.9113,
    ("maml", 3): 0.9169,
    ("kfc", 3): 0.9657,
    ("maml", 4): 0.9756,
    ("kfc", 4): 0.9849,
}
"""Seed 003 Table 2 (SCNN = 2 layers) and Table A1, Omniglot 10-way 5-shot, 4 steps, 64 filters."""
PAPER_CNN_BY_DATASET = {
    "omniglot": PAPER_CNN,
    "cifar-fs": {
        ("maml", 1): 0.2486,
        ("kfc", 1): 0.4202,
        ("maml", 2): 0.3844,
        ("metasgd", 2): 0.4596,
        ("metacurvature", 2): 0.5289,
        ("kfc", 2): 0.5294,
        ("maml", 3): 0.5091,
        ("kfc", 3): 0.5307,
        ("maml", 4): 0.5503,
        ("kfc", 4): 0.5597,
    },
    "miniimagenet": {
        ("maml", 2): 0.1855,
        ("metasgd", 2): 0.2659,
        ("metacurvature", 2): 0.2974,
        ("kfc", 2): 0.2740,
    },
}
"""Seed 003 Tables 2 and A1 per dataset: Omniglot 10-way 5-shot, 4 steps, 64 filters; CIFAR-FS 10-way 3-shot, 2 steps,
32 filters (A1's CIFAR-FS columns, Table 2's row); miniImageNet 10-way 1-shot, 5 steps, Finn et al.'s 32-filter net
(Table 2's row; its 4-layer net has no published accuracy)."""
PAPER_UPPER_BOUND = 0.9509
"""Seed 003 Table 2: SCNN trained on each Omniglot test task to convergence (not reproduced here)."""
PAPER_UPPER_BOUNDS = {"omniglot": PAPER_UPPER_BOUND, "cifar-fs": 0.6394, "miniimagenet": 0.5845}
"""Seed 003 Table 2's upper bound per dataset (not reproduced here)."""
PAPER_CNN_WAYS = 10
"""Every CNN setting of seed 003's Tables 2 and A1 is 10-way: chance is 10% where none of our runs says otherwise."""


def _chance_line(ax, tables: StudyTables, datasets: set[str]) -> None:
    """A dotted line at chance, 1 / ways, for each number of ways our runs of ``datasets`` use (else the paper's)."""
    runs = tables.checkpoints[tables.checkpoints["dataset"].isin(datasets)] if datasets else tables.checkpoints.iloc[:0]
    for ways in sorted(set(runs["ways"].astype(int))) or [PAPER_CNN_WAYS]:
        ax.axhline(1 / ways, color="grey", linestyle=":", linewidth=1, label=f"chance ({ways}-way)")


PAPER_CNN_SETTINGS = {
    "omniglot": "paper: Omniglot 10-way 5-shot, 4 steps, 64 filters (Tables 2, A1)",
    "cifar-fs": "paper: CIFAR-FS 10-way 3-shot, 2 steps, 32 filters (Tables 2, A1)",
    "miniimagenet": "paper: miniImageNet 10-way 1-shot, 5 steps, 32 filters (Table 2)",
}
PAPER_CNN_SETTING = PAPER_CNN_SETTINGS["omniglot"]
CHANCE_BAND = 0.05
"""How close to chance "≈ chance" is: within 5 accuracy points (fixed before the data)."""
REACH_BAND = 0.05
"""How close to a published accuracy "reaches ≈ x%" is: at least x − 5 points (fixed before the data)."""


# --------------------------------------------------------------------------------------------
# Run keys: algorithm, model, depth
# --------------------------------------------------------------------------------------------


def model_of(run: str) -> str:
    """The model token of a run key ``metaopt-<algorithm>-<model>-...``: lr, linnet or cnn<L>."""
    return run.split("-")[2]


def depth_of(run: str) -> int | None:
    """Conv layers of a ``cnn<L>`` run, None for linear models."""
    match = re.fullmatch(r"cnn(\d+)", model_of(run))
    return int(match.group(1)) if match else None


def family(dataset: str) -> str:
    """The paper's dataset a run's dataset is: synthetic, omniglot (the full set or its subset), cifar-fs or
    miniimagenet (a variant such as ``cifar-fs-64`` counts as its dataset); others are their own."""
    name = registered_name(dataset) or dataset
    return {SYNTHETIC: "synthetic", "omniglot-small": "omniglot"}.get(name, name)


def annotate(frame: pd.DataFrame) -> pd.DataFrame:
    """Study columns from the run key: model, depth, method (the paper's name for the run)."""
    if frame.empty:
        return frame.assign(model=[], depth=[], method=[])
    model = frame["run"].map(model_of)
    depth = frame["run"].map(depth_of)
    method = [
        LINEAR_METHODS.get((a, m), f"{m} w/ {OPTIMIZER_NAMES.get(a, a)}")
        if d is None or math.isnan(d)
        else f"CNN-{int(d)} w/ {OPTIMIZER_NAMES.get(a, a)}"
        for a, m, d in zip(frame["algorithm"], model, depth, strict=True)
    ]
    return frame.assign(model=model, depth=depth, method=method)


def model_is(*names: str):
    return lambda runs: runs.map(model_of).isin(names)


def depth_is(depth: int):
    return lambda runs: runs.map(depth_of) == depth


def linear(algorithm: str, model: str, dataset: str | tuple[str, ...]):
    return where(algorithm=algorithm, dataset=dataset, run=model_is(model))


OMNIGLOT = ("omniglot", "omniglot-small")


# --------------------------------------------------------------------------------------------
# Claims (rules fixed before the data)
# --------------------------------------------------------------------------------------------

FINAL = "1-step post-adaptation accuracy on the fixed synthetic test tasks at the final checkpoint"
SEEDS = "per stratum (dataset, model, ways, shots, inner steps and lr), each seed's mean over the fixed test tasks"
PAIRED = (
    "each seed gives its mean paired difference over the same fixed test tasks at the final checkpoints; per stratum, "
    "t over seeds"
)
METHOD_LR = ("inner_lr",)
"""Knobs a comparison of methods lets differ between its arms: the profiles set the adaptation lr per method (MAML
0.8 vs KFC 0.5, as the paper tunes each), so it is part of the method compared, not a setting kept apart."""
OWN_LR = (
    "each method runs at its own adaptation lr (the profiles tune it per method, so it is part of the method "
    "compared); pairs never cross dataset, ways, shots, queries, inner steps or augmentation"
)

register(
    Claim(
        id=f"{NAME}-lr-chance-synthetic",
        study=NAME,
        seed=SEED,
        section="§3.2, Fig. 1 (left)",
        claim="Logistic regression cannot be meta-learned by MAML on the synthetic tasks: its 1-step "
        "post-adaptation accuracy stays at chance (50%).",
        rule=f"{SEEDS} of the {FINAL}: holds if TOST shows the mean over seeds inside 50% ± {CHANCE_BAND:.0%}; fails "
        "if it lies significantly outside that band (above: LR does meta-learn); inconclusive otherwise",
        test=within("query_accuracy", 0.5 - CHANCE_BAND, 0.5 + CHANCE_BAND, scope=linear("maml", "lr", SYNTHETIC)),
    )
)
register(
    Claim(
        id=f"{NAME}-linnet-92-synthetic",
        study=NAME,
        seed=SEED,
        section="§3.2, Fig. 1 (left)",
        claim="LinNet (LR with 3 linear hidden layers of 64) reaches ≈ 92% 1-step accuracy on the synthetic tasks.",
        rule=f"{SEEDS} of LinNet's {FINAL}: holds if the mean over seeds is significantly above "
        f"{0.92 - REACH_BAND:.0%}; fails if it is significantly below; inconclusive otherwise",
        test=level("query_accuracy", 0.92 - REACH_BAND, scope=linear("maml", "linnet", SYNTHETIC)),
    )
)
register(
    Claim(
        id=f"{NAME}-metaopt-lets-lr-meta-learn",
        study=NAME,
        seed=SEED,
        section="§5.1, Table 1",
        claim="Meta-optimizers let the shallow model meta-learn: LR w/ KLin and LR w/ KFC adapt better than LR "
        "under MAML, on the synthetic tasks and on Omniglot.",
        rule=f"for KLin and KFC on each dataset against LR under MAML of the same seed, {PAIRED}; {OWN_LR}: holds if "
        "the mean "
        "gain is significantly above 0 for all four; fails if significantly below 0 for any; inconclusive otherwise "
        "(including a dataset without runs in this profile)",
        test=all_of(
            {
                f"{method} {dataset}": improves_on(
                    "query_accuracy",
                    linear(algorithm, "lr", datasets),
                    linear("maml", "lr", datasets),
                    varies=METHOD_LR,
                )
                for dataset, datasets in (("synthetic", SYNTHETIC), ("omniglot", OMNIGLOT))
                for algorithm, method in (("klin", "KLin"), ("kfc", "KFC"))
            }
        ),
    )
)
register(
    Claim(
        id=f"{NAME}-scnn-optimizers-beat-maml",
        study=NAME,
        seed=SEED,
        section="§5.3, Table 2",
        claim="Every learned optimizer (Meta-SGD, Meta-Curvature, KFC) adapts the small 2-layer CNN better than "
        "MAML (paper, Omniglot: 60.94% → 69.25 / 85.70 / 91.13%).",
        rule=f"for each of MSGD, MC and KFC against SCNN w/ MAML of the same seed, {PAIRED}; {OWN_LR}: holds if the "
        "mean gain is "
        "significantly above 0 for all three; fails if significantly below 0 for any; inconclusive otherwise",
        test=all_of(
            {
                OPTIMIZER_NAMES[a]: improves_on(
                    "query_accuracy",
                    where(algorithm=a, run=depth_is(2)),
                    where(algorithm="maml", run=depth_is(2)),
                    varies=METHOD_LR,
                )
                for a in ("metasgd", "metacurvature", "kfc")
            }
        ),
        published_effect=PAPER_CNN[("metasgd", 2)] - PAPER_CNN[("maml", 2)],
    )
)


def _depths(frame: pd.DataFrame, algorithm: str) -> list[int]:
    """Conv depths of the CNN runs of ``algorithm`` in ``frame`` (linear runs have none)."""
    runs = frame.loc[frame["algorithm"] == algorithm, "run"].unique() if not frame.empty else []
    return sorted({depth_of(run) for run in runs} - {None})


def _by_depths(build: Callable[[list[int]], dict[str, Rule]]) -> Callable[[StudyTables], pd.DataFrame]:
    """A select over the depths the profile ran: ``build(depths of MAML CNNs)`` names one contrast per
    component (its rows carry the name), e.g. one per pair of consecutive depths."""

    def select(tables: StudyTables) -> pd.DataFrame:
        rules = build(_depths(tables.final_tasks, "maml"))
        frames = [rule.select(tables).assign(component=name) for name, rule in rules.items()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    return select


def _deeper_pairs(depths: list[int]) -> dict[str, Rule]:
    return {
        f"{deeper} vs {shallow} layers": improves_on(
            "query_accuracy",
            where(algorithm="maml", run=depth_is(deeper)),
            where(algorithm="maml", run=depth_is(shallow)),
            varies=("backbone", *METHOD_LR),
        )
        for shallow, deeper in itertools.pairwise(depths)
    }


register(
    Claim(
        id=f"{NAME}-deeper-adapts-better",
        study=NAME,
        seed=SEED,
        section="§5.2, Fig. 3, Table A1",
        claim="Deeper models adapt better: under MAML, each extra conv layer raises post-adaptation accuracy "
        "(paper, Omniglot: 29.20 / 60.94 / 91.69 / 97.56% for 1-4 layers).",
        rule=f"for every pair of consecutive depths run under MAML, the deeper model's gain, {PAIRED}; {OWN_LR}: holds "
        "if it is "
        "significantly above 0 for every pair; fails if significantly below 0 for any; inconclusive otherwise",
        test=Rule("contrast", {"name": "paired accuracy gain of the deeper CNN, per seed"}, _by_depths(_deeper_pairs)),
    )
)


def _kfc_against_maml(depths: list[int]) -> dict[str, Rule]:
    """The two shallowest depths: KFC − MAML at each (KFC beats MAML), and the difference of those gains."""

    def arm(algorithm: str, depth: int):
        return where(algorithm=algorithm, run=depth_is(depth))

    if len(depths) < 2:
        return {}
    shallow, deep = depths[:2]
    return {
        f"KFC beats MAML at {shallow} layers": improves_on(
            "query_accuracy", arm("kfc", shallow), arm("maml", shallow), varies=METHOD_LR
        ),
        f"KFC beats MAML at {deep} layers": improves_on(
            "query_accuracy", arm("kfc", deep), arm("maml", deep), varies=METHOD_LR
        ),
        f"gain larger at {shallow} than at {deep} layers": contrast(
            "query_accuracy",
            {
                f"kfc{shallow}": (arm("kfc", shallow), 1.0),
                f"maml{shallow}": (arm("maml", shallow), -1.0),
                f"kfc{deep}": (arm("kfc", deep), -1.0),
                f"maml{deep}": (arm("maml", deep), 1.0),
            },
            varies=("backbone", *METHOD_LR),
            name="(KFC − MAML at the shallower depth) − (KFC − MAML at the deeper), per seed",
        ),
    }


register(
    Claim(
        id=f"{NAME}-optimizer-degrades-slower",
        study=NAME,
        seed=SEED,
        section="§5.2, Fig. 3, Table A1",
        claim="Meta-optimizers degrade more slowly as depth shrinks: KFC's gain over MAML is larger for the "
        "shallower CNN (paper, Omniglot: +37.25 points at 1 layer, +30.19 at 2).",
        rule="for the two shallowest depths with both MAML and KFC runs, three parts, each seed's mean over the same "
        "fixed test tasks, t over seeds: KFC beats MAML at each depth, and (KFC − MAML at the shallower depth) − "
        f"(KFC − MAML at the deeper) is positive; {OWN_LR}; holds if all three are significantly above 0; fails if "
        "any is significantly below 0; inconclusive otherwise",
        test=Rule("contrast", {"name": "paired KFC − MAML contrasts, per seed"}, _by_depths(_kfc_against_maml)),
        published_effect=0.3725 - 0.3019,
    )
)


def layer_columns(frame: pd.DataFrame, mode: str) -> dict[str, str]:
    """Layer name -> its ``layerwise_<mode>_<layer>_accuracy`` column, in layer order (conv1.., fc)."""
    pattern = re.compile(rf"layerwise_{mode}_(.+)_accuracy")
    found = {m.group(1): c for c in frame.columns if (m := pattern.fullmatch(c))}
    return dict(sorted(found.items(), key=lambda item: (item[0] == "fc", item[0])))


def _within_run_contrasts(
    tables: StudyTables,
    rows: pd.DataFrame,
    columns_of: Callable[[str, pd.DataFrame], dict[str, float] | None],
    arms: tuple[str, str],
) -> pd.DataFrame:
    """Per fixed task of each run of ``rows``: a weighted sum of two of its own probe columns, ``columns_of(run,
    its rows without all-empty columns)`` ({column: +1 or −1}; None skips the run); ``arms`` names the + and − arm."""
    frames = []
    for run, group in rows.groupby("run") if not rows.empty else []:
        columns = columns_of(run, group.dropna(axis=1, how="all"))
        if columns:
            rule = column_contrast(columns, name="")
            frames.append(rule.select(StudyTables(NAME, tables.checkpoints, group, tables.train_log)))
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    return out.assign(arm=np.where(out["weight"] > 0, *arms))


def _first_and_last_frozen(tables: StudyTables) -> pd.DataFrame:
    """Per fixed task of each MAML CNN with ≥ 2 layers: accuracy with conv1 frozen (+1) and with its
    last conv frozen (−1), from the layer-wise probe."""

    def columns_of(run: str, group: pd.DataFrame) -> dict[str, float] | None:
        columns, last = layer_columns(group, "freeze"), f"conv{depth_of(run)}"
        return {columns["conv1"]: 1.0, columns[last]: -1.0} if "conv1" in columns and last in columns else None

    rows = where(algorithm="maml", run=lambda runs: runs.map(depth_of).fillna(0) >= 2)(tables.final_tasks)
    return _within_run_contrasts(tables, rows, columns_of, ("conv1 frozen", "last conv frozen"))


register(
    Claim(
        id=f"{NAME}-last-conv-carries-adaptation",
        study=NAME,
        seed=SEED,
        section="§3.2, Fig. 2",
        claim="The last conv layer is crucial for adaptation: freezing it at meta-test costs more accuracy than "
        "freezing the first conv layer (which costs nothing noticeable).",
        rule="each MAML-trained CNN with ≥ 2 layers gives, per seed, its mean over the fixed test tasks of (accuracy "
        "with conv1 frozen − accuracy with the last conv frozen); per stratum, t over seeds: holds if it is "
        "significantly above 0 in every stratum; fails if significantly below 0 in any; inconclusive otherwise",
        test=Rule(
            "contrast",
            {"name": "accuracy with conv1 frozen − with the last conv frozen, per seed"},
            _first_and_last_frozen,
        ),
    )
)


def _noise_free_and_strongest(tables: StudyTables) -> pd.DataFrame:
    """Per fixed task of each MAML-trained CNN with the FC-noise probe: accuracy without noise (+1) and at the
    strongest σ probed (−1), both with C1-C3 frozen (the layer-wise probe's ``noise`` panel)."""

    def columns_of(run: str, group: pd.DataFrame) -> dict[str, float] | None:
        found = sorted((float(m.group(1)), c) for c in group.columns if (m := NOISE_COLUMN.fullmatch(c)))
        return {found[0][1]: 1.0, found[-1][1]: -1.0} if len(found) >= 2 and found[0][0] == 0.0 else None

    rows = where(algorithm="maml", run=lambda runs: runs.map(depth_of).notna())(tables.final_tasks)
    return _within_run_contrasts(tables, rows, columns_of, ("no noise", "strongest noise"))


register(
    Claim(
        id=f"{NAME}-fc-noise-degrades",
        study=NAME,
        seed=SEED,
        section="§3.2, Fig. 2 (right)",
        claim="With C1-C3 held fixed during adaptation, noise on the FC layer degrades post-adaptation accuracy "
        "significantly when it is strong: C4 and FC work together.",
        rule="each MAML-trained CNN (as the seed's Fig. 2) gives, per seed, its mean over the fixed test tasks of "
        "(accuracy without noise − accuracy at the strongest noise probed), both with C1-C3 frozen; the strongest "
        "is the largest of the layer-wise probe's noise scales σ: each FC tensor W moved by σ‖W‖ in a Gaussian "
        "direction before adaptation, mean over draws. Per stratum (dataset and depth apart), t over seeds: holds "
        "if it is significantly above 0 in every stratum; fails if significantly below 0 in any; inconclusive "
        "otherwise. The seed quantifies neither 'strong' nor the noise family: the scales are a param "
        "(`noise.scales`, σ up to 2 × ‖W‖)",
        test=Rule(
            "contrast",
            {"name": "accuracy without noise − at the strongest FC noise, per seed"},
            _noise_free_and_strongest,
        ),
    )
)


# --- Claims for the remaining comparative statements (issue 22) -----------------------------------------------

SAME_LEVEL_MARGIN = 0.05
"""§1, §5.2: KFC at L layers reaches "the same level of performance as a MAML-trained model with an additional
layer" read as: the paired difference KFC(L) − MAML(L + 1) lies within ±5 accuracy points (TOST), the study's one
reading of "≈" in accuracy (as :data:`CHANCE_BAND`, :data:`REACH_BAND`). Table A1 puts 5 of its 6 cells inside
(Omniglot +2.03 at L = 2, −0.99 at 3; CIFAR-FS +3.58, +2.03, −1.96); Omniglot at L = 1 is +5.51, KFC above the
band ("generally")."""
LINNET_NONINFERIORITY_MARGIN = 0.05
"""§5.1: "our approaches lead to similar or better results compared to LinNet" read as non-inferiority: LR w/ KLin
(and LR w/ KFC) − LinNet of the same seed on the same tasks above −5 accuracy points ("similar" as
:data:`SAME_LEVEL_MARGIN`; "or better" puts no upper limit)."""
FREEZE_NOTICEABLE_MARGIN = 0.02
"""§3.2, Fig. 2: freezing C1-C3 "does not cause noticeable degradation", accuracy "remains unaffected", read as:
accuracy with that conv frozen − accuracy with every layer adapting lies within ±2 points (TOST). Stricter than
"similar" (5 points) because the text says "unaffected"; 2 points is about the largest ± the seed prints for one
CNN in Table A1 (0.41-1.54 points)."""
PAPER_ONLY_CNN = (
    "(at the default scale omniglot-small has only MAML and KFC at 1-2 layers: the strata with MSGD, MC, 3-4 layers, "
    "CIFAR-FS and miniImageNet are in the paper profile only)"
)


def _paired(rule: Rule, component: str = "") -> Select:
    """The rows a level or equivalence family reads from a two-arm contrast ``rule`` (:func:`improves_on`): one row
    per stratum, seed and fixed task that has both arms, its value treatment − baseline on that task, its run the
    treatment's (the baseline is the run of the same seed and stratum); ``component`` names the rows."""

    def select(tables: StudyTables) -> pd.DataFrame:
        rows = rule.select(tables)
        rows = rows[np.isfinite(rows["value"].to_numpy(float))] if not rows.empty else rows
        if rows.empty:
            return pd.DataFrame()
        rows = rows.sort_values("weight", ascending=False, kind="stable")
        units = rows.assign(weighted=rows["weight"] * rows["value"]).groupby(["stratum", "seed", "unit"], sort=True)
        out = units.agg(
            value=("weighted", "sum"), run=("run", "first"), n=("arm", "size"), arms=("arm", "nunique"),
            expected=("arms", "max"),
        ).reset_index()  # fmt: skip
        out = out[(out["n"] == out["expected"]) & (out["arms"] == out["expected"])]
        if out.empty:
            return pd.DataFrame()
        return out[["stratum", "seed", "run", "unit", "value"]].assign(component=component)

    return select


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _scnn(algorithm: str):
    return where(algorithm=algorithm, run=depth_is(2))


register(
    Claim(
        id=f"{NAME}-kfc-best-on-scnn",
        study=NAME,
        seed=SEED,
        section="§5.3, Table 2",
        claim="Of the learned optimizers, KFC adapts the 2-layer CNN best and so comes closest to the upper bound "
        "(paper, Omniglot: KFC 91.13% vs MC 85.70%, MSGD 69.25%; upper bound 95.09%).",
        rule=f"for each of MSGD and MC against SCNN w/ KFC of the same seed, {PAIRED}; {OWN_LR}: holds if KFC − "
        "other is significantly above 0 for both in every dataset; fails if significantly below 0 for either in "
        "any; inconclusive otherwise. The upper bound is one number per dataset above every method, so 'closest "
        "to it' is 'highest accuracy'; it is not recomputed. KFC − MAML is metaopt-scnn-optimizers-beat-maml's. "
        f"The seed's own Table 2 has MC above KFC on miniImageNet and a tie on CIFAR-FS {PAPER_ONLY_CNN}",
        test=all_of(
            {
                f"KFC beats {OPTIMIZER_NAMES[a]}": improves_on(
                    "query_accuracy", _scnn("kfc"), _scnn(a), varies=METHOD_LR
                )
                for a in ("metasgd", "metacurvature")
            }
        ),
        published_effect=PAPER_CNN[("kfc", 2)] - PAPER_CNN[("metacurvature", 2)],
    )
)


def _kfc_against_deeper_maml(tables: StudyTables) -> pd.DataFrame:
    """One component per depth L with KFC runs at L and MAML runs at L + 1: per fixed task, KFC(L) − MAML(L + 1)
    of the same seed, dataset and setting (the depth and the lr are what differ)."""
    kfc, maml = _depths(tables.final_tasks, "kfc"), set(_depths(tables.final_tasks, "maml"))
    return _concat(
        [
            _paired(
                improves_on(
                    "query_accuracy",
                    where(algorithm="kfc", run=depth_is(depth)),
                    where(algorithm="maml", run=depth_is(depth + 1)),
                    varies=("backbone", *METHOD_LR),
                ),
                f"KFC at {depth} vs MAML at {depth + 1} layers",
            )(tables)
            for depth in kfc
            if depth + 1 in maml
        ]
    )


register(
    Claim(
        id=f"{NAME}-kfc-matches-deeper-maml",
        study=NAME,
        seed=SEED,
        section="§5.2, Fig. 3, Table A1 (and §1)",
        claim="KFC adapts a smaller CNN to the same level of performance as a MAML-trained CNN with one more conv "
        "layer (paper, Omniglot: KFC 66.45 / 91.13 / 96.57% at 1-3 layers, MAML 60.94 / 91.69 / 97.56% at 2-4).",
        rule="for every depth L with KFC runs at L and MAML runs at L + 1 in the same dataset and setting, each seed "
        f"gives its mean over the same fixed test tasks of KFC(L) − MAML(L + 1); {OWN_LR}; per stratum, TOST over "
        f"seeds: holds if the mean lies inside ±{SAME_LEVEL_MARGIN:.0%} (SAME_LEVEL_MARGIN) for every L and "
        "dataset; fails if it lies significantly outside the band for any; inconclusive otherwise. 'Generally' "
        "is not read as leave-one-out: every depth run counts (Table A1 puts 5 of its 6 cells inside the band, "
        f"Omniglot L = 1 above it) {PAPER_ONLY_CNN}",
        test=Rule(
            "equivalence",
            {
                "name": "mean KFC(L) − MAML(L + 1) on the same tasks, per seed",
                "low": -SAME_LEVEL_MARGIN,
                "high": SAME_LEVEL_MARGIN,
            },
            _kfc_against_deeper_maml,
        ),
    )
)


def _not_worse_than_linnet(algorithm: str, datasets: str | tuple[str, ...]) -> Rule:
    rule = improves_on(
        "query_accuracy",
        linear(algorithm, "lr", datasets),
        linear("maml", "linnet", datasets),
        varies=("backbone", *METHOD_LR),
    )
    return Rule(
        "level",
        {
            "name": f"mean LR w/ {OPTIMIZER_NAMES[algorithm]} − LinNet on the same tasks, per seed",
            "threshold": -LINNET_NONINFERIORITY_MARGIN,
            "direction": 1,
        },
        _paired(rule),
    )


register(
    Claim(
        id=f"{NAME}-metaopt-not-worse-than-linnet",
        study=NAME,
        seed=SEED,
        section="§5.1, Table 1",
        claim="LR w/ KLin and LR w/ KFC lead to similar or better results than LinNet (the over-parameterised "
        "model), on the synthetic tasks and on Omniglot.",
        rule=f"for KLin and KFC on each dataset against LinNet of the same seed, each seed gives its mean over the "
        f"same fixed test tasks of (LR w/ optimizer − LinNet); {OWN_LR}; per stratum, t over seeds against "
        f"−{LINNET_NONINFERIORITY_MARGIN:.0%} (LINNET_NONINFERIORITY_MARGIN, non-inferiority: 'similar' is within "
        "that margin, 'or better' has no upper limit): holds if significantly above it for all four; fails if "
        "significantly below it for any; inconclusive otherwise. A dataset without both arms is not tested (the "
        "Omniglot linear runs are in the paper profile only); Table 1's KLin / KFC numbers are not in the seed",
        test=all_of(
            {
                f"{OPTIMIZER_NAMES[algorithm]} {dataset}": _not_worse_than_linnet(algorithm, datasets)
                for dataset, datasets in (("synthetic", SYNTHETIC), ("omniglot", OMNIGLOT))
                for algorithm in ("klin", "kfc")
            }
        ),
    )
)


def _early_convs_frozen(tables: StudyTables) -> pd.DataFrame:
    """Per fixed task of each MAML CNN with L ≥ 2 layers and each conv k < L (C1-C3 of the 4-layer CNN):
    accuracy with conv k frozen − accuracy with every layer adapting, from the layer-wise probe; one component
    per k."""
    depths = _depths(tables.final_tasks, "maml")
    frames = []
    for k in range(1, max(depths, default=1)):
        column = f"layerwise_freeze_conv{k}_accuracy"

        def scope(frame: pd.DataFrame, k: int = k, column: str = column) -> pd.DataFrame:
            rows = where(algorithm="maml", run=lambda runs: runs.map(depth_of).fillna(0) > k)(frame)
            return rows[rows[column].notna()] if column in rows else rows.iloc[:0]

        rule = within(
            column,
            -FREEZE_NOTICEABLE_MARGIN,
            FREEZE_NOTICEABLE_MARGIN,
            scope=scope,
            offset=lambda rows: rows["query_accuracy"],
            offset_name="accuracy with every layer adapting",
        )
        frames.append(rule.select(tables).assign(component=f"conv{k} frozen"))
    return _concat(frames)


register(
    Claim(
        id=f"{NAME}-freezing-early-convs-costs-nothing",
        study=NAME,
        seed=SEED,
        section="§3.2, Fig. 2",
        claim="Freezing only one of the lower conv layers (C1-C3) at meta-test does not noticeably change "
        "post-adaptation accuracy: as long as the last conv layer adapts, accuracy is unaffected.",
        rule="each MAML-trained CNN of L ≥ 2 layers and each conv k < L (C1-C3 of the seed's 4-layer CNN; conv1 of "
        "a 2-layer one) gives, per seed, its mean over the fixed test tasks of (accuracy with conv k frozen − "
        "accuracy with every layer adapting), from the layer-wise probe; per stratum (dataset and depth apart), "
        f"TOST over seeds: holds if the mean lies inside ±{FREEZE_NOTICEABLE_MARGIN:.0%} "
        "(FREEZE_NOTICEABLE_MARGIN) for every k and stratum; fails if it lies significantly outside for any; "
        "inconclusive otherwise. FC is not in it: the seed's next paragraph says FC plays an important role. "
        "The seed states this for the 4-layer CNN on Omniglot and CIFAR-FS (paper profile only); at the default "
        "scale it reads conv1 of the 2-layer CNN on omniglot-small",
        test=Rule(
            "equivalence",
            {
                "name": "mean accuracy with conv k frozen − with every layer adapting, per seed",
                "low": -FREEZE_NOTICEABLE_MARGIN,
                "high": FREEZE_NOTICEABLE_MARGIN,
            },
            _early_convs_frozen,
        ),
    )
)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _accuracy_row(rows: pd.DataFrame, cfg: AggregateConfig, column: str = "query_accuracy") -> dict:
    """Mean and CI over seeds (each seed's mean over the fixed tasks: what the claims read), the field's CI
    over tasks × seeds beside it, and the spread over tasks."""
    return {
        "runs": rows["run"].nunique(),
        **seed_summary(rows, column, cfg.confidence, "accuracy"),
        "std_over_tasks": float(rows[column].std(ddof=1)) if len(rows) > 1 else np.nan,
        "pre_adaptation_accuracy": float(rows["pre_query_accuracy"].mean()),
    }


def linear_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Table 1: final post-adaptation accuracy of the linear models per dataset, the paper's (§3.2) beside it."""
    final = annotate(tables.final_tasks)
    rows = []
    for (dataset, method), group in (
        final[final["depth"].isna()].groupby(["dataset", "method"]) if not final.empty else []
    ):
        paper = PAPER_LINEAR.get((family(dataset), method), np.nan)
        rows.append(
            {
                "dataset": dataset,
                "setting": group["setting"].iloc[0],
                "method": method,
                "inner_steps": int(group["inner_steps"].iloc[0]),
                **_accuracy_row(group, cfg),
                "paper_accuracy": paper,
            }
        )
    return pd.DataFrame(rows)


CNN_MATCH = ("paper_dataset", "optimizer", "layers")


def cnn_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Tables 2 and A1: final accuracy of the CNNs per dataset, optimizer and depth, the paper's cell of the dataset
    (Omniglot, CIFAR-FS, miniImageNet; ``paper_dataset``) beside it."""
    final = annotate(tables.final_tasks)
    rows = []
    cnn = final[final["depth"].notna()] if not final.empty else final
    for (dataset, algorithm, depth), group in cnn.groupby(["dataset", "algorithm", "depth"]) if not cnn.empty else []:
        paper = PAPER_CNN_BY_DATASET.get(family(dataset))
        rows.append(
            {
                "dataset": dataset,
                "setting": group["setting"].iloc[0],
                "layers": int(depth),
                "optimizer": OPTIMIZER_NAMES.get(algorithm, algorithm),
                **_accuracy_row(group, cfg),
                "paper_dataset": family(dataset) if paper else None,
                "paper_accuracy": paper.get((algorithm, int(depth)), np.nan) if paper else np.nan,
            }
        )
    return pd.DataFrame(rows)


def published_cnn() -> pd.DataFrame:
    """Every published CNN cell (Tables 2, A1), for the table's "not run at this scale" rows."""
    return pd.DataFrame(
        [
            {
                "paper_dataset": name,
                "optimizer": OPTIMIZER_NAMES[algorithm],
                "layers": depth,
                "paper_accuracy": accuracy,
            }
            for name, cells in PAPER_CNN_BY_DATASET.items()
            for (algorithm, depth), accuracy in sorted(cells.items(), key=lambda cell: (cell[0][1], cell[0][0]))
        ]
    )


def _trained_cnns(tables: StudyTables):
    """((dataset, algorithm, depth), final-task rows) of each trained CNN, the columns no row fills dropped."""
    final = annotate(tables.final_tasks)
    cnn = final[final["depth"].notna()] if not final.empty else final
    for key, group in cnn.groupby(["dataset", "algorithm", "depth"]) if not cnn.empty else []:
        yield key, group.dropna(axis=1, how="all")


def layerwise_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Fig. 2's numbers: per CNN (dataset, optimizer, depth) and layer, accuracy adapting only it and freezing
    only it (mean and CI over seeds), beside the accuracy adapting every layer."""
    rows = []
    for (dataset, algorithm, depth), group in _trained_cnns(tables):
        every = seed_level(group, "query_accuracy", cfg.confidence).estimate
        for mode in ("only", "freeze"):
            for layer, column in layer_columns(group, mode).items():
                ci = seed_level(group, column, cfg.confidence)
                rows.append(
                    {
                        "dataset": dataset,
                        "algorithm": algorithm,
                        "layers": int(depth),
                        "runs": group["run"].nunique(),
                        "layer": layer,
                        "mode": "adapting only" if mode == "only" else "freezing only",
                        "accuracy": ci.estimate,
                        "ci_low": ci.ci_low,
                        "ci_high": ci.ci_high,
                        "all_layers_accuracy": every,
                    }
                )
    return pd.DataFrame(rows)


NOISE_COLUMN = re.compile(r"layerwise_noise_(.+)_accuracy")
"""The layer-wise probe's accuracy column at noise strength σ (Fig. 2's right panel)."""


def noise_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Fig. 2's right panel: per CNN (dataset, optimizer, depth) and noise strength σ on the FC layer (C1-C3 frozen,
    the rest adapting), accuracy after adaptation (mean and CI over seeds), beside adapting every layer noise-free."""
    rows = []
    for (dataset, algorithm, depth), group in _trained_cnns(tables):
        found = sorted((float(m.group(1)), c) for c in group.columns if (m := NOISE_COLUMN.fullmatch(c)))
        for sigma, column in found:
            ci = seed_level(group, column, cfg.confidence)
            rows.append(
                {
                    "dataset": dataset,
                    "algorithm": algorithm,
                    "layers": int(depth),
                    "runs": group["run"].nunique(),
                    "sigma": sigma,
                    "accuracy": ci.estimate,
                    "ci_low": ci.ci_low,
                    "ci_high": ci.ci_high,
                    "all_layers_accuracy": seed_level(group, "query_accuracy", cfg.confidence).estimate,
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _bars(ax, table: pd.DataFrame, labels: list[str], *, title: str, paper_label: str) -> None:
    """Our accuracy (mean, CI) per row beside the paper's value (a black marker where stated)."""
    x = np.arange(len(table))
    ax.bar(x, table["accuracy"], width=0.6, color="#1f77b4", alpha=0.85, label="ours")
    low = (table["accuracy"] - table["ci_low"]).fillna(0)
    high = (table["ci_high"] - table["accuracy"]).fillna(0)
    ax.errorbar(x, table["accuracy"], yerr=[low, high], fmt="none", color="black", capsize=3)
    ax.scatter(x, table["paper_accuracy"], marker="D", color="black", zorder=3, label=paper_label)
    for xi, value in zip(x, table["accuracy"], strict=True):
        ax.text(xi, value, f" {value:.1%}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("post-adaptation test accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left")


def _panels(keys: list[str], title: str, missing: str, *, height: float = 3.6):
    """One panel per key (two columns), or one "no data" panel; returns the figure and (axis, key) pairs."""
    fig, axes = grid(max(1, len(keys)), columns=2, width=5.0, height=height)
    if not keys:
        no_data(axes[0], title, missing)
    return fig, list(zip(axes, keys, strict=False))


def fig_linear(tables: StudyTables, path: Path) -> None:
    """Fig. 1 / Table 1: final accuracy of LR, LinNet, LR w/ KLin, LR w/ KFC per dataset, the paper's beside."""
    table = linear_table(tables, AggregateConfig())
    settings = list(table["setting"].unique()) if not table.empty else []
    fig, panels = _panels(settings, "linear models", "LR / LinNet runs", height=3.8)
    for ax, setting in panels:
        rows = table[table["setting"] == setting].reset_index(drop=True)
        steps = int(rows["inner_steps"].iloc[0])
        _bars(
            ax,
            rows,
            list(rows["method"]),
            title=f"{setting}, {steps} step(s)\nmean, 95% CI over test tasks",
            paper_label="paper (§3.2)",
        )
        ax.axhline(
            1 / (2 if "synthetic" in setting else int(setting.split()[1].split("-")[0])),
            color="grey",
            linestyle=":",
            linewidth=1,
        )
    suptitle(fig, "Meta-learning linear models (seed 003 Fig. 1, Table 1): chance dotted")
    save(fig, path)


TRAINING_CURVES = {
    "checkpoints": ("post-adaptation test accuracy", "test accuracy (fixed test tasks)"),
    "train_log": ("post-adaptation accuracy, meta-training batches", "training accuracy (meta-training batches)"),
}
"""The two panels of Figs. A.2-A.3 per setting: the table each is read from, its y label and its title."""


def _training_panels(tables: StudyTables, path: Path, *, cnn: bool, title: str, sources: tuple[str, ...]) -> None:
    """One row per setting, one panel per source (:data:`TRAINING_CURVES`): each method's accuracy over
    meta-training, the mean and 95% CI over its runs (seeds)."""
    frames = {name: annotate(getattr(tables, name)) for name in sources}
    frames = {
        name: frame[frame["depth"].notna() == cnn] if not frame.empty else frame for name, frame in frames.items()
    }
    settings = sorted({setting for frame in frames.values() if not frame.empty for setting in frame["setting"]})
    fig, axes = grid(max(1, len(settings) * len(sources)), columns=len(sources), width=5.0, height=3.6)
    if not settings:
        no_data(axes[0], "accuracy over training", "probed checkpoints")
    palette = [*COLORS.values(), "#8c564b", "#e377c2", "#7f7f7f"]
    for i, setting in enumerate(settings):
        for j, name in enumerate(sources):
            ax, frame = axes[i * len(sources) + j], frames[name]
            ylabel, what = TRAINING_CURVES[name]
            here = frame[frame["setting"] == setting] if not frame.empty else frame
            if here.empty or "query_accuracy" not in here:
                no_data(ax, f"{setting}: {what}", what)
                continue
            for k, (method, group) in enumerate(here.groupby("method")):
                curve(ax, group, "query_accuracy", color=palette[k % len(palette)], name=method)
            ax.set_xlabel("meta-iteration")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{setting}: {what}" if len(sources) > 1 else setting)
            ax.legend()
    suptitle(fig, title)
    save(fig, path)


def fig_linear_training(tables: StudyTables, path: Path) -> None:
    """Fig. A.1: test accuracy of the linear models over meta-training."""
    _training_panels(
        tables,
        path,
        cnn=False,
        title="Linear models: test accuracy during meta-training (seed 003 Fig. A.1)",
        sources=("checkpoints",),
    )


def fig_cnn_training(tables: StudyTables, path: Path) -> None:
    """Figs. A.2 (Omniglot) and A.3 (miniImageNet): training accuracy (left) and test accuracy (right) of the CNNs
    over meta-training, one row per setting."""
    _training_panels(
        tables,
        path,
        cnn=True,
        title="CNNs: training (left) and test (right) accuracy during meta-training (seed 003 Figs. A.2-A.3)",
        sources=("train_log", "checkpoints"),
    )


def _paper_families(table: pd.DataFrame, wanted: tuple[str, ...]) -> list[str]:
    """The paper's datasets (of ``wanted``) that the CNN runs of ``table`` belong to, in the paper's order."""
    present = set(table["dataset"].map(family)) if not table.empty else set()
    return [name for name in wanted if name in present]


def fig_cnn(tables: StudyTables, path: Path) -> None:
    """Table 2: accuracy of the 2-layer CNN per optimizer, ours beside the paper's, one panel per dataset."""
    table = cnn_table(tables, AggregateConfig())
    rows = table[table["layers"] == 2].reset_index(drop=True) if not table.empty else table
    names = _paper_families(rows, tuple(PAPER_CNN_BY_DATASET)) or [""]
    fig, axes = grid(len(names), columns=min(len(names), 3), width=5.5, height=3.8)
    for ax, name in zip(axes, names, strict=False):
        mine = rows[rows["dataset"].map(family) == name].reset_index(drop=True) if name else rows[:0]
        if mine.empty:
            no_data(ax, "SCNN", "2-layer CNN runs")
            continue
        _bars(
            ax,
            mine,
            [f"SCNN w/ {o}" for o in mine["optimizer"]],
            title=f"ours: {', '.join(mine['setting'].unique())}\n{PAPER_CNN_SETTINGS[name]}",
            paper_label="paper (Table 2)",
        )
        ax.axhline(PAPER_UPPER_BOUNDS[name], color="grey", linestyle="--", linewidth=1, label="paper upper bound")
    suptitle(fig, "Meta-optimizers adapting a small CNN (seed 003 Table 2)")
    save(fig, path)


def fig_depth(tables: StudyTables, path: Path) -> None:
    """Fig. 3 / Table A1: accuracy against the number of conv layers, MAML and KFC, ours and the paper's, one panel
    per dataset (Omniglot, CIFAR-FS)."""
    table = cnn_table(tables, AggregateConfig())
    names = ("omniglot", "cifar-fs")
    fig, axes = grid(len(names), columns=2, width=5.5, height=3.8)
    for ax, name in zip(axes, names, strict=True):
        mine = table[table["dataset"].map(family) == name] if not table.empty else table
        for algorithm in ("maml", "kfc"):
            optimizer = OPTIMIZER_NAMES[algorithm]
            paper = sorted((d, v) for (a, d), v in PAPER_CNN_BY_DATASET[name].items() if a == algorithm)
            ax.plot(
                *zip(*paper, strict=True),
                color=COLORS[algorithm],
                linestyle="--",
                marker="D",
                label=f"CNN w/ {optimizer} (paper)",
            )
            rows = mine[mine["optimizer"] == optimizer].sort_values("layers") if not mine.empty else mine
            if not rows.empty:
                ax.errorbar(
                    rows["layers"],
                    rows["accuracy"],
                    yerr=[rows["accuracy"] - rows["ci_low"], rows["ci_high"] - rows["accuracy"]],
                    color=COLORS[algorithm],
                    marker="o",
                    capsize=3,
                    label=f"CNN w/ {optimizer} (ours: {', '.join(rows['dataset'].unique())})",
                )
        _chance_line(ax, tables, set(mine["dataset"]) if not mine.empty else set())
        ax.set_xlabel("conv layers")
        ax.set_xticks([1, 2, 3, 4])
        ax.set_ylabel("post-adaptation test accuracy")
        ax.set_ylim(0, 1.05)
        ax.set_title(PAPER_CNN_SETTINGS[name] + ("" if not mine.empty else "\n(no runs of ours)"))
        ax.legend(fontsize=7)
    suptitle(fig, "Effect of depth (seed 003 Fig. 3, Table A1)")
    save(fig, path)


def fig_layerwise(tables: StudyTables, path: Path) -> None:
    """Fig. 2: per trained CNN (dataset, optimizer, depth; mean over seeds), accuracy adapting only / freezing
    only each layer at meta-test."""
    table = layerwise_table(tables, AggregateConfig())
    models = list(dict.fromkeys(zip(table["dataset"], table["algorithm"], table["layers"], strict=True)))
    fig, panels = _panels(models, "layer-wise adaptation", "layerwise probe on CNN runs")
    for ax, (dataset, algorithm, layers_) in panels:
        rows = table[(table["dataset"] == dataset) & (table["algorithm"] == algorithm) & (table["layers"] == layers_)]
        layers = list(dict.fromkeys(rows["layer"]))
        x = np.arange(len(layers))
        for offset, (mode, color) in zip(
            (-0.2, 0.2), (("freezing only", "#d62728"), ("adapting only", "#1f77b4")), strict=True
        ):
            values = rows[rows["mode"] == mode].set_index("layer").reindex(layers)["accuracy"]
            ax.bar(x + offset, values, width=0.4, color=color, alpha=0.85, label=f"{mode} this")
        ax.axhline(
            rows["all_layers_accuracy"].iloc[0],
            color="black",
            linestyle="--",
            linewidth=1,
            label="adapting every layer",
        )
        _chance_line(ax, tables, {dataset})
        ax.set_xticks(x, layers)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("post-adaptation test accuracy")
        seeds = int(rows["runs"].iloc[0])
        optimizer = OPTIMIZER_NAMES.get(algorithm, algorithm)
        ax.set_title(f"{dataset}: CNN-{layers_} w/ {optimizer} ({seeds} seed{'s' if seeds != 1 else ''})")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    suptitle(fig, "Layer-wise adaptation at meta-test (seed 003 §3.2, Fig. 2)")
    save(fig, path)


def fig_fc_noise(tables: StudyTables, path: Path) -> None:
    """Fig. 2 (right): accuracy against the strength of noise on the FC layer, C1-C3 frozen, one panel per dataset,
    one line per trained CNN (optimizer, depth; mean and 95% CI over seeds)."""
    table = noise_table(tables, AggregateConfig())
    datasets = list(dict.fromkeys(table["dataset"])) if not table.empty else []
    fig, panels = _panels(datasets, "FC noise", "layerwise noise on CNN runs")
    palette = [*COLORS.values(), "#8c564b", "#e377c2", "#7f7f7f"]
    for ax, dataset in panels:
        rows = table[table["dataset"] == dataset]
        for i, ((algorithm, layers), group) in enumerate(rows.groupby(["algorithm", "layers"], sort=True)):
            color = palette[i % len(palette)]
            seeds = int(group["runs"].iloc[0])
            name = (
                f"CNN-{layers} w/ {OPTIMIZER_NAMES.get(algorithm, algorithm)} ({seeds} seed{'s' if seeds != 1 else ''})"
            )
            ax.plot(group["sigma"], group["accuracy"], marker="o", color=color, label=name)
            ax.fill_between(group["sigma"], group["ci_low"], group["ci_high"], color=color, alpha=0.18, linewidth=0)
        _chance_line(ax, tables, {dataset})
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("noise on FC, σ (relative to ‖W‖)")
        ax.set_ylabel("post-adaptation test accuracy")
        ax.set_title(f"{dataset}: C1-C3 frozen where the CNN has them, later layers adapting")
        ax.legend(fontsize=7)
    suptitle(fig, "Noise on the FC layer before adaptation (seed 003 §3.2, Fig. 2 right)")
    save(fig, path)


STUDIES.register(
    NAME,
    StudySpec(
        name=NAME,
        seed=SEED,
        title="Meta-optimizers 2019 — shallow vs deep models under MAML, layer-wise adaptation, KLin / KFC",
        figures=(
            Figure("linear", "Fig. 1 / Table 1: final accuracy of the linear models, the paper's beside.", fig_linear),
            Figure(
                "linear-training",
                "Fig. A.1: test accuracy of the linear models over meta-training.",
                fig_linear_training,
            ),
            Figure("scnn", "Table 2: the 2-layer CNN with MAML, Meta-SGD, Meta-Curvature, KLin, KFC.", fig_cnn),
            Figure("depth", "Fig. 3 / Table A1: accuracy against the number of conv layers.", fig_depth),
            Figure("layerwise", "Fig. 2: adapting only / freezing only each layer at meta-test.", fig_layerwise),
            Figure("fc-noise", "Fig. 2 (right): accuracy against noise on the FC layer, C1-C3 frozen.", fig_fc_noise),
            Figure(
                "cnn-training",
                "Figs. A.2-A.3: training and test accuracy of the CNNs over meta-training.",
                fig_cnn_training,
            ),
        ),
        tables=(
            Table(
                "linear", "Table 1: linear models (LR, LinNet, LR w/ KLin, LR w/ KFC), the paper's beside", linear_table
            ),
            Table(
                "cnn",
                "Tables 2 / A1: CNNs per dataset, optimizer and depth, the paper's (Omniglot, CIFAR-FS, miniImageNet) "
                "beside; every published cell, run or not at this scale",
                cnn_table,
                published_cnn,
                CNN_MATCH,
            ),
            Table("layerwise", "Fig. 2: layer-wise adaptation at meta-test", layerwise_table),
            Table("fc_noise", "Fig. 2 (right): accuracy against noise on the FC layer", noise_table),
        ),
    ),
)
