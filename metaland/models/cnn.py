"""The CNN of seed 003 §5.2 / §A.1.2 with a depth knob: SCNN (2 conv layers) and its variants.

``blocks`` modules ``conv1 .. convL``, each a 3×3 convolution (``filters``, padding 1), BatchNorm (affine,
batch statistics) and ReLU, downsampling by stride 2 (``downsample: stride``) or by a 2×2 max-pool after
the ReLU (``maxpool``, stride-1 convolutions); then a head ``fc`` on one of two inputs (``head``):

- ``mean``: the mean over the spatial positions, so the head's input is ``filters`` wide at any depth, as
  the paper's Omniglot and CIFAR-FS counts require: 112,586 (4 layers) and 38,474 (SCNN) for Omniglot
  10-way with 64 filters, 29,226 and 10,602 for CIFAR-FS 10-way with 32 filters (A.1.2);
- ``flatten``: the feature map average-pooled to ``grid`` × ``grid`` positions (adaptive average
  pooling; an identity where the map is that size already) and flattened, so the head's input is
  filters · grid² at any depth: seed 003's miniImageNet net "replicates Finn et al." (32 filters, max-pool,
  84 px: 84 → 42 → 21 → 10 → 5 after four blocks, a 32·5·5 = 800-input head), and its counts 36,906 (4
  layers) and 18,282 (2 layers) at 10-way both need that 800-input head. How the 2-layer net gets from
  21 × 21 to 5 × 5 is not stated (spec B.5.3); the adaptive average pool is metaland's choice.

Modules are named so that layer-wise patterns read as the paper's layers (``conv4.*``, ``fc.*``; §3.2, Fig. 2).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from metaland.models import MODELS, ModelSpec
from metaland.schema import Params


class CNNParams(Params):
    blocks: int = Field(2, ge=1, le=6, description="Conv layers (seed 003: SCNN = 2; Table A1 sweeps 1-4).")
    filters: int = Field(
        64, ge=1, le=1024, description="Filters per conv (seed 003 A.1.2: 64 Omniglot, 32 CIFAR-FS and miniImageNet)."
    )
    downsample: Literal["stride", "maxpool"] = Field(
        "stride",
        description="stride: 3×3 conv with stride 2 (Finn et al.'s Omniglot net); maxpool: stride-1 conv + 2×2 "
        "max-pool after the ReLU (Finn et al.'s miniImageNet net, seed 003 A.1.2).",
    )
    head: Literal["mean", "flatten"] = Field(
        "mean",
        description="The head's input: mean = the spatial mean (filters wide; seed 003 Omniglot, CIFAR-FS); flatten = "
        "the map average-pooled to grid × grid and flattened (filters · grid² wide; seed 003 miniImageNet: 800).",
    )
    grid: int = Field(
        5,
        ge=1,
        le=64,
        description="Side of the pooled map a flatten head reads (seed 003 miniImageNet: 5 → 800 inputs).",
    )


class SpatialMean(nn.Module):
    """[N, C, H, W] -> [N, C]: the mean over positions (the head's input is ``filters`` wide)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


def build(options: CNNParams, channels: int, image_size: int, ways: int) -> nn.Module:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels, side = channels, image_size
    stride = 2 if options.downsample == "stride" else 1
    for i in range(1, options.blocks + 1):
        block = [
            nn.Conv2d(in_channels, options.filters, 3, stride=stride, padding=1),
            nn.BatchNorm2d(options.filters, track_running_stats=False),
            nn.ReLU(),
        ]
        if options.downsample == "maxpool":
            block.append(nn.MaxPool2d(2))
        layers[f"conv{i}"] = nn.Sequential(*block)
        in_channels, side = options.filters, (side + 1) // 2 if stride == 2 else side // 2
    if side < 1:
        raise ValueError(f"image_size {image_size} is too small for {options.blocks} downsampling layers")
    if options.head == "mean":
        layers["pool"] = SpatialMean()
        features = options.filters
    else:
        layers["pool"] = nn.Sequential(nn.AdaptiveAvgPool2d(options.grid), nn.Flatten())
        features = options.filters * options.grid**2
    layers["fc"] = nn.Linear(features, ways)
    return nn.Sequential(layers)


MODELS.register(
    "cnn",
    ModelSpec(
        "cnn",
        "Seed 003's CNN: conv1..convL (3×3, BN, ReLU, stride 2 or max-pool), spatial mean or pooled flatten, head fc",
        CNNParams,
        build,
        label=lambda options: f"CNN-{options.blocks}",
    ),
)
