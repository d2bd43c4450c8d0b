"""Chen et al.'s backbones (seed 001 §3.2): Conv4 / Conv6 and ResNet10 / ResNet18, their exact
parameter counts derived by hand from the layer shapes, shapes, the functional view, and the init."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from metaland.models import build_model, head_names, initial_params, make_forward
from metaland.models.convnet import ConvNetParams
from metaland.models.resnet import ResNetParams
from metaland.seeding import derive_seed

WAYS = 5


def conv(k: int, c_in: int, c_out: int, bias: bool = True) -> int:
    """Parameters of a k×k convolution."""
    return k * k * c_in * c_out + (c_out if bias else 0)


def bn(c: int) -> int:
    """Parameters of an affine BatchNorm: γ and β."""
    return 2 * c


def linear(d_in: int, d_out: int) -> int:
    return d_in * d_out + d_out


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv4(**changes) -> ConvNetParams:
    return ConvNetParams(filters=64, downsample="maxpool", **changes)


def conv6(**changes) -> ConvNetParams:
    return conv4(blocks=6, downsampled_blocks=4, **changes)


def build(name: str, options, channels: int = 3, size: int = 84, seed: int = 0) -> nn.Module:
    return build_model(name, options, channels=channels, image_size=size, ways=WAYS, seed=seed)


def test_conv4_and_conv6_parameter_counts_at_84px():
    # 84 -> 42 -> 21 -> 10 -> 5 after four 2x2 max-pools; Conv6's blocks 5-6 keep 5x5: feature 64*5*5 = 1600.
    feature = 64 * 5 * 5
    first = conv(3, 3, 64) + bn(64)  # 1,792 + 128
    later = conv(3, 64, 64) + bn(64)  # 36,928 + 128
    assert first + 3 * later + linear(feature, WAYS) == 121_093
    assert count(build("convnet", conv4())) == first + 3 * later + linear(feature, WAYS)
    assert count(build("convnet", conv6())) == first + 5 * later + linear(feature, WAYS)
    assert build("convnet", conv6())[-1].in_features == feature


def resnet_count(blocks_per_stage: int, width: int = 64, channels: int = 3) -> int:
    """Stem + four stages of SimpleBlocks (bias-free convs) + 1x1 shortcuts where the shape changes + head."""
    total = conv(7, channels, width, bias=False) + bn(width)
    c_in = width
    for stage in range(4):
        c = width * 2**stage
        for _ in range(blocks_per_stage):
            total += conv(3, c_in, c, bias=False) + bn(c) + conv(3, c, c, bias=False) + bn(c)
            if c_in != c:  # the first block of stages 2-4 halves the resolution and widens
                total += conv(1, c_in, c, bias=False) + bn(c)
            c_in = c
    return total + linear(8 * width, WAYS)


def test_resnet10_and_resnet18_parameter_counts_at_224px():
    assert resnet_count(1) == 4_908_357
    # torchvision's resnet18 (11,689,512 with a 1000-way head) with a 5-way head instead.
    assert resnet_count(2) == 11_689_512 - linear(512, 1000) + linear(512, WAYS)
    assert count(build("resnet", ResNetParams(depth=10), size=224)) == resnet_count(1)
    assert count(build("resnet", ResNetParams(depth=18), size=224)) == resnet_count(2)
    assert count(build("resnet", ResNetParams(depth=10, width=8), channels=1)) == resnet_count(1, 8, 1)


@pytest.mark.parametrize(
    ("name", "options", "channels", "size"),
    [
        ("convnet", ConvNetParams(filters=8), 1, 28),
        ("convnet", conv6(), 3, 84),
        ("resnet", ResNetParams(width=4), 1, 28),
        ("resnet", ResNetParams(depth=18, width=4), 3, 84),
    ],
)
def test_shapes_functional_view_and_no_buffers(name, options, channels, size):
    module = build(name, options, channels, size)
    assert isinstance(module, nn.Sequential) and isinstance(module[-1], nn.Linear)
    assert list(module.buffers()) == []
    x = torch.rand(6, channels, size, size, generator=torch.Generator().manual_seed(1))
    out = module(x)
    assert out.shape == (6, WAYS)
    assert module[:-1](x).shape == (6, module[-1].in_features)
    torch.testing.assert_close(make_forward(module)(initial_params(module), x), out, rtol=0, atol=0)


def test_resnet_names_its_head_fc():
    assert head_names(build("resnet", ResNetParams(width=2), 1, 28)) == ("fc.weight", "fc.bias")


def test_conv6_options_are_validated():
    with pytest.raises(ValidationError, match=r"downsampled_blocks \(5\) cannot exceed blocks \(4\)"):
        ConvNetParams(downsampled_blocks=5)
    with pytest.raises(ValueError, match="too small for 4 downsampling blocks"):
        build("convnet", conv6(), 1, 8)  # 8 -> 4 -> 2 -> 1 -> 0
    # with stride downsampling the non-downsampling blocks use stride 1: 28 -> 14 -> 7, then 7 -> 7
    strided = build("convnet", ConvNetParams(filters=2, blocks=3, downsampled_blocks=2), 1, 28)
    assert [layer.stride for layer in strided if isinstance(layer, nn.Conv2d)] == [(2, 2), (2, 2), (1, 1)]
    assert strided[-1].in_features == 2 * 7 * 7


@pytest.mark.parametrize(("name", "options"), [("convnet", conv4(init="chen")), ("resnet", ResNetParams(init="chen"))])
def test_chen_init(name, options):
    module = build(name, options)
    convs = [layer for layer in module.modules() if isinstance(layer, nn.Conv2d)]
    widest = max(convs, key=lambda layer: layer.weight.numel())  # the most entries: the tightest estimate
    expected = math.sqrt(2.0 / (9 * widest.out_channels))
    assert widest.weight.std().item() == pytest.approx(expected, rel=0.03)
    assert abs(widest.weight.mean().item()) < 0.05 * expected
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            assert torch.equal(layer.weight, torch.ones_like(layer.weight))
            assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert torch.equal(module[-1].bias, torch.zeros(WAYS))
    pytorch = build(name, options.model_copy(update={"init": "pytorch"}))
    assert not torch.equal(pytorch[-1].bias, torch.zeros(WAYS))
    torch.testing.assert_close(module[-1].weight, pytorch[-1].weight, rtol=0, atol=0)  # head weight: default


def convnet_before_seed_001(options: ConvNetParams, channels: int, size: int) -> nn.Sequential:
    """The ConvNet as it was built before seed 001's options (``downsampled_blocks``, ``init``): every
    block downsamples and every layer keeps PyTorch's default initialisation."""
    layers: list[nn.Module] = []
    in_channels, side = channels, size
    strided = options.downsample == "stride"
    for _ in range(options.blocks):
        layers.append(nn.Conv2d(in_channels, options.filters, 3, stride=2 if strided else 1, padding=1))
        if options.norm == "batch":
            layers.append(nn.BatchNorm2d(options.filters, track_running_stats=False))
        layers.append(nn.ReLU())
        if options.downsample == "maxpool":
            layers.append(nn.MaxPool2d(2))
        in_channels, side = options.filters, (side + 1) // 2 if strided else side // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(options.filters * side * side, WAYS))


@pytest.mark.parametrize(
    ("options", "channels", "size"),
    [(ConvNetParams(), 1, 28), (ConvNetParams(downsample="maxpool", filters=32), 3, 84)],
)
def test_default_convnet_initialisation_is_unchanged(options, channels, size):
    """With its defaults, the ConvNet draws exactly the initial parameters (seed 3) of the ConvNet
    before seed 001's options, rebuilt here layer by layer: same names, same bits on this machine."""
    built = dict(build("convnet", options, channels, size, seed=3).named_parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(3, "init"))  # build_model's seeding
        reference = dict(convnet_before_seed_001(options, channels, size).named_parameters())
    assert list(built) == list(reference)
    for name, value in reference.items():
        torch.testing.assert_close(built[name], value, rtol=0, atol=0, msg=name)
