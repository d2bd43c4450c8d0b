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

Not built: ResNet-12 (Table 4); CUB / Cars / tieredImageNet (Tables 1-3 beyond miniImageNet). See
docs/studies/lil2022.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metaland.claims import (
    Claim,
    improves_at_milestone,
    improves_on,
    improves_over_training,
    mean_exceeds,
    register,
    trend,
    where,
)
from metaland.config import AggregateConfig
from metaland.meta.lil_pretrain import PRETRAINED
from metaland.plots import curves_by_algorithm, grid, label, no_data, save, suptitle
from metaland.results import INITIAL, StudyTables
from metaland.stats import mean_ci
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
PAPER_ACCURACY = {
    # Table 2 (in-domain, miniImageNet column) and Table 5 (ablation, miniImageNet column), 4-conv, % ± std.
    ("maml", 1): (47.88, 0.55),
    ("maml+lil", 1): (49.07, 0.14),
    ("maml+lil-phase", 1): (47.13, 0.30),
    ("maml+lil-amplitude", 1): (48.62, 0.29),
    ("fomaml", 1): (46.29, 0.94),
    ("fomaml+lil-pretrain", 1): (46.81, 0.87),
    ("anil", 1): (48.53, 0.76),
    ("anil+lil-phase", 1): (49.45, 0.31),
    ("boil", 1): (50.44, 1.00),
    ("boil+lil-phase", 1): (49.91, 0.34),
    ("maml", 5): (64.81, 1.63),
    ("maml+lil", 5): (66.34, 0.35),
    ("maml+lil-phase", 5): (65.48, 0.30),
    ("maml+lil-amplitude", 5): (65.98, 0.50),
    ("fomaml", 5): (62.91, 1.85),
    ("fomaml+lil-pretrain", 5): (65.05, 1.25),
    ("anil", 5): (63.74, 1.39),
    ("anil+lil-phase", 5): (66.55, 2.09),
    ("boil", 5): (66.34, 0.35),
    ("boil+lil-phase", 5): (67.09, 0.59),
}
"""Seed 004's published accuracies (%, mean ± std over 3 runs) on miniImageNet 5-way, 4-conv: Table 2
(baselines ± LIL) and Table 5 (MAML + PC / + AC), keyed by (variant, shots)."""
PAPER_SETTING = "paper: miniImageNet 5-way, 4-conv (Tables 2 and 5)"
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
PAIR = ("setting", "seed", "task")
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


def _claim(slug: str, section: str, claim: str, rule: str, test) -> None:
    register(Claim(id=f"{NAME}-{slug}", study=NAME, seed=SEED, section=section, claim=claim, rule=rule, test=test))


# --------------------------------------------------------------------------------------------
# Claims (rules fixed before the data)
# --------------------------------------------------------------------------------------------

for _metric, _name, _what in (("pc", "pc", "PC falls"), ("ac_jacobian_deviation", "ac", "|AC_jacobian − 1| falls")):
    _claim(
        f"maml-{_name}-approaches-one",
        "§4.1, Fig. 2",
        f"Over MAML meta-training, {_name.upper()} approaches 1: MAML becomes almost linear along the inner loop.",
        f"holds if, in every MAML run, {_what} with the meta-training step (Spearman ρ ≤ −0.5, p < α); fails if it "
        "rises significantly in a run; inconclusive otherwise",
        trend(_metric, -1, scope=_variant("maml")),
    )
    _claim(
        f"lil-{_name}-faster",
        "§6 'Dynamics of LIL', Fig. 2",
        f"MAML + LIL satisfies the linearity condition much faster than MAML: {_name.upper()} closer to 1 along "
        "meta-training.",
        f"holds if the 95% CI of MAML's minus MAML + LIL's {_metric}, paired over seeds × checkpoints after the "
        "initial one, lies above 0; fails if it lies below 0; inconclusive otherwise",
        improves_over_training(_metric, _variant("maml+lil"), _variant("maml"), better="lower"),
    )
_claim(
    "lil-converges-faster",
    "§6, Fig. 4",
    "MAML + LIL converges faster than MAML: higher accuracy along meta-training.",
    "holds if the 95% CI of MAML + LIL's minus MAML's accuracy on the fixed probe tasks, paired over seeds × "
    "checkpoints after the initial one, lies above 0; fails if below 0; inconclusive otherwise",
    improves_over_training("query_accuracy", _variant("maml+lil"), _variant("maml")),
)
for _base in BASELINES:
    _claim(
        f"lil-improves-{_base}",
        "§6, Table 2",
        f"LIL improves the meta-test accuracy of {LEGEND[_base]} (paper, miniImageNet: "
        f"{PAPER_ACCURACY[(_base, 1)][0]} → {PAPER_ACCURACY[(LIL_OF[_base], 1)][0]} % 1-shot, "
        f"{PAPER_ACCURACY[(_base, 5)][0]} → {PAPER_ACCURACY[(LIL_OF[_base], 5)][0]} % 5-shot).",
        f"holds if the 95% CI of the accuracy gain of {LEGEND[LIL_OF[_base]]} over {LEGEND[_base]}, paired over "
        "the same fixed test tasks and seeds at the final checkpoints (per setting), lies above 0; fails if below 0; "
        "inconclusive otherwise (also when the profile lacks the runs)",
        improves_on("query_accuracy", _variant(LIL_OF[_base]), _variant(_base), pair_on=PAIR),
    )
_claim(
    "lil-init-beats-random-init",
    "§4.2 'Linearity helps GBML work', Table 1",
    "A θ^0 pretrained only to make the inner loop linear, with no label of the outer loop, beats a random θ^0 "
    f"(paper, miniImageNet 5-way: {PAPER_INIT_ACCURACY[('random', 1)][0]} → {PAPER_INIT_ACCURACY[('lil', 1)][0]} % "
    f"1-shot, {PAPER_INIT_ACCURACY[('random', 5)][0]} → {PAPER_INIT_ACCURACY[('lil', 5)][0]} % 5-shot).",
    "holds if the 95% CI of the gain in accuracy after the standard inner loop (spec §5 [interp]: Table 1's "
    "number) of each LIL-pretraining run's θ^0 at the end of pretraining over its own step-0 θ^0, paired over the "
    "same fixed test tasks, lies above 0; fails if below 0; inconclusive otherwise (also without such runs)",
    improves_at_milestone("query_accuracy", PRETRAINED, scope=PRETRAINED_RUNS),
)
_claim(
    "gradient-direction-stable",
    "§1, §4.1",
    "After meta-training, the inner-loop gradient barely changes direction: cos(g^0, g^S) is near 1.",
    f"holds if the 95% CI of the mean cos(g^0, g^S) over the fixed tasks at MAML's final checkpoints lies above "
    f"{GRADIENT_COSINE_THRESHOLD}; fails if it lies below; inconclusive otherwise",
    mean_exceeds("gradient_cosine_final", GRADIENT_COSINE_THRESHOLD, scope=_variant("maml")),
)
_claim(
    "hessian-noise-shrinks",
    "§4.2, eq. 5",
    "Meta-training reduces the Hessian term of a large-lr inner step: (α/2) gᵀHg / ‖g‖² falls.",
    "holds if, in every MAML run, the mean Hessian-noise ratio falls with the meta-training step "
    "(Spearman ρ ≤ −0.5, p < α); fails if it rises significantly in a run; inconclusive otherwise",
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


def _accuracy_rows(tables: StudyTables, cfg: AggregateConfig, names: tuple[str, ...]) -> pd.DataFrame:
    final = tables.final_tasks
    rows = []
    for (setting, shots), rows_of_setting in final.groupby(["setting", "shots"], sort=True):
        for name in _present(rows_of_setting, names):
            mine = rows_of_setting[rows_of_setting["variant"] == name]
            ci = mean_ci(mine["query_accuracy"], cfg.confidence)
            base = _baseline_of(name)
            gain = (np.nan, np.nan, np.nan)
            if base is not None:
                stat = improves_on(
                    "query_accuracy",
                    where(variant=name, setting=setting),
                    where(variant=base, setting=setting),
                    pair_on=PAIR,
                )(tables, cfg).statistic
                gain = (stat.value, *stat.ci)
            paper, paper_std = PAPER_ACCURACY.get((name, shots), (np.nan, np.nan))
            paper_base = PAPER_ACCURACY.get((base, shots), (np.nan, np.nan))[0] if base else np.nan
            rows.append(
                {
                    "setting": setting,
                    "variant": name,
                    "baseline": base or "",
                    "runs": mine["run"].nunique(),
                    "accuracy": ci.mean,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "gain_over_baseline": gain[0],
                    "gain_ci_low": gain[1],
                    "gain_ci_high": gain[2],
                    "paper_accuracy": paper / 100,
                    "paper_std": paper_std / 100,
                    "paper_gain_over_baseline": (paper - paper_base) / 100,
                }
            )
    return pd.DataFrame(rows)


def accuracy_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Table 2 analogue: final meta-test accuracy of each baseline and its + LIL, the paired gain, the paper's."""
    return _accuracy_rows(tables, cfg, (*BASELINES, *LIL_OF.values()))


def ablation_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Table 5 analogue: MAML, + phase loss only, + pseudo-amplitude loss only, + both."""
    return _accuracy_rows(tables, cfg, ABLATION)


INIT_COLUMNS = (
    "setting",
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
    ``pre_adaptation_accuracy`` is θ^0's own query accuracy, ≈ 1/N for any θ^0 under random class order
    (the sanity check); the gain is paired over the same fixed tasks and seeds."""
    milestones = PRETRAINED_RUNS(tables.milestone_tasks)
    rows: list[dict] = []
    if milestones.empty or "milestone" not in milestones:
        return pd.DataFrame(rows, columns=INIT_COLUMNS)  # the header only: the report reads an empty table
    for (setting, shots, ways), group in milestones.groupby(["setting", "shots", "ways"], sort=True):
        for init, milestone in INITS.items():
            mine = group[group["milestone"] == milestone]
            if mine.empty:
                continue
            adapted = mean_ci(mine["query_accuracy"], cfg.confidence)
            raw = mean_ci(mine["pre_query_accuracy"], cfg.confidence)
            gain = (np.nan, np.nan, np.nan)
            if init != "random":
                scope = where(algorithm="lil-pretrain", setting=setting)
                stat = improves_at_milestone("query_accuracy", milestone, scope=scope)(tables, cfg).statistic
                gain = (stat.value, *stat.ci)
            paper, paper_std = PAPER_INIT_ACCURACY.get((init, shots), (np.nan, np.nan))
            rows.append(
                {
                    "setting": setting,
                    "init": init,
                    "step": int(mine["step"].iloc[0]),
                    "runs": mine["run"].nunique(),
                    "accuracy": adapted.mean,
                    "ci_low": adapted.low,
                    "ci_high": adapted.high,
                    "pre_adaptation_accuracy": raw.mean,
                    "pre_ci_low": raw.low,
                    "pre_ci_high": raw.high,
                    "chance": 1 / ways,
                    "gain_over_random": gain[0],
                    "gain_ci_low": gain[1],
                    "gain_ci_high": gain[2],
                    "paper_accuracy": paper / 100,
                    "paper_std": paper_std / 100,
                }
            )
    return pd.DataFrame(rows, columns=INIT_COLUMNS)


def final_checkpoints(checkpoints: pd.DataFrame) -> pd.DataFrame:
    return checkpoints[checkpoints["step"] == checkpoints.groupby("run")["step"].transform("max")]


def linearity_table(tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
    """Per setting × variant: the linearity measures at the initial and final checkpoints (mean over seeds)."""
    rows = []
    checkpoints = tables.checkpoints
    first = checkpoints[checkpoints["step"] == 0]
    for moment, frame in (("initial", first), ("final", final_checkpoints(checkpoints))):
        for (setting, name), group in frame.groupby(["setting", "variant"], sort=True):
            row = {"setting": setting, "variant": name, "checkpoint": moment, "step": int(group["step"].max())}
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
    """Fig. 2: PC and AC (both readings), gradient change and Hessian-noise ratio over meta-training."""
    fig, axes = grid(len(LINEARITY), columns=3, width=4.4, height=3.4)
    for ax, metric, letter in zip(axes, LINEARITY, "abcde", strict=True):
        reference = 1.0 if metric in ("pc", "ac_jacobian", "ac_lossgrad", "gradient_cosine_final") else None
        _curves(ax, tables.checkpoints, metric, f"({letter}) {LABELS[metric]}", reference=reference)
    suptitle(fig, "Linearity of the inner loop over meta-training (seed 004 Fig. 2; dotted: 1 = linear)")
    save(fig, path)


def fig_accuracy(tables: StudyTables, path: Path) -> None:
    """Fig. 4: accuracy over meta-training; the final accuracy beside the paper's."""
    fig, axes = grid(3, columns=3, width=4.4, height=3.4)
    _curves(axes[0], tables.checkpoints, "query_accuracy", "(a) accuracy over meta-training (Fig. 4)")
    log = tables.train_log
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
    final = tables.final_tasks
    present = _present(final)
    if not present:
        no_data(axes[2], "(c) final accuracy", "lil2022 runs")
    else:
        ours = [mean_ci(final[final["variant"] == n]["query_accuracy"], 0.95).mean for n in present]
        shots = int(final["shots"].min())
        paper = [PAPER_ACCURACY.get((n, shots), (np.nan, np.nan))[0] / 100 for n in present]
        x = np.arange(len(present))
        axes[2].bar(x - 0.2, ours, width=0.4, label="ours", color="#1f77b4")
        axes[2].bar(x + 0.2, paper, width=0.4, label=f"{PAPER_SETTING}, {shots}-shot", color="#999999")
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
                "accuracy", "Table 2 analogue: baselines ± LIL, ours beside the paper's (miniImageNet)", accuracy_table
            ),
            Table(
                "init",
                "Table 1 analogue: random vs LIL-pretrained θ^0 (accuracy after the inner loop; raw θ^0 ≈ 1/N), "
                "ours beside the paper's (miniImageNet)",
                init_table,
            ),
            Table("ablation", "Table 5 analogue: MAML + phase loss, + pseudo-amplitude loss, + both", ablation_table),
            Table("linearity", "Linearity measures at the initial and final checkpoints", linearity_table),
        ),
    ),
)
