"""BatchNorm with the hand-derived second derivative (``metaland.models.batch_norm``) against
PyTorch's own BatchNorm and against finite differences, in float64.

The oracle for the values and the first derivative is ``F.batch_norm``; for the second derivative,
``torch.autograd.gradgradcheck``'s finite differences of the first, and autograd through BatchNorm
written in elementary operations (``metaland.probes.batchnorm``) on the same second-order quantities.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from metaland.models.batch_norm import batch_norm
from metaland.probes.batchnorm import batch_norm_by_elementary_ops

AFFINE = [(True, True), (True, False), (False, True), (False, False)]


def inputs(weight: bool, bias: bool, shape=(3, 4, 5, 5), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (2 + torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()
    w = (torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5).requires_grad_() if weight else None
    b = torch.randn(shape[1], generator=g, dtype=torch.float64).requires_grad_() if bias else None
    return x, w, b


def differentiable(x, w, b):
    return [t for t in (x, w, b) if t is not None]


@pytest.mark.parametrize("weight,bias", AFFINE)
def test_values_and_gradients_are_pytorch_s(weight, bias):
    x, w, b = inputs(weight, bias)
    ours, theirs = batch_norm(x, w, b, 1e-5), F.batch_norm(x, None, None, w, b, training=True, eps=1e-5)
    assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(ours)
    assert_close(
        torch.autograd.grad(ours, differentiable(x, w, b), upstream),
        torch.autograd.grad(theirs, differentiable(x, w, b), upstream),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("weight,bias", AFFINE)
@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (6, 2, 3), (4, 3)])
def test_second_derivative_matches_finite_differences(weight, bias, shape):
    """Eq. of the module docstring, for 2-, 3- and 4-D inputs, with and without γ and β."""
    x, w, b = inputs(weight, bias, shape)

    def normalised(*tensors):
        it = iter(tensors)
        return batch_norm(next(it), next(it) if weight else None, next(it) if bias else None, 1e-5)

    assert torch.autograd.gradcheck(normalised, tuple(differentiable(x, w, b)))
    assert torch.autograd.gradgradcheck(normalised, tuple(differentiable(x, w, b)))


@pytest.mark.parametrize("weight,bias", AFFINE)
def test_second_order_quantities_match_autograd_through_elementary_operations(weight, bias):
    """The case of the meta-gradient: the inner gradient of a loss through BatchNorm, taken with
    ``create_graph``, then differentiated again; every input gets the second derivative that autograd
    takes through mean, variance and ``rsqrt``."""
    x, w, b = inputs(weight, bias, (5, 6, 4, 4), seed=1)
    mix = torch.linspace(-1, 1, x.numel(), dtype=torch.float64).reshape(x.shape)

    def second_order(normalise):
        y = normalise(x, w, b)
        inner = torch.autograd.grad((y.sin() * mix).sum(), differentiable(x, w, b), create_graph=True)
        outer = sum((g.square() * (1 + k)).sum() for k, g in enumerate(inner))
        return torch.autograd.grad(outer, differentiable(x, w, b))

    ours = second_order(lambda x, w, b: batch_norm(x, w, b, 1e-5))
    theirs = second_order(lambda x, w, b: batch_norm_by_elementary_ops(x, w, b, 1e-5))
    assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_a_third_derivative_is_refused():
    """Nothing differentiates the grouped support passes three times; asking for it must fail loudly
    rather than drop the terms that pass through the fused formula (``once_differentiable`` would
    drop them silently when the incoming gradients do not require grad)."""
    x, w, b = inputs(True, True)
    y = batch_norm(x, w, b, 1e-5)
    (gx,) = torch.autograd.grad(y.sin().sum(), x, create_graph=True)
    torch.autograd.grad(gx.square().sum(), x)  # the second derivative alone is fine
    (gx,) = torch.autograd.grad(batch_norm(x, w, b, 1e-5).sin().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"third derivative through BatchNorm .* Fix: set train\.engine to vmap"):
        torch.autograd.grad(gx.square().sum(), x, create_graph=True)


def test_float32_second_derivative_is_as_accurate_as_pytorch_s_for_a_large_mean():
    """After a convolution's bias the activations' mean can be large against their spread, where
    uncentred sums lose float32 digits: at mean 30 and spread 0.5 the second-order quantities stay
    within 5e-5 (relative to the largest entry) of float64 (measured: 4.7e-6 and 5.7e-6, PyTorch's own
    double backward 4.6e-6 for both)."""
    g = torch.Generator().manual_seed(0)
    x = 30 + 0.5 * torch.randn(5, 16, 14, 14, generator=g, dtype=torch.float64)
    w = torch.rand(16, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(16, generator=g, dtype=torch.float64)
    mix = torch.randn(x.shape, generator=g, dtype=torch.float64)

    def second_order(dtype):
        inputs = [t.to(dtype).requires_grad_() for t in (x, w, b)]
        y = batch_norm(*inputs, 1e-5)
        inner = torch.autograd.grad((y.sin() * mix.to(dtype)).sum(), inputs, create_graph=True)
        return torch.autograd.grad(sum((d.square() * (1 + k)).sum() for k, d in enumerate(inner)), inputs[:2])

    for single, exact in zip(second_order(torch.float32), second_order(torch.float64), strict=True):
        assert (single.double() - exact).abs().max() / exact.abs().max() < 5e-5
