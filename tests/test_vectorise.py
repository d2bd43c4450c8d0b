"""A chunk of 1 loops instead of vmapping (faster on a CPU): same results, same stacked layout."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

from metaland.meta import ALGORITHMS, MetaProblem
from metaland.meta.evaluate import evaluate_tasks
from metaland.meta.inner import cross_entropy
from metaland.models import head_names
from metaland.probes import PROBES, ProbeContext
from metaland.vectorise import map_in_threads, map_leading
from tests.reference import LR, STEPS, make_tasks, tiny_model


def test_loop_stacks_like_vmap_with_unmapped_arguments_and_tree_outputs():
    def f(x, w, table):
        return {"sum": (x * w).sum(), "parts": (x + table["b"], x.max())}

    x, w, table = torch.randn(5, 3), torch.randn(3), {"b": torch.randn(5, 3)}
    expected = vmap(f, in_dims=(0, None, 0))(x, w, table)
    for chunk in (1, 2, 0):
        got = map_leading(f, chunk=chunk, in_dims=(0, None, 0))(x, w, table)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_worker_threads_keep_the_order_run_one_intra_op_thread_each_and_restore_the_count():
    """map_in_threads = the list comprehension, with PyTorch at one intra-op thread inside every item
    whatever the worker count, and the caller's thread count back afterwards, after an error too."""
    import threading

    torch.set_num_threads(2)
    seen = []

    def item(i: int) -> tuple[int, int]:
        seen.append(threading.current_thread().name)
        return i * i, torch.get_num_threads()

    for workers in (1, 2, 5):
        assert map_in_threads(item, range(7), workers=workers) == [(i * i, 1) for i in range(7)]
        assert torch.get_num_threads() == 2
    assert any(name.startswith("metaland-worker") for name in seen)

    def failing(i: int) -> int:
        if i == 3:
            raise ValueError("item 3")
        return i

    for workers in (1, 2):
        with pytest.raises(ValueError, match="item 3"):
            map_in_threads(failing, range(5), workers=workers)
        assert torch.get_num_threads() == 2


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_meta_gradient_and_evaluation_agree_looped_and_vectorised(algorithm):
    _, forward, params = tiny_model()
    batch = make_tasks(4)
    spec = ALGORITHMS.get(algorithm)

    def meta_gradient(chunk):
        problem = MetaProblem(forward, cross_entropy(forward), STEPS, LR, chunk)
        return spec.meta_gradient(problem, params, batch, spec.options_model())[0]

    torch.testing.assert_close(meta_gradient(1), meta_gradient(0), rtol=1e-10, atol=1e-12)
    looped, _ = evaluate_tasks(forward, params, batch, steps=STEPS, lr=LR, chunk=1)
    vectorised, _ = evaluate_tasks(forward, params, batch, steps=STEPS, lr=LR, chunk=3)
    torch.testing.assert_close(looped, vectorised, rtol=1e-10, atol=1e-12)


def test_surface_and_sharpness_agree_looped_and_vectorised():
    module, forward, params = tiny_model()
    batch = make_tasks(3)
    surfaces = {"m": {"tasks": 3}, "r": {"tasks": 2, "resample": True}}
    results = []
    for chunk in (1, 4):
        context = ProbeContext(forward, params, batch, STEPS, LR, chunk, 0, head_names(module))
        surface = PROBES.get("surface")
        sharpness = PROBES.get("sharpness")
        grids = surface.run(context, surface.options_model(resolution=3, point_chunk=chunk, surfaces=surfaces)).grids
        sharp = sharpness.run(context, sharpness.options_model(tasks=3)).per_task["sam_sharpness"]
        results.append((grids["m"].values, grids["r"].values, sharp))
    for looped, vectorised in zip(*results, strict=True):
        torch.testing.assert_close(looped, vectorised, rtol=1e-10, atol=1e-12)
