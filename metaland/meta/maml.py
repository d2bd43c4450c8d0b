"""MAML (second order) and first-order MAML (seed 000 §2.3.1, eqs. 2.1-2.2 and 1.26).

For each task i of the meta-batch, θ̃_i = inner loop (eq. 2.1) from θ; the meta-gradient is
(1/n) Σ_i ∇_θ L(f(D'_i; θ̃_i)) (eq. 2.2), differentiated through the inner loop (MAML) or with
∂θ̃_i/∂θ = I (FOMAML). The per-task gradients are computed by the run's engine
(``metaland.meta.engines``: ``vmap`` of per-task ``grad``, a loop of it, or the hybrid plain-autograd
path); chunks of tasks are processed one after another and their gradients summed, so memory is
bounded by the chunk.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch.func import grad

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
from metaland.meta.engines import hybrid_query_gradients
from metaland.meta.inner import accuracy, adapt
from metaland.models import ParamDict
from metaland.schema import NoOptions, Params
from metaland.vectorise import map_leading


def query_meta_gradient(
    problem: MetaProblem,
    params: ParamDict,
    batch: TaskBatch,
    *,
    first_order: bool,
    offsets: ParamDict | None = None,
) -> tuple[ParamDict, dict[str, torch.Tensor]]:
    """(1/n) Σ_i ∇_θ L(f(D'_i; θ̃_i + c_i)) and per-task query loss / accuracy.

    ``offsets`` ({name: [n, ...]}) are constant per-task corrections c_i added to the adapted
    parameters (no gradient flows through them; Algorithm 1 of §2.6); none means c_i = 0 (eq. 2.2).
    """

    def task_query_loss(p: ParamDict, sx, sy, qx, qy, offset: ParamDict | None):
        adapted = adapt(
            problem.loss,
            p,
            sx,
            sy,
            steps=problem.inner_steps,
            lr=problem.inner_lr,
            first_order=first_order,
            adapted=problem.adapted,
            update=problem.update,
        )
        if offset is not None:
            adapted = {name: value + offset[name] for name, value in adapted.items()}
        logits = problem.forward(adapted, qx)
        query_loss = F.cross_entropy(logits, qy)
        return query_loss, (query_loss.detach(), accuracy(logits, qy).detach())

    # vmap(grad(.)) per task, never grad(vmap(.)): differentiating outside a vmap through
    # BatchNorm's double backward gives wrong second-order gradients in torch.func (checked
    # against unrolled autograd in tests/test_math_inner.py), while the per-task form is exact.
    offset_dim = None if offsets is None else 0
    per_task_grad = map_leading(
        grad(task_query_loss, has_aux=True),
        in_dims=(None, 0, 0, 0, 0, offset_dim),
        chunk=1 if problem.task_chunk == 1 or problem.engine == "loop" else 0,  # each chunk at once, or a loop
    )

    def chunk_gradients(tasks: TaskBatch, offset: ParamDict | None):
        """Σ over the chunk's tasks of their meta-gradients, and their query losses and accuracies."""
        if problem.engine == "hybrid":
            workers = torch.get_num_threads()
            return hybrid_query_gradients(
                problem, params, tasks, first_order=first_order, offsets=offset, workers=workers
            )
        grads, (losses, accuracies) = per_task_grad(params, *tasks.tensors(), offset)
        return {k: g.sum(dim=0) for k, g in grads.items()}, losses, accuracies

    total: ParamDict | None = None
    seen: dict[str, list[torch.Tensor]] = {"query_loss": [], "query_accuracy": []}
    for start, stop in task_chunks(len(batch), problem.task_chunk):
        offset = None if offsets is None else {k: v[start:stop] for k, v in offsets.items()}
        grads, losses, accuracies = chunk_gradients(batch.chunk(start, stop), offset)
        total = add_into(total, grads)
        seen["query_loss"].append(losses)
        seen["query_accuracy"].append(accuracies)
    return scale(total, 1.0 / len(batch)), {k: torch.cat(v) for k, v in seen.items()}


def maml_meta_gradient(
    problem: MetaProblem, params: ParamDict, batch: TaskBatch, options: Params, *, first_order: bool
) -> tuple[ParamDict, dict[str, float]]:
    """Mean meta-gradient over the tasks of ``batch`` and the post-adaptation query metrics."""
    grads, per_task = query_meta_gradient(problem, params, batch, first_order=first_order)
    return grads, mean_metrics(per_task)


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
