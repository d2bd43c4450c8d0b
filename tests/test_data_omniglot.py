"""Omniglot end to end: the real small archives from the mirror, the full layout on a generated
archive, the normalised layout's round trip and its errors, and the dataset params."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from pydantic import ValidationError
from safetensors.torch import save_file

from metaland.data import (
    DATASETS,
    SPLITS,
    ArchiveSource,
    DatasetSpec,
    SplitData,
    fetch_dataset,
    load_split,
    omniglot,
)
from metaland.data.layout import write_split
from metaland.data.omniglot import (
    Family,
    OmniglotParams,
    SplitFractions,
    assign_alphabets,
    assign_splits,
    make_spec,
    split_counts,
)
from metaland.errors import ConfigError, DataError

SMALL = DATASETS.get("omniglot-small")
FULL = DATASETS.get("omniglot")
SMALL_FAMILY, FULL_FAMILY = omniglot.SMALL, omniglot.FULL


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def base_key(class_name: str) -> str:
    """``Greek/character01/rot090`` -> ``Greek/character01``."""
    return class_name.rsplit("/", 1)[0]


@pytest.fixture(scope="module")
def small(omniglot_mirror, tmp_path_factory) -> Path:
    """omniglot-small with default params, fetched from the mirror."""
    root = tmp_path_factory.mktemp("data")
    params = OmniglotParams()
    return fetch_dataset(SMALL, params, root, mirror=omniglot_mirror, cache_dir=root / "cache")


@pytest.fixture(scope="module")
def small_splits(small) -> dict[str, SplitData]:
    return {split: load_split(small, split) for split in SPLITS}


# --- omniglot-small from the real mirror ---------------------------------------------------


def test_small_has_242_characters_of_8_alphabets_and_968_classes(small, small_splits):
    manifest = json.loads((small / "manifest.json").read_text())
    assert manifest["alphabets"] == 8
    assert sum(manifest["base_characters"].values()) == 242
    assert sum(s.num_classes for s in small_splits.values()) == 968
    names = [n for s in small_splits.values() for n in s.class_names]
    assert len({n.split("/")[0] for n in names}) == 8
    assert len({base_key(n) for n in names}) == 242
    assert not (small.parent / "cache").exists(), "a mirror fetch must not fill the cache"


def test_small_split_sizes_match_the_static_declaration(small, small_splits):
    declared = SMALL.split_sizes(OmniglotParams())
    assert declared == {"train": 580, "val": 96, "test": 292}
    assert {s: d.num_classes for s, d in small_splits.items()} == declared
    manifest = json.loads((small / "manifest.json").read_text())
    assert {s: c["classes"] for s, c in manifest["counts"].items()} == declared


def test_small_splits_are_disjoint_and_keep_rotations_together(small_splits):
    bases = {s: [base_key(n) for n in d.class_names] for s, d in small_splits.items()}
    for split, data in small_splits.items():
        names = data.class_names
        for i in range(0, len(names), 4):
            assert [n.rsplit("/", 1)[1] for n in names[i : i + 4]] == [
                "rot000",
                "rot090",
                "rot180",
                "rot270",
            ]
            assert len({base_key(n) for n in names[i : i + 4]}) == 1
        assert bases[split] == sorted(bases[split]), "characters stay in sorted order"
    train, val, test = (set(bases[s]) for s in SPLITS)
    assert not (train & val or train & test or val & test)


def test_small_images_are_uint8_ink_on_black_and_rotated(small_splits):
    train = small_splits["train"]
    assert train.images.dtype == torch.uint8
    assert train.images.shape == (580 * 20, 1, 28, 28)
    assert train.min_instances() == SMALL.min_instances(OmniglotParams()) == 20
    assert all(train.instances(c) == 20 for c in range(train.num_classes))
    assert train.images.float().mean() < 64, "background must be 0 and ink 255"
    assert int(train.images.max()) == 255
    assert torch.bincount(train.images.flatten(), minlength=256).argmax() == 0
    first = train.images[train.offsets[0] : train.offsets[1]]
    rot090 = train.images[train.offsets[1] : train.offsets[2]]
    assert torch.equal(rot090, torch.rot90(first, 1, dims=(-2, -1)))
    assert not torch.equal(rot090, first)


def test_small_fetch_is_byte_deterministic(small, omniglot_mirror, tmp_path):
    again = fetch_dataset(SMALL, OmniglotParams(), tmp_path, mirror=omniglot_mirror)
    assert again == tmp_path / "omniglot-small"
    assert read_tree(again) == read_tree(small)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["omniglot-small"], "no temp leftovers"


def test_another_split_seed_gives_another_split(small_splits, omniglot_mirror, tmp_path):
    params = OmniglotParams(split_seed=1, rotations=False, image_size=8)
    other = fetch_dataset(SMALL, params, tmp_path, mirror=omniglot_mirror)
    reseeded = {s: load_split(other, s) for s in SPLITS}
    assert reseeded["train"].images.shape[1:] == (1, 8, 8)
    for split in SPLITS:
        before = {base_key(n) for n in small_splits[split].class_names}
        after = set(reseeded[split].class_names)
        assert len(after) == len(before)
        assert after != before


def test_split_assignment_is_a_seeded_partition():
    params = OmniglotParams()
    first = assign_splits(242, params, "omniglot-small")
    assert first == assign_splits(242, params, "omniglot-small")
    assert sorted(i for idx in first.values() for i in idx) == list(range(242))
    assert {s: len(idx) for s, idx in first.items()} == {"train": 145, "val": 24, "test": 73}
    reseeded = params.model_copy(update={"split_seed": 1})
    assert first != assign_splits(242, reseeded, "omniglot-small")
    assert first != assign_splits(242, params, "omniglot")


# --- the full omniglot builder on a generated archive of the official layout -----------------

GENERATED = {
    "images_background.zip": {"Alpha_(a)": 3, "Beta": 2},
    "images_evaluation.zip": {"Gamma": 2, "Delta": 3},
}


def drawing(rng: random.Random) -> Image.Image:
    """A 105x105 1-bit drawing like Omniglot's: white background, one black stroke."""
    image = Image.new("1", (105, 105), 1)
    points = [(rng.randrange(5, 100), rng.randrange(5, 100)) for _ in range(4)]
    ImageDraw.Draw(image).line(points, fill=0, width=4)
    return image


def ink(image: Image.Image) -> torch.Tensor:
    """uint8 [1, H, W]: 255 where the 1-bit drawing is black, 0 on the white background."""
    pixels = torch.frombuffer(bytearray(image.convert("L").tobytes()), dtype=torch.uint8)
    return (pixels == 0).to(torch.uint8).mul(255).view(1, image.height, image.width)


def write_omniglot_zip(path: Path, alphabets: dict[str, int], drawings: int = 20) -> dict:
    """A zip laid out as ``<stem>/<Alphabet>/characterNN/<id>_<drawer>.png``, members shuffled.

    Returns the expected uint8 ink=255 images, keyed by ``Alphabet/characterNN``, in file order.
    """
    rng = random.Random(path.name)
    members, expected = [], {}
    for alphabet, characters in alphabets.items():
        for number in range(1, characters + 1):
            character = f"character{number:02d}"
            images = []
            for drawer in range(1, drawings + 1):
                image = drawing(rng)
                name = f"{path.stem}/{alphabet}/{character}/{number:04d}_{drawer:02d}.png"
                png = io.BytesIO()
                image.save(png, format="PNG")
                members.append((name, png.getvalue()))
                images.append(ink(image))
            expected[f"{alphabet}/{character}"] = torch.stack(images)
    rng.shuffle(members)
    with zipfile.ZipFile(path, "w") as zf:
        for name, png in members:
            zf.writestr(name, png)
    return expected


GENERATED_FAMILY = Family("omniglot", {**GENERATED["images_background.zip"]}, {**GENERATED["images_evaluation.zip"]})
"""The generated archives' alphabets, declared as the registered dataset declares the published ones."""


def generated_spec(mirror: Path, family: Family = GENERATED_FAMILY) -> DatasetSpec:
    """The ``omniglot`` dataset of ``family``, with the registered sources and the generated archives' checksums."""

    def source(original: ArchiveSource) -> ArchiveSource:
        data = (mirror / original.filename).read_bytes()
        return dataclasses.replace(
            original,
            sha256=hashlib.sha256(data).hexdigest(),
            md5=hashlib.md5(data).hexdigest(),
        )

    return make_spec(family, FULL.description, tuple(source(s) for s in FULL.sources(OmniglotParams())))


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    mirror = tmp_path_factory.mktemp("mirror")
    expected = {}
    for filename, alphabets in GENERATED.items():
        expected |= write_omniglot_zip(mirror / filename, alphabets)
    return mirror, expected


def test_full_builder_handles_the_official_layout(generated, tmp_path):
    mirror, expected = generated
    spec = generated_spec(mirror)
    params = OmniglotParams(image_size=105)
    out = fetch_dataset(spec, params, tmp_path, mirror=mirror)
    assert out == tmp_path / "omniglot"
    splits = {s: load_split(out, s) for s in SPLITS}
    counts = split_counts(len(expected), params.split)
    assert {s: d.num_classes for s, d in splits.items()} == {s: 4 * n for s, n in counts.items()}
    seen = set()
    for data in splits.values():
        for c, name in enumerate(data.class_names):
            key, rotation = name.rsplit("/", 1)
            turns = int(rotation.removeprefix("rot")) // 90
            images = data.images[data.offsets[c] : data.offsets[c + 1]]
            assert torch.equal(images, torch.rot90(expected[key], turns, dims=(-2, -1))), name
            seen.add(key)
    assert seen == set(expected)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "omniglot"
    assert manifest["alphabets"] == 4
    assert manifest["image_shape"] == [1, 105, 105]
    assert manifest["params"] == params.model_dump()
    assert [s["md5"] for s in manifest["sources"]] == [s.md5 for s in spec.sources(params)]


def test_full_builder_downsamples_without_rotations(generated, tmp_path):
    mirror, expected = generated
    out = fetch_dataset(generated_spec(mirror), OmniglotParams(rotations=False), tmp_path, mirror=mirror)
    test = load_split(out, "test")
    assert test.images.shape == (test.num_classes * 20, 1, 28, 28)
    assert all(name in expected for name in test.class_names)
    assert test.images.float().mean() < 64


def test_fetch_failure_leaves_no_dataset_folder(generated, tmp_path):
    mirror, _ = generated
    wrong_source = dataclasses.replace(FULL.sources(OmniglotParams())[0], md5="0" * 32)
    wrong = dataclasses.replace(FULL, sources=lambda _params: (wrong_source,))
    with pytest.raises(DataError, match=r"md5 expected 0{32}"):
        fetch_dataset(wrong, OmniglotParams(), tmp_path / "data", mirror=mirror)
    assert not (tmp_path / "data" / "omniglot").exists()
    with pytest.raises(TypeError, match="takes OmniglotParams"):
        fetch_dataset(FULL, SplitFractions(), tmp_path / "data", mirror=mirror)


def test_character_with_too_few_drawings_is_refused_atomically(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_omniglot_zip(mirror / "images_background.zip", {"Alpha": 3}, drawings=19)
    write_omniglot_zip(mirror / "images_evaluation.zip", {"Beta": 3})
    data_root = tmp_path / "data"
    family = Family("omniglot", {"Alpha": 3}, {"Beta": 3})
    with pytest.raises(DataError, match=r"Alpha/character01.*fewer than 20 drawings.*Fix:"):
        fetch_dataset(generated_spec(mirror, family), OmniglotParams(), data_root, mirror=mirror)
    assert list(data_root.iterdir()) == []


def test_archives_of_other_alphabets_than_declared_are_refused(generated, tmp_path):
    mirror, _ = generated
    for family in (FULL_FAMILY, Family("omniglot", {"Alpha_(a)": 3, "Beta": 3}, GENERATED["images_evaluation.zip"])):
        with pytest.raises(DataError, match=r"do not hold the published alphabets: .*\(\d+ found, \d+ published\)"):
            fetch_dataset(generated_spec(mirror, family), OmniglotParams(), tmp_path / "data", mirror=mirror)
    assert list((tmp_path / "data").iterdir()) == []


# --- alphabet-disjoint splits -----------------------------------------------------------------


def test_small_alphabet_split_holds_whole_alphabets_out_and_unrotated(omniglot_mirror, tmp_path):
    """split_by alphabets on the real archives: train, val and test share no alphabet; the sizes config
    validation declared are the data's; val and test without rotated copies."""
    params = OmniglotParams(split_by="alphabets", rotations={"train": True, "val": False, "test": False})
    out = fetch_dataset(SMALL, params, tmp_path, name="omniglot-small-alphabets", mirror=omniglot_mirror)
    assert out == tmp_path / "omniglot-small-alphabets"
    splits = {s: load_split(out, s) for s in SPLITS}
    alphabets = {s: {n.split("/")[0] for n in d.class_names} for s, d in splits.items()}
    assert not (alphabets["train"] & alphabets["val"] or alphabets["train"] & alphabets["test"])
    assert alphabets["val"] | alphabets["test"] | alphabets["train"] == set(SMALL_FAMILY.background)
    assert {s: d.num_classes for s, d in splits.items()} == SMALL.split_sizes(params)
    assert all("/rot" in n for n in splits["train"].class_names)
    assert not any("/rot" in n for n in splits["test"].class_names + splits["val"].class_names)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "omniglot-small-alphabets" and manifest["registered_dataset"] == "omniglot-small"
    assert manifest["split_by"] == "alphabets"
    assert {s: set(a) for s, a in manifest["alphabets_by_split"].items()} == alphabets
    assert manifest["alphabets_by_split"] == assign_alphabets(SMALL_FAMILY, params)


def test_lake_split_tests_on_the_evaluation_alphabets(generated, tmp_path):
    mirror, _ = generated
    params = OmniglotParams(split_by="lake", rotations=False, split=SplitFractions(train=0.4, val=0.5, test=0.1))
    out = fetch_dataset(generated_spec(mirror), params, tmp_path, mirror=mirror)
    alphabets = {s: {n.split("/")[0] for n in load_split(out, s).class_names} for s in SPLITS}
    assert alphabets["test"] == set(GENERATED["images_evaluation.zip"])
    assert alphabets["train"] | alphabets["val"] == set(GENERATED["images_background.zip"])
    assert len(alphabets["val"]) == 1 and not alphabets["train"] & alphabets["val"]
    declared = make_spec(GENERATED_FAMILY, "", ()).split_sizes(params)
    assert declared == {s: load_split(out, s).num_classes for s in SPLITS}
    with pytest.raises(ConfigError, match=r"split_by = lake holds Lake et al\.'s evaluation alphabets out.*Fix:"):
        SMALL.split_sizes(params)


def test_the_published_alphabet_tables_add_up_to_the_archives():
    assert (len(FULL_FAMILY.background), sum(FULL_FAMILY.background.values())) == (30, 964)
    assert (len(FULL_FAMILY.evaluation), sum(FULL_FAMILY.evaluation.values())) == (20, 659)
    assert (len(SMALL_FAMILY.alphabets), SMALL_FAMILY.characters) == (8, 242)
    assert FULL.split_sizes(OmniglotParams(split_by="lake", rotations=False))["test"] == 659


# --- the normalised layout -----------------------------------------------------------------


def tiny_split() -> SplitData:
    images = torch.arange(5 * 1 * 2 * 2, dtype=torch.uint8).view(5, 1, 2, 2)
    return SplitData(images, torch.tensor([0, 2, 5]), ("a/x", "b/y"))


def test_split_round_trips_through_safetensors(tmp_path):
    data = tiny_split()
    write_split(tmp_path, "val", data)
    (tmp_path / "classes.json").write_text(json.dumps({"val": list(data.class_names)}))
    loaded = load_split(tmp_path, "val")
    assert torch.equal(loaded.images, data.images)
    assert torch.equal(loaded.offsets, data.offsets)
    assert loaded.class_names == data.class_names
    assert (loaded.num_classes, loaded.instances(0), loaded.instances(1)) == (2, 2, 3)
    assert loaded.min_instances() == 2


IMAGES = torch.zeros(5, 1, 2, 2, dtype=torch.uint8)


@pytest.mark.parametrize(
    ("images", "offsets", "names", "problem"),
    [
        (IMAGES.double(), [0, 2, 5], ("a", "b"), "uint8 or float32"),
        (IMAGES.squeeze(1), [0, 2, 5], ("a", "b"), "uint8"),
        (IMAGES, [0, 5], ("a", "b"), "offsets"),
        (IMAGES, [0, 2, 4], ("a", "b"), "0 to 5"),
        (IMAGES, [0, 5, 5], ("a", "b"), "strictly"),
        (IMAGES, [0, 2, 5], ("a", "a"), "unique"),
        (IMAGES[:0], [0], (), "offsets"),
    ],
)
def test_split_data_refuses_inconsistent_tensors(images, offsets, names, problem):
    with pytest.raises(ValueError, match=problem):
        SplitData(images, torch.tensor(offsets), names)
    with pytest.raises(ValueError, match="int64"):
        SplitData(IMAGES, torch.tensor([0, 2, 5], dtype=torch.int32), ("a", "b"))


def test_load_split_of_a_missing_dataset_says_how_to_fetch_it(tmp_path):
    with pytest.raises(DataError) as caught:
        load_split(tmp_path / "data" / "omniglot-small", "train")
    message = str(caught.value)
    assert str(tmp_path / "data" / "omniglot-small" / "train.safetensors") in message
    fix = "Fix: run `dvc repro fetch@omniglot-small` or `python -m metaland fetch omniglot-small`"
    assert fix in message


def _corrupt_copy(small: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "omniglot-small"
    shutil.copytree(small, copy)
    return copy


def test_load_split_of_a_truncated_file_says_to_refetch(small, tmp_path):
    data_dir = _corrupt_copy(small, tmp_path)
    path = data_dir / "train.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"train\.safetensors .* is corrupt .*Fix: delete .*dvc"):
        load_split(data_dir, "train")


def test_load_split_of_inconsistent_tensors_or_names_says_to_refetch(small, tmp_path):
    data_dir = _corrupt_copy(small, tmp_path)
    images = torch.zeros(10, 1, 28, 28, dtype=torch.uint8)
    save_file({"images": images, "offsets": torch.tensor([0, 4, 9])}, data_dir / "val.safetensors")
    classes = json.loads((data_dir / "classes.json").read_text())
    (data_dir / "classes.json").write_text(json.dumps({**classes, "val": ["a", "b"]}))
    with pytest.raises(DataError, match=r"is corrupt .*offsets must run from 0 to 10.*Fix:"):
        load_split(data_dir, "val")
    del classes["test"]
    (data_dir / "classes.json").write_text(json.dumps(classes))
    with pytest.raises(DataError, match=r"is corrupt .*KeyError.*'test'.*Fix:"):
        load_split(data_dir, "test")


# --- params ---------------------------------------------------------------------------------


def test_params_are_validated():
    assert OmniglotParams().split == SplitFractions(train=0.6, val=0.1, test=0.3)
    with pytest.raises(ValidationError, match="sum to 1"):
        SplitFractions(train=0.6, val=0.2, test=0.3)
    with pytest.raises(ValidationError):
        SplitFractions(train=0.7, val=0.0, test=0.3)
    with pytest.raises(ValidationError):
        OmniglotParams(image_size=7)
    with pytest.raises(ValidationError):
        OmniglotParams(rotation=False)
    assert SplitFractions(train=0.7, val=0.1, test=0.2).test == 0.2  # 0.7 + 0.1 + 0.2 != 1 exactly


def test_split_counts_round_and_refuse_empty_splits():
    fractions = SplitFractions()
    assert split_counts(242, fractions) == {"train": 145, "val": 24, "test": 73}
    assert split_counts(1623, fractions) == {"train": 974, "val": 162, "test": 487}
    with pytest.raises(ConfigError, match=r"val split of 4 base characters with 0.*split\.val"):
        split_counts(4, fractions)
    assert FULL.split_sizes(OmniglotParams(rotations=False)) == split_counts(1623, fractions)
