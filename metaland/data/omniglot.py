"""Omniglot (Lake, Salakhutdinov & Tenenbaum, Science 2015) from its official archives.

Two datasets share one builder:

- ``omniglot-small``: the background "small1" + "small2" archives. Greek and Latin appear in both
  (same characters, same drawings), so the union holds 8 alphabets and 242 characters with
  20 drawings each (mirror README). This is the CPU-sized default.
- ``omniglot``: images_background + images_evaluation, 964 + 659 = 1623 characters (seed 000
  §2.7.2: "1623 classes, each comprising 20 instances").

Both archives lay out ``<top>/<Alphabet>/characterNN/<id>_<drawer>.png`` (105x105, 1-bit).

Three class splits (``split_by``), each drawn before rotations, so the rotated copies of a character
never straddle two splits:

- ``characters`` (Finn et al.'s protocol, which the seeds use; the default): a seeded permutation of all
  characters, cut by ``split`` fractions. Test tasks then mix characters of the training alphabets;
- ``alphabets``: whole alphabets, a seeded permutation of them cut by ``split`` fractions, so val and test
  tasks hold alphabets never seen in training (the easier "seen alphabet" case is gone);
- ``lake`` (``omniglot`` only): Lake et al.'s protocol: test = the 20 evaluation alphabets, val = a
  ``split.val`` share of the 30 background alphabets (whole alphabets), train = the other background
  alphabets; the only split after which Lake's official one-shot runs (``omniglot-lake-runs``) are
  unseen.

``rotations`` adds each character rotated by 90, 180 and 270° as three more classes, in every split or in
the splits it names. The alphabets and their character counts are those of the published archives
(:data:`BACKGROUND_ALPHABETS`, :data:`EVALUATION_ALPHABETS`), so that every split size is known before
anything is downloaded; ``build`` refuses archives that hold other alphabets or counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

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
BACKGROUND_ALPHABETS = {
    "Alphabet_of_the_Magi": 20,
    "Anglo-Saxon_Futhorc": 29,
    "Arcadian": 26,
    "Armenian": 41,
    "Asomtavruli_(Georgian)": 40,
    "Balinese": 24,
    "Bengali": 46,
    "Blackfoot_(Canadian_Aboriginal_Syllabics)": 14,
    "Braille": 26,
    "Burmese_(Myanmar)": 34,
    "Cyrillic": 33,
    "Early_Aramaic": 22,
    "Futurama": 26,
    "Grantha": 43,
    "Greek": 24,
    "Gujarati": 48,
    "Hebrew": 22,
    "Inuktitut_(Canadian_Aboriginal_Syllabics)": 16,
    "Japanese_(hiragana)": 52,
    "Japanese_(katakana)": 47,
    "Korean": 40,
    "Latin": 26,
    "Malay_(Jawi_-_Arabic)": 40,
    "Mkhedruli_(Georgian)": 41,
    "N_Ko": 33,
    "Ojibwe_(Canadian_Aboriginal_Syllabics)": 14,
    "Sanskrit": 42,
    "Syriac_(Estrangelo)": 23,
    "Tagalog": 17,
    "Tifinagh": 55,
}
"""Characters per alphabet of images_background.zip (30 alphabets, 964 characters; Lake et al. 2015 [external]);
``build`` checks them against the archive."""
EVALUATION_ALPHABETS = {
    "Angelic": 20,
    "Atemayar_Qelisayer": 26,
    "Atlantean": 26,
    "Aurek-Besh": 26,
    "Avesta": 26,
    "Ge_ez": 26,
    "Glagolitic": 45,
    "Gurmukhi": 45,
    "Kannada": 41,
    "Keble": 26,
    "Malayalam": 47,
    "Manipuri": 40,
    "Mongolian": 30,
    "Old_Church_Slavonic_(Cyrillic)": 45,
    "Oriya": 46,
    "Sylheti": 28,
    "Syriac_(Serto)": 23,
    "Tengwar": 25,
    "Tibetan": 42,
    "ULOG": 26,
}
"""Characters per alphabet of images_evaluation.zip (20 alphabets, 659 characters): the alphabets of Lake et
al.'s one-shot runs."""
SMALL_ALPHABETS = (
    "Balinese",
    "Early_Aramaic",
    "Greek",
    "Japanese_(katakana)",
    "Korean",
    "Latin",
    "Sanskrit",
    "Tagalog",
)
"""The background alphabets of small1 + small2 (Greek and Latin in both; mirror README): 242 characters."""
SplitBy = Literal["characters", "alphabets", "lake"]


@dataclass(frozen=True)
class Family:
    """An Omniglot dataset: its archives' alphabets with their character counts (background ones, and the
    evaluation ones where the dataset has them), known before anything is downloaded."""

    name: str
    background: Mapping[str, int]
    evaluation: Mapping[str, int]

    @property
    def alphabets(self) -> dict[str, int]:
        """Every alphabet, in name order, with its character count."""
        return dict(sorted({**self.background, **self.evaluation}.items()))

    @property
    def characters(self) -> int:
        return sum(self.alphabets.values())


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


class SplitRotations(Params):
    """Which splits get the rotated copies of their characters as classes."""

    train: bool = Field(True, description="Rotated classes in meta-training (cbfinn/maml: yes).")
    val: bool = Field(True, description="Rotated classes in validation (cbfinn/maml: yes).")
    test: bool = Field(True, description="Rotated classes in meta-test (cbfinn/maml: yes; Lake et al.: no).")


class OmniglotParams(Params):
    """How the Omniglot archives become the normalised layout."""

    image_size: int = Field(
        28,
        ge=8,
        le=105,
        description="Side of the square images in pixels, downsampled from 105 with Lanczos "
        "(seed 000 §2.7.2: images are downsampled to 28x28).",
    )
    rotations: bool | SplitRotations = Field(
        True,
        description="Add each character rotated by 90, 180 and 270 degrees as three new classes "
        "(cbfinn/maml and seed 003 §A.1.1 convention; seed 000 is silent): true / false for every split, or "
        "{train, val, test} per split.",
    )
    split_by: SplitBy = Field(
        "characters",
        description="What the class split draws: characters (Finn et al.'s protocol, the seeds'; test tasks share "
        "alphabets with training); alphabets (whole alphabets held out for val and test); lake (omniglot only: "
        "test = Lake et al.'s 20 evaluation alphabets, val = a split.val share of the background alphabets).",
    )
    split: SplitFractions = Field(
        default_factory=SplitFractions,
        description="Train/val/test fractions of the base characters (split_by characters) or of the alphabets "
        "(split_by alphabets; lake uses val only, of the background alphabets).",
    )
    split_seed: int = Field(0, ge=0, description="Seed of the class split (a permutation of the sorted characters).")

    def rotated(self, split: str) -> bool:
        """Whether ``split`` holds the rotated copies of its characters."""
        return self.rotations if isinstance(self.rotations, bool) else getattr(self.rotations, split)


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


def assign_alphabets(family: Family, params: OmniglotParams) -> dict[str, list[str]]:
    """The alphabets of each split (``split_by`` alphabets or lake), each list in name order."""
    if params.split_by == "lake":
        if not family.evaluation:
            raise ConfigError(
                f"datasets.{family.name}.split_by = lake holds Lake et al.'s evaluation alphabets out for "
                f"testing, but {family.name} has none (background archives only). Fix: use split_by: alphabets, "
                "or the dataset omniglot."
            )
        background = sorted(family.background)
        n_val = max(1, round(len(background) * params.split.val))
        order = torch.randperm(len(background), generator=generator(params.split_seed, "alphabet-split", family.name))
        val = sorted(background[i] for i in order[:n_val].tolist())
        train = [a for a in background if a not in val]
        return {"train": train, "val": val, "test": sorted(family.evaluation)}
    names = list(family.alphabets)
    counts = split_counts(len(names), params.split)
    order = torch.randperm(len(names), generator=generator(params.split_seed, "alphabet-split", family.name))
    chunks = order.split([counts[s] for s in SPLITS])
    return {s: sorted(names[i] for i in chunk.tolist()) for s, chunk in zip(SPLITS, chunks, strict=True)}


def base_counts(family: Family, params: OmniglotParams) -> dict[str, int]:
    """Base characters per split (before rotations), known before anything is downloaded."""
    if params.split_by == "characters":
        return split_counts(family.characters, params.split)
    return {s: sum(family.alphabets[a] for a in names) for s, names in assign_alphabets(family, params).items()}


def split_sizes(family: Family, params: OmniglotParams) -> dict[str, int]:
    """Classes per split, known before anything is downloaded."""
    return {s: k * (len(ROTATIONS) if params.rotated(s) else 1) for s, k in base_counts(family, params).items()}


def min_instances(params: OmniglotParams) -> int:
    """Images per class: every class (rotated or not) holds all drawings of one character."""
    return DRAWINGS_PER_CHARACTER


def assign_splits(n: int, params: OmniglotParams, dataset: str) -> dict[str, list[int]]:
    """Indices (into the sorted base characters) of each split, each list in ascending order."""
    counts = split_counts(n, params.split)
    order = torch.randperm(n, generator=generator(params.split_seed, "class-split", dataset))
    chunks = order.split([counts[s] for s in SPLITS])
    return {s: sorted(chunk.tolist()) for s, chunk in zip(SPLITS, chunks, strict=True)}


def assign_characters(characters: list[Character], family: Family, params: OmniglotParams) -> dict[str, list[int]]:
    """Indices (into the sorted characters) of each split under ``params.split_by``."""
    if params.split_by == "characters":
        return assign_splits(len(characters), params, family.name)
    alphabets = assign_alphabets(family, params)
    return {s: [i for i, c in enumerate(characters) if c.alphabet in names] for s, names in alphabets.items()}


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


def split_data(characters: list[Character], params: OmniglotParams, *, rotated: bool) -> SplitData:
    """The classes of ``characters`` in order; ``rotated``: 4 consecutive classes each."""
    angles = ROTATIONS if rotated else (0,)
    blocks, names = [], []
    for character in characters:
        drawings = torch.stack([load_drawing(p, params.image_size) for p in character.drawings])
        for angle in angles:
            blocks.append(torch.rot90(drawings, angle // 90, dims=(-2, -1)).unsqueeze(1))
            names.append(f"{character.key}/rot{angle:03d}" if rotated else character.key)
    offsets = torch.tensor([0] + [len(block) for block in blocks]).cumsum(0)
    return SplitData(torch.cat(blocks), offsets, tuple(names))


def check_alphabets(characters: list[Character], family: Family, archives: Iterable[str]) -> None:
    """Refuse archives whose alphabets or character counts differ from the published ones (what the split
    sizes, validated before the download, rest on), or whose characters have too few drawings."""
    found: dict[str, int] = {}
    for character in characters:
        found[character.alphabet] = found.get(character.alphabet, 0) + 1
    fix = "Fix: use the published archives (brendenlake/omniglot, python/)."
    if found != family.alphabets:
        differ = sorted(a for a in {*found, *family.alphabets} if found.get(a) != family.alphabets.get(a))
        shown = ", ".join(f"{a} ({found.get(a, 0)} found, {family.alphabets.get(a, 0)} published)" for a in differ[:3])
        raise DataError(
            f"The archives {', '.join(archives)} of {family.name} do not hold the published alphabets: {shown}"
            f"{' and more' if len(differ) > 3 else ''}. {fix}"
        )
    short = [c.key for c in characters if len(c.drawings) < DRAWINGS_PER_CHARACTER]
    if short:
        raise DataError(
            f"Characters {', '.join(short[:5])} of {family.name} have fewer than {DRAWINGS_PER_CHARACTER} drawings. "
            f"{fix}"
        )


def build(family: Family, params: OmniglotParams, archives: Mapping[str, Path], out_dir: Path) -> None:
    """Write the layout of ``family`` from its extracted ``archives`` into ``out_dir``."""
    characters = find_characters(archives.values())
    if not characters:
        raise DataError(
            f"No <Alphabet>/<character>/*.png drawings found in the archives "
            f"{', '.join(archives)} of {family.name}. Fix: use the published archives."
        )
    check_alphabets(characters, family, archives)
    assignment = assign_characters(characters, family, params)
    splits = {
        s: split_data([characters[i] for i in idx], params, rotated=params.rotated(s)) for s, idx in assignment.items()
    }
    manifest = {
        "alphabets": len({c.alphabet for c in characters}),
        "split_by": params.split_by,
        "base_characters": {s: len(idx) for s, idx in assignment.items()},
        **(
            {"alphabets_by_split": {s: sorted({characters[i].alphabet for i in idx}) for s, idx in assignment.items()}}
            if params.split_by != "characters"
            else {}
        ),
    }
    write_layout(out_dir, splits, manifest)


def make_spec(family: Family, description: str, sources: tuple[ArchiveSource, ...]) -> DatasetSpec:
    """The dataset of ``family`` built from ``sources`` (registered with the published archives)."""
    return DatasetSpec(
        name=family.name,
        description=description,
        sources=lambda _params: sources,
        config_model=OmniglotParams,
        split_sizes=partial(split_sizes, family),
        min_instances=min_instances,
        build=partial(build, family),
        channels=1,
    )


def _source(filename: str, md5: str, sha256: str | None = None) -> ArchiveSource:
    return ArchiveSource(filename, URL.format(filename), sha256=sha256, md5=md5)


SMALL = Family("omniglot-small", {a: BACKGROUND_ALPHABETS[a] for a in SMALL_ALPHABETS}, {})
FULL = Family("omniglot", BACKGROUND_ALPHABETS, EVALUATION_ALPHABETS)
DATASETS.register(
    SMALL.name,
    make_spec(
        SMALL,
        "Omniglot background small1 + small2: 8 alphabets, 242 characters x 20 drawings.",
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
    ),
)
DATASETS.register(
    FULL.name,
    make_spec(
        FULL,
        "Omniglot background + evaluation: 50 alphabets, 1623 characters x 20 drawings.",
        (
            _source("images_background.zip", md5="68d2efa1b9178cc56df9314c21c6e718"),
            _source("images_evaluation.zip", md5="6b91aef0f799c5bb55b94e3f2daec811"),
        ),
    ),
)
