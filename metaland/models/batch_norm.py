"""BatchNorm with batch statistics whose second derivative is one hand-derived formula.

The second-order meta-gradient (seed 000 eq. 2.2) differentiates the inner loop's gradient, so every
BatchNorm of a support pass is differentiated twice. PyTorch's kernel has a fused backward, but
autograd takes that backward's own derivative (``batchnorm_double_backward``) as a composition of
about twenty elementwise passes and reductions written for every case. :func:`batch_norm` keeps
PyTorch's fused forward and backward kernels and replaces only that second derivative by the formula
below, in three channel reductions and two fused outputs: forward, backward and double backward of
a [5, 1024, 14, 14] activation take 12 ms instead of 48-56 ms on one CPU thread
(docs/performance.md). The derivatives are the same to float rounding: tests/test_models_batch_norm.py
checks the values and first derivatives against PyTorch's, and the second against finite differences
and against autograd through BatchNorm written in elementary operations, in float64.

Per channel, over its N values: μ, r = 1/√(σ² + ε) (σ² biased), x̂ = (x − μ)·r, y = γ·x̂ + β, and M(·)
the mean over the N values. The backward of an upstream gradient g is

    ∂β = Σ g,   ∂γ = Σ g·x̂,   ∂x = γr·P(g),   P(v) = v − M(v) − x̂·M(v·x̂).

Its derivative, given upstream gradients A of ∂x, a_γ of ∂γ and a_β of ∂β (m₁ = M(g·x̂), m₂ = M(A·x̂)):

    to g:  γr·P(A) + a_γ·x̂ + a_β                                   (P is symmetric)
    to γ:  r·Σ A·P(g)
    to x:  r·(G − M(G) − x̂·M(G·x̂)) − r²·x̂·γ·Σ A·P(g) / N,  G = −γr·(m₁·A + m₂·g) + a_γ·g,

the first term through x̂ (which depends on x through μ and r), the second through r alone.
Asking for that formula's own derivative (``create_graph`` through it: a third derivative) raises an
error rather than treating the formula as a constant: nothing in metaland differentiates the hybrid
engine's support passes three times (the meta-loss Hessian uses
``metaland.probes.batchnorm.elementary_batch_norm`` under ``vmap``).
"""

from __future__ import annotations

import torch


def batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Batch-statistics BatchNorm of x [N, C, ...] (biased variance, no running statistics), the
    same values as ``F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)`` with the
    fused second derivative of the module docstring."""
    return _BatchNorm.apply(x, weight, bias, eps)


def _channel_shape(x: torch.Tensor) -> list[int]:
    return [1, -1, *([1] * (x.dim() - 2))]


def _channel_sum(x: torch.Tensor) -> torch.Tensor:
    return x.sum([0, *range(2, x.dim())])


class _BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)[:3]
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, mean, invstd = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = _BatchNormBackward.apply(grad_y, x, weight, mean, invstd, ctx.eps)
        _, weight_needed, bias_needed, _ = ctx.needs_input_grad
        return grad_x, grad_weight if weight_needed else None, grad_bias if bias_needed else None, None


class _BatchNormBackward(torch.autograd.Function):
    """(g, x, γ, μ, r) -> (∂x, ∂γ, ∂β) by PyTorch's fused kernel; its own derivative by the formula above."""

    @staticmethod
    def forward(ctx, grad_y, x, weight, mean, invstd, eps):
        grad_x, sum_g_xhat, sum_g = torch.ops.aten.native_batch_norm_backward(
            grad_y, x, weight, None, None, mean, invstd, True, eps, [True, True, True]
        )
        ctx.save_for_backward(grad_y, x, weight, mean, invstd, sum_g_xhat, sum_g)
        return grad_x, sum_g_xhat, sum_g

    @staticmethod
    def backward(ctx, a_x, a_weight, a_bias):
        if torch.is_grad_enabled():  # create_graph: the caller would differentiate this formula again
            raise RuntimeError(
                "a third derivative through BatchNorm of the hybrid engine's grouped network is not supported: "
                "its second derivative is a fused formula (metaland.models.batch_norm). Fix: set train.engine to "
                "vmap or loop, whose BatchNorm can be rerouted by metaland.probes.batchnorm.elementary_batch_norm."
            )
        g, x, weight, mean, r, sum_g_xhat, sum_g = ctx.saved_tensors
        shape, n = _channel_shape(x), x.numel() // x.shape[1]
        gamma_r = r if weight is None else weight * r
        a_x = torch.zeros_like(x) if a_x is None else a_x
        a_weight = torch.zeros_like(r) if a_weight is None else a_weight
        a_bias = torch.zeros_like(r) if a_bias is None else a_bias
        mean_g, m1 = sum_g / n, sum_g_xhat / n  # M(g), M(g·x̂)
        sum_a = _channel_sum(a_x)
        mean_a = sum_a / n
        m2 = (_channel_sum(a_x * x) - mean * sum_a) * r / n  # M(A·x̂), x̂ = (x − μ)·r
        a_dot_pg = _channel_sum(a_x * g) - n * (mean_a * mean_g + m2 * m1)  # Σ A·P(g)
        # to g: γr·A + (a_γ − γr·m₂)·x̂ + a_β − γr·M(A), x̂ written out in x
        xhat_coefficient = a_weight - gamma_r * m2
        grad_g = torch.addcmul(
            (a_bias - gamma_r * mean_a - xhat_coefficient * r * mean).reshape(shape), a_x, gamma_r.reshape(shape)
        ).addcmul_(x, (xhat_coefficient * r).reshape(shape))
        # to x: r·(G − M(G) − x̂·M(G·x̂)) − r²·x̂·γ·Σ A·P(g)/N with G = d_a·A + d_g·g
        d_a, d_g = -gamma_r * m1, xhat_coefficient
        mean_big_g = d_a * mean_a + d_g * mean_g
        mean_big_g_xhat = -2 * gamma_r * m1 * m2 + a_weight * m1
        gamma_sum = a_dot_pg if weight is None else weight * a_dot_pg
        x_coefficient = (-r * mean_big_g_xhat - gamma_sum * r * r / n) * r
        grad_x = torch.addcmul((-r * mean_big_g - x_coefficient * mean).reshape(shape), a_x, (r * d_a).reshape(shape))
        grad_x.addcmul_(g, (r * d_g).reshape(shape)).addcmul_(x, x_coefficient.reshape(shape))
        grad_weight = None if weight is None else r * a_dot_pg
        return grad_g, grad_x, grad_weight, None, None, None
