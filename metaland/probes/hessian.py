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


def _tridiagonal_extreme(alphas: list[torch.Tensor], betas: list[torch.Tensor]) -> torch.Tensor:
    """Per task, the signed eigenvalue of largest magnitude of the Lanczos tridiagonal matrix."""
    diagonal = torch.stack(alphas, dim=1)
    matrix = torch.diag_embed(diagonal)
    if betas:
        off = torch.stack(betas, dim=1)
        matrix = matrix + torch.diag_embed(off, offset=1) + torch.diag_embed(off, offset=-1)
    ritz = torch.linalg.eigvalsh(matrix)
    return ritz.gather(1, ritz.abs().argmax(dim=1, keepdim=True)).squeeze(1)


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
    exhausted (the estimate is then exact). Returns (eigenvalue [T], iterations [T], converged [T]);
    a stopped task keeps its value, so results do not depend on which tasks share a batch.
    """
    n_tasks = x.shape[0]
    if n_tasks == 1:  # no vmap for a single task: plain convolutions instead of grouped ones

        def batched_hvp(p, xs, ys, v):
            one = hessian_vector_product(loss, _first(p), xs[0], ys[0], _first(v))
            return {name: value.unsqueeze(0) for name, value in one.items()}

    else:
        batched_hvp = vmap(lambda p, xi, yi, v: hessian_vector_product(loss, p, xi, yi, v))
    q = flatten_batched(start).to(torch.float64)
    q = q / q.norm(dim=1, keepdim=True)
    basis = [q]
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    previous, beta = torch.zeros_like(q), torch.zeros(n_tasks, dtype=torch.float64, device=q.device)
    eigenvalue = torch.full((n_tasks,), float("nan"), dtype=torch.float64)
    iterations = torch.full((n_tasks,), max_iters, dtype=torch.int64)
    converged = torch.zeros(n_tasks, dtype=torch.bool)
    dtype = next(iter(params.values())).dtype
    template = {name: value[0] for name, value in start.items()}  # one task's shapes
    for it in range(1, max_iters + 1):
        w = flatten_batched(batched_hvp(params, x, y, unflatten_batched(q.to(dtype), template))).to(torch.float64)
        alpha = (w * q).sum(dim=1)
        w = w - alpha[:, None] * q - beta[:, None] * previous
        krylov = torch.stack(basis, dim=1)  # [T, k, d]
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            w = w - torch.einsum("tkd,tk->td", krylov, torch.einsum("tkd,td->tk", krylov, w))
        alphas.append(alpha)
        estimate = _tridiagonal_extreme(alphas, betas).cpu()
        beta = w.norm(dim=1)
        exhausted = (beta <= 1e-10 * alpha.abs().clamp_min(1e-30)).cpu() | torch.tensor(it >= q.shape[1])
        active = ~converged
        stable = (estimate - eigenvalue).abs() <= tol * estimate.abs() if it > 1 else torch.zeros_like(active)
        newly = active & (stable | exhausted)
        eigenvalue[active] = estimate[active]
        iterations[newly] = it
        converged |= newly
        if converged.all():
            break
        betas.append(beta)
        previous, q = q, w / beta.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
        basis.append(q)
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
