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
marked FAILED.

Signals: Ctrl-C, SIGTERM and SIGHUP reach the whole process group (a closed terminal, ``docker
stop``, ``scancel``). The stage closes its run as KILLED; the sidecar waits for that close up to
:data:`SIGNAL_GRACE_S` seconds, then (a signal meant for the sidecar alone, or a stage stuck in a
kernel) marks the run KILLED itself. A SIGKILL to both leaves the run RUNNING: every stage's
sidecar therefore starts by reaping the RUNNING runs of this host whose stage process is gone
(:func:`reap_dead_runs`), which it finds by the host, process id and process start time each run is
tagged with. Nothing of MLflow's is printed: a failure is one reply line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from metaland.errors import Interrupted
from metaland.io import process_alive
from metaland.tracking import (
    ARTIFACTS_DIR,
    EXPERIMENT_PREFIX,
    ensure_store,
    gist,
    git_state,
    mlflow_client,
    mlflow_store_uri,
    provenance_tags,
    sqlite_path,
    tag_query,
    tracking_uri,
)

SIGNAL_GRACE_S = 10
"""Seconds the sidecar waits, after a termination signal, for its stage to close the run."""
HOST_TAG, PID_TAG, STARTED_TAG = "metaland.host", "metaland.pid", "metaland.pid_started"
"""Tags that identify the stage process of a run, so that a later stage can tell it is gone."""


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    database = sqlite_path(tracking_uri())
    if database is not None:
        location = (database.parent / ARTIFACTS_DIR / name.replace("/", "-")).as_uri()
    return client.create_experiment(name, artifact_location=location)


def process_started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot, Linux), "alive" where that is not
    known, or None if no such process exists: a pid reused by a newer process gives another value."""
    if not process_alive(pid):
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "alive"
    return stat.rpartition(")")[2].split()[19]  # field 22, after the command name (which may hold spaces)


def process_tags(pid: int) -> dict[str, str]:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), STARTED_TAG: process_started(pid) or ""}


def reap_dead_runs(client) -> list[str]:
    """Mark KILLED the RUNNING metaland runs of this host whose stage process is gone (a SIGKILL to
    the stage and its sidecar, a machine that lost power); return their ids. Runs of other hosts are
    left alone: whether their process lives cannot be known from here."""
    experiments = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}/%'")
    if not experiments:
        return []
    query = f"attributes.status = 'RUNNING' and {tag_query({HOST_TAG: socket.gethostname()})}"
    reaped = []
    for run in client.search_runs([e.experiment_id for e in experiments], filter_string=query, max_results=1000):
        tags = run.data.tags
        pid = int(tags.get(PID_TAG) or 0)
        started = process_started(pid) if pid > 0 else None
        if started is not None and started in (tags.get(STARTED_TAG), "alive"):
            continue
        client.set_tag(run.info.run_id, "metaland.ended_by", f"reaped: its stage process {pid} was gone")
        client.set_terminated(run.info.run_id, "KILLED")
        reaped.append(run.info.run_id)
    return reaped


PIPELINE_STAGE, PIPELINE_TAG, PARENT_TAG = "pipeline", "metaland.pipeline", "mlflow.parentRunId"
"""A pipeline execution's parent run: its ``metaland.stage``, the tag naming the execution, MLflow's parent link."""


def is_dvc(cmdline: list[str]) -> bool:
    """Whether a command line runs DVC: ``dvc …``, ``python …/dvc …`` or ``python -m dvc …``."""
    names = [Path(word).name for word in cmdline[:3]]
    return bool(names) and (names[0] == "dvc" or names[1:2] == ["dvc"] or names[1:3] == ["-m", "dvc"])


def pipeline_process():
    """The DVC process (``dvc repro``, ``dvc exp run``, a queue worker's ``dvc exp exec-run``) this
    sidecar's stage runs under, or None for a stage run by hand."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for process in psutil.Process().parents():
            if is_dvc(process.cmdline()):
                return process
    return None


def pipeline_command(cmdline: list[str]) -> str:
    """``dvc repro …`` as the user typed it; a queued experiment by its name (``DVC_EXP_NAME``)."""
    if os.environ.get("DVC_EXP_NAME"):
        return f"dvc exp run ({os.environ['DVC_EXP_NAME']})"
    start = next(i for i, word in enumerate(cmdline) if Path(word).name == "dvc") + 1
    return " ".join(["dvc", *cmdline[start:]])


def pipeline_run(client, experiment_id: str, process) -> str:
    """The parent run, in this experiment, of the pipeline execution ``process`` (a DVC process):
    created by the execution's first stage here (named by its command and start), RUNNING again for
    every later one."""
    tags = process_tags(process.pid)
    execution = f"{tags[HOST_TAG]}:{process.pid}:{tags[STARTED_TAG]}"
    query = tag_query({"metaland.stage": PIPELINE_STAGE, PIPELINE_TAG: execution})
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    command = pipeline_command(process.cmdline())
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(process.create_time()))
    day_time = started[5:16]  # the UI's name column shows about 20 characters: "dvc repro · 12-05 15:14"
    git = git_state()
    run_tags = {
        "metaland.stage": PIPELINE_STAGE,
        PIPELINE_TAG: execution,
        "git.commit": git["commit"],
        "git.dirty": git["dirty"],
        "mlflow.source.git.commit": git["commit"],
        "mlflow.source.name": command,
        "mlflow.note.content": f"One execution of `{command}` (started {started} UTC): its stages of this "
        "experiment are the runs nested under this one.",
        **tags,
    }
    name = f"{command} · {day_time}"
    return client.create_run(
        experiment_id, start_time=int(process.create_time() * 1000), run_name=name, tags=run_tags
    ).info.run_id


def close_pipeline_run(client, experiment_id: str, parent_id: str) -> None:
    """End the parent run with the worst status of its stages so far (FAILED, KILLED, else FINISHED);
    the execution's next stage in this experiment sets it RUNNING again."""
    children = client.search_runs([experiment_id], filter_string=tag_query({PARENT_TAG: parent_id}), max_results=5000)
    statuses = {run.info.status for run in children}
    client.set_terminated(parent_id, next((s for s in ("FAILED", "KILLED") if s in statuses), "FINISHED"))


def _latest_run(client, experiment_id: str, stage: str, run_key: str | None, params_hash: str) -> str | None:
    query = tag_query({"metaland.stage": stage, "metaland.run_key": run_key or "", "metaland.params_hash": params_hash})
    runs = client.search_runs(
        [experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.run_id if runs else None


def open_run(
    client,
    stage: str,
    experiment: str,
    run_key: str | None,
    params: Mapping[str, str],
    params_hash: str,
    resume: bool,
    pid: int,
) -> tuple[str, str, str | None]:
    """Create the stage's run (or, with ``resume``, continue the newest one of the same stage, run
    key and params hash), tagged with the stage's process ``pid`` and nested under the parent run of
    its pipeline execution (:func:`pipeline_run`) where DVC runs it; return (run id, experiment id,
    parent run id or None)."""
    from mlflow.entities import Param

    reap_dead_runs(client)
    experiment_id = _experiment_id(client, f"{EXPERIMENT_PREFIX}/{experiment}")
    run_id = _latest_run(client, experiment_id, stage, run_key, params_hash) if resume else None
    tags = {**provenance_tags(stage, run_key, params_hash), **process_tags(pid)}
    pipeline = pipeline_process()
    if pipeline is not None:
        tags[PARENT_TAG] = pipeline_run(client, experiment_id, pipeline)
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
    return run_id, experiment_id, tags.get(PARENT_TAG)


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
    checkpoint: str,
    spec: dict[str, Any],
    params: Mapping[str, str],
    tags: Mapping[str, str],
) -> None:
    """Log a checkpoint as one MLflow pyfunc model of the run (models-from-code, ``metaland.serving``), without
    importing PyTorch (``metaland.model_package``): its stage waits for this at its close."""
    from mlflow.entities import LoggedModelStatus, Metric

    from metaland import __version__
    from metaland.io import read_json
    from metaland.model_package import save_pyfunc

    weights = Path(checkpoint)
    model = client.create_logged_model(
        experiment_id=experiment_id,
        name=name,
        source_run_id=run_id,
        params=dict(params),
        tags=dict(tags),
        model_type="pyfunc",
    )
    metadata = {"metaland_version": __version__, "metaland_commit": git_state()["commit"], "run": spec["run"]["key"]}
    sidecar = read_json(weights.with_suffix(".json"))
    with tempfile.TemporaryDirectory() as folder:
        save_pyfunc(Path(folder) / "model", spec, weights, metadata)
        client.log_model_artifacts(model.model_id, str(Path(folder) / "model"))
    validation = [
        Metric(key, float(value), int(time.time() * 1000), int(sidecar["step"]), model_id=model.model_id)
        for key, value in sorted(sidecar["metrics"].items())
    ]
    client.log_batch(run_id, metrics=validation)  # the model page's metrics: the checkpoint's validation
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)


def log_dataset(client, run_id: str, name: str, digest: str, source: str) -> None:
    """The dataset a run trains on, as its MLflow input (the run page's Datasets column).

    The store creates the experiment's dataset row on first use, and two runs logging the same dataset at once
    (training jobs of `metaland launch`) may both try: the loser's insert breaks the row's unique key and the
    whole call is rolled back. The row exists by then, so the call is repeated (:func:`lost_a_creation_race`)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    dataset = Dataset(name=name, digest=digest[:DATASET_DIGEST_CHARS], source_type="local", source=source)
    inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]
    for attempt in range(1, CREATION_RACE_ATTEMPTS + 1):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as error:
            if attempt == CREATION_RACE_ATTEMPTS or not lost_a_creation_race(error):
                raise
            time.sleep(0.2 * attempt)


CREATION_RACE_ATTEMPTS = 5
"""How often a call that lost a race to create a row (:func:`log_dataset`) is made in all."""

UNIQUE_KEY_VIOLATIONS = (
    "UNIQUE constraint failed",
    "duplicate key value violates unique constraint",
    "Duplicate entry",
)
"""How SQLite, PostgreSQL and MySQL word the violation of a unique key, in the store's error."""


def lost_a_creation_race(error: Exception) -> bool:
    return any(text in str(error) for text in UNIQUE_KEY_VIOLATIONS)


DATASET_DIGEST_CHARS = 16
"""Leading hex digits of the dataset's sha256 kept in MLflow's digest field (it holds at most 36)."""


def start_system_metrics(run_id: str):
    """MLflow's monitor of this host (CPU, memory, disk, network, and GPUs where NVML is present),
    logging ``system/*`` metrics into the run from a thread until :meth:`finish`."""
    from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() or 10, tracking_uri=mlflow_store_uri()
    )
    monitor.start()
    return monitor


def carry_out(client, run: dict[str, Any], op: str, command: dict[str, Any]) -> None:
    """One command of the protocol; ``run`` holds the open run's ids (and its system monitor)."""
    if op == "open":
        system_metrics, dataset = command.pop("system_metrics", False), command.pop("dataset", None)
        run["run_id"], run["experiment_id"], run["parent_id"] = open_run(client, **command)
        if dataset:
            log_dataset(client, run["run_id"], **dataset)
        if system_metrics:
            run["monitor"] = start_system_metrics(run["run_id"])
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

    run: dict[str, Any] = {}
    client = None  # the store is opened with the run: a stage that fails before leaves no database
    status, failed = "FAILED", False
    try:
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
                reply(error=f"{op}: {type(err).__name__}: {gist(err)}")
                continue
            if op == "open":
                reply(opened=run["run_id"])
    except Interrupted:
        status = "KILLED"  # the stage did not close its run within the grace period after a signal
    final = "FAILED" if failed and status != "KILLED" else status
    if "monitor" in run:
        run["monitor"].finish()
    if "run_id" in run:
        try:
            client.set_terminated(run["run_id"], final)
            if run["parent_id"] is not None:
                close_pipeline_run(client, run["experiment_id"], run["parent_id"])
        except Exception as err:
            final = "FAILED"
            reply(error=f"close: {type(err).__name__}: {gist(err)}")
    reply(closed=final)


def _on_termination(signum: int, frame) -> None:
    """A termination signal: give the stage :data:`SIGNAL_GRACE_S` seconds to close the run."""
    if signal.getitimer(signal.ITIMER_REAL)[0] == 0:
        signal.setitimer(signal.ITIMER_REAL, SIGNAL_GRACE_S)


def _grace_over(signum: int, frame) -> None:
    raise Interrupted(signum)


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_termination)
    signal.signal(signal.SIGALRM, _grace_over)
    logging.basicConfig(level=logging.WARNING, format="metaland tracking: %(message)s")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # saving a model copies its files: no bars
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (the slow part, while the stage loads PyTorch)

    for noisy in ("mlflow", "alembic", "sqlalchemy", "urllib3"):  # their failures are replies, one line each
        logging.getLogger(noisy).setLevel(logging.CRITICAL)

    # Replies get the real standard output; anything a library prints goes to standard error.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        serve(sys.stdin, replies)
    except BaseException as err:  # never a traceback: the stage reports the failure
        with contextlib.suppress(Exception):
            replies.write(json.dumps({"error": f"sidecar: {type(err).__name__}: {gist(err)}"}) + "\n")
            replies.flush()
        sys.stderr.flush()
        os._exit(1)
    # Everything is committed and replied: skip the interpreter's teardown of MLflow's modules,
    # which takes most of a second that the stage would spend waiting for this process to end.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
