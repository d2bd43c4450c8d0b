"""Study ``lil2022`` — seed 004, "Enforcing Zero-Hessian in Meta-Learning" (LIL).

The paper claims that after meta-training, GBML is almost linear in θ along the inner loop: Phase
and Amplitude Consistency (eqs. 3-4) approach 1 over MAML meta-training (Fig. 2), so the inner
gradient keeps its direction and the Hessian acts as noise (eq. 5); and that enforcing it with the
LIL losses (phase, eq. 7; pseudo-amplitude, eq. 9) linearises faster, converges faster (Fig. 4)
and improves MAML, ANIL and BOIL (Tables 2, 5). Here each claim is tested, not assumed:

* the ``linearity`` probe measures PC, AC (logit-Jacobian and loss-gradient readings), the
  gradient change and the Hessian-noise ratio on fixed test tasks at every extracted checkpoint;
* MAML / ANIL / BOIL runs are ``lil`` with both weights 0 and ``train.inner_params`` all / head /
  body (FOMAML: first order); their LIL runs are ``lil`` with the same inner loop (λ_amp = 0 for
  ANIL and BOIL: phase only, as the paper); the Table 5 ablation sets one weight to 0;
* FOMAML + LIL is ``lil-pretrain``: label-free BYOL-style LIL pretraining, then FOMAML (App. E,
  App. C). Its step 0 is Table 1's random init and the end of pretraining (the ``pretrained``
  milestone) its LIL-init, both meta-tested on the same fixed tasks;
* accuracy comparisons pair the same fixed test tasks and seeds (same init, same task stream).

Table 2's paper column is the run's dataset's (CUB, miniImageNet; miniImageNet's for Omniglot, marked);
ResNet-12 runs (model ``resnet12``) make the Table 4 analogue (mini → mini) and stay out of Tables 2 / 5.
Not built: tieredImageNet / Cars loaders and cross-domain meta-tests (Table 3, Table 4's other columns).
See docs/studies/lil2022.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from metaland.claims import (
    Claim,
    improves_at_milestone,
    improves_on,
    level,
    register,
    rule_parts,
    trend,
    where,
    within,
)
from metaland.config import AggregateConfig
from metaland.meta.lil_pretrain import PRETRAINED
from metaland.plots import curves_by_algorithm, grid, label, no_data, save, suptitle
from metaland.results import INITIAL, StudyTables, stratum_of
from metaland.stats import mean_ci, seed_level, seed_summary
from metaland.studies import STUDIES, Figure, StudySpec, Table

NAME = "lil2022"
SEED = "004"
BASELINES = ("maml", "fomaml", "anil", "boil")
LIL_OF = {"maml": "maml+lil", "fomaml": "fomaml+lil-pretrain", "anil": "anil+lil-phase", "boil": "boil+lil-phase"}
"""The paper's "+ LIL" of each baseline: both losses for MAML, the phase loss only for ANIL / BOIL, LIL
pretraining then FOMAML for FOMAML (§6, App. C, App. E)."""
ABLATION = ("maml", "maml+lil-phase", "maml+lil-amplitude", "maml+lil")
LEGEND = {
    "maml": "MAML",
    "maml+lil": "MAML + LIL",
    "fomaml": "FOMAML",
    "fomaml+lil-pretrain": "FOMAML + LIL (pretraining)",
    "maml+lil-phase": "MAML + PC (phase loss)",
    "maml+lil-amplitude": "MAML + AC (pseudo-amplitude loss)",
    "anil": "ANIL",
    "anil+lil-phase": "ANIL + LIL",
    "boil": "BOIL",
    "boil+lil-phase": "BOIL + LIL",
}
VARIANTS = tuple(LEGEND)
PAPER_TABLE2 = {
    # Table 2 (in-domain), 4-conv, % ± std over 3 runs: one column per dataset.
    "miniimagenet": {
        ("maml", 1): (47.88, 0.55),
        ("maml+lil", 1): (49.07, 0.14),
        ("fomaml", 1): (46.29, 0.94),
        ("fomaml+lil-pretrain", 1): (46.81, 0.87),
        ("anil", 1): (48.53, 0.76),
        ("anil+lil-phase", 1): (49.45, 0.31),
        ("boil", 1): (50.44, 1.00),
        ("boil+lil-phase", 1): (49.91, 0.34),
        ("maml", 5): (64.81, 1.63),
        ("maml+lil", 5): (66.34, 0.35),
        ("fomaml", 5): (62.91, 1.85),
        ("fomaml+lil-pretrain", 5): (65.05, 1.25),
        ("anil", 5): (63.74, 1.39),
        ("anil+lil-phase", 5): (66.55, 2.09),
        ("boil", 5): (66.34, 0.35),
        ("boil+lil-phase", 5): (67.09, 0.59),
    },
    "tieredimagenet": {
        ("maml", 1): (46.93, 1.07),
        ("maml+lil", 1): (49.29, 0.24),
        ("fomaml", 1): (46.96, 0.81),
        ("fomaml+lil-pretrain", 1): (47.86, 0.81),
        ("anil", 1): (50.09, 0.27),
        ("anil+lil-phase", 1): (50.33, 0.28),
        ("boil", 1): (50.56, 0.54),
        ("boil+lil-phase", 1): (50.48, 0.43),
        ("maml", 5): (66.12, 1.10),
        ("maml+lil", 5): (67.85, 0.67),
        ("fomaml", 5): (65.56, 0.89),
        ("fomaml+lil-pretrain", 5): (66.37, 0.27),
        ("anil", 5): (66.12, 1.11),
        ("anil+lil-phase", 5): (66.75, 0.72),
        ("boil", 5): (69.50, 0.57),
        ("boil+lil-phase", 5): (69.81, 0.17),
    },
    "cars": {
        ("maml", 1): (47.78, 0.99),
        ("maml+lil", 1): (49.53, 0.89),
        ("fomaml", 1): (47.91, 0.56),
        ("fomaml+lil-pretrain", 1): (48.45, 0.56),
        ("anil", 1): (49.49, 0.71),
        ("anil+lil-phase", 1): (50.62, 1.06),
        ("boil", 1): (56.30, 0.76),
        ("boil+lil-phase", 1): (56.51, 0.85),
        ("maml", 5): (62.24, 2.01),
        ("maml+lil", 5): (69.94, 0.24),
        ("fomaml", 5): (62.75, 1.55),
        ("fomaml+lil-pretrain", 5): (65.69, 3.52),
        ("anil", 5): (63.03, 0.95),
        ("anil+lil-phase", 5): (63.74, 1.11),
        ("boil", 5): (75.54, 0.22),
        ("boil+lil-phase", 5): (76.39, 0.02),
    },
    "cub": {
        ("maml", 1): (57.04, 1.42),
        ("maml+lil", 1): (58.06, 0.72),
        ("fomaml", 1): (57.46, 0.21),
        ("fomaml+lil-pretrain", 1): (58.01, 1.00),
        ("anil", 1): (58.54, 3.76),
        ("anil+lil-phase", 1): (57.87, 0.13),
        ("boil", 1): (63.14, 0.38),
        ("boil+lil-phase", 1): (62.93, 0.03),
        ("maml", 5): (72.48, 0.86),
        ("maml+lil", 5): (74.37, 0.49),
        ("fomaml", 5): (71.44, 0.34),
        ("fomaml+lil-pretrain", 5): (72.52, 0.22),
        ("anil", 5): (71.75, 0.75),
        ("anil+lil-phase", 5): (73.68, 0.63),
        ("boil", 5): (77.60, 0.12),
        ("boil+lil-phase", 5): (77.19, 0.21),
    },
}
"""Seed 004 Table 2: published in-domain accuracies (%, mean ± std over 3 runs), 5-way, 4-conv, keyed by
dataset (the project's dataset names) and then by (variant, shots)."""
PAPER_TABLE5 = {
    # Table 5 (ablation), miniImageNet → miniImageNet column, 4-conv, % ± std.
    ("maml+lil-phase", 1): (47.13, 0.30),
    ("maml+lil-amplitude", 1): (48.62, 0.29),
    ("maml+lil-phase", 5): (65.48, 0.30),
    ("maml+lil-amplitude", 5): (65.98, 0.50),
}
"""Seed 004 Table 5's MAML + PC / + AC rows (miniImageNet column); its MAML and MAML + LIL rows are Table 2's."""
PAPER_ACCURACY = PAPER_TABLE2["miniimagenet"] | PAPER_TABLE5
"""Seed 004's miniImageNet accuracies (Tables 2 and 5), keyed by (variant, shots): the claims quote them."""
PAPER_RESNET12 = {
    # Table 4, ResNet-12, meta-trained and meta-tested on miniImageNet (the mini → mini column), % ± std.
    ("maml", 1): (50.63, 1.70),
    ("maml+lil", 1): (52.72, 0.15),
    ("maml", 5): (71.32, 1.55),
    ("maml+lil", 5): (72.50, 0.94),
}
"""Seed 004 Table 4, mini → mini column (its last row reads "MAML + LIL (1)", sic: the 5-shot row, spec §Table 4).
The mini → tiered and mini → Cars columns are not built: the project has no tieredImageNet or Cars loader."""
PAPER_DATASETS = {"miniimagenet": "miniImageNet", "tieredimagenet": "tieredImageNet", "cars": "Cars", "cub": "CUB"}
"""The paper's name of each Table 2 column."""
RESNET12 = "ResNet12"
"""The backbone label of Table 4's runs; every other backbone's runs make the Table 2 / Table 5 analogues."""


def paper_column(dataset: str) -> str:
    """The Table 2 column shown beside a run on ``dataset``: its own, or miniImageNet's for a dataset the paper
    does not use (Omniglot in the default profile), marked by the ``paper_dataset`` column of the tables."""
    return dataset if dataset in PAPER_TABLE2 else "miniimagenet"


def paper_setting(dataset: str) -> str:
    return f"paper: {PAPER_DATASETS[paper_column(dataset)]} 5-way, 4-conv (Tables 2 and 5)"


def paper_accuracy(dataset: str, variant: str, shots: int) -> tuple[float, float]:
    """Table 2's (or, on miniImageNet, Table 5's) mean and std (%) for a run on ``dataset``; NaN where none."""
    column = paper_column(dataset)
    numbers = PAPER_TABLE2[column] | (PAPER_TABLE5 if column == "miniimagenet" else {})
    return numbers.get((variant, shots), (np.nan, np.nan))


PAPER_INIT_ACCURACY = {
    # Table 1, meta-trained and meta-tested on miniImageNet, 4-conv, % ± std.
    ("random", 1): (21.36, 0.01),
    ("lil", 1): (24.62, 0.04),
    ("random", 5): (21.29, 0.09),
    ("lil", 5): (27.32, 0.59),
}
"""Seed 004 Table 1 (miniImageNet → miniImageNet column): θ^0 of a random and of a LIL-pretrained init,
keyed by (init, shots); read as accuracy after the standard inner loop (spec §5 [interp])."""
INITS = {"random": INITIAL, "lil": PRETRAINED}
"""Table 1's rows and the milestones of a ``lil-pretrain`` run that hold them: step 0 and the end of pretraining."""
PRETRAINED_RUNS = where(algorithm="lil-pretrain")
GRADIENT_COSINE_THRESHOLD = 0.9
"""'The gradient barely changes through the inner loop' (§1, §4.1) read as cos(g^0, g^S) > 0.9 (< 26°);
the paper gives no number."""
LINEARITY_MARGIN = 0.1
"""How near 1 "PC and AC approach (settle near) 1" must be shown to be (TOST): within ± 0.1 at the final
checkpoints; the paper gives no number (spec §2: final values not recoverable)."""
LINEARITY = ("pc", "ac_jacobian", "ac_lossgrad", "gradient_cosine_final", "hessian_noise_ratio")
LABELS = {
    "pc": "phase consistency PC (eq. 3)",
    "ac_jacobian": "amplitude consistency AC, logit Jacobian (eq. 4)",
    "ac_lossgrad": "AC, support-loss gradient",
    "gradient_cosine_final": "cos(g⁰, gˢ) along the inner loop",
    "hessian_noise_ratio": "(α/2) gᵀHg / ‖g‖² (eq. 5)",
    "query_accuracy": "meta-test accuracy on the fixed probe tasks",
}


def _variant(name: str):
    return where(variant=name)


def _claim(slug: str, section: str, claim: str, rule: str, test, **extra) -> None:
    register(
        Claim(id=f"{NAME}-{slug}", study=NAME, seed=SEED, section=section, claim=claim, rule=rule, test=test, **extra)
    )


# --------------------------------------------------------------------------------------------
# Claims (rules fixed before the data)
# --------------------------------------------------------------------------------------------

SEEDS = "per stratum (dataset, backbone, ways, shots, inner steps and lr), t over seeds"

for _metric, _name in (("pc", "pc"), ("ac_jacobian", "ac")):
    _claim(
        f"maml-{_name}-approaches-one",
        "§4.1, Fig. 2",
        f"Over MAML meta-training, {_name.upper()} approaches 1: MAML becomes almost linear along the inner loop.",
        f"each MAML run gives its mean {_metric} over the fixed probe tasks at its final checkpoint; {SEEDS}: holds if "
        f"TOST shows the mean within 1 ± {LINEARITY_MARGIN} in every stratum; fails if it lies significantly outside "
        "in any; inconclusive otherwise",
        within(_metric, 1 - LINEARITY_MARGIN, 1 + LINEARITY_MARGIN, scope=_variant("maml")),
    )
    _deviation = "pc" if _name == "pc" else "ac_jacobian_deviation"
    _claim(
        f"lil-{_name}-faster",
        "§6 'Dynamics of LIL', Fig. 2",
        f"MAML + LIL satisfies the linearity condition much faster than MAML: {_name.upper()} closer to 1 along "
        "meta-training.",
        f"each seed gives its mean over the checkpoints after the initial one of MAML's minus MAML + LIL's "
        f"{_deviation} (same seed, same checkpoints); {SEEDS}: holds if it is significantly above 0; fails if "
        "significantly below 0; inconclusive otherwise",
        improves_on(_deviation, _variant("maml+lil"), _variant("maml"), better="lower", source="checkpoints"),
    )
_claim(
    "lil-converges-faster",
    "§6, Fig. 4",
    "MAML + LIL converges faster than MAML: higher accuracy along meta-training.",
    "each seed gives its mean over the checkpoints after the initial one of MAML + LIL's minus MAML's accuracy on the "
    f"fixed probe tasks (same seed, same checkpoints); {SEEDS}: holds if it is significantly above 0; fails if "
    "significantly below 0; inconclusive otherwise",
    improves_on("query_accuracy", _variant("maml+lil"), _variant("maml"), source="checkpoints"),
)
for _base in BASELINES:
    _claim(
        f"lil-improves-{_base}",
        "§6, Table 2",
        f"LIL improves the meta-test accuracy of {LEGEND[_base]} (paper, miniImageNet: "
        f"{PAPER_ACCURACY[(_base, 1)][0]} → {PAPER_ACCURACY[(LIL_OF[_base], 1)][0]} % 1-shot, "
        f"{PAPER_ACCURACY[(_base, 5)][0]} → {PAPER_ACCURACY[(LIL_OF[_base], 5)][0]} % 5-shot).",
        f"each seed gives its mean paired gain of {LEGEND[LIL_OF[_base]]} over {LEGEND[_base]} of the same seed on the "
        f"same fixed test tasks at the final checkpoints; {SEEDS}: holds if it is significantly above 0 in every "
        "stratum; fails if significantly below 0 in any; inconclusive otherwise (also when the profile lacks the runs)",
        improves_on("query_accuracy", _variant(LIL_OF[_base]), _variant(_base)),
        published_effect=min(
            PAPER_ACCURACY[(LIL_OF[_base], shots)][0] - PAPER_ACCURACY[(_base, shots)][0] for shots in (1, 5)
        )
        / 100,
    )
_claim(
    "lil-init-beats-random-init",
    "§4.2 'Linearity helps GBML work', Table 1",
    "A θ^0 pretrained only to make the inner loop linear, with no label of the outer loop, beats a random θ^0 "
    f"(paper, miniImageNet 5-way: {PAPER_INIT_ACCURACY[('random', 1)][0]} → {PAPER_INIT_ACCURACY[('lil', 1)][0]} % "
    f"1-shot, {PAPER_INIT_ACCURACY[('random', 5)][0]} → {PAPER_INIT_ACCURACY[('lil', 5)][0]} % 5-shot).",
    "each LIL-pretraining run gives its mean gain in accuracy after the standard inner loop (spec §5 [interp]: "
    "Table 1's number) of its θ^0 at the end of pretraining over its own step-0 θ^0, on the same fixed test tasks; "
    f"{SEEDS}: holds if it is significantly above 0; fails if significantly below 0; inconclusive otherwise (also "
    "without such runs)",
    improves_at_milestone("query_accuracy", PRETRAINED, scope=PRETRAINED_RUNS),
    published_effect=(PAPER_INIT_ACCURACY[("lil", 1)][0] - PAPER_INIT_ACCURACY[("random", 1)][0]) / 100,
)
_claim(
    "gradient-direction-stable",
    "§1, §4.1",
    "After meta-training, the inner-loop gradient barely changes direction: cos(g^0, g^S) is near 1.",
    f"each MAML run gives its mean cos(g^0, g^S) over the fixed tasks at its final checkpoint; {SEEDS}: holds if the "
    f"mean is significantly above {GRADIENT_COSINE_THRESHOLD}; fails if significantly below; inconclusive otherwise",
    level("gradient_cosine_final", GRADIENT_COSINE_THRESHOLD, scope=_variant("maml")),
)
_claim(
    "hessian-noise-shrinks",
    "§4.2, eq. 5",
    "Meta-training reduces the Hessian term of a large-lr inner step: (α/2) gᵀHg / ‖g‖² falls.",
    f"each MAML run gives Spearman ρ(step, mean Hessian-noise ratio) over its checkpoints; {SEEDS}: holds if the "
    "mean ρ is significantly below 0 in every stratum; fails if significantly above 0 in any; inconclusive otherwise",
    trend("hessian_noise_ratio", -1, scope=_variant("maml")),
)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _present(frame: pd.DataFrame, names=VARIANTS) -> list[str]:
    return [v for v in names if not frame.empty and v in set(frame["variant"])]


def _baseline_of(variant: str) -> str | None:
    """The baseline a LIL variant is compared with (MAML for the ablation), none for a baseline."""
    if variant in BASELINES:
        return None
    return next(base for base in BASELINES if variant.startswith(base))


def _is_resnet12(backbone: pd.Series) -> pd.Series:
    return backbone == RESNET12


def _is_4conv(backbone: pd.Series) -> pd.Series:
    return backbone != RESNET12


_table2_runs = where(backbone=_is_4conv)
"""The rows of the Table 2 / Table 5 runs (and of the figures): every backbone but ResNet-12."""

ACCURACY_COLUMNS = (
    "setting",
    "stratum",
    "variant",
    "baseline",
    "runs",
    "accuracy",
    "ci_low",
    "ci_high",
    "tasks_ci_low",
    "tasks_ci_high",
    "gain_over_baseline",
    "gain_ci_low",
    "gain_ci_high",
    "paper_dataset",
    "paper_accuracy",
    "paper_std",
    "paper_gain_over_baseline",
)
"""Columns of the Table 2 / 4 / 5 analogues (a table without runs keeps them: the report reads it back)."""

PaperNumbers = Callable[[str, str, int], tuple[float, float]]
"""``(dataset, variant, shots) -> (mean, std)`` in %, the paper's number shown beside a row."""


def _accuracy_rows(
    tables: StudyTables,
    cfg: AggregateConfig,
    names: tuple[str, ...],
    *,
    backbone: Callable[[pd.Series], pd.Series] = _is_4conv,
    paper: PaperNumbers = paper_accuracy,
    paper_dataset: Callable[[str], str] = paper_column,
) -> pd.DataFrame:
    """One row per (stratum, variant) of the runs whose backbone passes ``backbone``: our accuracy (mean and CI
    over seeds, each seed's mean over the fixed tasks; the field's CI over tasks × seeds beside it), the gain over
    the baseline of the same seed on the same tasks (CI over seeds), the paper's number and gain."""
    final = where(backbone=backbone)(tables.final_tasks)
    rows = []
    if final.empty:
        return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
    gains = {
        name: {
            p.stratum: p
            for p in rule_parts(
                improves_on(
                    "query_accuracy",
                    where(variant=name, backbone=backbone),
                    where(variant=_baseline_of(name), backbone=backbone),
                ),
                tables,
                cfg,
            )
        }
        for name in names
        if _baseline_of(name)
    }
    for (stratum, setting, dataset, shots), in_stratum in final.groupby(
        [stratum_of(final), "setting", "dataset", "shots"], sort=True
    ):
        for name in _present(in_stratum, names):
            mine = in_stratum[in_stratum["variant"] == name]
            base = _baseline_of(name)
            gain = gains.get(name, {}).get(stratum)
            mean, std = paper(dataset, name, shots)
            paper_base = paper(dataset, base, shots)[0] if base else np.nan
            rows.append(
                {
                    "setting": setting,
                    "stratum": stratum,
                    "variant": name,
                    "baseline": base or "",
                    "runs": mine["run"].nunique(),
                    **seed_summary(mine, "query_accuracy", cfg.confidence, "accuracy"),
                    "gain_over_baseline": gain.inference.estimate if gain else np.nan,
                    "gain_ci_low": gain.inference.ci_low if gain else np.nan,
                    "gain_ci_high": gain.inference.ci_high if gain else np.nan,
                    "paper_dataset": PAPER_DATASETS[paper_dataset(dataset)],
                    "paper_accuracy": mean / 100,
                    "paper_std": std / 100,
                    "paper_gain_over_baseline": (mean - paper_base) / 100,
                }
            )
    return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)


def accuracy_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Table 2 analogue: final meta-test accuracy of each baseline and its + LIL, the paired gain, and the paper's
    column of the run's dataset (miniImageNet's for a dataset the paper does not use; ``paper_dataset`` says which).
    4-conv (every backbone but ResNet-12) runs only."""
    return _accuracy_rows(tables, cfg, (*BASELINES, *LIL_OF.values()))


def ablation_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Table 5 analogue: MAML, + phase loss only, + pseudo-amplitude loss only, + both."""
    return _accuracy_rows(tables, cfg, ABLATION)


def _paper_resnet12(dataset: str, variant: str, shots: int) -> tuple[float, float]:
    return PAPER_RESNET12.get((variant, shots), (np.nan, np.nan))


def resnet12_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Table 4 analogue: ResNet-12 MAML vs MAML + LIL, 1- and 5-shot, beside Table 4's mini → mini column
    (``paper_dataset`` = miniImageNet whatever our dataset; the cross-domain columns are not built)."""
    return _accuracy_rows(
        tables,
        cfg,
        ("maml", "maml+lil"),
        backbone=_is_resnet12,
        paper=_paper_resnet12,
        paper_dataset=lambda dataset: "miniimagenet",
    )


INIT_COLUMNS = (
    "setting",
    "stratum",
    "init",
    "step",
    "runs",
    "accuracy",
    "ci_low",
    "ci_high",
    "pre_adaptation_accuracy",
    "pre_ci_low",
    "pre_ci_high",
    "chance",
    "gain_over_random",
    "gain_ci_low",
    "gain_ci_high",
    "paper_accuracy",
    "paper_std",
)
"""Columns of the Table 1 analogue: accuracy after the inner loop (± CI), raw θ^0 accuracy (± CI), chance,
the paired gain of the LIL-init over the random init (± CI), the paper's number."""


def init_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Table 1 analogue: random vs LIL-pretrained θ^0 of the ``lil-pretrain`` runs, per setting.

    ``accuracy`` is after the standard inner loop from θ^0 (Table 1's number, spec §5 [interp]);
    the paper's number is Table 1's mini → mini column (for Omniglot too; none for CUB, which Table 1 meta-tests
    on only after Cars); ``pre_adaptation_accuracy`` is θ^0's own query accuracy, ≈ 1/N for any θ^0 under random
    class order (the sanity check); the gain is paired over the same fixed tasks and seeds."""
    milestones = PRETRAINED_RUNS(tables.milestone_tasks)
    rows: list[dict] = []
    if milestones.empty or "milestone" not in milestones:
        return pd.DataFrame(rows, columns=INIT_COLUMNS)  # the header only: the report reads an empty table
    gains = {
        p.stratum: p
        for p in rule_parts(improves_at_milestone("query_accuracy", PRETRAINED, scope=PRETRAINED_RUNS), tables, cfg)
    }
    for (stratum, setting, dataset, shots, ways), group in milestones.groupby(
        [stratum_of(milestones), "setting", "dataset", "shots", "ways"], sort=True
    ):
        for init, milestone in INITS.items():
            mine = group[group["milestone"] == milestone]
            if mine.empty:
                continue
            adapted = seed_level(mine, "query_accuracy", cfg.confidence)
            raw = seed_level(mine, "pre_query_accuracy", cfg.confidence)
            gain = gains.get(stratum) if init != "random" else None
            in_paper = paper_column(dataset) == "miniimagenet"  # Table 1's only in-domain column is mini → mini
            paper, paper_std = PAPER_INIT_ACCURACY.get((init, shots), (np.nan, np.nan)) if in_paper else (np.nan,) * 2
            rows.append(
                {
                    "setting": setting,
                    "stratum": stratum,
                    "init": init,
                    "step": int(mine["step"].iloc[0]),
                    "runs": mine["run"].nunique(),
                    "accuracy": adapted.estimate,
                    "ci_low": adapted.ci_low,
                    "ci_high": adapted.ci_high,
                    "pre_adaptation_accuracy": raw.estimate,
                    "pre_ci_low": raw.ci_low,
                    "pre_ci_high": raw.ci_high,
                    "chance": 1 / ways,
                    "gain_over_random": gain.inference.estimate if gain else np.nan,
                    "gain_ci_low": gain.inference.ci_low if gain else np.nan,
                    "gain_ci_high": gain.inference.ci_high if gain else np.nan,
                    "paper_accuracy": paper / 100,
                    "paper_std": paper_std / 100,
                }
            )
    return pd.DataFrame(rows, columns=INIT_COLUMNS)


def final_checkpoints(checkpoints: pd.DataFrame) -> pd.DataFrame:
    return checkpoints[checkpoints["step"] == checkpoints.groupby("run")["step"].transform("max")]


def linearity_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Per stratum (setting, backbone, inner steps and lr, ...) × variant: the linearity measures at the initial
    and final checkpoints (mean over seeds)."""
    rows = []
    checkpoints = tables.checkpoints
    first = checkpoints[checkpoints["step"] == 0]
    for moment, frame in (("initial", first), ("final", final_checkpoints(checkpoints))):
        keys = [stratum_of(frame), "setting", "backbone", "variant"]
        for (stratum, setting, backbone, name), group in frame.groupby(keys, sort=True) if not frame.empty else []:
            row = {"setting": setting, "stratum": stratum, "backbone": backbone, "variant": name, "checkpoint": moment}
            row["step"] = int(group["step"].max())
            row |= {metric: group[metric].mean() for metric in (*LINEARITY, "ac_jacobian_deviation")}
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _curves(ax, frame: pd.DataFrame, metric: str, title: str, *, reference: float | None = None) -> None:
    shown = frame[frame["variant"].isin(VARIANTS)]
    if shown.empty or metric not in shown:
        no_data(ax, title, "lil2022 runs")
        return
    curves_by_algorithm(ax, shown, metric, title=title, key="variant", names=LEGEND)
    if reference is not None:
        ax.axhline(reference, color="black", linewidth=0.8, linestyle=":")
    ax.set_ylabel(LABELS.get(metric, label(metric)))


def fig_linearity(tables: StudyTables, path: Path) -> None:
    """Fig. 2: PC and AC (both readings), gradient change and Hessian-noise ratio over meta-training (4-conv runs;
    the ResNet-12 runs' measures are in the linearity table)."""
    fig, axes = grid(len(LINEARITY), columns=3, width=4.4, height=3.4)
    for ax, metric, letter in zip(axes, LINEARITY, "abcde", strict=True):
        reference = 1.0 if metric in ("pc", "ac_jacobian", "ac_lossgrad", "gradient_cosine_final") else None
        _curves(ax, _table2_runs(tables.checkpoints), metric, f"({letter}) {LABELS[metric]}", reference=reference)
    suptitle(fig, "Linearity of the inner loop over meta-training (seed 004 Fig. 2; dotted: 1 = linear)")
    save(fig, path)


def fig_accuracy(tables: StudyTables, path: Path) -> None:
    """Fig. 4: accuracy over meta-training; the final accuracy on one dataset beside the paper's column for it.
    4-conv runs only (the ResNet-12 runs are Table 4's)."""
    fig, axes = grid(3, columns=3, width=4.4, height=3.4)
    _curves(axes[0], _table2_runs(tables.checkpoints), "query_accuracy", "(a) accuracy over meta-training (Fig. 4)")
    log = _table2_runs(tables.train_log)
    if log.empty:
        no_data(axes[1], "(b) meta-training query accuracy", "training logs")
    else:
        curves_by_algorithm(
            axes[1],
            log,
            "query_accuracy",
            title="(b) meta-training: query accuracy after the inner loop",
            key="variant",
            names=LEGEND,
        )
        axes[1].set_ylabel("meta-train query accuracy (running mean)")
    final = _table2_runs(tables.final_tasks)
    present = _present(final)
    if not present:
        no_data(axes[2], "(c) final accuracy", "lil2022 runs")
    else:
        dataset = min(final["dataset"])  # one dataset's runs beside the paper's column for it
        final = final[final["dataset"] == dataset]
        present = _present(final)
        ours = [mean_ci(final[final["variant"] == n]["query_accuracy"], 0.95).mean for n in present]
        shots = int(final["shots"].min())
        paper = [paper_accuracy(dataset, n, shots)[0] / 100 for n in present]
        x = np.arange(len(present))
        axes[2].bar(x - 0.2, ours, width=0.4, label="ours", color="#1f77b4")
        axes[2].bar(x + 0.2, paper, width=0.4, label=f"{paper_setting(dataset)}, {shots}-shot", color="#999999")
        axes[2].set_xticks(x, [LEGEND[n] for n in present], rotation=30, ha="right")
        axes[2].set_ylabel("final meta-test accuracy")
        axes[2].set_title("(c) final accuracy: ours vs the paper's")
        axes[2].set_ylim(0, 1.15)
        axes[2].legend(loc="upper left", fontsize=7)
    suptitle(fig, "MAML ± LIL: accuracy (seed 004 Fig. 4, Tables 2 and 5)")
    save(fig, path)


STUDIES.register(
    NAME,
    StudySpec(
        name=NAME,
        seed=SEED,
        title="LIL 2022 — linearity of the inner loop (PC, AC), the LIL regulariser on MAML / ANIL / BOIL and LIL "
        "pretraining for FOMAML",
        figures=(
            Figure(
                "linearity",
                "Fig. 2 analogue: phase and amplitude consistency, gradient change and the Hessian-noise ratio "
                "of the inner loop on fixed test tasks, over meta-training.",
                fig_linearity,
            ),
            Figure(
                "accuracy",
                "Fig. 4 analogue: accuracy over meta-training, and the final accuracy beside the paper's.",
                fig_accuracy,
            ),
        ),
        tables=(
            Table(
                "accuracy",
                "Table 2 analogue: baselines ± LIL (4-conv), ours beside the paper's column of our dataset "
                "(miniImageNet for Omniglot)",
                accuracy_table,
            ),
            Table(
                "init",
                "Table 1 analogue: random vs LIL-pretrained θ^0 (accuracy after the inner loop; raw θ^0 ≈ 1/N), "
                "ours beside the paper's (miniImageNet)",
                init_table,
            ),
            Table(
                "resnet12",
                "Table 4 analogue: ResNet-12 MAML ± LIL, ours beside the paper's (miniImageNet → miniImageNet)",
                resnet12_table,
            ),
            Table("ablation", "Table 5 analogue: MAML + phase loss, + pseudo-amplitude loss, + both", ablation_table),
            Table("linearity", "Linearity measures at the initial and final checkpoints", linearity_table),
        ),
    ),
)
