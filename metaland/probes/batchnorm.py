"""BatchNorm with batch statistics from elementary operations, differentiable to every order.

PyTorch's fused batch-norm kernel has hand-written first and second derivatives and nothing beyond:
plain autograd refuses a third ("batch_norm does not support 3rd+ order derivatives"), and
``torch.func`` composes its transforms through it without that check and returns wrong third
derivatives (tests/test_math_curvature.py measures 12% error in a Hessian-vector product of a
meta-loss on the tiny BatchNorm ConvNet, and zero error without BatchNorm). A Hessian of a loss that
already differentiates through an inner loop (the meta-loss of seed 000 eq. 2.2) needs that third
order, so :func:`elementary_batch_norm` reroutes every batch-statistics ``F.batch_norm`` call, for
as long as it is active, to the same formula written with mean, variance and ``rsqrt``:

    y = (x − E[x]) / √(Var[x] + eps) · γ + β,  E and the biased Var over every axis but the channel's.

The values equal the fused kernel's up to float rounding; it is slower, so it is used only where the
order demands it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def batch_norm_by_elementary_ops(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """Batch-statistics BatchNorm of x [N, C, ...] over every axis but C (biased variance, as in training)."""
    axes = [0, *range(2, x.dim())]
    shape = [1, -1, *([1] * (x.dim() - 2))]
    mean = x.mean(dim=axes, keepdim=True)
    variance = (x - mean).square().mean(dim=axes, keepdim=True)
    y = (x - mean) * torch.rsqrt(variance + eps)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


class _ElementaryBatchNorm(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            bound = _batch_norm_arguments(*args, **kwargs)
            if bound["running_mean"] is None and bound["running_var"] is None:
                return batch_norm_by_elementary_ops(bound["input"], bound["weight"], bound["bias"], bound["eps"])
        return func(*args, **kwargs)


def _batch_norm_arguments(
    input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
) -> dict:
    return {
        "input": input,
        "running_mean": running_mean,
        "running_var": running_var,
        "weight": weight,
        "bias": bias,
        "eps": eps,
    }


@contextlib.contextmanager
def elementary_batch_norm() -> Iterator[None]:
    """While active, batch-statistics BatchNorm (no running statistics: every metaland model) is
    computed by :func:`batch_norm_by_elementary_ops`; BatchNorm with running statistics is left alone."""
    with _ElementaryBatchNorm():
        yield
