"""The MLflow boundary: every stage execution is one MLflow run.

Store: ``MLFLOW_TRACKING_URI`` if set, else the embedded ``sqlite:///mlflow.db`` at the repository
root (the folder DVC runs stages in); artifacts go to ``mlartifacts/<experiment>/`` beside it.
One experiment per study (``metaland/<study>``) plus ``metaland/data`` for fetch. Each run is
tagged with the stage, the DVC stage address (``train@<run>``), the run key, the git commit and
dirty flag, the params hash and the command that rebuilds it (``git checkout <commit> && dvc repro
<stage>``, also the run's description and its "Source" column in the UI), so a row in the UI leads
back to exactly what produced it. Runs started by ``dvc exp run`` also carry the experiment name.
Probe and aggregate runs also carry the digest of the folder they wrote (:data:`OUTPUTS_TAG`), so
an output leads back to its run (:func:`producer_run_id`: results/claims.json names the probe runs,
the report is attached to the aggregate run).

The store may be a tracking server (``MLFLOW_TRACKING_URI=http://host:5000``): that is how parallel
``dvc exp run --queue`` workers and several GPU machines share one store, and nothing else changes.

SQLite does not like concurrent schema creation: :func:`ensure_store` creates the database once,
under a file lock, before any stage fans out.

A remote tracking server that cannot be reached fails the stage at its start, before any output
is written (:func:`check_reachable`, a few seconds), rather than after hours of training or in
MLflow's retry loop: nothing is lost, and the message says how to fix it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from metaland.errors import TrackingError
from metaland.io import stable_hash, tree_digest

EXPERIMENT_PREFIX = "metaland"
OUTPUTS_TAG = "metaland.outputs_sha256"
"""Tag: sha256 of the output folder a stage wrote (:func:`metaland.io.tree_digest`); see :func:`producer_run_id`."""
MAX_PARAM_LENGTH = 6000


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _client():
    # MLflow is imported lazily: it is slow to import and only stages need it.
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri())


REACHABILITY_TIMEOUT_S = 5.0


def check_reachable(uri: str | None = None) -> None:
    """Raise :class:`TrackingError` unless an HTTP(S) tracking server answers its health check
    (local stores, such as the default SQLite file, need no check)."""
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=REACHABILITY_TIMEOUT_S):
            return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"The MLflow tracking server {uri} (MLFLOW_TRACKING_URI) cannot be reached ({reason}); nothing was "
            "run or written. Fix: start the server (`docker compose up mlflow`, or `make ui` for the local "
            "store), or unset MLFLOW_TRACKING_URI to track into the local mlflow.db."
        ) from None


def describe_store() -> str:
    """One line saying where runs go and that the store answers; :class:`TrackingError` if not.

    Read-only (for ``metaland doctor`` and the image's health check): a missing SQLite file is
    reported, not created, and only its folder's writability is checked."""
    uri = tracking_uri()
    check_reachable(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            if not (path.parent.is_dir() and os.access(path.parent, os.W_OK)):
                raise TrackingError(
                    f"The tracking database {path} (MLFLOW_TRACKING_URI) does not exist and its folder "
                    f"{path.parent} is missing or not writable. Fix: create the folder or make it writable, or "
                    "point MLFLOW_TRACKING_URI at a writable place or a tracking server."
                )
            return f"{uri}: not created yet (the first stage creates it)"
    try:
        count = len(_client().search_experiments(max_results=1000))
    except Exception as err:
        raise TrackingError(
            f"The tracking store {uri} (MLFLOW_TRACKING_URI) answers but cannot be read ({type(err).__name__}: "
            f"{err}). Fix: for a server, check its credentials (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD) "
            "and version; for a file, its permissions, or move it aside to start a fresh store."
        ) from None
    return f"{uri}: answers, {count} experiment(s)"


def ensure_store() -> None:
    """Create (or migrate) the tracking database once, serialised by a lock file."""
    uri = tracking_uri()
    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock") if uri.startswith("sqlite:///") else None
    lock = FileLock(str(lock_path)) if lock_path else contextlib.nullcontext()
    with lock:
        _client().search_experiments(max_results=1)


def git_state() -> dict[str, str]:
    """Commit and dirty flag of the working tree ('unknown' outside git)."""

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or "unknown", "dirty": "unknown" if status is None else str(bool(status)).lower()}


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as MLflow's flat string params (``train.inner_lr`` -> ``0.1``)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def provenance_tags(stage: str, run_key: str | None, params_hash: str) -> dict[str, str]:
    """Tags that lead from a run in the UI back to the exact command that rebuilds it.

    Under ``dvc repro`` DVC names the stage in ``DVC_STAGE`` (``train@<run>``); a hand-run
    ``metaland`` command gets the same address, because stage cells are keyed by run / dataset.
    """
    git = git_state()
    dvc_stage = os.environ.get("DVC_STAGE") or (f"{stage}@{run_key}" if run_key else stage)
    rebuild = f"git checkout {git['commit']} && dvc repro {dvc_stage}"
    note = f"Rebuild: `{rebuild}` (params hash `{params_hash or '-'}`)."
    if git["dirty"] != "false":
        note += " The working tree had uncommitted changes when this ran, so the commit alone may not rebuild it."
    tags = {
        "metaland.stage": stage,
        "metaland.dvc_stage": dvc_stage,
        "metaland.run_key": run_key or "",
        "metaland.params_hash": params_hash,
        "metaland.rebuild": rebuild,
        "git.commit": git["commit"],
        "git.dirty": git["dirty"],
        "mlflow.source.git.commit": git["commit"],
        "mlflow.source.name": f"dvc repro {dvc_stage}",
        "mlflow.note.content": note,
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["metaland.dvc_exp"] = os.environ["DVC_EXP_NAME"]
        tags["metaland.dvc_exp_baseline"] = os.environ.get("DVC_EXP_BASELINE_REV", "")
    return tags


@dataclass
class StageRun:
    """An open MLflow run for one stage execution."""

    client: Any
    run_id: str
    experiment_id: str

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        timestamp = _now_ms()
        batch = [Metric(k, float(v), timestamp, step) for k, v in sorted(metrics.items())]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def tag_outputs(self, folder: Path) -> str:
        """Record the digest of the output folder this run wrote (:data:`OUTPUTS_TAG`); return it."""
        digest = tree_digest(folder)
        self.client.set_tag(self.run_id, OUTPUTS_TAG, digest)
        return digest

    def log_model_dir(self, name: str, directory: Path, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Log a folder of safetensors weights + manifest as an MLflow (external) model."""
        from mlflow.entities import LoggedModelStatus

        model = self.client.create_logged_model(
            experiment_id=self.experiment_id,
            name=name,
            source_run_id=self.run_id,
            params=flatten_params(params),
            tags=dict(tags),
            model_type="safetensors",
        )
        self.client.log_model_artifacts(model.model_id, str(directory))
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return model.model_id


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name.replace("/", "-")).as_uri()
    return client.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def stage_run(
    stage: str,
    *,
    experiment: str,
    run_key: str | None = None,
    params: Mapping[str, Any] | None = None,
    params_hash: str | None = None,
    resume: bool = False,
) -> Iterator[StageRun]:
    """Open an MLflow run for a stage execution; mark it FINISHED or FAILED on exit.

    With ``resume`` (a training restarted from a checkpoint) the newest earlier run of the same
    stage, run key and params hash is continued, so its metrics form one curve in the UI.
    """
    ensure_store()
    client = _client()
    experiment_id = _experiment_id(client, f"{EXPERIMENT_PREFIX}/{experiment}")
    params_hash = params_hash or (stable_hash(dict(params)) if params else "")
    run_id = _latest_run(client, experiment_id, stage, run_key, params_hash) if resume else None
    tags = provenance_tags(stage, run_key, params_hash)
    if run_id is None:
        run_name = f"{stage}@{run_key}" if run_key else stage
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        if params:
            from mlflow.entities import Param

            flat = [Param(k, v) for k, v in sorted(flatten_params(params).items())]
            for start in range(0, len(flat), 100):
                client.log_batch(run_id, params=flat[start : start + 100])
    else:
        client.update_run(run_id, status="RUNNING")
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
    try:
        yield StageRun(client, run_id, experiment_id)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def _latest_run(client, experiment_id: str, stage: str, run_key: str | None, params_hash: str) -> str | None:
    query = _tag_query(
        {"metaland.stage": stage, "metaland.run_key": run_key or "", "metaland.params_hash": params_hash}
    )
    runs = client.search_runs(
        [experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.run_id if runs else None


def _tag_query(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.`{tag}` = '{value}'" for tag, value in tags.items())


def producer_run_id(experiment: str, stage: str, run_key: str | None, outputs_digest: str) -> str | None:
    """The MLflow run id of the stage execution that wrote exactly these outputs, or None.

    Stages tag their run with :data:`OUTPUTS_TAG` (:func:`metaland.io.tree_digest` of their output
    folder). Of the FINISHED runs of ``stage`` for ``run_key`` in ``metaland/<experiment>`` with that
    digest, the *first* is returned: a rebuild that writes the same bytes (``dvc repro --force``)
    then points at the same run, so outputs that record run ids stay byte-stable. None where the
    store holds no such run (outputs restored from the DVC cache, or another tracking store)."""
    client = _client()
    found = client.get_experiment_by_name(f"{EXPERIMENT_PREFIX}/{experiment}")
    if found is None:
        return None
    query = _tag_query({"metaland.stage": stage, "metaland.run_key": run_key or "", OUTPUTS_TAG: outputs_digest})
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"{query} and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None
