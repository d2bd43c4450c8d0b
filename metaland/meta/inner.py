"""The inner loop: pure functions of (params, task) -> adapted params (seed 000 eq. 2.1).

    θ_i^(0) = θ,   θ_i^(t) = θ_i^(t-1) − α ∇_θ L(f(D_i; θ_i^(t-1))),   θ̃_i = θ_i^(T)

L is the mean cross-entropy over the support set D_i (full batch). Differentiating θ̃_i with
respect to θ goes through the loop (second order, exact product Π_t (I − α H_t)). With
``first_order=True`` each inner gradient is taken at detached parameters, so ∂θ̃_i/∂θ = I
(FOMAML, eq. 1.26 with the Hessian terms dropped) and no second-order graph is built.

``adapted`` restricts the inner loop to a subset of the parameters (ANIL: the head only; BOIL:
the body only, seed 004 §2; layer-wise adaptation, seed 003 §3.2): only those are differentiated
and stepped, the rest stay at θ inside the loop (the outer loop still meta-learns all of them).
``None`` adapts every parameter. :func:`adapted_names` resolves the ``train.inner_params`` knob.

``update`` replaces the plain step θ − α g by a learned inner update (seed 003 §4, eqs. 3-4:
θ' = θ − α U_φ(g), and φ itself may move): its parameters φ live in the same dict under
:data:`LEARNED_UPDATE_PREFIX`, are meta-learned with θ, ignored by the model's forward and never
stepped by their own plain gradient here. ``None`` is plain gradient descent.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Collection

import torch
import torch.nn.functional as F
from torch.func import grad

from metaland.errors import ConfigError
from metaland.models import Forward, ParamDict
from metaland.models.grouped import BatchedForward
from metaland.vectorise import map_leading

LossFn = Callable[[ParamDict, torch.Tensor, torch.Tensor], torch.Tensor]
InnerStep = Callable[[Callable[[ParamDict], torch.Tensor], ParamDict, ParamDict, float], ParamDict]
"""(support loss of a full parameter dict, current parameters, gradients of the moving ones, α)
-> the new values of the entries the step changes (seed 003 eqs. 3-4)."""
LEARNED_UPDATE_PREFIX = "metaopt."
"""Names of a learned inner update's parameters φ start with this (``metaopt.<θ name>.<factor>``)."""


def cross_entropy(forward: Forward) -> LossFn:
    """L(f(D; θ)): mean cross-entropy of the model on a set (seed 000 §2.3)."""

    def loss(params: ParamDict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(forward(params, x), y)

    return loss


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Acc(f(D; θ)) = mean 1[argmax f(x) = y] (seed 000 eq. 1.2)."""
    return (logits.argmax(dim=-1) == y).to(logits.dtype).mean()


def sgd_step(params: ParamDict, grads: ParamDict, lr: float) -> ParamDict:
    return {name: p - lr * grads[name] for name, p in params.items()}


def model_part(params: ParamDict) -> ParamDict:
    """The model's parameters θ of a dict that may also hold a learned update's φ."""
    return {k: v for k, v in params.items() if not k.startswith(LEARNED_UPDATE_PREFIX)}


def adapted_names(names: Collection[str], head: tuple[str, str], inner_params: str) -> frozenset[str] | None:
    """The parameters the inner loop adapts, from ``inner_params`` (None: all of them).

    ``all``; ``head`` (the classifier's weight and bias: ANIL); ``body`` (everything else: BOIL);
    or comma-separated shell patterns over parameter names (``"6.*,fc.*"``), each of which must
    match at least one parameter.
    """
    if inner_params == "all":
        return None
    if inner_params == "head":
        return frozenset(head)
    if inner_params == "body":
        return frozenset(names) - frozenset(head)
    matches = pattern_matches(names, inner_params)
    for pattern, matched in matches.items():
        if not matched:
            raise ConfigError(
                f"train.inner_params pattern {pattern!r} matches no parameter of the model. "
                f"Fix: use all, head, body or patterns over these names: {', '.join(names)}."
            )
    return frozenset(name for matched in matches.values() for name in matched)


def pattern_matches(names: Collection[str], patterns: str) -> dict[str, list[str]]:
    """Each of the comma-separated shell ``patterns`` and the parameter names it matches."""
    return {pattern: fnmatch.filter(names, pattern) for pattern in (p.strip() for p in patterns.split(","))}


def adapt_trajectory(
    loss: LossFn,
    params: ParamDict,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    first_order: bool = False,
    adapted: Collection[str] | None = None,
    update: InnerStep | None = None,
) -> list[ParamDict]:
    """The iterates (θ, θ^(1), ..., θ̃) of ``steps`` full-batch GD steps on ``loss(·, x, y)``,
    moving only the parameters named in ``adapted`` (None: all) with ``update`` (None: θ − α g)."""

    def subset_loss(moving: ParamDict, fixed: ParamDict) -> torch.Tensor:
        return loss({**fixed, **moving}, x, y)

    def support_loss(full: ParamDict) -> torch.Tensor:
        return loss(full, x, y)

    grad_fn = grad(subset_loss)
    trajectory = [params]
    for _ in range(steps):
        current = trajectory[-1]
        at = {k: v.detach() for k, v in current.items()} if first_order else current
        moving = {k: v for k, v in model_part(at).items() if adapted is None or k in adapted}
        fixed = {k: v for k, v in at.items() if k not in moving}
        grads = grad_fn(moving, fixed)
        if update is None:
            step = sgd_step({k: current[k] for k in moving}, grads, lr)
        else:
            step = update(support_loss, current, grads, lr)
        trajectory.append({k: step.get(k, v) for k, v in current.items()})
    return trajectory


def adapt(
    loss: LossFn,
    params: ParamDict,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    first_order: bool = False,
    adapted: Collection[str] | None = None,
    update: InnerStep | None = None,
) -> ParamDict:
    """θ̃ = θ^(T) (seed 000 eq. 2.1)."""
    return adapt_trajectory(
        loss, params, x, y, steps=steps, lr=lr, first_order=first_order, adapted=adapted, update=update
    )[-1]


def adapt_tasks(
    loss: LossFn,
    params: ParamDict,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    chunk: int,
    adapted: Collection[str] | None = None,
    update: InnerStep | None = None,
    batched_forward: BatchedForward | None = None,
) -> ParamDict:
    """Adapted parameters of every task, stacked: {name: [T, ...]} (no graph to θ is kept).

    Vectorised over tasks with ``vmap`` in chunks of ``chunk`` tasks (memory bound only; 1 = a loop,
    ``metaland.vectorise``); with a ``batched_forward`` (the hybrid engine, ``metaland.meta.engines``)
    and the plain step, each chunk is one grouped network under plain autograd instead, ``loss``
    being the cross-entropy of that network.
    """
    detached = {k: v.detach() for k, v in params.items()}
    if batched_forward is not None and update is None:
        n, size = support_x.shape[0], chunk or support_x.shape[0]
        moving = [k for k in model_part(detached) if adapted is None or k in adapted]
        pieces = [
            grouped_inner_loop(
                batched_forward,
                {k: v.expand(min(size, n - start), *v.shape) for k, v in detached.items()},
                support_x[start : start + size],
                support_y[start : start + size],
                steps=steps,
                lr=lr,
                first_order=True,
                moving=moving,
            )
            for start in range(0, n, size)
        ]
        return {k: torch.cat([piece[k].detach() for piece in pieces]) for k in detached}

    def one(x: torch.Tensor, y: torch.Tensor) -> ParamDict:
        return adapt(loss, detached, x, y, steps=steps, lr=lr, first_order=True, adapted=adapted, update=update)

    return map_leading(one, chunk=chunk)(support_x, support_y)


def grouped_inner_loop(
    group: BatchedForward | Callable[..., torch.Tensor],
    stacked: ParamDict,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    first_order: bool,
    moving: Collection[str],
) -> ParamDict:
    """Eq. 2.1 for n tasks at once: ``stacked`` holds θ_i^(0) of every task ({name: [n, ...]}),
    ``group`` evaluates all tasks with their own parameters ([n, b, ...] -> logits [n, b, ways]).
    Tasks share no term of Σ_i L_i, so ∇ of the sum is each task's own gradient. Only ``moving``
    parameters step; with ``first_order`` each gradient is taken at detached parameters (∂θ̃/∂θ = I),
    otherwise the steps stay differentiable (second order). A grouped network takes the support images'
    statistics once for all steps (``BatchedForward.for_images``)."""
    if isinstance(group, BatchedForward):
        group = group.for_images(support_x)
    per_task = support_y.shape[1]
    fast = dict(stacked)
    with torch.enable_grad():  # the inner loop differentiates even where its caller measures without grad
        for _ in range(steps):
            at = {k: v.detach().requires_grad_(k in moving) for k, v in fast.items()} if first_order else fast
            logits = group(at, support_x)
            support_loss = F.cross_entropy(logits.flatten(0, 1), support_y.flatten(), reduction="sum") / per_task
            grads = torch.autograd.grad(support_loss, [at[k] for k in moving], create_graph=not first_order)
            fast = {**fast, **{k: fast[k] - lr * g for k, g in zip(moving, grads, strict=True)}}
    return fast
