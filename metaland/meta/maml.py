"""MAML (second order) and first-order MAML (seed 000 §2.3.1, eqs. 2.1-2.2 and 1.26).

For each task i of the meta-batch, θ̃_i = inner loop (eq. 2.1) from θ; the meta-gradient is
(1/n) Σ_i ∇_θ L(f(D'_i; θ̃_i)) (eq. 2.2), differentiated through the inner loop (MAML) or with
∂θ̃_i/∂θ = I (FOMAML). Tasks are vectorised with ``torch.func.vmap`` over per-task gradients;
chunks of tasks are processed one after another and their gradients summed, so memory is bounded
by the chunk.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from metaland.data.tasks import TaskBatch
from metaland.meta import (
    ALGORITHMS,
    AlgorithmSpec,
    MetaProblem,
    add_into,
    mean_metrics,
    scale,
    task_chunks,
)
from metaland.meta.inner import accuracy, adapt
from metaland.models import ParamDict
from metaland.schema import NoOptions, Params


def maml_meta_gradient(
    problem: MetaProblem, params: ParamDict, batch: TaskBatch, options: Params, *, first_order: bool
) -> tuple[ParamDict, dict[str, float]]:
    """Mean meta-gradient over the tasks of ``batch`` and the post-adaptation query metrics."""

    def task_query_loss(p: ParamDict, sx, sy, qx, qy):
        adapted = adapt(
            problem.loss, p, sx, sy, steps=problem.inner_steps, lr=problem.inner_lr, first_order=first_order
        )
        logits = problem.forward(adapted, qx)
        query_loss = F.cross_entropy(logits, qy)
        return query_loss, (query_loss.detach(), accuracy(logits, qy).detach())

    # vmap(grad(.)) per task, never grad(vmap(.)): differentiating outside a vmap through
    # BatchNorm's double backward gives wrong second-order gradients in torch.func (checked
    # against unrolled autograd in tests/test_math_inner.py), while the per-task form is exact.
    per_task_grad = vmap(grad(task_query_loss, has_aux=True), in_dims=(None, 0, 0, 0, 0))
    total: ParamDict | None = None
    seen: dict[str, list[torch.Tensor]] = {"query_loss": [], "query_accuracy": []}
    for chunk in task_chunks(batch, problem.task_chunk):
        grads, (losses, accuracies) = per_task_grad(params, *chunk.tensors())
        total = add_into(total, {k: g.sum(dim=0) for k, g in grads.items()})
        seen["query_loss"].append(losses)
        seen["query_accuracy"].append(accuracies)
    return scale(total, 1.0 / len(batch)), mean_metrics(seen)


ALGORITHMS.register(
    "maml",
    AlgorithmSpec(
        "maml",
        "Second-order MAML (Finn et al. 2017; seed 000 eqs. 2.1-2.2)",
        NoOptions,
        partial(maml_meta_gradient, first_order=False),
    ),
)
ALGORITHMS.register(
    "fomaml",
    AlgorithmSpec(
        "fomaml",
        "First-order MAML (seed 000 eq. 1.26 without Hessian terms)",
        NoOptions,
        partial(maml_meta_gradient, first_order=True),
    ),
)
