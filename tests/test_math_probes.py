"""Landscape probes against brute force (seed 000 §2: M1-M6, eqs. 2.3-2.6).

Expected values are computed independently of ``metaland.probes``: explicit Hessian matrices
(``torch.autograd.functional.hessian`` of the flattened support loss, then ``eigvalsh``), a
hand-written forward pass and cross-entropy, plain ``torch.autograd.grad`` inner loops, and
double loops over task pairs i ≠ j (the shared references are in ``tests/reference.py``). Float64
unless a test says otherwise.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch.testing import assert_close

from metaland.data.tasks import TaskBatch
from metaland.meta.inner import cross_entropy
from metaland.models import flatten
from metaland.probes import PROBES, ProbeContext, hessian
from metaland.probes.coherence import mean_pairwise_cosine, mean_pairwise_inner_product
from metaland.probes.hessian import (
    CurvatureOptions,
    hessian_top_eigenvalue,
    hessian_vector_product,
    lanczos_starts,
    tasks_top_eigenvalues,
)
from metaland.schema import NoOptions
from tests.reference import (
    LR,
    STEPS,
    WAYS,
    adapted_dominant_eigenvalues,
    dominant_eigenvalue,
    explicit_hessian,
    make_tasks,
    reference_accuracy,
    reference_adapt,
    reference_grad,
    reference_loss,
    tiny_model,
    unflatten_like,
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


def batched_adapted(params: dict, batch: TaskBatch, n: int) -> dict:
    """{name: [n, ...]} of reference adapted parameters θ̃_i of the first n tasks."""
    adapted = [reference_adapt(params, batch.support_x[i], batch.support_y[i]) for i in range(n)]
    return {k: torch.stack([a[k] for a in adapted]) for k in params}


# ----------------------------------------------------------------------------------------------
# Hessian-vector products and Lanczos (M2, eqs. 2.3-2.4)
# ----------------------------------------------------------------------------------------------


def test_hessian_vector_product_matches_explicit_hessian():
    """H v from forward-over-reverse equals the explicit ∇²_θ L(D; θ) @ v (eq. 2.3)."""
    _, forward, params = tiny_model()
    batch = make_tasks(1)
    x, y = batch.support_x[0], batch.support_y[0]
    g = torch.Generator().manual_seed(5)
    vector = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}

    hv = hessian_vector_product(cross_entropy(forward), params, x, y, vector)
    expected = explicit_hessian(params, x, y) @ flatten(vector)
    assert_close(flatten(hv), expected, rtol=1e-10, atol=1e-12)


def test_lanczos_matches_explicit_dominant_eigenvalue_per_task():
    """Batched Lanczos = signed largest-|λ| of each task's explicit Hessian at θ̃_i."""
    _, forward, params = tiny_model()
    batch = make_tasks(3, seed=7)
    adapted = batched_adapted(params, batch, 3)
    g = torch.Generator().manual_seed(3)
    start = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in adapted.items()}

    eigenvalue, iterations, converged = hessian_top_eigenvalue(
        cross_entropy(forward), adapted, batch.support_x, batch.support_y, max_iters=1000, tol=1e-13, start=start
    )

    expected = torch.tensor(
        [
            dominant_eigenvalue(
                explicit_hessian({k: v[i] for k, v in adapted.items()}, batch.support_x[i], batch.support_y[i])
            )
            for i in range(3)
        ],
        dtype=torch.float64,
    )
    # Different tasks have different curvature, so a mix-up between tasks would show.
    assert (expected[:, None] - expected[None, :]).abs().add(torch.eye(3)).min() > 1e-3
    assert_close(eigenvalue, expected, rtol=1e-10, atol=0)
    assert converged.all()
    assert ((iterations >= 2) & (iterations < 1000)).all()


@pytest.mark.parametrize("chunk", [1, 2])
def test_task_chunks_and_the_single_task_path_give_the_batched_eigenvalues(chunk):
    """One task at a time (no vmap) or in chunks: the same eigenvalues and iteration counts."""
    _, forward, params = tiny_model()
    batch = make_tasks(3, seed=7)
    adapted = batched_adapted(params, batch, 3)
    start = lanczos_starts(params, 3, seed=0)
    run = partial(tasks_top_eigenvalues, cross_entropy(forward), adapted, batch.support_x, batch.support_y)

    together = run(start=start, max_iters=50, tol=1e-6, chunk=3)
    apart = run(start=start, max_iters=50, tol=1e-6, chunk=chunk)

    assert_close(apart[0], together[0], rtol=1e-10, atol=0)
    assert torch.equal(apart[1], together[1]) and torch.equal(apart[2], together[2])


def quadratic_loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L(θ) = ½ zᵀ A z with z = (w, vec b) and A = x: a loss whose Hessian is exactly x."""
    z = torch.cat([p["w"], p["b"].reshape(-1)])
    return 0.5 * z @ (x @ z) + 0.0 * y.sum()


def symmetric_with_spectrum(spectra: list[list[float]], seed: int) -> torch.Tensor:
    """[T, d, d] matrices Q_i diag(λ_i) Q_iᵀ with random orthogonal Q_i."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for spectrum in spectra:
        q, _ = torch.linalg.qr(torch.randn(len(spectrum), len(spectrum), generator=g, dtype=torch.float64))
        out.append(q @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ q.T)
    return torch.stack(out)


def quadratic_problem(spectra: list[list[float]], seed: int = 0):
    """Task-batched inputs for hessian_top_eigenvalue on quadratic losses with given spectra."""
    matrices = symmetric_with_spectrum(spectra, seed)
    n = len(spectra)
    g = torch.Generator().manual_seed(seed + 1)
    params = {
        "w": torch.randn(n, 2, generator=g, dtype=torch.float64),
        "b": torch.randn(n, 2, 2, generator=g, dtype=torch.float64),
    }
    start = {
        "w": torch.randn(n, 2, generator=g, dtype=torch.float64),
        "b": torch.randn(n, 2, 2, generator=g, dtype=torch.float64),
    }
    dummy_y = torch.zeros(n, 1, dtype=torch.int64)
    return matrices, params, dummy_y, start


def reference_lanczos(
    matrix: torch.Tensor, start: torch.Tensor, *, tol: float, max_iters: int
) -> tuple[list[float], int | None]:
    """Largest-|θ| Ritz values of plain Lanczos with full reorthogonalisation on an explicit matrix,
    one per iteration, and the first iteration k ≥ 2 at which |est_k − est_{k−1}| ≤ tol |est_k|."""
    q = start / start.norm()
    basis, alphas, betas = [q], [], []
    previous, beta = torch.zeros_like(q), 0.0
    estimates, stop = [], None
    for it in range(1, min(max_iters, len(start)) + 1):
        w = matrix @ q
        alpha = float(w @ q)
        w = w - alpha * q - beta * previous
        krylov = torch.stack(basis)
        for _ in range(2):
            w = w - krylov.T @ (krylov @ w)
        alphas.append(alpha)
        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tridiagonal = tridiagonal + torch.diag(off, 1) + torch.diag(off, -1)
        ritz = torch.linalg.eigvalsh(tridiagonal)
        estimates.append(float(ritz[ritz.abs().argmax()]))
        if it > 1 and stop is None and abs(estimates[-1] - estimates[-2]) <= tol * abs(estimates[-1]):
            stop = it
        beta = float(w.norm())
        betas.append(beta)
        previous, q = q, w / beta
        basis.append(q)
    return estimates, stop


def test_lanczos_returns_signed_negative_dominant_eigenvalue():
    """‖H‖_σ is recorded as the *signed* dominant eigenvalue: −5 when λ = −5 has the largest |λ|."""
    spectra = [[-5.0, 4.0, 1.0, 0.5, -0.3, 0.1], [10.0, 1.0, 0.5, -0.5, 0.2, 0.1], [0.5, -3.0, 2.5, 0.2, 0.1, -0.05]]
    matrices, params, y, start = quadratic_problem(spectra)
    eigenvalue, _, converged = hessian_top_eigenvalue(
        quadratic_loss, params, matrices, y, max_iters=2000, tol=1e-14, start=start
    )
    # The quadratic's Hessian, taken by autograd (independent of how the matrices were built).
    expected = []
    for i in range(len(spectra)):
        p = {k: v[i] for k, v in params.items()}
        hessian = torch.autograd.functional.hessian(
            lambda z, i=i, p=p: quadratic_loss(unflatten_like(z, p), matrices[i], y[i]), flatten(p)
        )
        expected.append(dominant_eigenvalue(hessian))
    assert expected[0] == pytest.approx(-5.0) and expected[2] == pytest.approx(-3.0)
    assert converged.all()
    assert_close(eigenvalue, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=0)


def test_lanczos_stops_each_task_at_its_own_iteration_and_counts_them(monkeypatch):
    """Per-task stopping: each task stops at its own iteration and keeps the value it had then,
    while slower tasks of the batch continue, and a stopped task costs no further Hessian-vector
    products; a task that never converges reports max_iters. Quadratics in 40 dimensions with
    slowly decaying spectra, so Lanczos needs several steps."""
    d, tol = 40, 1e-3
    spectra = [
        [top, *torch.linspace(0, top * ratio, d - 1, dtype=torch.float64).tolist()]
        for top, ratio in ((1.0, 0.9), (3.0, 0.99), (-5.0, 0.97))
    ]
    matrices = symmetric_with_spectrum(spectra, seed=0)
    g = torch.Generator().manual_seed(1)
    params = {
        "w": torch.randn(3, 8, generator=g, dtype=torch.float64),
        "b": torch.randn(3, 4, 8, generator=g, dtype=torch.float64),
    }
    start = {
        "w": torch.randn(3, 8, generator=g, dtype=torch.float64),
        "b": torch.randn(3, 4, 8, generator=g, dtype=torch.float64),
    }
    y = torch.zeros(3, 1, dtype=torch.int64)
    starts = [flatten({k: v[i] for k, v in start.items()}) for i in range(3)]
    references = [reference_lanczos(matrices[i], starts[i], tol=tol, max_iters=d) for i in range(3)]
    stops = [stop for _, stop in references]
    assert all(stops) and len(set(stops)) > 1, f"tasks should stop at different iterations: {stops}"

    # 1) Enough iterations for every task to converge: each keeps the value of its own stop.
    products = []  # tasks in each batched Hessian-vector product
    tasks_hvp = hessian._tasks_hvp

    def counted(loss, p, x, y, vector):
        products.append(x.shape[0])
        return tasks_hvp(loss, p, x, y, vector)

    monkeypatch.setattr(hessian, "_tasks_hvp", counted)
    eigenvalue, iterations, converged = hessian_top_eigenvalue(
        quadratic_loss, params, matrices, y, max_iters=d, tol=tol, start=start
    )
    monkeypatch.undo()
    assert converged.tolist() == [True, True, True]
    assert iterations.tolist() == stops
    assert products == [sum(stop >= it for stop in stops) for it in range(1, max(stops) + 1)]
    for i, (estimates, stop) in enumerate(references):
        assert eigenvalue[i].item() == pytest.approx(estimates[stop - 1], rel=1e-9), f"task {i}"
        assert eigenvalue[i].item() == pytest.approx(spectra[i][0], rel=10 * tol)
    slowest = max(stops)
    early = stops.index(min(stops))
    assert abs(references[early][0][slowest - 1] - eigenvalue[early].item()) > 1e-9  # it did freeze

    # 2) A cap below the slow task's stop: it is reported unconverged at max_iters.
    cap = slowest - 1
    eigenvalue, iterations, converged = hessian_top_eigenvalue(
        quadratic_loss, params, matrices, y, max_iters=cap, tol=tol, start=start
    )
    slow = stops.index(slowest)
    assert not converged[slow] and iterations[slow] == cap
    assert eigenvalue[slow].item() == pytest.approx(references[slow][0][cap - 1], rel=1e-9)


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


# ----------------------------------------------------------------------------------------------
# Curvature probe (M2 at θ̃_i)
# ----------------------------------------------------------------------------------------------


def run_curvature(forward, params, batch, *, chunk: int, options: CurvatureOptions):
    return PROBES.get("curvature").run(context(forward, params, batch, chunk=chunk, seed=4), options)


def test_curvature_probe_values_do_not_depend_on_chunk():
    """Start vectors belong to tasks, not chunks: chunk = 1, 2 and all give the same per-task
    values after a fixed number of (unconverged) iterations; only the first `tasks` are probed."""
    _, forward, params = tiny_model(torch.float32)
    batch = make_tasks(4, dtype=torch.float32, seed=5)
    options = CurvatureOptions(tasks=3, max_iters=6, tol=1e-12)  # stops at max_iters
    outputs = [run_curvature(forward, params, batch, chunk=c, options=options) for c in (1, 2, 4)]
    reference = outputs[0].per_task
    assert reference["hessian_top_eigenvalue"].shape == (3,)
    assert reference["hessian_iterations"].tolist() == [6, 6, 6]
    for output in outputs[1:]:
        assert_close(output.per_task["hessian_top_eigenvalue"], reference["hessian_top_eigenvalue"], rtol=1e-5, atol=0)
        assert output.per_task["hessian_converged"].tolist() == [False, False, False]
    # Six iterations are far from converged, so different start vectors would disagree here:
    # the same probe with another seed does.
    other = PROBES.get("curvature").run(context(forward, params, batch, chunk=4, seed=5), options)
    difference = other.per_task["hessian_top_eigenvalue"] - reference["hessian_top_eigenvalue"]
    assert difference.abs().max() > 1e-3


def test_curvature_probe_matches_explicit_hessian_at_adapted_params():
    """M2, eqs. 2.3-2.4: per task, λ of largest |λ| of ∇²_θ L(f(D_i; θ̃_i)) at the adapted θ̃_i
    (float32 as in production; explicit Hessian in float64), for chunk 1 and all tasks."""
    _, forward, params = tiny_model(torch.float32)
    batch = make_tasks(3, dtype=torch.float32, seed=6)
    options = CurvatureOptions(tasks=3, max_iters=300, tol=1e-6)
    expected = adapted_dominant_eigenvalues(params, batch, 3)
    # At θ (not θ̃_i) the curvature is different: the probe must use the adapted solutions.
    at_theta = dominant_eigenvalue(explicit_hessian(params, batch.support_x[0], batch.support_y[0]))
    assert abs(at_theta - expected[0].item()) > 1e-2 * abs(expected[0].item())
    for chunk in (1, 3):
        output = run_curvature(forward, params, batch, chunk=chunk, options=options)
        assert_close(output.per_task["hessian_top_eigenvalue"], expected, rtol=1e-4, atol=0)
        assert output.per_task["hessian_converged"].all()
        assert output.summary["hessian_top_eigenvalue"] == pytest.approx(expected.mean().item(), rel=1e-4)


def test_curvature_probe_float64_matches_explicit_hessian():
    """Same as above with float64 parameters and data (tight tolerance): the probe must honour
    the parameters' dtype, including for its random start vectors."""
    _, forward, params = tiny_model(torch.float64)
    batch = make_tasks(3, seed=6)
    options = CurvatureOptions(tasks=3, max_iters=1000, tol=1e-13)
    output = run_curvature(forward, params, batch, chunk=2, options=options)
    expected = adapted_dominant_eigenvalues(params, batch, 3)
    assert_close(output.per_task["hessian_top_eigenvalue"], expected, rtol=1e-9, atol=0)
