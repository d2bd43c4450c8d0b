"""Coherence probes (seed 000 §2.4.2 eq. 2.5 and §2.4.3 eq. 2.6).

* Trajectory coherence, M4: E_{i≠j}[θ⃗_iᵀ θ⃗_j] with θ⃗_i = (θ̃_i − θ^s) / ‖θ̃_i − θ^s‖₂, the mean
  cosine between adaptation displacements of distinct tasks.
* Gradient coherence, M5: E_{i≠j}[g_iᵀ g_j] with g_i = −∇_θ L(f(D_i; θ^s)), the raw inner product
  (not normalised: §2.4.3 found it tracks accuracy better); the cosine is reported beside it.

Pairs are unordered with i ≠ j (including i = j would add 1/n-weighted self terms). Computed in
O(d) memory per chunk by mean_{i≠j} v_iᵀ v_j = (‖Σ_i v_i‖² − Σ_i ‖v_i‖²) / (n (n − 1)), in float64.

Beside trajectory coherence, the spread the same mean would have for random directions (§2.5.2: finetune's
directions are "akin to random vectors in high dimension"): :func:`random_cosine_sd` of the n tasks in the
d coordinates adaptation moved.
"""

from __future__ import annotations

import math

import torch
from torch.func import grad

from metaland.models import flatten_batched
from metaland.probes import PROBES, ProbeContext, ProbeOutput, ProbeSpec
from metaland.schema import NoOptions, Params
from metaland.vectorise import map_leading


def mean_pairwise_inner_product(vectors: torch.Tensor, chunk: int = 256) -> float:
    """mean over i ≠ j of v_iᵀ v_j for the rows of ``vectors`` [n, d] (n ≥ 2)."""
    n = vectors.shape[0]
    if n < 2:
        raise ValueError("coherence needs at least two vectors")
    total = torch.zeros(vectors.shape[1], dtype=torch.float64, device=vectors.device)
    squared_norms = 0.0
    for start in range(0, n, chunk):
        rows = vectors[start : start + chunk].to(torch.float64)
        total += rows.sum(dim=0)
        squared_norms += rows.square().sum().item()
    return (total.square().sum().item() - squared_norms) / (n * (n - 1))


def mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    """mean over i ≠ j of cos(v_i, v_j); a zero vector counts as orthogonal to all."""
    norms = vectors.norm(dim=1, keepdim=True)
    return mean_pairwise_inner_product(vectors / norms.clamp_min(torch.finfo(vectors.dtype).tiny))


def random_cosine_sd(n: int, d: int) -> float:
    """Standard deviation of the mean pairwise cosine of n independent isotropic random directions in d
    dimensions (its mean is 0): each pair's cosine has variance 1/d, and the n (n − 1) / 2 pairs are
    uncorrelated (E[(uᵀv)(uᵀw)] = 0 for independent v, w), so the mean's variance is 2 / (d n (n − 1))."""
    if n < 2 or d < 1:
        raise ValueError(f"a random baseline needs n ≥ 2 directions in d ≥ 1 dimensions, got n = {n}, d = {d}")
    return math.sqrt(2.0 / (d * n * (n - 1)))


def trajectory_coherence(context: ProbeContext, options: Params) -> ProbeOutput:
    displacements = context.displacements()
    moved = int((displacements != 0).any(dim=0).sum())  # ANIL / BOIL adapt a subset of the coordinates
    return ProbeOutput(
        {},
        {
            "trajectory_coherence": mean_pairwise_cosine(displacements),
            "trajectory_coherence_random_sd": random_cosine_sd(displacements.shape[0], max(moved, 1)),
        },
    )


def meta_test_gradients(context: ProbeContext) -> torch.Tensor:
    """g_i = −∇_θ L(f(D_i; θ^s)) as rows [T, d]."""
    params = {k: v.detach() for k, v in context.params.items()}
    per_task = map_leading(grad(context.loss), in_dims=(None, 0, 0), chunk=context.chunk)
    grads = per_task(params, context.batch.support_x, context.batch.support_y)
    return -flatten_batched(grads)


def gradient_coherence(context: ProbeContext, options: Params) -> ProbeOutput:
    g = meta_test_gradients(context)
    norms = g.norm(dim=1)
    return ProbeOutput(
        {"gradient_norm": norms},
        {
            "gradient_coherence": mean_pairwise_inner_product(g),
            "gradient_cosine": mean_pairwise_cosine(g),
            "gradient_norm": norms.mean().item(),
        },
    )


PROBES.register(
    "trajectory_coherence",
    ProbeSpec(
        "trajectory_coherence",
        "Mean pairwise cosine of adaptation displacements (eq. 2.5)",
        NoOptions,
        trajectory_coherence,
    ),
)
PROBES.register(
    "gradient_coherence",
    ProbeSpec(
        "gradient_coherence",
        "Mean pairwise inner product of meta-test gradients at θ^s (eq. 2.6)",
        NoOptions,
        gradient_coherence,
    ),
)
