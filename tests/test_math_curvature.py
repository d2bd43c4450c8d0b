"""Curvature at adapted solutions (seed 000 §2.4.1, eqs. 2.3-2.4; M2) against ARPACK.

The oracle is scipy's ``eigsh`` (ARPACK's implicitly restarted Lanczos) on a ``LinearOperator``
whose products are double-backward Hessian-vector products in float64 (``tests/reference.py``),
computed in the same test run; explicit Hessian matrices check the operator itself. The probe is
tested at both ends of the spectrum and on the cases where a stopping rule can be fooled: a small
spectral gap, a start vector nearly orthogonal to the top eigenvector, a negative eigenvalue of
largest magnitude, restarts, and a tiny Conv4 at a checkpoint written by meta-training.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch.testing import assert_close

from metaland.meta.inner import cross_entropy
from metaland.models import flatten
from metaland.probes import PROBES, ProbeContext, hessian
from metaland.probes.hessian import (
    CurvatureOptions,
    MetaLossCurvatureOptions,
    hessian_extreme_eigenvalues,
    hessian_vector_product,
    lanczos_starts,
    tasks_extreme_eigenvalues,
)
from tests.reference import (
    LR,
    STEPS,
    autograd_hessian_operator,
    eigsh_extremes,
    explicit_hessian,
    leaves,
    make_tasks,
    reference_adapt,
    reference_loss,
    tiny_model,
    unflatten_like,
)

LANCZOS = {"max_iters": 400, "tol": 1e-10, "min_iters": 10, "krylov_dim": 200}
"""Tight settings for float64 comparisons with the oracle."""


def batched(dicts: list[dict]) -> dict:
    return {k: torch.stack([d[k] for d in dicts]) for k in dicts[0]}


def oracle(loss_fn, params: dict, x, y) -> torch.Tensor:
    """[λ_max, λ_min] by eigsh on double-backward Hessian-vector products (float64)."""
    return torch.tensor(eigsh_extremes(autograd_hessian_operator(loss_fn, params, x, y)), dtype=torch.float64)


def adapted_tiny(n: int, seed: int = 7):
    """The tiny one-block ConvNet, n tasks and the reference adapted parameters θ̃_i (float64)."""
    _, forward, params = tiny_model()
    batch = make_tasks(n, seed=seed)
    adapted = [reference_adapt(params, batch.support_x[i], batch.support_y[i]) for i in range(n)]
    return forward, params, batch, adapted


# ----------------------------------------------------------------------------------------------
# The oracle and the products
# ----------------------------------------------------------------------------------------------


def test_oracle_operator_and_metalands_products_match_the_explicit_hessian():
    """The oracle's double-backward products and the probe's forward-over-reverse ones both equal
    the explicit ∇²_θ L(D; θ) @ v (eq. 2.3), and eigsh finds the explicit matrix's extreme eigenvalues."""
    _, forward, params = tiny_model()
    batch = make_tasks(1)
    x, y = batch.support_x[0], batch.support_y[0]
    g = torch.Generator().manual_seed(5)
    vector = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
    matrix = explicit_hessian(params, x, y)
    expected = matrix @ flatten(vector)

    assert_close(flatten(hessian_vector_product(cross_entropy(forward), params, x, y, vector)), expected)
    operator = autograd_hessian_operator(reference_loss, params, x, y)
    assert_close(torch.from_numpy(operator @ flatten(vector).numpy()), expected)
    spectrum = torch.linalg.eigvalsh(matrix)
    assert_close(oracle(reference_loss, params, x, y), spectrum[[-1, 0]], rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Lanczos against eigsh
# ----------------------------------------------------------------------------------------------


def test_lanczos_matches_eigsh_at_both_ends_per_task():
    """Batched Lanczos = eigsh's λ_max and λ_min of each task's Hessian at θ̃_i; the spectral norm is
    max(|λ_max|, |λ_min|); the recorded residuals certify both within tol · ‖H‖_σ."""
    forward, _, batch, adapted = adapted_tiny(3)
    start = lanczos_starts(adapted[0], 3, seed=3)
    ends = hessian_extreme_eigenvalues(
        cross_entropy(forward), batched(adapted), batch.support_x, batch.support_y, start=start, **LANCZOS
    )
    expected = torch.stack(
        [oracle(reference_loss, adapted[i], batch.support_x[i], batch.support_y[i]) for i in range(3)]
    )
    # Different tasks have different curvature, so a mix-up between tasks would show.
    assert (expected[:, None, 0] - expected[None, :, 0]).abs().add(torch.eye(3)).min() > 1e-3
    assert_close(ends.lambda_max, expected[:, 0], rtol=1e-9, atol=0)
    assert_close(ends.lambda_min, expected[:, 1], rtol=1e-9, atol=0)
    assert_close(ends.spectral_norm, expected.abs().max(dim=1).values, rtol=1e-9, atol=0)
    assert ends.converged.all()
    bound = LANCZOS["tol"] * ends.spectral_norm
    assert (ends.residual_max <= bound).all() and (ends.residual_min <= bound).all()
    assert ((ends.iterations >= LANCZOS["min_iters"]) & (ends.iterations < LANCZOS["max_iters"])).all()


@pytest.mark.parametrize("chunk", [1, 2])
def test_task_chunks_and_the_single_task_path_give_the_batched_eigenvalues(chunk):
    """One task at a time (no vmap) or in chunks: the same eigenvalues, residuals and iteration counts."""
    forward, params, batch, adapted = adapted_tiny(3)
    start = lanczos_starts(params, 3, seed=0)
    options = {"max_iters": 60, "tol": 1e-6, "min_iters": 4, "krylov_dim": 12}
    run = partial(tasks_extreme_eigenvalues, cross_entropy(forward), batched(adapted), batch.support_x, batch.support_y)

    together = run(start=start, chunk=3, **options)
    apart = run(start=start, chunk=chunk, **options)

    for name in ("lambda_max", "lambda_min"):
        assert_close(getattr(apart, name), getattr(together, name), rtol=1e-10, atol=0)
    assert torch.equal(apart.iterations, together.iterations) and torch.equal(apart.converged, together.converged)


def quadratic_loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L(θ) = ½ zᵀ A z with z = (w, vec b) and A = x: a loss whose Hessian is exactly x."""
    z = torch.cat([p["w"], p["b"].reshape(-1)])
    return 0.5 * z @ (x @ z) + 0.0 * y.sum()


def quadratic_tasks(spectra: list[list[float]], *, seed: int = 0, top_weight: float | None = None):
    """Task-batched quadratics with the given Hessian spectra (random eigenvectors): (matrices [T, d, d],
    params, labels, start vectors). With ``top_weight`` the start vector's component on the eigenvector
    of the first eigenvalue of its spectrum is that small number (the rest is a random unit vector)."""
    g = torch.Generator().manual_seed(seed)
    matrices, starts = [], []
    for spectrum in spectra:
        d = len(spectrum)
        basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        matrices.append(basis @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ basis.T)
        start = torch.randn(d, generator=g, dtype=torch.float64)
        if top_weight is not None:
            start = start - (start @ basis[:, 0]) * basis[:, 0]
            start = start / start.norm() + top_weight * basis[:, 0]
        starts.append(start)
    n, d = len(spectra), len(spectra[0])
    params = {"w": torch.zeros(n, 4, dtype=torch.float64), "b": torch.zeros(n, 2, (d - 4) // 2, dtype=torch.float64)}
    start = torch.stack(starts)
    return (
        torch.stack(matrices),
        params,
        torch.zeros(n, 1, dtype=torch.int64),
        {
            "w": start[:, :4],
            "b": start[:, 4:].reshape(n, 2, -1),
        },
    )


def quadratic_oracle(matrices: torch.Tensor, params: dict, y: torch.Tensor) -> torch.Tensor:
    """[T, 2] (λ_max, λ_min) of each quadratic by eigsh on its autograd Hessian-vector products."""
    return torch.stack(
        [
            oracle(quadratic_loss, {k: v[i] for k, v in params.items()}, matrices[i], y[i])
            for i in range(matrices.shape[0])
        ]
    )


def bulk(d: int, low: float, high: float) -> list[float]:
    return torch.linspace(low, high, d).tolist()


D = 120


@pytest.mark.parametrize(
    ("case", "spectrum"),
    [
        # λ_max and λ_2 a relative 1e-6 apart: no stopping rule resolves them, the certificate bounds the error.
        ("small gap", [10.0, 10.0 - 1e-5, *bulk(D - 2, -1.0, 9.0)]),
        # The negative end dominates: ‖H‖_σ = |λ_min| = 5 while λ_max = 4 (what the thesis's λ_max would miss).
        ("dominant negative eigenvalue", [-5.0, 4.0, *bulk(D - 2, -1.0, 3.0)]),
        # Both ends of similar size, as FOMAML T = 1 at step 150 (λ_max = 17.65, λ_min = −18.07).
        ("ends of similar magnitude", [17.65, -18.07, *bulk(D - 2, -2.0, 12.0)]),
    ],
)
def test_lanczos_matches_eigsh_on_adversarial_spectra(case, spectrum):
    matrices, params, y, start = quadratic_tasks([spectrum], seed=1)
    tol = 1e-8
    ends = hessian_extreme_eigenvalues(
        quadratic_loss, params, matrices, y, start=start, max_iters=D, tol=tol, min_iters=10, krylov_dim=D
    )
    expected = quadratic_oracle(matrices, params, y)[0]
    norm = expected.abs().max().item()
    assert ends.converged.all(), case
    # Certified: each end within tol · ‖H‖_σ of eigsh (the residual bound) ...
    assert abs(ends.lambda_max.item() - expected[0].item()) <= tol * norm, case
    assert abs(ends.lambda_min.item() - expected[1].item()) <= tol * norm, case
    assert abs(ends.spectral_norm.item() - norm) <= tol * norm, case
    # ... and the recorded residuals say so.
    assert max(ends.residual_max.item(), ends.residual_min.item()) <= tol * norm, case


def test_start_nearly_orthogonal_to_the_top_eigenvector_is_caught_by_the_minimum_krylov_dimension():
    """The start vector carries 1e-7 of the top eigenvector (λ = 10; next 8, then a bulk in [−1, 2],
    λ_min = −4), where a Gaussian start in d dimensions carries about 1/√d (3e-3 for a Conv4-64).
    Lanczos first converges to λ_2 = 8 with a tiny residual: a residual cannot see a direction the
    Krylov space has not picked up yet. Allowed to stop from the first product on, the probe
    certifies λ_2 after 8 (what the old relative-change rule did on real checkpoints). With the
    default minimum Krylov dimension the top component has been amplified (like a Chebyshev
    polynomial of the Krylov dimension) by the first check, and the probe agrees with eigsh."""
    spectrum = [10.0, 8.0, -4.0, *bulk(D - 3, -1.0, 2.0)]
    matrices, params, y, start = quadratic_tasks([spectrum], seed=0, top_weight=1e-7)
    expected = quadratic_oracle(matrices, params, y)[0]
    run = partial(hessian_extreme_eigenvalues, quadratic_loss, params, matrices, y, start=start, max_iters=D, tol=1e-3)

    fooled = run(min_iters=1, krylov_dim=D)
    guarded = run(min_iters=CurvatureOptions().min_iters, krylov_dim=D)

    assert expected[0].item() == pytest.approx(10.0, rel=1e-12)
    assert fooled.converged.all() and fooled.lambda_max.item() == pytest.approx(8.0, rel=1e-3)
    assert guarded.converged.all()
    assert guarded.lambda_max.item() == pytest.approx(expected[0].item(), rel=1e-3)
    assert guarded.lambda_min.item() == pytest.approx(expected[1].item(), rel=1e-3)


def test_thick_restarts_keep_memory_bounded_and_reach_the_same_eigenvalues():
    """A Krylov basis of 8 vectors on 120-dimensional spectra: Lanczos restarts many times (far more
    products than basis vectors) and still certifies eigsh's ends, as without restarts."""
    spectra = [[6.0, 5.5, -2.0, *bulk(D - 3, -1.5, 5.0)], [-3.0, 2.5, *bulk(D - 2, -2.5, 2.0)]]
    matrices, params, y, start = quadratic_tasks(spectra, seed=2)
    expected = quadratic_oracle(matrices, params, y)
    run = partial(hessian_extreme_eigenvalues, quadratic_loss, params, matrices, y, start=start, tol=1e-9, min_iters=10)

    restarted = run(max_iters=2000, krylov_dim=8)
    plain = run(max_iters=D, krylov_dim=D)

    assert restarted.converged.all() and plain.converged.all()
    assert (restarted.iterations > 3 * 8).all() and (restarted.iterations > plain.iterations).all()
    for ends in (restarted, plain):
        assert_close(ends.lambda_max, expected[:, 0], rtol=0, atol=1e-8 * expected.abs().max().item())
        assert_close(ends.lambda_min, expected[:, 1], rtol=0, atol=1e-8 * expected.abs().max().item())


def reference_lanczos(matrix: torch.Tensor, start: torch.Tensor, *, tol: float, min_iters: int) -> int:
    """The first iteration k ≥ min_iters at which plain Lanczos (three-term recurrence, full
    reorthogonalisation, tridiagonal T_k) on an explicit matrix certifies both extreme Ritz pairs:
    β_k |s_k| ≤ tol · max(|θ_1|, |θ_k|) for the first and last eigenvectors s of T_k."""
    q = start / start.norm()
    basis, alphas, betas = [q], [], []
    previous, beta = torch.zeros_like(q), 0.0
    for it in range(1, len(start) + 1):
        w = matrix @ q
        alpha = float(w @ q)
        w = w - alpha * q - beta * previous
        for _ in range(2):
            w = w - torch.stack(basis).T @ (torch.stack(basis) @ w)
        alphas.append(alpha)
        beta = float(w.norm())
        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tridiagonal = tridiagonal + torch.diag(off, 1) + torch.diag(off, -1)
        theta, s = torch.linalg.eigh(tridiagonal)
        norm = max(abs(theta[0].item()), abs(theta[-1].item()))
        if it >= min_iters and beta * max(abs(s[-1, 0].item()), abs(s[-1, -1].item())) <= tol * norm:
            return it
        betas.append(beta)
        previous, q = q, w / beta
        basis.append(q)
    return len(start)


def test_lanczos_stops_each_task_at_its_own_iteration_and_counts_them(monkeypatch):
    """Per-task stopping: each task stops at the iteration a plain one-task Lanczos certifies it, while
    slower tasks of the batch continue, and a stopped task costs no further Hessian-vector products; a
    task not certified by max_iters is reported unconverged there."""
    tol, min_iters = 1e-4, 3
    spectra = [[3.0, *bulk(D - 1, -0.5, 1.0)], [4.0, 3.9, *bulk(D - 2, -1.0, 3.5)], [-5.0, *bulk(D - 1, -4.0, 2.0)]]
    matrices, params, y, start = quadratic_tasks(spectra, seed=3)
    flat_starts = torch.cat([start["w"], start["b"].flatten(1)], dim=1)
    stops = [reference_lanczos(matrices[i], flat_starts[i], tol=tol, min_iters=min_iters) for i in range(3)]
    assert len(set(stops)) == 3 and max(stops) < D, f"tasks should stop at different iterations: {stops}"

    products = []  # tasks in each batched Hessian-vector product
    tasks_hvp = hessian._tasks_hvp

    def counted(loss, p, x, y, vector):
        products.append(x.shape[0])
        return tasks_hvp(loss, p, x, y, vector)

    monkeypatch.setattr(hessian, "_tasks_hvp", counted)
    run = partial(
        hessian_extreme_eigenvalues, quadratic_loss, params, matrices, y, start=start, tol=tol, min_iters=min_iters
    )
    ends = run(max_iters=D, krylov_dim=D)
    monkeypatch.undo()
    assert ends.iterations.tolist() == stops and ends.converged.all()
    assert products == [sum(stop >= it for stop in stops) for it in range(1, max(stops) + 1)]

    cap = max(stops) - 1
    capped = run(max_iters=cap, krylov_dim=D)
    slow = stops.index(max(stops))
    assert capped.iterations[slow] == cap and not capped.converged[slow]
    assert capped.converged.sum() == 2


def test_options_refuse_a_minimum_above_the_cap():
    with pytest.raises(ValueError, match="min_iters"):
        CurvatureOptions(max_iters=5, min_iters=6)


# ----------------------------------------------------------------------------------------------
# The curvature probe (M2 at θ̃_i)
# ----------------------------------------------------------------------------------------------


def probe_context(forward, params, batch, *, chunk: int, seed: int = 4) -> ProbeContext:
    return ProbeContext(forward, params, batch, STEPS, LR, chunk, seed)


def test_curvature_probe_matches_eigsh_at_adapted_params():
    """M2, eqs. 2.3-2.4, float32 as in production: per task, ‖H‖_σ, λ_max and λ_min of the support-loss
    Hessian at the adapted θ̃_i match eigsh (float64); the summary is their mean over tasks."""
    _, forward, params = tiny_model(torch.float32)
    batch = make_tasks(3, dtype=torch.float32, seed=6)
    options = CurvatureOptions(tasks=3, max_iters=200, tol=1e-5, min_iters=10, krylov_dim=81)
    expected = []
    for i in range(3):
        x, y = batch.support_x[i].double(), batch.support_y[i]
        expected.append(oracle(reference_loss, reference_adapt(params, x, y), x, y))
    expected = torch.stack(expected)
    norm = expected.abs().max(dim=1).values
    # At θ (not θ̃_i) the curvature is different: the probe must use the adapted solutions.
    at_theta = oracle(reference_loss, params, batch.support_x[0].double(), batch.support_y[0])
    assert abs(at_theta[0] - expected[0, 0]) > 1e-2 * norm[0]
    for chunk in (1, 3):
        output = PROBES.get("curvature").run(probe_context(forward, params, batch, chunk=chunk), options)
        per_task = output.per_task
        assert_close(per_task["hessian_spectral_norm"], norm, rtol=1e-4, atol=0)
        assert_close(per_task["hessian_lambda_max"], expected[:, 0], rtol=0, atol=1e-4 * norm.max().item())
        assert_close(per_task["hessian_lambda_min"], expected[:, 1], rtol=0, atol=1e-4 * norm.max().item())
        assert per_task["hessian_converged"].all()
        assert (per_task["hessian_lambda_max_residual"] <= options.tol * per_task["hessian_spectral_norm"]).all()
        assert output.summary["hessian_spectral_norm"] == pytest.approx(norm.mean().item(), rel=1e-4)
        assert output.summary["hessian_converged_fraction"] == 1.0


def test_curvature_probe_values_do_not_depend_on_chunk():
    """Start vectors belong to tasks, not chunks: chunk = 1, 2 and all give the same per-task values
    after a fixed number of (uncertified) iterations; only the first `tasks` are probed."""
    _, forward, params = tiny_model(torch.float32)
    batch = make_tasks(4, dtype=torch.float32, seed=5)
    options = CurvatureOptions(tasks=3, max_iters=4, tol=1e-9, min_iters=4)  # stops at max_iters
    outputs = [PROBES.get("curvature").run(probe_context(forward, params, batch, chunk=c), options) for c in (1, 2, 4)]
    reference = outputs[0].per_task
    assert reference["hessian_spectral_norm"].shape == (3,)
    assert reference["hessian_iterations"].tolist() == [4, 4, 4]
    for output in outputs[1:]:
        for name in ("hessian_lambda_max", "hessian_lambda_min"):
            assert_close(output.per_task[name], reference[name], rtol=1e-5, atol=0)
        assert output.per_task["hessian_converged"].tolist() == [False, False, False]
    # Four iterations are far from converged, so different start vectors would disagree here:
    # the same probe with another seed does.
    other = PROBES.get("curvature").run(probe_context(forward, params, batch, chunk=4, seed=5), options)
    difference = other.per_task["hessian_lambda_max"] - reference["hessian_lambda_max"]
    assert difference.abs().max() > 1e-3


def test_curvature_probe_on_a_meta_trained_conv4_checkpoint_matches_eigsh(trained_conv4):
    """A tiny Conv4 (4 blocks of 4 filters, BatchNorm) meta-trained by MAML and read back from its
    checkpoint, in float32 as the probe stage runs it: every task's ‖H‖_σ, λ_max and λ_min at θ̃_i
    agree with eigsh on float64 Hessian-vector products within the certified 1e-4 (plus float32 rounding)."""
    forward, params, batch, steps, lr = trained_conv4
    options = CurvatureOptions(tasks=len(batch), max_iters=300, tol=1e-5)
    context = ProbeContext(forward, params, batch, steps, lr, 2, 0)
    output = PROBES.get("curvature").run(context, options)
    _, adapted = context.adaptation()
    loss = cross_entropy(forward)
    expected = torch.stack(
        [
            oracle(loss, {k: v[i] for k, v in adapted.items()}, batch.support_x[i], batch.support_y[i])
            for i in range(len(batch))
        ]
    )
    norm = expected.abs().max(dim=1).values
    assert output.per_task["hessian_converged"].all()
    assert_close(output.per_task["hessian_spectral_norm"], norm, rtol=1e-4, atol=0)
    assert_close(output.per_task["hessian_lambda_max"], expected[:, 0], rtol=0, atol=1e-4 * norm.max().item())
    assert_close(output.per_task["hessian_lambda_min"], expected[:, 1], rtol=0, atol=1e-4 * norm.max().item())


# ----------------------------------------------------------------------------------------------
# The meta-loss Hessian (the upper level that seed 002's upper perturbation flattens)
# ----------------------------------------------------------------------------------------------


def explicit_meta_loss_hessian(params: dict, batch, steps: int = STEPS) -> torch.Tensor:
    """∇²_θ F for F(θ) = (1/k) Σ_i L(θ^(T)_i; D'_i), θ^(T)_i the reference inner loop on D_i kept differentiable
    (create_graph), as a dense [d, d] float64 matrix: third derivatives by plain reverse mode."""
    p64 = {k: v.double() for k, v in params.items()}
    tasks = [
        tuple(t[i].double() if t.is_floating_point() else t[i] for t in batch.tensors()) for i in range(len(batch))
    ]

    def meta(vector: torch.Tensor) -> torch.Tensor:
        theta = unflatten_like(vector, p64)
        losses = [
            reference_loss(reference_adapt(theta, sx, sy, steps=steps, create_graph=True), qx, qy)
            for sx, sy, qx, qy in tasks
        ]
        return torch.stack(losses).mean()

    return torch.autograd.functional.hessian(meta, flatten(p64))


@pytest.mark.parametrize("chunk", [1, 3])
def test_meta_loss_curvature_matches_the_explicit_hessian_of_the_meta_loss(chunk):
    """λ_max, λ_min and ‖·‖_σ of ∇²_θ F at θ (one value for the k tasks) equal eigvalsh of the explicit Hessian of
    the mean query loss after T differentiable inner steps (plain reverse mode through a hand-written BatchNorm);
    vmapped (chunks of 3 then 1) and looped (chunk 1) tasks agree. It is neither the support-loss curvature at θ̃_i
    nor a mean of per-task Hessian norms."""
    _, forward, params = tiny_model()
    batch = make_tasks(5, seed=3)
    matrix = explicit_meta_loss_hessian(params, batch.chunk(0, 4))
    eigenvalues = torch.linalg.eigvalsh(matrix)
    norm = eigenvalues.abs().max().item()
    output = PROBES.get("meta_loss_curvature").run(
        probe_context(forward, params, batch, chunk=chunk), MetaLossCurvatureOptions(tasks=4, **LANCZOS)
    )
    summary = output.summary
    assert output.per_task == {}
    assert summary["meta_hessian_lambda_max"] == pytest.approx(eigenvalues[-1].item(), abs=1e-8 * norm)
    assert summary["meta_hessian_lambda_min"] == pytest.approx(eigenvalues[0].item(), abs=1e-8 * norm)
    assert summary["meta_hessian_spectral_norm"] == pytest.approx(norm, rel=1e-8)
    assert summary["meta_hessian_converged"] == 1.0
    per_task_norms = [
        torch.linalg.eigvalsh(explicit_meta_loss_hessian(params, batch.chunk(i, i + 1))).abs().max().item()
        for i in range(4)
    ]
    assert abs(sum(per_task_norms) / 4 - norm) > 1e-3 * norm


def test_meta_loss_curvature_in_float32_is_certified_and_close_to_the_float64_hessian():
    """As the probe stage runs it (float32, default certification tol 1e-3): both ends within the certified
    residual of the float64 explicit Hessian's, and the residuals are recorded."""
    _, forward, params = tiny_model(torch.float32)
    batch = make_tasks(3, dtype=torch.float32, seed=8)
    eigenvalues = torch.linalg.eigvalsh(explicit_meta_loss_hessian(params, batch))
    norm = eigenvalues.abs().max().item()
    options = MetaLossCurvatureOptions(tasks=3)
    summary = PROBES.get("meta_loss_curvature").run(probe_context(forward, params, batch, chunk=3), options).summary
    assert summary["meta_hessian_converged"] == 1.0
    for end, value in (("max", eigenvalues[-1].item()), ("min", eigenvalues[0].item())):
        residual = summary[f"meta_hessian_lambda_{end}_residual"]
        assert residual <= options.tol * summary["meta_hessian_spectral_norm"]
        assert summary[f"meta_hessian_lambda_{end}"] == pytest.approx(value, abs=residual + 1e-4 * norm)


def test_elementary_batch_norm_gives_the_fused_kernels_values_and_third_derivatives_plain_autograd_accepts():
    """Inside ``elementary_batch_norm`` a ConvNet's BatchNorm equals PyTorch's fused kernel to rounding, and
    plain autograd, which refuses a third derivative of the fused kernel, takes one through it."""
    from metaland.probes.batchnorm import elementary_batch_norm

    _, forward, params = tiny_model()
    x = make_tasks(1).support_x[0]
    fused = forward(params, x)
    with elementary_batch_norm():
        assert_close(forward(params, x), fused, rtol=1e-12, atol=1e-12)
        theta = leaves(params)
        g = torch.autograd.grad(forward(theta, x).square().sum(), list(theta.values()), create_graph=True)
        g2 = torch.autograd.grad(sum(t.square().sum() for t in g), list(theta.values()), create_graph=True)
        g3 = torch.autograd.grad(sum(t.square().sum() for t in g2), list(theta.values()))
    assert all(torch.isfinite(t).all() for t in g3)
    theta = leaves(params)
    g = torch.autograd.grad(forward(theta, x).square().sum(), list(theta.values()), create_graph=True)
    g2 = torch.autograd.grad(sum(t.square().sum() for t in g), list(theta.values()), create_graph=True)
    with pytest.raises(RuntimeError, match="3rd"):
        torch.autograd.grad(sum(t.square().sum() for t in g2), list(theta.values()))
