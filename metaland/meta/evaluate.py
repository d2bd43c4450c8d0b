"""Meta-test evaluation of θ on a set of tasks (seed 000 §2.4, M1 and M3).

Each task is adapted from θ with the run's inner loop (same T and α as in meta-training, §2.7.3:
"always"), then measured: target (query) accuracy and loss at θ̃_i, support loss at θ̃_i, and the
same quantities at θ before adaptation (the §2.4.1 sanity check: chance on average). Used for
validation during training and by the probes, so both see the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
import torch.nn.functional as F

from metaland.data.tasks import TaskBatch
from metaland.meta.inner import InnerStep, accuracy, adapt_tasks, cross_entropy
from metaland.models import Forward, ParamDict
from metaland.models.grouped import BatchedForward
from metaland.vectorise import map_leading

TaskAdaptation = Callable[[ParamDict, torch.Tensor, torch.Tensor, int], ParamDict]
"""(θ, support_x [T, ...], support_y [T, ...], tasks vectorised together) -> adapted θ̃_i stacked
{name: [T, ...]}: a meta-test adaptation other than the run's inner loop (seed 001's transfer
baseline fine-tunes a new head on frozen features, ``metaland.meta.transfer``)."""


def meta_test_adaptation(
    forward: Forward,
    params: ParamDict,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    chunk: int,
    inner_params: Collection[str] | None = None,
    update: InnerStep | None = None,
    adaptation: TaskAdaptation | None = None,
    batched_forward: BatchedForward | None = None,
) -> ParamDict:
    """θ̃_i of every task ({name: [T, ...]}, support sets stacked [T, ...]): the run's inner loop
    (eq. 2.1) moves the parameters named in ``inner_params`` (None: all) with the run's ``update``
    (None: GD), unless the run adapts at meta-test by another procedure (``adaptation``). A
    ``batched_forward`` runs the inner loop as one grouped network (the hybrid engine)."""
    params = {k: v.detach() for k, v in params.items()}
    if adaptation is not None:
        return adaptation(params, support_x, support_y, chunk)
    return adapt_tasks(
        cross_entropy(forward),
        params,
        support_x,
        support_y,
        steps=steps,
        lr=lr,
        chunk=chunk,
        adapted=inner_params,
        update=update,
        batched_forward=batched_forward,
    )


def evaluate_tasks(
    forward: Forward,
    params: ParamDict,
    batch: TaskBatch,
    *,
    steps: int,
    lr: float,
    chunk: int,
    inner_params: Collection[str] | None = None,
    update: InnerStep | None = None,
    adaptation: TaskAdaptation | None = None,
    batched_forward: BatchedForward | None = None,
) -> tuple[dict[str, torch.Tensor], ParamDict]:
    """Per-task metrics ({name: [T]}) and the adapted parameters ({name: [T, ...]}) of
    :func:`meta_test_adaptation`."""
    params = {k: v.detach() for k, v in params.items()}
    adapted = meta_test_adaptation(
        forward,
        params,
        batch.support_x,
        batch.support_y,
        steps=steps,
        lr=lr,
        chunk=chunk,
        inner_params=inner_params,
        update=update,
        adaptation=adaptation,
        batched_forward=batched_forward,
    )

    def measure(theta_i: ParamDict, sx, sy, qx, qy) -> dict[str, torch.Tensor]:
        query_logits = forward(theta_i, qx)
        support_logits = forward(theta_i, sx)
        pre_query_logits = forward(params, qx)
        pre_support_logits = forward(params, sx)
        return {
            "query_accuracy": accuracy(query_logits, qy),
            "query_loss": F.cross_entropy(query_logits, qy),
            "support_accuracy": accuracy(support_logits, sy),
            "support_loss": F.cross_entropy(support_logits, sy),
            "pre_query_accuracy": accuracy(pre_query_logits, qy),
            "pre_query_loss": F.cross_entropy(pre_query_logits, qy),
            "pre_support_loss": F.cross_entropy(pre_support_logits, sy),
        }

    with torch.no_grad():
        metrics = map_leading(measure, chunk=chunk)(adapted, *batch.tensors())
    return metrics, adapted
