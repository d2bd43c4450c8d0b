"""Meta-learning algorithms: one module each, one registry.

An algorithm is a function ``meta_gradient(problem, params, batch, options) -> (grads, metrics)``
returning the mean meta-gradient over the tasks of ``batch`` (seed 000 eq. 2.2 without the step)
and scalar training metrics. The training loop (``metaland.meta.train``) applies Adam to it.

Three hooks let an algorithm that is not episodic (the finetune baseline, seed 000 §2.3.2) share
the same loop, checkpoints and probes; episodic meta-learners keep their defaults:

* ``training_batch(run, split, step, options)``: what iteration ``step`` trains on (default: the
  meta-batch of ``run.train.meta_batch`` seeded tasks);
* ``output_classes(run, split)``: logits of the head during training (default: ``run.ways``);
* ``meta_test_params(params, head, ways, generator)``: θ^s as meta-test tasks see it (default:
  unchanged; finetune swaps in a fresh m-way head).

Two hooks let an algorithm learn its inner update (seed 003 §4: Meta-SGD, Meta-Curvature, KLin,
KFC); every other algorithm keeps the defaults (plain gradient descent, no extra parameters):

* ``inner_update(options)``: the inner step the run trains, validates and is probed with
  (``metaland.meta.inner.InnerStep``; default ``None`` = θ − α g);
* ``learned_params(params, adapted, options)``: the update's initial parameters φ, meta-learned
  (and checkpointed) with θ (default: none).

One hook lets an algorithm adapt at meta-test by a procedure other than its inner loop (seed 001's
transfer baseline fine-tunes a new linear head on frozen features with SGD and momentum):

* ``meta_test_adaptation(options, module, head, seed)``: a :data:`metaland.meta.evaluate.TaskAdaptation`
  used by validation and every probe (default ``None`` = the run's inner loop).

Two hooks let an algorithm keep training state beyond θ and Adam (seed 004 App. E: the BYOL
teacher, an EMA of θ); every other algorithm keeps none and trains exactly as without them:

* ``initial_state(params, options)``: the state at step 0 ({name: tensor}; default ``None`` = no
  state). An algorithm with state receives it, and the step, as ``meta_gradient(..., state=,
  step=)``; the training loop checkpoints it as the tensor group ``algorithm_state`` and restores
  it on resume;
* ``update_state(state, params, step, options)``: the state after meta-step ``step``, given θ
  after that step (required with ``initial_state``).

``milestones(options)`` names the steps where an algorithm's training changes phase ({step:
name}; default none; seed 004 App. C: the end of LIL pretraining): training checkpoints them,
extract keeps them, and study tables keep their per-task rows beside the initial ones.

``variant(options)`` names a run's variant in results and figures when one algorithm covers
several published methods (Sharp-MAML's low / up / both); by default the algorithm's name. An
inner loop on the head or the body renames MAML to ANIL or BOIL (seed 004 §6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from metaland.data.layout import SplitData
from metaland.data.tasks import TaskBatch, materialise, sample_dataset_tasks
from metaland.meta.evaluate import TaskAdaptation
from metaland.meta.inner import InnerStep, LossFn
from metaland.models import Forward, ParamDict
from metaland.models.grouped import BatchedForward
from metaland.registry import Registry
from metaland.schema import Params
from metaland.seeding import generator

if TYPE_CHECKING:
    from metaland.config import Run


@dataclass(frozen=True)
class MetaProblem:
    """What every algorithm needs besides parameters and tasks."""

    forward: Forward
    loss: LossFn
    inner_steps: int
    inner_lr: float
    task_chunk: int  # tasks vectorised together; 0 = all
    adapted: frozenset[str] | None = None  # parameters the inner loop moves; None = all
    update: InnerStep | None = None  # the inner step; None = θ − α g
    engine: str = "vmap"  # how per-task meta-gradients are computed (metaland.meta.engines), resolved
    batched_forward: BatchedForward | None = None  # the grouped network of the hybrid engine (None: vmap)


MetaGradient = Callable[[MetaProblem, ParamDict, Any, Params], tuple[ParamDict, dict[str, float]]]


def episodic_batch(run: Run, split: SplitData, step: int, options: Params) -> TaskBatch:
    """The meta-batch of iteration ``step``: ``meta_batch`` tasks seeded by (run seed, step) only."""
    tasks = sample_dataset_tasks(
        run.dataset,
        split,
        ways=run.ways,
        shots=run.shots,
        queries=run.queries,
        n_tasks=run.train.meta_batch,
        generator=generator(run.seed, "train-tasks", step),
    )
    return materialise(split, tasks)


def task_head_classes(run: Run, split: SplitData) -> int:
    return run.ways


def unchanged(params: ParamDict, head: tuple[str, str], ways: int, rng: torch.Generator) -> ParamDict:
    return params


def plain_gradient_descent(options: Params) -> InnerStep | None:
    return None


def inner_loop_at_meta_test(options: Params, module, head: tuple[str, str], seed: int) -> TaskAdaptation | None:
    return None


def no_learned_params(params: ParamDict, adapted: frozenset[str] | None, options: Params) -> ParamDict:
    return {}


def no_milestones(options: Params) -> dict[int, str]:
    return {}


SUBSET_NAMES = {"head": "anil", "body": "boil"}  # train.inner_params -> method name (seed 004 §6)


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    description: str
    options_model: type[Params]
    meta_gradient: MetaGradient
    training_batch: Callable[[Run, SplitData, int, Params], Any] = episodic_batch
    output_classes: Callable[[Run, SplitData], int] = task_head_classes
    meta_test_params: Callable[[ParamDict, tuple[str, str], int, torch.Generator], ParamDict] = unchanged
    variant: Callable[[Params], str] | None = None
    inner_update: Callable[[Params], InnerStep | None] = plain_gradient_descent
    learned_params: Callable[[ParamDict, frozenset[str] | None, Params], ParamDict] = no_learned_params
    meta_test_adaptation: Callable[[Params, Any, tuple[str, str], int], TaskAdaptation | None] = inner_loop_at_meta_test

    initial_state: Callable[[ParamDict, Params], ParamDict] | None = None
    update_state: Callable[[ParamDict, ParamDict, int, Params], ParamDict] | None = None
    milestones: Callable[[Params], dict[int, str]] = no_milestones

    def state_at_start(self, params: ParamDict, options: Params) -> ParamDict:
        """The algorithm's training state at step 0 (empty for algorithms without state)."""
        return {} if self.initial_state is None else self.initial_state(params, options)

    def step_gradient(
        self, problem: MetaProblem, params: ParamDict, batch: Any, options: Params, state: ParamDict, step: int
    ) -> tuple[ParamDict, dict[str, float]]:
        """``meta_gradient`` of meta-step ``step``; only an algorithm with state sees ``state`` and ``step``."""
        if self.initial_state is None:
            return self.meta_gradient(problem, params, batch, options)
        return self.meta_gradient(problem, params, batch, options, state=state, step=step)

    def state_after(self, state: ParamDict, params: ParamDict, step: int, options: Params) -> ParamDict:
        """The training state after meta-step ``step`` (θ after the step: ``params``)."""
        return state if self.update_state is None else self.update_state(state, params, step, options)

    def meta_parameters(self, params: ParamDict, adapted: frozenset[str] | None, options: Params) -> ParamDict:
        """What the outer loop meta-learns: the model's θ and the learned update's φ, if any."""
        return {**params, **self.learned_params(params, adapted, options)}

    def variant_of(self, options: Params, inner_params: str = "all") -> str:
        """The name results and figures show for a run: its options' variant, else the algorithm's;
        with ``inner_params`` head or body, MAML becomes ANIL or BOIL (other subsets are appended)."""
        name = self.name if self.variant is None else self.variant(options)
        if inner_params == "all":
            return name
        if inner_params in SUBSET_NAMES and "maml" in name:
            return name.replace("maml", SUBSET_NAMES[inner_params], 1)
        return f"{name}[{inner_params}]"

    def at_meta_test(self, params: ParamDict, head: tuple[str, str], run: Run, step: int) -> ParamDict:
        """θ^s of checkpoint ``step`` as meta-test tasks see it; the same at validation and in probes."""
        return self.meta_test_params(params, head, run.ways, generator(run.seed, "meta-test-head", step))


ALGORITHMS: Registry[AlgorithmSpec] = Registry("algorithm")


def task_chunks(n_tasks: int, chunk: int):
    """(start, stop) of consecutive chunks of at most ``chunk`` tasks (0 = one chunk)."""
    size = chunk or n_tasks
    for start in range(0, n_tasks, size):
        yield start, min(start + size, n_tasks)


def add_into(total: ParamDict | None, grads: ParamDict) -> ParamDict:
    if total is None:
        return dict(grads)
    return {k: total[k] + grads[k] for k in total}


def scale(grads: ParamDict, factor: float) -> ParamDict:
    return {k: g * factor for k, g in grads.items()}


def mean_metrics(values: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: v.mean().item() for k, v in values.items()}


# Registrations (one module per algorithm family).
from metaland.meta import finetune as _finetune  # noqa: E402,F401
from metaland.meta import lil as _lil  # noqa: E402,F401
from metaland.meta import lil_pretrain as _lil_pretrain  # noqa: E402,F401
from metaland.meta import maml as _maml  # noqa: E402,F401
from metaland.meta import metaopt as _metaopt  # noqa: E402,F401
from metaland.meta import regularised as _regularised  # noqa: E402,F401
from metaland.meta import sharp as _sharp  # noqa: E402,F401
from metaland.meta import transfer as _transfer  # noqa: E402,F401
