"""Synthetic binary classification of seed 003 §3.2 / §A.1.1: one linear boundary per task.

Each task is a decision boundary through the origin, w ~ N(0, I_d) (d = 100), and data points
x ~ N(0, I_d) labelled sign(wᵀx) ("Each one of the 1,000 data point x ~ N(0, I_100)", A.1.1). The
paper samples "training, validation and testing samples by randomly sampling data points from
both sides of the decision boundaries" (§3.2), so each task stores ``points_per_task / 2`` points
on each side. A point on the wrong side is reflected (x -> -x): N(0, I) is symmetric, so the
reflected point is an exact draw from x ~ N(0, I) conditioned on the other side.

Layout (``metaland.data.layout``): class ``2t`` holds the points of task ``t`` with wᵀx < 0 (label
0), class ``2t + 1`` those with wᵀx > 0 (label 1); points are float32 ``[N, 1, s, s]`` with
s² = d, the model inputs as they are. :func:`sample_boundary_tasks` draws a task's two sides
together (never classes of two different tasks), ``shots`` support and ``queries`` query points
per side. The train / val / test task pools are disjoint, all generated from ``seed``; nothing is
downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from pydantic import Field, model_validator

from metaland.data.layout import SplitData, write_layout
from metaland.data.registry import DATASETS, SPLITS, DatasetSpec
from metaland.data.tasks import TaskSet, draw_instances
from metaland.errors import ConfigError
from metaland.schema import Params
from metaland.seeding import generator

NAME = "synthetic-binary"


class TaskPools(Params):
    """Tasks (boundaries) per split; seed 003 does not state them ("a subset of training tasks", §3.2)."""

    train: int = Field(200, ge=1, description="Meta-training task pool (seed 003 silent; metaland default).")
    val: int = Field(50, ge=1, description="Validation task pool (seed 003 silent; metaland default).")
    test: int = Field(100, ge=1, description="Meta-test task pool (seed 003 silent; metaland default).")


class SyntheticBinaryParams(Params):
    """How the synthetic boundary tasks are generated (seed 003 §A.1.1)."""

    dims: int = Field(100, ge=1, description="d: dimension of w and x (seed 003 §A.1.1: 100); a perfect square.")
    points_per_task: int = Field(
        1000, ge=2, description="Points per task, half on each side of the boundary (seed 003 §A.1.1: 1,000)."
    )
    tasks: TaskPools = Field(default_factory=TaskPools, description="Task pool per split (seed 003 silent).")
    seed: int = Field(0, ge=0, description="Seed of the boundaries and points of every split.")

    @model_validator(mode="after")
    def _shape(self) -> SyntheticBinaryParams:
        if math.isqrt(self.dims) ** 2 != self.dims:
            raise ValueError(f"dims = {self.dims} must be a perfect square (points are stored as s x s inputs)")
        if self.points_per_task % 2:
            raise ValueError(f"points_per_task = {self.points_per_task} must be even (half on each side)")
        return self


def boundary_task(dims: int, points: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One task: w ~ N(0, I), x ~ N(0, I) [points, d] and labels 1[wᵀx > 0] (sign(wᵀx) in {0, 1})."""
    w = torch.randn(dims, generator=rng)
    x = torch.randn(points, dims, generator=rng)
    return w, x, (x @ w > 0).to(torch.int64)


def balanced_sides(w: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The points of ``x`` reflected onto the negative side (first half) and the positive side
    (second half) of the boundary w: exact draws from N(0, I) conditioned on each side."""
    half = len(x) // 2
    side = torch.where(x @ w > 0, 1.0, -1.0).unsqueeze(1)
    return -(x[:half] * side[:half]), x[half:] * side[half:]


def split_data(params: SyntheticBinaryParams, split: str) -> SplitData:
    rng = generator(params.seed, NAME, split)
    side = math.isqrt(params.dims)
    blocks, names = [], []
    for t in range(getattr(params.tasks, split)):
        w, x, _ = boundary_task(params.dims, params.points_per_task, rng)
        for label, points in enumerate(balanced_sides(w, x)):
            blocks.append(points.reshape(-1, 1, side, side))
            names.append(f"task{t:05d}/{'neg' if label == 0 else 'pos'}")
    offsets = torch.tensor([0] + [len(block) for block in blocks]).cumsum(0)
    return SplitData(torch.cat(blocks).contiguous(), offsets, tuple(names))


def build(params: SyntheticBinaryParams, archives: Mapping[str, Path], out_dir: Path) -> None:
    """Generate every split into ``out_dir`` (no archives)."""
    write_layout(out_dir, {s: split_data(params, s) for s in SPLITS}, {"generator": "seed 003 §A.1.1"})


def sample_boundary_tasks(
    split: SplitData, *, ways: int, shots: int, queries: int, n_tasks: int, generator: torch.Generator
) -> TaskSet:
    """``n_tasks`` tasks of the pool (without repeats while the pool lasts), each with its two sides
    as classes (label 0 = wᵀx < 0, label 1 = wᵀx > 0) and ``shots`` + ``queries`` points per side."""
    if ways != 2:
        raise ConfigError(
            f"{NAME} tasks are binary (one boundary, two sides), but {ways}-way tasks were asked for. "
            "Fix: set ways: 2 for runs on this dataset."
        )
    pool = split.num_classes // 2
    order = torch.cat([torch.randperm(pool, generator=generator) for _ in range(-(-n_tasks // pool))])[:n_tasks]
    classes = torch.stack([2 * order, 2 * order + 1], dim=1)
    picks = torch.empty(n_tasks, 2, shots + queries, dtype=torch.int64)
    for t in range(n_tasks):
        for w, c in enumerate(classes[t].tolist()):
            picks[t, w] = draw_instances(split, c, shots + queries, generator)
    return TaskSet(classes, picks[..., :shots].contiguous(), picks[..., shots:].contiguous())


DATASETS.register(
    NAME,
    DatasetSpec(
        name=NAME,
        description="Synthetic binary tasks of seed 003 §A.1.1: w, x ~ N(0, I_100), label sign(wᵀx); generated.",
        sources=lambda _params: (),
        config_model=SyntheticBinaryParams,
        split_sizes=lambda params: {s: 2 * getattr(params.tasks, s) for s in SPLITS},
        min_instances=lambda params: params.points_per_task // 2,
        build=build,
        channels=1,
        sample_tasks=sample_boundary_tasks,
        input_shape=lambda params: (1, math.isqrt(params.dims), math.isqrt(params.dims)),
    ),
)
