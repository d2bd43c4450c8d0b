"""The inner loop: pure functions of (params, task) -> adapted params (seed 000 eq. 2.1).

    θ_i^(0) = θ,   θ_i^(t) = θ_i^(t-1) − α ∇_θ L(f(D_i; θ_i^(t-1))),   θ̃_i = θ_i^(T)

L is the mean cross-entropy over the support set D_i (full batch). Differentiating θ̃_i with
respect to θ goes through the loop (second order, exact product Π_t (I − α H_t)). With
``first_order=True`` each inner gradient is taken at detached parameters, so ∂θ̃_i/∂θ = I
(FOMAML, eq. 1.26 with the Hessian terms dropped) and no second-order graph is built.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from metaland.models import Forward, ParamDict

LossFn = Callable[[ParamDict, torch.Tensor, torch.Tensor], torch.Tensor]


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


def adapt_trajectory(
    loss: LossFn,
    params: ParamDict,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    first_order: bool = False,
) -> list[ParamDict]:
    """The iterates (θ, θ^(1), ..., θ̃) of ``steps`` full-batch GD steps on ``loss(·, x, y)``."""
    grad_fn = grad(loss)
    trajectory = [params]
    for _ in range(steps):
        current = trajectory[-1]
        at = {k: v.detach() for k, v in current.items()} if first_order else current
        trajectory.append(sgd_step(current, grad_fn(at, x, y), lr))
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
) -> ParamDict:
    """θ̃ = θ^(T) (seed 000 eq. 2.1)."""
    return adapt_trajectory(loss, params, x, y, steps=steps, lr=lr, first_order=first_order)[-1]


def adapt_tasks(
    loss: LossFn,
    params: ParamDict,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    chunk: int,
) -> ParamDict:
    """Adapted parameters of every task, stacked: {name: [T, ...]} (no graph to θ is kept).

    Vectorised over tasks with ``vmap`` in chunks of ``chunk`` tasks (memory bound only).
    """
    detached = {k: v.detach() for k, v in params.items()}

    def one(x: torch.Tensor, y: torch.Tensor) -> ParamDict:
        return adapt(loss, detached, x, y, steps=steps, lr=lr, first_order=True)

    return vmap(one, chunk_size=chunk)(support_x, support_y)
