"""Seed 004 (LIL): the linearity probe (eqs. 3-5) and the LIL regulariser (eqs. 7-9) against
hand-computed values, exactly linear models and unrolled ``torch.autograd`` references in float64;
eq. 5's Hessian term also against the curvature oracle's double-backward operator at a
meta-trained Conv4 checkpoint."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from torch.testing import assert_close

from metaland.meta import ALGORITHMS, MetaProblem
from metaland.meta.inner import adapt_trajectory, cross_entropy
from metaland.meta.lil import LILOptions, extrapolation, path_length, phase_loss, variant_name
from metaland.models import flatten
from metaland.probes import PROBES, ProbeContext
from metaland.probes.linearity import LinearityOptions, jacobian_norm, phase_consistency, trajectory_linearity
from metaland.schema import NoOptions
from tests.reference import (
    autograd_hessian_operator,
    hessian_quadratic_form,
    in_float64,
    leaves,
    make_tasks,
    reference_adapt,
    reference_forward,
    reference_grad,
    reference_loss,
    tiny_model,
    unflatten_like,
)
from tests.test_math_inner import assert_dicts_close

HEAD = ("4.weight", "4.bias")
WAYS, FEATURES = 3, 5


# ----------------------------------------------------------------------------------------------
# A model exactly linear in θ
# ----------------------------------------------------------------------------------------------


def linear_forward(p: dict, x: torch.Tensor) -> torch.Tensor:
    """f(x|θ) = x W + b: ∇_θ f is constant, so the model is linear along any inner loop."""
    return x @ p["w"] + p["b"]


def linear_loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """−mean f(x)_y: linear in the logits, so its gradient does not depend on θ at all."""
    return -linear_forward(p, x).gather(1, y[:, None]).mean()


def linear_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = {
        "w": torch.randn(FEATURES, WAYS, generator=g, dtype=torch.float64),
        "b": torch.randn(WAYS, generator=g, dtype=torch.float64),
    }
    x = torch.randn(6, FEATURES, generator=g, dtype=torch.float64)
    y = torch.arange(WAYS).repeat(2)
    return params, x, y


def measure(forward, loss, params, x, y, *, projections=None, steps=3, lr=0.5, adapted=None):
    return trajectory_linearity(
        forward,
        loss,
        params,
        x,
        y,
        steps=steps,
        lr=lr,
        adapted=adapted,
        measured=frozenset(params) if adapted is None else adapted,
        projections=projections,
    )


# ----------------------------------------------------------------------------------------------
# Phase and amplitude consistency (eqs. 3-4)
# ----------------------------------------------------------------------------------------------


def test_phase_consistency_is_the_hand_computed_path_over_chord():
    """Eq. 3 on a known trajectory: (0,0) → (3,0) → (3,4) has path 3 + 4 = 7 and chord 5."""
    pc, path, chord = phase_consistency(torch.tensor([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]], dtype=torch.float64))
    assert (pc.item(), path.item(), chord.item()) == (pytest.approx(1.4), pytest.approx(7.0), pytest.approx(5.0))
    straight, _, _ = phase_consistency(torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 3.0]], dtype=torch.float64))
    assert straight.item() == pytest.approx(1.0)
    back_and_forth, _, _ = phase_consistency(torch.tensor([[0.0], [2.0], [1.0]], dtype=torch.float64))
    assert back_and_forth.item() == pytest.approx(3.0)


@pytest.mark.parametrize("jacobian", ["exact", "projection"])
def test_linear_model_with_constant_gradient_is_perfectly_linear(jacobian):
    """A model linear in θ under a loss linear in f: constant gradient, so PC = AC = 1, the gradient
    never turns and the Hessian term of eq. 5 is 0."""
    params, x, y = linear_problem()
    projections = None if jacobian == "exact" else torch.randn(3, 6, WAYS, dtype=torch.float64)
    values = measure(linear_forward, linear_loss, params, x, y, projections=projections)
    for name in ("pc", "ac_jacobian", "ac_lossgrad", "gradient_cosine", "gradient_cosine_final"):
        assert values[name].item() == pytest.approx(1.0, abs=1e-12), name
    assert values["hessian_term"].item() == pytest.approx(0.0, abs=1e-12)
    assert values["hessian_noise_ratio"].item() == pytest.approx(0.0, abs=1e-12)
    # Path = S α ‖g‖ with the constant g.
    g = torch.cat([t.reshape(-1) for t in torch.func.grad(linear_loss)(params, x, y).values()])
    assert values["path_length"].item() == pytest.approx(3 * 0.5 * g.norm().item())


def test_linear_model_under_cross_entropy_has_ac_jacobian_one_but_not_pc():
    """Eq. 4's Jacobian reading is 1 for any model linear in θ; the loss gradient still changes
    (softmax), so PC > 1 and the loss-gradient AC < 1: the two readings differ."""
    params, x, y = linear_problem(seed=1)
    values = measure(linear_forward, cross_entropy(linear_forward), params, x, y, lr=2.0)
    assert values["ac_jacobian"].item() == pytest.approx(1.0, abs=1e-12)
    assert values["pc"].item() > 1 + 1e-6
    assert values["ac_lossgrad"].item() < 1 - 1e-3


def explicit_jacobian(params: dict, x: torch.Tensor) -> torch.Tensor:
    """∂f(x|θ)/∂θ as a dense [B·N, d] matrix, by autograd on the hand-written forward."""
    return torch.autograd.functional.jacobian(
        lambda v: reference_forward(unflatten_like(v, params), x).reshape(-1), flatten(params)
    )


def test_jacobian_norm_exact_and_projected_match_the_explicit_matrix():
    """‖J‖_F exactly, and sqrt(mean_p ‖Jᵀv_p‖²) for given projections v_p, against the dense J."""
    _, forward, params = tiny_model()
    x = make_tasks(1).support_x[0]
    matrix = explicit_jacobian(params, x)
    exact = jacobian_norm(forward, params, {}, x, None)
    assert_close(exact, torch.linalg.matrix_norm(matrix), rtol=1e-12, atol=0)
    v = torch.randn(5, x.shape[0], 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    projected = jacobian_norm(forward, params, {}, x, v)
    expected = torch.sqrt(torch.stack([(matrix.T @ vp.reshape(-1)).square().sum() for vp in v]).mean())
    assert_close(projected, expected, rtol=1e-12, atol=0)


def test_linearity_probe_matches_brute_force_per_task():
    """The probe (exact Jacobian) on the tiny ConvNet against hand-written trajectories, gradients,
    dense Jacobians and the explicit Hessian, task by task, in float64."""
    _, forward, params = tiny_model()
    batch = make_tasks(3)
    steps, lr = 3, 0.5
    context = ProbeContext(forward, params, batch, steps, lr, 2, 0, HEAD, None)
    out = PROBES.get("linearity").run(context, LinearityOptions(tasks=2, jacobian="exact"))
    for i in range(2):
        x, y = batch.support_x[i], batch.support_y[i]
        points = [params]
        for _ in range(steps):
            points.append(reference_adapt(points[-1], x, y, steps=1, lr=lr))
        flat = torch.stack([flatten(p) for p in points])
        path = (flat[1:] - flat[:-1]).norm(dim=1).sum()
        grads = [flatten(reference_grad(p, x, y)) for p in points]
        jac = [torch.linalg.matrix_norm(explicit_jacobian(p, x)) for p in points]

        def support_loss(v, x=x, y=y):
            return reference_loss(unflatten_like(v, params), x, y)

        hessians = [torch.autograd.functional.hessian(support_loss, flatten(p)) for p in points[:-1]]
        ratios = [0.5 * lr * (g @ h @ g) / (g @ g) for g, h in zip(grads, hessians, strict=False)]

        def cos(a, b):
            return (a @ b / (a.norm() * b.norm())).item()

        expected = {
            "pc": (path / (flat[-1] - flat[0]).norm()).item(),
            "path_length": path.item(),
            "ac_jacobian": (sum(jac[1:]) / steps / jac[0]).item(),
            "ac_lossgrad": (sum(g.norm() for g in grads[1:]) / steps / grads[0].norm()).item(),
            "gradient_cosine": sum(cos(grads[0], g) for g in grads[1:]) / steps,
            "gradient_cosine_final": cos(grads[0], grads[-1]),
            "hessian_noise_ratio": (sum(ratios) / steps).item(),
        }
        for name, value in expected.items():
            assert out.per_task[name][i].item() == pytest.approx(value, rel=1e-9), name
    assert out.summary["ac_jacobian_deviation"] == pytest.approx((out.per_task["ac_jacobian"] - 1).abs().mean().item())


def test_linearity_probe_measures_only_the_adapted_parameters():
    """ANIL (head only): PC, path and gradients over the head; the model is linear in its head, so
    AC_jacobian = 1 exactly; ``parameters: all`` measures every parameter (the body's path is 0)."""
    _, forward, params = tiny_model()
    batch = make_tasks(2)
    context = ProbeContext(forward, params, batch, 3, 0.5, 2, 0, HEAD, frozenset(HEAD))
    head = PROBES.get("linearity").run(context, LinearityOptions(tasks=2, jacobian="exact"))
    everything = PROBES.get("linearity").run(context, LinearityOptions(tasks=2, jacobian="exact", parameters="all"))
    assert_close(head.per_task["ac_jacobian"], torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)
    assert_close(head.per_task["path_length"], everything.per_task["path_length"], rtol=1e-12, atol=0)
    assert (everything.per_task["ac_jacobian"] - 1).abs().min() > 1e-6


def test_probe_options_tasks_beyond_the_probe_set_is_refused():
    from metaland.config import ProbeConfig

    message = PROBES.get("linearity").check(LinearityOptions(tasks=50), ProbeConfig(tasks=20))
    assert "tasks = 50 exceeds the 20 fixed probe tasks" in message and "Fix" in message


# ----------------------------------------------------------------------------------------------
# LIL (eqs. 7-9)
# ----------------------------------------------------------------------------------------------


def test_extrapolation_travels_the_path_length_along_the_first_direction():
    """Eq. 8: ‖θ̂ − θ^0‖ = path length, along −d; parameters outside d stay at θ^0."""
    start = {"a": torch.tensor([1.0, 2.0], dtype=torch.float64), "b": torch.tensor([5.0], dtype=torch.float64)}
    direction = {"a": torch.tensor([3.0, 4.0], dtype=torch.float64)}
    hat = extrapolation(start, direction, torch.tensor(10.0, dtype=torch.float64))
    assert_close(hat["a"], torch.tensor([1.0 - 6.0, 2.0 - 8.0], dtype=torch.float64))
    assert torch.equal(hat["b"], start["b"])


def test_phase_loss_is_zero_on_a_straight_trajectory_with_constant_gradient():
    """Eq. 7: with a constant gradient the S steps run along one line, θ^S = θ̂, so the phase loss
    vanishes; the pseudo-amplitude loss is the path S α ‖g‖ (eq. 9)."""
    params, x, y = linear_problem()
    steps, lr = 3, 0.5
    trajectory = adapt_trajectory(linear_loss, params, x, y, steps=steps, lr=lr)
    names = list(params)
    path = path_length(trajectory, names)
    direction = {n: trajectory[0][n] - trajectory[1][n] for n in names}
    hat = extrapolation(trajectory[0], direction, path)
    assert_dicts_close(hat, trajectory[-1], rtol=0, atol=1e-12)
    query = torch.randn(4, FEATURES, dtype=torch.float64)
    loss = phase_loss(linear_forward(trajectory[-1], query), linear_forward(hat, query), "batchmean")
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    g = torch.cat([t.reshape(-1) for t in torch.func.grad(linear_loss)(params, x, y).values()])
    assert path.item() == pytest.approx(steps * lr * g.norm().item())


def test_phase_loss_is_kl_of_the_adapted_from_the_extrapolated_prediction():
    """KL(s(f(x|θ^S)) ‖ s(f(x|θ̂))) per sample, averaged (batchmean) or summed."""
    g = torch.Generator().manual_seed(0)
    adapted, extrapolated = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    p, q = adapted.softmax(-1), extrapolated.softmax(-1)
    per_sample = (p * (p.log() - q.log())).sum(-1)
    assert_close(phase_loss(adapted, extrapolated, "batchmean"), per_sample.mean())
    assert_close(phase_loss(adapted, extrapolated, "sum"), per_sample.sum())


def reference_lil_gradient(params, batch, *, steps, lr, phase, amplitude, adapted=None, detach_delta=False):
    """Mean over tasks of ∇_θ [CE(θ^S) + λ_p KL(p_S ‖ p̂) + λ_a Σ‖θ^{k+1} − θ^k‖], unrolled by hand."""
    theta = leaves(params)
    objectives = []
    moving = [k for k in theta if adapted is None or k in adapted]
    for i in range(len(batch)):
        sx, sy, qx, qy = (t[i] for t in batch.tensors())
        points = [theta]
        for _ in range(steps):
            points.append(reference_adapt(points[-1], sx, sy, steps=1, lr=lr, create_graph=True, adapted=adapted))
        lengths = [torch.sqrt(sum((b[k] - a[k]).square().sum() for k in moving)) for a, b in pairwise(points)]
        path = sum(lengths)
        support_grad = torch.autograd.grad(reference_loss(theta, sx, sy), [theta[k] for k in moving], create_graph=True)
        norm = torch.sqrt(sum(d.square().sum() for d in support_grad))
        distance = path.detach() if detach_delta else path
        hat = dict(theta)
        for k, d in zip(moving, support_grad, strict=True):
            hat[k] = theta[k] - distance * d / norm
        p_log = torch.log_softmax(reference_forward(points[-1], qx), -1)
        q_log = torch.log_softmax(reference_forward(hat, qx), -1)
        kl = (p_log.exp() * (p_log - q_log)).sum(-1).mean()
        objectives.append(reference_loss(points[-1], qx, qy) + phase * kl + amplitude * path)
    grads = torch.autograd.grad(torch.stack(objectives).mean(), list(theta.values()))
    return dict(zip(theta, grads, strict=True))


@pytest.mark.parametrize(
    ("inner", "phase", "amplitude", "detach_delta"),
    [(None, 0.1, 0.01, False), (None, 0.7, 0.3, True), ("head", 0.5, 0.0, False), ("body", 0.5, 0.2, False)],
)
def test_lil_meta_gradient_equals_unrolled_reference(inner, phase, amplitude, detach_delta):
    """MAML / ANIL / BOIL + LIL: the meta-gradient through the inner loop, θ̂ and the path length
    equals autograd on the hand-written objective (large weights, so a wrong term cannot hide)."""
    _, forward, params = tiny_model()
    batch = make_tasks(3)
    adapted = {None: None, "head": frozenset(HEAD), "body": frozenset(params) - frozenset(HEAD)}[inner]
    problem = MetaProblem(forward, cross_entropy(forward), 2, 0.4, 2, adapted)
    options = LILOptions(phase_weight=phase, amplitude_weight=amplitude, detach_delta=detach_delta)
    grads, metrics = ALGORITHMS.get("lil").meta_gradient(problem, params, batch, options)
    expected = reference_lil_gradient(
        params, batch, steps=2, lr=0.4, phase=phase, amplitude=amplitude, adapted=adapted, detach_delta=detach_delta
    )
    assert_dicts_close(grads, expected, rtol=1e-9, atol=1e-12)
    assert metrics["phase_loss"] > 0 and metrics["amplitude_loss"] > 0
    assert metrics["outer_loss"] == pytest.approx(
        metrics["query_loss"] + phase * metrics["phase_loss"] + amplitude * metrics["amplitude_loss"]
    )


@pytest.mark.parametrize("inner", [None, "head"])
def test_lil_with_zero_weights_is_maml_bit_for_bit(inner):
    """Both weights 0: the MAML (ANIL) meta-gradient exactly; the variant is called maml (anil)."""
    _, forward, params = tiny_model()
    batch = make_tasks(3)
    adapted = None if inner is None else frozenset(HEAD)
    problem = MetaProblem(forward, cross_entropy(forward), 3, 0.4, 0, adapted)
    lil, _ = ALGORITHMS.get("lil").meta_gradient(problem, params, batch, LILOptions(phase_weight=0, amplitude_weight=0))
    maml, _ = ALGORITHMS.get("maml").meta_gradient(problem, params, batch, NoOptions())
    assert all(torch.equal(lil[k], maml[k]) for k in maml)


def test_first_order_lil_drops_the_inner_loop_jacobian():
    """first_order: ∂θ^S/∂θ = I and θ̂'s direction and δ are constants, so only the query CE and the
    phase loss's direct dependence on θ^S = θ + const and θ̂ = θ + const contribute."""
    _, forward, params = tiny_model()
    batch = make_tasks(2)
    problem = MetaProblem(forward, cross_entropy(forward), 2, 0.4, 0, None)
    grads, _ = ALGORITHMS.get("lil").meta_gradient(problem, params, batch, LILOptions(first_order=True))
    theta = leaves(params)
    objectives = []
    for i in range(len(batch)):
        sx, sy, qx, qy = (t[i] for t in batch.tensors())
        points = [params]
        for _ in range(2):
            points.append(reference_adapt(points[-1], sx, sy, steps=1, lr=0.4))
        path = sum((flatten(b) - flatten(a)).norm() for a, b in pairwise(points))
        d = {k: params[k] - points[1][k] for k in params}
        norm = flatten(d).norm()
        final = {k: theta[k] + (points[-1][k] - params[k]) for k in theta}
        hat = {k: theta[k] - path * d[k] / norm for k in theta}
        p_log = torch.log_softmax(reference_forward(final, qx), -1)
        q_log = torch.log_softmax(reference_forward(hat, qx), -1)
        kl = (p_log.exp() * (p_log - q_log)).sum(-1).mean()
        objectives.append(reference_loss(final, qx, qy) + 0.1 * kl + 0.01 * path)
    expected = torch.autograd.grad(torch.stack(objectives).mean(), list(theta.values()))
    assert_dicts_close(grads, dict(zip(theta, expected, strict=True)), rtol=1e-9, atol=1e-12)


def test_variant_names_follow_the_paper():
    assert variant_name(LILOptions()) == "maml+lil"
    assert variant_name(LILOptions(amplitude_weight=0)) == "maml+lil-phase"
    assert variant_name(LILOptions(phase_weight=0)) == "maml+lil-amplitude"
    assert variant_name(LILOptions(phase_weight=0, amplitude_weight=0)) == "maml"
    assert variant_name(LILOptions(first_order=True)) == "fomaml+lil"
    spec = ALGORITHMS.get("lil")
    assert spec.variant_of(LILOptions(amplitude_weight=0), "head") == "anil+lil-phase"
    assert spec.variant_of(LILOptions(phase_weight=0, amplitude_weight=0), "body") == "boil"
    assert spec.variant_of(LILOptions(), "0.*") == "maml+lil[0.*]"
    assert ALGORITHMS.get("maml").variant_of(NoOptions(), "head") == "anil"


def test_hessian_term_at_a_meta_trained_conv4_checkpoint_matches_the_oracle_operator(trained_conv4):
    """Eq. 5's Hessian term (α/2) gᵀHg along each task's inner loop, on a tiny Conv4 meta-trained by
    MAML and read back from its checkpoint (float64 here): the probe's forward-over-reverse product
    against the double-backward ``LinearOperator`` the curvature oracle uses, at every θ^k of a
    plain ``torch.autograd.grad`` inner loop."""
    forward, params, batch, steps, lr = trained_conv4
    params, batch = in_float64(params, batch)
    context = ProbeContext(forward, params, batch, steps, lr, 2, 0)
    out = PROBES.get("linearity").run(context, LinearityOptions(tasks=len(batch), projections=1))
    loss = cross_entropy(forward)
    for i in range(len(batch)):
        x, y = batch.support_x[i], batch.support_y[i]
        theta, terms, ratios = params, [], []
        for _ in range(steps):
            at = leaves(theta)
            g = dict(zip(at, torch.autograd.grad(loss(at, x, y), list(at.values())), strict=True))
            term = 0.5 * lr * hessian_quadratic_form(autograd_hessian_operator(loss, theta, x, y), flatten(g))
            terms.append(term)
            ratios.append(term / flatten(g).square().sum().item())
            theta = {k: v - lr * g[k] for k, v in theta.items()}
        assert out.per_task["hessian_term"][i].item() == pytest.approx(sum(terms) / steps, rel=1e-9)
        assert out.per_task["hessian_noise_ratio"][i].item() == pytest.approx(sum(ratios) / steps, rel=1e-9)
