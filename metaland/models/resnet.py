"""ResNet10 / ResNet18 of Chen et al.'s CloserLookFewShot (``backbone.ResNet``; seed 001 §3.2).

Stem: 7×7 conv (stride 2, padding 3, no bias) → BatchNorm → ReLU → 3×3 max-pool (stride 2,
padding 1). Then four stages of ``SimpleBlock``s with ``width``·(1, 2, 4, 8) channels, one block
per stage for ResNet10 and two for ResNet18; the first block of stages 2-4 halves the resolution.
Global average pooling (adaptive: Chen's ``AvgPool2d(7)`` at 224 px, and any input down to 28 px)
→ flatten → linear head with one logit per class, so the feature has 8·``width`` = 512 entries.

As everywhere in metaland, BatchNorm uses the statistics of the batch it sees, in training and at
test (seed 001 §1.3 [R]: ``BatchNorm2d_fw`` with ``training=True``), and the model has no buffers,
so it can be evaluated functionally. The model is an ``nn.Sequential`` whose last module is the
head (``model[:-1]`` is the feature extractor). Module names follow torchvision's ResNet
(``conv1``, ``bn1``, ``layer1`` .. ``layer4``, ``fc``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from metaland.models import MODELS, ModelSpec
from metaland.models.init import INIT_DESCRIPTION, Init, apply_init
from metaland.schema import Params

BLOCKS_PER_STAGE = {10: 1, 18: 2}
"""Chen et al.: ResNet10 = SimpleBlock ×[1, 1, 1, 1]; ResNet18 = SimpleBlock ×[2, 2, 2, 2]."""


class ResNetParams(Params):
    depth: Literal[10, 18] = Field(
        10, description="10: one SimpleBlock per stage; 18: two (seed 001 §3.2: ResNet10 and ResNet18)."
    )
    width: int = Field(
        64, ge=1, le=512, description="Channels of stage 1; stages 2-4 have 2, 4, 8 times as many (seed 001 §3.2: 64)."
    )
    init: Init = Field("pytorch", description=INIT_DESCRIPTION)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=False)


class SimpleBlock(nn.Module):
    """3×3 conv → BN → ReLU → 3×3 conv → BN, plus the shortcut, then ReLU (Chen et al.'s ``SimpleBlock``).

    The shortcut is a 1×1 conv (no bias) → BN when the channels or the resolution change, else the input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = batch_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = batch_norm(out_channels)
        self.relu = nn.ReLU()
        projects = in_channels != out_channels or stride != 1
        self.shortcut = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), batch_norm(out_channels))
            if projects
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.shortcut(x))


def build(options: ResNetParams, channels: int, image_size: int, ways: int) -> nn.Module:
    width = options.width
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(channels, width, 7, stride=2, padding=3, bias=False),
        bn1=batch_norm(width),
        relu=nn.ReLU(),
        maxpool=nn.MaxPool2d(3, stride=2, padding=1),
    )
    in_channels = width
    for stage in range(4):
        out_channels = width * 2**stage
        blocks = []
        for block in range(BLOCKS_PER_STAGE[options.depth]):
            stride = 2 if stage > 0 and block == 0 else 1
            blocks.append(SimpleBlock(in_channels, out_channels, stride))
            in_channels = out_channels
        layers[f"layer{stage + 1}"] = nn.Sequential(*blocks)
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(in_channels, ways)
    return apply_init(nn.Sequential(layers), options.init)


MODELS.register(
    "resnet",
    ModelSpec(
        "resnet",
        "ResNet10/18 of Chen et al. (CloserLookFewShot), batch-statistics BatchNorm",
        ResNetParams,
        build,
        label=lambda options: f"ResNet{options.depth}",
    ),
)
