"""ResNet-12 of Oreshkin et al. (TADAM; seed 004 Table 4, App. C): the parameter count derived by hand
from the layer shapes, shapes at 28 and 84 px, no buffers, the functional view and one MAML meta-gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from torch.func import functional_call

from metaland.data.tasks import TaskBatch
from metaland.meta import ALGORITHMS, MetaProblem
from metaland.meta.inner import cross_entropy
from metaland.models import MODELS, build_model, head_names, initial_params, make_forward
from metaland.models.resnet12 import ResNet12Params
from metaland.schema import NoOptions
from tests.test_models_backbones import bn, conv, count, linear

WAYS = 5


def build(options: ResNet12Params, channels: int, size: int, ways: int = WAYS, seed: int = 0) -> nn.Module:
    return build_model("resnet12", options, channels=channels, image_size=size, ways=ways, seed=seed)


def resnet12_count(widths=(64, 128, 256, 512), channels: int = 3, ways: int = WAYS) -> int:
    """Per block: three bias-free 3×3 convs with BN, a bias-free 1×1 shortcut conv with BN; then the head."""
    total, c_in = 0, channels
    for c in widths:
        total += conv(3, c_in, c, bias=False) + conv(3, c, c, bias=False) + conv(3, c, c, bias=False) + 3 * bn(c)
        total += conv(1, c_in, c, bias=False) + bn(c)
        c_in = c
    return total + linear(widths[-1], ways)


def test_resnet12_parameter_count_at_84px():
    # Blocks by hand: 76,160 + 377,856 + 1,509,376 + 6,033,408 = 7,996,800; the 5-way head adds 512·5 + 5.
    assert resnet12_count() == 76_160 + 377_856 + 1_509_376 + 6_033_408 + 2_565
    module = build(ResNet12Params(), 3, 84)
    assert count(module) == resnet12_count()
    assert module[-1].in_features == 512
    assert MODELS.get("resnet12").label_of(ResNet12Params()) == "ResNet12"
    assert head_names(module) == ("fc.weight", "fc.bias")


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 84)])
def test_resnet12_shapes_functional_view_and_no_buffers(channels, size):
    options = ResNet12Params(widths=(2, 3, 4, 5))
    module = build(options, channels, size)
    assert count(module) == resnet12_count((2, 3, 4, 5), channels)
    assert isinstance(module, nn.Sequential) and isinstance(module[-1], nn.Linear)
    assert list(module.buffers()) == []
    x = torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(1))
    out = module(x)
    assert out.shape == (4, WAYS)
    # 28 -> 14 -> 7 -> 3 -> 1 and 84 -> 42 -> 21 -> 10 -> 5 after the four 2×2 max-pools, then global average pooling
    assert module[:-3](x).shape == (4, 5, *{28: (1, 1), 84: (5, 5)}[size])
    assert module[:-1](x).shape == (4, 5)
    torch.testing.assert_close(make_forward(module)(initial_params(module), x), out, rtol=0, atol=0)


def test_resnet12_block_is_tadams():
    """Block 1 by hand: (conv → BN → leaky ReLU) ×2 → conv → BN, + (1×1 conv → BN), leaky ReLU, 2×2 max-pool."""
    module = build(ResNet12Params(widths=(2, 2, 2, 2), leaky_slope=0.2), 1, 8, 3, seed=1)
    p = dict(module.named_parameters())
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))

    def bn_(h, name):
        return F.batch_norm(h, None, None, p[f"{name}.weight"], p[f"{name}.bias"], training=True)

    h = F.leaky_relu(bn_(F.conv2d(x, p["layer1.conv1.weight"], padding=1), "layer1.bn1"), 0.2)
    h = F.leaky_relu(bn_(F.conv2d(h, p["layer1.conv2.weight"], padding=1), "layer1.bn2"), 0.2)
    h = bn_(F.conv2d(h, p["layer1.conv3.weight"], padding=1), "layer1.bn3")
    shortcut = bn_(F.conv2d(x, p["layer1.shortcut.0.weight"]), "layer1.shortcut.1")
    expected = F.max_pool2d(F.leaky_relu(h + shortcut, 0.2), 2)
    torch.testing.assert_close(module.layer1(x), expected, rtol=1e-6, atol=1e-6)


def test_resnet12_options_are_validated():
    with pytest.raises(ValidationError, match="greater than 0"):
        ResNet12Params(widths=(64, 0, 256, 512))
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        ResNet12Params(leaky_slope=-0.1)


def test_resnet12_maml_meta_gradient_equals_unrolled_autograd():
    """One MAML meta-gradient (seed 000 eqs. 2.1-2.2) through a tiny ResNet-12, against a plain
    ``torch.autograd`` unroll (float64, 2 inner steps, 2 tasks)."""
    module = build(ResNet12Params(widths=(2, 2, 2, 2)), 1, 16, 3).double()
    params = {k: v.double() for k, v in initial_params(module).items()}
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(3).repeat(2).expand(2, -1).contiguous()
    batch = TaskBatch(
        torch.randn(2, 6, 1, 16, 16, generator=g, dtype=torch.float64),
        labels,
        torch.randn(2, 6, 1, 16, 16, generator=g, dtype=torch.float64),
        labels,
    )
    forward = make_forward(module)
    steps, lr = 2, 0.3
    problem = MetaProblem(forward, cross_entropy(forward), steps, lr, 0, None)
    grads, _ = ALGORITHMS.get("maml").meta_gradient(problem, params, batch, NoOptions())

    theta = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    losses = []
    for i in range(len(batch)):
        adapted = dict(theta)
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(module, adapted, (batch.support_x[i],)), batch.support_y[i])
            step = torch.autograd.grad(loss, list(adapted.values()), create_graph=True)
            adapted = {k: v - lr * d for (k, v), d in zip(adapted.items(), step, strict=True)}
        losses.append(F.cross_entropy(functional_call(module, adapted, (batch.query_x[i],)), batch.query_y[i]))
    expected = torch.autograd.grad(torch.stack(losses).mean(), list(theta.values()))
    for (name, value), reference in zip(theta.items(), expected, strict=True):
        assert value.shape == grads[name].shape
        torch.testing.assert_close(grads[name], reference, rtol=1e-9, atol=1e-11, msg=name)
    assert any(grads[name].abs().max() > 0 for name in grads if name.startswith("layer1"))
