"""Curvature of meta-test solutions (seed 000 §2.4.1, eqs. 2.3-2.4; M2).

‖H‖_σ = λ_max(H) for H = ∇²_θ L(f(D_i; θ̃_i)), the Hessian of the *support* loss at the adapted
solution θ̃_i (not at θ^s), over all trainable parameters. The thesis does not say how λ_max was
computed; here it is power iteration on Hessian-vector products (Pearlmutter; forward-over-reverse
``jvp(grad)``), batched over tasks with ``vmap``. Power iteration converges to the eigenvalue of
largest magnitude; its *signed* Rayleigh quotient is recorded (it equals ‖H‖_σ when that
eigenvalue is positive, as the thesis assumes). Iteration stops per task when the relative change
of the estimate falls below ``tol``, or at ``max_iters``; iterations and convergence are recorded.
"""

from __future__ import annotations

import warnings

import torch
from pydantic import Field
from torch.func import grad, jvp, vmap

from metaland.meta.inner import LossFn
from metaland.models import ParamDict
from metaland.probes import PROBES, ProbeContext, ProbeOutput, ProbeSpec, within_probe_tasks
from metaland.schema import Params
from metaland.seeding import generator

# PyTorch's forward-mode AD loads its own decompositions through torch.jit.script on first use and
# warns about that deprecation; the warning is about torch internals, not about this code.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


class CurvatureOptions(Params):
    tasks: int = Field(60, ge=1, description="First k fixed tasks whose Hessian is probed (seed 000 §2.5.1: 60).")
    max_iters: int = Field(100, ge=1, description="Power-iteration cap (the thesis gives none).")
    tol: float = Field(1e-3, gt=0, lt=1, description="Relative change of the eigenvalue estimate that stops iteration.")


def hessian_vector_product(loss: LossFn, params: ParamDict, x, y, vector: ParamDict) -> ParamDict:
    """H v for H = ∇²_θ loss(θ, x, y) at ``params``."""
    return jvp(lambda p: grad(loss)(p, x, y), (params,), (vector,))[1]


def _dot(a: ParamDict, b: ParamDict) -> torch.Tensor:
    """Per-task inner product of task-batched dicts: [T]."""
    return sum((a[k] * b[k]).reshape(a[k].shape[0], -1).sum(dim=1) for k in a)


def _scale(a: ParamDict, factor: torch.Tensor) -> ParamDict:
    return {k: v * factor.reshape(-1, *([1] * (v.dim() - 1))) for k, v in a.items()}


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
    """Dominant eigenvalue of each task's Hessian by batched power iteration.

    ``params``, ``x``, ``y`` and ``start`` carry a leading task axis. Returns (eigenvalue [T],
    iterations [T], converged [T]); a converged task's estimate is frozen.
    """
    batched_hvp = vmap(lambda p, xi, yi, v: hessian_vector_product(loss, p, xi, yi, v))
    vector = _scale(start, _dot(start, start).rsqrt())
    n_tasks = x.shape[0]
    eigenvalue = torch.full((n_tasks,), float("nan"), dtype=torch.float64)
    iterations = torch.full((n_tasks,), max_iters, dtype=torch.int64)
    converged = torch.zeros(n_tasks, dtype=torch.bool)
    for it in range(1, max_iters + 1):
        hv = batched_hvp(params, x, y, vector)
        estimate = _dot(vector, hv).to(torch.float64).cpu()
        active = ~converged
        if it > 1:
            newly = active & ((estimate - eigenvalue).abs() <= tol * estimate.abs())
            iterations[newly] = it
            converged |= newly
        eigenvalue[active] = estimate[active]
        if converged.all():
            break
        norms = _dot(hv, hv).sqrt().clamp_min(torch.finfo(x.dtype).tiny)
        keep = converged.to(x.device)
        step = _scale(hv, norms.reciprocal())
        vector = {k: torch.where(keep.reshape(-1, *([1] * (v.dim() - 1))), vector[k], v) for k, v in step.items()}
    return eigenvalue, iterations, converged


def curvature(context: ProbeContext, options: CurvatureOptions) -> ProbeOutput:
    k = min(options.tasks, len(context.batch))
    _, adapted = context.adaptation()
    g = generator(context.seed, "hessian-start")
    start_all = {
        name: torch.randn(k, *p.shape, generator=g, dtype=p.dtype).to(p.device) for name, p in context.params.items()
    }
    results = []
    for lo in range(0, k, context.chunk):
        hi = min(lo + context.chunk, k)
        results.append(
            hessian_top_eigenvalue(
                context.loss,
                {n: a[lo:hi] for n, a in adapted.items()},
                context.batch.support_x[lo:hi],
                context.batch.support_y[lo:hi],
                max_iters=options.max_iters,
                tol=options.tol,
                start={n: s[lo:hi] for n, s in start_all.items()},
            )
        )
    eigenvalue, iterations, converged = (torch.cat(parts) for parts in zip(*results, strict=True))
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
