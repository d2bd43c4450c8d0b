"""ResNet-12 of Oreshkin et al. (2018, TADAM), the backbone of seed 004's Table 4.

Seed 004 §6 ("Experiment setup"): "ResNet-12 consisting of four blocks of which the first block starts
with 64 channels from Oreshkin et al. (2018)"; App. C gives only its learning rates. TADAM's ResNet-12
has widths 64-128-256-512. Each block is three 3×3 convolutions (no bias) each followed by BatchNorm,
with a leaky ReLU after the first two; a 1×1 convolution (no bias) → BatchNorm shortcut is added to the
third BatchNorm's output, then a leaky ReLU and a 2×2 max-pool halve the resolution. Global average
pooling → flatten → linear head with one logit per class, so the feature has ``widths[-1]`` = 512 entries.

Choices the seed leaves open (named options, documented defaults): the leaky-ReLU slope (0.1,
TADAM's code), the global average pooling (TADAM's), and no DropBlock (TADAM has none; MetaOptNet's
later ResNet-12 adds it, the seed does not mention it).

As everywhere in metaland, BatchNorm uses the statistics of the batch it sees (the MAML
convention) and the model has no buffers, so it can be evaluated functionally. The model is an
``nn.Sequential`` whose last module is the head (``model[:-1]`` is the feature extractor).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from pydantic import Field, PositiveInt
from torch import nn

from metaland.models import MODELS, ModelSpec
from metaland.models.init import INIT_DESCRIPTION, Init, apply_init
from metaland.models.resnet import batch_norm
from metaland.schema import Params


class ResNet12Params(Params):
    widths: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt] = Field(
        (64, 128, 256, 512),
        description="Channels of the four residual blocks (seed 004 §6: 'four blocks of which the first block "
        "starts with 64 channels', Oreshkin et al. 2018; TADAM's 64-128-256-512).",
    )
    leaky_slope: float = Field(
        0.1,
        ge=0.0,
        description="Negative slope of the leaky ReLUs (seed 004 is silent; TADAM's code: 0.1). 0 gives a ReLU.",
    )
    init: Init = Field("pytorch", description=INIT_DESCRIPTION)


class ResidualBlock(nn.Module):
    """TADAM's block: (3×3 conv → BN → leaky ReLU) ×2 → 3×3 conv → BN, plus the 1×1 conv → BN shortcut,
    then leaky ReLU and a 2×2 max-pool (no DropBlock: seed 004 does not mention it)."""

    def __init__(self, in_channels: int, out_channels: int, slope: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = batch_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = batch_norm(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn3 = batch_norm(out_channels)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), batch_norm(out_channels))
        self.activation = nn.LeakyReLU(slope)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.bn1(self.conv1(x)))
        out = self.activation(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.pool(self.activation(out + self.shortcut(x)))


def build(options: ResNet12Params, channels: int, image_size: int, ways: int) -> nn.Module:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = channels
    for index, width in enumerate(options.widths):
        layers[f"layer{index + 1}"] = ResidualBlock(in_channels, width, options.leaky_slope)
        in_channels = width
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(in_channels, ways)
    return apply_init(nn.Sequential(layers), options.init)


MODELS.register(
    "resnet12",
    ModelSpec(
        "resnet12",
        "ResNet-12 of Oreshkin et al. (TADAM), batch-statistics BatchNorm (seed 004 Table 4)",
        ResNet12Params,
        build,
        label=lambda options: "ResNet12",
    ),
)
