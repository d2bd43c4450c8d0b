"""CUB-200-2011 (Wah et al. 2011) with the class split of Chen et al.'s CloserLookFewShot (seed 001 §3.1).

11,788 RGB photographs of 200 bird species. Source: the official ``CUB_200_2011.tgz`` published on
CaltechDATA (seed 001 §3.1 [R]: "from data.caltech.edu"); its md5 97eceeb196236b17998738112f37df78 is
the one pinned by dataset libraries that download it (e.g. ContinualAI/avalanche's ``CUB200``,
TDeVries/cub2011_dataset) [external]. The archive holds ``CUB_200_2011/images/<nnn.Species>/<file>.jpg``.

Split (seed 001 §3.1 [R], Chen et al.'s ``write_CUB_filelist.py``): the class folders are sorted by
name and class index i goes to meta-train (``base``) if i % 2 == 0 (100 classes), to meta-validation
if i % 4 == 1 (50) and to meta-test (``novel``) if i % 4 == 3 (50). Within a class, files are kept in
name order (Chen shuffles them once without a seed; metaland's tasks draw images at random anyway);
hidden files (a leading dot) are skipped, as Chen's script does.

Images: every photograph has its own size, so each becomes ``image_size`` square by Chen et al.'s
evaluation transform (``TransformLoader``, ``Scale`` then ``CenterCrop``): a bilinear resize to
int(1.15·``image_size``) square, then the centre ``image_size`` crop (84 px: 96 → 84). That is
exactly what Chen's meta-test and non-augmented training see before normalisation, which keeps the
stored pixels faithful for every run without augmentation; augmented training then crops from these
stored images (``metaland.data.augment``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from pydantic import Field

from metaland.data.layout import SplitData, write_layout
from metaland.data.registry import DATASETS, SPLITS, ArchiveSource, DatasetSpec
from metaland.errors import DataError
from metaland.schema import Params

NAME = "cub"
IMAGES_FOLDER = Path("CUB_200_2011") / "images"
RESIZE_MARGIN = 1.15
"""Chen et al.'s ``Scale`` transform resizes to 1.15 × the final size before the centre crop."""
CALTECHDATA = ArchiveSource(
    "CUB_200_2011.tgz",
    "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
    md5="97eceeb196236b17998738112f37df78",
)
FIX_ARCHIVE = (
    f"Fix: use the official CUB_200_2011.tgz ({CALTECHDATA.url}), which holds "
    "CUB_200_2011/images/<nnn.Species>/*.jpg for 200 species."
)


@dataclass(frozen=True)
class Expected:
    """What a dataset split by :func:`split_of` must hold: classes in all, and the fewest images of a class
    (CUB's archive here; Stanford Cars's annotations in ``cars``)."""

    classes: int
    per_class: int

    def split_sizes(self) -> dict[str, int]:
        """Classes per split under Chen et al.'s rule (:func:`split_of`)."""
        counts = dict.fromkeys(SPLITS, 0)
        for index in range(self.classes):
            counts[split_of(index)] += 1
        return counts


CUB_200_2011 = Expected(classes=200, per_class=30)
"""200 species of about 60 images each (41 to 60 in the literature [external], which could not be checked
offline); ``build`` refuses a class with fewer than 30, a bound safely below that range that still
allows 5-shot tasks with 25 queries, so config validation can trust ``min_instances``."""


class CubParams(Params):
    """How the CUB photographs become the normalised layout."""

    image_size: int = Field(
        84,
        ge=8,
        le=512,
        description="Side of the square RGB images in pixels: bilinear resize to int(1.15·size) square, then "
        "the centre crop (Chen et al.'s evaluation transform; seed 001 §3.1-3.2: 84 for Conv4/Conv6, 224 for "
        "ResNet).",
    )


def split_of(index: int) -> str:
    """The split of the ``index``-th class folder in name order (Chen et al.: base / val / novel)."""
    if index % 2 == 0:
        return "train"
    return "val" if index % 4 == 1 else "test"


def class_folders(top: Path, expected: Expected) -> list[Path]:
    """The species folders in name order; refuse an archive without them or with another count."""
    images = top / IMAGES_FOLDER
    if not images.is_dir():
        raise DataError(f"The archive holds no {IMAGES_FOLDER.as_posix()}/ folder. {FIX_ARCHIVE}")
    folders = sorted((p for p in images.iterdir() if p.is_dir()), key=lambda p: p.name)
    if len(folders) != expected.classes:
        raise DataError(
            f"{IMAGES_FOLDER.as_posix()}/ holds {len(folders)} class folders, but {NAME} is declared with "
            f"{expected.classes} (the split {expected.split_sizes()} rests on it). {FIX_ARCHIVE}"
        )
    return folders


def image_files(folder: Path, expected: Expected) -> list[Path]:
    """A class's image files in name order (hidden files skipped); refuse a class with too few."""
    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=lambda p: p.name)
    if len(files) < expected.per_class:
        raise DataError(
            f"Class folder {IMAGES_FOLDER.as_posix()}/{folder.name} holds {len(files)} images, fewer than the "
            f"{expected.per_class} that {NAME} declares for task validation. {FIX_ARCHIVE}"
        )
    return files


def load_photo(path: Path, size: int) -> torch.Tensor:
    """uint8 [3, size, size]: RGB, bilinear resize to int(1.15·size) square, centre crop (Chen et al.)."""
    scaled = int(size * RESIZE_MARGIN)
    label = f"{IMAGES_FOLDER.as_posix()}/{path.parent.name}/{path.name}"
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((scaled, scaled), Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(
            f"Image {label} cannot be decoded ({type(err).__name__}: {err}). Fix: the archive is damaged; "
            f"fetch an intact copy of {CALTECHDATA.filename}."
        ) from err
    offset = round((scaled - size) / 2.0)  # torchvision's CenterCrop
    cropped = rgb.crop((offset, offset, offset + size, offset + size))
    pixels = torch.frombuffer(bytearray(cropped.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return pixels.permute(2, 0, 1)


def split_data(folders: list[Path], expected: Expected, size: int) -> SplitData:
    """The images of ``folders``, class after class, named by their folder."""
    files = [image_files(folder, expected) for folder in folders]
    images = torch.stack([load_photo(path, size) for class_files in files for path in class_files])
    offsets = torch.tensor([0] + [len(class_files) for class_files in files]).cumsum(0)
    return SplitData(images, offsets, tuple(folder.name for folder in folders))


def build(expected: Expected, params: CubParams, archives: Mapping[str, Path], out_dir: Path) -> None:
    """Write the layout of the one extracted archive into ``out_dir``, split by Chen et al.'s rule."""
    ((_, top),) = archives.items()
    folders = class_folders(top, expected)
    by_split = {split: [f for i, f in enumerate(folders) if split_of(i) == split] for split in SPLITS}
    splits = {split: split_data(members, expected, params.image_size) for split, members in by_split.items()}
    write_layout(
        out_dir, splits, {"split_rule": "Chen et al.: sorted class i -> train i%2==0, val i%4==1, test i%4==3"}
    )


def make_spec(expected: Expected, source: ArchiveSource) -> DatasetSpec:
    """The dataset of ``expected`` built from ``source``; registered with the official archive."""
    return DatasetSpec(
        name=NAME,
        description="CUB-200-2011: 200 bird species, 11,788 RGB photographs; Chen et al.'s split 100/50/50.",
        sources=lambda _params: (source,),
        config_model=CubParams,
        split_sizes=lambda _params: expected.split_sizes(),
        min_instances=lambda _params: expected.per_class,
        build=partial(build, expected),
        channels=3,
    )


DATASETS.register(NAME, make_spec(CUB_200_2011, CALTECHDATA))
