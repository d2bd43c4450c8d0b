"""Stanford Cars on generated copies of the original archives' layout (cars_train.tgz: cars_train/*.jpg;
car_devkit.tgz: devkit/cars_meta.mat, devkit/cars_train_annos.mat): Tseng et al.'s split, the bounding-box crop,
the published md5 and the user's sha256, and the refusals, atomically."""

from __future__ import annotations

import dataclasses
import io
import random
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from metaland.data import DATASETS, fetch_dataset, load_split
from metaland.data.cars import DEVKIT, PUBLISHED_MD5, TRAIN, CarsParams, Expected, make_spec, sources
from metaland.data.registry import ArchiveSource
from metaland.errors import DataError
from tests.archives import decoded, digest, jpeg, lanczos, write_tar

CLASSES = [f"Make{c} Model {2000 + c}" for c in range(8)]
PER_CLASS = 2
EXPECTED = Expected(classes=len(CLASSES), per_class=PER_CLASS)
SIZE = 10


def mat(contents: dict) -> bytes:
    out = io.BytesIO()
    scipy.io.savemat(out, contents)
    return out.getvalue()


def generate() -> tuple[dict[str, bytes], dict[str, bytes], list[tuple[str, int, tuple[int, int, int, int]]]]:
    """The members of the two archives and the annotations (file, 0-based class, box), files out of class order."""
    rng = random.Random(0)
    photos = []
    labels = [c for c in range(len(CLASSES)) for _ in range(PER_CLASS)]
    rng.shuffle(labels)
    train = {}
    for i, label in enumerate(labels, 1):
        name = f"{i:05d}.jpg"
        width, height = 30 + i, 24 + i % 3
        train[f"cars_train/{name}"] = jpeg(rng, width, height)
        photos.append((name, label, (2, 3, width - 4, height - 2)))
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    annotations = np.zeros((1, len(photos)), dtype=fields)
    for i, (name, label, box) in enumerate(photos):
        annotations[0, i] = (*(np.array([[v]], dtype=np.uint16) for v in box), np.array([[label + 1]], np.uint8), name)
    names = np.empty((1, len(CLASSES)), dtype=object)
    names[0, :] = CLASSES
    devkit = {
        "devkit/cars_meta.mat": mat({"class_names": names}),
        "devkit/cars_train_annos.mat": mat({"annotations": annotations}),
        "devkit/README.txt": b"readme\n",
    }
    return train, devkit, photos


@pytest.fixture(scope="module")
def generated():
    return generate()


def fetch(tmp_path: Path, generated, params: CarsParams | None = None, expected: Expected = EXPECTED) -> Path:
    train, devkit, _ = generated
    mirror = tmp_path / "mirror"
    mirror.mkdir(parents=True, exist_ok=True)
    archives = {TRAIN: write_tar(mirror / TRAIN, train), DEVKIT: write_tar(mirror / DEVKIT, devkit)}
    params = params or CarsParams(image_size=SIZE)
    own = tuple(
        dataclasses.replace(s, md5=digest(archive, "md5"), sha256=s.sha256 and digest(archive))
        for s in sources(params)
        for archive in [archives[s.filename]]
    )
    spec = dataclasses.replace(make_spec(expected), sources=lambda _params: own)
    return fetch_dataset(spec, params, tmp_path / "data", mirror=mirror)


def test_registered_dataset_pins_the_original_archives_and_tsengs_split():
    spec = DATASETS.get("cars")
    params = CarsParams()
    assert spec.split_sizes(params) == {"train": 98, "val": 49, "test": 49}
    assert spec.min_instances(params) == 20 and spec.channels == 3 and (params.image_size, params.crop) == (84, "bbox")
    train, devkit = spec.sources(params)
    assert (train.filename, train.md5, train.sha256, train.url) == (TRAIN, "065e5b463ae28d29e77c1b4b166cfe61", None, "")
    assert (devkit.filename, devkit.md5) == (DEVKIT, "c3b158d763b6e2245038c8ad08e45376")
    url = "https://example.org/cars_train.tgz"
    given = spec.sources(CarsParams(train_url=url, train_sha256="A" * 64))[0]
    assert given == ArchiveSource(TRAIN, url, sha256="a" * 64, md5=PUBLISHED_MD5[TRAIN])


@pytest.mark.parametrize("crop", ["bbox", "none"])
def test_fetch_splits_by_class_index_and_crops_the_box(generated, tmp_path, crop):
    out = fetch(tmp_path, generated, CarsParams(image_size=SIZE, crop=crop))
    train, _, photos = generated
    splits = {s: load_split(out, s) for s in ("train", "val", "test")}
    assert splits["train"].class_names == tuple(CLASSES[i] for i in (0, 2, 4, 6))
    assert splits["val"].class_names == (CLASSES[1], CLASSES[5])
    assert splits["test"].class_names == (CLASSES[3], CLASSES[7])
    for split in splits.values():
        assert split.images.shape == (split.num_classes * PER_CLASS, 3, SIZE, SIZE)
    name, _, box = min((p for p in photos if p[1] == 5), key=lambda p: p[0])  # class 5's first file
    photo = decoded(train[f"cars_train/{name}"])
    expected = lanczos(photo.crop(box) if crop == "bbox" else photo, SIZE)
    assert torch.equal(splits["val"].images[PER_CLASS], expected)


def test_the_users_sha256_is_verified_besides_the_md5(generated, tmp_path):
    fetch(tmp_path / "ok", generated, CarsParams(image_size=SIZE, train_sha256="0" * 64))  # replaced by the true one
    train, devkit, _ = generated
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_tar(mirror / TRAIN, train)
    write_tar(mirror / DEVKIT, devkit)
    with pytest.raises(DataError, match=r"cars_train\.tgz is not the published cars_train\.tgz: sha256 expected 0{64}"):
        fetch_dataset(DATASETS.get("cars"), CarsParams(train_sha256="0" * 64), tmp_path / "data", mirror=mirror)
    with pytest.raises(DataError, match=r"md5 expected 065e5b463ae28d29e77c1b4b166cfe61"):
        fetch_dataset(DATASETS.get("cars"), CarsParams(), tmp_path / "data", mirror=mirror)
    with pytest.raises(DataError, match=r"cars_train\.tgz has no public address.*METALAND_DATA_MIRROR"):
        fetch_dataset(DATASETS.get("cars"), CarsParams(), tmp_path / "data", cache_dir=tmp_path / "empty")
    assert not (tmp_path / "data").exists(), "refused before anything was written"


@pytest.mark.parametrize(
    ("problem", "pattern"),
    [
        ("short class", r"Classes Make0 Model 2000, .* have fewer than the 3 annotated images"),
        ("missing photo", r"cars_train/\d+\.jpg, annotated in the devkit, is missing"),
        ("other class count", r"cars_meta\.mat names 8 classes, not 10"),
    ],
)
def test_an_archive_other_than_declared_is_refused(generated, tmp_path, problem, pattern):
    train, devkit, photos = generated
    expected = EXPECTED
    if problem == "short class":
        expected = Expected(classes=len(CLASSES), per_class=3)
    elif problem == "missing photo":
        train = {k: v for k, v in train.items() if k != f"cars_train/{photos[0][0]}"}
    else:
        expected = Expected(classes=10, per_class=PER_CLASS)
    with pytest.raises(DataError, match=pattern + r".*Fix: use the original cars_train\.tgz"):
        fetch(tmp_path, (train, devkit, photos), expected=expected)
    assert list((tmp_path / "data").iterdir()) == []
