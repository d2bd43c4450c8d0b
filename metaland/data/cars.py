"""Stanford Cars (Krause et al., "3D object representations for fine-grained categorization", 2013; seed 004).

196 car models (make, model, year). Seed 004 uses Cars as its "specific" (fine-grained) domain and gives no
split or preprocessing; it follows the BOIL code (Oh et al. 2021, ``HJ-Yoo/BOIL``), which builds Cars from
the labelled training images (``cars_train.tgz``, 8,144 photographs) and the devkit annotations
(``car_devkit.tgz``: ``devkit/cars_meta.mat`` class names, ``devkit/cars_train_annos.mat`` one bounding
box, class and file name per image), crops every photograph to its bounding box and resizes it to 84 × 84.
BOIL's class lists (torchmeta assets) could not be checked here, so the split is metaland's choice, stated:
the rule of Tseng et al. (ICLR 2020, ``hytseng0509/CrossDomainFewShot``, ``filelists/cars``) for the same
images, the cross-domain few-shot convention: class index i (the devkit's label − 1) goes to meta-train if
i % 2 == 0 (98 classes), to validation if i % 4 == 1 (49), to meta-test if i % 4 == 3 (49) — the rule CUB
uses (``metaland.data.cub.split_of``). Images of a class keep their file-name order.

Where to get the archives: the original addresses (``ai.stanford.edu/~jkrause/car196/cars_train.tgz``,
``ai.stanford.edu/~jkrause/cars/car_devkit.tgz``) are offline since 2023. Take the two files from a copy you
trust (e.g. an institutional mirror, or the "Stanford Cars" datasets that republish them unchanged), then
give their addresses (``train_url``, ``devkit_url``; or put them in ``METALAND_DATA_MIRROR``). Each is
verified against the md5 the original site published (torchvision pins the same), and against the sha256
you give, when given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from metaland.data.cub import Expected, split_of
from metaland.data.images import decode, rgb_pixels, square
from metaland.data.layout import SplitData, write_layout
from metaland.data.registry import DATASETS, SPLITS, ArchiveSource, DatasetSpec
from metaland.errors import DataError
from metaland.schema import Params

NAME = "cars"
TRAIN = "cars_train.tgz"
DEVKIT = "car_devkit.tgz"
PUBLISHED_MD5 = {TRAIN: "065e5b463ae28d29e77c1b4b166cfe61", DEVKIT: "c3b158d763b6e2245038c8ad08e45376"}
"""md5 of the original archives, as published by the Stanford site and pinned by torchvision's StanfordCars."""
FIX_ARCHIVE = (
    f"Fix: use the original {TRAIN} and {DEVKIT} (cars_train/*.jpg; devkit/cars_meta.mat and "
    "devkit/cars_train_annos.mat), from a copy you trust: set datasets.cars.train_url / devkit_url (+ sha256), or "
    "put the files in METALAND_DATA_MIRROR."
)


STANFORD_CARS = Expected(classes=196, per_class=20)
"""196 classes of about 42 training images each; ``build`` refuses a class with fewer than 20 (5-shot tasks
with 15 queries), so config validation may trust it."""


class CarsParams(Params):
    """Which copies of the two archives to use and how the photographs become the layout."""

    image_size: int = Field(84, ge=8, le=512, description="Side of the square RGB images in pixels (BOIL: 84).")
    crop: Literal["bbox", "none"] = Field(
        "bbox",
        description="Crop each photograph to its annotated bounding box before the resize (bbox: BOIL's code, which "
        "seed 004 follows; none: the whole photograph, as Tseng et al.).",
    )
    train_url: str = Field(
        "",
        pattern=r"^(https?://\S+)?$",
        description=f"Address of {TRAIN}; the original is offline, so there is no default (empty: the mirror folder "
        "or the download cache).",
    )
    train_sha256: str = Field(
        "",
        pattern=r"^([0-9a-fA-F]{64})?$",
        description=f"sha256 of your copy of {TRAIN}, verified besides the published md5 (empty: the md5 only).",
    )
    devkit_url: str = Field("", pattern=r"^(https?://\S+)?$", description=f"Address of {DEVKIT} (as train_url).")
    devkit_sha256: str = Field(
        "", pattern=r"^([0-9a-fA-F]{64})?$", description=f"sha256 of your copy of {DEVKIT} (as train_sha256)."
    )


def sources(params: CarsParams) -> tuple[ArchiveSource, ...]:
    """The two archives, each with the published md5 and the user's sha256 when given."""
    return tuple(
        ArchiveSource(file, url, sha256=sha.lower() or None, md5=PUBLISHED_MD5[file])
        for file, url, sha in (
            (TRAIN, params.train_url, params.train_sha256),
            (DEVKIT, params.devkit_url, params.devkit_sha256),
        )
    )


@dataclass(frozen=True)
class Photo:
    file: str
    label: int  # 0-based class index
    box: tuple[int, int, int, int]  # x1, y1, x2, y2


def _mat(path: Path, key: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"The devkit archive holds no devkit/{path.name}. {FIX_ARCHIVE}")
    import scipy.io  # here, not at the top: every stage imports the dataset registry, only Cars reads .mat

    try:
        return scipy.io.loadmat(path)[key]  # MATLAB 5 data: no pickle
    except (ValueError, KeyError, OSError, NotImplementedError) as err:
        raise DataError(f"devkit/{path.name} cannot be read ({type(err).__name__}: {err}). {FIX_ARCHIVE}") from err


def read_annotations(devkit: Path, expected: Expected) -> tuple[list[str], list[Photo]]:
    """Class names (by 0-based index) and one :class:`Photo` per training image."""
    names = [str(entry[0]) for entry in _mat(devkit / "cars_meta.mat", "class_names")[0]]
    if len(names) != expected.classes:
        raise DataError(f"devkit/cars_meta.mat names {len(names)} classes, not {expected.classes}. {FIX_ARCHIVE}")
    photos = []
    for entry in _mat(devkit / "cars_train_annos.mat", "annotations")[0]:
        fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
        x1, y1, x2, y2, label, file = (entry[field] for field in fields)
        index = int(label.item()) - 1
        if not 0 <= index < expected.classes:
            raise DataError(f"devkit/cars_train_annos.mat gives {file.item()} the class {index + 1}. {FIX_ARCHIVE}")
        photos.append(Photo(str(file.item()), index, (int(x1.item()), int(y1.item()), int(x2.item()), int(y2.item()))))
    return names, photos


def load_photo(folder: Path, photo: Photo, params: CarsParams) -> torch.Tensor:
    path = folder / photo.file
    if "/" in photo.file or not path.is_file():
        raise DataError(f"cars_train/{photo.file}, annotated in the devkit, is missing from {TRAIN}. {FIX_ARCHIVE}")
    image = decode(path.read_bytes(), f"cars_train/{photo.file}", FIX_ARCHIVE)
    if params.crop == "bbox":
        image = image.crop(photo.box)
    return rgb_pixels(square(image, params.image_size))


def build(expected: Expected, params: CarsParams, archives: Mapping[str, Path], out_dir: Path) -> None:
    """Write the layout of the two extracted archives into ``out_dir``, split by class index (Tseng et al.)."""
    names, photos = read_annotations(archives[DEVKIT] / "devkit", expected)
    by_class: dict[int, list[Photo]] = {}
    for photo in sorted(photos, key=lambda p: p.file):
        by_class.setdefault(photo.label, []).append(photo)
    short = [names[i] for i in range(expected.classes) if len(by_class.get(i, [])) < expected.per_class]
    if short:
        raise DataError(
            f"Classes {', '.join(short[:3])} have fewer than the {expected.per_class} annotated images {NAME} declares "
            f"for task validation. {FIX_ARCHIVE}"
        )
    folder = archives[TRAIN] / "cars_train"
    splits = {}
    for split in SPLITS:
        indices = [i for i in range(expected.classes) if split_of(i) == split]
        blocks = [torch.stack([load_photo(folder, p, params) for p in by_class[i]]) for i in indices]
        offsets = torch.tensor([0] + [len(block) for block in blocks]).cumsum(0)
        splits[split] = SplitData(torch.cat(blocks), offsets, tuple(names[i] for i in indices))
    rule = "Tseng et al. 2020: class index i -> train i%2==0, val i%4==1, test i%4==3"
    write_layout(out_dir, splits, {"split_rule": rule, "images": "cars_train, devkit annotations"})


def make_spec(expected: Expected) -> DatasetSpec:
    """The dataset whose annotations must hold ``expected``; registered with :data:`STANFORD_CARS`."""
    return DatasetSpec(
        name=NAME,
        description="Stanford Cars: 196 car models, the 8,144 annotated training photographs, bounding-box crops, "
        "split 98/49/49 (Tseng et al.'s rule).",
        sources=sources,
        config_model=CarsParams,
        split_sizes=lambda _params: expected.split_sizes(),
        min_instances=lambda _params: expected.per_class,
        build=partial(build, expected),
        channels=3,
    )


DATASETS.register(NAME, make_spec(STANFORD_CARS))
