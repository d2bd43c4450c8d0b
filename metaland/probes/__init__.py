"""Landscape probes: one module per probe family, one registry.

A probe is ``run(context, options) -> ProbeOutput``: per-task values (over the first k tasks of
the fixed task set, k ≤ T) and per-checkpoint summaries. The :class:`ProbeContext` holds θ^s,
the fixed tasks and the run's inner loop, and caches the meta-test adaptation so that probes
sharing it (accuracy, norms, coherence, curvature) adapt each task once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from metaland.data.layout import SplitData
from metaland.data.tasks import TaskBatch
from metaland.errors import ConfigError
from metaland.meta.evaluate import TaskAdaptation, evaluate_tasks
from metaland.meta.inner import InnerStep, LossFn, cross_entropy, model_part
from metaland.models import Forward, ParamDict, flatten, flatten_batched
from metaland.models.grouped import BatchedForward
from metaland.registry import Registry
from metaland.schema import Params


@dataclass
class ProbeContext:
    forward: Forward
    params: ParamDict  # θ^s
    batch: TaskBatch  # the fixed evaluation tasks
    steps: int  # inner-loop T (the run's)
    lr: float  # inner-loop α (the run's)
    chunk: int  # tasks vectorised together
    seed: int  # probe seed (start vectors, directions, ...)
    head: tuple[str, str] | None = None  # weight and bias names of the classifier head
    adapted: frozenset[str] | None = None  # parameters the run's inner loop moves; None = all
    update: InnerStep | None = None  # the run's inner step (a learned update, seed 003 §4); None = GD
    meta_test: TaskAdaptation | None = None  # the run's meta-test adaptation when it is not its inner loop
    trained: ParamDict | None = None  # θ as trained, before ``AlgorithmSpec.at_meta_test`` (pre-training head)
    train_split: SplitData | None = None  # the meta-train split (pre-training loss landscapes, seed 001 Fig. 9)
    batched_forward: BatchedForward | None = None  # the grouped network of the hybrid engine, if the run uses it
    _cache: dict = field(default_factory=dict)

    @property
    def loss(self) -> LossFn:
        return cross_entropy(self.forward)

    def adaptation(self) -> tuple[dict[str, torch.Tensor], ParamDict]:
        """Per-task metrics and adapted parameters θ̃_i (computed once per checkpoint)."""
        if "adaptation" not in self._cache:
            self._cache["adaptation"] = evaluate_tasks(
                self.forward,
                self.params,
                self.batch,
                steps=self.steps,
                lr=self.lr,
                chunk=self.chunk,
                inner_params=self.adapted,
                update=self.update,
                adaptation=self.meta_test,
                batched_forward=self.batched_forward,
            )
        return self._cache["adaptation"]

    def require_gradient_descent(self, probe: str) -> None:
        """Refuse a run whose inner update is learned (seed 003 §4), or that adapts at meta-test by
        another procedure (seed 001's transfer baseline), for a probe defined on the plain
        gradient-descent inner loop, rather than measure a different inner loop silently."""
        if self.update is not None or self.meta_test is not None:
            what = "learns its inner update (seed 003 §4)" if self.update is not None else "adapts by fine-tuning"
            raise ConfigError(
                f"the {probe} probe follows a plain gradient-descent inner loop, but this run {what}. "
                f"Fix: remove {probe} from the probe set of this run (studies.<study>.probe.probes, or give the "
                "run its own probe_set)."
            )

    def displacements(self) -> torch.Tensor:
        """θ̃_i − θ^s as rows [T, d] (the model's parameters only)."""
        _, adapted = self.adaptation()
        return flatten_batched(model_part(adapted)) - flatten(model_part(self.params))


@dataclass(frozen=True)
class Grid:
    """A 2-D surface: ``values[i, j]`` at (``x[i]``, ``y[j]``)."""

    x: torch.Tensor
    y: torch.Tensor
    values: torch.Tensor


@dataclass(frozen=True)
class ProbeOutput:
    per_task: dict[str, torch.Tensor]  # name -> [k], over the first k tasks
    summary: dict[str, float]
    grids: dict[str, Grid] = field(default_factory=dict)  # name -> surface (landscape probes)


def no_check(options: Params, probe_config) -> str | None:
    return None


def within_probe_tasks(options: Params, probe_config) -> str | None:
    """A probe measuring the first ``options.tasks`` fixed tasks needs at least that many."""
    if options.tasks > probe_config.tasks:
        return (
            f"tasks = {options.tasks} exceeds the {probe_config.tasks} fixed probe tasks it is taken from. "
            "Fix: lower it, or raise probe.tasks."
        )
    return None


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    description: str
    options_model: type[Params]
    run: Callable[[ProbeContext, Params], ProbeOutput]
    check: Callable[[Params, object], str | None] = no_check


PROBES: Registry[ProbeSpec] = Registry("probe")

# Registrations (one module per probe family).
from metaland.probes import adaptation as _adaptation  # noqa: E402,F401
from metaland.probes import coherence as _coherence  # noqa: E402,F401
from metaland.probes import hessian as _hessian  # noqa: E402,F401
from metaland.probes import layerwise as _layerwise  # noqa: E402,F401
from metaland.probes import linearity as _linearity  # noqa: E402,F401
from metaland.probes import sharpness as _sharpness  # noqa: E402,F401
from metaland.probes import surface as _surface  # noqa: E402,F401
