"""One job of `metaland launch`: a stage built by DVC in the job's own clone at the pinned commit.

The clone lives at ``<workdir>/clones/<stage>``, so a requeued job (preempted, timed out, ``scontrol requeue``)
finds it again: DVC reruns the stage, and training resumes from its newest checkpoint under
``.metaland/train/<run>`` of that clone, bit for bit as an uninterrupted run (metaland.meta.train). Every
clone uses the same DVC cache (``cache``: a shared filesystem; ``dvc cache dir``, ``cache.shared group``) or
pulls from and pushes to a DVC remote (``remote``: ``dvc repro --pull``, then ``dvc push --run-cache``), so a
stage built by one job comes back in the next from DVC's run-cache instead of running again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from metaland.io import write_text
from metaland.launch import LaunchError

DVC = [sys.executable, "-m", "dvc"]
"""DVC of the interpreter that runs the job (the head's, so the same packages whatever PATH the job has)."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a job builds, from where (JSON: the command line of ``metaland launch-worker``)."""

    repo: str  # a git URL or path every worker can read (the head's checkout on a shared filesystem)
    commit: str  # the pinned commit (40 hex digits)
    stage: str  # e.g. train@guiroy2019-maml-omniglot-small-5w1s-s0
    workdir: str  # the launch's work folder: the job's clone and its success marker live there
    cache: str | None = None  # the shared DVC cache dir; None with a remote
    remote: str | None = None  # a DVC remote (not HTTP: run-cache push/pull refuses it); None with a cache
    threads: int | None = None  # CPU threads of the job's stages (OMP_NUM_THREADS): its kind's cpus; None: unset

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))

    @property
    def clone(self) -> Path:
        return Path(self.workdir) / "clones" / self.stage.replace("@", "--")

    @property
    def done(self) -> Path:
        """Written when the job has built its stage (and pushed it): how the head knows it succeeded, without
        the scheduler's accounting."""
        return Path(self.workdir) / "done" / f"{self.stage.replace('@', '--')}.{self.commit[:12]}"


def job_environment(threads: int | None = None) -> dict[str, str]:
    """The job's environment, with the folder of the interpreter that runs the job first on PATH: the stages'
    commands (``python stages/….py``) then run in the same environment as the job, whatever PATH the scheduler
    gave it (a Ray task starts with the PATH of ``ray start``); and ``threads`` CPU threads (``OMP_NUM_THREADS``,
    which PyTorch reads): the CPUs the job asked for, so jobs sharing a node do not oversubscribe it, and a
    stage's numbers, which depend on its thread count (the order of a kernel's partial sums), are the same on
    every executor (a Ray task gets its ``num_cpus`` already; SLURM and local jobs get nothing)."""
    path = os.environ.get("PATH", "")
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), path]), "PYTHONUNBUFFERED": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _run(args: list[str], cwd: Path, what: str, threads: int | None = None) -> None:
    """Run a command with the job's stdout/stderr (the scheduler's log, written as it goes: unbuffered) and
    ``threads`` CPU threads; fail with ``what`` if it fails."""
    result = subprocess.run(args, cwd=cwd, env=job_environment(threads))
    if result.returncode != 0:
        raise LaunchError(f"{what}: `{' '.join(args)}` exited with status {result.returncode} in {cwd} (log above).")


def prepare_clone(spec: WorkerSpec) -> Path:
    """The job's clone at the pinned commit: made on the first run, reused on a requeue, moved to the new commit
    by a later launch (one launch per work folder at a time)."""
    clone = spec.clone
    if not (clone / ".git").is_dir():
        clone.parent.mkdir(parents=True, exist_ok=True)
        partial = clone.with_name(clone.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # a clone a killed job left half-made
        _run(["git", "clone", "--quiet", "--no-checkout", spec.repo, str(partial)], clone.parent, "clone")
        _run(["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", spec.commit], partial, "checkout")
        partial.rename(clone)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    if head != spec.commit:  # a later launch (after a fix) reuses the clone: its outputs stay, DVC decides
        _run(["git", "fetch", "--quiet", spec.repo, spec.commit], clone, "fetch of the launch's commit")
        _run(
            ["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", "--force", spec.commit], clone, "checkout"
        )
    if spec.cache is not None:
        _run([*DVC, "cache", "dir", "--local", spec.cache], clone, "DVC cache")
        _run([*DVC, "config", "--local", "cache.shared", "group"], clone, "DVC cache")
    return clone


def run_worker(spec: WorkerSpec) -> None:
    """Build ``spec.stage`` and what it needs with ``dvc repro`` in the job's clone; with a remote, pull what
    is missing first and push the outputs and the run-cache after."""
    clone = prepare_clone(spec)
    print(f"metaland launch: job {spec.stage} in {clone} at {spec.commit[:12]}", flush=True)
    pull = ["--pull"] if spec.remote else []
    _run([*DVC, "repro", *pull, spec.stage], clone, f"stage {spec.stage}", spec.threads)
    if spec.remote:
        _run([*DVC, "push", "--run-cache", "-r", spec.remote], clone, f"push of {spec.stage}")
    write_text(spec.done, f"{spec.stage} built at {spec.commit}\n")


def worker_command(spec: WorkerSpec) -> list[str]:
    """The command a scheduler runs for a job (the head's interpreter, so the same packages)."""
    return [sys.executable, "-m", "metaland", "launch-worker", spec.to_json()]
