"""Adam on parameter dicts, as a pure function (the meta-optimizer of seed 000 §2.7.3).

The update mirrors ``torch.optim.Adam`` (no weight decay, no AMSGrad) operation for operation,
so it gives the same numbers (tested); being a function of (params, grads, state) it saves to
and resumes from safetensors without any pickled optimizer state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metaland.models import ParamDict


@dataclass(frozen=True)
class AdamState:
    step: int
    exp_avg: ParamDict
    exp_avg_sq: ParamDict


def adam_init(params: ParamDict) -> AdamState:
    zeros = {k: torch.zeros_like(v) for k, v in params.items()}
    return AdamState(0, zeros, {k: torch.zeros_like(v) for k, v in params.items()})


@torch.no_grad()
def adam_step(
    params: ParamDict,
    grads: ParamDict,
    state: AdamState,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
) -> tuple[ParamDict, AdamState]:
    """One Adam step; returns new params and state (inputs are not modified)."""
    beta1, beta2 = betas
    step = state.step + 1
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5  # as torch.optim.Adam (not math.sqrt: 1 ulp)
    step_size = lr / bias_correction1
    new_params, exp_avg, exp_avg_sq = {}, {}, {}
    for name, p in params.items():
        g = grads[name]
        m = state.exp_avg[name].lerp(g, 1 - beta1)
        v = state.exp_avg_sq[name].mul(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
        new_params[name] = p.addcdiv(m, denom, value=-step_size)
        exp_avg[name], exp_avg_sq[name] = m, v
    return new_params, AdamState(step, exp_avg, exp_avg_sq)
