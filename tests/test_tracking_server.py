"""MLflow as a service: the ci profile's stages log to a real `mlflow server` over HTTP.

The server is the compose file's `mlflow` service command (compose.yaml), moved to 127.0.0.1, a
free port and a temporary backend store and artifact folder. Against it runs a reduced ci
profile: `dvc repro probe@<one run>`, i.e. the fetch, train and probe (extract, then probes) stages of one run
(about 40 s). The whole ci DAG is built once, against the SQLite default, by the "dag" tests;
rerunning all of it here would add minutes and check nothing more about the server.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.pipeline import CHECK_PARAMS, REPO, ci_checkout, free_port, serving, sh, stages_run

RUN = "guiroy2019-maml-omniglot-small-5w1s-s0"
CI_DATASETS = yaml.safe_load((REPO / "profiles" / "ci.yaml").read_text())["datasets"]
# a probe stage reads every dataset (a cross-domain key may meet any one's test tasks), so all are fetched
STAGES = [*(f"fetch@{d}" for d in CI_DATASETS), f"train@{RUN}", f"probe@{RUN}"]
MLFLOW_RUNS = [*STAGES, f"extract@{RUN}"]
"""The stage probe@RUN writes two MLflow runs: extract (the checkpoints it publishes), then probe."""


def server_command(store: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """compose.yaml's mlflow service: its command and environment, on 127.0.0.1 and temp paths."""
    service = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["mlflow"]
    overrides = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--backend-store-uri": f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination": str(store / "mlartifacts"),
        "--workers": "1",
    }
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, *service["command"][1:2]]
    for arg in service["command"][2:]:
        option = arg.split("=", 1)[0]
        command.append(f"{option}={overrides.pop(option)}" if option in overrides else arg)
    assert not overrides, f"compose.yaml's mlflow command lacks {sorted(overrides)}"
    return command, {key: compose_default(value) for key, value in service["environment"].items()}


def compose_default(value: str) -> str:
    """The value compose gives ``${VAR:-default}`` when VAR is unset (plain values unchanged)."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match[1] if match else value


@pytest.fixture(scope="module")
def served(tmp_path_factory, omniglot_mirror):
    """(checkout, env with MLFLOW_TRACKING_URI=http://..., client, store folder, repro log)."""
    root = tmp_path_factory.mktemp("server")
    work, env = ci_checkout(root / "repo", omniglot_mirror)
    store = root / "store"
    store.mkdir()
    command, server_env = server_command(store, free_port())
    port = int(next(arg for arg in command if arg.startswith("--port=")).split("=")[1])
    with serving(command, port, root / "server.log", cwd=root, env={**env, **server_env}) as url:
        env = {**env, "MLFLOW_TRACKING_URI": url}
        log = sh(["dvc", "repro", f"probe@{RUN}"], work, env)
        yield work, env, MlflowClient(url), store, log


def runs_by_stage(client: MlflowClient) -> dict[str, object]:
    """The stage runs by name (`<stage>@<run>`); extract@RUN names the DVC stage probe@RUN in its tags."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.`metaland.stage` != 'pipeline'")
    return {run.info.run_name: run for run in runs}


def test_the_stages_log_to_the_server_only(served):
    work, _, client, store, log = served
    ran = stages_run(log)
    assert sorted(ran) == sorted([CHECK_PARAMS, *STAGES]) and ran[0] == CHECK_PARAMS and ran[-1] == f"probe@{RUN}"
    assert ran.index("fetch@omniglot-small") < ran.index(f"train@{RUN}") < ran.index(f"probe@{RUN}")
    names = {e.name for e in client.search_experiments()}
    assert {"metaland/data", "metaland/guiroy2019"} <= names
    runs = runs_by_stage(client)
    assert sorted(runs) == sorted(MLFLOW_RUNS)
    assert all(run.info.status == "FINISHED" for run in runs.values())
    train = runs[f"train@{RUN}"]
    history = client.get_metric_history(train.info.run_id, "train/query_loss")
    assert [m.step for m in history] == [5, 10, 15, 20, 25, 30, 35, 40]
    probe = runs[f"probe@{RUN}"]
    assert [m.step for m in client.get_metric_history(probe.info.run_id, "probe/hessian_spectral_norm")] == [
        0,
        10,
        20,
        30,
        40,
    ]
    assert (store / "mlflow.db").is_file(), "the server's backend store holds the runs"
    assert not (work / "mlflow.db").exists() and not (work / "mlartifacts").exists(), "nothing tracked locally"


def test_checkpoints_and_models_go_through_the_server(served, tmp_path):
    work, _, client, store, _ = served
    train = runs_by_stage(client)[f"train@{RUN}"]
    names = {a.path for a in client.list_artifacts(train.info.run_id, "checkpoints")}
    assert "checkpoints/step-00000040.safetensors" in names
    local = client.download_artifacts(train.info.run_id, "checkpoints/step-00000040.safetensors", str(tmp_path))
    original = work / "runs" / RUN / "ckpt" / "step-00000040.safetensors"
    assert hashlib.sha256(Path(local).read_bytes()).digest() == hashlib.sha256(original.read_bytes()).digest()
    stored = list((store / "mlartifacts").rglob("step-00000040.safetensors"))
    assert stored, "the server stored the artifact in its --artifacts-destination"
    experiment = client.get_experiment_by_name("metaland/guiroy2019").experiment_id
    models = client.search_logged_models([experiment])
    assert len(models) == 5 and all(m.status.name == "READY" for m in models)


def test_every_run_leads_back_to_the_command_that_rebuilds_it(served):
    """Each run names its DVC stage, the commit and params hash; running its rebuild command in
    the checkout finds that stage up to date (same stage, same params, same outputs)."""
    work, env, client, _, _ = served
    head = sh(["git", "rev-parse", "HEAD"], work, env).strip()
    stages = set(sh(["dvc", "stage", "list", "--name-only"], work, env).split())
    for name, run in runs_by_stage(client).items():
        tags = run.data.tags
        stage = f"probe@{RUN}" if name == f"extract@{RUN}" else name
        assert (
            tags["metaland.dvc_stage"] == stage
            and stage in stages
            and tags["git.commit"] == head
            and tags["git.dirty"] == "false"
        )
        assert tags["metaland.rebuild"] == f"git checkout {head} && dvc repro {stage}"
        assert tags["mlflow.source.name"] == f"dvc repro {stage}" and len(tags["metaland.params_hash"]) == 16
    sidecar = json.loads((work / "runs" / RUN / "ckpt" / "step-00000040.json").read_text())
    assert runs_by_stage(client)[f"train@{RUN}"].data.tags["metaland.params_hash"] == sidecar["params_hash"]
    rebuild = runs_by_stage(client)[f"train@{RUN}"].data.tags["metaland.rebuild"]
    log = sh(["sh", "-c", rebuild], work, env)
    assert stages_run(log) == [] and f"Stage 'train@{RUN}' didn't change, skipping" in log
