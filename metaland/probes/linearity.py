"""Linearity of the inner loop (seed 004 §4.1-§4.2, eqs. 3-5; Fig. 2).

From θ^s, each fixed task runs the run's inner loop θ^0 = θ^s, θ^{k+1} = θ^k − α g^k,
g^k = ∇_θ L_support(θ^k) (S steps, full support batch), and records, over the parameters the inner
loop adapts (seed 004 silent; spec §2 [interp]: MAML all, ANIL the head, BOIL the body):

* Phase Consistency (eq. 3): PC = Σ_k ‖θ^{k+1} − θ^k‖ / ‖θ^S − θ^0‖ (path length / chord, ≥ 1;
  1 iff every step points the same way);
* Amplitude Consistency (eq. 4): AC = (1/S) Σ_{k=1}^{S} ‖∇_θ f(x|θ^k)‖ / ‖∇_θ f(x|θ^0)‖ in the two
  readings the spec names: ``ac_jacobian`` with the Frobenius norm of the logit Jacobian on the
  support batch (eq. 4 literally; exact with ``jacrev``, or ‖J‖_F² = E_v ‖Jᵀv‖² with fixed Gaussian
  projections v, the same at every k), and ``ac_lossgrad`` with ‖g^k‖ / ‖g^0‖;
* the gradient change: cos(g^0, g^k), averaged over k = 1..S (``gradient_cosine``) and at k = S
  (``gradient_cosine_final``);
* the Hessian-noise term of eq. 5 (proof in App. B, integrated over t): one GD step lowers the
  loss to second order iff ‖g‖² − (α/2) gᵀHg > 0; ``hessian_noise_ratio`` = (α/2) gᵀHg / ‖g‖²
  (Hessian-vector product, forward-over-reverse), averaged over the S steps; < 1 means every step
  descends, and the paper argues meta-training must shrink it.

Summaries are means over tasks, plus ``ac_jacobian_deviation`` = mean |AC_jac − 1| (how far from
linear, in either direction: the spec's CPU prototype saw AC overshoot 1).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

import torch
from pydantic import Field
from torch.func import grad, jacrev, jvp, vjp

from metaland.meta.inner import LossFn, adapt_trajectory
from metaland.models import Forward, ParamDict, flatten
from metaland.probes import PROBES, ProbeContext, ProbeOutput, ProbeSpec, within_probe_tasks
from metaland.schema import Params
from metaland.seeding import generator
from metaland.vectorise import map_leading


class LinearityOptions(Params):
    tasks: int = Field(20, ge=1, description="First k fixed tasks probed (seed 004 silent on the probe set size).")
    jacobian: Literal["projection", "exact"] = Field(
        "projection",
        description="‖∇_θ f(x|θ^k)‖_F of eq. 4: random-projection estimate (large nets; spec §2) or the exact "
        "Jacobian with jacrev (small nets).",
    )
    projections: int = Field(
        4, ge=1, description="Gaussian output-space projections v per task for the estimate (fixed across k)."
    )
    parameters: Literal["adapted", "all"] = Field(
        "adapted",
        description="Parameters PC, AC and the gradients are taken over: those the inner loop adapts (spec §2 "
        "[interp]) or all of them (identical for MAML).",
    )


def phase_consistency(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(PC, path length, chord) of a trajectory given as rows [S+1, d] (eq. 3)."""
    path = (points[1:] - points[:-1]).norm(dim=1).sum()
    chord = (points[-1] - points[0]).norm()
    return path / chord, path, chord


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm() * b.norm())


def jacobian_norm(
    forward: Forward, moving: ParamDict, fixed: ParamDict, x: torch.Tensor, projections: torch.Tensor | None
) -> torch.Tensor:
    """‖∂f(x|θ)/∂θ_moving‖_F: exact (``projections`` None) or sqrt(mean_p ‖Jᵀ v_p‖²) for v_p [P, B, N]."""

    def logits(m: ParamDict) -> torch.Tensor:
        return forward({**fixed, **m}, x)

    if projections is None:
        return torch.sqrt(sum(j.square().sum() for j in jacrev(logits)(moving).values()))
    _, pull = vjp(logits, moving)
    squares = [sum(t.square().sum() for t in pull(v)[0].values()) for v in projections]
    return torch.sqrt(torch.stack(squares).mean())


def trajectory_linearity(
    forward: Forward,
    loss: LossFn,
    params: ParamDict,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    adapted: Collection[str] | None,
    measured: Collection[str],
    projections: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """Every linearity measure of one task's inner loop (eqs. 3-5), over the ``measured`` parameters."""
    trajectory = adapt_trajectory(loss, params, x, y, steps=steps, lr=lr, first_order=True, adapted=adapted)

    def split(theta: ParamDict) -> tuple[ParamDict, ParamDict]:
        return {k: v for k, v in theta.items() if k in measured}, {k: v for k, v in theta.items() if k not in measured}

    def subset_loss(moving: ParamDict, fixed: ParamDict) -> torch.Tensor:
        return loss({**fixed, **moving}, x, y)

    pc, path, chord = phase_consistency(torch.stack([flatten(split(theta)[0]) for theta in trajectory]))
    gradients, jacobians, ratios, squares, curvatures = [], [], [], [], []
    for k, theta in enumerate(trajectory):
        moving, fixed = split(theta)
        g = grad(subset_loss)(moving, fixed)
        gradients.append(flatten(g))
        jacobians.append(jacobian_norm(forward, moving, fixed, x, projections))
        if k < steps:  # eq. 5 for the step taken from θ^k
            hg = jvp(lambda m, fixed=fixed: grad(subset_loss)(m, fixed), (moving,), (g,))[1]
            square = gradients[-1].square().sum()
            curvature = 0.5 * lr * sum((g[n] * hg[n]).sum() for n in g)
            squares.append(square)
            curvatures.append(curvature)
            ratios.append(curvature / square)
    g0, later = gradients[0], gradients[1:]
    return {
        "pc": pc,
        "path_length": path,
        "chord": chord,
        "ac_jacobian": torch.stack([j / jacobians[0] for j in jacobians[1:]]).mean(),
        "ac_lossgrad": torch.stack([g.norm() / g0.norm() for g in later]).mean(),
        "gradient_cosine": torch.stack([cosine(g0, g) for g in later]).mean(),
        "gradient_cosine_final": cosine(g0, later[-1]),
        "grad_sq_norm": torch.stack(squares).mean(),
        "hessian_term": torch.stack(curvatures).mean(),
        "hessian_noise_ratio": torch.stack(ratios).mean(),
    }


def linearity(context: ProbeContext, options: LinearityOptions) -> ProbeOutput:
    context.require_gradient_descent("linearity")
    k = min(options.tasks, len(context.batch))
    params = {name: p.detach() for name, p in context.params.items()}
    everything = frozenset(params)
    measured = everything if options.parameters == "all" or context.adapted is None else context.adapted
    sx, sy = context.batch.support_x[:k], context.batch.support_y[:k]
    exact = options.jacobian == "exact"
    if exact:
        projections = None
    else:
        logit_shape = context.forward(params, sx[0]).shape
        projections = torch.randn(
            k, options.projections, *logit_shape, generator=generator(context.seed, "linearity-projections")
        ).to(sx.device, sx.dtype)

    def one(x, y, v):
        return trajectory_linearity(
            context.forward,
            context.loss,
            params,
            x,
            y,
            steps=context.steps,
            lr=context.lr,
            adapted=context.adapted,
            measured=measured,
            projections=v,
        )

    per_task = map_leading(one, in_dims=(0, 0, None if exact else 0), chunk=context.chunk)(sx, sy, projections)
    per_task = {name: values.detach() for name, values in per_task.items()}
    summary = {name: values.mean().item() for name, values in per_task.items()}
    summary["ac_jacobian_deviation"] = (per_task["ac_jacobian"] - 1).abs().mean().item()
    return ProbeOutput(per_task, summary)


PROBES.register(
    "linearity",
    ProbeSpec(
        "linearity",
        "Linearity of the inner loop: phase and amplitude consistency, gradient change, Hessian-noise term "
        "(seed 004 eqs. 3-5)",
        LinearityOptions,
        linearity,
        within_probe_tasks,
    ),
)
