"""MiniImagenet (Vinyals et al. 2016) with the class split of Ravi & Larochelle (ICLR 2017).

100 ImageNet classes x 600 RGB images at 84x84 (seed 000 §2.7.2, spec §3.1). The thesis states a
64/12/24 train/val/test class split but publishes no split files; metaland uses the published
Ravi & Larochelle CSVs, whose split is 64/16/20 [external], so anyone can rebuild the same classes.

Source layout: one archive (zip or tar) holding, under any folder (a single top folder is common)::

    <folder>/images/<filename>.jpg    e.g. n0153282900000005.jpg
    <folder>/train.csv                header ``filename,label``; label = WordNet id, e.g. n01532829
    <folder>/val.csv
    <folder>/test.csv

There is no canonical public archive, so the user gives its address (``url``, or none to take it
from the mirror folder or the download cache) and its ``sha256``. Mirrors that ship pickled arrays
(``*.pkl``) are refused: unpickling a downloaded file can run arbitrary code, and metaland never
unpickles.

Classes keep the order of their first row in their CSV, images the order of their rows. Images
are converted to RGB and, only when not already ``image_size`` square, resized with Lanczos, as
``cbfinn/maml`` (``data/miniImagenet/proc_images.py``) does [external].
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from pydantic import Field, field_validator

from metaland.data.archive import TAR_SUFFIXES
from metaland.data.layout import SplitData, write_layout
from metaland.data.registry import DATASETS, SPLITS, ArchiveSource, DatasetSpec
from metaland.errors import ConfigError, DataError
from metaland.schema import Params

NAME = "miniimagenet"
CSV_HEADER = ["filename", "label"]
IMAGES_FOLDER = "images"
PICKLE_SUFFIXES = (".pkl", ".pickle")
FIX_ARCHIVE = (
    "Fix: use an archive of the images and the published Ravi & Larochelle split (images/*.jpg, "
    f"train.csv, val.csv, test.csv), and set datasets.{NAME}.filename and sha256 to it."
)


@dataclass(frozen=True)
class Expected:
    """What the split CSVs must hold: classes per split and the fewest images of a class."""

    classes: Mapping[str, int]
    per_class: int


RAVI_LAROCHELLE = Expected(classes={"train": 64, "val": 16, "test": 20}, per_class=600)
"""The published CSVs: 64/16/20 classes of 600 images (the thesis states 64/12/24, seed 000 §3.1)."""


class MiniImagenetParams(Params):
    """Which MiniImagenet archive to use and how its images become the normalised layout."""

    image_size: int = Field(
        84,
        ge=8,
        le=512,
        description="Side of the square RGB images in pixels; images of another size are resized with "
        "Lanczos (seed 000 §2.7.2: 84x84).",
    )
    url: str = Field(
        "",
        pattern=r"^(https?://\S+)?$",
        description="Public address of the archive, given by the user since no canonical archive exists "
        "(metaland default: empty, the archive then comes from the mirror folder or the download cache).",
    )
    filename: str = Field(
        "mini-imagenet.zip",
        description="File name of the archive in the mirror and the cache; its extension (.zip, .tar, "
        ".tar.gz, .tgz, ...) says how it is unpacked (metaland default).",
    )
    sha256: str = Field(
        "",
        pattern=r"^([0-9a-fA-F]{64})?$",
        description="sha256 of the archive (64 hex digits), given by the user since no canonical archive "
        "exists; fetch refuses to run while it is empty (metaland default: empty).",
    )

    @field_validator("filename")
    @classmethod
    def _archive_name(cls, value: str) -> str:
        if "/" in value or "\\" in value or value.startswith("."):
            raise ValueError(f"must be a plain file name, got {value!r}")
        if not value.lower().endswith((".zip", *TAR_SUFFIXES)):
            raise ValueError(f"must end in .zip or one of {', '.join(TAR_SUFFIXES)}, got {value!r}")
        return value


@dataclass(frozen=True)
class Extracted:
    """The extracted archive: its file name, its extraction folder and the folder of the CSVs."""

    archive: str
    top: Path
    root: Path

    def describe(self, path: Path) -> str:
        """``path`` as the user can find it: relative to the archive, then the archive's name."""
        return f"{path.relative_to(self.top).as_posix()} in {self.archive}"


def sources(params: MiniImagenetParams) -> tuple[ArchiveSource, ...]:
    """The one archive the params name; refused before any work while its checksum is unset."""
    if not params.sha256:
        raise ConfigError(
            f"datasets.{NAME}.sha256 is empty: there is no canonical public MiniImagenet archive, so fetch "
            f"verifies the one you use against the checksum you give. Fix: set datasets.{NAME}.sha256 to the "
            f"output of `sha256sum {params.filename}` for an archive you trust (and datasets.{NAME}.url to its "
            f"address, or put it in the mirror folder)."
        )
    return (ArchiveSource(params.filename, params.url, sha256=params.sha256.lower()),)


def find_root(archive: str, top: Path) -> Extracted:
    """Locate the one folder (at any depth) that holds the split CSVs; refuse pickled mirrors."""
    folders = sorted({path.parent for split in SPLITS for path in top.rglob(f"{split}.csv")})
    if len(folders) == 1:
        return Extracted(archive, top, folders[0])
    if folders:
        where = ", ".join(f"{f.relative_to(top).as_posix()}/" for f in folders)
        raise DataError(f"Archive {archive} holds split CSVs in several folders ({where}). {FIX_ARCHIVE}")
    if any(path.name.lower().endswith(PICKLE_SUFFIXES) for path in top.rglob("*")):
        raise DataError(
            f"Archive {archive} is a pickled MiniImagenet mirror (*.pkl files, no split CSVs). Pickled "
            f"mirrors are not loaded: unpickling a downloaded file can run arbitrary code, and metaland "
            f"never unpickles. {FIX_ARCHIVE}"
        )
    raise DataError(f"Archive {archive} holds no train.csv, val.csv or test.csv. {FIX_ARCHIVE}")


def read_split_csv(path: Path, label: str) -> dict[str, list[str]]:
    """Image file names by class, classes in order of first row and files in row order.

    ``label`` names the file in errors. Each row must be a plain file name and a class.
    """
    if not path.is_file():
        raise DataError(f"Split file {label} is missing. {FIX_ARCHIVE}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if row]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"Split file {label} is not a UTF-8 CSV ({type(err).__name__}: {err}). {FIX_ARCHIVE}") from err
    if not rows or rows[0] != CSV_HEADER:
        header = ",".join(rows[0]) if rows else "nothing"
        raise DataError(f"Split file {label} starts with {header!r}, not the header 'filename,label'. {FIX_ARCHIVE}")
    classes: dict[str, list[str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not _plain_file_name(row[0]) or not row[1]:
            raise DataError(f"Split file {label} line {line} is not a 'filename,label' row: {row!r}. {FIX_ARCHIVE}")
        classes.setdefault(row[1], []).append(row[0])
    return classes


def _plain_file_name(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name


def check_splits(splits: Mapping[str, dict[str, list[str]]], expected: Expected, source: Extracted) -> None:
    """Refuse a class in two splits, and splits other than ``expected`` (what config validation trusts)."""
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1 :]:
            shared = [c for c in splits[first] if c in splits[second]]
            if shared:
                raise DataError(
                    f"Class {shared[0]} is in both {source.describe(source.root / f'{first}.csv')} and "
                    f"{second}.csv ({len(shared)} classes are shared), so tasks of the two splits would share "
                    f"classes. {FIX_ARCHIVE}"
                )
    counts = {split: len(classes) for split, classes in splits.items()}
    if counts != dict(expected.classes):
        raise DataError(
            f"The split CSVs in {source.archive} hold {counts} classes, but {NAME} is declared with the "
            f"published Ravi & Larochelle split {dict(expected.classes)}. {FIX_ARCHIVE}"
        )
    for split, classes in splits.items():
        short = [c for c, files in classes.items() if len(files) < expected.per_class]
        if short:
            raise DataError(
                f"Classes {', '.join(short[:5])} of {source.describe(source.root / f'{split}.csv')} list fewer "
                f"than {expected.per_class} images. {FIX_ARCHIVE}"
            )


def check_images_exist(classes: Mapping[str, list[str]], split: str, source: Extracted) -> None:
    """Refuse a split whose CSV lists image files that the archive lacks."""
    images = source.root / IMAGES_FOLDER
    missing = [name for files in classes.values() for name in files if not (images / name).is_file()]
    if missing:
        raise DataError(
            f"Image {source.describe(images / missing[0])}, listed in {split}.csv, is missing; "
            f"{len(missing)} of the {split}.csv images are. {FIX_ARCHIVE}"
        )


def load_image(path: Path, size: int, label: str) -> tuple[torch.Tensor, bool]:
    """uint8 [3, size, size] RGB, Lanczos-resized only when not already that size; and whether it was."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(
            f"Image {label} cannot be decoded ({type(err).__name__}: {err}). Fix: the archive is damaged; "
            f"fetch an intact copy of it (the sha256 you give must be that copy's)."
        ) from err
    resized = rgb.size != (size, size)
    if resized:
        rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
    pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return pixels.permute(2, 0, 1), resized


def split_data(classes: Mapping[str, list[str]], size: int, source: Extracted) -> tuple[SplitData, int]:
    """The split's images, class after class, and how many of them were resized."""
    files = [source.root / IMAGES_FOLDER / name for names in classes.values() for name in names]
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    resized = 0
    for i, path in enumerate(files):
        images[i], was_resized = load_image(path, size, source.describe(path))
        resized += was_resized
    offsets = torch.tensor([0] + [len(names) for names in classes.values()]).cumsum(0)
    return SplitData(images, offsets, tuple(classes)), resized


def build(expected: Expected, params: MiniImagenetParams, archives: Mapping[str, Path], out_dir: Path) -> None:
    """Write the layout from the one extracted archive into ``out_dir``, checking it against ``expected``."""
    ((archive, top),) = archives.items()
    source = find_root(archive, top)
    splits = {s: read_split_csv(source.root / f"{s}.csv", source.describe(source.root / f"{s}.csv")) for s in SPLITS}
    check_splits(splits, expected, source)
    for split, classes in splits.items():
        check_images_exist(classes, split, source)
    built = {split: split_data(classes, params.image_size, source) for split, classes in splits.items()}
    manifest = {
        "csv_folder": source.root.relative_to(top).as_posix(),
        "resized_images": sum(resized for _, resized in built.values()),
    }
    write_layout(out_dir, {split: data for split, (data, _) in built.items()}, manifest)


def make_spec(expected: Expected) -> DatasetSpec:
    """The dataset whose CSVs must hold ``expected``; registered with :data:`RAVI_LAROCHELLE`."""
    return DatasetSpec(
        name=NAME,
        description="MiniImagenet: 100 ImageNet classes x 600 RGB images, Ravi & Larochelle split 64/16/20.",
        sources=sources,
        config_model=MiniImagenetParams,
        split_sizes=lambda _params: dict(expected.classes),
        min_instances=lambda _params: expected.per_class,
        build=partial(build, expected),
        channels=3,
    )


DATASETS.register(NAME, make_spec(RAVI_LAROCHELLE))
