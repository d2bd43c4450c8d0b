"""Omniglot (Lake, Salakhutdinov & Tenenbaum, Science 2015) from its official archives.

Two datasets share one builder:

- ``omniglot-small``: the background "small1" + "small2" archives. Greek and Latin appear in both
  (same characters, same drawings), so the union holds 8 alphabets and 242 characters with
  20 drawings each (mirror README). This is the CPU-sized default.
- ``omniglot``: images_background + images_evaluation, 964 + 659 = 1623 characters (seed 000
  §2.7.2: "1623 classes, each comprising 20 instances").

Both archives lay out ``<top>/<Alphabet>/characterNN/<id>_<drawer>.png`` (105x105, 1-bit). The
class split is drawn over base characters, before rotations, so the rotated copies of a character
never straddle two splits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from pydantic import Field, model_validator

from metaland.data.layout import SplitData, write_layout
from metaland.data.registry import DATASETS, SPLITS, ArchiveSource, DatasetSpec
from metaland.errors import ConfigError, DataError
from metaland.schema import Params
from metaland.seeding import generator

URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{}"
DRAWINGS_PER_CHARACTER = 20
"""Drawings of every Omniglot character (seed 000 §2.7.2; mirror README: "20 each")."""
ROTATIONS = (0, 90, 180, 270)
"""Angles (counter-clockwise) that make a base character into classes, as in ``cbfinn/maml``."""
SMALL_CHARACTERS = 242
"""Distinct characters of small1 (136) + small2 (156), Greek and Latin counted once (README)."""
FULL_CHARACTERS = 964 + 659
"""Characters of images_background + images_evaluation (mirror README)."""


class SplitFractions(Params):
    """Fractions of the base characters that go to each split; they must sum to 1."""

    train: float = Field(
        0.6,
        gt=0,
        lt=1,
        description="Meta-train share of base characters. metaland default: seed 000 §2.7.2 "
        "states no split; Finn et al. use 1200/100/423 of 1623 (seed 003 §A.1.1).",
    )
    val: float = Field(0.1, gt=0, lt=1, description="Validation share of base characters (metaland default).")
    test: float = Field(0.3, gt=0, lt=1, description="Meta-test share of base characters (metaland default).")

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1) > 1e-9:
            raise ValueError(f"train + val + test must sum to 1, got {total!r}")
        return self


class OmniglotParams(Params):
    """How the Omniglot archives become the normalised layout."""

    image_size: int = Field(
        28,
        ge=8,
        le=105,
        description="Side of the square images in pixels, downsampled from 105 with Lanczos "
        "(seed 000 §2.7.2: images are downsampled to 28x28).",
    )
    rotations: bool = Field(
        True,
        description="Add each character rotated by 90, 180 and 270 degrees as three new classes "
        "(cbfinn/maml and seed 003 §A.1.1 convention; seed 000 is silent).",
    )
    split: SplitFractions = Field(
        default_factory=SplitFractions,
        description="Train/val/test fractions of the base characters (before rotations).",
    )
    split_seed: int = Field(0, ge=0, description="Seed of the class split (a permutation of the sorted characters).")


@dataclass(frozen=True)
class Character:
    """One base character: its alphabet, folder name and drawing files (sorted by name)."""

    alphabet: str
    name: str
    drawings: tuple[Path, ...]

    @property
    def key(self) -> str:
        return f"{self.alphabet}/{self.name}"


def split_counts(n: int, fractions: SplitFractions) -> dict[str, int]:
    """Base characters per split: rounded train and val shares, the rest to test.

    The one place the counts come from, for validation (``split_sizes``) and data (``build``).
    """
    n_train, n_val = round(n * fractions.train), round(n * fractions.val)
    counts = {"train": n_train, "val": n_val, "test": n - n_train - n_val}
    for split, count in counts.items():
        if count < 1:
            raise ConfigError(
                f"Split fractions train={fractions.train}, val={fractions.val}, "
                f"test={fractions.test} leave the {split} split of {n} base characters with "
                f"{count}. Fix: raise split.{split} of this dataset so that every split gets at "
                f"least one character."
            )
    return counts


def split_sizes(n_base: int, params: OmniglotParams) -> dict[str, int]:
    """Classes per split for ``n_base`` base characters, known before anything is downloaded."""
    per_character = len(ROTATIONS) if params.rotations else 1
    return {s: k * per_character for s, k in split_counts(n_base, params.split).items()}


def min_instances(params: OmniglotParams) -> int:
    """Images per class: every class (rotated or not) holds all drawings of one character."""
    return DRAWINGS_PER_CHARACTER


def assign_splits(n: int, params: OmniglotParams, dataset: str) -> dict[str, list[int]]:
    """Indices (into the sorted base characters) of each split, each list in ascending order."""
    counts = split_counts(n, params.split)
    order = torch.randperm(n, generator=generator(params.split_seed, "class-split", dataset))
    chunks = order.split([counts[s] for s in SPLITS])
    return {s: sorted(chunk.tolist()) for s, chunk in zip(SPLITS, chunks, strict=True)}


def find_characters(folders: Iterable[Path]) -> list[Character]:
    """The characters under extracted archive folders, sorted by (alphabet, character).

    A character found in several folders (Greek and Latin in small1 and small2) is kept once; its
    copies must hold the same drawing files.
    """
    found: dict[tuple[str, str], tuple[Path, ...]] = {}
    for folder in folders:
        here: dict[tuple[str, str], list[Path]] = {}
        for png in folder.glob("*/*/*/*.png"):
            here.setdefault((png.parent.parent.name, png.parent.name), []).append(png)
        for key, pngs in here.items():
            drawings = tuple(sorted(pngs, key=lambda p: p.name))
            if key in found and [p.name for p in found[key]] != [p.name for p in drawings]:
                raise DataError(
                    f"Character {'/'.join(key)} has different drawings in {folder} than in "
                    f"{found[key][0].parents[3]}. Fix: use the published archives."
                )
            found.setdefault(key, drawings)
    return [Character(*key, found[key]) for key in sorted(found)]


def load_drawing(path: Path, size: int) -> torch.Tensor:
    """uint8 [size, size], Lanczos-resized, inverted so that ink = 255 and background = 0."""
    with Image.open(path) as image:
        gray = image.convert("L").resize((size, size), Image.Resampling.LANCZOS)
    return 255 - torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).view(size, size)


def split_data(characters: list[Character], params: OmniglotParams) -> SplitData:
    """The classes of ``characters`` in order; with rotations, 4 consecutive classes each."""
    angles = ROTATIONS if params.rotations else (0,)
    blocks, names = [], []
    for character in characters:
        drawings = torch.stack([load_drawing(p, params.image_size) for p in character.drawings])
        for angle in angles:
            blocks.append(torch.rot90(drawings, angle // 90, dims=(-2, -1)).unsqueeze(1))
            names.append(f"{character.key}/rot{angle:03d}" if params.rotations else character.key)
    offsets = torch.tensor([0] + [len(block) for block in blocks]).cumsum(0)
    return SplitData(torch.cat(blocks), offsets, tuple(names))


def build(dataset: str, params: OmniglotParams, archives: Mapping[str, Path], out_dir: Path) -> None:
    """Write the layout of ``dataset`` from its extracted ``archives`` into ``out_dir``."""
    characters = find_characters(archives.values())
    if not characters:
        raise DataError(
            f"No <Alphabet>/<character>/*.png drawings found in the archives "
            f"{', '.join(archives)} of {dataset}. Fix: use the published archives."
        )
    short = [c.key for c in characters if len(c.drawings) < DRAWINGS_PER_CHARACTER]
    if short:
        raise DataError(
            f"Characters {', '.join(short[:5])} of {dataset} have fewer than "
            f"{DRAWINGS_PER_CHARACTER} drawings. Fix: use the published archives."
        )
    assignment = assign_splits(len(characters), params, dataset)
    splits = {s: split_data([characters[i] for i in idx], params) for s, idx in assignment.items()}
    manifest = {
        "alphabets": len({c.alphabet for c in characters}),
        "base_characters": {s: len(idx) for s, idx in assignment.items()},
    }
    write_layout(out_dir, splits, manifest)


def _register(name: str, description: str, base_characters: int, sources: tuple[ArchiveSource, ...]) -> None:
    DATASETS.register(
        name,
        DatasetSpec(
            name=name,
            description=description,
            sources=lambda _params: sources,
            config_model=OmniglotParams,
            split_sizes=partial(split_sizes, base_characters),
            min_instances=min_instances,
            build=partial(build, name),
            channels=1,
        ),
    )


def _source(filename: str, md5: str, sha256: str | None = None) -> ArchiveSource:
    return ArchiveSource(filename, URL.format(filename), sha256=sha256, md5=md5)


_register(
    "omniglot-small",
    "Omniglot background small1 + small2: 8 alphabets, 242 characters x 20 drawings.",
    SMALL_CHARACTERS,
    (
        _source(
            "images_background_small1.zip",
            md5="e704a628b5459e08445c13499850abc4",
            sha256="f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
        ),
        _source(
            "images_background_small2.zip",
            md5="b75a71a51d3b13f821f212756fe481fd",
            sha256="3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
        ),
    ),
)
_register(
    "omniglot",
    "Omniglot background + evaluation: 50 alphabets, 1623 characters x 20 drawings.",
    FULL_CHARACTERS,
    (
        _source("images_background.zip", md5="68d2efa1b9178cc56df9314c21c6e718"),
        _source("images_evaluation.zip", md5="6b91aef0f799c5bb55b94e3f2daec811"),
    ),
)
