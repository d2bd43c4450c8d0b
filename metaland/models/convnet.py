"""The ConvNet family of Vinyals et al. (2016) / Finn et al. (2017) (seed 000 §2.7.1).

``blocks`` modules of [3×3 conv (``filters``) → BatchNorm → ReLU → downsample], then a linear
head with one logit per class. Omniglot uses strided convolutions instead of max-pooling
(stride 2, padding 1, "SAME" as in cbfinn/maml): 28 → 14 → 7 → 4 → 2, so Conv4-64 has a 256-d
feature and 113,221 parameters at 5-way. MiniImagenet uses stride-1 convolutions and 2×2
max-pooling (84 → 42 → 21 → 10 → 5).

BatchNorm always normalises with the statistics of the batch it sees (no running statistics),
in meta-training and at meta-test alike: the MAML convention (cbfinn/maml), recorded as
``norm: batch``. Weights use PyTorch's default initialisation (the thesis is silent).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from metaland.models import MODELS, ModelSpec
from metaland.schema import Params


class ConvNetParams(Params):
    blocks: int = Field(4, ge=1, le=8, description="Conv modules (seed 000 §2.7.1: 4).")
    filters: int = Field(64, ge=1, le=1024, description="Filters per conv (§2.7.1: 64 Omniglot, 48 MiniImagenet).")
    downsample: Literal["stride", "maxpool"] = Field(
        "stride",
        description="stride: 3×3 conv with stride 2 (Omniglot); maxpool: stride 1 + 2×2 max-pool (MiniImagenet).",
    )
    norm: Literal["batch", "none"] = Field(
        "batch",
        description="batch: BatchNorm with batch statistics in train and test (MAML convention); none: no norm.",
    )


def feature_size(options: ConvNetParams, image_size: int) -> int:
    """Spatial side length after the conv modules."""
    side = image_size
    for _ in range(options.blocks):
        side = (side + 1) // 2 if options.downsample == "stride" else side // 2
    if side < 1:
        raise ValueError(f"image_size {image_size} is too small for {options.blocks} downsampling blocks")
    return side


def build(options: ConvNetParams, channels: int, image_size: int, ways: int) -> nn.Module:
    layers: list[nn.Module] = []
    in_channels = channels
    stride = 2 if options.downsample == "stride" else 1
    for _ in range(options.blocks):
        layers.append(nn.Conv2d(in_channels, options.filters, 3, stride=stride, padding=1))
        if options.norm == "batch":
            layers.append(nn.BatchNorm2d(options.filters, track_running_stats=False))
        layers.append(nn.ReLU())
        if options.downsample == "maxpool":
            layers.append(nn.MaxPool2d(2))
        in_channels = options.filters
    side = feature_size(options, image_size)
    layers += [nn.Flatten(), nn.Linear(options.filters * side * side, ways)]
    return nn.Sequential(*layers)


MODELS.register(
    "convnet",
    ModelSpec("convnet", "Conv4-style ConvNet of Vinyals et al. / Finn et al.", ConvNetParams, build),
)
