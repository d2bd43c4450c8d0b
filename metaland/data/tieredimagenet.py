"""tieredImageNet (Ren et al., "Meta-learning for semi-supervised few-shot classification", ICLR 2018; seed 004).

608 ImageNet (ILSVRC-12) classes grouped into 34 high-level categories; the categories, not the
classes, are split: 20 categories (351 classes) for meta-training, 6 (97) for validation, 8 (160) for
meta-testing, so test classes are far from the training ones. Every ILSVRC-12 *training* image of a
class is kept (732 to 1,300 per class), resized to 84 × 84 RGB as Ren et al.'s release is.

Source: the ImageNet training set **you already have**: ImageNet is licence-gated, so metaland never
downloads it. ``path`` names either the folder of the training images (``<path>/<wnid>/*.JPEG``, or
``<path>/train/<wnid>/*.JPEG``) or the official archive ``ILSVRC2012_img_train.tar`` (one ``<wnid>.tar``
per class inside), whose published md5 1d675b47d978889d74fa0da5fadfb00e is verified first; the archive is
streamed, the 392 classes tieredImageNet leaves out are skipped and nothing is unpacked to disk. Pickled
copies of tieredImageNet (``*.pkl``) are refused: metaland never unpickles.

Split: Ren et al.'s class lists (``renmengye/few-shot-ssl-public``, ``tiered_imagenet_split/{train,val,
test}.csv``: ``<wnid>,<category wnid>`` per line), shipped as data in ``metaland/data/splits/tieredimagenet``.
Classes of a split keep the order of its list, images their file-name order. Images are converted to RGB
and resized with Lanczos (metaland's choice, as for MiniImagenet; Ren et al.'s resizing is inside their
pickles). The layout holds 779,165 images at 84 px (about 16.5 GB of pixels): fetch needs RAM for about
twice its largest split (train: 9.5 GB).
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from pydantic import Field

from metaland.data.images import decode, rgb_pixels, split_list, square
from metaland.data.layout import SplitData, write_layout
from metaland.data.registry import DATASETS, SPLITS, DatasetSpec
from metaland.errors import ConfigError, DataError
from metaland.io import file_digest
from metaland.schema import Params

NAME = "tieredimagenet"
ARCHIVE = "ILSVRC2012_img_train.tar"
ARCHIVE_MD5 = "1d675b47d978889d74fa0da5fadfb00e"
"""md5 of the official ILSVRC-12 training archive (image-net.org; as pinned by torchvision's ImageNet)."""
WNID = re.compile(r"n\d{8}")
IMAGE_SUFFIXES = (".jpeg", ".jpg")
PICKLE_SUFFIXES = (".pkl", ".pickle")
FIX_SOURCE = (
    f"Fix: set datasets.{NAME}.path to the ILSVRC-12 training images you have: the folder of <wnid>/*.JPEG "
    f"folders, or {ARCHIVE}."
)


@dataclass(frozen=True)
class Expected:
    """The classes of each split (``(wnid, category wnid)`` in list order), the fewest images of a class, and the
    md5 of the ImageNet archive they come from."""

    classes: Mapping[str, tuple[tuple[str, str], ...]]
    per_class: int
    archive_md5: str = ARCHIVE_MD5

    def wnids(self) -> dict[str, str]:
        """Every class's split."""
        return {wnid: split for split in SPLITS for wnid, _ in self.classes[split]}


def _ren_split(split: str) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(line.split(",")) for line in split_list(NAME, f"{split}.csv"))  # type: ignore[misc]


REN = Expected({split: _ren_split(split) for split in SPLITS}, per_class=732)
"""Ren et al.'s 351 / 97 / 160 classes (20 / 6 / 8 categories); ILSVRC-12 classes have 732 to 1,300 training
images, so 732 is what config validation may trust."""


class TieredImagenetParams(Params):
    """Where the ImageNet training images are and how they become the normalised layout."""

    image_size: int = Field(
        84, ge=8, le=512, description="Side of the square RGB images in pixels, a Lanczos resize (Ren et al.: 84)."
    )
    path: str = Field(
        "",
        description="The ILSVRC-12 training images you have: a folder of <wnid>/*.JPEG (or of train/<wnid>/*.JPEG), or "
        f"{ARCHIVE} (its md5 is verified). Licence-gated: never downloaded by metaland (default: empty; fetch "
        "refuses to run until it is set).",
    )


def sources(params: TieredImagenetParams) -> tuple:
    """Nothing to download; refused before any work while ``path`` is unset or missing."""
    if not params.path:
        raise ConfigError(
            f"datasets.{NAME}.path is empty: tieredImageNet is built from the ImageNet (ILSVRC-12) training set, "
            f"which is licence-gated and never downloaded by metaland. {FIX_SOURCE}"
        )
    if not Path(params.path).expanduser().exists():
        raise ConfigError(f"datasets.{NAME}.path = {params.path!r} does not exist on this machine. {FIX_SOURCE}")
    return ()


def class_images(root: Path, expected: Expected, size: int) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(wnid, file name, pixels) of every image of the listed classes under a folder of class folders."""
    folder = root / "train" if not any((root / w).is_dir() for w in expected.wnids()) else root
    missing = [w for w in expected.wnids() if not (folder / w).is_dir()]
    if missing:
        if any(p.name.lower().endswith(PICKLE_SUFFIXES) for p in root.rglob("*")):
            raise DataError(
                f"{root} holds a pickled tieredImageNet (*.pkl), not ImageNet class folders. Pickled copies are not "
                f"loaded: unpickling a file can run arbitrary code, and metaland never unpickles. {FIX_SOURCE}"
            )
        raise DataError(
            f"{folder} lacks the class folders {', '.join(missing[:5])} ({len(missing)} of the {len(expected.wnids())} "
            f"tieredImageNet classes). {FIX_SOURCE}"
        )
    for wnid in expected.wnids():
        files = sorted(p for p in (folder / wnid).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for file in files:
            image = decode(file.read_bytes(), f"{wnid}/{file.name}", FIX_SOURCE)
            yield wnid, file.name, rgb_pixels(square(image, size))


def archive_images(archive: Path, expected: Expected, size: int) -> Iterator[tuple[str, str, torch.Tensor]]:
    """The same from ``ILSVRC2012_img_train.tar``, streamed: one ``<wnid>.tar`` per class, nothing unpacked."""
    if file_digest(archive, "md5") != expected.archive_md5:
        raise DataError(
            f"{archive} is not the published {ARCHIVE} (md5 differs from {expected.archive_md5}). {FIX_SOURCE}"
        )
    wanted = expected.wnids()
    try:
        with tarfile.open(archive, mode="r|") as outer:
            for member in outer:
                wnid = _regular(member, archive).removesuffix(".tar")
                if wnid not in wanted:
                    continue
                with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as inner:
                    for image_member in inner:
                        name = _regular(image_member, archive)
                        if name.lower().endswith(IMAGE_SUFFIXES):
                            data = inner.extractfile(image_member).read()  # type: ignore[union-attr]
                            yield wnid, name, rgb_pixels(square(decode(data, f"{wnid}.tar/{name}", FIX_SOURCE), size))
    except tarfile.TarError as err:
        raise DataError(f"{archive} cannot be read as a tar archive ({err}). {FIX_SOURCE}") from err


def _regular(member: tarfile.TarInfo, archive: Path) -> str:
    """The plain file name of a regular member; anything else (links, devices, folders) is refused."""
    if not member.isfile() or "/" in member.name.strip("./") or ".." in member.name:
        raise DataError(
            f"{archive} holds a member {member.name!r} that is not a plain file at the top of its tar, unlike the "
            f"published archive; nothing was used. {FIX_SOURCE}"
        )
    return member.name.removeprefix("./")


def build(expected: Expected, params: TieredImagenetParams, archives: Mapping[str, Path], out_dir: Path) -> None:
    """Write the layout of the listed classes from the ImageNet images at ``params.path``."""
    source = Path(params.path).expanduser()
    if source.is_dir():
        images = class_images(source, expected, params.image_size)
    elif source.name.lower().endswith(PICKLE_SUFFIXES):
        raise DataError(f"{source} is a pickled tieredImageNet: metaland never unpickles. {FIX_SOURCE}")
    else:
        images = archive_images(source, expected, params.image_size)
    by_class: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for wnid, name, pixels in images:
        by_class.setdefault(wnid, []).append((name, pixels))
    splits = {}
    for split in SPLITS:
        blocks = []
        for wnid, _ in expected.classes[split]:
            found = sorted(by_class.pop(wnid, []), key=lambda item: item[0])
            if len(found) < expected.per_class:
                raise DataError(
                    f"Class {wnid} has {len(found)} images in {source}, fewer than the {expected.per_class} every "
                    f"ILSVRC-12 training class has. {FIX_SOURCE}"
                )
            blocks.append(torch.stack([pixels for _, pixels in found]))
        offsets = torch.tensor([0] + [len(block) for block in blocks]).cumsum(0)
        splits[split] = SplitData(torch.cat(blocks), offsets, tuple(wnid for wnid, _ in expected.classes[split]))
    categories = {s: sorted({c for _, c in expected.classes[s]}) for s in SPLITS}
    write_layout(out_dir, splits, {"split": "Ren et al. 2018 (tieredImageNet)", "categories": categories})


def make_spec(expected: Expected) -> DatasetSpec:
    """The dataset of ``expected`` (registered with Ren et al.'s split)."""
    return DatasetSpec(
        name=NAME,
        description="tieredImageNet: 608 ILSVRC-12 classes in 34 categories, Ren et al.'s split 351/97/160, 84 × 84.",
        sources=sources,
        config_model=TieredImagenetParams,
        split_sizes=lambda _params: {s: len(expected.classes[s]) for s in SPLITS},
        min_instances=lambda _params: expected.per_class,
        build=partial(build, expected),
        channels=3,
    )


DATASETS.register(NAME, make_spec(REN))
