"""MiniImagenet on generated archives of the Ravi & Larochelle layout (images/*.jpg + split CSVs):
the layout, class order and resizing, the checksum params, and every refusal (atomically)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from metaland.data import DATASETS, SPLITS, fetch_dataset, load_split
from metaland.data.miniimagenet import Expected, MiniImagenetParams, make_spec
from metaland.errors import ConfigError, DataError

LABELS = {
    "train": ["n01000003", "n01000001", "n01000002"],
    "val": ["n02000001", "n02000002"],
    "test": ["n03000001", "n03000002"],
}
PER_CLASS = 3
SIZE = 10
SPEC = make_spec(Expected({s: len(labels) for s, labels in LABELS.items()}, PER_CLASS))
GRAY = "n0100000100000001.jpg"
"""A grayscale JPEG: it must come out as RGB with three equal channels."""


def jpeg(rng: random.Random, mode: str) -> bytes:
    """A SIZE x SIZE JPEG of random pixels."""
    channels = 3 if mode == "RGB" else 1
    image = Image.frombytes(mode, (SIZE, SIZE), bytes(rng.randrange(256) for _ in range(SIZE * SIZE * channels)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


def csv_bytes(rows: list[tuple[str, str]], header: str = "filename,label") -> bytes:
    return "\n".join([header, *(f"{name},{label}" for name, label in rows)]).encode() + b"\n"


def generate() -> tuple[dict[str, bytes], dict[str, list[tuple[str, str]]]]:
    """Archive members (path -> bytes) and the CSV rows per split, rows shuffled across classes."""
    rng = random.Random(0)
    members, rows = {}, {}
    for split, labels in LABELS.items():
        split_rows = []
        for label in labels:
            for k in range(1, PER_CLASS + 1):
                name = f"{label}{k:08d}.jpg"
                members[f"images/{name}"] = jpeg(rng, "L" if name == GRAY else "RGB")
                split_rows.append((name, label))
        rng.shuffle(split_rows)
        rows[split] = split_rows
        members[f"{split}.csv"] = csv_bytes(split_rows)
    return members, rows


def write_archive(path: Path, members: dict[str, bytes], top: str = "") -> Path:
    """A zip or tar(.gz) of ``members``, under the folder ``top`` when it is given."""
    prefix = f"{top}/" if top else ""
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(prefix + name, data)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(prefix + name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def params_for(archive: Path, **changes) -> MiniImagenetParams:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    return MiniImagenetParams(filename=archive.name, sha256=digest, **changes)


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def chw(image: Image.Image) -> torch.Tensor:
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.height, image.width, 3).permute(2, 0, 1)


def first_appearance(rows: list[tuple[str, str]]) -> list[str]:
    return list(dict.fromkeys(label for _, label in rows))


@pytest.fixture(scope="module")
def generated() -> tuple[dict[str, bytes], dict[str, list[tuple[str, str]]]]:
    return generate()


def fetch_members(tmp_path: Path, members: dict[str, bytes], name: str = "mini-imagenet.zip", **changes) -> Path:
    """Fetch ``members`` (archived under one top folder) into ``tmp_path / "data"``."""
    mirror = tmp_path / "mirror"
    mirror.mkdir(exist_ok=True)
    archive = write_archive(mirror / name, members, top="mini-imagenet")
    return fetch_dataset(SPEC, params_for(archive, **changes), tmp_path / "data", mirror=mirror)


# --- the registered dataset and its params ----------------------------------------------------


def test_registered_dataset_declares_the_published_split():
    spec = DATASETS.get("miniimagenet")
    params = MiniImagenetParams()
    assert spec.config_model is MiniImagenetParams
    assert spec.split_sizes(params) == {"train": 64, "val": 16, "test": 20}
    assert spec.min_instances(params) == 600
    assert spec.channels == 3
    assert (params.image_size, params.url, params.filename, params.sha256) == (84, "", "mini-imagenet.zip", "")


@pytest.mark.parametrize(
    "changes",
    [
        {"sha256": "abc"},
        {"sha256": "g" * 64},
        {"filename": "a/mini.zip"},
        {"filename": "mini.rar"},
        {"url": "ftp://example.org/mini.zip"},
        {"image_size": 4},
    ],
)
def test_params_are_validated(changes):
    with pytest.raises(ValidationError):
        MiniImagenetParams(**changes)


# --- the layout -----------------------------------------------------------------------------


def test_fetch_keeps_csv_order_and_native_size(generated, tmp_path):
    members, rows = generated
    out = fetch_members(tmp_path, members, image_size=SIZE)
    assert out == tmp_path / "data" / "miniimagenet"
    assert sorted(p.name for p in out.parent.iterdir()) == ["miniimagenet"], "no temp leftovers"
    assert any(first_appearance(r) != sorted(first_appearance(r)) for r in rows.values()), "a meaningful order"
    for split in SPLITS:
        data = load_split(out, split)
        assert list(data.class_names) == first_appearance(rows[split])
        assert data.images.shape == (len(rows[split]), 3, SIZE, SIZE)
        for c, label in enumerate(data.class_names):
            files = [name for name, row_label in rows[split] if row_label == label]
            expected = torch.stack([chw(decoded(members[f"images/{name}"])) for name in files])
            assert torch.equal(data.images[data.offsets[c] : data.offsets[c + 1]], expected), label
    gray = chw(decoded(members[f"images/{GRAY}"]))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "miniimagenet"
    assert manifest["params"] == params_for(tmp_path / "mirror" / "mini-imagenet.zip", image_size=SIZE).model_dump()
    assert manifest["sources"][0]["sha256"] == manifest["params"]["sha256"]
    assert manifest["counts"] == {s: {"classes": len(LABELS[s]), "images": len(rows[s])} for s in SPLITS}
    assert manifest["image_shape"] == [3, SIZE, SIZE]
    assert (manifest["csv_folder"], manifest["resized_images"]) == ("mini-imagenet", 0)


def test_fetch_resizes_with_lanczos_from_a_tar_without_top_folder(generated, tmp_path):
    members, rows = generated
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = write_archive(mirror / "mini.tar.gz", members)
    out = fetch_dataset(SPEC, params_for(archive, image_size=8), tmp_path / "data", mirror=mirror)
    train = load_split(out, "train")
    assert train.images.shape == (len(rows["train"]), 3, 8, 8)
    first = rows["train"][0][0]  # the first row: first image of the first class
    expected = chw(decoded(members[f"images/{first}"]).resize((8, 8), Image.Resampling.LANCZOS))
    assert torch.equal(train.images[0], expected)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["csv_folder"], manifest["resized_images"]) == (".", sum(len(r) for r in rows.values()))


# --- refusals -------------------------------------------------------------------------------


def assert_refused(tmp_path: Path, members: dict[str, bytes], pattern: str) -> None:
    with pytest.raises(DataError, match=pattern) as caught:
        fetch_members(tmp_path, members)
    assert str(caught.value).rstrip(".").split("Fix: ", 1)[1], "the message ends with a fix"
    assert list((tmp_path / "data").iterdir()) == [], "a failed fetch leaves nothing in the data root"


def test_pickled_mirror_is_refused(tmp_path):
    members = {f"mini-imagenet-cache-{s}.pkl": b"\x80\x04not unpickled" for s in SPLITS}
    assert_refused(tmp_path, members, r"pickled MiniImagenet mirror.*never unpickles.*Fix: .*train\.csv")


def broken(members: dict[str, bytes], rows: dict[str, list[tuple[str, str]]], problem: str) -> dict[str, bytes]:
    """A copy of the generated members with one ``problem``."""
    members = dict(members)
    if problem == "missing csv":
        del members["val.csv"]
    elif problem == "wrong header":
        members["train.csv"] = csv_bytes(rows["train"], header="file,class")
    elif problem == "missing image":
        del members[f"images/{rows['test'][1][0]}"]
    elif problem == "class in two splits":
        members["val.csv"] = csv_bytes([*rows["val"], rows["train"][0]])
    elif problem == "corrupt image":
        members[f"images/{rows['val'][0][0]}"] = members[f"images/{rows['val'][0][0]}"][:40]
    elif problem == "bad row":
        members["test.csv"] = csv_bytes([*rows["test"], ("../escape.jpg", "n03000001")])
    elif problem == "other split":
        members["val.csv"] = csv_bytes([row for row in rows["val"] if row[1] != "n02000002"])
    elif problem == "short class":
        members["train.csv"] = csv_bytes([row for row in rows["train"] if row[0] != "n0100000200000001.jpg"])
    return members


@pytest.mark.parametrize(
    ("problem", "pattern"),
    [
        ("missing csv", r"Split file mini-imagenet/val\.csv in mini-imagenet\.zip is missing\..*Fix:"),
        ("wrong header", r"mini-imagenet/train\.csv in mini-imagenet\.zip starts with 'file,class'.*Fix:"),
        ("missing image", r"Image mini-imagenet/images/n03\d+\.jpg in mini-imagenet\.zip, listed in test\.csv.*Fix:"),
        ("class in two splits", r"Class n0100000\d is in both mini-imagenet/train\.csv .* and val\.csv.*Fix:"),
        ("corrupt image", r"Image mini-imagenet/images/n02\d+\.jpg in mini-imagenet\.zip cannot be decoded.*Fix:"),
        ("bad row", r"test\.csv in mini-imagenet\.zip line 8 is not a 'filename,label' row.*Fix:"),
        ("other split", r"hold \{'train': 3, 'val': 1, 'test': 2\} classes.*Ravi & Larochelle.*Fix:"),
        ("short class", r"Classes n01000002 of mini-imagenet/train\.csv .* fewer than 3 images.*Fix:"),
    ],
)
def test_broken_archive_is_refused_atomically(generated, tmp_path, problem, pattern):
    members, rows = generated
    assert_refused(tmp_path, broken(members, rows, problem), pattern)


def test_checksum_is_required_and_verified(generated, tmp_path):
    members, _ = generated
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = write_archive(mirror / "mini-imagenet.zip", members)
    data_root = tmp_path / "data"
    with pytest.raises(ConfigError, match=r"sha256 is empty.*Fix: set datasets\.miniimagenet\.sha256"):
        fetch_dataset(SPEC, MiniImagenetParams(), data_root, mirror=mirror)
    wrong = MiniImagenetParams(sha256="0" * 64)
    with pytest.raises(DataError, match=rf"Mirror file {archive} .*sha256 expected 0{{64}}.*Fix:"):
        fetch_dataset(SPEC, wrong, data_root, mirror=mirror)
    assert not (data_root / "miniimagenet").exists()


def test_without_url_or_mirror_the_archive_must_be_cached(generated, tmp_path):
    members, _ = generated
    cache = tmp_path / "cache"
    cache.mkdir()
    archive = write_archive(cache / "mini-imagenet.zip", members)
    params = params_for(archive, image_size=SIZE)
    (cache / "mini-imagenet.zip").rename(tmp_path / "elsewhere.zip")
    with pytest.raises(DataError, match=r"mini-imagenet\.zip has no public address.*Fix: put the file"):
        fetch_dataset(SPEC, params, tmp_path / "data", cache_dir=cache)
    (tmp_path / "elsewhere.zip").rename(cache / "mini-imagenet.zip")
    out = fetch_dataset(SPEC, params, tmp_path / "data", cache_dir=cache)
    assert load_split(out, "val").num_classes == 2
