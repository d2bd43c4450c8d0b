"""tieredImageNet on generated copies of the ImageNet training set's two real layouts (a folder of <wnid>/*.JPEG,
and ILSVRC2012_img_train.tar with one <wnid>.tar per class): Ren et al.'s split, the resize, the md5 of the
archive, and the refusals (a pickled copy, missing classes, unsafe members), atomically."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from metaland.data import DATASETS, SPLITS, fetch_dataset, load_split
from metaland.data.tieredimagenet import ARCHIVE, ARCHIVE_MD5, REN, Expected, TieredImagenetParams, make_spec
from metaland.errors import ConfigError, DataError
from tests.archives import decoded, digest, jpeg, lanczos, tar_bytes, write_tar

SIZE = 12
PER_CLASS = 2
CLASSES = {split: REN.classes[split][:count] for split, count in (("train", 3), ("val", 1), ("test", 2))}
"""A few of Ren et al.'s own classes per split."""
OTHER = "n04399382"  # an ILSVRC-12 class tieredImageNet leaves out (teddy bear): skipped


def generate() -> dict[str, dict[str, bytes]]:
    """wnid -> {file name: JPEG}, photos of different sizes, one class with an extra image."""
    rng = random.Random(0)
    wnids = [w for split in SPLITS for w, _ in CLASSES[split]] + [OTHER]
    images = {}
    for i, wnid in enumerate(wnids):
        count = PER_CLASS + (i == 0)
        images[wnid] = {f"{wnid}_{k + 1:05d}.JPEG": jpeg(rng, 20 + 3 * k, 16 + k) for k in reversed(range(count))}
    return images


@pytest.fixture(scope="module")
def images() -> dict[str, dict[str, bytes]]:
    return generate()


def folder_copy(root: Path, images: dict[str, dict[str, bytes]]) -> Path:
    for wnid, files in images.items():
        (root / "train" / wnid).mkdir(parents=True)
        for name, data in files.items():
            (root / "train" / wnid / name).write_bytes(data)
    return root


def archive_copy(path: Path, images: dict[str, dict[str, bytes]]) -> Path:
    return write_tar(path, {f"{wnid}.tar": tar_bytes(files) for wnid, files in images.items()}, mode="w")


def expected_for(archive: Path | None = None) -> Expected:
    md5 = digest(archive, "md5") if archive else ARCHIVE_MD5
    return Expected(CLASSES, per_class=PER_CLASS, archive_md5=md5)


def fetch(tmp_path: Path, source: Path, expected: Expected) -> Path:
    params = TieredImagenetParams(image_size=SIZE, path=str(source))
    return fetch_dataset(make_spec(expected), params, tmp_path / "data")


def test_registered_dataset_is_ren_et_als_split_of_imagenet():
    spec = DATASETS.get("tieredimagenet")
    params = TieredImagenetParams()
    assert spec.split_sizes(params) == {"train": 351, "val": 97, "test": 160}
    assert spec.min_instances(params) == 732 and spec.channels == 3 and params.image_size == 84
    categories = {split: {c for _, c in REN.classes[split]} for split in SPLITS}
    assert {split: len(c) for split, c in categories.items()} == {"train": 20, "val": 6, "test": 8}
    assert not (categories["train"] & categories["val"] or categories["train"] & categories["test"])
    assert len(REN.wnids()) == 608
    with pytest.raises(ConfigError, match=r"datasets\.tieredimagenet\.path is empty.*never downloaded.*Fix: set"):
        spec.sources(params)
    with pytest.raises(ConfigError, match=r"does not exist on this machine.*Fix:"):
        spec.sources(TieredImagenetParams(path="/nonexistent/ILSVRC2012_img_train.tar"))


def test_a_folder_and_the_archive_give_the_same_layout(images, tmp_path):
    folder = fetch(tmp_path / "a", folder_copy(tmp_path / "imagenet", images), expected_for())
    archive = archive_copy(tmp_path / ARCHIVE, images)
    streamed = fetch(tmp_path / "b", archive, expected_for(archive))
    for split in SPLITS:
        data = load_split(folder, split)
        assert data.class_names == tuple(w for w, _ in CLASSES[split])
        for c, wnid in enumerate(data.class_names):
            files = sorted(images[wnid])
            pixels = torch.stack([lanczos(decoded(images[wnid][f]), SIZE) for f in files])
            assert torch.equal(data.images[data.offsets[c] : data.offsets[c + 1]], pixels), wnid
        assert (folder / f"{split}.safetensors").read_bytes() == (streamed / f"{split}.safetensors").read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"]["train"] == {"classes": 3, "images": 2 * 3 + 1}
    assert manifest["categories"]["test"] == sorted({c for _, c in CLASSES["test"]})


def test_a_pickled_copy_missing_classes_or_a_short_class_are_refused(images, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "train_images_png.pkl").write_bytes(b"\x80\x04not unpickled")
    with pytest.raises(DataError, match=r"pickled tieredImageNet.*never unpickles.*Fix: set"):
        fetch(tmp_path, pickled, expected_for())
    with pytest.raises(DataError, match=r"pickled tieredImageNet: metaland never unpickles"):
        fetch(tmp_path, pickled / "train_images_png.pkl", expected_for())
    partial = {w: files for w, files in images.items() if w != CLASSES["val"][0][0]}
    with pytest.raises(DataError, match=rf"lacks the class folders {CLASSES['val'][0][0]} \(1 of the 6"):
        fetch(tmp_path, folder_copy(tmp_path / "partial", partial), expected_for())
    with pytest.raises(DataError, match=r"Class n\d+ has 2 images .*fewer than the 3"):
        fetch(tmp_path, folder_copy(tmp_path / "full", images), dataclasses.replace(expected_for(), per_class=3))
    assert list((tmp_path / "data").iterdir()) == []


def test_the_archive_is_checked_by_md5_and_its_members_by_kind(images, tmp_path):
    archive = archive_copy(tmp_path / ARCHIVE, images)
    with pytest.raises(DataError, match=rf"is not the published {ARCHIVE} \(md5 differs from {ARCHIVE_MD5}\)"):
        fetch(tmp_path, archive, expected_for())
    members = {f"{wnid}.tar": tar_bytes(files) for wnid, files in images.items()}
    members["../escape.tar"] = b""
    (tmp_path / "unsafe").mkdir()
    unsafe = write_tar(tmp_path / "unsafe" / ARCHIVE, members, mode="w")
    with pytest.raises(DataError, match=r"holds a member '\.\./escape\.tar' that is not a plain file"):
        fetch(tmp_path, unsafe, expected_for(unsafe))
    assert list((tmp_path / "data").iterdir()) == []
