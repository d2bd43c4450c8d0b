"""CIFAR-FS (Bertinetto et al., "Meta-learning with differentiable closed-form solvers", ICLR 2019; seed 003).

The 100 classes of CIFAR-100 (Krizhevsky 2009), every one of its 600 images (the 500 of the official
train file, then the 100 of the test file, in file order), split by class 64 / 16 / 20 into meta-train,
validation and meta-test. Seed 003 §A.1.2 uses "the splits of Bertinetto et al. (2019)", whose
preprocessing it "exactly reproduces": 32 × 32 RGB.

Source: the official binary archive ``cifar-100-binary.tar.gz`` of the CIFAR page
(https://www.cs.toronto.edu/~kriz/cifar.html), md5 03b5dce01913d631647c71ecec9e9cb8 as published there.
Its ``train.bin`` / ``test.bin`` hold records of 3,074 bytes (coarse label, fine label, 1,024 red, 1,024
green, 1,024 blue pixels, row-major), ``fine_label_names.txt`` the class names by label. The python
version of the archive is pickled, and metaland never unpickles.

Split: the class lists of Bertinetto et al. (``bertinetto/r2d2``, ``data/cifar-fs/splits/bertinetto``;
checked against the copy in torchmeta, ``datasets/assets/cifar100/cifar-fs``), shipped as data in
``metaland/data/splits/cifar-fs/{train,val,test}.txt``. Classes of a split are in the order of its list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from metaland.data.images import rgb_pixels, split_list, square
from metaland.data.layout import SplitData, write_layout
from metaland.data.registry import DATASETS, SPLITS, ArchiveSource, DatasetSpec
from metaland.errors import DataError
from metaland.schema import Params

NAME = "cifar-fs"
CIFAR100 = ArchiveSource(
    "cifar-100-binary.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    md5="03b5dce01913d631647c71ecec9e9cb8",
)
FOLDER = "cifar-100-binary"
RECORD = 2 + 3 * 32 * 32
"""Bytes of one record of the binary version: coarse label, fine label, 32 × 32 × 3 pixels."""
FILES = ("train.bin", "test.bin")
FIX_ARCHIVE = f"Fix: use the official {CIFAR100.filename} ({CIFAR100.url})."


@dataclass(frozen=True)
class Expected:
    """The class lists of the split and the fewest images of a class."""

    classes: Mapping[str, tuple[str, ...]]
    per_class: int


BERTINETTO = Expected({split: tuple(split_list(NAME, f"{split}.txt")) for split in SPLITS}, per_class=600)
"""Bertinetto et al.'s 64 / 16 / 20 classes, 600 images each."""


class CifarFsParams(Params):
    """How the CIFAR-100 images become the normalised layout."""

    image_size: int = Field(
        32,
        ge=8,
        le=512,
        description="Side of the square RGB images in pixels; CIFAR's 32 × 32 are kept as they are (seed 003 §A.1.2 "
        "reproduces Bertinetto et al.'s preprocessing), another size is a Lanczos resize.",
    )


def read_records(folder: Path, file: str) -> tuple[np.ndarray, np.ndarray]:
    """Fine labels [N] and pixels uint8 [N, 3, 32, 32] of one binary file."""
    path = folder / file
    if not path.is_file():
        raise DataError(f"The archive holds no {FOLDER}/{file}. {FIX_ARCHIVE}")
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise DataError(
            f"{FOLDER}/{file} is {raw.size} bytes, not a whole number of {RECORD}-byte records. {FIX_ARCHIVE}"
        )
    records = raw.reshape(-1, RECORD)
    return records[:, 1].astype(np.int64), records[:, 2:].reshape(-1, 3, 32, 32)


def fine_names(folder: Path) -> list[str]:
    path = folder / "fine_label_names.txt"
    if not path.is_file():
        raise DataError(f"The archive holds no {FOLDER}/fine_label_names.txt. {FIX_ARCHIVE}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_classes(names: list[str], expected: Expected) -> None:
    """Refuse an archive whose classes differ from the split's (disjointness is the lists' own)."""
    listed = [c for split in SPLITS for c in expected.classes[split]]
    missing = [c for c in listed if c not in names]
    if missing or len(names) != len(set(names)):
        raise DataError(
            f"{FOLDER}/fine_label_names.txt lacks the classes {', '.join(missing[:5])} of Bertinetto et al.'s split "
            f"(or names one twice). {FIX_ARCHIVE}"
        )


def split_data(
    classes: tuple[str, ...], names: list[str], labels: np.ndarray, pixels: np.ndarray, params: CifarFsParams, per: int
) -> SplitData:
    """The images of ``classes``, class after class, each class in file order."""
    blocks = []
    for name in classes:
        mine = pixels[labels == names.index(name)]
        if len(mine) < per:
            raise DataError(f"Class {name} has {len(mine)} images in the archive, fewer than {per}. {FIX_ARCHIVE}")
        block = torch.from_numpy(mine.copy())
        if params.image_size != 32:
            resized = (square(Image.fromarray(image.transpose(1, 2, 0)), params.image_size) for image in mine)
            block = torch.stack([rgb_pixels(image) for image in resized])
        blocks.append(block)
    offsets = torch.tensor([0] + [len(block) for block in blocks]).cumsum(0)
    return SplitData(torch.cat(blocks), offsets, classes)


def build(expected: Expected, params: CifarFsParams, archives: Mapping[str, Path], out_dir: Path) -> None:
    """Write the layout of the extracted archive into ``out_dir``, split by Bertinetto et al.'s lists."""
    ((_, top),) = archives.items()
    folder = top / FOLDER
    names = fine_names(folder)
    check_classes(names, expected)
    parts = [read_records(folder, file) for file in FILES]
    labels = np.concatenate([labels for labels, _ in parts])
    if labels.max() >= len(names):
        raise DataError(f"A record has fine label {labels.max()}, beyond the {len(names)} class names. {FIX_ARCHIVE}")
    pixels = np.concatenate([pixels for _, pixels in parts])
    splits = {s: split_data(expected.classes[s], names, labels, pixels, params, expected.per_class) for s in SPLITS}
    write_layout(out_dir, splits, {"split": "Bertinetto et al. 2019 (CIFAR-FS)", "files": list(FILES)})


def make_spec(expected: Expected, source: ArchiveSource) -> DatasetSpec:
    """The dataset of ``expected`` built from ``source``; registered with the official archive."""
    return DatasetSpec(
        name=NAME,
        description="CIFAR-FS: CIFAR-100's 100 classes × 600 images, 32 × 32 RGB, Bertinetto et al.'s split 64/16/20.",
        sources=lambda _params: (source,),
        config_model=CifarFsParams,
        split_sizes=lambda _params: {s: len(expected.classes[s]) for s in SPLITS},
        min_instances=lambda _params: expected.per_class,
        build=partial(build, expected),
        channels=3,
    )


DATASETS.register(NAME, make_spec(BERTINETTO, CIFAR100))
