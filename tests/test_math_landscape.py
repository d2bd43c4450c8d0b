"""Landscape probes against brute force on the hand-written tiny model: SAM sharpness (seed 001
eqs. 16-17) with explicit autograd and re-adaptation, and, at a meta-trained Conv4 checkpoint, with
its Hessian terms built from the curvature oracle's double-backward operator; and the 2-D surface
(eqs. 8-9) point by point with the reference inner loop."""

from __future__ import annotations

import pytest
import torch

from metaland.config import ProbeConfig
from metaland.errors import ConfigError
from metaland.meta.inner import cross_entropy
from metaland.models import flatten, head_names
from metaland.models.grouped import task_batched_forward
from metaland.probes import PROBES, ProbeContext
from metaland.probes.surface import filter_normalised_direction, restrict
from metaland.seeding import generator
from tests.reference import (
    LR,
    SIZE,
    STEPS,
    WAYS,
    autograd_hessian_operator,
    in_float64,
    leaves,
    make_tasks,
    reference_adapt,
    reference_loss,
    tiny_model,
    unflatten_like,
)

N_TASKS = 4


def _context(module, forward, params, batch, *, chunk: int = 3) -> ProbeContext:
    return ProbeContext(forward, params, batch, STEPS, LR, chunk, 0, head_names(module))


def _query_loss(params: dict, task: tuple, *, steps: int = STEPS, create_graph: bool = False) -> torch.Tensor:
    sx, sy, qx, qy = task
    return reference_loss(reference_adapt(params, sx, sy, steps=steps, create_graph=create_graph), qx, qy)


@pytest.mark.parametrize(("first_order", "perturb"), [(False, "all"), (True, "weights")])
def test_sam_sharpness_matches_brute_force(first_order, perturb):
    module, forward, params = tiny_model()
    batch = make_tasks(N_TASKS)
    rho = 0.2
    expected = []
    for i in range(N_TASKS):
        task = tuple(t[i] for t in batch.tensors())
        if first_order:  # g at the adapted weights
            end = leaves(reference_adapt(params, task[0], task[1]))
            before = reference_loss(end, task[2], task[3])
            g = torch.autograd.grad(before, list(end.values()))
        else:  # g through the inner loop
            theta = leaves(params)
            before = _query_loss(theta, task, create_graph=True)
            g = torch.autograd.grad(before, list(theta.values()))
        norm = torch.sqrt(sum(x.square().sum() for x in g))
        shifted = {
            k: v + (rho * gk / norm if perturb == "all" or v.dim() >= 2 else 0)
            for (k, v), gk in zip(params.items(), g, strict=True)
        }
        expected.append((_query_loss(shifted, task) - before).item())

    spec = PROBES.get("sharpness")
    options = spec.options_model(rho=rho, tasks=N_TASKS, first_order=first_order, perturb=perturb)
    out = spec.run(_context(module, forward, params, batch), options)
    torch.testing.assert_close(out.per_task["sam_sharpness"], torch.tensor(expected, dtype=torch.float64))
    assert out.summary["sam_sharpness"] == pytest.approx(sum(expected) / N_TASKS, rel=1e-9)


def test_sam_sharpness_at_further_radii_is_that_of_the_probe_run_at_each_radius():
    """``radii`` measures eq. 17 at each further ρ' from the same g_i: its columns equal the main column of the
    probe run with rho = ρ' (itself checked against brute force above), and the main columns are unchanged."""
    module, forward, params = tiny_model()
    batch = make_tasks(N_TASKS)
    spec = PROBES.get("sharpness")
    context = _context(module, forward, params, batch)
    both = spec.run(context, spec.options_model(rho=0.2, radii=[0.05, 0.4], tasks=N_TASKS))
    assert set(both.per_task) == {
        "sam_sharpness",
        "sam_perturbed_query_loss",
        "sam_sharpness_rho0.05",
        "sam_sharpness_rho0.4",
    }
    for rho in (0.2, 0.05, 0.4):
        alone = spec.run(context, spec.options_model(rho=rho, tasks=N_TASKS)).per_task["sam_sharpness"]
        column = "sam_sharpness" if rho == 0.2 else f"sam_sharpness_rho{rho:g}"
        torch.testing.assert_close(both.per_task[column], alone, rtol=1e-12, atol=1e-14)
        assert both.summary[column] == pytest.approx(alone.mean().item(), rel=1e-12)
    with pytest.raises(ValueError, match="distinct and above 0"):
        spec.options_model(radii=[0.1, 0.1])


def test_sam_sharpness_with_zero_inner_steps_is_that_of_the_query_loss_at_theta():
    module, forward, params = tiny_model()
    batch = make_tasks(2)
    spec = PROBES.get("sharpness")
    out = spec.run(_context(module, forward, params, batch), spec.options_model(rho=0.1, tasks=2, inner_steps=0))
    task = tuple(t[0] for t in batch.tensors())
    theta = leaves(params)
    before = reference_loss(theta, task[2], task[3])
    g = torch.autograd.grad(before, list(theta.values()))
    norm = torch.sqrt(sum(x.square().sum() for x in g))
    after = reference_loss({k: v + 0.1 * gk / norm for (k, v), gk in zip(params.items(), g, strict=True)}, *task[2:])
    assert out.per_task["sam_sharpness"][0].item() == pytest.approx((after - before).item(), rel=1e-9)


def test_filter_normalised_direction_has_the_norms_of_theta_filter_by_filter():
    _, _, params = tiny_model()
    direction = filter_normalised_direction(params, generator(0, "surface-directions"))
    for name, p in params.items():
        if p.dim() < 2:
            assert torch.equal(direction[name], torch.zeros_like(p))
            continue
        got = direction[name].reshape(p.shape[0], -1).norm(dim=1)
        torch.testing.assert_close(got, p.reshape(p.shape[0], -1).norm(dim=1), rtol=1e-8, atol=1e-9)


def test_direction_restricted_to_the_head_or_the_features():
    module, _, params = tiny_model()
    head = head_names(module)
    direction = filter_normalised_direction(params, generator(0, "x"))
    only_head, features = restrict(direction, "head", head), restrict(direction, "features", head)
    for name in params:
        in_head = name in head
        assert torch.equal(only_head[name], direction[name] if in_head else torch.zeros_like(direction[name]))
        assert torch.equal(features[name], torch.zeros_like(direction[name]) if in_head else direction[name])


@pytest.mark.parametrize("engine", ["vmap", "hybrid"])
@pytest.mark.parametrize(
    ("loss", "steps", "part", "first"), [("query", None, "all", 0), ("support", 0, "head", 0), ("support", 0, "all", 1)]
)
def test_surface_matches_point_by_point_brute_force(loss, steps, part, first, engine):
    """Eq. 8 at every grid point, by hand, averaged over fixed tasks ``first`` … ``first`` + 2; under the hybrid
    engine each chunk of points × tasks is one grouped network (point_chunk 4 of 25 points leaves a partial last
    chunk)."""
    module, forward, params = tiny_model()
    batch = make_tasks(N_TASKS)
    spec = PROBES.get("surface")
    surface = {"loss": loss, "inner_steps": steps, "tasks": 3, "part": part, "first_task": first}
    options = spec.options_model(span=0.5, resolution=5, point_chunk=4, surfaces={"s": surface})
    context = _context(module, forward, params, batch)
    if engine == "hybrid":
        context.batched_forward = task_batched_forward(module)
    out = spec.run(context, options)
    grid = out.grids["s"]

    rng = generator(0, "surface-directions")
    delta, eta = (restrict(filter_normalised_direction(params, rng), part, head_names(module)) for _ in range(2))
    k = STEPS if steps is None else steps
    for i, j in [(0, 0), (2, 2), (4, 1), (1, 3)]:
        a, b = grid.x[i].item(), grid.y[j].item()
        start = {n: params[n] + a * delta[n] + b * eta[n] for n in params}
        values = []
        for t in range(first, first + 3):
            sx, sy, qx, qy = (x[t] for x in batch.tensors())
            adapted = reference_adapt(start, sx, sy, steps=k)
            values.append(reference_loss(adapted, *((qx, qy) if loss == "query" else (sx, sy))).item())
        assert grid.values[i, j].item() == pytest.approx(sum(values) / 3, rel=1e-9), (i, j)
    centre = grid.values[2, 2].item()
    assert out.summary["s_centre"] == centre
    assert out.summary["s_mean_rise"] == pytest.approx((grid.values - centre).mean().item(), rel=1e-12)
    torch.testing.assert_close(grid.x, torch.linspace(-0.5, 0.5, 5, dtype=torch.float64))


def test_hybrid_surface_gives_the_same_bytes_with_any_number_of_worker_threads():
    """Under the hybrid engine the chunks of grid points run in worker threads (one per intra-op
    thread of the caller), each with one intra-op thread: the values do not depend on the count."""
    module, forward, params = tiny_model()
    spec = PROBES.get("surface")
    options = spec.options_model(span=0.5, resolution=5, point_chunk=4, surfaces={"s": {"loss": "query", "tasks": 3}})
    context = _context(module, forward, params, make_tasks(N_TASKS))
    context.batched_forward = task_batched_forward(module)
    grids = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        grids.append(spec.run(context, options).grids["s"].values)
        assert torch.get_num_threads() == threads
    assert all(torch.equal(grids[0], grid) for grid in grids[1:])


def test_surface_options_refuse_an_even_resolution_and_too_many_tasks():
    spec = PROBES.get("surface")
    with pytest.raises(ValueError, match="odd"):
        spec.options_model(resolution=10)
    options = spec.options_model(surfaces={"big": {"tasks": 50}})
    message = spec.check(options, ProbeConfig(tasks=20))
    assert "big" in message and "20 fixed probe tasks" in message and "Fix:" in message
    past_the_end = spec.options_model(surfaces={"second": {"tasks": 1, "first_task": 20}})
    assert "second" in spec.check(past_the_end, ProbeConfig(tasks=20))
    assert (
        spec.check(spec.options_model(surfaces={"second": {"tasks": 1, "first_task": 19}}), ProbeConfig(tasks=20))
        is None
    )
    with pytest.raises(ValueError, match=r"first_task picks fixed tasks.*Fix:"):
        spec.options_model(surfaces={"drawn": {"tasks": 4, "first_task": 1, "resample": True}})
    sharpness = PROBES.get("sharpness")
    assert "Fix:" in sharpness.check(sharpness.options_model(tasks=30), ProbeConfig(tasks=20))


@pytest.mark.parametrize("probe", ["sharpness", "surface", "linearity", "meta_loss_curvature"])
def test_probes_of_the_gradient_descent_inner_loop_refuse_a_learned_update(probe):
    """A run with a learned inner update (seed 003 §4) is refused, not probed with plain GD."""
    module, forward, params = tiny_model()
    context = _context(module, forward, params, make_tasks(3))
    context.update = lambda support_loss, current, grads, lr: {k: current[k] - lr * g for k, g in grads.items()}
    options = PROBES.get(probe).options_model()
    with pytest.raises(ConfigError, match=rf"the {probe} probe follows a plain gradient-descent inner loop.*Fix: "):
        PROBES.get(probe).run(context, options)


def _brute_force_point(params, delta, eta, a, b, tasks, *, steps, loss="query"):
    start = {n: params[n] + a * delta[n] + b * eta[n] for n in params}
    values = []
    for sx, sy, qx, qy in tasks:
        adapted = reference_adapt(start, sx, sy, steps=steps)
        values.append(reference_loss(adapted, *((qx, qy) if loss == "query" else (sx, sy))).item())
    return sum(values) / len(values)


def _directions(params, module, part="all"):
    rng = generator(0, "surface-directions")
    return [restrict(filter_normalised_direction(params, rng), part, head_names(module)) for _ in range(2)]


def test_resampled_surface_draws_its_own_tasks_at_every_point():
    """Seed 001 Fig. 8: k tasks drawn afresh per grid point, without replacement from the fixed pool."""
    module, forward, params = tiny_model()
    batch = make_tasks(6)
    spec = PROBES.get("surface")
    options = spec.options_model(
        span=0.5, resolution=3, point_chunk=2, surfaces={"s": {"tasks": 2, "resample": True, "inner_steps": 1}}
    )
    grid = spec.run(_context(module, forward, params, batch), options).grids["s"]
    delta, eta = _directions(params, module)
    rng = generator(0, "surface-resample", "s")
    picks = [torch.randperm(6, generator=rng)[:2].tolist() for _ in range(9)]
    assert len({tuple(p) for p in picks}) > 1
    for point, pick in enumerate(picks):
        i, j = divmod(point, 3)
        tasks = [tuple(x[t] for x in batch.tensors()) for t in pick]
        expected = _brute_force_point(params, delta, eta, grid.x[i].item(), grid.y[j].item(), tasks, steps=1)
        assert grid.values[i, j].item() == pytest.approx(expected, rel=1e-9), (i, j)


def test_query_shot_surface_averages_the_first_shots_of_each_class():
    """Seed 001 Fig. 10: the meta-loss over the first q query samples of each class."""
    module, forward, params = tiny_model()
    batch = make_tasks(2, queries=3)
    spec = PROBES.get("surface")
    options = spec.options_model(span=0.5, resolution=3, surfaces={"s": {"tasks": 2, "query_shots": 2}})
    grid = spec.run(_context(module, forward, params, batch), options).grids["s"]
    delta, eta = _directions(params, module)
    keep = torch.tensor([0, 1, 3, 4, 6, 7])  # 3 classes × 3 queries, class-major: the first 2 of each
    tasks = [(sx, sy, qx[keep], qy[keep]) for sx, sy, qx, qy in zip(*batch.tensors(), strict=True)]
    for i, j in [(0, 2), (1, 1)]:
        expected = _brute_force_point(params, delta, eta, grid.x[i].item(), grid.y[j].item(), tasks, steps=STEPS)
        assert grid.values[i, j].item() == pytest.approx(expected, rel=1e-9)
    too_many = spec.options_model(resolution=3, surfaces={"s": {"tasks": 2, "query_shots": 4}})
    with pytest.raises(ConfigError, match=r"query shots per class, but the probe tasks have 3\. Fix:"):
        spec.run(_context(module, forward, params, batch), too_many)


def _labelled_split(classes: int, per_class: int = 4):
    from metaland.data.layout import SplitData

    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (classes * per_class, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)
    offsets = torch.arange(0, classes * per_class + 1, per_class)
    return SplitData(images, offsets, tuple(f"c{c}" for c in range(classes)))


def test_pretraining_surface_is_the_supervised_loss_of_theta_as_trained():
    """Seed 001 Fig. 9: transfer learning's training loss at θ* + aδ + bη on fixed meta-train images."""
    module, forward, params = tiny_model()  # 3 logits: pre-trained on a 3-class meta-train split
    context = _context(module, forward, {k: torch.zeros_like(v) for k, v in params.items()}, make_tasks(2))
    context.trained, context.train_split = params, _labelled_split(WAYS)
    spec = PROBES.get("surface")
    options = spec.options_model(span=0.5, resolution=3, surfaces={"tl": {"loss": "pretraining", "images": 10}})
    grid = spec.run(context, options).grids["tl"]
    delta, eta = _directions(params, module)
    index = torch.randperm(12, generator=generator(0, "surface-pretraining-images"))[:10]
    x = (context.train_split.images[index].float() / 255).double()  # the pixel convention, in float32
    y = index // 4
    for i, j in [(0, 0), (1, 1), (2, 1)]:
        a, b = grid.x[i].item(), grid.y[j].item()
        start = {n: params[n] + a * delta[n] + b * eta[n] for n in params}
        assert grid.values[i, j].item() == pytest.approx(reference_loss(start, x, y).item(), rel=1e-9)


def test_pretraining_surface_refuses_a_run_without_an_all_class_head():
    module, forward, params = tiny_model()
    context = _context(module, forward, params, make_tasks(2))
    context.trained, context.train_split = params, _labelled_split(5)
    spec = PROBES.get("surface")
    options = spec.options_model(resolution=3, surfaces={"tl": {"loss": "pretraining", "images": 10}})
    with pytest.raises(ConfigError, match=r"all 5 meta-train classes, but this run's head has 3 logits.*Fix:"):
        spec.run(context, options)


def test_sam_sharpness_at_a_meta_trained_conv4_checkpoint_matches_the_oracle_operator(trained_conv4):
    """The Hessian terms of second-order SAM sharpness: g_i through the inner loop is
    (I − αH_0)(I − αH_1)…(I − αH_{T−1}) ∇L(θ^T; D'_i) with H_t the support-loss Hessian at θ^t (the
    chain rule of eq. 2.1). Built from the double-backward ``LinearOperator`` the curvature oracle
    uses, on a tiny Conv4 meta-trained by MAML and read back from its checkpoint (float64 here), it
    gives the probe's perturbed query loss and sharpness (eqs. 16-17)."""
    forward, params, batch, steps, lr = trained_conv4
    params, batch = in_float64(params, batch)
    rho = 0.05
    context = ProbeContext(forward, params, batch, steps, lr, 2, 0)
    out = PROBES.get("sharpness").run(context, PROBES.get("sharpness").options_model(rho=rho, tasks=len(batch)))
    loss = cross_entropy(forward)

    def adapt(theta: dict, x, y) -> list[dict]:
        """θ^0 … θ^T of plain gradient descent on the support loss."""
        points = [theta]
        for _ in range(steps):
            at = leaves(points[-1])
            g = torch.autograd.grad(loss(at, x, y), list(at.values()))
            points.append({k: v - lr * gk for (k, v), gk in zip(points[-1].items(), g, strict=True)})
        return points

    for i in range(len(batch)):
        sx, sy, qx, qy = (t[i] for t in batch.tensors())
        points = adapt(params, sx, sy)
        end = leaves(points[-1])
        before = loss(end, qx, qy)
        vector = flatten(dict(zip(end, torch.autograd.grad(before, list(end.values())), strict=True)))
        for theta in reversed(points[:-1]):
            operator = autograd_hessian_operator(loss, theta, sx, sy)
            vector = vector - lr * torch.from_numpy(operator @ vector.numpy())
        shifted = unflatten_like(flatten(params) + rho * vector / vector.norm(), params)
        after = loss(adapt(shifted, sx, sy)[-1], qx, qy).item()
        assert out.per_task["sam_perturbed_query_loss"][i].item() == pytest.approx(after, rel=1e-9)
        assert out.per_task["sam_sharpness"][i].item() == pytest.approx(after - before.item(), rel=1e-7)
