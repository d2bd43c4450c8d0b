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

A remote tracking server that cannot be reached, or whose API does not answer a real call, fails
the stage at its start, before any output is written (:func:`check_reachable`, a few seconds),
rather than after hours of training or in MLflow's retry loop: nothing is lost, and the message
says how to fix it. Every later call has a timeout and a few retries (:data:`HTTP_DEFAULTS`).

A SQLite store is a file: its URI may be relative (``sqlite:///mlflow.db``, as MLflow's docs write
it) and its path may hold any character (``?``, ``%``, spaces); :func:`tracking_uri` makes it an
absolute, percent-encoded URI. Its artifacts live in ``mlartifacts/`` beside the file, and a store
that was moved or copied with its checkout is re-pointed there when a stage opens it
(:func:`relocate_artifacts`), so a copy never writes into the checkout it came from.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import select
import sqlite3
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

from metaland.errors import Interrupted, TrackingError
from metaland.io import stable_hash, tree_digest

EXPERIMENT_PREFIX = "metaland"
OUTPUTS_TAG = "metaland.outputs_sha256"
"""Tag: sha256 of the output folder a stage wrote (:func:`metaland.io.tree_digest`); see :func:`producer_run_id`."""
MAX_PARAM_LENGTH = 6000


ARTIFACTS_DIR = "mlartifacts"
"""Artifacts of a SQLite store live in this folder beside its database file."""


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else ``mlflow.db`` in the working folder; a SQLite URI is made
    absolute and percent-encoded (:func:`sqlite_uri`)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(Path.cwd() / "mlflow.db")
    path = sqlite_path(uri)
    if path is None:
        return uri
    query = uri.partition("?")[2]
    return sqlite_uri(path) + (f"?{query}" if query else "")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, absolute (a relative one is relative to the working
    folder, as SQLite opens it), decoded as SQLAlchemy decodes it; None for other stores (and for
    ``sqlite://``, an in-memory database)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = urllib.parse.unquote(uri.removeprefix("sqlite:///").partition("?")[0])
    return Path.cwd() / database if database else None


def sqlite_uri(path: Path) -> str:
    """The ``sqlite:///`` URI of a database file at any path: ``?``, ``%``, ``#`` and spaces are
    percent-encoded, so SQLAlchemy opens exactly this file."""
    return "sqlite:///" + urllib.parse.quote(str(Path(path).absolute()), safe="/")


REACHABILITY_TIMEOUT_S = 5.0
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3"}
"""Per-request timeout (seconds) and retries of every MLflow call to a tracking server, unless the
environment sets them: a server that stops answering fails the stage in about two minutes, not
after MLflow's default of 7 retries of 120 s."""


def mlflow_store_uri() -> str:
    """:func:`tracking_uri` as handed to MLflow: a SQLite database under the working folder is named
    by its relative path. MLflow creates the folder of a SQLite URI's path without decoding it, so
    an encoded ``?`` or ``%`` in the checkout's path would otherwise leave a stray folder beside it."""
    uri = tracking_uri()
    path = sqlite_path(uri)
    if path is None or not path.is_relative_to(Path.cwd()):
        return uri
    query = uri.partition("?")[2]
    return "sqlite:///" + urllib.parse.quote(path.relative_to(Path.cwd()).as_posix()) + (f"?{query}" if query else "")


def mlflow_client():
    # MLflow is imported lazily: it is slow to import and only stages need it.
    for variable, value in HTTP_DEFAULTS.items():  # MLflow reads them at each call
        os.environ.setdefault(variable, value)
    for name in ("alembic", "mlflow.store.db.utils"):  # their INFO lines, not a quieter level set by the caller
        logger = logging.getLogger(name)
        logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    from mlflow import MlflowClient

    return MlflowClient(mlflow_store_uri())


def check_reachable(uri: str | None = None) -> None:
    """Raise :class:`TrackingError` unless an HTTP(S) tracking server answers a real API call (a
    one-experiment search) within :data:`REACHABILITY_TIMEOUT_S`, or a SQLite store's file and
    folder can be written by this user.

    ``/health`` alone is not enough: a server whose database is down answers it and then fails
    every call."""
    uri = uri or tracking_uri()
    path = sqlite_path(uri)
    if path is not None:
        unwritable = [p for p in (path, path.parent) if p.exists() and not os.access(p, os.W_OK)]
        if unwritable:
            raise TrackingError(
                f"The tracking database {path} (MLFLOW_TRACKING_URI) cannot be written by this user (uid "
                f"{os.getuid()}): {unwritable[0]} is read-only; nothing was run or written. Fix: make the file and "
                "its folder writable (`chmod u+w`), or point MLFLOW_TRACKING_URI at a writable place or a tracking "
                "server."
            )
        return
    if not uri.startswith(("http://", "https://")):
        return
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    fix = (
        "start the server (`docker compose up mlflow`, or `make ui` for the local store), or unset "
        "MLFLOW_TRACKING_URI to track into the local mlflow.db"
    )
    try:
        request = urllib.request.Request(url, headers=_auth_headers())
        with urllib.request.urlopen(request, timeout=REACHABILITY_TIMEOUT_S, context=_tls_context()) as response:
            answer = json.loads(response.read(1 << 20) or b"{}")
        if not isinstance(answer, dict):
            raise ValueError("the answer is not a JSON object")
        return
    except urllib.error.HTTPError as err:
        reason = f"its API answered HTTP {err.code} {err.reason}"
        if err.code in (401, 403):
            fix = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
        elif err.code == 404:
            fix = "point MLFLOW_TRACKING_URI at an MLflow tracking server (not its UI proxy or another service)"
        else:
            fix = "look at the server's log (its database or artifact store may be down), restart it, " + fix
    except TimeoutError:
        reason = f"its API did not answer within {REACHABILITY_TIMEOUT_S:.0f} s"
    except urllib.error.URLError as err:
        reason = str(err.reason)
    except (OSError, http.client.HTTPException, ValueError) as err:
        reason = f"it does not speak MLflow's HTTP API: {type(err).__name__}: {err}"
        fix = "check the host and port of MLFLOW_TRACKING_URI (another service answers there), or " + fix
    raise TrackingError(
        f"The MLflow tracking server {uri} (MLFLOW_TRACKING_URI) cannot be reached ({reason}); nothing was run or "
        f"written. Fix: {fix}."
    )


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's own client would send (``MLFLOW_TRACKING_TOKEN`` or user + password)."""
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _tls_context() -> ssl.SSLContext | None:
    """TLS settings as MLflow reads them (``MLFLOW_TRACKING_INSECURE_TLS``, ``..._SERVER_CERT_PATH``)."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()
    cafile = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cafile) if cafile else None


def describe_store() -> str:
    """One line saying where runs go and that the store answers; :class:`TrackingError` if not.

    Read-only (for ``metaland doctor`` and the image's health check): a missing SQLite file is
    reported, not created, and only its folder's writability is checked."""
    uri = tracking_uri()
    check_reachable(uri)
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        if not (path.parent.is_dir() and os.access(path.parent, os.W_OK)):
            raise TrackingError(
                f"The tracking database {path} (MLFLOW_TRACKING_URI) does not exist and its folder "
                f"{path.parent} is missing or not writable. Fix: create the folder or make it writable, or "
                "point MLFLOW_TRACKING_URI at a writable place or a tracking server."
            )
        return f"{uri}: not created yet (the first stage creates it)"
    try:
        count = len(mlflow_client().search_experiments(max_results=1000))
    except Exception as err:
        raise TrackingError(
            f"The tracking store {uri} (MLFLOW_TRACKING_URI) answers but cannot be read ({type(err).__name__}: "
            f"{gist(err)}). Fix: for a server, check its credentials (MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD) and version; for a file, its permissions, or move it aside to start a fresh "
            "store."
        ) from None
    return f"{uri}: answers, {count} experiment(s)"


def gist(err: BaseException) -> str:
    """The first non-empty line of an error's message (MLflow's and SQLAlchemy's run to many lines)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[0][:500] if lines else type(err).__name__


def ensure_store() -> None:
    """Open the tracking store once, serialised by a lock file: a new SQLite database is created and
    migrated under a temporary name and renamed into place only when complete (a full disk or a
    kill never leaves a half-migrated store); an existing one is migrated if older, and re-pointed
    at the artifacts beside it if it was moved (:func:`relocate_artifacts`)."""
    path = sqlite_path(tracking_uri())
    if path is None:
        mlflow_client().search_experiments(max_results=1)
        return
    with FileLock(str(path.with_name(path.name + ".lock"))):
        if not path.exists():
            _create_database(path)
        relocate_artifacts(path)
        mlflow_client().search_experiments(max_results=1)


def _create_database(path: Path) -> None:
    """Create MLflow's tables in ``.<name>.<pid>.tmp`` beside ``path``, then rename it onto ``path``."""
    from mlflow.store.db.utils import _initialize_tables
    from sqlalchemy import create_engine

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    for stale in path.parent.glob(f".{path.name}.*.tmp*"):  # left by a creation that was killed
        stale.unlink(missing_ok=True)
    engine = create_engine(sqlite_uri(tmp))
    try:
        _initialize_tables(engine)
        engine.dispose()
        os.replace(tmp, path)
    finally:
        engine.dispose()
        for leftover in path.parent.glob(f"{tmp.name}*"):
            leftover.unlink(missing_ok=True)


def relocate_artifacts(database: Path) -> list[str]:
    """Re-point the artifact locations of a SQLite store that was moved or copied with its checkout.

    MLflow records absolute ``file://`` locations. metaland puts an experiment's artifacts in
    ``<store folder>/mlartifacts/<experiment>``; where an experiment records that layout under
    another folder, every location under that folder (experiments, runs, logged models) is moved to
    this store's folder. Return the old folders (empty when nothing moved)."""
    here = database.parent.absolute().as_uri()
    tables = {"experiments": "artifact_location", "runs": "artifact_uri", "logged_models": "artifact_location"}
    with contextlib.closing(sqlite3.connect(database, timeout=60)) as connection, connection:
        present = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in present:
            return []
        old_roots = set()
        for name, location in connection.execute(
            "SELECT name, artifact_location FROM experiments WHERE name LIKE ?", (f"{EXPERIMENT_PREFIX}/%",)
        ):
            suffix = f"/{ARTIFACTS_DIR}/{name.replace('/', '-')}"
            if location and location.endswith(suffix) and location[: -len(suffix)] != here:
                old_roots.add(location[: -len(suffix)])
        for old in sorted(old_roots):
            for table, column in tables.items():
                if table in present:
                    connection.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                        (here + "/", len(old) + 2, len(old) + 1, old + "/"),
                    )
            logging.getLogger(__name__).warning(
                "the tracking store %s was moved from %s: its artifact locations now point beside it", database, old
            )
    return sorted(old_roots)


def git_state() -> dict[str, str]:
    """Commit and dirty flag of the working tree ('unknown' outside git). ``dvc.lock`` does not count:
    `dvc repro` rewrites the committed one stage by stage, so every stage after the first would
    otherwise call a checkout of the commit dirty."""

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock")
    return {"commit": commit or "unknown", "dirty": "unknown" if status is None else str(bool(status)).lower()}


def mlflow_key(name: str) -> str:
    """A param or metric name as MLflow accepts it: a cross-domain probe key's ``@`` (``adaptation@cars``,
    ``query_accuracy@cars``), which MLflow refuses, becomes ``:`` (``query_accuracy:cars``)."""
    return name.replace("@", ":")


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as MLflow's flat string params (``train.inner_lr`` -> ``0.1``)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = mlflow_key(f"{prefix}{key}")
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


class StageRun:
    """An open MLflow run for one stage execution, written by its sidecar process
    (:mod:`metaland.tracking_sidecar`) while the stage computes.

    Calls return at once and are carried out in order; a store error is raised as
    :class:`TrackingError` by the next call, or when the run closes, so the stage fails with it.

    Use it as a context manager: a stage that fails before :func:`stage_run` opens its run still
    ends its sidecar (the process would otherwise wait for commands as long as the caller lives).
    """

    def __init__(self):
        """Start the sidecar, which imports MLflow while the caller goes on; :func:`stage_run` opens
        the run. A stage starts it before importing PyTorch, so that the two imports overlap."""
        replies, replies_end = os.pipe()
        environment = {**HTTP_DEFAULTS, **os.environ}
        self._sidecar = subprocess.Popen(
            [sys.executable, "-m", "metaland.tracking_sidecar"],
            stdin=subprocess.PIPE,
            stdout=replies_end,
            text=True,
            env=environment,
        )
        os.close(replies_end)
        # Unbuffered, so that select() sees every reply that has arrived (replies are a few short lines).
        self._replies = os.fdopen(replies, "rb", buffering=0)
        self._run_id: str | None = None
        self._error: str | None = None
        self._closed = False
        self._opened = False
        self._closed_by_caller = False

    def __enter__(self) -> StageRun:
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.close(_status_of(error))  # waits for the sidecar, also after a close without waiting

    def open(self, **command: Any) -> None:
        self._opened = True
        self._send("open", pid=os.getpid(), **command)

    @property
    def run_id(self) -> str:
        """The MLflow run id (waits for the sidecar to open the run)."""
        while self._run_id is None:
            self._receive()
            self._raise_if_failed()
        return self._run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._send(
            "metrics", metrics={mlflow_key(k): float(v) for k, v in metrics.items()}, step=step, timestamp=_now_ms()
        )

    def log_artifact(self, path: Path, artifact_path: str | None = None, *, run_id: str | None = None) -> None:
        """Copy a file into this run's artifacts (or into run ``run_id``'s)."""
        self._send("artifact", path=str(Path(path).resolve()), artifact_path=artifact_path, run_id=run_id)

    def tag_outputs(self, folder: Path) -> str:
        """Record the digest of the output folder this run wrote (:data:`OUTPUTS_TAG`); return it."""
        digest = tree_digest(folder)
        self._send("tag", key=OUTPUTS_TAG, value=digest)
        return digest

    def log_model(
        self, name: str, checkpoint: Path, spec: Mapping[str, Any], params: Mapping[str, Any], tags: Mapping[str, str]
    ) -> None:
        """Log a checkpoint as an MLflow model of this run that ``mlflow.pyfunc.load_model`` loads and
        meta-tests with (``metaland.serving``; ``spec`` from :func:`metaland.serving.model_spec`)."""
        self._send(
            "model",
            name=name,
            checkpoint=str(Path(checkpoint).resolve()),
            spec=dict(spec),
            params=flatten_params(params),
            tags=dict(tags),
        )

    def close(self, status: str, *, wait: bool = True) -> str | None:
        """End the run with ``status`` once every call is carried out; return the store error, if any.

        Without ``wait`` the sidecar finishes on its own while the caller goes on (the store error is
        then None until a later ``close`` waits for it: :meth:`finished`). A later ``close`` keeps the
        first status."""
        if not self._closed_by_caller:
            self._closed_by_caller = True
            if not self._opened:  # nothing sent, nothing to log: the sidecar need not finish importing MLflow
                self._sidecar.kill()
            else:
                self._send("close", status=status, check=False)
            self._sidecar.stdin.close()
        if wait and not self._replies.closed:
            while self._opened and not self._closed and self._receive() is not None:
                pass
            self._sidecar.wait()
            self._replies.close()
        return self._error

    def finished(self) -> None:
        """Wait until a run closed without ``wait`` is written; raise :class:`TrackingError` if that failed."""
        self.close("FINISHED")
        self._raise_if_failed()

    def _send(self, op: str, *, check: bool = True, **fields: Any) -> None:
        if check:
            self._poll()
            self._raise_if_failed()
        try:
            self._sidecar.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self._sidecar.stdin.flush()
        except BrokenPipeError:
            self._error = self._error or f"the tracking sidecar exited with status {self._sidecar.wait()}"
            if check:
                self._raise_if_failed()

    def _poll(self) -> None:
        """Read the replies that have already arrived, without waiting."""
        while select.select([self._replies], [], [], 0)[0]:
            if self._receive() is None:
                return

    def _receive(self) -> dict | None:
        line = self._replies.readline()
        if not line:
            self._error = self._error or f"the tracking sidecar exited with status {self._sidecar.wait()}"
            return None
        reply = json.loads(line)
        self._run_id = reply.get("opened", self._run_id)
        self._error = reply.get("error", self._error)
        self._closed = "closed" in reply
        return reply

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise TrackingError(_failure_message(self._error))


def _status_of(error: BaseException | None) -> str:
    """The final status of a run whose stage ended with ``error``: KILLED when a signal (or Ctrl-C)
    stopped it, FAILED on an error, FINISHED without one."""
    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, Interrupted | KeyboardInterrupt) else "FAILED"


def _failure_message(error: str) -> str:
    return (
        f"Logging this stage to the MLflow store {tracking_uri()} failed ({error}), so the stage fails rather "
        "than leave results without their run. Fix: `python -m metaland doctor` checks the store; for the "
        "local file, check its permissions and free space, or move mlflow.db aside to start a fresh store."
    )


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


@contextlib.contextmanager
def stage_run(
    stage: str,
    *,
    experiment: str,
    run_key: str | None = None,
    params: Mapping[str, Any] | None = None,
    params_hash: str | None = None,
    resume: bool = False,
    started: StageRun | None = None,
    system_metrics: bool = False,
    dataset: Mapping[str, str] | None = None,
    wait: bool = True,
) -> Iterator[StageRun]:
    """Open an MLflow run for a stage execution; mark it FINISHED, FAILED (an error) or KILLED (a
    signal, Ctrl-C) on exit.

    With ``resume`` (a training restarted from a checkpoint) the newest earlier run of the same
    stage, run key and params hash is continued, so its metrics form one curve in the UI. The run
    is written by a sidecar process (:mod:`metaland.tracking_sidecar`), so the stage does not wait
    for MLflow to import (``started``: a sidecar the stage started earlier, so that MLflow loads
    while it imports PyTorch); on exit it waits until everything is logged, and a store error
    fails it. ``system_metrics``: MLflow's host monitor (CPU, memory, disk, network, GPUs) samples
    the machine into ``system/*`` metrics while the run is open (every
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds, default 10). ``dataset`` (``name``,
    ``digest``, ``source``) is logged as the run's training input. Without ``wait`` a block that
    succeeds does not wait for the sidecar to finish writing: the caller goes on, and calls
    :meth:`StageRun.finished` before it reports success (a block that fails still waits).
    """
    run = started or StageRun()
    run.open(
        stage=stage,
        experiment=experiment,
        run_key=run_key,
        params=flatten_params(params) if params else {},
        params_hash=params_hash or (stable_hash(dict(params)) if params else ""),
        resume=resume,
        system_metrics=system_metrics,
        dataset=dict(dataset) if dataset else None,
    )
    try:
        yield run
    except BaseException as err:
        error = run.close(_status_of(err))
        if error is not None:
            logging.getLogger(__name__).warning(_failure_message(error))
        raise
    error = run.close("FINISHED", wait=wait)
    if error is not None:
        raise TrackingError(_failure_message(error))


def tag_query(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.`{tag}` = '{value}'" for tag, value in tags.items())


def producer_run_id(experiment: str, stage: str, run_key: str | None, outputs_digest: str) -> str | None:
    """The MLflow run id of the stage execution that wrote exactly these outputs, or None.

    Stages tag their run with :data:`OUTPUTS_TAG` (:func:`metaland.io.tree_digest` of their output
    folder). Of the FINISHED runs of ``stage`` for ``run_key`` in ``metaland/<experiment>`` with that
    digest, the *first* is returned: a rebuild that writes the same bytes (``dvc repro --force``)
    then points at the same run, so outputs that record run ids stay byte-stable. None where the
    store holds no such run (outputs restored from the DVC cache, or another tracking store)."""
    client = mlflow_client()
    found = client.get_experiment_by_name(f"{EXPERIMENT_PREFIX}/{experiment}")
    if found is None:
        return None
    query = tag_query({"metaland.stage": stage, "metaland.run_key": run_key or "", OUTPUTS_TAG: outputs_digest})
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"{query} and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None
