"""Sharing data and results through a DVC remote: push; a fresh clone pulls; lose everything, pull.

Works on the ci-profile build shared by the "dag" tests (conftest.ci_pipeline), whose outputs
are datasets, training runs and checkpoints, probe tables, results, figures and the report. The
remote is a local folder, configured like any remote (`dvc remote add -d`, here in the
git-ignored .dvc/config.local so the checkout stays clean); S3 and SSH remotes differ only in
their URL (README.md, "Sharing data and results").
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.pipeline import sh, stages_run

pytestmark = [pytest.mark.dag, pytest.mark.xdist_group("dag")]


def outputs(work: Path, env: dict) -> list[Path]:
    """Every output (folders, check-params' among them) of the pipeline's stages, as dvc.lock lists
    them. (dvc.lock also keeps the entries of stages another profile defines: the committed one is the
    default profile's, and `dvc repro` on the ci profile adds its own stages without dropping those.)"""
    stages = set(sh(["dvc", "stage", "list", "--name-only"], work, env).split())
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    return sorted({work / out["path"] for name in stages & set(lock) for out in lock[name].get("outs", [])})


def digests(paths: list[Path]) -> dict[str, str]:
    return {
        str(file): hashlib.sha256(file.read_bytes()).hexdigest()
        for path in paths
        for file in sorted(path.rglob("*") if path.is_dir() else [path])
        if file.is_file()
    }


def test_push_wipe_pull_restores_every_output(ci_pipeline, tmp_path):
    work, env, _ = ci_pipeline
    assert stages_run(sh(["dvc", "repro"], work, env)) == [], "starts from an up-to-date build"
    folders = outputs(work, env)
    kinds = {folder.relative_to(work).parts[0] for folder in folders}
    assert kinds == {".metaland", "data", "runs", "checkpoints", "probes", "results", "figures", "report"}
    before = digests(folders)
    assert sum(name.endswith(".safetensors") for name in before) > 10 and "results/claims.json" in "\n".join(before)

    remote = tmp_path / "remote"
    sh(["dvc", "remote", "add", "--local", "-d", "shared", str(remote)], work, env)
    try:
        pushed = sh(["dvc", "push"], work, env)
        assert "pushed" in pushed and any(remote.rglob("*")), pushed
        a_fresh_clone_pulls_every_output_and_recomputes_nothing(work, env, remote, tmp_path / "clone", before)

        shutil.rmtree(work / ".dvc" / "cache")
        for folder in folders:
            shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
        missing = json.loads(sh(["dvc", "status", "--json"], work, env).splitlines()[-1])
        assert missing, "with the cache and outputs gone, DVC reports them missing"

        sh(["dvc", "pull"], work, env)
        assert digests(folders) == before, "every output comes back byte for byte"
        status = sh(["dvc", "status"], work, env)
        assert "Data and pipelines are up to date." in status, status
        cloud = sh(["dvc", "status", "--cloud"], work, env)
        assert "Cache and remote 'shared' are in sync." in cloud, cloud
    finally:
        sh(["dvc", "remote", "remove", "--local", "shared"], work, env)


def a_fresh_clone_pulls_every_output_and_recomputes_nothing(
    work: Path, env: dict, remote: Path, clone: Path, built: dict[str, str]
) -> None:
    """A `git clone` of a commit holding this dvc.lock (committed here by copying it in), with the
    remote configured: `dvc pull` brings every output back byte for byte, `dvc status` is clean and
    `dvc repro` runs nothing."""
    sh(["git", "clone", "-q", str(work), str(clone)], work.parent, env)
    shutil.copy2(work / "dvc.lock", clone / "dvc.lock")
    sh(["dvc", "remote", "add", "--local", "-d", "shared", str(remote)], clone, env)
    sh(["dvc", "pull"], clone, env)
    assert digests(outputs(clone, env)) == {str(clone / Path(f).relative_to(work)): d for f, d in built.items()}
    status = sh(["dvc", "status"], clone, env)
    assert "Data and pipelines are up to date." in status, status
    assert stages_run(sh(["dvc", "repro"], clone, env)) == [], "nothing is recomputed"


def test_the_shared_build_tests_run_on_one_worker(request):
    """Under `make test` (-n 2 --dist loadgroup) every user of the ci build carries the group
    suffix xdist schedules by (conftest.pytest_collection_modifyitems); without it each worker
    would build the ci DAG again."""
    if not request.config.getoption("loadgroup", default=False):
        pytest.skip("not distributed with --dist loadgroup")
    assert request.node.nodeid.endswith("@dag")
