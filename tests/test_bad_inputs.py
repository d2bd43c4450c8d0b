"""Bad input, clear error: each row is a mistake a user can make; the command must exit with status
2, print one paragraph that names the key or file and a fix, and write nothing."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.test_cli import RUN, assert_user_error, run_cli

REPO = Path(__file__).resolve().parents[1]


def edit(change):
    """A case that edits the params mapping."""

    def apply(raw: dict, work: Path, monkeypatch) -> None:
        change(raw)

    return apply


def defaults(raw: dict) -> dict:
    return raw["studies"]["guiroy2019"]["defaults"]


def empty_dataset_folder(raw: dict, work: Path, monkeypatch) -> None:
    (work / "data" / "omniglot-small").mkdir(parents=True)


def unreachable_tracking_server(raw: dict, work: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing listens


def read_only_outputs(raw: dict, work: Path, monkeypatch) -> None:
    (work / "runs").mkdir()
    (work / "runs").chmod(0o500)


def invalid_yaml(raw: dict, work: Path, monkeypatch) -> None:
    raw.clear()
    raw["__text__"] = "studies: [unclosed"


CASES = [
    ("unknown algorithm", edit(lambda r: r["runs"][RUN].update(algorithm="mamll")), (), ["mamll", "maml"]),
    ("negative learning rate", edit(lambda r: defaults(r)["train"].update(inner_lr=-0.1)), (), ["inner_lr = -0.1"]),
    ("NaN in a param", edit(lambda r: defaults(r)["train"].update(meta_lr=math.nan)), (), ["meta_lr", "finite"]),
    ("wrong type", edit(lambda r: r["runs"][RUN].update(ways="five")), (), [f"runs.{RUN}.ways", "five"]),
    ("more ways than classes", edit(lambda r: r["runs"][RUN].update(ways=999)), (), ["ways = 999", "classes"]),
    ("shots + queries > images per class", edit(lambda r: defaults(r).update(queries=30)), (), ["queries", "20"]),
    ("missing params key", edit(lambda r: r["runs"][RUN].pop("seed")), (), [f"runs.{RUN}", "seed"]),
    ("unknown key", edit(lambda r: defaults(r)["train"].update(inner_lrr=0.1)), (), ["inner_lrr", "inner_lr"]),
    (
        "unknown probe",
        edit(lambda r: r["studies"]["guiroy2019"]["probe"]["probes"].update(curvatur={})),
        (),
        ["curvatur"],
    ),
    ("undeclared dataset", edit(lambda r: r["runs"][RUN].update(dataset="omniglott")), (), ["omniglott"]),
    ("unknown run", edit(lambda r: None), ("train", "guiroy2019-nope"), ["guiroy2019-nope"]),
    ("invalid YAML", invalid_yaml, (), ["not valid YAML"]),
    ("empty dataset folder", empty_dataset_folder, (), ["omniglot-small", "fetch"]),
    ("unreachable tracking server", unreachable_tracking_server, (), ["http://127.0.0.1:9", "cannot be reached"]),
    pytest.param(
        "read-only output folder",
        read_only_outputs,
        (),
        ["permission denied", "runs"],
        marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders"),
    ),
    (
        "bad probe option",
        edit(lambda r: r["studies"]["guiroy2019"]["probe"]["probes"].update(curvature={"tol": 2})),
        ("probe", RUN),
        ["curvature", "tol"],
    ),
    (
        "checkpoints off the logging grid",
        edit(lambda r: defaults(r)["train"].update(checkpoint_every=7)),
        (),
        ["checkpoint_every = 7", "log_every"],
    ),
]


@pytest.mark.parametrize(("case", "setup", "argv", "needles"), CASES, ids=[getattr(c, "values", c)[0] for c in CASES])
def test_bad_input_gives_a_clear_error_and_writes_nothing(case, setup, argv, needles, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((REPO / "profiles" / "ci.yaml").read_text())
    setup(raw, tmp_path, monkeypatch)
    params = tmp_path / "params.yaml"
    params.write_text(raw["__text__"] if "__text__" in raw else yaml.safe_dump(raw, sort_keys=False))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    command = argv or ("train", RUN)
    code, _, err = run_cli(capsys, *command, "--params", str(params))
    assert_user_error(code, err, *needles)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, f"{case}: wrote {sorted(set(after) - set(before))}"
    if (tmp_path / "runs").exists():
        (tmp_path / "runs").chmod(0o700)
        shutil.rmtree(tmp_path / "runs")
