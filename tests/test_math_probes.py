"""Landscape probes against brute force (seed 000 §2: M1, M3-M6, eqs. 2.5-2.6; curvature, M2, is
tested against ARPACK in ``test_math_curvature.py``).

Expected values are computed independently of ``metaland.probes``: a hand-written forward pass and
cross-entropy, plain ``torch.autograd.grad`` inner loops, and double loops over task pairs i ≠ j
(the shared references are in ``tests/reference.py``). Float64 unless a test says otherwise.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from metaland.models import flatten
from metaland.probes import PROBES, ProbeContext
from metaland.probes.coherence import mean_pairwise_cosine, mean_pairwise_inner_product, random_cosine_sd
from metaland.schema import NoOptions
from tests.reference import (
    LR,
    STEPS,
    WAYS,
    make_tasks,
    reference_accuracy,
    reference_adapt,
    reference_grad,
    reference_loss,
    tiny_model,
)

# ----------------------------------------------------------------------------------------------
# Helpers (the independent reference implementation is in tests/reference.py)
# ----------------------------------------------------------------------------------------------


def pairwise_mean(vectors: torch.Tensor, pair) -> float:
    """mean over ordered pairs i ≠ j of pair(v_i, v_j), by a double loop."""
    n = vectors.shape[0]
    values = [pair(vectors[i], vectors[j]) for i in range(n) for j in range(n) if i != j]
    return sum(values) / len(values)


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if a.norm() == 0 or b.norm() == 0:
        return 0.0
    return float(a @ b / (a.norm() * b.norm()))


def context(forward, params, batch, *, chunk: int, seed: int = 0) -> ProbeContext:
    return ProbeContext(forward, params, batch, STEPS, LR, chunk, seed)


# ----------------------------------------------------------------------------------------------
# Pairwise means (M4 eq. 2.5, M5 eq. 2.6)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "chunk"), [(2, 256), (2, 1), (7, 256), (7, 3), (7, 1)])
def test_mean_pairwise_inner_product_matches_double_loop(n, chunk):
    """E_{i≠j}[v_iᵀ v_j] (eq. 2.6's pair mean) equals a double loop, for any chunk."""
    g = torch.Generator().manual_seed(n)
    vectors = torch.randn(n, 11, generator=g, dtype=torch.float64) + 0.5  # non-trivial mean
    expected = pairwise_mean(vectors, dot)
    assert mean_pairwise_inner_product(vectors, chunk=chunk) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n", [2, 7])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mean_pairwise_cosine_matches_double_loop(n, dtype):
    """E_{i≠j}[θ⃗_iᵀ θ⃗_j] with θ⃗ = v / ‖v‖ (eq. 2.5) equals a double loop."""
    g = torch.Generator().manual_seed(10 + n)
    scales = torch.rand(n, 1, generator=g, dtype=torch.float64) * 100  # norms do not matter
    vectors = ((torch.randn(n, 11, generator=g, dtype=torch.float64) + 0.3) * scales).to(dtype)
    expected = pairwise_mean(vectors, cosine)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert mean_pairwise_cosine(vectors) == pytest.approx(expected, abs=tol)


def test_mean_pairwise_cosine_treats_zero_vector_as_orthogonal():
    """A task that did not move (θ̃_i = θ) contributes cosine 0 to every pair, not NaN."""
    g = torch.Generator().manual_seed(4)
    vectors = torch.randn(5, 6, generator=g, dtype=torch.float64) + 1.0
    vectors[2] = 0.0
    expected = pairwise_mean(vectors, cosine)
    result = mean_pairwise_cosine(vectors)
    assert result == pytest.approx(expected, abs=1e-12)
    # Same as the other four vectors' mean cosine, rescaled to the 5·4 ordered pairs.
    others = vectors[[0, 1, 3, 4]]
    assert result == pytest.approx(pairwise_mean(others, cosine) * 12 / 20, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Probes on a ProbeContext (M1, M3, M4, M5, M6)
# ----------------------------------------------------------------------------------------------


def test_adaptation_probe_matches_explicit_per_task_computation():
    """M1 (eq. 1.11), M3 and M6 per task: query accuracy/loss and support loss at θ̃_i,
    the same at θ before adaptation, and ‖θ̃_i − θ‖₂, with θ̃_i from eq. 2.1."""
    _, forward, params = tiny_model()
    batch = make_tasks(5, queries=4)
    output = PROBES.get("adaptation").run(context(forward, params, batch, chunk=2), NoOptions())

    expected: dict[str, list[float]] = {
        k: []
        for k in (
            "trajectory_norm",
            "support_loss",
            "support_accuracy",
            "query_loss",
            "query_accuracy",
            "pre_query_accuracy",
            "pre_query_loss",
            "pre_support_loss",
        )
    }
    with torch.no_grad():
        for i in range(len(batch)):
            sx, sy, qx, qy = (t[i] for t in batch.tensors())
            with torch.enable_grad():
                adapted = reference_adapt(params, sx, sy)
            expected["trajectory_norm"].append((flatten(adapted) - flatten(params)).norm().item())
            expected["support_loss"].append(reference_loss(adapted, sx, sy).item())
            expected["support_accuracy"].append(reference_accuracy(adapted, sx, sy))
            expected["query_loss"].append(reference_loss(adapted, qx, qy).item())
            expected["query_accuracy"].append(reference_accuracy(adapted, qx, qy))
            expected["pre_query_accuracy"].append(reference_accuracy(params, qx, qy))
            expected["pre_query_loss"].append(reference_loss(params, qx, qy).item())
            expected["pre_support_loss"].append(reference_loss(params, sx, sy).item())

    for name, values in expected.items():
        reference = torch.tensor(values, dtype=torch.float64)
        assert_close(
            output.per_task[name].double(), reference, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}"
        )
        assert output.summary[name] == pytest.approx(reference.mean().item(), rel=1e-10)
    # Adaptation helped on these learnable tasks (so pre/post are not accidentally equal).
    assert sum(expected["support_loss"]) < sum(expected["pre_support_loss"])


def test_trajectory_coherence_matches_explicit_pairwise_cosine():
    """M4, eq. 2.5: mean over i ≠ j of cos(θ̃_i − θ, θ̃_j − θ)."""
    _, forward, params = tiny_model()
    batch = make_tasks(5, seed=2)
    output = PROBES.get("trajectory_coherence").run(context(forward, params, batch, chunk=2), NoOptions())
    displacements = torch.stack(
        [
            flatten(reference_adapt(params, batch.support_x[i], batch.support_y[i])) - flatten(params)
            for i in range(len(batch))
        ]
    ).detach()
    expected = pairwise_mean(displacements, cosine)
    assert output.summary["trajectory_coherence"] == pytest.approx(expected, abs=1e-10)
    moved = int((displacements != 0).any(dim=0).sum())  # every coordinate of the tiny model adapts
    assert moved == displacements.shape[1]
    assert output.summary["trajectory_coherence_random_sd"] == pytest.approx(random_cosine_sd(5, moved))


@pytest.mark.parametrize(("n", "d"), [(2, 3), (6, 20), (12, 200)])
def test_random_directions_spread_as_the_baseline_says(n, d):
    """Monte Carlo oracle: 4,000 sets of n Gaussian (isotropic) directions in d dimensions; the s.d. of their
    mean pairwise cosine (the off-diagonal mean of each set's Gram matrix of unit vectors) is the formula's
    within 5% (the estimate's own error is about 1.1%), and their mean is 0 within 4 standard errors."""
    generator = torch.Generator().manual_seed(11)
    unit = torch.nn.functional.normalize(torch.randn(4000, n, d, generator=generator, dtype=torch.float64), dim=2)
    gram = unit @ unit.transpose(1, 2)
    means = (gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)) / (n * (n - 1))
    assert means.std().item() == pytest.approx(random_cosine_sd(n, d), rel=0.05)
    assert abs(means.mean().item()) < 4 * random_cosine_sd(n, d) / 4000**0.5
    with pytest.raises(ValueError, match="n ≥ 2 directions"):
        random_cosine_sd(1, d)


def test_gradient_coherence_matches_explicit_pairwise_inner_product():
    """M5, eq. 2.6: mean over i ≠ j of g_iᵀ g_j with g_i = −∇_θ L(f(D_i; θ)) (raw, not
    normalised), plus its cosine version and the per-task gradient norms."""
    _, forward, params = tiny_model()
    batch = make_tasks(6, seed=3)
    output = PROBES.get("gradient_coherence").run(context(forward, params, batch, chunk=4), NoOptions())
    g = torch.stack(
        [-flatten(reference_grad(params, batch.support_x[i], batch.support_y[i])) for i in range(len(batch))]
    )
    norms = g.norm(dim=1)
    assert output.summary["gradient_coherence"] == pytest.approx(pairwise_mean(g, dot), rel=1e-10)
    assert output.summary["gradient_cosine"] == pytest.approx(pairwise_mean(g, cosine), abs=1e-10)
    assert_close(output.per_task["gradient_norm"], norms, rtol=1e-10, atol=0)
    assert output.summary["gradient_norm"] == pytest.approx(norms.mean().item(), rel=1e-10)


def test_pre_adaptation_query_accuracy_is_chance_on_average():
    """§2.4.1 sanity check: at θ, before adaptation, target accuracy averages 1/m over tasks
    whose labels are randomly assigned; after adaptation it is well above chance."""
    _, forward, params = tiny_model()
    batch = make_tasks(240, shots=2, queries=4, seed=11)
    output = PROBES.get("adaptation").run(context(forward, params, batch, chunk=240), NoOptions())
    assert output.summary["pre_query_accuracy"] == pytest.approx(1 / WAYS, abs=0.04)
    assert output.summary["query_accuracy"] > 1 / WAYS + 0.15
