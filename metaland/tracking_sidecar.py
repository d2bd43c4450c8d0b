"""The tracking sidecar: the process that writes one stage execution's MLflow run.

A stage starts it (:func:`metaland.tracking.stage_run`) and goes on with its own work at once;
the sidecar imports MLflow and opens the run meanwhile. Importing MLflow and PyTorch each takes one
to two seconds of a single core, so on a two-core machine the two overlap instead of adding up:
about two seconds less per stage, four minutes over the default profile's 118 stages.

Protocol: one JSON command per line on standard input, carried out in order —
``open`` (first), ``metrics``, ``artifact``, ``tag``, ``model``, and ``close`` with the run's
final status. Replies, one JSON object per line on standard output: ``{"opened": run_id}``,
``{"error": message}`` as soon as a command fails (later commands are then skipped), and
``{"closed": status}`` last. End of input without ``close`` means the stage died: the run is
marked FAILED. Ctrl-C reaches the whole process group; the sidecar ignores it and lets the stage,
which sees it too, close the run as FAILED.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from metaland.tracking import (
    EXPERIMENT_PREFIX,
    ensure_store,
    mlflow_client,
    provenance_tags,
    tag_query,
    tracking_uri,
)


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name.replace("/", "-")).as_uri()
    return client.create_experiment(name, artifact_location=location)


def _latest_run(client, experiment_id: str, stage: str, run_key: str | None, params_hash: str) -> str | None:
    query = tag_query({"metaland.stage": stage, "metaland.run_key": run_key or "", "metaland.params_hash": params_hash})
    runs = client.search_runs(
        [experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.run_id if runs else None


def open_run(
    client, stage: str, experiment: str, run_key: str | None, params: Mapping[str, str], params_hash: str, resume: bool
) -> tuple[str, str]:
    """Create the stage's run (or, with ``resume``, continue the newest one of the same stage, run
    key and params hash); return (run id, experiment id)."""
    from mlflow.entities import Param

    experiment_id = _experiment_id(client, f"{EXPERIMENT_PREFIX}/{experiment}")
    run_id = _latest_run(client, experiment_id, stage, run_key, params_hash) if resume else None
    tags = provenance_tags(stage, run_key, params_hash)
    if run_id is None:
        run_name = f"{stage}@{run_key}" if run_key else stage
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        flat = [Param(k, v) for k, v in sorted(params.items())]
        for start in range(0, len(flat), 100):
            client.log_batch(run_id, params=flat[start : start + 100])
    else:
        client.update_run(run_id, status="RUNNING")
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
    return run_id, experiment_id


def log_metrics(client, run_id: str, metrics: Mapping[str, float], step: int, timestamp: int) -> None:
    from mlflow.entities import Metric

    batch = [Metric(k, float(v), timestamp, step) for k, v in sorted(metrics.items())]
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start : start + 1000])


def log_model(
    client,
    run_id: str,
    experiment_id: str,
    name: str,
    files: list[str],
    params: Mapping[str, str],
    tags: Mapping[str, str],
) -> None:
    """Log files (safetensors weights + sidecar) as one MLflow (external) model of the run."""
    from mlflow.entities import LoggedModelStatus

    model = client.create_logged_model(
        experiment_id=experiment_id,
        name=name,
        source_run_id=run_id,
        params=dict(params),
        tags=dict(tags),
        model_type="safetensors",
    )
    with tempfile.TemporaryDirectory() as folder:
        for file in files:
            shutil.copy2(file, Path(folder) / Path(file).name)
        client.log_model_artifacts(model.model_id, folder)
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)


def carry_out(client, run: dict[str, str], op: str, command: dict[str, Any]) -> None:
    """One command of the protocol; ``run`` holds the open run's ids."""
    if op == "open":
        run["run_id"], run["experiment_id"] = open_run(client, **command)
    elif op == "metrics":
        log_metrics(client, run["run_id"], **command)
    elif op == "artifact":
        client.log_artifact(command.get("run_id") or run["run_id"], command["path"], command["artifact_path"])
    elif op == "tag":
        client.set_tag(run["run_id"], command["key"], command["value"])
    elif op == "model":
        log_model(client, run["run_id"], run["experiment_id"], **command)
    else:
        raise ValueError(f"unknown tracking command {op!r}")


def serve(commands: TextIO, replies: TextIO) -> None:
    def reply(**message: Any) -> None:
        with contextlib.suppress(BrokenPipeError):  # the stage has died: the run's status says so
            replies.write(json.dumps(message) + "\n")
            replies.flush()

    run: dict[str, str] = {}
    client = None  # the store is opened with the run: a stage that fails before leaves no database
    status, failed = "FAILED", False
    for line in commands:
        command = json.loads(line)
        op = command.pop("op")
        if op == "close":
            status = command["status"]
            break
        if failed:
            continue
        try:
            if client is None:
                ensure_store()  # creates the database under its lock before this process's client opens it
                client = mlflow_client()
            carry_out(client, run, op, command)
        except Exception as err:  # reported to the stage, which fails with it
            failed = True
            reply(error=f"{op}: {type(err).__name__}: {err}")
            continue
        if op == "open":
            reply(opened=run["run_id"])
    if "run_id" in run:
        client.set_terminated(run["run_id"], "FAILED" if failed else status)
    reply(closed="FAILED" if failed else status)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (the slow part, while the stage loads PyTorch)

    # Replies get the real standard output; anything a library prints goes to standard error.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, replies)
    # Everything is committed and replied: skip the interpreter's teardown of MLflow's modules,
    # which takes most of a second that the stage would spend waiting for this process to end.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
