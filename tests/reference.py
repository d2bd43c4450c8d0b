"""Brute-force references for the math tests (seed 000 §1-§2), shared by the ``test_math_*``
modules and ``benchmarks/verify_curvature.py``.

These are written by hand, without metaland's functional code (``metaland.meta``,
``metaland.probes``), and are used to check it: a hand-written forward pass of the one-block
ConvNet (conv → batch-statistics BatchNorm → ReLU → linear), a hand-written cross-entropy, plain
``torch.autograd.grad`` inner loops, explicit Hessian matrices, and ARPACK
(``scipy.sparse.linalg.eigsh``) on double-backward Hessian-vector products. Only the model's
construction and initial parameters (and ``flatten``) come from metaland.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metaland.data.tasks import TaskBatch
from metaland.models import build_model, flatten, initial_params, make_forward
from metaland.models.convnet import ConvNetParams

WAYS = 3
SIZE = 6
STEPS, LR = 3, 0.4


def tiny_model(dtype: torch.dtype = torch.float64, seed: int = 0, norm: str = "batch"):
    """One-block ConvNet (2 filters, 6×6 inputs, 3-way) and parameters θ near its init.

    Returns (module, forward, params); θ is drawn in float64 and then cast to ``dtype``."""
    module = build_model(
        "convnet", ConvNetParams(blocks=1, filters=2, norm=norm), channels=1, image_size=SIZE, ways=WAYS, seed=seed
    )
    g = torch.Generator().manual_seed(seed + 1)
    params = {
        k: (v.double() + 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64)).to(dtype)
        for k, v in initial_params(module).items()
    }
    return module, make_forward(module), params


def make_tasks(
    n_tasks: int, *, shots: int = 2, queries: int = 3, seed: int = 0, dtype: torch.dtype = torch.float64
) -> TaskBatch:
    """Learnable random tasks: class c of task i is a Gaussian blob around a random prototype,
    so the labels of a task are a random relabelling, as in sampled N-way tasks."""
    g = torch.Generator().manual_seed(1000 + seed)
    protos = torch.randn(n_tasks, WAYS, 1, SIZE, SIZE, generator=g, dtype=torch.float64)

    def draw(per_class: int):
        labels = torch.arange(WAYS).repeat_interleave(per_class)
        noise = torch.randn(n_tasks, len(labels), 1, SIZE, SIZE, generator=g, dtype=torch.float64)
        x = (protos[:, labels] + 0.7 * noise).to(dtype)
        return x, labels.expand(n_tasks, -1).contiguous()

    return TaskBatch(*draw(shots), *draw(queries))


def reference_forward(p: dict, x: torch.Tensor) -> torch.Tensor:
    """conv(3×3, stride 2, pad 1) → [BatchNorm, batch statistics] → ReLU → linear, by hand."""
    h = F.conv2d(x, p["0.weight"], p["0.bias"], stride=2, padding=1)
    head = "3"
    if "1.weight" in p:  # norm="batch": Sequential(conv, bn, relu, flatten, linear)
        mean = h.mean(dim=(0, 2, 3), keepdim=True)
        var = (h - mean).square().mean(dim=(0, 2, 3), keepdim=True)
        h = (h - mean) / torch.sqrt(var + 1e-5)
        h = h * p["1.weight"].reshape(1, -1, 1, 1) + p["1.bias"].reshape(1, -1, 1, 1)
        head = "4"
    h = h.clamp_min(0).flatten(1)
    return h @ p[f"{head}.weight"].T + p[f"{head}.bias"]


def reference_loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy −log softmax(f(x))_y, by hand."""
    logits = reference_forward(p, x)
    return (logits.logsumexp(dim=1) - logits.gather(1, y[:, None]).squeeze(1)).mean()


def reference_accuracy(p: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    return (reference_forward(p, x).argmax(dim=1) == y).double().mean().item()


def leaves(params: dict) -> dict:
    """Detached copies of the parameters that require grad (fresh autograd leaves)."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def reference_grad(p: dict, x, y) -> dict:
    """∇_θ L(f(D; θ)) at fresh leaves (no graph back to ``p``)."""
    at = leaves(p)
    grads = torch.autograd.grad(reference_loss(at, x, y), list(at.values()))
    return dict(zip(at, grads, strict=True))


def reference_adapt(
    p: dict, x, y, *, steps: int = STEPS, lr: float = LR, create_graph: bool = False, adapted=None
) -> dict:
    """θ^(t) = θ^(t−1) − α ∇L(θ^(t−1)): T steps of full-batch GD on the support loss (eq. 2.1),
    with torch.autograd.grad, in float64. With ``create_graph`` the result stays differentiable
    with respect to ``p`` through every step (``p`` must then require grad). Only the parameters
    named in ``adapted`` move (None: all)."""
    current = {k: v.double() for k, v in p.items()}
    x = x.double()
    for _ in range(steps):
        if create_graph:
            loss = reference_loss(current, x, y)
            grads = dict(
                zip(current, torch.autograd.grad(loss, list(current.values()), create_graph=True), strict=True)
            )
        else:
            grads = reference_grad(current, x, y)
        current = {k: v - lr * grads[k] if adapted is None or k in adapted else v for k, v in current.items()}
    return current


def unflatten_like(vector: torch.Tensor, like: dict) -> dict:
    out, start = {}, 0
    for k, v in like.items():
        out[k] = vector[start : start + v.numel()].reshape(v.shape)
        start += v.numel()
    return out


def explicit_hessian(p: dict, x, y) -> torch.Tensor:
    """∇²_θ L(f(D; θ)) as a dense [d, d] matrix (eq. 2.3), float64."""
    p = {k: v.double() for k, v in p.items()}
    return torch.autograd.functional.hessian(lambda v: reference_loss(unflatten_like(v, p), x.double(), y), flatten(p))


# ----------------------------------------------------------------------------------------------
# ARPACK on Hessian-vector products: the oracle for the Lanczos probes (and benchmarks/)
# ----------------------------------------------------------------------------------------------


def autograd_hessian_operator(loss_fn, params: dict, *args):
    """∇²_θ loss_fn(θ, *args) at ``params`` as a scipy ``LinearOperator`` over the flattened
    parameters, in float64. Products are double-backward Hessian-vector products
    (``torch.autograd.grad`` of the gradient, Pearlmutter's reverse-over-reverse), independent of
    metaland's forward-over-reverse ``jvp(grad)``."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator

    theta = {k: v.detach().to(torch.float64).requires_grad_(True) for k, v in params.items()}
    args = tuple(a.to(torch.float64) if torch.is_floating_point(a) else a for a in args)
    grads = torch.autograd.grad(loss_fn(theta, *args), list(theta.values()), create_graph=True)
    flat_grad = torch.cat([g.reshape(-1) for g in grads])
    d = flat_grad.numel()

    def matvec(v):
        vector = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1), device=flat_grad.device)
        hv = torch.autograd.grad(flat_grad, list(theta.values()), grad_outputs=vector, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]).cpu().numpy()

    return LinearOperator((d, d), matvec=matvec, dtype=np.float64)


def eigsh_extremes(operator, *, seed: int = 0, tol: float = 1e-12) -> tuple[float, float]:
    """(λ_max, λ_min) of a symmetric ``LinearOperator`` by ARPACK (``scipy.sparse.linalg.eigsh``,
    implicitly restarted Lanczos), each end found on its own from a seeded random start vector.
    Dense ``eigvalsh`` below 3 dimensions, where ARPACK cannot run."""
    import numpy as np
    from scipy.sparse.linalg import eigsh

    d = operator.shape[0]
    if d < 3:
        values = np.linalg.eigvalsh(operator @ np.eye(d))
        return float(values[-1]), float(values[0])
    v0 = np.random.default_rng(seed).standard_normal(d)
    ends = [eigsh(operator, k=1, which=which, v0=v0, tol=tol, return_eigenvectors=False)[0] for which in ("LA", "SA")]
    return float(ends[0]), float(ends[1])


def in_float64(params: dict, batch: TaskBatch) -> tuple[dict, TaskBatch]:
    """Parameters and tasks cast to float64 (labels unchanged), for tight comparisons."""
    sx, sy, qx, qy = batch.tensors()
    return {k: v.double() for k, v in params.items()}, TaskBatch(sx.double(), sy, qx.double(), qy)


def hessian_quadratic_form(operator, vector: torch.Tensor) -> float:
    """vᵀ H v through the oracle's ``LinearOperator``."""
    return float(vector.double() @ torch.from_numpy(operator @ vector.double().numpy()))
