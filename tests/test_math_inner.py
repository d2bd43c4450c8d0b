"""Inner loop and meta-gradients checked against hand-derived computations (seed 000 §1).

Every expected value here is computed independently of ``metaland.meta``: a hand-written forward
pass of the one-block ConvNet (conv → batch-statistics BatchNorm → ReLU → linear), a hand-written
cross-entropy, and plain ``torch.autograd.grad`` loops (``create_graph=True`` where the
derivative goes through the inner loop), all in ``tests/reference.py``. Everything runs in
float64 so agreement is ~1e-12.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from metaland.data.tasks import TaskBatch
from metaland.errors import ConfigError
from metaland.meta import ALGORITHMS, MetaProblem
from metaland.meta.inner import adapt, adapt_tasks, adapted_names, cross_entropy
from metaland.models import flatten, head_names
from metaland.schema import NoOptions
from tests.reference import (
    leaves,
    make_tasks,
    reference_adapt,
    reference_forward,
    reference_loss,
    tiny_model,
    unflatten_like,
)

DTYPE = torch.float64


def assert_dicts_close(actual: dict, expected: dict, *, rtol: float, atol: float) -> None:
    """Compare every entry and name all the parameters that disagree (not only the first)."""
    assert set(actual) == set(expected)
    bad = []
    for k in expected:
        try:
            assert_close(actual[k], expected[k], rtol=rtol, atol=atol)
        except AssertionError:
            err = (actual[k] - expected[k]).abs().max().item()
            bad.append(f"{k}: max |diff| {err:.3g}, max |expected| {expected[k].abs().max().item():.3g}")
    assert not bad, "mismatched parameters:\n" + "\n".join(bad)


def problem(forward, *, steps: int, lr: float, task_chunk: int = 0, adapted=None) -> MetaProblem:
    return MetaProblem(forward, cross_entropy(forward), steps, lr, task_chunk, adapted)


def meta_gradient(name: str, prob: MetaProblem, params: dict, batch: TaskBatch):
    return ALGORITHMS.get(name).meta_gradient(prob, params, batch, NoOptions())


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


def test_reference_forward_is_the_registered_convnet():
    """The hand-written forward reproduces the model f(·; θ) (precondition for all tests below)."""
    _, forward, params = tiny_model()
    x = make_tasks(1).support_x[0]
    assert_close(forward(params, x), reference_forward(params, x), rtol=0, atol=1e-13)


@pytest.mark.parametrize("steps", [1, 3])
def test_adapt_equals_explicit_module_loop(steps):
    """Eq. 2.1: adapt() = T steps of full-batch GD on the support loss, written on an nn.Module."""
    module, forward, params = tiny_model()
    batch = make_tasks(1)
    x, y, lr = batch.support_x[0], batch.support_y[0], 0.4

    net = copy.deepcopy(module).to(DTYPE)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(params[name])
    for _ in range(steps):
        loss = F.cross_entropy(net(x), y)
        grads = torch.autograd.grad(loss, list(net.parameters()))
        with torch.no_grad():
            for p, g in zip(net.parameters(), grads, strict=True):
                p.sub_(lr * g)
    expected = {name: p.detach() for name, p in net.named_parameters()}

    adapted = adapt(cross_entropy(forward), params, x, y, steps=steps, lr=lr)
    assert_dicts_close(adapted, expected, rtol=0, atol=1e-12)
    # The step actually moved the parameters (the comparison is not trivially θ = θ).
    assert (flatten(adapted) - flatten(params)).norm() > 1e-2


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_adapt_tasks_vmap_equals_per_task_loop(chunk):
    """Eq. 2.1 per task: the vmapped, chunked adaptation equals a plain loop over tasks."""
    _, forward, params = tiny_model()
    batch = make_tasks(5)
    adapted = adapt_tasks(
        cross_entropy(forward), params, batch.support_x, batch.support_y, steps=3, lr=0.4, chunk=chunk
    )
    for i in range(len(batch)):
        expected = reference_adapt(leaves(params), batch.support_x[i], batch.support_y[i], steps=3, lr=0.4)
        for name in params:
            assert_close(adapted[name][i], expected[name].detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_maml_meta_gradient_equals_unrolled_second_order(norm):
    """Eq. 2.2: (1/n) Σ_i ∇_θ L(D'_i; θ̃_i), differentiated through T = 3 inner steps (eq. 2.1)."""
    _, forward, params = tiny_model(norm=norm)
    batch = make_tasks(4)
    steps, lr = 3, 0.4

    theta = leaves(params)
    query_losses = []
    for i in range(len(batch)):
        adapted = reference_adapt(theta, batch.support_x[i], batch.support_y[i], steps=steps, lr=lr, create_graph=True)
        query_losses.append(reference_loss(adapted, batch.query_x[i], batch.query_y[i]))
    expected = torch.autograd.grad(torch.stack(query_losses).mean(), list(theta.values()))

    grads, _ = meta_gradient("maml", problem(forward, steps=steps, lr=lr), params, batch)
    assert_dicts_close(grads, dict(zip(theta, expected, strict=True)), rtol=1e-10, atol=1e-12)


def test_maml_one_step_closed_form_with_explicit_hessian():
    """Eqs. 2.1-2.2 at T = 1, where ∂θ̃/∂θ = I − α H_s is exact (§1.2 of the spec):
    ∇_θ L_q(θ − α∇L_s(θ)) = (I − α H_s(θ)) ∇L_q(θ̃), with H_s the explicit support Hessian."""
    _, forward, params = tiny_model()
    batch = make_tasks(1)
    sx, sy, qx, qy = (t[0] for t in batch.tensors())
    lr = 0.5
    theta = flatten(params)

    def support_loss(v):
        return reference_loss(unflatten_like(v, params), sx, sy)

    def query_loss(v):
        return reference_loss(unflatten_like(v, params), qx, qy)

    hessian = torch.autograd.functional.hessian(support_loss, theta)
    support_grad = torch.autograd.functional.jacobian(support_loss, theta)
    adapted = theta - lr * support_grad
    query_grad = torch.autograd.functional.jacobian(query_loss, adapted)
    expected = (torch.eye(theta.numel(), dtype=DTYPE) - lr * hessian) @ query_grad

    grads, _ = meta_gradient("maml", problem(forward, steps=1, lr=lr), params, batch)
    assert_dicts_close(grads, unflatten_like(expected, params), rtol=1e-10, atol=1e-12)
    # The Hessian term matters here: dropping it (FOMAML) is measurably different.
    assert (expected - query_grad).norm() > 1e-3 * expected.norm()


def test_fomaml_gradient_is_query_gradient_at_adapted_params():
    """Eq. 1.26 without Hessian terms: FOMAML = (1/n) Σ_i ∇L(D'_i; ·) evaluated at θ̃_i."""
    _, forward, params = tiny_model()
    batch = make_tasks(4)
    steps, lr = 3, 0.4

    per_task = []
    for i in range(len(batch)):
        adapted = reference_adapt(leaves(params), batch.support_x[i], batch.support_y[i], steps=steps, lr=lr)
        at = leaves(adapted)
        loss = reference_loss(at, batch.query_x[i], batch.query_y[i])
        per_task.append(flatten(dict(zip(at, torch.autograd.grad(loss, list(at.values())), strict=True))))
    expected = torch.stack(per_task).mean(dim=0)

    prob = problem(forward, steps=steps, lr=lr)
    fomaml, _ = meta_gradient("fomaml", prob, params, batch)
    assert_close(flatten(fomaml), expected, rtol=1e-12, atol=1e-13)

    maml, _ = meta_gradient("maml", prob, params, batch)
    assert (flatten(maml) - flatten(fomaml)).norm() > 1e-2 * flatten(maml).norm()


@pytest.mark.parametrize("name", ["maml", "fomaml"])
def test_meta_gradient_independent_of_task_chunk(name):
    """Eq. 2.2 is a mean over tasks: task_chunk = 0 (all), 1 and 2 (uneven) give the same result."""
    _, forward, params = tiny_model()
    batch = make_tasks(5)
    results = [meta_gradient(name, problem(forward, steps=3, lr=0.4, task_chunk=c), params, batch) for c in (0, 1, 2)]
    reference_grads, reference_metrics = results[0]
    for grads, metrics in results[1:]:
        for k in reference_grads:
            assert_close(grads[k], reference_grads[k], rtol=1e-10, atol=1e-13)
        for k in reference_metrics:
            assert metrics[k] == pytest.approx(reference_metrics[k], rel=1e-12, abs=1e-14)


def test_maml_vmap_over_tasks_equals_mean_of_single_task_gradients():
    """Eq. 2.2: the batched meta-gradient is the mean of the tasks' individual meta-gradients."""
    _, forward, params = tiny_model()
    batch = make_tasks(3)
    prob = problem(forward, steps=2, lr=0.4)
    batched, _ = meta_gradient("maml", prob, params, batch)
    singles = [flatten(meta_gradient("maml", prob, params, batch.chunk(i, i + 1))[0]) for i in range(len(batch))]
    assert_close(flatten(batched), torch.stack(singles).mean(dim=0), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["maml", "fomaml"])
def test_meta_gradient_metrics_are_query_metrics_at_adapted_params(name):
    """M1 (eq. 1.11) during training: mean query loss and accuracy at θ̃_i, not at θ."""
    _, forward, params = tiny_model()
    batch = make_tasks(5, queries=5)
    steps, lr = 3, 0.4
    losses, accuracies, pre_accuracies = [], [], []
    for i in range(len(batch)):
        adapted = reference_adapt(leaves(params), batch.support_x[i], batch.support_y[i], steps=steps, lr=lr)
        with torch.no_grad():
            qx, qy = batch.query_x[i], batch.query_y[i]
            losses.append(reference_loss(adapted, qx, qy).item())
            accuracies.append((reference_forward(adapted, qx).argmax(1) == qy).double().mean().item())
            pre_accuracies.append((reference_forward(params, qx).argmax(1) == qy).double().mean().item())

    _, metrics = meta_gradient(name, problem(forward, steps=steps, lr=lr, task_chunk=2), params, batch)
    assert metrics["query_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-12)
    assert metrics["query_accuracy"] == pytest.approx(sum(accuracies) / len(accuracies), abs=1e-12)
    # The data are learnable, so accuracy after adaptation differs from accuracy at θ.
    assert sum(accuracies) != pytest.approx(sum(pre_accuracies))


# ----------------------------------------------------------------------------------------------
# Inner loops on a subset of the parameters (ANIL / BOIL, seed 004; layer-wise, seed 003 §3.2)
# ----------------------------------------------------------------------------------------------

HEAD = head_names(tiny_model()[0])  # the tiny model's linear head


def test_adapted_names_resolves_all_head_body_and_patterns():
    names = ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    head = ("2.weight", "2.bias")
    assert adapted_names(names, head, "all") is None
    assert adapted_names(names, head, "head") == frozenset(head)
    assert adapted_names(names, head, "body") == frozenset(names[:4])
    assert adapted_names(names, head, "0.*, 2.bias") == frozenset({"0.weight", "0.bias", "2.bias"})
    with pytest.raises(ConfigError, match=r"pattern 'fc\.\*' matches no parameter.*0\.weight, 0\.bias"):
        adapted_names(names, head, "0.*,fc.*")


@pytest.mark.parametrize("inner_params", ["head", "body"])
def test_subset_inner_loop_moves_only_its_parameters_and_matches_reference(inner_params):
    """ANIL adapts the head only, leaving the body at θ; BOIL the body only, leaving the head."""
    _, forward, params = tiny_model()
    batch = make_tasks(1)
    x, y = batch.support_x[0], batch.support_y[0]
    subset = adapted_names(list(params), HEAD, inner_params)

    adapted = adapt(cross_entropy(forward), params, x, y, steps=3, lr=0.4, adapted=subset)

    expected = reference_adapt(leaves(params), x, y, steps=3, lr=0.4, adapted=subset)
    assert_dicts_close(adapted, {k: v.detach() for k, v in expected.items()}, rtol=0, atol=1e-12)
    frozen = [name for name in params if name not in subset]
    assert frozen and all(torch.equal(adapted[name], params[name]) for name in frozen)
    # The inner loop did move its own parameters (the conv bias before BatchNorm has zero gradient).
    assert max((adapted[name] - params[name]).abs().max().item() for name in subset) > 1e-3


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_meta_gradient_equals_unrolled_reference(first_order):
    """Eq. 2.2 with a head-only inner loop: the body still gets its meta-gradient (through the
    adapted head's dependence on the features, second order) and the result matches autograd."""
    _, forward, params = tiny_model()
    batch = make_tasks(3)
    subset = frozenset(HEAD)

    theta = leaves(params)
    losses = []
    for i in range(len(batch)):
        sx, sy = batch.support_x[i], batch.support_y[i]
        if first_order:  # ∂θ̃/∂θ = I: θ̃ = θ + (θ̃ − θ) with the displacement held constant
            moved = reference_adapt(params, sx, sy, steps=2, lr=0.4, adapted=subset)
            adapted = {k: theta[k] + (moved[k] - params[k]).detach() for k in theta}
        else:
            adapted = reference_adapt(theta, sx, sy, steps=2, lr=0.4, create_graph=True, adapted=subset)
        losses.append(reference_loss(adapted, batch.query_x[i], batch.query_y[i]))
    expected = dict(zip(theta, torch.autograd.grad(torch.stack(losses).mean(), list(theta.values())), strict=True))

    name = "fomaml" if first_order else "maml"
    grads, _ = meta_gradient(name, problem(forward, steps=2, lr=0.4, adapted=subset), params, batch)
    assert_dicts_close(grads, expected, rtol=1e-10, atol=1e-12)
