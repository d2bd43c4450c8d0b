"""The normalised on-disk layout of a fetched dataset (described in ``metaland.data.registry``).

Each split is one safetensors file with two tensors: ``images`` (uint8 ``[N, C, H, W]``, 255 = ink;
float32 for generated datasets whose samples are the model inputs as they are, seed 003 §A.1.1)
and ``offsets`` (int64 ``[classes + 1]``; class ``c`` owns ``images[offsets[c]:offsets[c + 1]]``).
Class names live in ``classes.json`` and provenance in ``manifest.json``. Writing is
byte-deterministic: the same splits and manifest give identical files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from metaland.data.registry import SPLITS
from metaland.errors import DataError
from metaland.io import file_digest, read_json, write_json, write_safetensors

CLASSES_FILE = "classes.json"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class SplitData:
    """The images of one split, grouped by class; the invariants are checked on construction."""

    images: torch.Tensor  # uint8 [N, C, H, W] (float32: generated features, used as they are)
    offsets: torch.Tensor  # int64 [classes + 1]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        problem = _layout_problem(self)
        if problem:
            raise ValueError(problem)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def instances(self, c: int) -> int:
        """How many images class ``c`` has."""
        return int(self.offsets[c + 1] - self.offsets[c])

    def min_instances(self) -> int:
        """The image count of the smallest class."""
        return int(self.offsets.diff().min())


def split_file(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.safetensors"


def write_split(out_dir: Path, split: str, data: SplitData) -> None:
    """Write ``<out_dir>/<split>.safetensors`` atomically (class names go to ``classes.json``)."""
    tensors = {"images": data.images.contiguous(), "offsets": data.offsets.contiguous()}
    write_safetensors(split_file(out_dir, split), tensors, f"the {split} split of {Path(out_dir).name}")


def write_layout(out_dir: Path, splits: Mapping[str, SplitData], manifest: Mapping[str, Any]) -> None:
    """Write the split files, ``classes.json`` and ``manifest.json`` into ``out_dir``.

    ``splits`` holds all three splits, or (a dataset of fixed evaluation episodes, ``DatasetSpec.splits``)
    some of them. The manifest is ``manifest`` plus what the splits themselves say: ``counts`` (classes and
    images per split) and ``image_shape`` (``[C, H, W]``, shared by all splits).
    """
    if not splits or not set(splits) <= set(SPLITS):
        raise ValueError(f"a layout needs some of the splits {SPLITS}, got {sorted(splits)}")
    names = [s for s in SPLITS if s in splits]
    shapes = {tuple(data.images.shape[1:]) for data in splits.values()}
    if len(shapes) != 1:
        raise ValueError(f"all splits must share one image shape, got {sorted(shapes)}")
    for split in names:
        write_split(out_dir, split, splits[split])
    write_json(Path(out_dir) / CLASSES_FILE, {s: list(splits[s].class_names) for s in names})
    counts = {s: {"classes": splits[s].num_classes, "images": len(splits[s].images)} for s in names}
    write_json(
        Path(out_dir) / MANIFEST_FILE,
        {**manifest, "counts": counts, "image_shape": list(shapes.pop())},
    )


def load_split(data_dir: Path, split: str) -> SplitData:
    """Read one split of a fetched dataset from ``data_dir`` (``data/<dataset>``).

    A missing folder or file, or a file that breaks the layout, raises :class:`DataError` that
    says how to rebuild it.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; the splits are {SPLITS}")
    data_dir = Path(data_dir)
    path = split_file(data_dir, split)
    for required in (path, data_dir / CLASSES_FILE):
        if not required.is_file():
            raise DataError(
                f"Dataset file {required} does not exist, so dataset {data_dir.name!r} has not "
                f"been fetched into {data_dir}. Fix: {_refetch(data_dir)}."
            )
    try:
        tensors = load_file(path)
        names = read_json(data_dir / CLASSES_FILE)[split]
        data = SplitData(tensors["images"], tensors["offsets"], tuple(names))
        manifest = data_dir / MANIFEST_FILE
        shape = read_json(manifest).get("image_shape") if manifest.is_file() else None
        if shape is not None and list(data.images.shape[1:]) != list(shape):
            raise ValueError(
                f"its images are {list(data.images.shape[1:])}, but {manifest} gives every split {list(shape)}"
            )
        return data
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"Dataset file {path} (or {data_dir / CLASSES_FILE}) is corrupt "
            f"({type(err).__name__}: {err}). Fix: delete {data_dir} and {_refetch(data_dir)}."
        ) from None


def dataset_digest(data_dir: Path) -> str:
    """sha256 identifying a fetched dataset's content: its manifest, which lists the sha256 of every
    file of the layout (written by fetch); for a layout written otherwise, the files themselves."""
    data_dir = Path(data_dir)
    manifest = data_dir / MANIFEST_FILE
    digest = hashlib.sha256(manifest.read_bytes())
    if "files" not in read_json(manifest):
        for path in sorted(p for p in data_dir.iterdir() if p.is_file() and p.name != MANIFEST_FILE):
            digest.update(f"\0{path.name}\0{file_digest(path)}".encode())
    return digest.hexdigest()


def _layout_problem(data: SplitData) -> str | None:
    """Why ``data`` breaks the layout, or ``None`` when it is consistent."""
    images, offsets = data.images, data.offsets
    if images.dtype not in (torch.uint8, torch.float32) or images.dim() != 4:
        return f"images must be uint8 or float32 [N, C, H, W], got {images.dtype} {list(images.shape)}"
    if offsets.dtype != torch.int64 or offsets.dim() != 1:
        return f"offsets must be a 1-D int64 tensor, got {offsets.dtype} {list(offsets.shape)}"
    if not all(isinstance(name, str) for name in data.class_names):
        return "class names must be strings"
    if len(set(data.class_names)) != len(data.class_names):
        return "class names must be unique"
    if not data.class_names or len(offsets) != len(data.class_names) + 1:
        return f"{len(offsets)} offsets for {len(data.class_names)} classes (need classes + 1 >= 2)"
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0 or last != len(images):
        return f"offsets must run from 0 to {len(images)} (the image count), got {first}..{last}"
    if not bool((offsets.diff() > 0).all()):
        return "offsets must increase strictly (every class owns at least one image)"
    return None


def _refetch(data_dir: Path) -> str:
    name = data_dir.name
    return f"run `dvc repro fetch@{name}` or `python -m metaland fetch {name}`"
