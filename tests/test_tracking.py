"""The MLflow boundary: one run per stage execution, tagged; a resumed training continues its run."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

import pytest
import torch
from mlflow import MlflowClient

from metaland.errors import TrackingError
from metaland.tracking import (
    OUTPUTS_TAG,
    StageRun,
    describe_store,
    ensure_store,
    flatten_params,
    producer_run_id,
    stage_run,
)


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


def test_a_training_run_samples_the_machine_and_names_its_dataset(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    dataset = {"name": "omniglot-small", "digest": "ab" * 32, "source": "/data/omniglot-small"}
    with stage_run("train", experiment="s", run_key="s-run", system_metrics=True, dataset=dataset) as run:
        run.log_metrics({"train/query_loss": 1.0}, step=1)
        assert run.run_id  # the sidecar has opened the run: the monitor samples from now on
        time.sleep(3.5)
    logged = store.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    system = {key for key in logged.data.metrics if key.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system
    steps = store.get_metric_history(run.run_id, "system/cpu_utilization_percentage")
    assert len(steps) >= 2, "one sample a second while the run is open"
    (given,) = logged.inputs.dataset_inputs
    assert (given.dataset.name, given.dataset.digest, given.dataset.source) == (
        "omniglot-small",
        "ab" * 8,
        dataset["source"],
    )
    assert [(t.key, t.value) for t in given.tags] == [("mlflow.data.context", "training")]


RACE_LOST = (
    "RestException: BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
    "datasets.name, datasets.digest"
)
"""What an MLflow server answered a training job of `metaland launch` whose dataset row another job had just
created (CI, 2026-12-06)."""


class LosesTheFirstCall:
    """A store client whose first ``log_inputs`` fails as ``error`` after another run has logged the same dataset
    (the row now exists), then works: two runs' race to create a dataset row, replayed in order."""

    def __init__(self, client: MlflowClient, rival_run: str, error: str):
        self.client, self.rival_run, self.error, self.calls = client, rival_run, error, 0

    def log_inputs(self, run_id, datasets):
        from mlflow.exceptions import MlflowException

        self.calls += 1
        if self.calls == 1:
            self.client.log_inputs(self.rival_run, datasets=datasets)
            raise MlflowException(self.error)
        self.client.log_inputs(run_id, datasets=datasets)


def test_a_run_that_loses_the_race_to_create_its_dataset_row_logs_its_input_anyway(store):
    from mlflow.exceptions import MlflowException

    from metaland.tracking_sidecar import log_dataset

    experiment = store.create_experiment("race")
    first, second = (store.create_run(experiment).info.run_id for _ in range(2))
    racing = LosesTheFirstCall(store, first, RACE_LOST)
    log_dataset(racing, second, "omniglot-small", "ab" * 32, "/data/omniglot-small")
    assert racing.calls == 2
    for run in (first, second):
        (given,) = store.get_run(run).inputs.dataset_inputs
        assert (given.dataset.name, given.dataset.digest) == ("omniglot-small", "ab" * 8)
    other = LosesTheFirstCall(store, first, "RESOURCE_DOES_NOT_EXIST: Run 'x' not found")
    with pytest.raises(MlflowException, match="not found"):
        log_dataset(other, second, "omniglot-small", "ab" * 32, "/data/omniglot-small")
    assert other.calls == 1, "any other error is the stage's failure, at once"


def test_other_stages_log_no_system_metrics(store):
    with stage_run("probe", experiment="s", run_key="s-run") as run:
        run.log_metrics({"probe/acc": 0.5}, step=10)
    assert not [key for key in store.get_run(run.run_id).data.metrics if key.startswith("system/")]


def test_cross_domain_keys_are_logged_under_names_mlflow_accepts(store):
    """MLflow refuses ``@`` in names: a cross-domain probe key and its metrics are logged with ``:``."""
    with stage_run("probe", experiment="s", run_key="x", params={"probes": {"adaptation@cars": {}}}) as run:
        run.log_metrics({"probe/query_accuracy@cars": 0.25}, step=3)
    logged = store.get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.data.params == {"probes.adaptation:cars": "{}"}
    assert [m.value for m in store.get_metric_history(run.run_id, "probe/query_accuracy:cars")] == [0.25]


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


def test_the_producer_of_outputs_is_the_first_finished_run_that_wrote_them(store, tmp_path):
    """Two probe runs wrote the same bytes (a forced rebuild): the first is named, so outputs that record
    it stay byte-stable; a run that wrote other bytes, a failed run or another key is not named."""
    out = tmp_path / "probes" / "k"
    out.mkdir(parents=True)
    (out / "checkpoints.csv").write_text("step,acc\n0,0.5\n")
    assert producer_run_id("s", "probe", "k", "0" * 64) is None  # no experiment yet
    runs = []
    for _ in range(2):
        with stage_run("probe", experiment="s", run_key="k") as run:
            digest = run.tag_outputs(out)
        runs.append(run.run_id)
    with pytest.raises(RuntimeError), stage_run("probe", experiment="s", run_key="k2") as failed:
        failed.tag_outputs(out)
        raise RuntimeError("boom")
    assert store.get_run(runs[1]).data.tags[OUTPUTS_TAG] == digest
    assert producer_run_id("s", "probe", "k", digest) == runs[0]
    assert producer_run_id("s", "probe", "k2", digest) is None
    (out / "checkpoints.csv").write_text("step,acc\n0,0.6\n")
    with stage_run("probe", experiment="s", run_key="k") as changed:
        other = changed.tag_outputs(out)
    assert other != digest and producer_run_id("s", "probe", "k", other) == changed.run_id


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


def test_a_run_leads_back_to_the_command_that_rebuilds_it(store, monkeypatch):
    """Under `dvc repro` (DVC_STAGE set) and `dvc exp run` (DVC_EXP_NAME set) the run names its DVC
    stage, the commit and the exact command; the UI shows the command as the run's source."""
    monkeypatch.setenv("DVC_STAGE", "train@s-run")
    monkeypatch.setenv("DVC_EXP_NAME", "curious-exp")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    with stage_run("train", experiment="s", run_key="s-run", params_hash="h1") as run:
        pass
    tags = store.get_run(run.run_id).data.tags
    commit = tags["git.commit"]
    assert tags["metaland.dvc_stage"] == "train@s-run"
    assert tags["metaland.rebuild"] == f"git checkout {commit} && dvc repro train@s-run"
    assert tags["mlflow.source.name"] == "dvc repro train@s-run"
    assert tags["metaland.rebuild"] in tags["mlflow.note.content"] and "h1" in tags["mlflow.note.content"]
    assert tags["metaland.dvc_exp"] == "curious-exp" and tags["metaland.dvc_exp_baseline"] == "a" * 40


def test_a_hand_run_command_names_the_same_dvc_stage(store, monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    with stage_run("probe", experiment="s", run_key="s-run") as keyed, stage_run("aggregate", experiment="r") as whole:
        pass
    assert store.get_run(keyed.run_id).data.tags["metaland.dvc_stage"] == "probe@s-run"
    tags = store.get_run(whole.run_id).data.tags
    assert tags["metaland.dvc_stage"] == "aggregate" and "metaland.dvc_exp" not in tags


def test_describe_store_reads_without_creating(tmp_path, monkeypatch):
    database = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    assert "not created yet" in describe_store() and not database.exists()
    ensure_store()
    assert describe_store().endswith("answers, 1 experiment(s)")  # MLflow's Default experiment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    with pytest.raises(TrackingError, match=r"is missing or not writable\. Fix:"):
        describe_store()


def test_describe_store_names_an_unreachable_server(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(TrackingError, match=r"cannot be reached .* Fix: start the server"):
        describe_store()


def test_a_store_error_fails_the_stage_and_its_run(store, tmp_path):
    """The sidecar reports a failed call: the next call raises, and so does the end of the run."""
    message = r"artifact: .*missing\.txt.* Fix: `python -m metaland doctor`"
    with pytest.raises(TrackingError, match=message), stage_run("probe", experiment="s", run_key="k") as run:
        run.log_artifact(tmp_path / "missing.txt")
    assert store.get_run(run.run_id).info.status == "FAILED"
    with pytest.raises(TrackingError), stage_run("probe", experiment="s", run_key="k") as run:
        run.log_artifact(tmp_path / "missing.txt")
        deadline = time.monotonic() + 60
        with pytest.raises(TrackingError, match=r"missing\.txt"):
            while time.monotonic() < deadline:
                run.log_metrics({"x": 1.0}, step=0)
                time.sleep(0.1)


def test_a_run_closed_without_waiting_is_written_while_the_stage_goes_on(store, tmp_path):
    """`metaland probe --extract`: the extract run's sidecar finishes while the probes run; `finished`
    waits for it, and a store error met meanwhile fails the stage then."""
    with StageRun() as tracking:
        with stage_run("extract", experiment="s", run_key="k", started=tracking, wait=False) as run:
            run.log_metrics({"x": 1.0}, step=0)
        tracking.finished()
    logged = store.get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.data.metrics == {"x": 1.0}
    with StageRun() as tracking:
        with stage_run("extract", experiment="s", run_key="k", started=tracking, wait=False) as run:
            run.log_artifact(tmp_path / "missing.txt")  # reported after the block has ended
        with pytest.raises(TrackingError, match=r"missing\.txt.* Fix: `python -m metaland doctor`"):
            tracking.finished()


def test_an_unusable_store_fails_the_stage_with_its_reason(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}")
    message = r"a-file/mlflow\.db failed \(.*Error: .* Fix: "
    with pytest.raises(TrackingError, match=message), stage_run("probe", experiment="s", run_key="k") as run:
        run.log_metrics({"x": 1.0}, step=0)


def test_a_killed_stage_leaves_its_run_failed_not_running(store):
    """The stage dies without closing its run (SIGKILL, OOM): the sidecar sees its input end and
    marks the run FAILED, so the UI never shows a dead stage as running."""
    script = (
        "import os\n"
        "from metaland.tracking import stage_run\n"
        "with stage_run('train', experiment='s', run_key='k') as run:\n"
        "    run.log_metrics({'loss': 1.0}, step=1)\n"
        "    print(run.run_id, flush=True)\n"
        "    os._exit(3)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert killed.returncode == 3, killed.stderr
    run_id = killed.stdout.strip()
    deadline = time.monotonic() + 60
    while store.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.get_run(run_id).info.status == "FAILED"
    assert [m.value for m in store.get_metric_history(run_id, "loss")] == [1.0]


def test_logged_models_are_pyfunc_models_with_their_checkpoint_and_params(store, tmp_path):
    """The sidecar's side of ``log_model``; loading and predicting is tests/test_serving.py's."""
    from metaland.checkpoints import save_checkpoint
    from metaland.models import build_for_run, initial_params
    from metaland.serving import model_spec
    from tests.helpers import make_run

    run = make_run()
    shape = (1, 8, 8)
    params = initial_params(build_for_run(run, torch.zeros(1, *shape)))
    metrics = {"val/query_accuracy": 0.5}
    checkpoint = save_checkpoint(
        tmp_path, 10, {"params": params}, params_hash="h", metrics=metrics, extra={"reasons": ["final"]}
    )
    with stage_run("extract", experiment="s", run_key="k") as run_log:
        run_log.log_model(
            "k-step00000010", checkpoint.path, model_spec(run, shape, checkpoint), {"step": 10}, {"a": "b"}
        )
    (model,) = store.search_logged_models(experiment_ids=[store.get_run(run_log.run_id).info.experiment_id])
    assert model.name == "k-step00000010" and model.source_run_id == run_log.run_id and model.params == {"step": "10"}
    assert model.model_type == "pyfunc" and model.tags["a"] == "b"
    assert [(m.key, m.value, m.step) for m in model.metrics] == [("val/query_accuracy", 0.5, 10)]
    files = {a.path for a in store.list_logged_model_artifacts(model.model_id)}
    assert {"MLmodel", "mlflow_model.py", "input_example.json", "requirements.txt"} <= files
    assert {"step-00000010.safetensors", "step-00000010.json", "model.json"} <= {
        a.path.rsplit("/", 1)[-1] for a in store.list_logged_model_artifacts(model.model_id, "artifacts")
    }


STAGE = """import sys
from metaland.tracking import stage_run
with stage_run(sys.argv[1], experiment="s", run_key=sys.argv[1]):
    assert sys.argv[2] == "ok"
"""
FAKE_DVC = """import os, subprocess, sys
for name, outcome in zip(("first", "second"), sys.argv[2:]):
    if subprocess.run([sys.executable, "-c", os.environ["STAGE"], name, outcome]).returncode:
        sys.exit(1)
"""


def fake_dvc(tmp_path, *outcomes: str) -> None:
    """Run two stages the way `dvc repro` does: child processes of a process whose program is `dvc`."""
    program = tmp_path / "dvc"
    program.write_text(FAKE_DVC)
    subprocess.run([sys.executable, str(program), "repro", *outcomes], env={**os.environ, "STAGE": STAGE}, check=False)


def pipeline_runs(store) -> tuple[list, list]:
    experiment = store.get_experiment_by_name("metaland/s").experiment_id
    runs = store.search_runs([experiment], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags["metaland.stage"] == "pipeline"]
    return parents, [r for r in runs if r not in parents]


def test_each_pipeline_execution_is_a_parent_run_with_its_stages_nested(store, tmp_path):
    fake_dvc(tmp_path, "ok", "ok")
    fake_dvc(tmp_path, "ok", "ok")
    parents, stages = pipeline_runs(store)
    assert len(parents) == 2 and len(stages) == 4
    for parent in parents:
        nested = [r for r in stages if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.info.run_name for r in nested) == ["first@first", "second@second"]
        assert parent.info.run_name.startswith("dvc repro ok ok · ") and parent.info.status == "FINISHED"
        assert parent.info.start_time <= min(r.info.start_time for r in nested)
        assert parent.data.tags["git.commit"] == nested[0].data.tags["git.commit"]


def test_a_failed_stage_fails_its_pipeline_run(store, tmp_path):
    fake_dvc(tmp_path, "ok", "fail")
    (parent,), stages = pipeline_runs(store)
    assert [r.info.status for r in stages] == ["FINISHED", "FAILED"] and parent.info.status == "FAILED"


def test_a_stage_run_by_hand_has_no_parent(store):
    with stage_run("extract", experiment="s", run_key="k") as run:
        pass
    assert "mlflow.parentRunId" not in store.get_run(run.run_id).data.tags


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["/usr/bin/dvc", "repro"], True),
        (["/venv/bin/python3", "/venv/bin/dvc", "exp", "run"], True),
        (["python", "-m", "dvc", "repro"], True),
        (["python", "stages/train.py", "dvc"], False),
        (["/bin/sh", "-c", "python stages/train.py x"], False),
        ([], False),
    ],
)
def test_dvc_processes_are_recognised_by_their_program(cmdline, expected):
    from metaland.tracking_sidecar import is_dvc

    assert is_dvc(cmdline) is expected


def test_a_checkout_is_dirty_for_code_and_params_not_for_the_dvc_lock_repro_rewrites(tmp_path, monkeypatch):
    from metaland.tracking import git_state

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    for name in ("dvc.lock", "params.yaml"):
        (tmp_path / name).write_text("a: 1\n")
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "c"]):
        subprocess.run(["git", *command], cwd=tmp_path, env=env, check=True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.lock").write_text("a: 2\n")
    assert git_state()["dirty"] == "false"
    (tmp_path / "params.yaml").write_text("a: 2\n")
    assert git_state()["dirty"] == "true"
