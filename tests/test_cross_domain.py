"""Cross-domain probes (`<probe>@<dataset>`): a run trained on one dataset meta-tested on another's test split, on
the tasks that dataset's own runs meet; against a direct evaluation of the checkpoint; never from a stale cache."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from metaland.checkpoints import Checkpoint, load_params
from metaland.config import (
    AggregateConfig,
    ExtractConfig,
    ProbeConfig,
    StudyConfig,
    probe_suffix,
    probe_target,
    resolve,
)
from metaland.data.layout import load_split, write_layout
from metaland.data.tasks import load_task_set, materialise, sample_dataset_tasks
from metaland.errors import ConfigError
from metaland.extract import extract
from metaland.meta.evaluate import evaluate_tasks
from metaland.meta.train import train
from metaland.models import build_for_run, make_forward
from metaland.probes import PROBES
from metaland.probes.runner import probe_run
from metaland.seeding import generator
from tests.conftest import synthetic_split
from tests.helpers import DATASET_PARAMS, make_run
from tests.test_config import REPO

CPU = torch.device("cpu")
OTHER = "tiny-b"


def params_hash_of(run) -> str:
    """The params hash the checkpoints of ``run`` were trained for."""
    return run.trajectory_hash(DATASET_PARAMS)


def other_dataset(root: Path, seed: int) -> Path:
    """A second tiny dataset beside the first (same 1 × 8 × 8 images, other classes)."""
    splits = {s: synthetic_split(6, 20, 8, seed + i, f"{s}-b") for i, s in enumerate(("train", "val", "test"))}
    write_layout(root / OTHER, splits, {"dataset": OTHER, "seed": seed})
    return root / OTHER


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A run trained on ``tiny``, its final checkpoint extracted, and a data root holding tiny and tiny-b."""
    root = tmp_path_factory.mktemp("cross")
    run = make_run()
    train(run, DATASET_PARAMS, tiny_dataset, root / "run", device=CPU)
    extract(
        run,
        ExtractConfig(every=0, best=False, final=True),
        root / "run",
        root / "ckpt",
        params_hash=params_hash_of(run),
    )
    shutil.copytree(tiny_dataset, root / "data" / "tiny")
    other_dataset(root / "data", seed=11)
    return run, root


def study(keys: tuple[str, ...]) -> StudyConfig:
    options = PROBES.get("adaptation").options_model()
    probe = ProbeConfig(tasks=6, chunk=3, seed=4)
    return StudyConfig("guiroy2019", ExtractConfig(), probe, {k: options for k in keys}, AggregateConfig())


def test_probe_keys_name_their_dataset_and_split():
    assert probe_target("adaptation@cars", "mini", "test") == ("cars", "test")
    assert probe_target("sharpness@cars/val", "mini", "test") == ("cars", "val")
    assert probe_target("surface/train", "mini", "test") == ("mini", "train")
    assert (probe_suffix("adaptation@cars"), probe_suffix("adaptation@cars/val"), probe_suffix("a")) == (
        "@cars",
        "@cars/val",
        "",
    )
    with pytest.raises(ConfigError, match=r"probe key 'adaptation@a@b' is malformed"):
        probe_target("adaptation@a@b", "mini", "test")


def test_a_cross_domain_key_meets_the_other_datasets_tasks_and_scores_the_checkpoint_on_them(trained, tmp_path):
    run, root = trained
    config = study(("adaptation", f"adaptation@{OTHER}"))
    rows = probe_run(run, config, root / "data" / "tiny", root / "ckpt", tmp_path / "out", device=CPU,
                     params_hash=params_hash_of(run), cache_dir=tmp_path / "cache")  # fmt: skip
    (row,) = rows
    assert {"query_accuracy", f"query_accuracy@{OTHER}", f"pre_query_accuracy@{OTHER}"} <= set(row)
    tasks = load_task_set(tmp_path / "out" / f"tasks@{OTHER}.json")
    other = load_split(root / "data" / OTHER, "test")
    expected = sample_dataset_tasks(
        OTHER, other, ways=run.ways, shots=run.shots, queries=run.queries, n_tasks=6,
        generator=generator(4, "probe-tasks", OTHER, "test", run.ways, run.shots, run.queries),
    )  # fmt: skip
    assert torch.equal(tasks.classes, expected.classes) and torch.equal(tasks.query, expected.query)
    # the oracle: the checkpoint adapted on those tasks by the run's inner loop, directly
    module = build_for_run(run, other.images, CPU)
    (entry,) = (root / "ckpt").glob("step-*.safetensors")
    checkpoint = Checkpoint(entry, yaml.safe_load(entry.with_suffix(".json").read_text()))
    params = load_params(checkpoint, dict(module.named_parameters()), CPU)
    metrics, _ = evaluate_tasks(make_forward(module), params, materialise(other, expected), steps=2, lr=0.1, chunk=3)
    assert row[f"query_accuracy@{OTHER}"] == pytest.approx(float(metrics["query_accuracy"].mean()), abs=1e-6)
    per_task = pd.read_csv(tmp_path / "out" / "tasks.csv")
    assert per_task[f"query_accuracy@{OTHER}"].tolist() == pytest.approx(metrics["query_accuracy"].tolist(), abs=1e-6)


def test_a_changed_target_dataset_is_probed_again_not_read_from_the_cache(trained, tmp_path):
    run, root = trained
    data = tmp_path / "data"
    shutil.copytree(root / "data" / "tiny", data / "tiny")
    other_dataset(data, seed=11)
    config = study((f"adaptation@{OTHER}",))

    def probe(out: str) -> float:
        (row,) = probe_run(run, config, data / "tiny", root / "ckpt", tmp_path / out, device=CPU,
                           params_hash=params_hash_of(run), cache_dir=tmp_path / "cache")  # fmt: skip
        return row[f"query_accuracy@{OTHER}"]

    first = probe("a")
    assert probe("b") == first and len(list((tmp_path / "cache").rglob("*.json"))) == 1
    shutil.rmtree(data / OTHER)
    other_dataset(data, seed=23)  # other images under the same name
    probe("c")
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 2, "the target's manifest is part of the cache key"


def test_config_checks_a_cross_domain_target_before_any_work():
    raw = yaml.safe_load((REPO / "profiles" / "ci.yaml").read_text())
    run = "lil2022-maml-omniglot-small-5w1s-s0"
    probes = raw["studies"]["lil2022"]["probe"]["probes"]
    assert ("omniglot-small-alphabets", "test") in resolve(raw).studies["lil2022"].probe_targets(resolve(raw).runs[run])
    many_ways = copy.deepcopy(raw)
    many_ways["datasets"]["omniglot-small-alphabets"]["rotations"] = False
    many_ways["runs"][run]["ways"] = 70
    with pytest.raises(ConfigError, match=r"the test split of dataset 'omniglot-small-alphabets' has 68 classes"):
        resolve(many_ways)
    queries = copy.deepcopy(raw)
    queries["runs"][run]["queries"] = 20
    with pytest.raises(ConfigError, match=r"its probes on 'omniglot-small-alphabets' need shots \+ queries = 1 \+ 20"):
        resolve(queries)
    malformed = copy.deepcopy(raw)
    malformed["studies"]["lil2022"]["probe"]["probes"] = {**probes, "adaptation@a@b": {}}
    with pytest.raises(ConfigError, match=r"probe key 'adaptation@a@b' is malformed"):
        resolve(malformed)
