"""Lake et al.'s one-shot runs on a generated all_runs.zip of the published layout (runNN/training/classNN.png,
runNN/test/itemNN.png, runNN/class_labels.txt): the pairs, the fixed tasks a probe meets, the checksum param,
the refusals, and what config validation lets a run probe."""

from __future__ import annotations

import copy
import dataclasses
import io
import random
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from metaland.config import resolve
from metaland.data import DATASETS, fetch_dataset, load_split
from metaland.data.omniglot_runs import URL, Expected, LakeRunsParams, make_spec, sample_lake_tasks
from metaland.data.registry import ArchiveSource
from metaland.data.tasks import materialise
from metaland.errors import ConfigError, DataError
from tests.archives import digest, write_zip
from tests.test_config import REPO

RUNS, WAYS = 3, 4
EXPECTED = Expected(runs=RUNS, ways=WAYS)
SIZE = 12


def drawing(rng: random.Random) -> bytes:
    image = Image.new("1", (105, 105), 1)
    ImageDraw.Draw(image).line([(rng.randrange(5, 100), rng.randrange(5, 100)) for _ in range(3)], fill=0, width=5)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def ink(data: bytes) -> torch.Tensor:
    """uint8 [SIZE, SIZE], Lanczos-resized, ink 255: the Omniglot convention written out."""
    with Image.open(io.BytesIO(data)) as image:
        gray = image.convert("L").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return 255 - torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).view(SIZE, SIZE)


def generate() -> tuple[dict[str, bytes], dict[str, tuple[str, str]]]:
    """Archive members (under all_runs/) and, per class ``runNN/classNN``, its (training, test) member names.
    Each run's labels file pairs test items with training classes in a shuffled order, as the published one."""
    rng = random.Random(0)
    members, pairs = {}, {}
    for run in range(1, RUNS + 1):
        folder = f"all_runs/run{run:02d}"
        items = list(range(1, WAYS + 1))
        rng.shuffle(items)
        lines = []
        for c, item in enumerate(items, 1):
            training, test = f"{folder}/training/class{c:02d}.png", f"{folder}/test/item{item:02d}.png"
            members[training], members[test] = drawing(rng), drawing(rng)
            lines.append(f"run{run:02d}/test/item{item:02d}.png run{run:02d}/training/class{c:02d}.png")
            pairs[f"run{run:02d}/class{c:02d}"] = (training, test)
        rng.shuffle(lines)
        members[f"{folder}/class_labels.txt"] = ("\n".join(lines) + "\n").encode()
    return members, pairs


@pytest.fixture(scope="module")
def generated():
    return generate()


def fetch(tmp_path: Path, members: dict[str, bytes], expected: Expected = EXPECTED) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir(exist_ok=True)
    archive = write_zip(mirror / "all_runs.zip", members)
    spec = dataclasses.replace(
        make_spec(expected), sources=lambda _p: (ArchiveSource("all_runs.zip", URL, sha256=digest(archive)),)
    )
    return fetch_dataset(spec, LakeRunsParams(image_size=SIZE), tmp_path / "data", mirror=mirror)


def test_registered_dataset_is_a_probe_target_whose_checksum_the_user_gives():
    spec = DATASETS.get("omniglot-lake-runs")
    params = LakeRunsParams()
    assert spec.splits == ("test",) and spec.split_sizes(params) == {"test": 400} and spec.fixed_queries == 1
    assert params.url == (
        "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/one-shot-classification/all_runs.zip"
    )
    with pytest.raises(ConfigError, match=r"sha256 is empty: Lake et al\. publish no checksum.*Fix:.*sha256sum"):
        spec.sources(params)
    (source,) = spec.sources(LakeRunsParams(sha256="AB" * 32))
    assert (source.filename, source.sha256, source.url) == ("all_runs.zip", "ab" * 32, params.url)


def test_each_class_holds_its_training_drawing_then_its_test_item(generated, tmp_path):
    members, pairs = generated
    out = fetch(tmp_path, members)
    test = load_split(out, "test")
    assert test.class_names == tuple(sorted(pairs)) and test.min_instances() == 2
    for c, name in enumerate(test.class_names):
        training, item = pairs[name]
        assert torch.equal(test.images[2 * c, 0], ink(members[training])), name
        assert torch.equal(test.images[2 * c + 1, 0], ink(members[item])), name
    assert not (out / "train.safetensors").exists() and not (out / "val.safetensors").exists()


def test_the_probe_tasks_are_the_official_runs_or_cuts_of_them(generated, tmp_path):
    test = load_split(fetch(tmp_path, generated[0]), "test")
    official = sample_lake_tasks(test, ways=WAYS, shots=1, queries=15, n_tasks=100, generator=torch.Generator())
    assert official.classes.shape == (RUNS, WAYS) and official.query.shape == (RUNS, WAYS, 1)
    for r, classes in enumerate(official.classes.tolist()):
        assert sorted(classes) == list(range(r * WAYS, (r + 1) * WAYS)), "one task per run, all its classes"
    assert official.support.eq(0).all() and official.query.eq(1).all()
    batch = materialise(test, official)
    assert torch.equal(batch.support_x[0, 0], test.images[2 * official.classes[0, 0]].float() / 255)
    seeded = torch.Generator().manual_seed(1)
    halves = sample_lake_tasks(test, ways=2, shots=1, queries=15, n_tasks=100, generator=seeded)
    assert halves.classes.shape == (2 * RUNS, 2)
    runs_of = halves.classes // WAYS
    assert (runs_of[:, 0] == runs_of[:, 1]).all(), "a task never mixes runs"
    assert runs_of[:RUNS, 0].tolist() == list(range(RUNS)), "the first tasks cover every run once"
    assert sorted(halves.classes.flatten().tolist()) == list(range(RUNS * WAYS))
    seeded = torch.Generator().manual_seed(1)
    capped = sample_lake_tasks(test, ways=2, shots=1, queries=15, n_tasks=4, generator=seeded)
    assert torch.equal(capped.classes, halves.classes[:4])
    with pytest.raises(ValueError, match="1-shot"):
        sample_lake_tasks(test, ways=2, shots=5, queries=1, n_tasks=4, generator=torch.Generator())


@pytest.mark.parametrize(
    ("problem", "pattern"),
    [
        ("twice", r"run01/class_labels\.txt pairs class\d\d\.png or item\d\d\.png twice"),
        ("missing", r"run02/class_labels\.txt names 'run02/test/item\d\d\.png', which the archive lacks"),
        ("runs", r"holds 2 runNN/class_labels\.txt files, but omniglot-lake-runs is declared with 3 runs"),
        ("other run", r"names 'run02/test/item\d\d\.png', a file of another run"),
    ],
)
def test_a_broken_archive_is_refused_atomically(generated, tmp_path, problem, pattern):
    members = dict(generated[0])
    labels = "all_runs/run01/class_labels.txt"
    if problem == "twice":
        first = members[labels].splitlines()[0]
        members[labels] = members[labels] + first + b"\n"
    elif problem == "missing":
        del members[next(k for k in members if k.startswith("all_runs/run02/test/"))]
    elif problem == "runs":
        members = {k: v for k, v in members.items() if not k.startswith("all_runs/run03/")}
    else:
        members[labels] = members[labels].replace(b"run01/test/", b"run02/test/", 1)
    with pytest.raises(DataError, match=pattern):
        fetch(tmp_path, members)
    assert list((tmp_path / "data").iterdir()) == []


RUN = "lil2022-maml-omniglot-small-5w1s-s0"


@pytest.fixture()
def raw() -> dict:
    raw = yaml.safe_load((REPO / "profiles" / "ci.yaml").read_text())
    raw["datasets"]["omniglot-lake-runs"] = {"image_size": 14, "url": URL, "sha256": ""}
    raw["studies"]["lil2022"]["probe"]["probes"]["adaptation@omniglot-lake-runs"] = {}
    return raw


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(raw)
    return str(info.value)


def test_config_lets_an_omniglot_run_be_scored_on_the_runs_and_refuses_what_cannot_be(raw):
    config = resolve(raw)  # omniglot-small: background alphabets only, 14 px like the runs
    run, study = config.runs[RUN], config.studies["lil2022"]
    assert ("omniglot-lake-runs", "test") in study.probe_targets(run)
    wrong_size = copy.deepcopy(raw)
    wrong_size["datasets"]["omniglot-lake-runs"]["image_size"] = 28
    message = error_of(wrong_size)
    assert "reads inputs of shape [1, 14, 14] (omniglot-small), but the probes `@omniglot-lake-runs`" in message
    assert "would feed it [1, 28, 28]" in message
    full = copy.deepcopy(raw)
    full["datasets"]["omniglot"] = dict(full["datasets"]["omniglot-small"])
    full["runs"] = {RUN.replace("-small", ""): {**raw["runs"][RUN], "dataset": "omniglot"}}
    assert "trains on characters of the evaluation alphabets" in error_of(full)
    full["datasets"]["omniglot"]["split_by"] = "lake"
    assert resolve(full).runs
    trained = copy.deepcopy(raw)
    trained["runs"][RUN]["dataset"] = "omniglot-lake-runs"
    assert "holds only the test split" in error_of(trained) and "cannot be trained on" in error_of(trained)
    undeclared = copy.deepcopy(raw)
    del undeclared["datasets"]["omniglot-lake-runs"]
    assert "measures `@omniglot-lake-runs`, which is not declared under datasets" in error_of(undeclared)
    other_split = copy.deepcopy(raw)
    del other_split["studies"]["lil2022"]["probe"]["probes"]["adaptation@omniglot-lake-runs"]
    other_split["studies"]["lil2022"]["probe"]["probes"]["adaptation@omniglot-lake-runs/val"] = {}
    assert "the val split of 'omniglot-lake-runs', which has only test" in error_of(other_split)
