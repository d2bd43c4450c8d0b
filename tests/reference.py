"""Brute-force references for the math tests (seed 000 §1-§2), shared by ``test_math_inner`` and
``test_math_probes``.

These are written by hand, without metaland's functional code (``metaland.meta``,
``metaland.probes``), and are used to check it: a hand-written forward pass of the one-block
ConvNet (conv → batch-statistics BatchNorm → ReLU → linear), a hand-written cross-entropy, plain
``torch.autograd.grad`` inner loops, and explicit Hessian matrices with ``eigvalsh``. Only the
model's construction and initial parameters (and ``flatten``) come from metaland.
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


def dominant_eigenvalue(matrix: torch.Tensor) -> float:
    """The signed eigenvalue of largest magnitude (what power iteration converges to)."""
    eigenvalues = torch.linalg.eigvalsh(matrix)
    return eigenvalues[eigenvalues.abs().argmax()].item()


def adapted_dominant_eigenvalues(
    params: dict, batch: TaskBatch, n_tasks: int, *, steps: int = STEPS, lr: float = LR
) -> torch.Tensor:
    """[n_tasks] float64: per task i, the dominant eigenvalue of the explicit support-loss Hessian
    ∇²_θ L(f(D_i; θ̃_i)) at the task's adapted parameters θ̃_i (eqs. 2.1, 2.3-2.4)."""
    values = []
    for i in range(n_tasks):
        x, y = batch.support_x[i], batch.support_y[i]
        values.append(dominant_eigenvalue(explicit_hessian(reference_adapt(params, x, y, steps=steps, lr=lr), x, y)))
    return torch.tensor(values, dtype=torch.float64)
