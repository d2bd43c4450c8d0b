"""One forward pass for many tasks, each with its own weights, without ``vmap``.

For a plain ``nn.Sequential`` of 2-D convolutions, BatchNorm with batch statistics, ReLU,
max-pooling, a flatten and a linear head (the ConvNet family of seed 000 §2.7.1 and seed 003's
CNN), n tasks with per-task weights {name: [n, ...]} and equally many images per task
x [n, b, C, H, W] run as one grouped network:

* a convolution is one grouped convolution (``groups = n``) over the tasks' channels side by side,
  x [b, n·C, H, W] and weights [n·O, C, k, k];
* BatchNorm over [b, n·C, H, W] normalises each (task, channel) pair by its own mean and variance
  over (b, H, W): exactly the per-task BatchNorm of the per-task forward (PyTorch's kernels, with the
  hand-derived second derivative of ``metaland.models.batch_norm``);
* the linear head is a batched matrix product, logits [n, b, ways].

This is what ``vmap`` builds for the same network, written out, so it runs under plain autograd
and from several threads at once (``vmap``'s transform stack is not safe to enter from two
threads). Models of other shapes have no such forward (:func:`task_batched_forward` gives None) and
the meta-gradient engines fall back to ``vmap`` for them.

Six choices change speed only, never the maths:

* The first convolution, over the images, is a matrix product of each task's weights with its
  images' patches (:func:`unfolded_convolution`): in the default layout oneDNN's grouped kernel is
  slow on the 1-3 input channels of images, and its second derivative computes a gradient for the
  images too.
* ``channels_last``: the activations are laid out channels last ([b, H, W, n·C] in memory), where
  oneDNN runs a CPU's grouped convolutions without reordering them to its own layout and back
  (1.2-1.3× faster for the forward pass of a surface's chunk of grid points), and BatchNorm takes the
  statistics in two passes over [b·H·W, n·C] rows (:func:`channels_last_batch_norm`). The second-order
  meta-gradient's double backward runs slower in it (docs/performance.md), so the caller chooses.
* Shared images: params may hold r consecutive parameter sets per task ({name: [n·r, ...]}, x
  [n, b, ...]), as the grid points of a loss surface share their tasks; the first convolution then
  runs once over the n tasks' images (r·O filters each) instead of over r copies.
* A BatchNorm right after the first convolution is folded into it (:func:`normalised_image_convolution`:
  its statistics are those of the images' patches, so the activation is neither reduced nor
  normalised, forward or backward); channels last, only without autograd. Those statistics depend on
  the images alone: a caller that runs many parameter sets on the same images takes them once
  (:meth:`BatchedForward.for_images`: a loss surface for all its chunks, an inner loop for all its
  steps). Without autograd (``torch.no_grad``) a ReLU also overwrites the fresh activation it follows
  instead of allocating another one.
* For one task (the meta-iteration's query passes), in the default layout, the image convolution's
  matrix product gives its output channels last at no cost (:func:`patch_products`), so the second
  convolution runs oneDNN's channels-last kernels, whose backward skips the NCHW kernels' copy of the
  input (7-8% off a meta-iteration, docs/performance.md); that convolution's output is made
  contiguous again, for BatchNorm's accurate kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from metaland.models import ParamDict
from metaland.models.batch_norm import batch_norm


@dataclass(frozen=True)
class ImageStatistics:
    """What the folded first BatchNorm takes of the images alone, the same for every parameter set: per
    task, the mean μ [n, K] and the biased covariance Σ [n, K, K] of the first convolution's patches p over
    the task's images and positions (float64), and the rows of the folded matrix product, the centred
    patches p − μ over a row of ones that carries β, [b·n, K + 1, H'·W'] in the images' dtype.
    ``images`` is the tensor they were taken of."""

    images: torch.Tensor
    mean: torch.Tensor
    covariance: torch.Tensor
    rows: torch.Tensor


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
    return BatchedForward(layers)


class BatchedForward:
    """(per-task params {name: [n·r, ...]}, images [n, b, C, H, W]) -> logits [n·r, b, classes]: the
    grouped network of a supported ``nn.Sequential`` (module docstring; :func:`task_batched_forward`)."""

    def __init__(self, layers: list[tuple[str, nn.Module]]):
        self.layers = layers
        first, second = layers[0][1], layers[1][1]
        self.folds_first_norm = (
            isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d) and not isinstance(first.padding, str)
        )

    def image_statistics(self, x: torch.Tensor) -> ImageStatistics | None:
        """The folded first BatchNorm's statistics of the images x [n, b, C, H, W] (None when the network
        does not fold it)."""
        if not self.folds_first_norm:
            return None
        statistics = image_statistics(side_by_side(x), self.layers[0][1], x.shape[0])
        return dataclasses.replace(statistics, images=x)

    def for_images(self, x: torch.Tensor) -> Callable[..., torch.Tensor]:
        """This forward with x's image statistics taken once, for many calls on the same images x (a loss
        surface's chunks of grid points, an inner loop's steps); each call must pass x itself."""
        return partial(self, statistics=self.image_statistics(x))

    def __call__(
        self,
        params: ParamDict,
        x: torch.Tensor,
        *,
        channels_last: bool = False,
        statistics: ImageStatistics | None = None,
    ) -> torch.Tensor:
        layers = self.layers
        sets = next(iter(params.values())).shape[0]
        if sets % x.shape[0]:
            raise ValueError(f"{sets} parameter sets cannot share the images of {x.shape[0]} tasks evenly")
        if statistics is not None and statistics.images is not x:
            raise ValueError("the image statistics were taken of other images: pass the x they were taken of")
        if sets != x.shape[0] and not isinstance(layers[0][1], nn.Conv2d):  # no convolution to share them
            x = x.repeat_interleave(sets // x.shape[0], dim=0)
        groups, b = x.shape[:2]  # channel groups side by side: the tasks' images, then the parameter sets
        images = side_by_side(x)
        # the convolutions keep the layout they are given
        h = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        fold = self.folds_first_norm and not (channels_last and torch.is_grad_enabled())
        for position, (name, layer) in enumerate(layers):
            if position == 1 and fold:  # done with the convolution before it
                continue
            if isinstance(layer, nn.Conv2d):
                weight = params[f"{name}.weight"]
                bias = params.get(f"{name}.bias")
                if position == 0 and fold:
                    norm_name, norm = layers[1]
                    affine = params.get(f"{norm_name}.weight"), params.get(f"{norm_name}.bias")
                    if statistics is None:
                        statistics = image_statistics(images, layer, groups)
                    h = normalised_image_convolution(
                        h, weight, bias, *affine, layer, norm.eps, groups, channels_last, statistics
                    )
                elif position == 0 and not channels_last and not isinstance(layer.padding, str):
                    h = unfolded_convolution(h, weight, bias, layer, groups)
                else:  # contiguous again after a channels-last input (patch_products), for BatchNorm
                    h = grouped_convolution(h, weight, bias, layer, groups)
                    h = h if channels_last else h.contiguous()
                groups = weight.shape[0]
            elif isinstance(layer, nn.BatchNorm2d):
                weight, bias = params.get(f"{name}.weight"), params.get(f"{name}.bias")
                weight = None if weight is None else weight.reshape(-1)
                bias = None if bias is None else bias.reshape(-1)
                if channels_last:
                    h = channels_last_batch_norm(h, weight, bias, layer.eps)
                else:
                    h = batch_norm(h, weight, bias, layer.eps)
            elif isinstance(layer, nn.Flatten):
                h = h.reshape(b, groups, -1).transpose(0, 1)  # [n, b, features]
            elif isinstance(layer, nn.Linear):
                h = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), h, params[f"{name}.weight"].transpose(1, 2))
            elif isinstance(layer, nn.ReLU) and position > 0 and not torch.is_grad_enabled():
                h = torch.relu_(h)  # a fresh activation of the layer before, not the caller's images
            else:  # ReLU, MaxPool2d: the same on every channel
                h = layer(h)
        return h


def side_by_side(x: torch.Tensor) -> torch.Tensor:
    """Images [n, b, C, H, W] as the grouped network's input: [b, n·C, H, W], each task's channels a group."""
    return x.transpose(0, 1).reshape(x.shape[1], x.shape[0] * x.shape[2], *x.shape[3:])


def grouped_convolution(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer: nn.Conv2d, groups: int
) -> torch.Tensor:
    """``layer``'s convolution with per-group weights [n·r, O, C, k, k] and biases [n·r, O] or None, over
    the groups' channels side by side (``F.conv2d(..., groups=n)``, oneDNN's kernel)."""
    return F.conv2d(
        h,
        weight.reshape(-1, *weight.shape[2:]),
        None if bias is None else bias.reshape(-1),
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=groups,
    )


def unfolded_convolution(
    images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer: nn.Conv2d, tasks: int
) -> torch.Tensor:
    """The grouped network's first convolution, of the tasks' images side by side [b, n·C, H, W], with
    r parameter sets per task (weight [n·r, O, C, k, k]), as matrix products over the images' patches:
    a task's [r·O, C·k²] weights times each of its images' [C·k², H'·W'] patches, giving
    [b, n·r·O, H', W'].
    The same convolution as ``F.conv2d(..., groups=n)``; oneDNN's grouped kernel runs 1.1-2.2× slower
    on the few input channels of images (1 for Omniglot), and its second derivative also computes a
    gradient for the images, which nothing needs (docs/performance.md)."""
    patches = image_patches(images, layer, tasks)
    weights = weight.reshape(tasks, -1, patches.shape[1])  # [n, r·O, C·k²]
    return patch_products(patches, weights, None if bias is None else bias.reshape(tasks, -1), images, layer)


def normalised_image_convolution(
    images: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    layer: nn.Conv2d,
    eps: float,
    tasks: int,
    channels_last: bool,
    statistics: ImageStatistics | None = None,
) -> torch.Tensor:
    """BatchNorm with batch statistics of the first convolution's output, as one convolution.

    The convolution is linear in the images' patches p (C·k² values each): a channel's output is
    y = w·p + c, so its mean over the batch and positions is w·μ + c and its variance wᵀΣw, with μ and
    Σ the mean and (biased) covariance of the task's patches. BatchNorm's γ (y − E y) / √(Var y + ε) + β
    is then s w·(p − μ) + β with s = γ / √(wᵀΣw + ε): the same numbers, with no pass over the activation
    for its statistics or its normalisation. The conv bias c cancels, as in BatchNorm. μ, Σ and the
    variances are taken in float64, which costs nothing at C·k² values per patch (Σ of neighbouring
    pixels is nearly singular). In the default layout the patches are centred before the matrix
    products (:class:`_FoldedBatchNorm`, which also gives the gradients); channels last, a forward
    pass without autograd only, it runs oneDNN's grouped kernel on the images with the weights s w and
    the bias β − s w·μ. Either way the float32 output is as accurate as BatchNorm's own.

    The images' statistics (:func:`image_statistics`, taken here when not given) depend on the images
    alone, so a caller that runs many parameter sets on the same images takes them once.

    images [b, n·C, H, W], weight [n·r, O, C, k, k], bias, norm_weight and norm_bias [n·r, O] or None
    -> [b, n·r·O, H', W']."""
    if statistics is None:
        statistics = image_statistics(images, layer, tasks)
    covariance = statistics.covariance
    weights = weight.reshape(tasks, -1, covariance.shape[-1])  # [n, r·O, C·k²]
    gamma = None if norm_weight is None else norm_weight.reshape(tasks, -1)
    beta = None if norm_bias is None else norm_bias.reshape(tasks, -1)
    if not channels_last:
        return _FoldedBatchNorm.apply(weights, bias, gamma, beta, statistics.rows, covariance, eps, images, layer)
    exact, _, _, scale = folded_scale(weights, gamma, covariance, eps)
    shift = -(exact @ statistics.mean.unsqueeze(-1)).squeeze(-1) * scale  # β − s w·μ
    if beta is not None:
        shift = shift + beta
    folded = (exact * scale.unsqueeze(-1)).to(weights.dtype)
    return grouped_convolution(images, folded.reshape(weight.shape), shift.to(weights.dtype), layer, tasks)


def folded_scale(
    weights: torch.Tensor, gamma: torch.Tensor | None, covariance: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Of the folded BatchNorm, in float64: the weights w [n, R, K], Σw [n, R, K], 1/σ = 1/√(wᵀΣw + ε)
    and the scale s = γ/σ [n, R] (1/σ without γ)."""
    exact = weights.double()
    covariance_weights = torch.einsum("tkj,toj->tok", covariance, exact)
    inverse_std = torch.rsqrt((exact * covariance_weights).sum(-1) + eps)
    scale = inverse_std if gamma is None else inverse_std * gamma.double()
    return exact, covariance_weights, inverse_std, scale


class _FoldedBatchNorm(torch.autograd.Function):
    """(w, c, γ, β) -> s w·(p − μ) + β over the rows of :class:`ImageStatistics` (the centred patches
    over a row of ones for β), [b, n·R, H', W'], and its gradients.

    With G = Σ g·(p − μ) over a task's images and positions ([R, K], upstream gradient g) and
    u = w·G = Σ g·w(p − μ):

        ∂w = s (G − u Σw / σ²),   ∂γ = u / σ,   ∂β = Σ g,   ∂c = 0 (BatchNorm cancels it).

    G is one matrix product per image (the weight gradient of a convolution over centred patches), summed
    over the images in float64; its column for the row of ones is ∂β, as β's column of the folded weights
    adds β inside the forward's matrix product. What follows is [R, K]-sized and in float64 like the
    forward's scale. No pass over the activation is made for BatchNorm's backward, nor for β. In float32
    this is more accurate than BatchNorm's backward, which subtracts the mean and the x̂ component element
    by element: a 21×21 float32 surface whose inner steps run through the fold is off float64 by 2e-7 at
    its worst point, against 8.5e-6 with BatchNorm (51×51: 4.3e-5 against 2.6e-3). Autograd through the
    folded forward, rejected before, was off by 5.9e-5 (docs/performance.md). The backward is written in
    differentiable operations of the saved inputs, so the second derivative (second-order MAML's inner
    loop) is autograd's own."""

    @staticmethod
    def forward(ctx, weights, bias, gamma, beta, rows, covariance, eps, images, layer):
        exact, _, _, scale = folded_scale(weights, gamma, covariance, eps)
        ctx.save_for_backward(weights, bias, gamma, rows, covariance)
        ctx.eps = eps
        shift = weights.new_zeros(weights.shape[:2]) if beta is None else beta  # times the rows' row of ones
        folded = torch.cat([(exact * scale.unsqueeze(-1)).to(weights.dtype), shift.unsqueeze(-1)], dim=-1)
        return patch_products(rows, folded, None, images, layer)

    @staticmethod
    def backward(ctx, grad_output):
        weights, bias, gamma, rows, covariance = ctx.saved_tensors
        exact, covariance_weights, inverse_std, scale = folded_scale(weights, gamma, covariance, ctx.eps)
        tasks, outputs, k = weights.shape
        g = grad_output.reshape(-1, outputs, rows.shape[-1])  # [b·n, R, H'·W']
        products = torch.bmm(g, rows.transpose(1, 2)).double().reshape(-1, tasks, outputs, k + 1).sum(0)
        moments = products[..., :k]  # G; the last column, of the row of ones, is ∂β
        along = (exact * moments).sum(-1)  # u
        grad_weights = scale.unsqueeze(-1) * (
            moments - (along * inverse_std.square()).unsqueeze(-1) * covariance_weights
        )
        grad_gamma = None if gamma is None else (along * inverse_std).to(gamma.dtype)
        grad_beta = products[..., k].to(grad_output.dtype) if ctx.needs_input_grad[3] else None
        grad_bias = None if bias is None else torch.zeros_like(bias)
        return grad_weights.to(weights.dtype), grad_bias, grad_gamma, grad_beta, None, None, None, None, None


def image_patches(images: torch.Tensor, layer: nn.Conv2d, tasks: int) -> torch.Tensor:
    """The convolution's patches of every image of every task, [b·n, C·k², H'·W'] (image-major)."""
    b, height, width = images.shape[0], *images.shape[2:]
    return F.unfold(
        images.reshape(b * tasks, -1, height, width),
        layer.kernel_size,
        dilation=layer.dilation,
        padding=layer.padding,
        stride=layer.stride,
    )


def image_statistics(images: torch.Tensor, layer: nn.Conv2d, tasks: int) -> ImageStatistics:
    """:class:`ImageStatistics` of the tasks' images side by side [b, n·C, H, W] under the convolution ``layer``."""
    patches = image_patches(images, layer, tasks)  # [b·n, K, L]
    exact = patches.reshape(images.shape[0], tasks, *patches.shape[1:]).double()  # [b, n, K, L]
    mean = exact.mean(dim=(0, 3))
    centred = exact - mean.unsqueeze(-1)
    # batched matrix products summed over the images: einsum copied both operands
    covariance = (centred @ centred.transpose(-1, -2)).sum(0) / (exact.shape[0] * exact.shape[-1])
    rows = patches.new_ones(patches.shape[0], patches.shape[1] + 1, patches.shape[2])
    rows[:, :-1] = centred.reshape(patches.shape)
    return ImageStatistics(images, mean, covariance, rows)


def patch_products(
    patches: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor | None, images: torch.Tensor, layer: nn.Conv2d
) -> torch.Tensor:
    """Every image's patches [C·k², H'·W'] times its task's weights [r·O, C·k²] (weights [n, r·O, C·k²]),
    plus its task's biases [n, r·O] inside the matrix product: [b, n·r·O, H', W'].

    For one task the product is taken as patchesᵀ times weightsᵀ, whose rows are the output's positions:
    the output comes out channels last at no cost, and the convolution after it runs oneDNN's channels-last
    kernels (the grouped network makes that convolution's output contiguous again, for BatchNorm)."""
    b, tasks = images.shape[0], weights.shape[0]
    size = [
        (extent + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
        for extent, pad, dilation, kernel, stride in zip(
            images.shape[2:], layer.padding, layer.dilation, layer.kernel_size, layer.stride, strict=True
        )
    ]
    if tasks == 1:  # [b, H'·W', r·O]: channels last
        weights = weights.transpose(1, 2).expand(b, -1, -1)
        if biases is None:
            out = torch.bmm(patches.transpose(1, 2), weights)
        else:
            out = torch.baddbmm(biases.reshape(1, 1, -1).expand(b, -1, -1), patches.transpose(1, 2), weights)
        return out.reshape(b, *size, -1).permute(0, 3, 1, 2)
    weights = weights.expand(b, *weights.shape).reshape(-1, *weights.shape[1:])  # every image: its task's
    if biases is None:
        out = torch.bmm(weights, patches)  # [b·n, r·O, H'·W']
    else:  # the bias added inside the matrix product, not in another pass over the output
        biases = biases.reshape(1, tasks, -1, 1).expand(b, -1, -1, -1).reshape(len(weights), -1, 1)
        out = torch.baddbmm(biases, weights, patches)
    return out.reshape(b, -1, *size)


def channels_last_batch_norm(
    h: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """BatchNorm with batch statistics of a channels-last activation h [b, C, H, W]: every channel
    normalised by the mean and the mean squared deviation of its b·H·W values, then scaled and
    shifted (y = x·s + (β − μ·s), s = γ / √(σ² + ε), as PyTorch's kernels compute it).

    The statistics take two passes over the rows of h's [b·H·W, C] view, the mean and then the
    deviations from it, which keeps them as accurate as PyTorch's kernel for the default layout;
    PyTorch's channels-last kernel is 3× faster but loses 10-25× more to float32 rounding
    (docs/performance.md). Without autograd the deviations are squared in place."""
    b, channels, height, width = h.shape
    rows = h.permute(0, 2, 3, 1).reshape(-1, channels)  # a view when h is channels last
    mean = rows.sum(0) / len(rows)
    deviation = rows - mean
    squares = deviation.square() if torch.is_grad_enabled() else deviation.square_()
    scale = torch.rsqrt(squares.sum(0) / len(rows) + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    return torch.addcmul(shift, rows, scale).reshape(b, height, width, channels).permute(0, 3, 1, 2)
