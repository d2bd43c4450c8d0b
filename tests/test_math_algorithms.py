"""Seed 000's other algorithms against hand-derived updates and brute force: the coherence
regulariser of Algorithm 1 (§2.6), the finetune baseline (§2.3.2) and the T = 1 convention of
§2.5.3 (accuracy at θ^s + α g_i)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metaland.data.layout import SplitData
from metaland.meta import ALGORITHMS, MetaProblem
from metaland.meta.finetune import FinetuneOptions, LabelledBatch, supervised_batch, xavier_head
from metaland.meta.inner import cross_entropy
from metaland.meta.regularised import CoherenceRegularisedOptions, coherence_correction
from metaland.models import flatten, head_names, unflatten_batched
from metaland.probes import PROBES, ProbeContext
from metaland.probes.coherence import meta_test_gradients
from metaland.schema import NoOptions
from metaland.seeding import generator
from tests.helpers import make_run
from tests.reference import (
    LR,
    STEPS,
    leaves,
    make_tasks,
    reference_accuracy,
    reference_adapt,
    reference_loss,
    tiny_model,
    unflatten_like,
)

# --------------------------------------------------------------------------------------------
# Algorithm 1: c_i = −γ ∇_{θ̃_i} Ω_i, Ω_i = −θ⃗_iᵀ θ⃗_μ
# --------------------------------------------------------------------------------------------


def test_correction_matches_the_hand_computed_example():
    """d_1 = (2, 0), d_2 = (0, 1), γ = 0.5: θ⃗_μ = (½, ½), c_1 = ¼ (0, ½), c_2 = ½ (½, 0)."""
    d = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    c = coherence_correction(d, 0.5)
    torch.testing.assert_close(c, torch.tensor([[0.0, 0.125], [0.25, 0.0]], dtype=torch.float64))


def test_correction_is_orthogonal_and_rotates_toward_the_mean_direction():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(6, 40, generator=g, dtype=torch.float64) + 0.5
    c = coherence_correction(d, 0.3)
    torch.testing.assert_close((c * d).sum(dim=1), torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
    mean_direction = (d / d.norm(dim=1, keepdim=True)).mean(dim=0)
    before = F.cosine_similarity(d, mean_direction[None], dim=1)
    after = F.cosine_similarity(d + c, mean_direction[None], dim=1)
    assert (after > before).all()


def test_correction_is_minus_gamma_times_the_gradient_of_omega():
    """Autograd of Ω_i = −θ⃗_iᵀ θ⃗_μ at the end point θ̃_i, with θ⃗_μ held constant."""
    g = torch.Generator().manual_seed(1)
    d = torch.randn(5, 12, generator=g, dtype=torch.float64)
    gamma = 0.7
    mean_direction = (d / d.norm(dim=1, keepdim=True)).mean(dim=0).detach()
    expected = []
    for row in d:
        end = row.clone().requires_grad_(True)  # θ̃_i − θ^s with θ^s fixed: ∇ wrt θ̃_i
        omega = -(end / end.norm()) @ mean_direction
        expected.append(-gamma * torch.autograd.grad(omega, end)[0])
    torch.testing.assert_close(coherence_correction(d, gamma), torch.stack(expected))


def test_a_task_that_does_not_move_gets_no_correction():
    d = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    c = coherence_correction(d, 1.0)
    assert torch.equal(c[0], torch.zeros(2, dtype=torch.float64)) and torch.isfinite(c).all()


def _problem(forward, steps=STEPS):
    return MetaProblem(forward, cross_entropy(forward), steps, LR, 0)


def test_regularised_maml_with_gamma_zero_is_maml_bit_for_bit():
    _, forward, params = tiny_model(torch.float32)
    batch = make_tasks(4, dtype=torch.float32)
    maml, _ = ALGORITHMS.get("maml").meta_gradient(_problem(forward), params, batch, NoOptions())
    reg, metrics = ALGORITHMS.get("regmaml").meta_gradient(
        _problem(forward), params, batch, CoherenceRegularisedOptions(gamma=0.0)
    )
    assert all(torch.equal(maml[k], reg[k]) for k in maml)
    assert metrics["correction_ratio"] == 0.0


@pytest.mark.parametrize("first_order", [False, True])
def test_regularised_meta_gradient_matches_unrolled_autograd(first_order):
    """(1/n) Σ_i ∇_θ L(f(D'_i; θ̃_i + c_i)) with c_i a constant, by hand in float64."""
    _, forward, params = tiny_model()
    batch = make_tasks(4)
    gamma = 0.5
    adapted = [reference_adapt(params, batch.support_x[i], batch.support_y[i]) for i in range(4)]
    d = torch.stack([flatten(a) - flatten(params) for a in adapted])
    norms = d.norm(dim=1, keepdim=True)
    u = d / norms
    mu = u.mean(dim=0)
    c = gamma / norms * (mu - (u @ mu)[:, None] * u)

    theta = leaves(params)
    total = {k: torch.zeros_like(v) for k, v in theta.items()}
    for i in range(4):
        sx, sy, qx, qy = (t[i] for t in batch.tensors())
        if first_order:
            end = {k: v.detach().requires_grad_(True) for k, v in reference_adapt(params, sx, sy).items()}
            inputs = end
        else:
            end = reference_adapt(theta, sx, sy, create_graph=True)
            inputs = theta
        corrected = {k: v + w for (k, v), w in zip(end.items(), unflatten_like(c[i], end).values(), strict=True)}
        grads = torch.autograd.grad(reference_loss(corrected, qx, qy), list(inputs.values()))
        total = {k: total[k] + g / 4 for k, g in zip(total, grads, strict=True)}

    got, metrics = ALGORITHMS.get("regmaml").meta_gradient(
        _problem(forward), params, batch, CoherenceRegularisedOptions(gamma=gamma, first_order=first_order)
    )
    for k in total:
        torch.testing.assert_close(got[k], total[k], rtol=1e-9, atol=1e-11)
    assert metrics["correction_ratio"] == pytest.approx((c.norm(dim=1) / d.norm(dim=1)).mean().item(), rel=1e-9)


def test_unflatten_batched_inverts_flatten():
    _, _, params = tiny_model()
    rows = torch.arange(2 * sum(p.numel() for p in params.values()), dtype=torch.float64).reshape(2, -1)
    back = unflatten_batched(rows, params)
    assert [v.shape[1:] for v in back.values()] == [p.shape for p in params.values()]
    assert torch.equal(torch.cat([v.reshape(2, -1) for v in back.values()], dim=1), rows)


# --------------------------------------------------------------------------------------------
# Finetune baseline
# --------------------------------------------------------------------------------------------


def test_meta_test_head_is_xavier_uniform_with_zero_bias_and_keeps_the_body():
    module, _, params = tiny_model(torch.float32)
    head = head_names(module)
    wide = {**params, head[0]: torch.zeros(400, params[head[0]].shape[1]), head[1]: torch.zeros(400)}
    fresh = xavier_head(wide, head, 20, generator(0, "x"))
    fan_in, fan_out = params[head[0]].shape[1], 20
    bound = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot & Bengio (2010), uniform
    weight = fresh[head[0]]
    assert weight.shape == (20, fan_in) and torch.equal(fresh[head[1]], torch.zeros(20))
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert weight.var().item() == pytest.approx(bound**2 / 3, rel=0.15)  # var of U(−b, b)
    assert list(fresh) == list(params)
    assert all(torch.equal(fresh[k], params[k]) for k in params if k not in head)


def test_one_seeded_head_per_checkpoint_shared_by_all_tasks():
    """The head depends on (run seed, checkpoint step) only: validation and probes see the same θ^s."""
    module, _, params = tiny_model(torch.float32)
    finetune = ALGORITHMS.get("finetune")
    head = head_names(module)
    run = make_run("finetune")
    a = finetune.at_meta_test(params, head, run, 10)
    assert torch.equal(a[head[0]], finetune.at_meta_test(params, head, run, 10)[head[0]])
    assert not torch.equal(a[head[0]], finetune.at_meta_test(params, head, run, 20)[head[0]])
    maml = ALGORITHMS.get("maml").at_meta_test(params, head, make_run(), 10)
    assert all(maml[k] is params[k] for k in params)


def test_supervised_batch_draws_distinct_labelled_images_of_all_train_classes():
    images = torch.arange(30, dtype=torch.uint8).reshape(30, 1, 1, 1)
    split = SplitData(images, torch.tensor([0, 5, 12, 30]), ("a", "b", "c"))
    batch = supervised_batch(make_run("finetune"), split, 3, FinetuneOptions(batch_size=30))
    index = (batch.x.flatten() * 255).round().long()
    assert sorted(index.tolist()) == list(range(30))
    expected = torch.bucketize(index, torch.tensor([5, 12]), right=True)
    assert torch.equal(batch.y, expected)
    again = supervised_batch(make_run("finetune"), split, 3, FinetuneOptions(batch_size=8))
    other = supervised_batch(make_run("finetune"), split, 4, FinetuneOptions(batch_size=8))
    assert torch.equal(again.x, supervised_batch(make_run("finetune"), split, 3, FinetuneOptions(batch_size=8)).x)
    assert not torch.equal(again.x, other.x)


def test_pretraining_gradient_is_the_cross_entropy_gradient():
    _, forward, params = tiny_model()
    batch = make_tasks(1, shots=4)
    x, y = batch.support_x[0], batch.support_y[0]
    grads, metrics = ALGORITHMS.get("finetune").meta_gradient(
        _problem(forward), params, LabelledBatch(x, y), FinetuneOptions()
    )
    theta = leaves(params)
    expected = torch.autograd.grad(reference_loss(theta, x, y), list(theta.values()))
    for k, g in zip(theta, expected, strict=True):
        torch.testing.assert_close(grads[k], g)
    assert metrics["batch_loss"] == pytest.approx(reference_loss(params, x, y).item())
    assert metrics["batch_accuracy"] == pytest.approx(reference_accuracy(params, x, y))


# --------------------------------------------------------------------------------------------
# T = 1 (§2.5.3): the adapted solution is θ^s + α g_i with g_i = −∇L(f(D_i; θ^s))
# --------------------------------------------------------------------------------------------


def test_t1_accuracy_is_measured_at_theta_plus_alpha_g():
    _, forward, params = tiny_model()
    batch = make_tasks(5)
    context = ProbeContext(forward, params, batch, 1, LR, 5, 0)
    accuracy = PROBES.get("adaptation").run(context, NoOptions()).per_task["query_accuracy"]
    g = meta_test_gradients(context)  # rows g_i = −∇_θ L(f(D_i; θ^s))
    for i in range(5):
        stepped = unflatten_like(flatten(params) + LR * g[i], params)
        assert accuracy[i].item() == reference_accuracy(stepped, batch.query_x[i], batch.query_y[i])
