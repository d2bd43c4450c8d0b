"""Episodic N-way K-shot tasks (seed 000 §2.3, §2.7.3).

A task draws ``ways`` classes of a split without replacement, in random order (so labels
0..ways-1 are permuted per task), then ``shots`` support and ``queries`` query samples per class,
disjoint. Task sets are kept in index form (``TaskSet``) so they are tiny, can be saved as JSON
and are materialised into tensors only when used; a fixed task set makes every checkpoint of a
run probed on identical tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from metaland.data.layout import SplitData
from metaland.io import read_json, write_json


@dataclass(frozen=True)
class TaskSet:
    """Index form of ``T`` tasks: classes [T, N]; support [T, N, K] and query [T, N, Q] hold
    instance indices within each class."""

    classes: torch.Tensor
    support: torch.Tensor
    query: torch.Tensor

    def __len__(self) -> int:
        return self.classes.shape[0]

    def to_json(self) -> dict:
        return {"classes": self.classes.tolist(), "support": self.support.tolist(), "query": self.query.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> TaskSet:
        return cls(*(torch.tensor(data[k], dtype=torch.int64) for k in ("classes", "support", "query")))


@dataclass(frozen=True)
class TaskBatch:
    """Materialised tasks: support_x [T, N*K, C, H, W], support_y [T, N*K], query_x, query_y."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def chunk(self, start: int, stop: int) -> TaskBatch:
        return TaskBatch(*(t[start:stop] for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.support_x, self.support_y, self.query_x, self.query_y)

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(*(t.to(device) for t in self.tensors()))

    def map_images(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TaskBatch:
        """The tasks with ``fn`` applied to the support images, then the query images, each passed as
        one stack [T·N·K, C, H, W] (training-time augmentation, ``metaland.data.augment``)."""

        def mapped(x: torch.Tensor) -> torch.Tensor:
            return fn(x.reshape(-1, *x.shape[2:])).reshape(x.shape)

        return TaskBatch(mapped(self.support_x), self.support_y, mapped(self.query_x), self.query_y)


def sample_tasks(
    split: SplitData, *, ways: int, shots: int, queries: int, n_tasks: int, generator: torch.Generator
) -> TaskSet:
    """Draw ``n_tasks`` tasks; all randomness comes from ``generator``."""
    if ways > split.num_classes:
        raise ValueError(f"{ways}-way tasks need {ways} classes; the split has {split.num_classes}")
    per_task = shots + queries
    classes = torch.empty(n_tasks, ways, dtype=torch.int64)
    picks = torch.empty(n_tasks, ways, per_task, dtype=torch.int64)
    for t in range(n_tasks):
        classes[t] = torch.randperm(split.num_classes, generator=generator)[:ways]
        for w, c in enumerate(classes[t].tolist()):
            picks[t, w] = draw_instances(split, c, per_task, generator)
    return TaskSet(classes, picks[..., :shots].contiguous(), picks[..., shots:].contiguous())


def draw_instances(split: SplitData, c: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct instance indices of class ``c``, in random order."""
    available = split.instances(c)
    if count > available:
        raise ValueError(f"class {split.class_names[c]} has {available} samples; a task needs {count}")
    return torch.randperm(available, generator=generator)[:count]


def sample_dataset_tasks(
    dataset: str, split: SplitData, *, ways: int, shots: int, queries: int, n_tasks: int, generator: torch.Generator
) -> TaskSet:
    """Tasks of ``dataset`` (a ``datasets`` entry, variants included): its registered sampler (a generated
    dataset whose tasks are not random class subsets, seed 003 §A.1.1; Lake's fixed one-shot runs), else
    :func:`sample_tasks` (every other dataset, and layouts written outside the registry)."""
    from metaland.data.registry import spec_of
    from metaland.errors import ConfigError

    try:
        spec = spec_of(dataset)
    except ConfigError:  # a layout written outside the registry
        spec = None
    sampler = (spec.sample_tasks if spec else None) or sample_tasks
    return sampler(split, ways=ways, shots=shots, queries=queries, n_tasks=n_tasks, generator=generator)


def materialise(split: SplitData, tasks: TaskSet) -> TaskBatch:
    """Gather the images of a task set as float tensors in [0, 1] with per-task labels."""
    start = split.offsets[tasks.classes].unsqueeze(-1)  # [T, N, 1]
    support_x = _gather(split.images, start + tasks.support)
    query_x = _gather(split.images, start + tasks.query)
    n_tasks, ways, shots = tasks.support.shape
    queries = tasks.query.shape[2]
    labels = torch.arange(ways)
    return TaskBatch(
        support_x=support_x,
        support_y=labels.repeat_interleave(shots).expand(n_tasks, -1).contiguous(),
        query_x=query_x,
        query_y=labels.repeat_interleave(queries).expand(n_tasks, -1).contiguous(),
    )


def model_inputs(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float model inputs in [0, 1] (the pixel convention of the data layout);
    float32 samples of a generated dataset are model inputs already (copied)."""
    if images.dtype == torch.float32:
        return images.clone()
    return images.to(torch.float32).div_(255.0)


def _gather(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[T, N, S] global image indices -> float [T, N*S, C, H, W]."""
    n_tasks = index.shape[0]
    return model_inputs(images[index.reshape(-1)]).reshape(n_tasks, -1, *images.shape[1:])


def save_task_set(path: Path | str, tasks: TaskSet, meta: dict) -> None:
    write_json(path, {"meta": meta, **tasks.to_json()})


def load_task_set(path: Path | str) -> TaskSet:
    return TaskSet.from_json(read_json(path))
