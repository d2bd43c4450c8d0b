"""Curvature of meta-test solutions (seed 000 §2.4.1, eqs. 2.3-2.4; M2).

The thesis measures the curvature at an adapted solution θ̃_i as the spectral norm of the Hessian
of the *support* loss there, H = ∇²_θ L(f(D_i; θ̃_i)) over all trainable parameters:
‖H‖_σ = √λ_max(HᴴH) = max(|λ_max(H)|, |λ_min(H)|) (eq. 2.3; the thesis equates it with λ_max(H),
which holds only while no negative eigenvalue is larger in magnitude). The probe records the three
apart, per task: ``hessian_lambda_max`` (largest algebraic eigenvalue), ``hessian_lambda_min``
(smallest) and ``hessian_spectral_norm`` = max(|λ_max|, |λ_min|), the thesis's quantity (what
guiroy2019's claims and figures read, and sharpmaml's flatness).

The thesis does not say how it computed them. Here: the Lanczos method with full
reorthogonalisation on Hessian-vector products (Pearlmutter; forward-over-reverse ``jvp(grad)``),
batched over tasks with ``vmap`` in chunks of ``chunk`` tasks (a single task runs without
``vmap``). One Krylov space serves both ends of the spectrum. After k products the Ritz pairs
(θ, y = Q s) of the projected matrix T = QᵀHQ give the estimates, and each pair's residual costs no
further product: ‖Hy − θy‖ = β_k |e_kᵀ s| (β_k the norm of the next Lanczos vector). A task stops
once both ends are *certified*: each residual is at most ``tol`` · ‖H‖_σ (estimate), after at
least ``min_iters`` products. A residual r guarantees an eigenvalue of H within r of the Ritz value
(and, for an isolated eigenvalue, an error of about r²/gap); the minimum Krylov dimension guards
the one thing a residual cannot see, a top eigenvector the start vector barely touches, by letting
Lanczos amplify that component before the first check (for a Gaussian start its weight is about
1/√d, and it grows like a Chebyshev polynomial of degree k). When the Krylov basis reaches
``krylov_dim`` vectors without certification, Lanczos restarts thickly (Wu and Simon 2000): it
keeps the Ritz vectors nearest each end of the spectrum (a quarter of the basis at each) and the
next Lanczos vector, and goes on, so memory stays bounded while what it learnt about both ends is
kept (the residual certificate holds across restarts: HQ = QT + βqeᵀ still). The residual
of each reported end is recorded beside its eigenvalue, with the number of products and whether the
task was certified within ``max_iters``.

The same Lanczos serves ``meta_loss_curvature``: the Hessian of the meta-loss F(θ) (the mean query loss
after adaptation over k fixed tasks, seed 000 eq. 2.2) at the meta-learned θ itself, the upper-level
landscape seed 002's upper perturbation flattens; its products differentiate through the inner loop
(third order, with BatchNorm from elementary operations: ``metaland.probes.batchnorm``).

The previous rule, "the relative change of the estimate is at most tol", stopped as soon as the
Ritz value paused; when the start vector carried little weight on the top eigenvector it paused
near the *second* eigenvalue and was flagged converged (up to 14.5% low on the default profile,
issue 27); see docs/performance.md for what that rule had been buying.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch.func import grad, jvp, vmap

from metaland.meta.inner import LossFn, adapt
from metaland.models import ParamDict, flatten_batched, unflatten_batched
from metaland.probes import PROBES, ProbeContext, ProbeOutput, ProbeSpec, within_probe_tasks
from metaland.probes.batchnorm import elementary_batch_norm
from metaland.schema import Params
from metaland.seeding import generator
from metaland.vectorise import map_leading

# PyTorch's forward-mode AD loads its own decompositions through torch.jit.script on first use and
# warns about that deprecation; the warning is about torch internals, not about this code.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


class LanczosOptions(Params):
    """How the extreme eigenvalues of a Hessian are found and certified (module docstring)."""

    max_iters: int = Field(
        100,
        ge=1,
        description="Cap on Hessian-vector products per task, restarts included (the thesis gives none); a task "
        "not certified by then is recorded with hessian_converged false.",
    )
    tol: float = Field(
        1e-3,
        gt=0,
        lt=1,
        description="Certification: the residual ‖Hy − θy‖ of the Ritz pair of each end (λ_max, λ_min) must be at "
        "most tol · ‖H‖_σ. Float32 Hessian-vector products floor the residual near 1e-6 · ‖H‖_σ.",
    )
    min_iters: int = Field(
        10,
        ge=1,
        description="Minimum Krylov dimension (products) before a task may stop: time for Lanczos to amplify a top "
        "eigenvector the start vector barely touches, which no residual can detect.",
    )
    krylov_dim: int = Field(
        40,
        ge=4,
        description="Krylov vectors kept per task; a task not certified when the basis is full restarts thickly "
        "from the Ritz vectors of both ends. Bounds memory (tasks × krylov_dim × parameters, float64).",
    )

    @model_validator(mode="after")
    def _minimum_within_cap(self) -> LanczosOptions:
        if self.min_iters > self.max_iters:
            raise ValueError(f"min_iters ({self.min_iters}) cannot exceed max_iters ({self.max_iters})")
        return self

    def lanczos(self) -> dict:
        """The keyword arguments of :func:`hessian_extreme_eigenvalues`."""
        return {
            "max_iters": self.max_iters,
            "tol": self.tol,
            "min_iters": self.min_iters,
            "krylov_dim": self.krylov_dim,
        }


class CurvatureOptions(LanczosOptions):
    tasks: int = Field(60, ge=1, description="First k fixed tasks whose Hessian is probed (seed 000 §2.5.1: 60).")
    chunk: int | None = Field(
        None,
        ge=1,
        description="Tasks whose Lanczos iterations run together under vmap (1 = one task at a time, without "
        "vmap; none = probe.chunk). Bounds memory; changes speed only, up to float rounding.",
    )


class MetaLossCurvatureOptions(LanczosOptions):
    tasks: int = Field(
        20,
        ge=1,
        description="First k fixed tasks whose mean query loss after adaptation is the meta-loss F (seed 002 gives no "
        "number; its upper perturbation is computed on a meta-batch of tasks).",
    )


def hessian_vector_product(loss: LossFn, params: ParamDict, x, y, vector: ParamDict) -> ParamDict:
    """H v for H = ∇²_θ loss(θ, x, y) at ``params``."""
    return jvp(lambda p: grad(loss)(p, x, y), (params,), (vector,))[1]


def _tasks_hvp(loss: LossFn, params: ParamDict, x, y, vector: ParamDict) -> ParamDict:
    """H_i v_i for every task i of the leading axis; a single task runs without ``vmap`` (plain
    convolutions instead of grouped ones)."""
    if x.shape[0] == 1:
        one = hessian_vector_product(loss, _first(params), x[0], y[0], _first(vector))
        return {name: value.unsqueeze(0) for name, value in one.items()}
    return vmap(lambda p, xi, yi, v: hessian_vector_product(loss, p, xi, yi, v))(params, x, y, vector)


@dataclass(frozen=True)
class ExtremeEigenvalues:
    """Per task [T]: both ends of the Hessian's spectrum, the residuals ‖Hy − θy‖ of their Ritz pairs
    (float64), the Hessian-vector products spent and whether both ends were certified."""

    lambda_max: torch.Tensor
    lambda_min: torch.Tensor
    residual_max: torch.Tensor
    residual_min: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor

    @property
    def spectral_norm(self) -> torch.Tensor:
        """‖H‖_σ = max(|λ_max|, |λ_min|) (eq. 2.3)."""
        return torch.maximum(self.lambda_max.abs(), self.lambda_min.abs())

    @classmethod
    def cat(cls, parts: list[ExtremeEigenvalues]) -> ExtremeEigenvalues:
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))


def _ritz_ends(projected: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ritz values θ [A, k] (ascending) and vectors S [A, k, k] of the projected matrices ``projected``
    [A, k, k], and the residuals β |e_kᵀ s| [A, 2] of the pairs at both ends (smallest, largest)."""
    theta, vectors = torch.linalg.eigh(projected)
    last = vectors[:, -1, :]  # e_kᵀ S
    residual = beta[:, None] * torch.stack([last[:, 0], last[:, -1]], dim=1).abs()
    return theta, vectors, residual


def _project_out(w: torch.Tensor, rows: torch.Tensor, *, repeat: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """w [A, d] minus its projection on the orthonormal ``rows`` [A, k, d] (classical Gram-Schmidt),
    and the coefficients [A, k] (float64). With ``repeat``, a second pass follows when the first
    cancelled more than 1 − 1/√2 of any task's w (the DGKS criterion: "twice is enough")."""
    coefficients = torch.zeros(w.shape[0], rows.shape[1], dtype=torch.float64, device=w.device)
    for _ in range(2 if repeat else 1):
        before = w.norm(dim=1)
        c = (rows @ w.unsqueeze(2)).squeeze(2)
        w = torch.baddbmm(w.unsqueeze(1), c.unsqueeze(1), rows, alpha=-1).squeeze(1)
        coefficients += c
        if (w.norm(dim=1) >= before * _DGKS).all():
            break
    return w, coefficients


_DGKS = 2**-0.5


def hessian_extreme_eigenvalues(
    loss: LossFn,
    params: ParamDict,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    start: ParamDict,
    max_iters: int,
    tol: float,
    min_iters: int,
    krylov_dim: int,
) -> ExtremeEigenvalues:
    """λ_max and λ_min of each task's Hessian by batched, thick-restarted Lanczos with full
    reorthogonalisation, each certified by the residual of its Ritz pair (module docstring).

    ``params``, ``x``, ``y`` and ``start`` carry a leading task axis. After every Hessian-vector
    product the projected matrix T = QᵀHQ (dense: it holds the restart's coupling terms too) gains a
    column, and its extreme Ritz pairs are checked: a task stops when both residuals are at most
    ``tol`` · max(|θ_max|, |θ_min|) and it has taken ``min_iters`` products, when its Krylov space is
    invariant (β = 0: the Ritz values are then eigenvalues of H), or at ``max_iters`` (uncertified
    unless the check passes there). A stopped task leaves the batch: later products are computed for
    the remaining tasks only, and each task's values depend on nothing but its own inputs, whichever
    tasks share its batch (all tasks of a batch keep the same basis size, so they restart together).
    Krylov vectors are kept in the parameters' dtype, the precision of the products themselves
    (reorthogonalisation reads the whole basis twice per product: in float64 it took longer than
    the products); the projected matrix and its eigenpairs are float64.
    """
    n_tasks = x.shape[0]
    dtype = next(iter(params.values())).dtype
    template = {name: value[0] for name, value in start.items()}  # one task's shapes
    q = flatten_batched(start).to(torch.float64)
    q = (q / q.norm(dim=1, keepdim=True)).to(dtype)
    dimension = q.shape[1]
    capacity = min(krylov_dim, dimension)
    keep = max(1, capacity // 4)  # Ritz vectors kept at each end on a restart
    out = {name: torch.full((n_tasks,), float("nan"), dtype=torch.float64) for name in ("max", "min", "rmax", "rmin")}
    iterations = torch.full((n_tasks,), max_iters, dtype=torch.int64)
    converged = torch.zeros(n_tasks, dtype=torch.bool)
    # Rows of the state below belong to the tasks still iterating, ``active`` (their task ids).
    active = torch.arange(n_tasks)
    basis = q.new_empty(n_tasks, min(8, capacity), dimension)  # Krylov vectors, grown on demand
    basis[:, 0] = q
    projected = q.new_zeros(n_tasks, capacity, capacity, dtype=torch.float64)  # T = QᵀHQ
    size = 1  # basis vectors; the last one is multiplied next
    for it in range(1, max_iters + 1):
        j = size - 1
        w = flatten_batched(_tasks_hvp(loss, params, x, y, unflatten_batched(basis[:, j], template)))
        lo = max(j - 1, 0)  # the three-term recurrence's vectors first, then the whole basis
        w, h_recent = _project_out(w, basis[:, lo:size], repeat=False)
        w, h = _project_out(w, basis[:, :size], repeat=True)
        h[:, lo:size] += h_recent
        projected[:, :size, j] = h
        projected[:, j, :size] = h
        beta = w.norm(dim=1, dtype=torch.float64)
        theta, ritz, residual = _ritz_ends(projected[:, :size, :size], beta)
        norm = torch.maximum(theta[:, 0].abs(), theta[:, -1].abs())
        certified = (residual <= tol * norm[:, None]).all(dim=1).cpu()
        invariant = (beta <= 1e-10 * norm.clamp_min(1e-30)).cpu() | (size >= dimension)
        done = (certified & (it >= min_iters)) | invariant | (it == max_iters)
        values = (theta[:, -1], theta[:, 0], residual[:, 1], residual[:, 0])
        for name, value in zip(("max", "min", "rmax", "rmin"), values, strict=True):
            out[name][active] = value.cpu()
        iterations[active[done]] = it
        converged[active[done]] = ((certified & (it >= min_iters)) | invariant)[done]
        if done.all():
            break
        q = w / beta.to(dtype).clamp_min(torch.finfo(dtype).tiny)[:, None]
        if size == capacity:  # thick restart: Ritz vectors of both ends, then the next Lanczos vector
            ends = torch.cat([torch.arange(keep), torch.arange(size - keep, size)]).to(q.device)
            basis[:, : 2 * keep] = ritz[:, :, ends].transpose(1, 2).to(dtype) @ basis[:, :size]
            projected.zero_()
            projected[:, : 2 * keep, : 2 * keep] = torch.diag_embed(theta[:, ends])
            size = 2 * keep
        elif size == basis.shape[1]:
            basis = torch.cat([basis, torch.empty_like(basis[:, : min(size, capacity - size)])], dim=1)
        basis[:, size] = q
        size += 1
        if done.any():
            kept = (~done).to(q.device)
            active = active[~done]
            basis, projected = basis[kept], projected[kept]
            params = {name: value[kept] for name, value in params.items()}
            x, y = x[kept], y[kept]
    return ExtremeEigenvalues(out["max"], out["min"], out["rmax"], out["rmin"], iterations, converged)


def _first(tensors: ParamDict) -> ParamDict:
    return {name: value[0] for name, value in tensors.items()}


def lanczos_starts(params: ParamDict, tasks: int, seed: int) -> ParamDict:
    """Seeded Gaussian start vectors, one per task ({name: [tasks, ...]})."""
    g = generator(seed, "hessian-start")
    return {name: torch.randn(tasks, *p.shape, generator=g, dtype=p.dtype).to(p.device) for name, p in params.items()}


def tasks_extreme_eigenvalues(
    loss: LossFn,
    adapted: ParamDict,
    x,
    y,
    *,
    start: ParamDict,
    chunk: int,
    max_iters: int,
    tol: float,
    min_iters: int,
    krylov_dim: int,
) -> ExtremeEigenvalues:
    """:func:`hessian_extreme_eigenvalues` of every task, ``chunk`` tasks at a time."""
    parts = []
    for lo in range(0, x.shape[0], chunk):
        part = slice(lo, lo + chunk)
        parts.append(
            hessian_extreme_eigenvalues(
                loss,
                {n: a[part] for n, a in adapted.items()},
                x[part],
                y[part],
                start={n: s[part] for n, s in start.items()},
                max_iters=max_iters,
                tol=tol,
                min_iters=min_iters,
                krylov_dim=krylov_dim,
            )
        )
    return ExtremeEigenvalues.cat(parts)


def curvature(context: ProbeContext, options: CurvatureOptions) -> ProbeOutput:
    k = min(options.tasks, len(context.batch))
    _, adapted = context.adaptation()
    ends = tasks_extreme_eigenvalues(
        context.loss,
        {n: a[:k] for n, a in adapted.items()},
        context.batch.support_x[:k],
        context.batch.support_y[:k],
        start=lanczos_starts(context.params, k, context.seed),
        chunk=options.chunk or context.chunk,
        **options.lanczos(),
    )
    per_task = {
        "hessian_spectral_norm": ends.spectral_norm,
        "hessian_lambda_max": ends.lambda_max,
        "hessian_lambda_min": ends.lambda_min,
        "hessian_lambda_max_residual": ends.residual_max,
        "hessian_lambda_min_residual": ends.residual_min,
        "hessian_iterations": ends.iterations,
        "hessian_converged": ends.converged,
    }
    summary = {name: per_task[name].mean().item() for name in CURVATURE_SUMMARIES}
    summary["hessian_converged_fraction"] = ends.converged.double().mean().item()
    return ProbeOutput(per_task, summary)


CURVATURE_SUMMARIES = ("hessian_spectral_norm", "hessian_lambda_max", "hessian_lambda_min")
"""Per-checkpoint means over tasks (E_i[‖H_i‖_σ] is eq. 2.4)."""

PROBES.register(
    "curvature",
    ProbeSpec(
        "curvature",
        "Spectral norm, λ_max and λ_min of the support-loss Hessian at adapted solutions, each end certified "
        "by its Lanczos residual (eqs. 2.3-2.4)",
        CurvatureOptions,
        curvature,
        within_probe_tasks,
    ),
)


def meta_loss(context: ProbeContext, shots: int) -> LossFn:
    """F(θ; x, y) = (1/k) Σ_i L(Adapt_T(θ; D_i); D'_i), the meta-loss of k tasks, as a loss of θ and stacked
    tasks x [k, shots + queries, ...] / y [k, shots + queries] holding each task's support examples first
    (seed 000 eq. 2.2; the objective seed 002's upper perturbation ascends). Second order through the
    run's inner loop; tasks mapped with ``vmap`` in chunks of ``context.chunk``. Its Hessian-vector
    products are third derivatives: take them under :func:`elementary_batch_norm` (PyTorch's fused
    BatchNorm is wrong at that order, and under ``grad(vmap(.))`` already at the second)."""

    def task_loss(params: ParamDict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adapted = adapt(
            context.loss, params, x[:shots], y[:shots], steps=context.steps, lr=context.lr, adapted=context.adapted
        )
        return F.cross_entropy(context.forward(adapted, x[shots:]), y[shots:])

    def loss(params: ParamDict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return map_leading(task_loss, chunk=context.chunk, in_dims=(None, 0, 0))(params, x, y).mean()

    return loss


def meta_loss_curvature(context: ProbeContext, options: MetaLossCurvatureOptions) -> ProbeOutput:
    """λ_max, λ_min and ‖·‖_σ of ∇²_θ F at the meta-learned θ, F the meta-loss of the first k fixed tasks
    (:func:`meta_loss`): the flatness of the upper-level landscape that Sharp-MAML_up flattens (seed 002),
    where ``curvature`` measures the lower level, the support loss at each adapted θ̃_i (eq. 2.3). One
    value per checkpoint (the Hessian of the mean, not a mean of per-task Hessians' norms), certified by
    the same Lanczos rule; the products are third-order derivatives through the inner loop."""
    context.require_gradient_descent("meta_loss_curvature")
    k = min(options.tasks, len(context.batch))
    support_x, support_y, query_x, query_y = context.batch.chunk(0, k).tensors()
    theta = {name: p.detach() for name, p in context.params.items()}
    with elementary_batch_norm():
        ends = hessian_extreme_eigenvalues(
            meta_loss(context, support_x.shape[1]),
            {name: p.unsqueeze(0) for name, p in theta.items()},
            torch.cat([support_x, query_x], dim=1).unsqueeze(0),
            torch.cat([support_y, query_y], dim=1).unsqueeze(0),
            start=lanczos_starts(theta, 1, context.seed),
            **options.lanczos(),
        )
    values = {
        "meta_hessian_spectral_norm": ends.spectral_norm,
        "meta_hessian_lambda_max": ends.lambda_max,
        "meta_hessian_lambda_min": ends.lambda_min,
        "meta_hessian_lambda_max_residual": ends.residual_max,
        "meta_hessian_lambda_min_residual": ends.residual_min,
        "meta_hessian_iterations": ends.iterations.double(),
        "meta_hessian_converged": ends.converged.double(),
    }
    return ProbeOutput({}, {name: value.item() for name, value in values.items()})


PROBES.register(
    "meta_loss_curvature",
    ProbeSpec(
        "meta_loss_curvature",
        "Spectral norm, λ_max and λ_min of the Hessian of the meta-loss (mean query loss after adaptation over the "
        "first k fixed tasks) at θ, certified by Lanczos residuals: the upper-level flatness of seed 002",
        MetaLossCurvatureOptions,
        meta_loss_curvature,
        within_probe_tasks,
    ),
)
