"""LIL as label-free, BYOL-style pretraining, then meta-training (seed 004 App. E, Fig. 5; App. C).

Meta-iterations 0 … N−1 (N = ``pretrain_iterations``) pretrain θ with the phase loss only and no
label of the outer loop (App. E: "LIL does not receive any label information from the outer
loop"; the inner loop's support labels are the only ones used). Per task τ:

    teacher (EMA of θ, stop-gradient):  θ* = S inner GD steps on the support set from θ_teacher
    student (θ, gets the gradient):     θ̂* = θ − δ d / ‖d‖,  d = ∇_θ L_support(θ)   (eq. 8)
    L_pretrain(τ) = λ · KL( s(f(x|θ*)) ‖ s(f(x|θ̂*)) ),  x ∈ D_target                 (eq. 7)

with δ the teacher's path length Σ_k ‖θ*^{k+1} − θ*^k‖ (spec §6.4 [interp]; or the student's own,
``distance``), the KL reduced as in ``lil`` (``reduction``), λ = 0.1 and, after every pretraining
meta-step, θ_teacher ← m θ_teacher + (1 − m) θ with m = 0.999 (App. E); the teacher starts at θ^0.
The student's cost is that of a one-step GBML method (App. E): one inner gradient, differentiated
through unless ``student_first_order``.

From iteration N on, the run meta-trains with the inherited :class:`LILOptions` (``lil``): by
default plain FOMAML (first order, both LIL weights 0), App. C's "pretrained FOMAML with LIL loss
for 15k iterations and then trained with FOMAML without LIL loss for the remaining 15k"; with
``first_order`` false and ``train.inner_params`` head / body it pretrains MAML / ANIL / BOIL (spec
§6.4: the paper is ambiguous there). The end of pretraining is a milestone: always checkpointed,
extracted and kept per task (Table 1's LIL-init θ^0; step 0 is the random init).

Choices the paper leaves open (spec §6.4 "Not stated"), options below unless fixed: no BYOL predictor
(the student and teacher outputs are N-way logits of tasks whose class order is random, so a
learned map between them has no fixed classes to act on; App. E names only student, teacher and
momentum); δ from the teacher; a constant momentum applied after every meta-step; the run's own
meta-optimizer (Adam in the paper's setting) and meta-train split. No augmentation (App. E).
The per-step metrics keep ``lil``'s names: ``query_loss`` / ``query_accuracy`` are the
teacher's after its inner loop (monitoring only; no gradient), ``amplitude_loss`` is δ.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from metaland.data.tasks import TaskBatch
from metaland.meta import ALGORITHMS, AlgorithmSpec, MetaProblem
from metaland.meta.inner import accuracy, adapt_trajectory
from metaland.meta.lil import (
    LILOptions,
    extrapolation,
    lil_meta_gradient,
    mean_task_gradient,
    path_length,
    phase_loss,
    variant_name,
)
from metaland.models import ParamDict

PRETRAINED = "pretrained"
"""The milestone name of the end of pretraining (Table 1's LIL-init θ^0)."""


class LILPretrainOptions(LILOptions):
    pretrain_iterations: int = Field(
        15000,
        ge=1,
        description="N: meta-iterations 0..N-1 are label-free LIL pretraining (App. E), the rest meta-train as "
        "lil with phase_weight, amplitude_weight, first_order, direction, detach_delta and detach (App. C: 15k of "
        "pretraining, then 15k of FOMAML). N = train.iterations pretrains only.",
    )
    momentum: float = Field(
        0.999,
        ge=0,
        le=1,
        description="m of the EMA teacher, θ_teacher ← m θ_teacher + (1 − m) θ after every pretraining meta-step "
        "(App. E: 0.999; the schedule is not stated: constant).",
    )
    pretrain_weight: float = Field(
        0.1, gt=0, description="λ of the phase loss in pretraining, its only loss (App. E: 'multiplied 0.1')."
    )
    distance: Literal["teacher_path", "student_path"] = Field(
        "teacher_path",
        description="δ of the student's one-step approximation (eq. 8; App. E silent): the teacher's S-step path "
        "length (spec §6.4 [interp]) or the student's own S-step path length; stop-gradient either way.",
    )
    student_first_order: bool = Field(
        False,
        description="Treat the student's direction d = ∇L_support(θ) as a constant. Default: differentiated "
        "through, one second-order step, the cost App. E compares with 1-step GBML.",
    )
    phase_weight: float = Field(
        0.0, ge=0, description="λ_phase of the LIL phase loss after pretraining (App. C: 0, plain FOMAML)."
    )
    amplitude_weight: float = Field(
        0.0, ge=0, description="λ_amp of the pseudo-amplitude loss after pretraining (App. C: 0, plain FOMAML)."
    )
    first_order: bool = Field(
        True, description="First-order meta-gradient after pretraining (App. C: FOMAML); false: MAML, ANIL, BOIL."
    )


def pretrain_objective(problem: MetaProblem, options: LILPretrainOptions, teacher: ParamDict):
    """The per-task pretraining loss L_pretrain(τ) as a function of the student θ (App. E)."""
    frozen = {k: v.detach() for k, v in teacher.items()}

    def objective(theta: ParamDict, sx, sy, qx, qy):
        names = [k for k in theta if problem.adapted is None or k in problem.adapted]

        def trajectory(start: ParamDict, steps: int, first_order: bool) -> list[ParamDict]:
            return adapt_trajectory(
                problem.loss,
                start,
                sx,
                sy,
                steps=steps,
                lr=problem.inner_lr,
                first_order=first_order,
                adapted=problem.adapted,
            )

        teacher_path = trajectory(frozen, problem.inner_steps, True)
        teacher_logits = problem.forward(teacher_path[-1], qx).detach()
        if options.distance == "teacher_path":
            distance = path_length(teacher_path, names)
        else:
            own = trajectory({k: v.detach() for k, v in theta.items()}, problem.inner_steps, True)
            distance = path_length(own, names)
        first_step = trajectory(theta, 1, options.student_first_order)[1]
        direction = {n: theta[n] - first_step[n] for n in names}  # α d: the norm cancels in eq. 8
        student_logits = problem.forward(extrapolation(theta, direction, distance.detach()), qx)
        phase = phase_loss(teacher_logits, student_logits, options.reduction)
        total = options.pretrain_weight * phase
        monitored = (F.cross_entropy(teacher_logits, qy), accuracy(teacher_logits, qy))
        return total, tuple(m.detach() for m in (*monitored, phase, distance, total))

    return objective


def pretrain_meta_gradient(
    problem: MetaProblem,
    params: ParamDict,
    batch: TaskBatch,
    options: LILPretrainOptions,
    *,
    state: ParamDict,
    step: int,
) -> tuple[ParamDict, dict[str, float]]:
    """Meta-step ``step``: the mean pretraining gradient against the teacher ``state`` while
    ``step`` < N, else ``lil``'s meta-gradient (plain FOMAML by default)."""
    if step >= options.pretrain_iterations:
        return lil_meta_gradient(problem, params, batch, options)
    return mean_task_gradient(pretrain_objective(problem, options, state), params, batch, problem.task_chunk)


def initial_teacher(params: ParamDict, options: LILPretrainOptions) -> ParamDict:
    """The teacher starts as a copy of θ^0 (BYOL)."""
    return {k: v.detach().clone() for k, v in params.items()}


@torch.no_grad()
def ema_teacher(teacher: ParamDict, params: ParamDict, step: int, options: LILPretrainOptions) -> ParamDict:
    """θ_teacher ← m θ_teacher + (1 − m) θ after pretraining meta-step ``step``; fixed afterwards."""
    if step >= options.pretrain_iterations:
        return teacher
    m = options.momentum
    return {k: m * t + (1 - m) * params[k] for k, t in teacher.items()}


def pretraining_end(options: LILPretrainOptions) -> dict[int, str]:
    return {options.pretrain_iterations: PRETRAINED}


def pretrained_variant(options: LILPretrainOptions) -> str:
    """The variant after pretraining plus ``+lil-pretrain`` (fomaml+lil-pretrain: Table 2's "FOMAML + LIL")."""
    return variant_name(options) + "+lil-pretrain"


ALGORITHMS.register(
    "lil-pretrain",
    AlgorithmSpec(
        "lil-pretrain",
        "Label-free BYOL-style LIL pretraining (phase loss, EMA teacher), then FOMAML (seed 004 App. E, App. C)",
        LILPretrainOptions,
        pretrain_meta_gradient,
        variant=pretrained_variant,
        initial_state=initial_teacher,
        update_state=ema_teacher,
        milestones=pretraining_end,
    ),
)
