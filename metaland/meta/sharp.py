"""Sharp-MAML: sharpness-aware MAML (seed 002, the poster's algorithm, steps 1-9).

Problem (Sharp-MAML_both): min_θ max_{‖ε‖≤α_up} Σ_m L(θ*_m(θ + ε); D'_m), where the lower level
θ*_m is approximated by SAM steps on the support loss. Per meta-iteration t, for every task m:

    3. ε_m = α_low g_m / ‖g_m‖₂,                   g_m = ∇L(θ^t; D_m)
    4. θ̃¹_m = θ^t − β_low ∇L(θ^t + ε_m; D_m)
    6. G = ∇_θ Σ_m L(θ̃¹_m(θ^t); D'_m)
    7. ε = α_up G / ‖G‖₂
    8. θ̃²_m = θ^t + ε − β_low ∇L(θ^t + ε + ε_m; D_m)     (ε_m of step 3, reused as written)
    9. θ^{t+1} = θ^t − β_up ∇_θ Σ_m L(θ̃²_m(θ^t); D'_m)

α_up = 0 gives Sharp-MAML_low (θ̃² = θ̃¹, one pass), α_low = 0 gives Sharp-MAML_up and both zero
give MAML exactly (the same code path as ``maml``; tested bit for bit). A zero radius costs
nothing: its extra gradient is never computed.

Choices the poster leaves open, each an option below with the SAM-standard default:

* ε_m and ε are constants when differentiating (SAM); ``differentiate_lower_perturbation`` lets
  ∂ε_m/∂θ into the meta-gradient instead. ε is always a constant: its derivative would couple
  every task of the meta-batch through G and need third derivatives.
* Norms are global over all parameter tensors (SAM); ``norm: per_tensor`` normalises each tensor.
* More than one inner step (the poster shows one): every inner step is a SAM step whose ε_m is
  computed at the current iterate; in step 8 the first inner step reuses step 3's ε_m.
* Second order by default (steps 6 and 9 differentiate through θ̃); ``first_order`` drops the
  Hessian terms as in FOMAML.
* The poster's upper level sums over tasks, MAML averages (``task_reduction``); under Adam the
  two differ only through Adam's ε.
* The meta-optimizer is the run's ``train.meta_optimizer`` (Adam by default, as the official code;
  SGD is step 9 literally).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.func import grad, vmap

from metaland.data.tasks import TaskBatch
from metaland.errors import ConfigError
from metaland.meta import ALGORITHMS, AlgorithmSpec, MetaProblem, add_into, mean_metrics, scale, task_chunks
from metaland.meta.inner import LossFn, accuracy, sgd_step
from metaland.models import ParamDict
from metaland.schema import Params

DEFAULT_RADIUS = 0.05
"""α_low and α_up unless a run sets them: the official code's ``--alpha`` (the poster gives none)."""
_VARIANTS = {
    (False, False): "maml",
    (True, False): "sharpmaml-low",
    (False, True): "sharpmaml-up",
    (True, True): "sharpmaml-both",
}


class SharpMAMLOptions(Params):
    alpha_low: float = Field(
        DEFAULT_RADIUS,
        ge=0,
        description="α_low: radius of the per-task SAM perturbation ε_m of the inner step (poster step 3); "
        "0 switches it off (Sharp-MAML_up). The poster gives no value; the official code uses 0.05.",
    )
    alpha_up: float = Field(
        DEFAULT_RADIUS,
        ge=0,
        description="α_up: radius of the perturbation ε of θ along the meta-gradient (poster step 7); "
        "0 switches it off (Sharp-MAML_low). The poster gives no value; the official code uses 0.05.",
    )
    first_order: bool = Field(
        False, description="Drop the Hessian terms of ∂θ̃/∂θ (FOMAML); the poster's ∇_θ of θ̃(θ) is second order."
    )
    differentiate_lower_perturbation: bool = Field(
        False,
        description="Let ∂ε_m/∂θ into the meta-gradient; SAM (and this default) treats ε_m as a constant.",
    )
    norm: Literal["global", "per_tensor"] = Field(
        "global", description="‖·‖₂ over all parameter tensors together (SAM) or per tensor."
    )
    task_reduction: Literal["mean", "sum"] = Field(
        "mean", description="Meta-gradient over tasks: mean (MAML, eq. 2.2) or sum (the poster's upper level)."
    )


def variant_name(options: SharpMAMLOptions) -> str:
    """The poster's name for a pair of radii: maml, sharpmaml-low, sharpmaml-up or sharpmaml-both; a non-zero
    radius other than :data:`DEFAULT_RADIUS` is appended (``sharpmaml-both@0.1``, or ``@α_low/α_up`` where
    the two differ), so that a sweep's runs are never pooled with the poster's variants."""
    low, up = options.alpha_low, options.alpha_up
    name = _VARIANTS[(low > 0, up > 0)]
    radii = [r for r in (low, up) if r > 0]
    if all(r == DEFAULT_RADIUS for r in radii):
        return name
    return f"{name}@{radii[0]!r}" if len(set(radii)) == 1 else f"{name}@{low!r}/{up!r}"


def radii_of(variant: str) -> tuple[float, float]:
    """(α_low, α_up) of a name :func:`variant_name` gave (its inverse)."""
    name, _, suffix = variant.partition("@")
    on = {v: k for k, v in _VARIANTS.items()}.get(name)
    if on is None:
        raise ValueError(
            f"{variant!r} is not a sharpmaml variant (one of {sorted(_VARIANTS.values())}, optionally @radii)"
        )
    values = [float(v) for v in suffix.split("/")] if suffix else []
    if len(values) == 2:
        return values[0], values[1]
    radius = values[0] if values else DEFAULT_RADIUS
    return (radius if on[0] else 0.0, radius if on[1] else 0.0)


def sam_perturbation(grads: ParamDict, radius: float, norm: str) -> ParamDict:
    """ε = α g / ‖g‖₂ (poster steps 3 and 7; ding2023 eq. 16); a zero gradient gives ε = 0."""
    if norm == "global":
        total = torch.sqrt(sum(g.square().sum() for g in grads.values()))
        norms = dict.fromkeys(grads, total)
    else:
        norms = {k: g.norm() for k, g in grads.items()}
    tiny = torch.finfo(next(iter(grads.values())).dtype).tiny
    return {k: radius * g / norms[k].clamp_min(tiny) for k, g in grads.items()}


def _plus(params: ParamDict, delta: ParamDict) -> ParamDict:
    return {k: v + delta[k] for k, v in params.items()}


def _detached(params: ParamDict) -> ParamDict:
    return {k: v.detach() for k, v in params.items()}


def sam_adapt(
    loss: LossFn,
    start: ParamDict,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    options: SharpMAMLOptions,
    first_perturbation: ParamDict | None,
) -> ParamDict:
    """``steps`` SAM steps on the support loss from ``start`` (poster steps 4 and 8).

    Step k takes the gradient at θ^(k) + ε_m^(k), ε_m^(k) = α_low ∇L(θ^(k))/‖∇L(θ^(k))‖; the first
    step uses ``first_perturbation`` (ε_m computed at the unperturbed θ^t) when given.
    """
    grad_fn = grad(loss)
    current = start
    for step in range(steps):
        at = _detached(current) if options.first_order else current
        if options.alpha_low > 0:
            if step == 0 and first_perturbation is not None:
                lower = first_perturbation
            else:
                lower = sam_perturbation(grad_fn(at, x, y), options.alpha_low, options.norm)
                lower = lower if options.differentiate_lower_perturbation else _detached(lower)
            at = _plus(at, lower)
        current = sgd_step(current, grad_fn(at, x, y), lr)
    return current


def _per_task_query(problem: MetaProblem, options: SharpMAMLOptions):
    """The per-task query loss L(θ̃_m(θ); D'_m) as a function of θ, for ``vmap(grad(...))``.

    ``upper`` is ε (None: step 4, θ̃¹), ``lower`` the step-3 ε_m to reuse (None: compute it at θ).
    The aux output returns the step-3 ε_m so that step 8 can reuse it.
    """

    def task_query_loss(theta: ParamDict, upper: ParamDict | None, lower: ParamDict | None, sx, sy, qx, qy):
        if options.alpha_low > 0 and lower is None:
            at = _detached(theta) if options.first_order else theta
            lower = sam_perturbation(grad(problem.loss)(at, sx, sy), options.alpha_low, options.norm)
            if not options.differentiate_lower_perturbation:
                lower = _detached(lower)
        start = theta if upper is None else _plus(theta, upper)
        adapted = sam_adapt(
            problem.loss,
            start,
            sx,
            sy,
            steps=problem.inner_steps,
            lr=problem.inner_lr,
            options=options,
            first_perturbation=lower,
        )
        logits = problem.forward(adapted, qx)
        query_loss = F.cross_entropy(logits, qy)
        kept = {} if lower is None else _detached(lower)
        return query_loss, (query_loss.detach(), accuracy(logits, qy).detach(), kept)

    return task_query_loss


def _meta_gradient_pass(
    problem: MetaProblem,
    options: SharpMAMLOptions,
    params: ParamDict,
    batch: TaskBatch,
    upper: ParamDict | None,
    lower: ParamDict | None,
) -> tuple[ParamDict, dict[str, torch.Tensor], ParamDict | None]:
    """(1/n) Σ_m ∇_θ L(θ̃_m(θ); D'_m), per-task loss and accuracy, and the per-task step-3 ε_m.

    Per task, ``vmap(grad(.))`` (never ``grad(vmap(.))``: see metaland.meta.maml)."""
    per_task_grad = vmap(
        grad(_per_task_query(problem, options), has_aux=True),
        in_dims=(None, None, None if lower is None else 0, 0, 0, 0, 0),
    )
    total: ParamDict | None = None
    losses, accuracies, lowers = [], [], []
    for start, stop in task_chunks(len(batch), problem.task_chunk):
        chunk_lower = None if lower is None else {k: v[start:stop] for k, v in lower.items()}
        grads, (loss, acc, kept) = per_task_grad(params, upper, chunk_lower, *batch.chunk(start, stop).tensors())
        total = add_into(total, {k: g.sum(dim=0) for k, g in grads.items()})
        losses.append(loss)
        accuracies.append(acc)
        lowers.append(kept)
    per_task = {"query_loss": torch.cat(losses), "query_accuracy": torch.cat(accuracies)}
    step3 = {k: torch.cat([part[k] for part in lowers]) for k in lowers[0]} or None
    return scale(total, 1.0 / len(batch)), per_task, step3


def gradient_evaluations(options: SharpMAMLOptions, inner_steps: int) -> int:
    """Gradient evaluations per task and meta-iteration: inner gradients plus meta-backward passes.

    MAML: T + 1. α_low > 0 adds one gradient per inner step (step 3). α_up > 0 adds a second
    pass (steps 7-9), whose first inner step reuses step 3's ε_m.
    """
    per_step = 2 if options.alpha_low > 0 else 1
    first_pass = per_step * inner_steps + 1
    if options.alpha_up == 0:
        return first_pass
    return first_pass + 1 + per_step * (inner_steps - 1) + 1


def sharp_meta_gradient(
    problem: MetaProblem, params: ParamDict, batch: TaskBatch, options: SharpMAMLOptions
) -> tuple[ParamDict, dict[str, float]]:
    """The meta-gradient of step 9 (mean or sum over tasks) and training metrics.

    Metrics are those of the first pass (θ̃¹, the unperturbed θ), comparable with MAML's: among them
    ``meta_gradient_sq_norm``, the squared norm of that pass's mean meta-gradient, the meta-batch's
    estimate of ‖∇F(θ^t)‖² in the convergence theorem (biased up by the batch's variance); plus the cost in
    gradient evaluations per task and, with α_up > 0, the query loss at θ + ε.
    """
    if problem.adapted is not None:
        raise ConfigError(
            "sharpmaml adapts every parameter in its SAM inner loop (seed 002), so train.inner_params must be "
            "all. Fix: remove train.inner_params from this run, or use maml / fomaml for ANIL / BOIL."
        )
    grads, per_task, lower = _meta_gradient_pass(problem, options, params, batch, None, None)
    metrics = mean_metrics(per_task)
    metrics["meta_gradient_sq_norm"] = sum(g.square().sum() for g in grads.values()).item()
    if options.alpha_up > 0:
        upper = _detached(sam_perturbation(grads, options.alpha_up, options.norm))
        # Step 8 reuses step 3's ε_m; a differentiated ε_m is recomputed at θ to carry ∂ε_m/∂θ.
        reuse = None if options.differentiate_lower_perturbation else lower
        grads, perturbed, _ = _meta_gradient_pass(problem, options, params, batch, upper, reuse)
        metrics["perturbed_query_loss"] = perturbed["query_loss"].mean().item()
    if options.task_reduction == "sum":
        grads = scale(grads, float(len(batch)))
    metrics["gradient_evaluations"] = float(gradient_evaluations(options, problem.inner_steps))
    return grads, metrics


ALGORITHMS.register(
    "sharpmaml",
    AlgorithmSpec(
        "sharpmaml",
        "Sharp-MAML: SAM perturbations of the inner step (α_low) and of θ (α_up) (seed 002, steps 1-9)",
        SharpMAMLOptions,
        sharp_meta_gradient,
        variant=variant_name,
    ),
)
