"""Meta-learning algorithms: one module each, one registry.

An algorithm is a function ``meta_gradient(problem, params, batch, options) -> (grads, metrics)``
returning the mean meta-gradient over the tasks of ``batch`` (seed 000 eq. 2.2 without the step)
and scalar training metrics. The training loop (``metaland.meta.train``) applies Adam to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from metaland.data.tasks import TaskBatch
from metaland.meta.inner import LossFn
from metaland.models import Forward, ParamDict
from metaland.registry import Registry
from metaland.schema import Params


@dataclass(frozen=True)
class MetaProblem:
    """What every algorithm needs besides parameters and tasks."""

    forward: Forward
    loss: LossFn
    inner_steps: int
    inner_lr: float
    task_chunk: int  # tasks vectorised together; 0 = all


MetaGradient = Callable[[MetaProblem, ParamDict, TaskBatch, Params], tuple[ParamDict, dict[str, float]]]


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    description: str
    options_model: type[Params]
    meta_gradient: MetaGradient


ALGORITHMS: Registry[AlgorithmSpec] = Registry("algorithm")


def task_chunks(batch: TaskBatch, chunk: int):
    """Consecutive chunks of at most ``chunk`` tasks (0 = one chunk)."""
    size = chunk or len(batch)
    for start in range(0, len(batch), size):
        yield batch.chunk(start, min(start + size, len(batch)))


def add_into(total: ParamDict | None, grads: ParamDict) -> ParamDict:
    if total is None:
        return dict(grads)
    return {k: total[k] + grads[k] for k in total}


def scale(grads: ParamDict, factor: float) -> ParamDict:
    return {k: g * factor for k, g in grads.items()}


def mean_metrics(values: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    return {k: torch.cat(v).mean().item() for k, v in values.items()}


# Registrations (one module per algorithm family).
from metaland.meta import maml as _maml  # noqa: E402,F401
