"""The head of `metaland launch`: checks, plans, submits the waves, then rebuilds the DAG from DVC's run-cache.

Before anything is submitted: the checkout must be committed (workers clone the commit, so an uncommitted
edit would silently not be what runs), the workers must have one MLflow tracking server to log to (each clone
would otherwise write its own mlflow.db, lost with it), and the head creates every experiment the stages log to
(two workers creating the same one race). After the last wave: ``dvc repro`` (``--pull`` with a remote) in the
head restores every job stage from the run-cache, runs aggregate and plot, and writes dvc.lock; after a launch
of part of the DAG (``--stages``), it restores just the launched stages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from metaland.config import load_params
from metaland.launch import EXECUTORS, LaunchError, kind_of, plan_waves, read_dag, resources_of
from metaland.launch.worker import DVC, WorkerSpec

RAN = re.compile(r"Running stage '([^']+)'")


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise LaunchError(
            f"`git {' '.join(args)}` failed in {root}: {result.stderr.strip()}. Fix: launch from a git checkout."
        )
    return result.stdout


def pinned_commit(root: Path) -> str:
    """HEAD, refusing tracked files with uncommitted changes (dvc.lock aside: the head rewrites it)."""
    entries = _git(root, "status", "--porcelain", "--untracked-files=no", "-z").split("\0")
    changed = [entry[3:] for entry in entries if entry]
    changed = [name for name in changed if name != "dvc.lock"]
    if changed:
        raise LaunchError(
            f"the checkout has uncommitted changes ({', '.join(changed[:5])}{' …' if len(changed) > 5 else ''}), "
            "but every job clones the commit, so they would not run. Fix: commit them (or stash them), then launch."
        )
    return _git(root, "rev-parse", "HEAD").strip()


def check_tracking_server() -> str:
    """The workers' MLflow server (``MLFLOW_TRACKING_URI``, http or https), reachable now."""
    from metaland.tracking import check_reachable

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise LaunchError(
            f"the jobs need one MLflow tracking server to log to, but MLFLOW_TRACKING_URI is {uri or 'not set'} (each "
            "job's clone would keep its own mlflow.db, lost with the clone). Fix: start one, e.g. `mlflow server "
            "--backend-store-uri sqlite:///$PWD/mlflow-cluster.db --host 0.0.0.0 --port 5000` (PostgreSQL and an "
            "S3 --artifacts-destination in production: README 'Running on a cluster'), and export "
            "MLFLOW_TRACKING_URI=http://<host>:5000."
        )
    check_reachable(uri)
    return uri


def create_experiments(studies: list[str]) -> None:
    """Every experiment the stages log to, created once by the head before any job starts."""
    from metaland.tracking import EXPERIMENT_PREFIX, mlflow_client

    client = mlflow_client()
    for name in ("data", *studies, "results"):
        full = f"{EXPERIMENT_PREFIX}/{name}"
        if client.get_experiment_by_name(full) is None:
            client.create_experiment(full)


def dvc_cache_dir(root: Path) -> str:
    result = subprocess.run([*DVC, "cache", "dir"], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise LaunchError(f"`dvc cache dir` failed in {root}: {result.stderr.strip()}")
    return result.stdout.strip()


def launch(
    root: Path,
    *,
    executor: str,
    select: str,
    dry_run: bool,
    workdir: Path,
    cache: str | None,
    remote: str | None,
    repo: str | None,
    final: bool,
) -> list[str]:
    """Plan, submit and wait for every wave, then rebuild in the head; returns the stages the head's final
    ``dvc repro`` ran (empty with ``dry_run`` or without ``final``)."""
    config = load_params(root / "params.yaml")
    waves = plan_waves(read_dag(root), select)
    submit = EXECUTORS.get(executor, key="--executor").submit
    commit = "<HEAD>" if dry_run else pinned_commit(root)
    if not dry_run:
        check_tracking_server()
        create_experiments(config.studies_with_runs())
    shared = None if remote else (cache or dvc_cache_dir(root))
    workdir = workdir.resolve()

    def spec_of(stage: str) -> WorkerSpec:
        threads = resources_of(config.launch, kind_of(stage)).cpus
        return WorkerSpec(repo or str(root.resolve()), commit, stage, str(workdir), shared, remote, threads)

    if not dry_run:  # markers of an earlier launch of the same commit must not pass for this one's
        for wave in waves:
            for stage in wave.stages:
                spec_of(stage).done.unlink(missing_ok=True)

    total = sum(len(w.stages) for w in waves)
    print(f"metaland launch: {total} job(s) in {len(waves)} wave(s) on {executor}, commit {commit[:12]}, "
          f"{'remote ' + remote if remote else 'shared DVC cache ' + str(shared)}")  # fmt: skip
    submit(waves, spec_of, config.launch, workdir / "logs", dry_run)
    if dry_run or not final:
        return []
    print("metaland launch: every job succeeded; `dvc repro` in the head restores them from the run-cache")
    # The whole DAG (aggregate and plot too) when every job stage was launched; else just the launched stages.
    targets = [] if select == "*" else [stage for wave in waves for stage in wave.stages]
    args = [*DVC, "repro", *(["--pull"] if remote else []), *targets]
    result = subprocess.run(args, cwd=root, capture_output=True, text=True)
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        raise LaunchError(f"the head's `dvc repro` failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return RAN.findall(result.stdout)
