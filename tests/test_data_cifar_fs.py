"""CIFAR-FS on a generated archive of the official CIFAR-100 binary layout: Bertinetto et al.'s split, the
records' pixels, the checksum, and the refusals (atomically)."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metaland.data import DATASETS, SPLITS, fetch_dataset, load_split
from metaland.data.cifar_fs import BERTINETTO, CIFAR100, CifarFsParams, Expected, make_spec
from metaland.errors import DataError
from tests.archives import digest, lanczos, write_tar

PER_TRAIN, PER_TEST = 2, 1
EXPECTED = Expected(BERTINETTO.classes, per_class=PER_TRAIN + PER_TEST)
NAMES = sorted(c for split in SPLITS for c in BERTINETTO.classes[split])


def records(rng: random.Random, labels: list[int]) -> tuple[bytes, np.ndarray]:
    """A binary file of one record per label (coarse label 0) and its pixels [N, 3, 32, 32]."""
    pixels = np.array([rng.randrange(256) for _ in range(len(labels) * 3072)], dtype=np.uint8).reshape(-1, 3, 32, 32)
    raw = b"".join(bytes([0, label]) + image.tobytes() for label, image in zip(labels, pixels, strict=True))
    return raw, pixels


def generate() -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """Members of a CIFAR-100-binary-shaped archive (labels in shuffled record order, names shuffled), and the
    expected pixels of every class: its train.bin records, then its test.bin records."""
    rng = random.Random(0)
    names = NAMES.copy()
    rng.shuffle(names)
    members, expected = {"cifar-100-binary/coarse_label_names.txt": b"aquatic_mammals\n"}, {}
    members["cifar-100-binary/fine_label_names.txt"] = "\n".join(names).encode() + b"\n"
    parts = {}
    for file, per in (("train.bin", PER_TRAIN), ("test.bin", PER_TEST)):
        labels = [label for label in range(len(names)) for _ in range(per)]
        rng.shuffle(labels)
        members[f"cifar-100-binary/{file}"], pixels = records(rng, labels)
        parts[file] = (np.array(labels), pixels)
    for label, name in enumerate(names):
        expected[name] = np.concatenate([pixels[labels == label] for labels, pixels in parts.values()])
    return members, expected


@pytest.fixture(scope="module")
def generated() -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    return generate()


def fetch(tmp_path: Path, members: dict[str, bytes], params: CifarFsParams, expected: Expected = EXPECTED) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir(exist_ok=True)
    archive = write_tar(mirror / CIFAR100.filename, members)
    spec = make_spec(expected, dataclasses.replace(CIFAR100, md5=digest(archive, "md5")))
    return fetch_dataset(spec, params, tmp_path / "data", mirror=mirror)


def test_registered_dataset_is_the_official_archive_with_bertinettos_split():
    spec = DATASETS.get("cifar-fs")
    params = CifarFsParams()
    assert spec.split_sizes(params) == {"train": 64, "val": 16, "test": 20}
    assert spec.min_instances(params) == 600 and spec.channels == 3 and params.image_size == 32
    (source,) = spec.sources(params)
    assert (source.filename, source.md5) == ("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8")
    assert source.url == "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
    assert len(NAMES) == len(set(NAMES)) == 100, "the three lists are disjoint and cover CIFAR-100"
    assert {"whale", "baby", "rocket", "worm"} <= set(BERTINETTO.classes["test"])
    assert {"otter", "tractor", "sea"} <= set(BERTINETTO.classes["val"])


def test_fetch_splits_by_the_lists_and_keeps_the_records_pixels(generated, tmp_path):
    members, expected = generated
    out = fetch(tmp_path, members, CifarFsParams())
    for split in SPLITS:
        data = load_split(out, split)
        assert data.class_names == BERTINETTO.classes[split]
        assert data.images.shape == (len(data.class_names) * 3, 3, 32, 32) and data.images.dtype == torch.uint8
        for c, name in enumerate(data.class_names):
            assert torch.equal(data.images[data.offsets[c] : data.offsets[c + 1]], torch.from_numpy(expected[name]))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["test"] == {"classes": 20, "images": 60} and manifest["image_shape"] == [3, 32, 32]


def test_another_size_is_a_lanczos_resize(generated, tmp_path):
    members, expected = generated
    test = load_split(fetch(tmp_path, members, CifarFsParams(image_size=16)), "test")
    first = Image.fromarray(expected[test.class_names[0]][0].transpose(1, 2, 0))
    assert test.images.shape[1:] == (3, 16, 16) and torch.equal(test.images[0], lanczos(first, 16))


@pytest.mark.parametrize(
    ("problem", "pattern"),
    [
        ("missing class", r"fine_label_names\.txt lacks the classes whale"),
        ("truncated", r"test\.bin is \d+ bytes, not a whole number of 3074-byte records"),
        ("short class", r"Class \w+ has 3 images in the archive, fewer than 4"),
        ("no names", r"holds no cifar-100-binary/fine_label_names\.txt"),
    ],
)
def test_a_broken_archive_is_refused_atomically(generated, tmp_path, problem, pattern):
    members, _ = generated
    members, expected = dict(members), EXPECTED
    names = "cifar-100-binary/fine_label_names.txt"
    if problem == "missing class":
        members[names] = members[names].replace(b"whale\n", b"whales\n")
    elif problem == "truncated":
        members["cifar-100-binary/test.bin"] = members["cifar-100-binary/test.bin"][:-10]
    elif problem == "short class":
        expected = dataclasses.replace(EXPECTED, per_class=4)
    else:
        del members[names]
    with pytest.raises(DataError, match=pattern + r".*Fix: use the official cifar-100-binary\.tar\.gz"):
        fetch(tmp_path, members, CifarFsParams(), expected)
    assert list((tmp_path / "data").iterdir()) == []


def test_a_wrong_checksum_is_refused(generated, tmp_path):
    members, _ = generated
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_tar(mirror / CIFAR100.filename, members)
    with pytest.raises(DataError, match=r"md5 expected 03b5dce01913d631647c71ecec9e9cb8"):
        fetch_dataset(DATASETS.get("cifar-fs"), CifarFsParams(), tmp_path / "data", mirror=mirror)
    assert not (tmp_path / "data" / "cifar-fs").exists()
