"""The functional meta-optimizer against torch.optim.Adam (seed 000 §1.1 step 3, §2.7.3).

``adam_step`` claims to mirror ``torch.optim.Adam`` (single-tensor path, no weight decay, no
AMSGrad) operation for operation. The reference here is ``torch.optim.Adam(foreach=False)``
itself, fed the same random gradients; parameters and both moments must agree bit for bit.
"""

from __future__ import annotations

import math

import pytest
import torch

from metaland.meta.adam import AdamState, adam_init, adam_step

SHAPES = {"conv.weight": (4, 1, 3, 3), "conv.bias": (4,), "head.weight": (3, 16), "head.bias": (3,)}


def random_dict(g: torch.Generator, dtype: torch.dtype, scale: float = 1.0) -> dict:
    return {k: scale * torch.randn(s, generator=g, dtype=dtype) for k, s in SHAPES.items()}


def torch_adam(params: dict, **hyper):
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    return leaves, torch.optim.Adam(list(leaves.values()), foreach=False, fused=False, **hyper)


def run_both(dtype: torch.dtype, steps: int, *, lr: float, betas: tuple[float, float], eps: float, seed: int = 0):
    """Yield (step, functional params, state, torch leaves, torch optimizer) after each step."""
    g = torch.Generator().manual_seed(seed)
    params = random_dict(g, dtype)
    leaves, optimizer = torch_adam(params, lr=lr, betas=betas, eps=eps)
    state = adam_init(params)
    for step in range(1, steps + 1):
        # Gradients of varied scale, with some exact zeros, as in a real meta-gradient.
        grads = random_dict(g, dtype, scale=10.0 ** torch.randint(-4, 2, (), generator=g).item())
        grads["conv.bias"][0] = 0.0
        for k, leaf in leaves.items():
            leaf.grad = grads[k].clone()
        optimizer.step()
        params, state = adam_step(params, grads, state, lr=lr, betas=betas, eps=eps)
        yield step, params, state, leaves, optimizer


@pytest.mark.parametrize(
    "hyper",
    [
        {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8},  # the seed's meta-optimizer (§2.7.3)
        {"lr": 0.05, "betas": (0.5, 0.95), "eps": 1e-6},
    ],
)
def test_adam_step_bitwise_equals_torch_adam_float32(hyper):
    """θ^{s+1} = Adam(θ^s, meta-gradient): 40 float32 steps equal torch.optim.Adam bit for bit."""
    for step, params, state, leaves, optimizer in run_both(torch.float32, 40, **hyper):
        assert state.step == step
        for k, leaf in leaves.items():
            reference = optimizer.state[leaf]
            assert torch.equal(params[k], leaf.detach()), f"param {k} differs at step {step}"
            assert torch.equal(state.exp_avg[k], reference["exp_avg"]), f"exp_avg {k}, step {step}"
            assert torch.equal(state.exp_avg_sq[k], reference["exp_avg_sq"]), f"exp_avg_sq {k}"


def test_adam_step_moves_parameters_and_keeps_inputs():
    """adam_step is pure: it returns new tensors and leaves params, grads and state untouched."""
    g = torch.Generator().manual_seed(1)
    params, grads = random_dict(g, torch.float32), random_dict(g, torch.float32)
    state = adam_init(params)
    copies = [{k: v.clone() for k, v in d.items()} for d in (params, grads)]
    new_params, new_state = adam_step(params, grads, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    for before, after in zip(copies, (params, grads), strict=True):
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert state.step == 0 and all(v.count_nonzero() == 0 for v in state.exp_avg.values())
    # First Adam step moves each coordinate with a non-zero gradient by ≈ lr (m̂/√v̂ = ±1).
    delta = new_params["head.weight"] - params["head.weight"]
    torch.testing.assert_close(delta.abs(), torch.full_like(delta, 1e-3), rtol=1e-4, atol=0)
    assert new_state.step == 1


def test_adam_step_bitwise_equals_torch_adam_float64_at_late_step():
    """Same claim in float64 at step 2582, where √(1 − β2^t) by math.sqrt and by ** 0.5 differ.

    torch.optim.Adam's single-tensor path computes ``bias_correction2 ** 0.5``; a float64 run
    (e.g. a float64 resume or test) only matches bit for bit if adam_step does the same.
    """
    g = torch.Generator().manual_seed(2)
    # Parameters small next to the update, so that a one-ulp change of the update shows.
    params, grads = random_dict(g, torch.float64, scale=1e-9), random_dict(g, torch.float64)
    exp_avg = random_dict(g, torch.float64, scale=1e-2)
    exp_avg_sq = {k: v.square() for k, v in random_dict(g, torch.float64, scale=1e-2).items()}
    step = 2581  # the next step, 2582, is one where the two square roots differ by one ulp
    assert math.sqrt(1 - 0.999 ** (step + 1)) != (1 - 0.999 ** (step + 1)) ** 0.5
    leaves, optimizer = torch_adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    for k, leaf in leaves.items():
        optimizer.state[leaf] = {
            "step": torch.tensor(float(step)),
            "exp_avg": exp_avg[k].clone(),
            "exp_avg_sq": exp_avg_sq[k].clone(),
        }
        leaf.grad = grads[k].clone()
    optimizer.step()
    state = AdamState(step, exp_avg, exp_avg_sq)
    new_params, _ = adam_step(params, grads, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)

    differing = {k: (new_params[k] != leaf.detach()).sum().item() for k, leaf in leaves.items()}
    assert not any(differing.values()), f"elements differing from torch.optim.Adam: {differing}"
    # Whatever the rounding, the two agree to the last couple of ulps.
    for k, leaf in leaves.items():
        torch.testing.assert_close(new_params[k], leaf.detach(), rtol=4e-16, atol=0)
