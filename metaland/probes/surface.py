"""2-D loss surfaces around the meta-learned θ along filter-normalised random directions
(seed 001 §3.2 eqs. 8-9, after Li et al. 2018; seed 002's "landscape of MAML" figure).

    f(a, b) = (1/k) Σ_i L(Adapt_K(θ + a δ + b η; D_i); E_i),   a, b ∈ [−span, span]

The perturbation is applied to the initialisation θ and the K inner steps start from the
perturbed point (seed 001 §4.3.1: the centre is the weight the algorithm lands on); E_i is the
query set (the meta-loss) or the support set (inner-loop landscapes). δ and η are Gaussian,
drawn from the probe seed (the same draw for every run and checkpoint of a study, so surfaces
of different runs differ only by θ), then normalised filter by filter (eq. 9):
d_{l,j} ← d_{l,j} ‖θ_{l,j}‖ / ‖d_{l,j}‖ for every output filter / unit j of layer l; 1-D tensors
(biases, BatchNorm) get zero direction, as in seed 001's code. ``part`` restricts the directions
to the classifier head or to the feature layers (seed 001 §4.3.1's decomposition).

Seed 001's variants: the k tasks may be re-drawn at every grid point (Fig. 8's noisy 4-task
meta-loss), the query loss may average only the first q query shots per class (Fig. 10), and a
pre-training baseline's supervised loss on fixed meta-train images gives transfer learning's
training landscape around θ as trained, with its all-class head (Fig. 9; no adaptation).

Every grid point and task is adapted independently, vectorised with ``vmap`` over tasks and over
chunks of grid points, or looped over both with ``point_chunk: 1`` (``metaland.vectorise``; on a
CPU, chunks of a few points beat the loop and large ones lose to it, docs/performance.md). Under
the hybrid engine a chunk of points × tasks is one grouped network under plain autograd instead, in
which the points share their tasks' images and the query pass runs channels last
(``metaland.models.grouped``), and the chunks run in worker threads
(``metaland.vectorise.map_in_threads``).
Summaries per surface: the value at the centre and the mean rise of the surface above it over the
grid (a filter-normalised average sharpness).
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from metaland.data.tasks import TaskBatch, model_inputs
from metaland.errors import ConfigError
from metaland.meta.inner import adapt, grouped_inner_loop
from metaland.models import ParamDict
from metaland.probes import PROBES, Grid, ProbeContext, ProbeOutput, ProbeSpec
from metaland.schema import Params
from metaland.seeding import generator
from metaland.vectorise import map_in_threads, map_leading


class SurfaceSpec(Params):
    loss: Literal["query", "support", "pretraining"] = Field(
        "query",
        description="Loss measured after adaptation: query (the meta-loss), support (inner-loop landscapes), or "
        "pretraining: the supervised loss of θ as trained, on fixed meta-train images, no adaptation (seed 001 "
        "Fig. 9, transfer learning's training landscape).",
    )
    inner_steps: int | None = Field(
        None, ge=0, description="K inner steps from each perturbed point; none = the run's T (seed 001: 0, 5, 10)."
    )
    tasks: int = Field(8, ge=1, description="First k fixed tasks averaged at every grid point (seed 001: 1, 4, 100).")
    first_task: int = Field(
        0,
        ge=0,
        description="Index of the first of the k fixed tasks: 0 takes tasks 0 … k − 1; 1 with k = 1 is a second "
        "random task (seed 001 Figs. 15-18 repeat the inner-loop and decomposition landscapes on an additional task).",
    )
    resample: bool = Field(
        False,
        description="Draw the k tasks afresh at every grid point, without replacement from the fixed probe tasks "
        "(seed 001 Fig. 8's 4-task meta-loss, re-sampled 'to simulate the actual optimization process').",
    )
    query_shots: int | None = Field(
        None,
        ge=1,
        description="Query samples per class the loss averages, the first ones of each class (seed 001 Fig. 10: "
        "1, 2, 4, 15); none = all of the task's.",
    )
    images: int = Field(
        1000, ge=1, description="pretraining loss: fixed meta-train images averaged (seed 001 §4.3.2: 1,000)."
    )
    part: Literal["all", "head", "features"] = Field(
        "all", description="Parameters the directions move: all, the classifier head only, or all but the head."
    )

    @model_validator(mode="after")
    def _fixed_tasks_only(self) -> SurfaceSpec:
        if self.resample and self.first_task:
            raise ValueError("first_task picks fixed tasks; a resampled surface draws from all of them. Fix: drop one")
        return self


class SurfaceOptions(Params):
    span: float = Field(1.0, gt=0, description="The grid covers [−span, span]² (seed 001: 1).")
    resolution: int = Field(
        11, ge=3, le=201, description="Grid points per axis, odd so the centre is on the grid (seed 001's code: 51)."
    )
    point_chunk: int = Field(
        4,
        ge=1,
        description="Grid points vectorised together; 1 = a plain loop over points and tasks. On a CPU keep a "
        "chunk's activations within the last-level cache: under the hybrid engine 3-4 points of 4 Conv4-16 tasks "
        "are the fastest chunk (Intel Xeon: 1.3x faster than 8; AMD EPYC: within the spread of 8), 12 or more run 1.5x "
        "slower (docs/performance.md, python benchmarks/bounds.py). Changes speed and memory only.",
    )
    surfaces: dict[str, SurfaceSpec] = Field(
        default_factory=lambda: {"meta_loss": SurfaceSpec()},
        description="Surface name -> what it measures; every surface uses the same two directions.",
    )

    @field_validator("resolution")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd, so that the unperturbed θ is a grid point")
        return value


def filter_normalised_direction(params: ParamDict, rng: torch.Generator) -> ParamDict:
    """A Gaussian direction scaled filter by filter to the norms of θ (eq. 9); zero on 1-D tensors."""
    direction = {}
    for name, p in params.items():
        d = torch.randn(p.shape, generator=rng, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
        if p.dim() < 2:
            direction[name] = torch.zeros_like(p)
            continue
        filters = d.reshape(p.shape[0], -1)
        scale = p.detach().reshape(p.shape[0], -1).norm(dim=1) / (filters.norm(dim=1) + 1e-10)
        direction[name] = (filters * scale[:, None]).reshape(p.shape)
    return direction


def restrict(direction: ParamDict, part: str, head: tuple[str, str] | None) -> ParamDict:
    """Zero the direction outside ``part`` (all / head / features)."""
    if part == "all":
        return direction
    if head is None:
        raise ValueError("a head / features surface needs the names of the head parameters")
    keep = (lambda name: name in head) if part == "head" else (lambda name: name not in head)
    return {name: d if keep(name) else torch.zeros_like(d) for name, d in direction.items()}


def loss_surface(
    context: ProbeContext,
    spec: SurfaceSpec,
    delta: ParamDict,
    eta: ParamDict,
    coords: torch.Tensor,
    point_chunk: int,
    resample_rng: torch.Generator | None = None,
) -> torch.Tensor:
    """f(a, b) for every (a, b) in ``coords`` × ``coords``: values [n, n], first index along δ."""
    n = len(coords)
    a_all, b_all = coords.repeat_interleave(n), coords.repeat(n)
    if spec.loss == "pretraining":
        theta = {name: p.detach() for name, p in context.trained.items()}
        x, y = pretraining_images(context, spec.images)

        def supervised(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(context.forward(shifted(theta, delta, eta, a, b), x), y)

        return map_leading(supervised, chunk=point_chunk)(a_all, b_all).detach().reshape(n, n)

    theta = {name: p.detach() for name, p in context.params.items()}
    steps = context.steps if spec.inner_steps is None else spec.inner_steps
    pool = first_query_shots(context.batch, spec.query_shots)
    task_chunk = 1 if point_chunk == 1 else 0  # a loop over points loops over tasks too

    def task_loss(start: ParamDict, sx, sy, qx, qy) -> torch.Tensor:
        adapted = adapt(
            context.loss, start, sx, sy, steps=steps, lr=context.lr, first_order=True, adapted=context.adapted
        )
        x, y = (qx, qy) if spec.loss == "query" else (sx, sy)
        return F.cross_entropy(context.forward(adapted, x), y)

    def mean_over_tasks(a: torch.Tensor, b: torch.Tensor, *tasks: torch.Tensor) -> torch.Tensor:
        start = shifted(theta, delta, eta, a, b)
        return map_leading(lambda *task: task_loss(start, *task), chunk=task_chunk)(*tasks).mean()

    if not spec.resample and context.batched_forward is not None and context.update is None:
        fixed = pool.chunk(spec.first_task, spec.first_task + spec.tasks).tensors()
        values = grouped_surface(context, theta, delta, eta, a_all, b_all, fixed, steps, spec.loss, point_chunk)
        return values.reshape(n, n)
    if not spec.resample:
        fixed = pool.chunk(spec.first_task, spec.first_task + spec.tasks).tensors()
        values = map_leading(lambda a, b: mean_over_tasks(a, b, *fixed), chunk=point_chunk)(a_all, b_all)
        return values.detach().reshape(n, n)
    picks = torch.stack([torch.randperm(len(pool), generator=resample_rng)[: spec.tasks] for _ in range(n * n)])
    values = []
    for start in range(0, n * n, point_chunk):
        stop = min(start + point_chunk, n * n)
        index = picks[start:stop].to(pool.support_x.device)
        tasks = [t[index] for t in pool.tensors()]  # [points, k, ...]: each point's own draw
        values.append(
            map_leading(mean_over_tasks, chunk=task_chunk)(a_all[start:stop], b_all[start:stop], *tasks).detach()
        )
    return torch.cat(values).reshape(n, n)


def grouped_surface(
    context: ProbeContext,
    theta: ParamDict,
    delta: ParamDict,
    eta: ParamDict,
    a_all: torch.Tensor,
    b_all: torch.Tensor,
    tasks: tuple[torch.Tensor, ...],
    steps: int,
    loss: str,
    point_chunk: int,
) -> torch.Tensor:
    """f(a, b) at every point of (``a_all``, ``b_all``) for the fixed ``tasks``, [points]: each chunk of
    points × tasks is one grouped network (the hybrid engine, ``metaland.models.grouped``) adapted
    under plain autograd (eq. 2.1 from θ + a δ + b η, first order: no graph to the start is needed).
    The grid points share their tasks' images (the parameter sets are task-major: row i·points + p is
    task i at point p), whose statistics for the folded first BatchNorm are taken once per surface, and
    the query pass, without autograd, runs channels last. The chunks run in
    worker threads with one intra-op thread each (``map_in_threads``), so the values do not depend on
    the number of threads."""
    support_x, support_y, query_x, query_y = tasks
    k = support_x.shape[0]
    x, y = (query_x, query_y) if loss == "query" else (support_x, support_y)
    support_pass = context.batched_forward.for_images(support_x)
    query_pass = partial(context.batched_forward.for_images(x), channels_last=True)
    moving = [name for name in theta if context.adapted is None or name in context.adapted]

    def chunk_values(start: int) -> torch.Tensor:
        a, b = a_all[start : start + point_chunk], b_all[start : start + point_chunk]
        points = len(a)
        starts = {}
        for name, value in theta.items():
            along = (-1,) + (1,) * value.dim()
            point = value + a.reshape(along) * delta[name] + b.reshape(along) * eta[name]  # eq. 8, [points, ...]
            starts[name] = point.repeat(k, *(1,) * value.dim())  # [tasks · points, ...], task-major
        adapted = grouped_inner_loop(
            support_pass,
            starts,
            support_x,
            support_y.repeat_interleave(points, dim=0),
            steps=steps,
            lr=context.lr,
            first_order=True,
            moving=moving,
        )
        with torch.no_grad():
            logits = query_pass({name: v.detach() for name, v in adapted.items()}, x)
            per_task = F.cross_entropy(
                logits.flatten(0, 1), y.repeat_interleave(points, dim=0).flatten(), reduction="none"
            )
            return per_task.reshape(k, points, -1).mean(dim=(0, 2))

    chunks = range(0, len(a_all), point_chunk)
    return torch.cat(map_in_threads(chunk_values, chunks, workers=torch.get_num_threads()))


def shifted(theta: ParamDict, delta: ParamDict, eta: ParamDict, a: torch.Tensor, b: torch.Tensor) -> ParamDict:
    """θ + a δ + b η (eq. 8)."""
    return {name: theta[name] + a * delta[name] + b * eta[name] for name in theta}


def first_query_shots(batch: TaskBatch, shots: int | None) -> TaskBatch:
    """The tasks with only the first ``shots`` query samples of each class (labels are class-major)."""
    if shots is None:
        return batch
    ways = int(batch.support_y.max()) + 1
    per_class = batch.query_y.shape[1] // ways
    if shots > per_class:
        raise ConfigError(
            f"a surface averages {shots} query shots per class, but the probe tasks have {per_class}. "
            "Fix: lower query_shots, or raise the run's queries."
        )
    index = (torch.arange(ways)[:, None] * per_class + torch.arange(shots)).reshape(-1).to(batch.query_y.device)
    return TaskBatch(batch.support_x, batch.support_y, batch.query_x[:, index], batch.query_y[:, index])


def require_pretrained(context: ProbeContext) -> ParamDict:
    """θ as trained, for a pretraining surface: only a run with one logit per meta-train class has
    a pre-training loss (seed 001 §3.1.2)."""
    split, trained = context.train_split, context.trained
    if split is None or trained is None or context.head is None:
        raise ConfigError("a pretraining surface needs the meta-train split and θ as trained; this probe has neither.")
    classes = trained[context.head[1]].shape[0]
    if classes != split.num_classes:
        raise ConfigError(
            f"a pretraining surface measures the supervised loss over all {split.num_classes} meta-train classes, "
            f"but this run's head has {classes} logits: it was not pre-trained on them. Fix: give pretraining "
            "surfaces only to runs of the transfer or finetune baselines (a probe_set of their own)."
        )
    return trained


def pretraining_images(context: ProbeContext, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` fixed meta-train images (seeded by the probe seed), labelled by class."""
    split = context.train_split
    if count > len(split.images):
        raise ConfigError(
            f"a pretraining surface averages {count} images; the meta-train split has {len(split.images)}. "
            "Fix: lower images."
        )
    index = torch.randperm(len(split.images), generator=generator(context.seed, "surface-pretraining-images"))[:count]
    labels = torch.searchsorted(split.offsets, index, right=True) - 1
    like = context.trained[context.head[1]]
    return model_inputs(split.images[index]).to(device=like.device, dtype=like.dtype), labels.to(like.device)


def surfaces(context: ProbeContext, options: SurfaceOptions) -> ProbeOutput:
    summary: dict[str, float] = {}
    grids: dict[str, Grid] = {}
    for name, spec in options.surfaces.items():
        if spec.loss == "pretraining":
            theta = require_pretrained(context)
        else:
            context.require_gradient_descent("surface")
            theta = context.params
        rng = generator(context.seed, "surface-directions")  # the same draw for every surface and run
        delta, eta = (restrict(filter_normalised_direction(theta, rng), spec.part, context.head) for _ in range(2))
        like = next(iter(theta.values()))
        coords = torch.linspace(-options.span, options.span, options.resolution, dtype=torch.float64)
        on_model = coords.to(device=like.device, dtype=like.dtype)
        resample_rng = generator(context.seed, "surface-resample", name)
        values = loss_surface(context, spec, delta, eta, on_model, options.point_chunk, resample_rng).cpu().double()
        centre = values[options.resolution // 2, options.resolution // 2]
        grids[name] = Grid(coords, coords, values)
        summary[f"{name}_centre"] = centre.item()
        summary[f"{name}_mean_rise"] = (values - centre).mean().item()
    return ProbeOutput({}, summary, grids)


def check_surfaces(options: SurfaceOptions, probe_config) -> str | None:
    too_many = sorted(
        name
        for name, spec in options.surfaces.items()
        if spec.loss != "pretraining" and spec.first_task + spec.tasks > probe_config.tasks
    )
    if too_many:
        return (
            f"surfaces {', '.join(too_many)} need more tasks (first_task + tasks) than the {probe_config.tasks} fixed "
            "probe tasks. Fix: lower their tasks or first_task, or raise probe.tasks."
        )
    return None


PROBES.register(
    "surface",
    ProbeSpec(
        "surface",
        "2-D loss surfaces along filter-normalised random directions, adapted from each point (seed 001 eqs. 8-9)",
        SurfaceOptions,
        surfaces,
        check_surfaces,
    ),
)
