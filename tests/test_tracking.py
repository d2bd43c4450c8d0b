"""The MLflow boundary: one run per stage execution, tagged; a resumed training continues its run."""

from __future__ import annotations

import multiprocessing

import pytest
from mlflow import MlflowClient

from metaland.tracking import ensure_store, flatten_params, stage_run


@pytest.fixture()
def store(tmp_path, monkeypatch) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(uri)


def test_a_stage_run_is_tagged_and_finished(store):
    with stage_run("probe", experiment="s", run_key="s-run", params={"probe": {"tasks": 5}}) as run:
        run.log_metrics({"probe/acc": 0.5}, step=10)
    logged = store.get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "probe@s-run"
    assert logged.data.params == {"probe.tasks": "5"}
    tags = logged.data.tags
    assert tags["metaland.stage"] == "probe" and tags["metaland.run_key"] == "s-run"
    assert len(tags["metaland.params_hash"]) == 16 and tags["git.dirty"] in {"true", "false", "unknown"}
    assert [(m.step, m.value) for m in store.get_metric_history(run.run_id, "probe/acc")] == [(10, 0.5)]


def test_a_failing_stage_marks_its_run_failed(store):
    with pytest.raises(RuntimeError), stage_run("train", experiment="s", run_key="k") as run:
        raise RuntimeError("boom")
    assert store.get_run(run.run_id).info.status == "FAILED"


def test_resume_continues_the_run_of_the_same_params(store):
    with stage_run("train", experiment="s", run_key="k", params_hash="h1") as first:
        first.log_metrics({"loss": 1.0}, step=1)
    with stage_run("train", experiment="s", run_key="k", params_hash="h1", resume=True) as second:
        second.log_metrics({"loss": 0.5}, step=2)
    assert second.run_id == first.run_id
    assert [m.step for m in store.get_metric_history(first.run_id, "loss")] == [1, 2]
    with stage_run("train", experiment="s", run_key="k", params_hash="h2", resume=True) as other:
        pass
    assert other.run_id != first.run_id


def _create(uri: str) -> None:
    import os

    os.environ["MLFLOW_TRACKING_URI"] = uri
    ensure_store()


def test_concurrent_store_creation_is_serialised(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_create, args=(uri,)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert MlflowClient(uri).search_experiments()


def test_flatten_params():
    assert flatten_params({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": "1", "a.c.d": "[1, 2]", "e": "{}"}
