"""Map a per-task (or per-grid-point) function over a leading axis: ``torch.func.vmap`` in chunks,
or a plain Python loop when the chunk is 1.

On a GPU, ``vmap`` turns many small kernels into a few large ones. On a CPU it turns per-task
weights into grouped convolutions, which run slower than a loop's plain kernels when each group is
large (2-3× for 75 query images) and faster when it is small (5 support images), and large chunks
outgrow the caches (``benchmarks/bounds.py``, docs/performance.md). So the chunk is a knob, and a
chunk of 1 means "loop": the same math, the same per-item results up to float rounding, stacked
along a leading axis as ``vmap`` stacks them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.func import vmap
from torch.utils import _pytree as pytree


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
