"""Curvature of meta-test solutions (seed 000 §2.4.1, eqs. 2.3-2.4; M2).

‖H‖_σ = λ_max(H) for H = ∇²_θ L(f(D_i; θ̃_i)), the Hessian of the *support* loss at the adapted
solution θ̃_i (not at θ^s), over all trainable parameters. The thesis does not say how λ_max was
computed; here it is the Lanczos method on Hessian-vector products (Pearlmutter; forward-over-
reverse ``jvp(grad)``), batched over tasks with ``vmap`` in chunks of ``chunk`` tasks (a single task
runs without ``vmap``). Lanczos reaches the extreme eigenvalues in far fewer products than power
iteration (PyHessian's method): at a tolerance of 1e-3 on the relative change of the estimate, its
eigenvalue is within ~1e-5 of the converged value, where power iteration's stopping rule leaves
~1e-2 (benchmarks/run.py, docs/performance.md). The *signed* eigenvalue of largest magnitude is
recorded (what power iteration converges to; it equals ‖H‖_σ when that eigenvalue is positive, as
the thesis assumes). Iteration stops per task when the relative change of the estimate falls below
``tol``, or at ``max_iters``; iterations (Hessian-vector products) and convergence are recorded.
"""

from __future__ import annotations

import warnings

import torch
from pydantic import Field
from torch.func import grad, jvp, vmap

from metaland.meta.inner import LossFn
from metaland.models import ParamDict, flatten_batched, unflatten_batched
from metaland.probes import PROBES, ProbeContext, ProbeOutput, ProbeSpec, within_probe_tasks
from metaland.schema import Params
from metaland.seeding import generator

# PyTorch's forward-mode AD loads its own decompositions through torch.jit.script on first use and
# warns about that deprecation; the warning is about torch internals, not about this code.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


class CurvatureOptions(Params):
    tasks: int = Field(60, ge=1, description="First k fixed tasks whose Hessian is probed (seed 000 §2.5.1: 60).")
    max_iters: int = Field(
        100, ge=1, description="Cap on Lanczos iterations = Hessian-vector products (the thesis gives none)."
    )
    tol: float = Field(1e-3, gt=0, lt=1, description="Relative change of the eigenvalue estimate that stops iteration.")
    chunk: int | None = Field(
        None,
        ge=1,
        description="Tasks whose Lanczos iterations run together under vmap (1 = one task at a time, without "
        "vmap; none = probe.chunk). Bounds memory; changes speed only, up to float rounding.",
    )


def hessian_vector_product(loss: LossFn, params: ParamDict, x, y, vector: ParamDict) -> ParamDict:
    """H v for H = ∇²_θ loss(θ, x, y) at ``params``."""
    return jvp(lambda p: grad(loss)(p, x, y), (params,), (vector,))[1]


def _tridiagonal_extreme(diagonal: torch.Tensor, off_diagonal: torch.Tensor) -> torch.Tensor:
    """Per task, the signed eigenvalue of largest magnitude of the Lanczos tridiagonal matrix
    with ``diagonal`` [T, k] and ``off_diagonal`` [T, k - 1]."""
    matrix = torch.diag_embed(diagonal)
    if off_diagonal.shape[1]:
        matrix = matrix + torch.diag_embed(off_diagonal, offset=1) + torch.diag_embed(off_diagonal, offset=-1)
    ritz = torch.linalg.eigvalsh(matrix)
    return ritz.gather(1, ritz.abs().argmax(dim=1, keepdim=True)).squeeze(1)


def _tasks_hvp(loss: LossFn, params: ParamDict, x, y, vector: ParamDict) -> ParamDict:
    """H_i v_i for every task i of the leading axis; a single task runs without ``vmap`` (plain
    convolutions instead of grouped ones)."""
    if x.shape[0] == 1:
        one = hessian_vector_product(loss, _first(params), x[0], y[0], _first(vector))
        return {name: value.unsqueeze(0) for name, value in one.items()}
    return vmap(lambda p, xi, yi, v: hessian_vector_product(loss, p, xi, yi, v))(params, x, y, vector)


def hessian_top_eigenvalue(
    loss: LossFn,
    params: ParamDict,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_iters: int,
    tol: float,
    start: ParamDict,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dominant eigenvalue of each task's Hessian by batched Lanczos (full reorthogonalisation).

    ``params``, ``x``, ``y`` and ``start`` carry a leading task axis. After k Hessian-vector
    products the estimate is the Ritz value of largest magnitude of the k × k tridiagonal matrix;
    a task stops when it changes by at most ``tol`` relative to itself, or when its Krylov space is
    exhausted (the estimate is then exact). Returns (eigenvalue [T], iterations [T], converged [T]).
    A stopped task leaves the batch: later products are computed for the remaining tasks only, and
    each task's value depends on nothing but its own inputs, whichever tasks share its batch.
    """
    n_tasks = x.shape[0]
    dtype = next(iter(params.values())).dtype
    template = {name: value[0] for name, value in start.items()}  # one task's shapes
    q = flatten_batched(start).to(torch.float64)
    q = q / q.norm(dim=1, keepdim=True)
    dimension = q.shape[1]
    eigenvalue = torch.full((n_tasks,), float("nan"), dtype=torch.float64)
    iterations = torch.full((n_tasks,), max_iters, dtype=torch.int64)
    converged = torch.zeros(n_tasks, dtype=torch.bool)
    alphas = torch.zeros(n_tasks, max_iters, dtype=torch.float64, device=q.device)
    betas = torch.zeros(n_tasks, max_iters, dtype=torch.float64, device=q.device)
    # Rows of the state below belong to the tasks still iterating, ``active`` (their task ids).
    active = torch.arange(n_tasks)
    basis = q.new_empty(n_tasks, min(8, max_iters), dimension)  # Krylov vectors, grown on demand
    basis[:, 0] = q
    previous, beta = torch.zeros_like(q), torch.zeros(n_tasks, dtype=torch.float64, device=q.device)
    for it in range(1, max_iters + 1):
        vector = unflatten_batched(q.to(dtype), template)
        w = flatten_batched(_tasks_hvp(loss, params, x, y, vector)).to(torch.float64)
        alpha = (w * q).sum(dim=1)
        w = torch.addcmul(w, alpha[:, None], q, value=-1).addcmul_(beta[:, None], previous, value=-1).unsqueeze(2)
        krylov = basis[:, :it]  # [A, it, d]
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            w = torch.baddbmm(w, krylov.transpose(1, 2), krylov @ w, alpha=-1)
        w = w.squeeze(2)
        rows = active.to(q.device)
        alphas[rows, it - 1] = alpha
        estimate = _tridiagonal_extreme(alphas[rows, :it], betas[rows, : it - 1]).cpu()
        beta = w.norm(dim=1)
        exhausted = (beta <= 1e-10 * alpha.abs().clamp_min(1e-30)).cpu() | (it >= dimension)
        stable = (estimate - eigenvalue[active]).abs() <= tol * estimate.abs()
        done = stable | exhausted
        eigenvalue[active] = estimate
        iterations[active[done]] = it
        converged[active[done]] = True
        if done.all() or it == max_iters:
            break
        betas[rows, it - 1] = beta
        previous, q = q, w / beta.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
        if it == basis.shape[1]:
            basis = torch.cat([basis, torch.empty_like(basis[:, : min(it, max_iters - it)])], dim=1)
        basis[:, it] = q
        if done.any():
            keep = ~done
            kept = keep.to(q.device)
            active = active[keep]
            q, previous, beta, basis = q[kept], previous[kept], beta[kept], basis[kept]
            params = {name: value[kept] for name, value in params.items()}
            x, y = x[kept], y[kept]
    return eigenvalue, iterations, converged


def _first(tensors: ParamDict) -> ParamDict:
    return {name: value[0] for name, value in tensors.items()}


def lanczos_starts(params: ParamDict, tasks: int, seed: int) -> ParamDict:
    """Seeded Gaussian start vectors, one per task ({name: [tasks, ...]})."""
    g = generator(seed, "hessian-start")
    return {name: torch.randn(tasks, *p.shape, generator=g, dtype=p.dtype).to(p.device) for name, p in params.items()}


def tasks_top_eigenvalues(
    loss: LossFn, adapted: ParamDict, x, y, *, start: ParamDict, max_iters: int, tol: float, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`hessian_top_eigenvalue` of every task, ``chunk`` tasks at a time."""
    results = []
    for lo in range(0, x.shape[0], chunk):
        part = slice(lo, lo + chunk)
        results.append(
            hessian_top_eigenvalue(
                loss,
                {n: a[part] for n, a in adapted.items()},
                x[part],
                y[part],
                max_iters=max_iters,
                tol=tol,
                start={n: s[part] for n, s in start.items()},
            )
        )
    return tuple(torch.cat(parts) for parts in zip(*results, strict=True))


def curvature(context: ProbeContext, options: CurvatureOptions) -> ProbeOutput:
    k = min(options.tasks, len(context.batch))
    _, adapted = context.adaptation()
    eigenvalue, iterations, converged = tasks_top_eigenvalues(
        context.loss,
        {n: a[:k] for n, a in adapted.items()},
        context.batch.support_x[:k],
        context.batch.support_y[:k],
        start=lanczos_starts(context.params, k, context.seed),
        max_iters=options.max_iters,
        tol=options.tol,
        chunk=options.chunk or context.chunk,
    )
    return ProbeOutput(
        {"hessian_top_eigenvalue": eigenvalue, "hessian_iterations": iterations, "hessian_converged": converged},
        {
            "hessian_top_eigenvalue": eigenvalue.mean().item(),
            "hessian_converged_fraction": converged.double().mean().item(),
        },
    )


PROBES.register(
    "curvature",
    ProbeSpec(
        "curvature",
        "Top Hessian eigenvalue of the support loss at adapted solutions (eqs. 2.3-2.4)",
        CurvatureOptions,
        curvature,
        within_probe_tasks,
    ),
)
