"""How the per-task meta-gradients of MAML-style algorithms are computed (``train.engine``).

Every engine computes the same quantity, Σ_i ∇_θ L(f(D'_i; θ̃_i + c_i)) over the tasks i of a
meta-batch (seed 000 eq. 2.2 before the mean; θ̃_i from the inner loop of eq. 2.1), and differs only
in how the work is laid out, so results agree to float rounding (tests/test_engines.py checks each
against an unrolled float64 autograd loop):

* ``vmap``: ``torch.func.vmap`` over tasks of a per-task ``torch.func.grad`` through the inner loop:
  one launch for all tasks, which is what a GPU wants.
* ``loop``: the same per-task ``grad``, one task after another (``train.task_chunk`` 1).
* ``hybrid``: plain autograd; the support passes of the inner loop run for all tasks at once (a
  grouped network: per-task convolutions side by side, BatchNorm per task,
  ``metaland.models.grouped``; ``vmap`` of the forward for models without one), the query pass runs
  task by task with ordinary kernels (a grouped convolution over 75 query images is slower than
  75 plain ones on a CPU), and with a grouped network the tasks are split among worker threads that
  run one intra-op thread each (``functional_call`` swaps a shared module's parameters, so threads
  only ever run the grouped network). Measured in ``benchmarks/run.py`` (docs/performance.md): the
  fastest of the three on a CPU. It takes the cross-entropy as the support and query loss (eq. 2.1)
  and the plain inner step θ − α g (a learned inner update, seed 003, needs ``vmap`` or ``loop``).

``auto`` is resolved once per run by a fixed rule from those measurements, not by timing the run
(a timed choice could pick another engine on the next run of the same params and change its
bytes): ``hybrid`` on a CPU when the inner step is plain gradient descent, ``vmap`` otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import vmap

from metaland.data.tasks import TaskBatch
from metaland.errors import ConfigError
from metaland.meta import MetaProblem
from metaland.meta.inner import InnerStep, accuracy, grouped_inner_loop
from metaland.models import ParamDict
from metaland.vectorise import map_in_threads


def resolve_engine(requested: str, *, device: torch.device, update: InnerStep | None) -> str:
    """The engine a run uses: ``requested``, or for ``auto`` the rule of the module docstring."""
    if requested == "hybrid" and update is not None:
        raise ConfigError(
            "train.engine hybrid computes the plain inner step θ − α g, but this algorithm learns its inner "
            "update (seed 003). Fix: set train.engine to auto, vmap or loop."
        )
    if requested != "auto":
        return requested
    return "hybrid" if device.type == "cpu" and update is None else "vmap"


def hybrid_query_gradients(
    problem: MetaProblem,
    params: ParamDict,
    batch: TaskBatch,
    *,
    first_order: bool,
    offsets: ParamDict | None,
    workers: int,
) -> tuple[ParamDict, torch.Tensor, torch.Tensor]:
    """Σ_i ∇_θ L(f(D'_i; θ̃_i + c_i)), and the query loss and accuracy of every task, [n] each.

    With a grouped network (``problem.batched_forward``) and ``workers`` > 1 the tasks are split
    into ``workers`` consecutive parts computed in threads with one intra-op thread each; their sums
    are added in part order, so the result depends only on the inputs and ``workers``.
    """
    n = len(batch)
    workers = min(workers, n) if problem.batched_forward is not None else 1
    if workers <= 1:
        return _hybrid_part(problem, params, batch, first_order, offsets)
    bounds = [(n * w // workers, n * (w + 1) // workers) for w in range(workers)]

    def part(bound: tuple[int, int]):
        start, stop = bound
        offset = None if offsets is None else {k: v[start:stop] for k, v in offsets.items()}
        return _hybrid_part(problem, params, batch.chunk(start, stop), first_order, offset)

    results = map_in_threads(part, bounds, workers=workers)
    grads = results[0][0]
    for result in results[1:]:
        grads = {k: g + result[0][k] for k, g in grads.items()}
    return grads, torch.cat([r[1] for r in results]), torch.cat([r[2] for r in results])


def _hybrid_part(
    problem: MetaProblem, params: ParamDict, batch: TaskBatch, first_order: bool, offsets: ParamDict | None
) -> tuple[ParamDict, torch.Tensor, torch.Tensor]:
    forward, batched_forward, adapted = problem.forward, problem.batched_forward, problem.adapted
    support_x, support_y, query_x, query_y = batch.tensors()
    n = support_y.shape[0]
    theta = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    fast = grouped_inner_loop(
        batched_forward or vmap(forward),
        {k: v.expand(n, *v.shape) for k, v in theta.items()},  # θ_i^(0) = θ for every task
        support_x,
        support_y,
        steps=problem.inner_steps,
        lr=problem.inner_lr,
        first_order=first_order,
        moving=[k for k in theta if adapted is None or k in adapted],
    )
    if offsets is not None:
        fast = {k: v + offsets[k] for k, v in fast.items()}
    per_task = {k: v.unbind(0) for k, v in fast.items()}  # one backward node per tensor, not one per task
    query_losses, accuracies = [], []
    for i in range(n):  # eq. 2.2, task by task
        adapted_params = {k: v[i] for k, v in per_task.items()}
        if batched_forward is None:
            logits = forward(adapted_params, query_x[i])
        else:  # a grouped network of one task is the plain network, and (unlike functional_call) thread-safe
            logits = batched_forward({k: v.unsqueeze(0) for k, v in adapted_params.items()}, query_x[i : i + 1])[0]
        query_losses.append(F.cross_entropy(logits, query_y[i]))
        accuracies.append(accuracy(logits, query_y[i]).detach())
    losses = torch.stack(query_losses)
    meta_grads = torch.autograd.grad(losses.sum(), list(theta.values()))
    return dict(zip(theta, meta_grads, strict=True)), losses.detach(), torch.stack(accuracies)
