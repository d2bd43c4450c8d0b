"""Photographs into the normalised layout's pixels: decoding, resizing, RGB uint8 [3, H, W].

Shared by the loaders of photo datasets (CIFAR-FS, tieredImageNet, Stanford Cars); every decoding
failure names the image and the archive to replace.
"""

from __future__ import annotations

import io
from importlib import resources

import numpy as np
import torch
from PIL import Image

from metaland.errors import DataError


def rgb_pixels(image: Image.Image) -> torch.Tensor:
    """uint8 [3, H, W] of an RGB PIL image."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def square(image: Image.Image, size: int) -> Image.Image:
    """``image`` as RGB, resized (Lanczos) to ``size`` × ``size`` unless it is that already."""
    rgb = image.convert("RGB")
    return rgb if rgb.size == (size, size) else rgb.resize((size, size), Image.Resampling.LANCZOS)


def decode(data: bytes, label: str, fix: str) -> Image.Image:
    """The decoded image of ``data`` (``label`` names it in errors, ``fix`` says what to do)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"Image {label} cannot be decoded ({type(err).__name__}: {err}). {fix}") from err


def split_list(dataset: str, file: str) -> list[str]:
    """The non-empty lines of a class-list file shipped with the package (``metaland/data/splits/``)."""
    text = resources.files("metaland.data").joinpath("splits", dataset, file).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
