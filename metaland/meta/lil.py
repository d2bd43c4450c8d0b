"""LIL: Linearity in the Inner Loop, a regulariser of the outer objective (seed 004 §5, eqs. 7-9).

Per task τ, after the S-step inner loop θ^0 → θ^S over the adapted parameters (all: MAML; head:
ANIL; body: BOIL, via ``train.inner_params``), the outer objective is (§5-§6, assembled by the spec
§6.3; the paper never writes it as one equation)

    L_outer(τ) = CE(f(X_target|θ^S), Y_target) + λ_phase L_phase + λ_amp L_amp
    L_amp   = Σ_{k=0}^{S-1} ‖θ^{k+1} − θ^k‖                                      (eq. 9, path length)
    L_phase = KL( s(f(x|θ^S)) ‖ s(f(x|θ̂)) ),  x ∈ D_target                       (eq. 7)
    θ̂      = θ^0 − δ d,  δ = L_amp / ‖d‖                                        (eq. 8)

θ̂ is the single-direction extrapolation: from θ^0 along the initial direction d, a distance equal
to the trajectory's path length, evaluated by the (non-linear) network. The meta-gradient is the
mean over tasks of ∇_θ L_outer(τ), through the inner loop (second order) or with ∂θ^S/∂θ = I
(``first_order``). Choices the paper leaves open (spec §6.1, §10.3) are options with the spec's
defaults: d is the support-loss gradient at θ^0 (the inner-loop direction; the text's
"∇_θ f(x|θ^0), x ∈ D_target" read literally is a Jacobian), the KL's first argument is at θ^S, its
reduction is the batch mean, and nothing is detached. λ_phase = 0.1 (all experiments), λ_amp =
0.01 for 1-shot and 0.1 for 5-shot MAML, 0 for ANIL / BOIL (§6, App. C).

LIL as a label-free BYOL-style pretraining stage (App. E) is ``metaland.meta.lil_pretrain``.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.func import grad, vmap

from metaland.data.tasks import TaskBatch
from metaland.meta import ALGORITHMS, AlgorithmSpec, MetaProblem, add_into, mean_metrics, scale, task_chunks
from metaland.meta.inner import accuracy, adapt_trajectory
from metaland.models import ParamDict
from metaland.schema import Params


class LILOptions(Params):
    phase_weight: float = Field(
        0.1, ge=0, description="λ_phase of the phase loss (eq. 7): 0.1 in all experiments (seed 004 §6, App. E)."
    )
    amplitude_weight: float = Field(
        0.01,
        ge=0,
        description="λ_amp of the pseudo-amplitude loss (eq. 9): 0.01 for 1-shot and 0.1 for 5-shot MAML; "
        "0 for ANIL and BOIL (seed 004 §6, App. C).",
    )
    first_order: bool = Field(
        False,
        description="∂θ^S/∂θ = I (FOMAML); seed 004 adds LIL to second-order MAML, ANIL and BOIL (§6).",
    )
    direction: Literal["support_loss", "query_loss"] = Field(
        "support_loss",
        description="d of eq. 8: the support-loss gradient at θ^0, i.e. the inner loop's first step (spec §6.1 "
        "[interp]), or the query(target)-loss gradient at θ^0 (the text's x ∈ D_target).",
    )
    reduction: Literal["batchmean", "sum"] = Field(
        "batchmean",
        description="Reduction of the KL of eq. 7 over the target samples (seed 004 silent): the per-sample KL "
        "averaged (batchmean) or summed (sum).",
    )
    detach_delta: bool = Field(
        False, description="Treat the step size δ of eq. 8 (the path length) as a constant in the phase loss."
    )
    detach: Literal["none", "adapted", "extrapolated"] = Field(
        "none",
        description="Stop the gradient of the phase loss through θ^S (adapted) or θ̂ (extrapolated); seed 004's "
        "'draws θ* towards θ̂*' suggests none is detached (spec §6.1, default none).",
    )


def variant_name(options: LILOptions) -> str:
    """maml+lil, maml+lil-phase (Table 5's "+PC"), maml+lil-amplitude ("+AC") or maml; fomaml when first order."""
    base = "fomaml" if options.first_order else "maml"
    phase, amplitude = options.phase_weight > 0, options.amplitude_weight > 0
    suffix = {(True, True): "+lil", (True, False): "+lil-phase", (False, True): "+lil-amplitude"}.get(
        (phase, amplitude), ""
    )
    return base + suffix


def path_length(trajectory: list[ParamDict], names: list[str]) -> torch.Tensor:
    """Σ_k ‖θ^{k+1} − θ^k‖ over ``names`` (eq. 9; the numerator of eqs. 3 and 8)."""
    return sum(
        torch.sqrt(sum((after[n] - before[n]).square().sum() for n in names)) for before, after in pairwise(trajectory)
    )


def extrapolation(start: ParamDict, direction: ParamDict, distance: torch.Tensor) -> ParamDict:
    """θ̂ = θ^0 − distance · d / ‖d‖ on the parameters in ``direction``, the others at θ^0 (eq. 8)."""
    norm = torch.sqrt(sum(d.square().sum() for d in direction.values()))
    return {k: v - distance * direction[k] / norm if k in direction else v for k, v in start.items()}


def phase_loss(adapted_logits: torch.Tensor, extrapolated_logits: torch.Tensor, reduction: str) -> torch.Tensor:
    """KL(s(f(x|θ^S)) ‖ s(f(x|θ̂))) (eq. 7)."""
    return F.kl_div(
        F.log_softmax(extrapolated_logits, dim=-1),
        F.log_softmax(adapted_logits, dim=-1),
        reduction=reduction,
        log_target=True,
    )


def lil_objective(problem: MetaProblem, options: LILOptions):
    """The per-task outer objective L_outer(τ) as a function of θ, for ``vmap(grad(...))``."""

    def objective(theta: ParamDict, sx, sy, qx, qy):
        trajectory = adapt_trajectory(
            problem.loss,
            theta,
            sx,
            sy,
            steps=problem.inner_steps,
            lr=problem.inner_lr,
            first_order=options.first_order,
            adapted=problem.adapted,
        )
        names = [k for k in theta if problem.adapted is None or k in problem.adapted]
        adapted_logits = problem.forward(trajectory[-1], qx)
        query_loss = F.cross_entropy(adapted_logits, qy)
        amplitude = path_length(trajectory, names)
        total = query_loss
        if options.amplitude_weight > 0:
            total = total + options.amplitude_weight * amplitude
        phase = torch.zeros_like(query_loss)
        if options.phase_weight > 0:
            start = trajectory[0]
            if options.direction == "support_loss":  # θ^0 − θ^1 = α g^0: the same direction, already computed
                direction = {n: start[n] - trajectory[1][n] for n in names}
            else:
                at = {k: v.detach() for k, v in start.items()} if options.first_order else start
                direction = grad(lambda m, at=at: problem.loss({**at, **m}, qx, qy))({n: at[n] for n in names})
            distance = amplitude.detach() if options.detach_delta else amplitude
            extrapolated_logits = problem.forward(extrapolation(start, direction, distance), qx)
            if options.detach == "adapted":
                adapted_logits = adapted_logits.detach()
            elif options.detach == "extrapolated":
                extrapolated_logits = extrapolated_logits.detach()
            phase = phase_loss(adapted_logits, extrapolated_logits, options.reduction)
            total = total + options.phase_weight * phase
        metrics = (query_loss, accuracy(adapted_logits, qy), phase, amplitude, total)
        return total, tuple(m.detach() for m in metrics)

    return objective


METRICS = ("query_loss", "query_accuracy", "phase_loss", "amplitude_loss", "outer_loss")


def mean_task_gradient(
    objective, params: ParamDict, batch: TaskBatch, chunk: int
) -> tuple[ParamDict, dict[str, float]]:
    """(1/n) Σ_τ ∇_θ objective(θ, τ) and the mean of its per-task terms (named :data:`METRICS`), per
    task ``vmap(grad(.))`` in chunks of ``chunk`` tasks (see metaland.meta.maml)."""
    per_task_grad = vmap(grad(objective, has_aux=True), in_dims=(None, 0, 0, 0, 0))
    total: ParamDict | None = None
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in METRICS}
    for start, stop in task_chunks(len(batch), chunk):
        grads, values = per_task_grad(params, *batch.chunk(start, stop).tensors())
        total = add_into(total, {k: g.sum(dim=0) for k, g in grads.items()})
        for name, value in zip(METRICS, values, strict=True):
            seen[name].append(value)
    return scale(total, 1.0 / len(batch)), mean_metrics({k: torch.cat(v) for k, v in seen.items()})


def lil_meta_gradient(
    problem: MetaProblem, params: ParamDict, batch: TaskBatch, options: LILOptions
) -> tuple[ParamDict, dict[str, float]]:
    """(1/n) Σ_τ ∇_θ L_outer(τ) and the mean per-task terms."""
    return mean_task_gradient(lil_objective(problem, options), params, batch, problem.task_chunk)


ALGORITHMS.register(
    "lil",
    AlgorithmSpec(
        "lil",
        "MAML with the LIL phase and pseudo-amplitude losses on the outer objective (seed 004 §5, eqs. 7-9)",
        LILOptions,
        lil_meta_gradient,
        variant=variant_name,
    ),
)
