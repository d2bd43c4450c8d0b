"""Weight initialisation schemes shared by the model families (spec seed 001 §3.2).

``pytorch`` keeps each layer's own default initialisation (what every model had before seed 001).
``chen`` is that of Chen et al.'s CloserLookFewShot backbones (``backbone.init_layer``), which
seed 001's repository uses for Conv4/Conv6/ResNet10/ResNet18: every convolution weight
~ N(0, sqrt(2 / (k·k·out_channels))) (He et al.'s fan-out rule), BatchNorm γ = 1 and β = 0; the
classifier head keeps PyTorch's default weight and gets a zero bias (seed 001 §1.2-1.3 [R]:
``Linear_fw`` / the baseline classifier set ``bias = 0``). Convolution biases, where a layer has
one, keep PyTorch's default (``init_layer`` touches only the weight).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

Init = Literal["pytorch", "chen"]

INIT_DESCRIPTION = (
    "Weight initialisation: pytorch = each layer's default (seeds 000-004 are silent); chen = Chen et al.'s "
    "CloserLookFewShot init (seed 001 §3.2): conv weights ~ N(0, sqrt(2/(k·k·out))), BN γ=1, β=0, head bias 0."
)


def apply_init(module: nn.Module, init: Init) -> nn.Module:
    """Re-initialise ``module`` in place with scheme ``init`` and return it (``pytorch``: unchanged).

    Draws from the global RNG, which :func:`metaland.models.build_model` seeds per run."""
    if init == "pytorch":
        return module
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d):
                k_h, k_w = layer.kernel_size
                layer.weight.normal_(0.0, math.sqrt(2.0 / (k_h * k_w * layer.out_channels)))
            elif isinstance(layer, nn.BatchNorm2d):
                layer.weight.fill_(1.0)
                layer.bias.zero_()
        linears = [layer for layer in module.modules() if isinstance(layer, nn.Linear)]
        if linears and linears[-1].bias is not None:
            linears[-1].bias.zero_()
    return module
