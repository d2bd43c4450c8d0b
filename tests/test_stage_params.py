"""The per-stage params files of `check-params` (metaland.stage_params) against dvc.yaml: every stage depends
on exactly its own file, and a file changes exactly when a key its stage reads changes."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from metaland.stage_params import VALID, stage_params, write_stage_params
from tests.pipeline import REPO

PROFILES = ("ci", "default", "paper")
FOLDER = ".metaland/params-checked"


def profile(name: str) -> dict:
    return yaml.safe_load((REPO / "profiles" / f"{name}.yaml").read_text())


def dvc_stage_files(raw: dict) -> dict[str, list[str]]:
    """Each stage of dvc.yaml, its foreach cells filled in from ``raw``: the files it reads of ``FOLDER``."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    files = {}
    for name, stage in stages.items():
        if "foreach" in stage:
            (over,) = re.fullmatch(r"\$\{(\w+)\}", stage["foreach"]).groups()
            cells = {f"{name}@{key}": key for key in raw[over]}
            body = stage["do"]
        else:
            cells, body = {name: None}, stage
        for cell, key in cells.items():
            deps = [str(d).replace("${key}", key or "") for d in body.get("deps", [])]
            files[cell] = [d.removeprefix(f"{FOLDER}/") for d in deps if d.startswith(f"{FOLDER}/")]
            assert "params" not in body or name == "check-params", f"{name} tracks params.yaml keys in dvc.lock"
    return files


@pytest.mark.parametrize("name", PROFILES)
def test_every_stage_but_check_params_depends_on_its_own_file_and_every_file_has_its_stage(name):
    raw = profile(name)
    files = dvc_stage_files(raw)
    assert files.pop("check-params") == []
    assert files.pop("plot") == [VALID]
    assert files == {stage: [f"{stage}.json"] for stage in stage_params(raw)}


def test_each_file_holds_exactly_the_keys_its_stage_reads():
    raw = profile("default")
    picked = stage_params(raw)
    key, run = next(iter(raw["runs"].items()))
    study = raw["studies"][run["study"]]
    assert picked[f"train@{key}"] == {
        "runs": {key: run},
        "studies": {run["study"]: {"defaults": study["defaults"]}},
        "seed_offset": raw["seed_offset"],
    }
    assert picked[f"probe@{key}"] == {
        "runs": {key: run},
        "studies": {run["study"]: {"extract": study["extract"], "probe": study["probe"]}},
    }
    dataset = run["dataset"]
    assert picked[f"fetch@{dataset}"] == {"datasets": {dataset: raw["datasets"][dataset]}}
    assert picked["aggregate"] == {"runs": raw["runs"], "studies": raw["studies"]}


def edited(raw: dict, edit) -> dict:
    raw = copy.deepcopy(raw)
    edit(raw)
    return raw


def changed_stages(raw: dict, edit) -> set[str]:
    before, after = stage_params(raw), stage_params(edited(raw, edit))
    return {stage for stage in before.keys() | after.keys() if before.get(stage) != after.get(stage)}


def test_an_edit_changes_the_files_of_the_stages_that_read_it_and_no_other():
    raw = profile("default")
    runs = raw["runs"]
    key = next(k for k, r in runs.items() if r["study"] == "sharpmaml")
    sharpmaml = {k for k, r in runs.items() if r["study"] == "sharpmaml"}
    set_lr = lambda r: r["studies"]["sharpmaml"]["defaults"]["train"].update(meta_lr=0.002)  # noqa: E731
    assert changed_stages(raw, set_lr) == {*(f"train@{k}" for k in sharpmaml), "aggregate"}
    set_tasks = lambda r: r["studies"]["sharpmaml"]["probe"].update(tasks=7)  # noqa: E731
    assert changed_stages(raw, set_tasks) == {*(f"probe@{k}" for k in sharpmaml), "aggregate"}
    keep_final = lambda r: r["studies"]["sharpmaml"]["extract"].update(final=False)  # noqa: E731
    assert changed_stages(raw, keep_final) == {*(f"probe@{k}" for k in sharpmaml), "aggregate"}
    one_run = lambda r: r["runs"][key].update(seed=99)  # noqa: E731
    assert changed_stages(raw, one_run) == {f"train@{key}", f"probe@{key}", "aggregate"}
    offset = lambda r: r.update(seed_offset=100)  # noqa: E731
    assert changed_stages(raw, offset) == {f"train@{k}" for k in runs}
    size = lambda r: r["datasets"]["omniglot-small"].update(image_size=20)  # noqa: E731
    assert changed_stages(raw, size) == {"fetch@omniglot-small"}
    assert changed_stages(raw, lambda r: r.update(launch={})) == set(), "the launch block is read by no stage"


def test_the_folder_is_replaced_whole_with_the_same_bytes_for_the_same_params(tmp_path):
    raw = profile("ci")
    out = tmp_path / "checked"
    assert write_stage_params(raw, out) == len(stage_params(raw))
    first = {path.name: path.read_bytes() for path in out.iterdir()}
    (out / "train@gone.json").write_text("{}")
    write_stage_params(raw, out)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == first
    assert first[VALID] == b"params valid\n" and not list(tmp_path.glob(".*"))
