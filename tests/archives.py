"""Generated archives of the real datasets' layouts, for the loader tests: files, JPEGs, zips and tars."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def jpeg(rng: random.Random, width: int, height: int) -> bytes:
    """A JPEG of random RGB pixels."""
    image = Image.frombytes("RGB", (width, height), bytes(rng.randrange(256) for _ in range(width * height * 3)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """An uncompressed tar of ``members``, in memory (a tar inside a tar)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def digest(path: Path, algorithm: str = "sha256") -> str:
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


def rgb(image: Image.Image) -> torch.Tensor:
    """uint8 [3, H, W] of a PIL image, written out independently of the loaders."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def lanczos(image: Image.Image, size: int) -> torch.Tensor:
    """The expected pixels of an image the loaders resize: RGB, Lanczos to ``size`` square unless it is already."""
    image = image.convert("RGB")
    return rgb(image if image.size == (size, size) else image.resize((size, size), Image.Resampling.LANCZOS))
