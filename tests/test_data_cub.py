"""CUB-200-2011 on a generated archive of the official layout (CUB_200_2011/images/<nnn.Species>/*.jpg):
Chen et al.'s class split, the resize-and-crop rule, the checksum, the mirror, and the refusals."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from metaland.config import resolve
from metaland.data import DATASETS, fetch_dataset, load_split
from metaland.data.cub import CALTECHDATA, CubParams, Expected, make_spec, split_of
from metaland.data.registry import ArchiveSource
from metaland.errors import ConfigError, DataError
from tests.test_config import REPO, RUN

SPECIES = [f"{i:03d}.Species_{chr(ord('A') + i)}" for i in range(1, 9)]  # 8 classes, listed in name order
PER_CLASS = 3
EXPECTED = Expected(classes=len(SPECIES), per_class=PER_CLASS)
SIZE = 20  # image_size: resized to int(1.15 * 20) = 23 square, centre crop 20 from offset round(1.5) = 2


def jpeg(rng: random.Random, width: int, height: int) -> bytes:
    image = Image.frombytes("RGB", (width, height), bytes(rng.randrange(256) for _ in range(width * height * 3)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


def generate() -> dict[str, bytes]:
    """Members of a CUB-shaped archive: photos of different sizes, files listed out of order."""
    rng = random.Random(0)
    members = {"attributes.txt": b"1 has_bill_shape::curved\n", "CUB_200_2011/README": b"readme\n"}
    for species in reversed(SPECIES):  # the archive order must not matter
        for k in reversed(range(PER_CLASS)):
            members[f"CUB_200_2011/images/{species}/{species[4:]}_{k:04d}.jpg"] = jpeg(rng, 30 + 7 * k, 26 + k)
    members[f"CUB_200_2011/images/{SPECIES[0]}/._hidden.jpg"] = b"not an image"  # skipped like Chen's script
    return members


def write_tgz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def spec_for(archive: Path, expected: Expected = EXPECTED, **digest):
    digest = digest or {"md5": hashlib.md5(archive.read_bytes()).hexdigest()}
    return make_spec(expected, ArchiveSource(archive.name, CALTECHDATA.url, **digest))


@pytest.fixture(scope="module")
def members() -> dict[str, bytes]:
    return generate()


def mirrored(tmp_path: Path, members: dict[str, bytes]) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir(exist_ok=True)
    return write_tgz(mirror / CALTECHDATA.filename, members)


def expected_pixels(data: bytes) -> torch.Tensor:
    """Chen et al.'s evaluation transform written out: bilinear resize to 23 x 23, pixels 2..21."""
    with Image.open(io.BytesIO(data)) as image:
        scaled = image.convert("RGB").resize((23, 23), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(scaled).copy()).permute(2, 0, 1)
    return pixels[:, 2:22, 2:22]


def test_registered_dataset_is_the_official_archive_with_chens_split():
    spec = DATASETS.get("cub")
    params = CubParams()
    assert params.image_size == 84 and spec.channels == 3 and spec.config_model is CubParams
    assert spec.split_sizes(params) == {"train": 100, "val": 50, "test": 50}
    assert spec.min_instances(params) == 30
    (source,) = spec.sources(params)
    assert source.filename == "CUB_200_2011.tgz" and source.md5 == "97eceeb196236b17998738112f37df78"
    assert source.url == "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
    assert [split_of(i) for i in range(8)] == ["train", "val", "train", "test"] * 2


def test_fetch_from_the_mirror_splits_sorted_classes_and_crops_the_centre(members, tmp_path):
    archive = mirrored(tmp_path, members)
    out = fetch_dataset(spec_for(archive), CubParams(image_size=SIZE), tmp_path / "data", mirror=archive.parent)
    splits = {split: load_split(out, split) for split in ("train", "val", "test")}
    assert splits["train"].class_names == tuple(SPECIES[0::2])  # sorted indices 0, 2, 4, 6
    assert splits["val"].class_names == (SPECIES[1], SPECIES[5])  # 1, 5
    assert splits["test"].class_names == (SPECIES[3], SPECIES[7])  # 3, 7
    for split in splits.values():
        assert split.images.shape == (split.num_classes * PER_CLASS, 3, SIZE, SIZE)
        assert split.images.dtype == torch.uint8 and split.min_instances() == PER_CLASS
    # image 4 of val = class 005, its file _0001 (name order), photographed at 37 x 27
    species = SPECIES[5]
    photo = members[f"CUB_200_2011/images/{species}/{species[4:]}_0001.jpg"]
    assert torch.equal(splits["val"].images[PER_CLASS + 1], expected_pixels(photo))


def test_a_wrong_checksum_is_refused(members, tmp_path):
    archive = mirrored(tmp_path, members)
    spec = spec_for(archive, md5="0" * 32)
    with pytest.raises(DataError, match=rf"Mirror file {archive} is not the published .*md5 expected 0{{32}}.*Fix:"):
        fetch_dataset(spec, CubParams(image_size=SIZE), tmp_path / "data", mirror=archive.parent)
    assert not (tmp_path / "data" / "cub").exists()


@pytest.mark.parametrize(
    ("expected", "pattern"),
    [
        (Expected(classes=12, per_class=PER_CLASS), r"holds 8 class folders, but cub is declared with 12"),
        (Expected(classes=8, per_class=4), r"Class folder CUB_200_2011/images/001\.Species_B holds 3 images, fewer "),
    ],
)
def test_an_archive_other_than_declared_is_refused(members, tmp_path, expected, pattern):
    archive = mirrored(tmp_path, members)
    with pytest.raises(DataError, match=pattern + r".*Fix: use the official CUB_200_2011\.tgz"):
        fetch_dataset(spec_for(archive, expected), CubParams(image_size=SIZE), tmp_path / "data", mirror=archive.parent)
    assert not (tmp_path / "data" / "cub").exists()


def test_an_archive_without_the_images_folder_or_with_a_broken_image_is_refused(members, tmp_path):
    elsewhere = {name.replace("CUB_200_2011/", "CUB/"): data for name, data in members.items()}
    archive = mirrored(tmp_path, elsewhere)
    with pytest.raises(DataError, match=r"The archive holds no CUB_200_2011/images/ folder\..*Fix: use"):
        fetch_dataset(spec_for(archive), CubParams(image_size=SIZE), tmp_path / "data", mirror=archive.parent)
    broken = dict(members)
    broken[f"CUB_200_2011/images/{SPECIES[2]}/{SPECIES[2][4:]}_0000.jpg"] = b"not a jpeg"
    archive = mirrored(tmp_path, broken)
    with pytest.raises(DataError, match=rf"Image CUB_200_2011/images/{SPECIES[2]}/\S+_0000\.jpg cannot be decoded"):
        fetch_dataset(spec_for(archive), CubParams(image_size=SIZE), tmp_path / "data", mirror=archive.parent)


def test_config_accepts_chens_setting_on_cub_and_refuses_tasks_beyond_its_smallest_class():
    """Seed 001 §1.1, §3: 5-way 1-shot, 16 training queries, Conv6 with Chen's init and augmentation."""
    raw = yaml.safe_load((REPO / "profiles" / "ci.yaml").read_text())
    raw["datasets"]["cub"] = {"image_size": 84}
    raw["runs"][RUN].update(dataset="cub", queries=16, model={"blocks": 6, "downsampled_blocks": 4, "init": "chen"})
    raw["runs"][RUN]["train"] = {"augment": "chen"}
    run = resolve(raw).runs[RUN]
    assert (run.model.blocks, run.model.downsampled_blocks, run.model.init, run.train.augment) == (6, 4, "chen", "chen")
    raw["runs"][RUN].update(shots=30)
    with pytest.raises(ConfigError, match=r"shots \+ queries = 30 \+ 16 exceeds the 30 samples"):
        resolve(raw)
