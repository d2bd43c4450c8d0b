"""Float32 accuracy of one meta-gradient per task: every engine and ``higher`` against float64.

A meta-batch's float32 error is decided by its worst task (BatchNorm over 5 support images and five
inner steps of α = 0.4 make some tasks ill-conditioned, and which task float32 rounding blows up
differs between kernels), so a single batch cannot tell two implementations' accuracy apart. This
takes the benchmark's meta-iteration setting (``benchmarks/run.py``: Conv4-64, 28 px, 5-way 1-shot,
15 queries, T = 5) task by task: the meta-gradient of each single task in float32, by each engine and
by ``higher``, against the unrolled float64 autograd loop of the same task, the error being
max |difference| / max |float64 gradient| over all tensors. It prints the median, 90th percentile
and maximum over the tasks, for second and first order.

Usage::

    python benchmarks/meta_accuracy.py --batches 4    # 4 × 16 tasks, about 75 s on 2 cores
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import click
import numpy as np
import torch

from metaland.data.tasks import TaskBatch
from metaland.meta import ALGORITHMS, MetaProblem
from metaland.meta.inner import cross_entropy
from metaland.models import make_forward
from metaland.models.grouped import task_batched_forward
from metaland.schema import NoOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import convnet, higher_meta_gradient, loop_meta_gradient, max_difference, omniglot_like_tasks

STEPS, LR, TASKS = 5, 0.4, 16


def implementations(module, params, first_order: bool) -> dict:
    """name -> (single-task batch -> float32 meta-gradient)."""
    forward, algorithm = make_forward(module), ALGORITHMS.get("fomaml" if first_order else "maml")

    def engine(name: str):
        problem = MetaProblem(
            forward, cross_entropy(forward), STEPS, LR, 0, engine=name, batched_forward=task_batched_forward(module)
        )
        return lambda batch: algorithm.meta_gradient(problem, params, batch, NoOptions())[0]

    found = {name: engine(name) for name in ("hybrid", "vmap", "loop")}
    if importlib.util.find_spec("higher") is not None:
        found["higher"] = lambda batch: higher_meta_gradient(module, params, batch, STEPS, LR, first_order)
    return found


@click.command()
@click.option("--batches", default=2, show_default=True, help="Meta-batches of 16 tasks, each drawn with its own seed.")
def main(batches: int) -> None:
    """Per-task float32 meta-gradient error of every engine and of ``higher`` against float64."""
    module, params = convnet(64, 28, torch.device("cpu"))
    exact_module, _ = convnet(64, 28, torch.device("cpu"))
    exact_module = exact_module.double()
    exact_params = {k: v.double() for k, v in params.items()}
    print(f"{batches * TASKS} tasks, Conv4-64, 5-way 1-shot, 15 queries, T = {STEPS}, α = {LR}")
    print("| meta-gradient of one task, float32 | order | median | 90th percentile | max |")
    print("|---|---|---:|---:|---:|")
    for first_order in (False, True):
        errors: dict[str, list[float]] = {}
        candidates = implementations(module, params, first_order)
        for seed in range(batches):
            tasks = omniglot_like_tasks(TASKS, 28, 15, torch.device("cpu"), seed=seed)
            for i in range(TASKS):
                task = tasks.chunk(i, i + 1)
                exact = TaskBatch(task.support_x.double(), task.support_y, task.query_x.double(), task.query_y)
                truth = loop_meta_gradient(exact_module, exact_params, exact, STEPS, LR, first_order)
                for name, meta_gradient in candidates.items():
                    errors.setdefault(name, []).append(max_difference(truth, meta_gradient(task)))
        order = "first" if first_order else "second"
        for name, values in errors.items():
            median, p90, largest = np.quantile(values, [0.5, 0.9, 1.0])
            print(f"| {name} | {order} | {median:.1e} | {p90:.1e} | {largest:.1e} |")


if __name__ == "__main__":
    main()
