"""Chen et al.'s training-time data augmentation (seed 001 §3.3, §4.2.1; CloserLookFewShot ``data/datamgr.py``).

Seed 001 meta-trains and pre-trains every backbone with and without augmentation ("aug" / "no aug"
in Tables 7-8). The repository's training transform is, per image and in this order:

1. ``RandomResizedCrop(size)``: a crop of area fraction U(0.08, 1) and aspect ratio log-uniform in
   [3/4, 4/3] (ten tries, then the centre crop of the clamped ratio, as torchvision), resized back to
   the image's size (bilinear, antialiased);
2. ``ImageJitter(Brightness=0.4, Contrast=0.4, Color=0.4)``: brightness, then contrast, then
   saturation, each with factor 1 + 0.4·U(-1, 1) (PIL ``ImageEnhance`` blends: with black, with the
   image's mean grey level, with its grey version), clipped to [0, 1] after each;
3. ``RandomHorizontalFlip(p=0.5)``.

Differences from the repository, the first two forced by metaland's data layout: the crop is taken from the
stored image (already resized to ``image_size``, ``metaland.data.cub``), not from the original
photograph; and images stay in metaland's pixel convention [0, 1] (``metaland.data.tasks.model_inputs``),
so the ImageNet mean/std ``Normalize`` that ends Chen's transform (with and without augmentation)
is not part of it; and the jitter works on float pixels, so PIL's rounding of the mean grey level and
of every intermediate 8-bit image is not reproduced. On 1-channel images saturation is a no-op (the
grey version is the image).

Every draw comes from one ``torch.Generator``, independently per image; the training loop seeds it
by (run seed, "augment", step) (:func:`augment_batch`), so an augmented run resumes bit for bit.
Drawing (:func:`draw_chen`) and applying (:func:`apply_augmentation`) are separate pure functions,
so each part can be checked on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, Self

import torch

from metaland.seeding import generator

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
JITTER = 0.4
FLIP_P = 0.5
GREY_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R 601-2 luma, as PIL's ``convert("L")`` and torchvision's ``rgb_to_grayscale``."""


@dataclass(frozen=True)
class Augmentation:
    """Per-image parameters: crop boxes [N, 4] (top, left, height, width in pixels); brightness,
    contrast and saturation factors [N]; flip [N] (bool)."""

    crops: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    flip: torch.Tensor


def crop_boxes(
    u_area: torch.Tensor,
    u_ratio: torch.Tensor,
    u_position: torch.Tensor,
    height: int,
    width: int,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` from uniforms, for N images at once.

    ``u_area``, ``u_ratio`` [N, tries] give each try's area fraction and log aspect ratio; the first
    try that fits is kept, and ``u_position`` [N, 2] places it. Images with no fitting try get the
    centre crop of the whole image with the ratio clamped to ``ratio``. Returns [N, 4] int64."""
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u_area.double())
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio.double())
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(fits.long(), dim=1, keepdim=True)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(dim=1)
    fallback_h, fallback_w = _centre_fallback(height, width, ratio)
    h = torch.where(found, h, fallback_h)
    w = torch.where(found, w, fallback_w)
    top = torch.where(found, (u_position[:, 0].double() * (height - h + 1)).long(), (height - h) // 2)
    left = torch.where(found, (u_position[:, 1].double() * (width - w + 1)).long(), (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def _centre_fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return round(width / ratio[0]), width
    if in_ratio > ratio[1]:
        return height, round(height * ratio[1])
    return height, width


def draw_chen(n: int, height: int, width: int, rng: torch.Generator) -> Augmentation:
    """Draw Chen et al.'s augmentation parameters for ``n`` images of ``height`` × ``width``."""
    u_area = torch.rand(n, CROP_TRIES, generator=rng)
    u_ratio = torch.rand(n, CROP_TRIES, generator=rng)
    u_position = torch.rand(n, 2, generator=rng)
    factors = 1.0 + JITTER * (2.0 * torch.rand(n, 3, generator=rng) - 1.0)
    flip = torch.rand(n, generator=rng) < FLIP_P
    return Augmentation(
        crop_boxes(u_area, u_ratio, u_position, height, width), factors[:, 0], factors[:, 1], factors[:, 2], flip
    )


def grey(images: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] luma of [N, C, H, W] images (C = 1: the image itself)."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(GREY_WEIGHTS, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor·images + (1 − factor)·other`` clipped to [0, 1], one factor per image (PIL ``ImageEnhance``,
    torchvision's ``_blend``); factor 1 returns the images exactly."""
    f = factor.to(images.dtype).view(-1, 1, 1, 1)
    return (f * images + (1.0 - f) * other).clamp(0.0, 1.0)


def resized_crops(images: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
    """Each image's crop box resized back to the image's size (bilinear, antialiased, as torchvision)."""
    from torchvision.transforms.v2 import functional as TF  # a second to import: augmented runs only

    size = list(images.shape[-2:])
    boxes = crops.tolist()
    return torch.stack(
        [TF.resized_crop(image, *box, size=size, antialias=True) for image, box in zip(images, boxes, strict=True)]
    )


def apply_augmentation(images: torch.Tensor, augmentation: Augmentation) -> torch.Tensor:
    """Crop → brightness → contrast → saturation → flip on float images [N, C, H, W] in [0, 1]."""
    out = resized_crops(images, augmentation.crops)
    out = blend(out, torch.zeros_like(out), augmentation.brightness)
    out = blend(out, grey(out).mean(dim=(1, 2, 3), keepdim=True), augmentation.contrast)
    if out.shape[1] != 1:  # the grey version of a 1-channel image is the image: no saturation to change
        out = blend(out, grey(out), augmentation.saturation)
    return torch.where(augmentation.flip.view(-1, 1, 1, 1), out.flip(-1), out)


def augment_chen(images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Chen et al.'s training augmentation of float images [N, C, H, W] in [0, 1], drawn from ``rng``."""
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"augmentation takes float images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    return apply_augmentation(images, draw_chen(images.shape[0], *images.shape[-2:], rng))


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {"chen": augment_chen}
"""``train.augment`` -> augmentation of an image stack (``none``: no augmentation)."""


class HasImages(Protocol):
    """A training batch (``TaskBatch``, ``LabelledBatch``) whose images can be replaced."""

    def map_images(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Self: ...


def augment_batch(batch: HasImages, augment: str, seed: int, step: int) -> HasImages:
    """The batch meta-training step ``step`` trains on, augmented per ``train.augment`` (``none``: unchanged).

    Its draws come from the generator of (run ``seed``, "augment", ``step``) only."""
    if augment == "none":
        return batch
    rng = generator(seed, "augment", step)
    return batch.map_images(lambda images: AUGMENTATIONS[augment](images, rng))
