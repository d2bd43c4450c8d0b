"""The ConvNet family of Vinyals et al. (2016) / Finn et al. (2017) (seed 000 §2.7.1).

``blocks`` modules of [3×3 conv (``filters``) → BatchNorm → ReLU → downsample], then a linear
head with one logit per class. Omniglot uses strided convolutions instead of max-pooling
(stride 2, padding 1, "SAME" as in cbfinn/maml): 28 → 14 → 7 → 4 → 2, so Conv4-64 has a 256-d
feature and 113,221 parameters at 5-way. MiniImagenet uses stride-1 convolutions and 2×2
max-pooling (84 → 42 → 21 → 10 → 5).

Chen et al.'s Conv6 (seed 001 §3.2) is ``blocks: 6, downsampled_blocks: 4``: only the first four
modules pool, so Conv4 and Conv6 both have a 64·5·5 = 1600-d feature at 84 px.

BatchNorm always normalises with the statistics of the batch it sees (no running statistics),
in meta-training and at meta-test alike: the MAML convention (cbfinn/maml), recorded as
``norm: batch``. Weights use PyTorch's default initialisation (the thesis is silent) unless
``init: chen`` (``metaland.models.init``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from metaland.models import MODELS, ModelSpec
from metaland.models.init import INIT_DESCRIPTION, Init, apply_init
from metaland.schema import Params


class ConvNetParams(Params):
    blocks: int = Field(4, ge=1, le=8, description="Conv modules (seed 000 §2.7.1: 4; seed 001 §3.2: 4 or 6).")
    filters: int = Field(64, ge=1, le=1024, description="Filters per conv (§2.7.1: 64 Omniglot, 48 MiniImagenet).")
    downsample: Literal["stride", "maxpool"] = Field(
        "stride",
        description="stride: 3×3 conv with stride 2 (Omniglot); maxpool: stride 1 + 2×2 max-pool (MiniImagenet).",
    )
    downsampled_blocks: int | None = Field(
        None,
        ge=0,
        le=8,
        description="Only the first k modules downsample (stride 2 or max-pool); the rest keep the size "
        "(seed 001 §3.2: Conv6 = 6 blocks, blocks 5-6 without pooling, so k = 4). None = every module "
        "(seed 000 §2.7.1).",
    )
    norm: Literal["batch", "none"] = Field(
        "batch",
        description="batch: BatchNorm with batch statistics in train and test (MAML convention); none: no norm.",
    )
    init: Init = Field("pytorch", description=INIT_DESCRIPTION)

    @model_validator(mode="after")
    def _downsampled_within_blocks(self) -> ConvNetParams:
        if self.downsampled_blocks is not None and self.downsampled_blocks > self.blocks:
            raise ValueError(f"downsampled_blocks ({self.downsampled_blocks}) cannot exceed blocks ({self.blocks})")
        return self


def downsampling(options: ConvNetParams) -> int:
    """How many of the conv modules downsample."""
    return options.blocks if options.downsampled_blocks is None else options.downsampled_blocks


def feature_size(options: ConvNetParams, image_size: int) -> int:
    """Spatial side length after the conv modules."""
    side = image_size
    for _ in range(downsampling(options)):
        side = (side + 1) // 2 if options.downsample == "stride" else side // 2
    if side < 1:
        raise ValueError(f"image_size {image_size} is too small for {downsampling(options)} downsampling blocks")
    return side


def build(options: ConvNetParams, channels: int, image_size: int, ways: int) -> nn.Module:
    layers: list[nn.Module] = []
    in_channels = channels
    for block in range(options.blocks):
        downsamples = block < downsampling(options)
        stride = 2 if options.downsample == "stride" and downsamples else 1
        layers.append(nn.Conv2d(in_channels, options.filters, 3, stride=stride, padding=1))
        if options.norm == "batch":
            layers.append(nn.BatchNorm2d(options.filters, track_running_stats=False))
        layers.append(nn.ReLU())
        if options.downsample == "maxpool" and downsamples:
            layers.append(nn.MaxPool2d(2))
        in_channels = options.filters
    side = feature_size(options, image_size)
    layers += [nn.Flatten(), nn.Linear(options.filters * side * side, ways)]
    return apply_init(nn.Sequential(*layers), options.init)


MODELS.register(
    "convnet",
    ModelSpec(
        "convnet",
        "Conv4-style ConvNet of Vinyals et al. / Finn et al.",
        ConvNetParams,
        build,
        label=lambda options: f"Conv{options.blocks}",
    ),
)
