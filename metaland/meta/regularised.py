"""MAML with the trajectory-coherence regulariser (seed 000 §2.6, Algorithm 1).

Per meta-iteration, after the inner loops (eq. 2.1) give θ̃_i = θ^s + d_i:

    θ⃗_i = d_i / ‖d_i‖₂,   θ⃗_μ = (1/n) Σ_j θ⃗_j        (task i included; a constant: ∇θ⃗_μ = 0)
    Ω_i = −θ⃗_iᵀ θ⃗_μ,      θ̂_i = θ̃_i − γ ∇_{θ̃_i} Ω_i
    θ^{s+1} = θ^s − β (1/n) Σ_i ∇_θ L(f(D'_i; θ̂_i))    (Adam in place of the SGD step, §2.7.3)

Reading of ∇Ω (the thesis does not spell it out; spec §1.4): the gradient is taken with respect
to the adapted end point θ̃_i, the only reading under which a descent step on Ω shrinks the angle
to the mean direction, which gives the closed form

    c_i = −γ ∇_{θ̃_i} Ω_i = (γ / ‖d_i‖) (θ⃗_μ − (θ⃗_iᵀ θ⃗_μ) θ⃗_i),

orthogonal to d_i and rotating it toward θ⃗_μ. "After adding the regularizer, we consider it
constant": c_i is a stop-gradient constant, so ∂θ̂_i/∂θ^s = ∂θ̃_i/∂θ^s. A task whose inner loop
does not move (d_i = 0) has no direction and gets no correction. The relative size ‖c_i‖ / ‖d_i‖
is logged as ``correction_ratio`` (it is at most γ / ‖d_i‖², large when d_i is short).

Cost: the displacements are computed once more, first order (values only), before the
meta-gradient pass, since every c_i depends on the whole meta-batch through θ⃗_μ.
"""

from __future__ import annotations

import torch
from pydantic import Field

from metaland.data.tasks import TaskBatch
from metaland.meta import ALGORITHMS, AlgorithmSpec, MetaProblem, mean_metrics
from metaland.meta.inner import adapt_tasks
from metaland.meta.maml import query_meta_gradient
from metaland.models import ParamDict, flatten, flatten_batched, unflatten_batched
from metaland.schema import Params


class CoherenceRegularisedOptions(Params):
    gamma: float = Field(0.5, ge=0, description="γ, the step on −∇Ω (seed 000 §2.6: 0.5 on Omniglot 20-way 1-shot).")
    first_order: bool = Field(
        False, description="Drop the Hessian terms of ∂θ̃_i/∂θ (FOMAML); §2.6 uses second-order MAML."
    )


def coherence_correction(displacements: torch.Tensor, gamma: float) -> torch.Tensor:
    """c_i = (γ/‖d_i‖)(θ⃗_μ − (θ⃗_iᵀθ⃗_μ) θ⃗_i) for the rows d_i of ``displacements`` [n, d] (Algorithm 1)."""
    norms = displacements.norm(dim=1, keepdim=True)
    moved = norms > 0
    directions = torch.where(moved, displacements / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
    mean_direction = directions.mean(dim=0, keepdim=True)
    along = directions @ mean_direction.T  # θ⃗_iᵀ θ⃗_μ, [n, 1]
    correction = gamma / norms.clamp_min(torch.finfo(norms.dtype).tiny) * (mean_direction - along * directions)
    return torch.where(moved, correction, 0.0)


def regularised_meta_gradient(
    problem: MetaProblem, params: ParamDict, batch: TaskBatch, options: CoherenceRegularisedOptions
) -> tuple[ParamDict, dict[str, float]]:
    """Mean meta-gradient at the corrected solutions θ̂_i, and training metrics."""
    adapted = adapt_tasks(
        problem.loss,
        params,
        batch.support_x,
        batch.support_y,
        steps=problem.inner_steps,
        lr=problem.inner_lr,
        chunk=problem.task_chunk or len(batch),
        adapted=problem.adapted,
        batched_forward=problem.batched_forward,
    )
    displacements = flatten_batched(adapted) - flatten(params).detach()
    corrections = coherence_correction(displacements, options.gamma)
    offsets = unflatten_batched(corrections, params)
    grads, per_task = query_meta_gradient(problem, params, batch, first_order=options.first_order, offsets=offsets)
    per_task["correction_ratio"] = corrections.norm(dim=1) / displacements.norm(dim=1).clamp_min(1e-30)
    return grads, mean_metrics(per_task)


ALGORITHMS.register(
    "regmaml",
    AlgorithmSpec(
        "regmaml",
        "MAML with the trajectory-coherence regulariser (seed 000 §2.6, Algorithm 1)",
        CoherenceRegularisedOptions,
        regularised_meta_gradient,
    ),
)
