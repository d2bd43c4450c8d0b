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

Table 2's paper column is the run's dataset's (miniImageNet, tieredImageNet, Cars, CUB; miniImageNet's for
Omniglot, marked); ResNet-12 runs (model ``resnet12``) make the Table 4 analogue and stay out of Tables 2 / 5.
Cross-domain meta-tests (Tables 1, 3-5: meta-train on one dataset, meta-test on another's test split) are the
probe keys ``adaptation@<dataset>`` of a run's probe set; each table shows every published cell, ours beside it
where a run of the profile measured it, "not run at this scale" where none did.
See docs/studies/lil2022.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from metaland.claims import (
    Claim,
    beside,
    contrast,
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
from metaland.data.registry import registered_name
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
PRETRAINED_SUBSETS = ("anil+lil-pretrain", "boil+lil-pretrain")
"""ANIL and BOIL after LIL pretraining: not rows of the paper (its ANIL / BOIL + LIL are the phase regulariser), run in
the paper profile because App. C leaves open whether those were pretrained too (spec §6.4); Table 2's table shows
them with their gain over ANIL / BOIL and no number of the paper."""
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
    "anil+lil-pretrain": "ANIL + LIL (pretraining)",
    "boil+lil-pretrain": "BOIL + LIL (pretraining)",
}
"""Every variant tables and figures show, with its legend name (the last two: ``PRETRAINED_SUBSETS``)."""
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
PAPER_NAMES = {
    "MAML": "maml",
    "MAML + LIL": "maml+lil",
    "FOMAML": "fomaml",
    "FOMAML + LIL": "fomaml+lil-pretrain",
    "ANIL": "anil",
    "ANIL + LIL": "anil+lil-phase",
    "BOIL": "boil",
    "BOIL + LIL": "boil+lil-phase",
    "MAML + PC": "maml+lil-phase",
    "MAML + AC": "maml+lil-amplitude",
    "Random-init": "random",
    "LIL-init": "lil",
}
"""The paper's row names and metaland's variant (init, for Table 1) names."""
MINI, TIERED, CARS, CUB = "miniimagenet", "tieredimagenet", "cars", "cub"
Cells = dict[tuple[str, str], dict[tuple[str, int], tuple[float, float]]]
"""A table of the paper: (meta-train dataset, meta-test dataset) -> (row, shots) -> (mean, std) in %."""


def _cells(text: str, columns: tuple[tuple[str, str], ...]) -> Cells:
    """A table of the paper as printed, one line per row: ``Name (shots) | mean ± std | ...`` (one cell per
    column of ``columns``; Table 3's cells without spaces, to fit a line); the lines are copied from the seed
    (spec §8), so they can be read against it."""
    cells: Cells = {column: {} for column in columns}
    for line in text.strip().splitlines():
        name, *values = (part.strip() for part in line.split("|"))
        row, shots = name.rsplit(" (", 1)
        for column, value in zip(columns, values, strict=True):
            mean, std = (float(v) for v in value.split("±"))
            cells[column][(PAPER_NAMES[row], int(shots.rstrip(")")))] = (mean, std)
    return cells


PAPER_TABLE1 = _cells(
    """
    Random-init (1) | 21.36 ± 0.01 | 21.20 ± 0.01 | 21.10 ± 0.93 | 21.20 ± 0.93 | 21.62 ± 0.02 | 21.36 ± 0.01
    LIL-init (1) | 24.62 ± 0.04 | 23.80 ± 0.06 | 24.63 ± 0.04 | 25.84 ± 0.06 | 25.86 ± 0.03 | 26.48 ± 0.04
    Random-init (5) | 21.29 ± 0.09 | 21.72 ± 0.19 | 21.58 ± 0.37 | 21.58 ± 0.04 | 22.31 ± 0.06 | 21.28 ± 0.09
    LIL-init (5) | 27.32 ± 0.59 | 31.28 ± 1.68 | 29.10 ± 1.81 | 28.28 ± 0.79 | 30.34 ± 2.69 | 26.61 ± 1.05
    """,
    ((MINI, MINI), (MINI, TIERED), (MINI, CARS), (CARS, CARS), (CARS, CUB), (CARS, MINI)),
)
"""Seed 004 Table 1: θ^0 of a random and of a LIL-pretrained init (4-conv), meta-train → meta-test; read as
accuracy after the standard inner loop (spec §5 [interp])."""
PAPER_TABLE3 = _cells(
    """
    MAML (1) | 47.52±1.66|51.84±0.24|34.41±0.47|40.91±0.57|28.67±1.17|30.79±1.17|32.74±1.12|30.95±1.41
    MAML + LIL (1) | 50.09±0.39|53.03±0.14|34.54±0.31|40.48±0.40|28.73±0.62|30.87±0.38|32.98±0.60|31.11±0.70
    FOMAML (1) | 47.30±0.95|49.62±1.54|34.35±0.30|40.86±0.83|28.49±0.76|31.06±0.22|33.57±0.84|31.52±0.34
    FOMAML + LIL (1) | 48.81±0.76|50.73±1.15|34.73±0.12|41.48±0.37|29.47±0.27|31.26±0.22|33.53±0.40|30.98±1.19
    ANIL (1) | 51.04±0.11|52.76±0.28|34.10±0.50|40.37±1.23|28.26±0.65|29.86±0.74|32.87±2.70|30.68±1.86
    ANIL + LIL (1) | 51.19±0.62|53.08±0.45|34.07±0.20|40.08±0.40|29.73±0.73|30.62±1.04|32.48±0.18|30.48±1.20
    BOIL (1) | 51.50±0.81|53.99±0.20|36.78±0.37|44.36±0.38|33.94±0.75|33.82±0.38|35.46±0.21|34.37±0.37
    BOIL + LIL (1) | 52.05±0.10|54.13±0.34|36.78±0.44|44.56±0.77|34.40±0.25|33.79±0.50|35.60±0.33|34.53±0.23
    MAML (5) | 66.86±1.58|67.96±1.22|46.57±0.53|56.32±1.17|37.23±1.95|41.00±1.86|44.02±2.29|41.84±1.25
    MAML + LIL (5) | 69.25±0.50|69.47±0.35|48.86±0.71|58.58±1.08|43.09±1.24|46.01±1.41|44.26±1.44|46.06±2.10
    FOMAML (5) | 66.04±0.89|66.39±1.05|45.48±2.78|57.03±0.84|37.48±1.36|41.11±1.93|43.32±2.62|40.53±3.58
    FOMAML + LIL (5) | 66.31±0.27|67.96±0.87|47.80±0.30|57.10±0.44|39.59±0.75|43.28±0.59|44.80±0.22|43.50±1.65
    ANIL (5) | 67.08±0.19|67.08±1.38|42.38±1.57|56.60±2.60|38.09±1.50|41.29±3.04|41.27±1.41|42.00±1.28
    ANIL + LIL (5) | 68.05±2.32|67.23±1.69|45.38±2.49|56.31±3.98|38.47±1.32|41.39±0.55|43.40±0.52|42.52±2.29
    BOIL (5) | 70.12±0.67|70.00±0.12|53.57±1.46|62.15±0.52|45.40±0.25|45.69±0.10|48.52±0.19|48.45±0.19
    BOIL + LIL (5) | 70.83±0.10|69.83±0.33|53.45±0.20|62.03±1.58|45.68±0.34|45.80±0.43|48.35±0.77|48.35±0.92
    """,
    (
        (TIERED, MINI),
        (MINI, TIERED),
        (MINI, CARS),
        (MINI, CUB),
        (CARS, MINI),
        (CARS, TIERED),
        (CUB, CARS),
        (CARS, CUB),
    ),
)
"""Seed 004 Table 3 (cross-domain, 4-conv); its garbled header read as in spec §8 [interp] (columns 2, 3, 5 and 8
equal Table 5's mini → tiered, mini → Cars, Cars → mini and Cars → CUB)."""
PAPER_TABLE4 = _cells(
    """
    MAML (1) | 50.63 ± 1.70 | 54.33 ± 1.02 | 35.41 ± 1.01
    MAML + LIL (1) | 52.72 ± 0.15 | 54.66 ± 0.58 | 35.75 ± 0.29
    MAML (5) | 71.32 ± 1.55 | 74.01 ± 1.69 | 45.75 ± 0.89
    MAML + LIL (5) | 72.50 ± 0.94 | 75.13 ± 1.35 | 48.21 ± 0.49
    """,
    ((MINI, MINI), (MINI, TIERED), (MINI, CARS)),
)
"""Seed 004 Table 4, ResNet-12 meta-trained on miniImageNet. Its last row reads "MAML + LIL (1)", sic: the 5-shot row
(spec §Table 4); the middle column's header is missing, read as tieredImageNet [interp]."""
PAPER_TABLE5 = _cells(
    """
    MAML (1) | 47.88 ± 0.55 | 51.84 ± 0.24 | 34.19 ± 0.66 | 47.77 ± 0.99 | 28.66 ± 1.17 | 30.95 ± 1.41
    MAML + PC (1) | 47.13 ± 0.30 | 50.95 ± 0.65 | 34.55 ± 0.82 | 49.04 ± 1.54 | 28.76 ± 0.17 | 31.02 ± 0.16
    MAML + AC (1) | 48.62 ± 0.29 | 52.53 ± 0.47 | 34.34 ± 0.35 | 49.53 ± 0.07 | 28.83 ± 0.12 | 30.82 ± 0.49
    MAML + LIL (1) | 49.07 ± 0.14 | 53.03 ± 0.14 | 34.54 ± 0.31 | 49.53 ± 0.89 | 28.73 ± 0.62 | 31.11 ± 0.70
    MAML (5) | 64.81 ± 1.63 | 67.96 ± 1.22 | 46.67 ± 0.53 | 62.24 ± 2.01 | 37.23 ± 1.95 | 41.84 ± 1.25
    MAML + PC (5) | 65.48 ± 0.30 | 68.63 ± 0.34 | 48.09 ± 0.82 | 65.07 ± 0.85 | 39.37 ± 0.88 | 42.79 ± 0.85
    MAML + AC (5) | 65.98 ± 0.50 | 69.01 ± 0.06 | 46.37 ± 1.15 | 67.27 ± 0.92 | 37.66 ± 2.29 | 39.01 ± 2.43
    MAML + LIL (5) | 66.34 ± 0.35 | 69.47 ± 0.35 | 48.86 ± 0.71 | 69.94 ± 0.24 | 43.09 ± 1.23 | 46.06 ± 2.10
    """,
    ((MINI, MINI), (MINI, TIERED), (MINI, CARS), (CARS, CARS), (CARS, MINI), (CARS, CUB)),
)
"""Seed 004 Table 5 (ablation, 4-conv MAML): + PC = the phase loss alone, + AC = the pseudo-amplitude loss alone.
A few cells differ from Tables 2 and 3 by a hundredth (spec §8); each table shows its own."""
PAPER_TABLE2_CELLS: Cells = {(dataset, dataset): column for dataset, column in PAPER_TABLE2.items()}
PAPER_ACCURACY = PAPER_TABLE2[MINI] | {
    key: value
    for key, value in PAPER_TABLE5[(MINI, MINI)].items()
    if key[0] in ("maml+lil-phase", "maml+lil-amplitude")
}
"""Seed 004's miniImageNet accuracies (Tables 2 and 5), keyed by (variant, shots): the claims quote them."""
PAPER_RESNET12 = PAPER_TABLE4[(MINI, MINI)]
PAPER_DATASETS = {MINI: "miniImageNet", TIERED: "tieredImageNet", CARS: "Cars", CUB: "CUB"}
"""The paper's name of each dataset (its tables' columns)."""
RESNET12 = "ResNet12"
"""The backbone label of Table 4's runs; every other backbone's runs make the Table 2 / Table 5 analogues."""


def paper_dataset_of(dataset: str) -> str | None:
    """The paper's dataset a run's dataset is (a variant such as ``cars-224`` is ``cars``), or None."""
    name = registered_name(dataset)
    return name if name in PAPER_DATASETS else None


def paper_column(dataset: str) -> str:
    """The Table 2 column shown beside a run on ``dataset``: its own, or miniImageNet's for a dataset the paper
    does not use (Omniglot in the default profile), marked by the ``paper_dataset`` column of the tables."""
    return paper_dataset_of(dataset) or MINI


def paper_setting(dataset: str) -> str:
    return f"paper: {PAPER_DATASETS[paper_column(dataset)]} 5-way, 4-conv (Tables 2 and 5)"


def paper_accuracy(dataset: str, variant: str, shots: int) -> tuple[float, float]:
    """Table 2's (or, on miniImageNet, Table 5's) mean and std (%) for a run on ``dataset``; NaN where none."""
    column = paper_column(dataset)
    numbers = PAPER_TABLE2[column] | (PAPER_ACCURACY if column == MINI else {})
    return numbers.get((variant, shots), (np.nan, np.nan))


PAPER_INIT_ACCURACY = PAPER_TABLE1[(MINI, MINI)]
"""Seed 004 Table 1's miniImageNet → miniImageNet column, keyed by (init, shots)."""
INITS = {"random": INITIAL, "lil": PRETRAINED}
"""Table 1's rows and the milestones of a ``lil-pretrain`` run that hold them: step 0 and the end of pretraining."""
PRETRAINED_RUNS = where(algorithm="lil-pretrain")
GRADIENT_COSINE_THRESHOLD = 0.9
"""'The gradient barely changes through the inner loop' (§1, §4.1) read as cos(g^0, g^S) > 0.9 (< 26°);
the paper gives no number."""
LINEARITY_MARGIN = 0.1
"""How near 1 "PC and AC approach (settle near) 1" must be shown to be (TOST): within ± 0.1 at the final
checkpoints; the paper gives no number (spec §2: final values not recoverable)."""
ABLATION_TERMS = {"phase": "maml+lil-phase", "amplitude": "maml+lil-amplitude"}
"""Table 5's "MAML + PC" (the phase loss alone, eq. 7) and "MAML + AC" (the pseudo-amplitude loss alone, eq. 9), each
tested against MAML by ``lil-<term>-improves-maml``."""
ABLATION_COLUMNS = ((MINI, MINI), (CARS, CARS))
"""Table 5's in-domain columns, the cells the ablation claims quote (the claims stay in-domain, as Table 2's)."""
GAIN_GAP_ARMS = {
    "maml+lil": 0.5,
    "maml": -0.5,
    "fomaml+lil-pretrain": 0.5,
    "fomaml": -0.5,
    "anil+lil-phase": -0.5,
    "anil": 0.5,
    "boil+lil-phase": -0.5,
    "boil": 0.5,
}
"""§6 "performance gain is larger in MAML and FOMAML compared to ANIL and BOIL" as one difference of differences:
the mean of MAML's and FOMAML's LIL gains minus the mean of ANIL's and BOIL's, all eight arms of one seed paired on
the same fixed tasks in one stratum (variant -> weight of its accuracy). The paper's Table 2 gives it between +0.06
(miniImageNet 5-shot) and +4.54 points (Cars 5-shot); a reading baseline by baseline would fail on the paper's own
table (miniImageNet 5-shot: ANIL +2.81 against MAML +1.53)."""
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


def _is_resnet12(backbone: pd.Series) -> pd.Series:
    return backbone == RESNET12


def _is_4conv(backbone: pd.Series) -> pd.Series:
    return backbone != RESNET12


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
for _term, _name in ABLATION_TERMS.items():
    _gains = {
        (column, shots): PAPER_TABLE5[column][(_name, shots)][0] - PAPER_TABLE5[column][("maml", shots)][0]
        for column in ABLATION_COLUMNS
        for shots in (1, 5)
    }
    _claim(
        f"lil-{_term}-improves-maml",
        "§6 'Dynamics of LIL', Table 5",
        f"Each LIL term is effective by itself ('We can verify that both terms are effective by itself'): "
        f"{LEGEND[_name]} alone improves MAML's meta-test accuracy (paper, Table 5 in-domain: miniImageNet "
        f"{PAPER_TABLE5[(MINI, MINI)][('maml', 1)][0]} → {PAPER_TABLE5[(MINI, MINI)][(_name, 1)][0]} % 1-shot, "
        f"{PAPER_TABLE5[(MINI, MINI)][('maml', 5)][0]} → {PAPER_TABLE5[(MINI, MINI)][(_name, 5)][0]} % 5-shot; Cars "
        f"{PAPER_TABLE5[(CARS, CARS)][('maml', 1)][0]} → {PAPER_TABLE5[(CARS, CARS)][(_name, 1)][0]} %, "
        f"{PAPER_TABLE5[(CARS, CARS)][('maml', 5)][0]} → {PAPER_TABLE5[(CARS, CARS)][(_name, 5)][0]} %).",
        f"'effective' read as a higher in-domain accuracy than MAML: each seed gives its mean paired gain of "
        f"{LEGEND[_name]} over MAML of the same seed on the same fixed test tasks of its own dataset at the final "
        f"checkpoints, read only in the strata that have {LEGEND[_name]} runs (the paper profile's miniImageNet and "
        "Cars, 4-conv, 1- and 5-shot; the default profile has none: inconclusive there); "
        f"{SEEDS}: holds if it is significantly above 0 in every stratum; fails if significantly below 0 in any; "
        "inconclusive otherwise. Table 5's cross-domain columns are not read",
        improves_on("query_accuracy", _variant(_name), beside(_variant("maml"), _variant(_name))),
        published_effect=min(_gains.values()) / 100,
    )
_gaps = {
    (dataset, shots): sum(
        weight * PAPER_TABLE2[dataset][(variant, shots)][0] for variant, weight in GAIN_GAP_ARMS.items()
    )
    for dataset in PAPER_TABLE2
    for shots in (1, 5)
}
_claim(
    "lil-gain-larger-maml-fomaml-than-anil-boil",
    "§6 'Performance of LIL', Table 2",
    "'It can be seen that performance gain is larger in MAML and FOMAML compared to ANIL and BOIL' (paper, Table 2: "
    f"the mean gain of MAML and FOMAML exceeds that of ANIL and BOIL by {min(_gaps.values()):.2f} to "
    f"{max(_gaps.values()):.2f} points across its eight in-domain cells).",
    "a difference of differences, read as a comparison of the two groups: each seed gives its mean over the same "
    "fixed test tasks of ½(MAML + LIL − MAML) + ½(FOMAML + LIL − FOMAML) − ½(ANIL + LIL − ANIL) − ½(BOIL + LIL − "
    "BOIL), every arm of the same seed at its final checkpoint on its own dataset (GAIN_GAP_ARMS), 4-conv runs "
    f"only; {SEEDS}, never across datasets or backbones: holds if it is significantly above 0 in every stratum; fails "
    "if significantly below 0 in any; inconclusive otherwise, also where a stratum lacks one of the eight arms (the "
    "default profile has no ANIL / BOIL runs: inconclusive there; the paper profile has all eight on its four "
    "datasets, 1- and 5-shot). Each baseline against each other one is not tested",
    contrast(
        "query_accuracy",
        {variant: (where(variant=variant, backbone=_is_4conv), weight) for variant, weight in GAIN_GAP_ARMS.items()},
        name="mean paired ½(MAML, FOMAML LIL gains) − ½(ANIL, BOIL LIL gains) in query_accuracy on the same tasks, "
        "per seed",
    ),
    published_effect=min(_gaps.values()) / 100,
)
_claim(
    "lil-improves-maml-resnet12",
    "§6 'Performance of LIL', Table 4",
    "'We can also confirm that LIL also works on different architectures': LIL improves MAML's meta-test accuracy "
    f"with a ResNet-12 backbone (paper, miniImageNet: {PAPER_RESNET12[('maml', 1)][0]} → "
    f"{PAPER_RESNET12[('maml+lil', 1)][0]} % 1-shot, {PAPER_RESNET12[('maml', 5)][0]} → "
    f"{PAPER_RESNET12[('maml+lil', 5)][0]} % 5-shot).",
    "each ResNet-12 seed gives its mean paired gain of MAML + LIL over MAML of the same seed (both ResNet-12) on the "
    f"same fixed test tasks of its own dataset at the final checkpoints; {SEEDS} (the ResNet-12 runs are strata of "
    "their own, never pooled with the 4-conv ones): holds if it is significantly above 0 in every stratum; fails if "
    "significantly below 0 in any; inconclusive otherwise (only the paper profile has ResNet-12 runs: miniImageNet, "
    "1- and 5-shot; the default profile is inconclusive). Table 4's cross-domain columns are not read",
    improves_on(
        "query_accuracy", where(variant="maml+lil", backbone=RESNET12), where(variant="maml", backbone=RESNET12)
    ),
    published_effect=min(PAPER_RESNET12[("maml+lil", s)][0] - PAPER_RESNET12[("maml", s)][0] for s in (1, 5)) / 100,
)
FINN_MAML_5SHOT = 0.6311
"""App. C: Finn et al. (2017)'s MAML, miniImageNet 5-way 5-shot (5 inner steps in training, 10 at test)."""
_claim(
    "maml-beats-finn-5shot",
    "App. C 'Fine-tuning of learning rate in the inner loop'",
    f"With the paper's tuned inner loop (α = 0.5, 3 steps in training and at test), MAML on miniImageNet 5-way 5-shot "
    f"(4-conv) reaches more than Finn et al.'s published {FINN_MAML_5SHOT:.2%} (paper: "
    f"{PAPER_ACCURACY[('maml', 5)][0]} %).",
    f"a check of the rebuild's level, the comparison the paper makes (its number against Finn et al.'s published "
    f"one; no profile runs Finn et al.'s protocol beside it): each seed's mean accuracy over the fixed test tasks at "
    f"the final checkpoint; {SEEDS}: holds if the mean is significantly above {FINN_MAML_5SHOT}; fails if "
    "significantly below; inconclusive otherwise (only the paper profile trains MAML on miniImageNet)",
    level(
        "query_accuracy",
        FINN_MAML_5SHOT,
        scope=where(variant="maml", dataset=MINI, shots=5, backbone=_is_4conv),
    ),
    category="check",
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


_table2_runs = where(backbone=_is_4conv)
"""The rows of the Table 2 / Table 5 runs (and of the figures): every backbone but ResNet-12."""

ACCURACY_COLUMNS = (
    "setting",
    "stratum",
    "target",
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
    "paper_source",
    "paper_target",
    "shots",
    "paper_dataset",
    "paper_accuracy",
    "paper_std",
    "paper_gain_over_baseline",
)
"""Columns of the Table 2-5 analogues (a table without runs keeps them: the report reads it back). ``target`` is the
dataset meta-tested on (the run's own, or another's test split: cross-domain); ``paper_source`` / ``paper_target``
are the paper's datasets of the row (empty where ours is not one of them), what a published cell is matched on."""
ACCURACY_MATCH = ("paper_source", "paper_target", "variant", "shots")
METRIC = "query_accuracy"
CROSS = "@"

Domain = Literal["in", "cross", "all"]
PaperLookup = Callable[[str, str, str, int], tuple[str | None, float, float]]
"""``(dataset, target, variant, shots) -> (paper's column name, mean, std)``: the paper's number beside a row."""


def targets_of(frame: pd.DataFrame, dataset: str, domain: Domain, metric: str = METRIC) -> dict[str, str]:
    """Target dataset -> the column of ``metric`` measured on it, for runs on ``dataset``: the run's own test tasks
    (in-domain) and every other dataset's a `<probe>@<dataset>` key measured (cross-domain), where the runs have
    values."""
    found = {dataset: metric} if domain != "cross" and metric in frame else {}
    if domain != "in":
        for column in sorted(c for c in frame.columns if c.startswith(metric + CROSS) and "/" not in c):
            if frame[column].notna().any():
                found[column.partition(CROSS)[2]] = column
    return found


def _label(source: str | None, target: str | None) -> str | None:
    if source is None or target is None:
        return None
    return PAPER_DATASETS[source] if source == target else f"{PAPER_DATASETS[source]} → {PAPER_DATASETS[target]}"


def cells_lookup(cells: Cells, *, stand_in: bool = True) -> PaperLookup:
    """The paper's numbers of ``cells`` for a row: the cell of (its dataset, its target) in the paper's names; an
    in-domain row on a dataset the paper does not use shows miniImageNet → miniImageNet when ``stand_in`` (marked
    by ``paper_dataset``)."""

    def lookup(dataset: str, target: str, variant: str, shots: int) -> tuple[str | None, float, float]:
        source, goal = paper_dataset_of(dataset), paper_dataset_of(target)
        if stand_in and dataset == target and source is None:
            source = goal = MINI
        mean, std = cells.get((source, goal), {}).get((variant, shots), (np.nan, np.nan))  # type: ignore[arg-type]
        return _label(source, goal), mean, std

    return lookup


def _table2(dataset: str, target: str, variant: str, shots: int) -> tuple[str | None, float, float]:
    """Table 2 (and, on miniImageNet, Table 5's PC / AC rows), miniImageNet's column standing in (marked)."""
    column = paper_column(dataset)
    return (PAPER_DATASETS[column], *paper_accuracy(dataset, variant, shots))


def _accuracy_rows(
    tables: StudyTables,
    cfg: AggregateConfig,
    names: tuple[str, ...],
    *,
    backbone: Callable[[pd.Series], pd.Series] = _is_4conv,
    paper: PaperLookup = _table2,
    domain: Domain = "in",
) -> pd.DataFrame:
    """One row per (stratum, target, variant) of the runs whose backbone passes ``backbone``: our accuracy on the
    target's fixed test tasks (mean and CI over seeds, each seed's mean over the tasks; the field's CI over tasks ×
    seeds beside it), the gain over the baseline of the same seed on the same tasks (CI over seeds), the paper's
    number and gain. ``domain``: the run's own test tasks (in), other datasets' (cross, `<probe>@<dataset>` keys),
    or both."""
    final = where(backbone=backbone)(tables.final_tasks)
    rows = []
    if final.empty:
        return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
    gains: dict[str, dict[str, dict]] = {}
    for (stratum, setting, dataset, shots), in_stratum in final.groupby(
        [stratum_of(final), "setting", "dataset", "shots"], sort=True
    ):
        for target, metric in targets_of(in_stratum, dataset, domain).items():
            measured = in_stratum[in_stratum[metric].notna()]
            if metric not in gains:
                gains[metric] = _gains(tables, cfg, names, metric, backbone)
            for name in _present(measured, names):
                mine = measured[measured["variant"] == name]
                base = _baseline_of(name)
                gain = gains[metric].get(name, {}).get(stratum)
                label, mean, std = paper(dataset, target, name, shots)
                paper_base = paper(dataset, target, base, shots)[1] if base else np.nan
                rows.append(
                    {
                        "setting": setting,
                        "stratum": stratum,
                        "target": target,
                        "variant": name,
                        "baseline": base or "",
                        "runs": mine["run"].nunique(),
                        **seed_summary(mine, metric, cfg.confidence, "accuracy"),
                        "gain_over_baseline": gain.inference.estimate if gain else np.nan,
                        "gain_ci_low": gain.inference.ci_low if gain else np.nan,
                        "gain_ci_high": gain.inference.ci_high if gain else np.nan,
                        "paper_source": paper_dataset_of(dataset),
                        "paper_target": paper_dataset_of(target),
                        "shots": shots,
                        "paper_dataset": label,
                        "paper_accuracy": mean / 100,
                        "paper_std": std / 100,
                        "paper_gain_over_baseline": (mean - paper_base) / 100,
                    }
                )
    return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)


def _gains(tables, cfg, names, metric, backbone) -> dict[str, dict]:
    """Variant -> stratum -> the paired gain (a rule part) of each LIL variant of ``names`` over its baseline on
    ``metric``."""
    return {
        name: {
            part.stratum: part
            for part in rule_parts(
                improves_on(
                    metric,
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


def published(cells: Cells, names: tuple[str, ...] | None = None, key: str = "variant") -> Callable[[], pd.DataFrame]:
    """The rows of a paper table (one per column × row × shots, ``names`` only if given), with its baseline's gain
    where the row has one: what :class:`Table` matches our rows against to show the cells not run."""

    def rows() -> pd.DataFrame:
        out = []
        for (source, target), column in cells.items():
            for (name, shots), (mean, std) in column.items():
                if names is not None and name not in names:
                    continue
                base = _baseline_of(name) if key == "variant" else ("random" if name == "lil" else None)
                base_mean = column.get((base, shots), (np.nan,))[0] if base else np.nan
                out.append(
                    {
                        "paper_source": source,
                        "paper_target": target,
                        key: name,
                        "shots": shots,
                        "paper_dataset": _label(source, target),
                        "paper_accuracy": mean / 100,
                        "paper_std": std / 100,
                        f"paper_gain_over_{'baseline' if key == 'variant' else 'random'}": (mean - base_mean) / 100,
                    }
                )
        return pd.DataFrame(out)

    return rows


def accuracy_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Table 2 analogue: final meta-test accuracy of each baseline and its + LIL on the run's own test split, the
    paired gain, and the paper's column of the run's dataset (miniImageNet's for a dataset the paper does not use;
    ``paper_dataset`` says which). 4-conv (every backbone but ResNet-12) runs only."""
    return _accuracy_rows(tables, cfg, (*BASELINES, *LIL_OF.values(), *PRETRAINED_SUBSETS))


def cross_domain_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Table 3 analogue: the same runs meta-tested on other datasets' test splits (`<probe>@<dataset>` keys), the
    paired gain of each + LIL on the same tasks, beside Table 3's cell of (meta-train, meta-test) dataset."""
    return _accuracy_rows(
        tables, cfg, (*BASELINES, *LIL_OF.values()), paper=cells_lookup(PAPER_TABLE3, stand_in=False), domain="cross"
    )


def ablation_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Table 5 analogue: MAML, + phase loss only, + pseudo-amplitude loss only, + both, on the run's own test split
    and on every other dataset it is meta-tested on, beside Table 5's cell."""
    return _accuracy_rows(tables, cfg, ABLATION, paper=cells_lookup(PAPER_TABLE5), domain="all")


def resnet12_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Table 4 analogue: ResNet-12 MAML vs MAML + LIL, 1- and 5-shot, meta-tested on the run's own test split and on
    other datasets', beside Table 4 (meta-trained on miniImageNet: → miniImageNet, → tieredImageNet, → Cars;
    miniImageNet → miniImageNet stands in for an in-domain dataset the paper does not use)."""
    return _accuracy_rows(
        tables, cfg, ("maml", "maml+lil"), backbone=_is_resnet12, paper=cells_lookup(PAPER_TABLE4), domain="all"
    )


INIT_COLUMNS = (
    "setting",
    "stratum",
    "target",
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
    "paper_source",
    "paper_target",
    "shots",
    "paper_dataset",
    "paper_accuracy",
    "paper_std",
    "paper_gain_over_random",
)
"""Columns of the Table 1 analogue: accuracy after the inner loop (± CI), raw θ^0 accuracy (± CI), chance,
the paired gain of the LIL-init over the random init (± CI), the paper's number."""
INIT_MATCH = ("paper_source", "paper_target", "init", "shots")


def init_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Table 1 analogue: random vs LIL-pretrained θ^0 of the ``lil-pretrain`` runs, per setting and meta-test dataset
    (the run's own test split and every other dataset's its probes measure).

    ``accuracy`` is after the standard inner loop from θ^0 (Table 1's number, spec §5 [interp]); the paper's number
    is Table 1's cell of (meta-train, meta-test) dataset (mini → mini standing in for Omniglot; none for CUB → CUB,
    which Table 1 does not have); ``pre_adaptation_accuracy`` is θ^0's own query accuracy, ≈ 1/N for any θ^0 under
    random class order (the sanity check); the gain is paired over the same fixed tasks and seeds."""
    milestones = PRETRAINED_RUNS(tables.milestone_tasks)
    rows: list[dict] = []
    if milestones.empty or "milestone" not in milestones:
        return pd.DataFrame(rows, columns=INIT_COLUMNS)  # the header only: the report reads an empty table
    lookup = cells_lookup(PAPER_TABLE1)
    gains: dict[str, dict] = {}
    for (stratum, setting, dataset, shots, ways), group in milestones.groupby(
        [stratum_of(milestones), "setting", "dataset", "shots", "ways"], sort=True
    ):
        for target, metric in targets_of(group, dataset, "all").items():
            measured = group[group[metric].notna()]
            pre = metric.replace(METRIC, "pre_" + METRIC, 1)
            if metric not in gains:
                rule = improves_at_milestone(metric, PRETRAINED, scope=PRETRAINED_RUNS)
                gains[metric] = {p.stratum: p for p in rule_parts(rule, tables, cfg)}
            for init, milestone in INITS.items():
                mine = measured[measured["milestone"] == milestone]
                if mine.empty:
                    continue
                adapted = seed_level(mine, metric, cfg.confidence)
                raw = seed_level(mine, pre, cfg.confidence)
                gain = gains[metric].get(stratum) if init != "random" else None
                label, paper, paper_std = lookup(dataset, target, init, shots)
                random_paper = lookup(dataset, target, "random", shots)[1]
                rows.append(
                    {
                        "setting": setting,
                        "stratum": stratum,
                        "target": target,
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
                        "paper_source": paper_dataset_of(dataset),
                        "paper_target": paper_dataset_of(target),
                        "shots": shots,
                        "paper_dataset": label,
                        "paper_accuracy": paper / 100,
                        "paper_std": paper_std / 100,
                        "paper_gain_over_random": (paper - random_paper) / 100 if init != "random" else np.nan,
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
    """Fig. 4: accuracy over meta-training, one panel per training dataset (the paper's left panel is miniImageNet,
    its right one Cars); the meta-training log; the final accuracy on one dataset beside the paper's column for it.
    4-conv runs only (the ResNet-12 runs are Table 4's)."""
    checkpoints = _table2_runs(tables.checkpoints)
    datasets = sorted(set(checkpoints["dataset"])) if not checkpoints.empty else [""]
    fig, axes = grid(len(datasets) + 2, columns=3, width=4.4, height=3.4)
    for ax, dataset, letter in zip(axes, datasets, "abcdefgh", strict=False):
        side = {MINI: " left", CARS: " right"}.get(paper_dataset_of(dataset) or "", "")
        mine = checkpoints[checkpoints["dataset"] == dataset] if dataset else checkpoints
        title = f"({letter}) trained on {dataset or '—'}: accuracy over meta-training (Fig. 4{side})"
        _curves(ax, mine, "query_accuracy", title)
    axes = axes[len(datasets) - 1 :]
    log = _table2_runs(tables.train_log)
    if log.empty:
        no_data(axes[1], "meta-training query accuracy", "training logs")
    else:
        curves_by_algorithm(
            axes[1],
            log,
            "query_accuracy",
            title="meta-training: query accuracy after the inner loop",
            key="variant",
            names=LEGEND,
        )
        axes[1].set_ylabel("meta-train query accuracy (running mean)")
    final = _table2_runs(tables.final_tasks)
    present = _present(final)
    if not present:
        no_data(axes[2], "final accuracy", "lil2022 runs")
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
        axes[2].set_title("final accuracy: ours vs the paper's")
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
                "Table 2 analogue: baselines ± LIL (4-conv) on each run's own test split, ours beside the paper's "
                "column of our dataset (miniImageNet for Omniglot); every published cell, run or not at this scale",
                accuracy_table,
                published(PAPER_TABLE2_CELLS),
                ACCURACY_MATCH,
            ),
            Table(
                "cross_domain",
                "Table 3 analogue: the same runs meta-tested on another dataset's test split (cross-domain), ours "
                "beside the paper's (meta-train → meta-test); every published cell, run or not at this scale",
                cross_domain_table,
                published(PAPER_TABLE3),
                ACCURACY_MATCH,
            ),
            Table(
                "init",
                "Table 1 analogue: random vs LIL-pretrained θ^0 (accuracy after the inner loop; raw θ^0 ≈ 1/N), per "
                "meta-test dataset, ours beside the paper's; every published cell, run or not at this scale",
                init_table,
                published(PAPER_TABLE1, key="init"),
                INIT_MATCH,
            ),
            Table(
                "resnet12",
                "Table 4 analogue: ResNet-12 MAML ± LIL per meta-test dataset, ours beside the paper's (meta-trained "
                "on miniImageNet); every published cell, run or not at this scale",
                resnet12_table,
                published(PAPER_TABLE4),
                ACCURACY_MATCH,
            ),
            Table(
                "ablation",
                "Table 5 analogue: MAML + phase loss, + pseudo-amplitude loss, + both, per meta-test dataset; every "
                "published cell, run or not at this scale",
                ablation_table,
                published(PAPER_TABLE5),
                ACCURACY_MATCH,
            ),
            Table("linearity", "Linearity measures at the initial and final checkpoints", linearity_table),
        ),
    ),
)
