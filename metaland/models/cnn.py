"""The CNN of seed 003 §5.2 / §A.1.2 with a depth knob: SCNN (2 conv layers) and its variants.

``blocks`` modules ``conv1 .. convL``, each a 3×3 convolution (``filters``, stride 2, padding 1),
BatchNorm (affine, batch statistics) and ReLU, then the mean over the spatial positions and a
linear head ``fc``. The mean keeps the head's input at ``filters`` for any depth, as the paper's
parameter counts require: 112,586 (4 layers) and 38,474 (SCNN, 2 layers) for Omniglot 10-way
with 64 filters (A.1.2). Modules are named so that layer-wise patterns read as the paper's layers
(``conv4.*``, ``fc.*``; §3.2, Fig. 2).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from pydantic import Field
from torch import nn

from metaland.models import MODELS, ModelSpec
from metaland.schema import Params


class CNNParams(Params):
    blocks: int = Field(2, ge=1, le=6, description="Conv layers (seed 003: SCNN = 2; Table A1 sweeps 1-4).")
    filters: int = Field(64, ge=1, le=1024, description="Filters per conv (seed 003 A.1.2: 64 Omniglot).")


class SpatialMean(nn.Module):
    """[N, C, H, W] -> [N, C]: the mean over positions (the head's input is ``filters`` wide)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


def build(options: CNNParams, channels: int, image_size: int, ways: int) -> nn.Module:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = channels
    for i in range(1, options.blocks + 1):
        layers[f"conv{i}"] = nn.Sequential(
            nn.Conv2d(in_channels, options.filters, 3, stride=2, padding=1),
            nn.BatchNorm2d(options.filters, track_running_stats=False),
            nn.ReLU(),
        )
        in_channels = options.filters
    layers["pool"] = SpatialMean()
    layers["fc"] = nn.Linear(options.filters, ways)
    return nn.Sequential(layers)


MODELS.register(
    "cnn",
    ModelSpec(
        "cnn",
        "Seed 003's CNN: conv1..convL (3×3, BN, ReLU), spatial mean, linear head fc",
        CNNParams,
        build,
        label=lambda options: f"CNN-{options.blocks}",
    ),
)
