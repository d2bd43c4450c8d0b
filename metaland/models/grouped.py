"""One forward pass for many tasks, each with its own weights, without ``vmap``.

For a plain ``nn.Sequential`` of 2-D convolutions, BatchNorm with batch statistics, ReLU,
max-pooling, a flatten and a linear head (the ConvNet family of seed 000 §2.7.1 and seed 003's
CNN), n tasks with per-task weights {name: [n, ...]} and equally many images per task
x [n, b, C, H, W] run as one grouped network:

* a convolution is one grouped convolution (``groups = n``) over the tasks' channels side by side,
  x [b, n·C, H, W] and weights [n·O, C, k, k];
* BatchNorm over [b, n·C, H, W] normalises each (task, channel) pair by its own mean and variance
  over (b, H, W): exactly the per-task BatchNorm of the per-task forward;
* the linear head is a batched matrix product, logits [n, b, ways].

This is what ``vmap`` builds for the same network, written out, so it runs under plain autograd
and from several threads at once (``vmap``'s transform stack is not safe to enter from two
threads). Models of other shapes have no such forward (:func:`task_batched_forward` gives None) and
the meta-gradient engines fall back to ``vmap`` for them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from metaland.models import ParamDict

BatchedForward = Callable[[ParamDict, torch.Tensor], torch.Tensor]
"""(per-task params {name: [n, ...]}, images [n, b, C, H, W]) -> logits [n, b, classes]."""

_LAYERS = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear)


def task_batched_forward(module: nn.Module) -> BatchedForward | None:
    """The grouped forward of ``module`` over tasks, or None when its layers are not all of the
    supported kinds (see the module docstring) in one ``nn.Sequential`` ending in flatten + linear."""
    if not isinstance(module, nn.Sequential):
        return None
    layers = list(module.named_children())
    if not layers or not all(type(layer) in _LAYERS for _, layer in layers):
        return None
    if not isinstance(layers[-1][1], nn.Linear) or not isinstance(layers[-2][1], nn.Flatten):
        return None
    convolutions = [layer for _, layer in layers if isinstance(layer, nn.Conv2d)]
    if any(layer.groups != 1 or layer.padding_mode != "zeros" for layer in convolutions):
        return None
    if any(isinstance(layer, nn.BatchNorm2d) and layer.track_running_stats for _, layer in layers):
        return None

    def forward(params: ParamDict, x: torch.Tensor) -> torch.Tensor:
        n, b = x.shape[:2]
        h = x.transpose(0, 1).reshape(b, n * x.shape[2], *x.shape[3:])  # [b, n·C, H, W]
        for name, layer in layers:
            if isinstance(layer, nn.Conv2d):
                weight = params[f"{name}.weight"]
                bias = params.get(f"{name}.bias")
                h = F.conv2d(
                    h,
                    weight.reshape(n * weight.shape[1], *weight.shape[2:]),
                    None if bias is None else bias.reshape(-1),
                    stride=layer.stride,
                    padding=layer.padding,
                    dilation=layer.dilation,
                    groups=n,
                )
            elif isinstance(layer, nn.BatchNorm2d):
                weight, bias = params.get(f"{name}.weight"), params.get(f"{name}.bias")
                h = F.batch_norm(
                    h,
                    None,
                    None,
                    None if weight is None else weight.reshape(-1),
                    None if bias is None else bias.reshape(-1),
                    training=True,
                    eps=layer.eps,
                )
            elif isinstance(layer, nn.Flatten):
                h = h.reshape(b, n, -1).transpose(0, 1)  # [n, b, features]
            elif isinstance(layer, nn.Linear):
                h = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), h, params[f"{name}.weight"].transpose(1, 2))
            else:  # ReLU, MaxPool2d: the same on every channel
                h = layer(h)
        return h

    return forward
