"""Linear models of seed 003 §3.2 / §A.1.1: logistic regression (LR) and LinNet.

``linear`` flattens the input (the 100-d synthetic points; 28×28 Omniglot images to 784) and
applies ``hidden`` linear layers with no nonlinearity, then a linear head: ``hidden = []`` is
logistic regression, ``[64, 64, 64]`` the synthetic LinNet ("3 hidden layers of 64 units",
A.1.1) and ``[256, 128, 64, 64]`` the Omniglot LinNet. A linear network collapses into one
matrix, so it models no more than LR; any gain is better adaptation (§5.1).

``output: sigmoid`` is the binary LR of §3.2 (100 → 1 + sigmoid, binary cross-entropy): the head
has one logit z and the model returns the logits (0, z), whose softmax is (1 − σ(z), σ(z)), so
the project's cross-entropy on them is exactly BCE on σ(z). ``output: softmax`` is the
multinomial LR (784 → ways). Biases are off by default: the paper's meta-optimizer sizes
(10,001 for synthetic KLin, ≈614k for Omniglot KLin) count the head weight only (A.1.1).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from metaland.errors import ConfigError
from metaland.models import MODELS, ModelSpec
from metaland.schema import Params


class LinearParams(Params):
    hidden: list[int] = Field(
        default_factory=list,
        description="Widths of the linear hidden layers, no nonlinearity (seed 003 A.1.1: [] = LR; "
        "[64, 64, 64] synthetic LinNet; [256, 128, 64, 64] Omniglot LinNet).",
    )
    bias: bool = Field(False, description="Biases in every layer (seed 003 silent; its KLin sizes imply none).")
    output: Literal["softmax", "sigmoid"] = Field(
        "softmax",
        description="softmax: one logit per class (multinomial LR); sigmoid: one logit z, returned as (0, z) so "
        "cross-entropy equals binary cross-entropy on σ(z) (binary LR of seed 003 §3.2; needs ways = 2).",
    )


class ZeroLogit(nn.Module):
    """[N, 1] logits z -> [N, 2] logits (0, z): softmax gives (1 − σ(z), σ(z))."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(z), z], dim=-1)


def build(options: LinearParams, channels: int, image_size: int, ways: int) -> nn.Module:
    if options.output == "sigmoid" and ways != 2:
        raise ConfigError(
            f"model output: sigmoid is binary (one logit, seed 003 §3.2), but the run's tasks are {ways}-way. "
            "Fix: use output: softmax (multinomial LR) or ways: 2."
        )
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = channels * image_size * image_size
    for i, out in enumerate(options.hidden, start=1):
        layers[f"hidden{i}"] = nn.Linear(width, out, bias=options.bias)
        width = out
    layers["fc"] = nn.Linear(width, 1 if options.output == "sigmoid" else ways, bias=options.bias)
    if options.output == "sigmoid":
        layers["zero_logit"] = ZeroLogit()
    return nn.Sequential(layers)


MODELS.register(
    "linear",
    ModelSpec(
        "linear",
        "Logistic regression / LinNet (linear hidden layers) of seed 003 §3.2",
        LinearParams,
        build,
        label=lambda options: "-".join(["LinNet", *map(str, options.hidden)]) if options.hidden else "LR",
    ),
)
