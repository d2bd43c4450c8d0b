"""SAM sharpness of the meta-loss, per task (seed 001 §3.3 eqs. 16-17 and Appendix D Algorithm 3;
the quantity seed 002's upper perturbation minimises).

For task i with support D_i and query D'_i, from the meta-learned θ:

    L0_i = L(Adapt_K(θ; D_i); D'_i)                       query loss after K inner steps
    g_i  = ∇_θ L0_i                                        through the inner loop (or first order)
    ε_i  = ρ g_i / ‖g_i‖₂                                  (eq. 16, ‖·‖ over all tensors)
    L1_i = L(Adapt_K(θ + ε_i; D_i); D'_i)                  re-adapted from the perturbed point
    sharpness_i = L1_i − L0_i                              (eq. 17)

The mean over tasks is reported with its per-task values. ``radii`` measures eq. 17 at further radii
from the same g_i (ε_i = ρ' g_i / ‖g_i‖₂), in columns ``sam_sharpness_rho<ρ'>``: a method trained to
be flat at one radius (Sharp-MAML_up at α_up, seed 002) may be flat there only. Choices seed 001
leaves to its code are options: ``perturb: weights`` applies ε only to conv / linear weight tensors (biases and
BatchNorm get zero, as seed 001's code does), ``first_order`` takes g_i at the adapted weights
(seed 001 trains FOMAML, where the two coincide).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch.func import grad_and_value

from metaland.meta.inner import adapt
from metaland.meta.sharp import sam_perturbation
from metaland.probes import PROBES, ProbeContext, ProbeOutput, ProbeSpec, within_probe_tasks
from metaland.schema import Params
from metaland.vectorise import map_leading


class SharpnessOptions(Params):
    rho: float = Field(0.05, gt=0, description="ρ, the perturbation radius (seed 001 §3.3, SAM, Sharp-MAML: 0.05).")
    tasks: int = Field(
        100, ge=1, description="First k fixed tasks measured (seed 001: 100 in Algorithm 3, 150 in §4.4)."
    )
    inner_steps: int | None = Field(
        None, ge=0, description="K inner steps before each query loss; none = the run's T (seed 001: 10)."
    )
    first_order: bool = Field(
        False, description="Take g_i at the adapted weights (FOMAML, seed 001) instead of through the inner loop."
    )
    radii: list[float] = Field(
        [],
        description="Further radii ρ' measured from the same g_i, each in its own column sam_sharpness_rho<ρ'> "
        "(one more adaptation per task and radius; seed 002 trains at one radius, α_up).",
    )
    perturb: Literal["all", "weights"] = Field(
        "all",
        description="Tensors ε_i moves: all, or only conv / linear weights (seed 001's code; norm still over all).",
    )

    @field_validator("radii")
    @classmethod
    def _positive_distinct(cls, radii: list[float]) -> list[float]:
        if any(r <= 0 for r in radii) or len(set(radii)) != len(radii):
            raise ValueError(f"radii must be distinct and above 0, got {radii}")
        return radii


def radius_metric(rho: float) -> str:
    """The column of SAM sharpness at a further radius ρ' (``radii``): ``sam_sharpness_rho0.01``."""
    return f"sam_sharpness_rho{rho:g}"


def perturbed_tensors(params: dict[str, torch.Tensor], perturb: str) -> set[str]:
    """Names of the tensors a perturbation moves: all, or the weights of conv / linear layers
    (tensors of two or more dimensions; 1-D biases and BatchNorm parameters stay put)."""
    return {name for name, p in params.items() if perturb == "all" or p.dim() >= 2}


def sam_sharpness(context: ProbeContext, options: SharpnessOptions) -> ProbeOutput:
    context.require_gradient_descent("sharpness")
    k = min(options.tasks, len(context.batch))
    steps = context.steps if options.inner_steps is None else options.inner_steps
    theta = {name: p.detach() for name, p in context.params.items()}
    moved = perturbed_tensors(theta, options.perturb)

    def query_loss(params, sx, sy, qx, qy):
        adapted = adapt(
            context.loss,
            params,
            sx,
            sy,
            steps=steps,
            lr=context.lr,
            first_order=options.first_order,
            adapted=context.adapted,
        )
        return F.cross_entropy(context.forward(adapted, qx), qy)

    radii = (options.rho, *options.radii)

    def one_task(sx, sy, qx, qy):
        g, before = grad_and_value(query_loss)(theta, sx, sy, qx, qy)
        after = []
        for rho in radii:
            epsilon = sam_perturbation(g, rho, "global")
            shifted = {n: p + epsilon[n] if n in moved else p for n, p in theta.items()}
            after.append(query_loss(shifted, sx, sy, qx, qy))
        return before, torch.stack(after)

    tasks = context.batch.chunk(0, k)
    before, after = map_leading(one_task, chunk=context.chunk)(*tasks.tensors())
    sharpness = after - before[:, None]  # [k, radii]
    per_task = {"sam_sharpness": sharpness[:, 0], "sam_perturbed_query_loss": after[:, 0]}
    per_task |= {radius_metric(rho): sharpness[:, i + 1] for i, rho in enumerate(options.radii)}
    return ProbeOutput(per_task, {name: values.mean().item() for name, values in per_task.items()})


PROBES.register(
    "sharpness",
    ProbeSpec(
        "sharpness",
        "SAM sharpness of the per-task meta-loss: L(θ + ρ g/‖g‖) − L(θ) after adaptation (seed 001 eqs. 16-17)",
        SharpnessOptions,
        sam_sharpness,
        within_probe_tasks,
    ),
)
