"""Map a per-task (or per-grid-point) function over a leading axis: ``torch.func.vmap`` in chunks,
or a plain Python loop when the chunk is 1.

Without ``vmap`` (the hybrid engine's grouped networks, ``metaland.meta.engines``), independent
pieces of work are spread over worker threads instead (:func:`map_in_threads`).

On a GPU, ``vmap`` turns many small kernels into a few large ones. On a CPU it turns per-task
weights into grouped convolutions, which run slower than a loop's plain kernels when each group is
large (2-3× for 75 query images) and faster when it is small (5 support images), and large chunks
outgrow the caches (``benchmarks/bounds.py``, docs/performance.md). So the chunk is a knob, and a
chunk of 1 means "loop": the same math, the same per-item results up to float rounding, stacked
along a leading axis as ``vmap`` stacks them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch.func import vmap
from torch.utils import _pytree as pytree

Item = TypeVar("Item")
Result = TypeVar("Result")


def map_leading(fn: Callable, *, chunk: int, in_dims: int | tuple = 0) -> Callable:
    """``fn`` mapped over dimension 0 of its arguments (``in_dims`` as in ``vmap``: 0 or None per
    argument): ``vmap`` over chunks of ``chunk`` items (0 = all at once), or a loop if ``chunk`` is 1."""
    if chunk != 1:
        return vmap(fn, in_dims=in_dims, chunk_size=chunk or None)

    def loop(*args: Any):
        dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(args)
        mapped = [arg for arg, dim in zip(args, dims, strict=True) if dim is not None]
        count = pytree.tree_leaves(mapped)[0].shape[0]

        def item(i: int) -> list:
            return [
                pytree.tree_map(lambda x: x[i], arg) if dim is not None else arg
                for arg, dim in zip(args, dims, strict=True)
            ]

        outputs = [fn(*item(i)) for i in range(count)]
        return pytree.tree_map(lambda *values: torch.stack(values), outputs[0], *outputs[1:])

    return loop


def map_in_threads(fn: Callable[[Item], Result], items: Sequence[Item], *, workers: int) -> list[Result]:
    """``[fn(item) for item in items]``, spread over ``workers`` threads that each run PyTorch with
    one intra-op thread (the intra-op pool is process-wide: it is set to 1 for the call and restored).

    On a CPU, the small kernels of few-shot networks scale across independent pieces of work far
    better than within one op (2 workers × 1 thread: 1.6-2.0× one thread; 1 × 2 intra-op threads:
    1.2×; docs/performance.md). Every item is computed with one intra-op thread whatever ``workers``
    is, so the results do not depend on how many workers there are. ``fn`` must be thread-safe:
    plain autograd and functional ops (no ``vmap``, whose transform stack is not safe to enter from
    two threads, and no ``functional_call`` on a shared module).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="metaland-worker") as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(threads)
