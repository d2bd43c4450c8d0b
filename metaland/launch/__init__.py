"""`metaland launch`: one profile's DVC DAG spread over a cluster in waves, on existing engines (issue 24).

DVC runs one stage at a time and has no multi-machine executor, so the head plans and submits jobs and
lets DVC's run-cache join the results:

* **Plan.** The DAG comes from DVC (``dvc dag --dot``). A *job stage* is one of :data:`JOB_KINDS`
  (``fetch@*``, ``train@*``, ``probe@*``, which extracts its run's checkpoints first); every other stage is
  built inside the job that needs it (``check-params`` everywhere: it is cheap and run-cached) or by
  the head (``aggregate``, ``plot``). A job's wave is one more than the latest wave of the job stages
  upstream of it, so fetch@* → train@* → probe@*, each wave starting only after the previous one
  succeeded (SLURM ``afterok``): no two jobs ever build the same upstream job stage.
* **Jobs.** Each runs :func:`metaland.launch.worker.run_worker`: its own clone of the repository at the
  pinned commit, ``dvc repro <stage>`` (recursive, never ``-s``: upstream outputs come back from DVC's
  run-cache), with one DVC cache shared by every clone (a shared filesystem) or a DVC remote
  (``dvc repro --pull`` and ``dvc push --run-cache``).
* **The head** runs ``dvc repro`` last: every job stage is restored from the run-cache ("Stage … is
  cached - skipping run, checking out outputs"), aggregate and plot run, and it alone writes dvc.lock.

Executors (:data:`EXECUTORS`): ``local`` (worker processes on this machine), ``slurm`` (``submitit``
job arrays), ``ray`` (``ray.remote`` tasks; the ``ray`` extra). Resources per job kind are params
(``launch`` in params.yaml, :class:`metaland.config.LaunchConfig`).
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from metaland.config import LaunchConfig
from metaland.errors import EXIT_LAUNCH, ConfigError, MetalandError
from metaland.registry import Registry

JOB_KINDS = ("fetch", "train", "probe")
"""Stage kinds that are submitted as jobs; the others are built inside a job or by the head."""

_EDGE = re.compile(r'^\s*"([^"]+)"\s*->\s*"([^"]+)"\s*;?\s*$')
_NODE = re.compile(r'^\s*"([^"]+)"\s*;?\s*$')


class LaunchError(MetalandError):
    """A cluster launch cannot go on (a dirty checkout, no tracking server for the workers, a failed job)."""

    exit_code = EXIT_LAUNCH


@dataclass(frozen=True)
class Wave:
    """Job stages that may run at once, after every earlier wave succeeded."""

    index: int
    stages: tuple[str, ...]

    def by_kind(self) -> dict[str, list[str]]:
        """Stages grouped by kind (one job array per kind: resources differ by kind)."""
        groups: dict[str, list[str]] = {}
        for stage in self.stages:
            groups.setdefault(kind_of(stage), []).append(stage)
        return groups


def kind_of(stage: str) -> str:
    """``train@guiroy2019-…`` -> ``train``; ``aggregate`` -> ``aggregate``."""
    return stage.split("@", 1)[0]


def parse_dot(text: str) -> dict[str, set[str]]:
    """Stage -> the stages it depends on directly, from ``dvc dag --dot`` (edges point from a dependency
    to its dependent)."""
    upstream: dict[str, set[str]] = {}
    for line in text.splitlines():
        if edge := _EDGE.match(line):
            source, target = edge.groups()
            upstream.setdefault(source, set())
            upstream.setdefault(target, set()).add(source)
        elif (node := _NODE.match(line)) and node.group(1) not in ("strict digraph", "digraph"):
            upstream.setdefault(node.group(1), set())
    return upstream


def read_dag(root: Path) -> dict[str, set[str]]:
    """The DAG of the checkout at ``root`` as DVC sees it (its params.yaml, its dvc.yaml)."""
    result = subprocess.run(["dvc", "dag", "--dot"], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise LaunchError(f"`dvc dag --dot` failed in {root}:\n{result.stderr.strip()[-2000:]}")
    return parse_dot(result.stdout)


def plan_waves(upstream: Mapping[str, set[str]], select: str = "*") -> list[Wave]:
    """Waves of the job stages matching the glob ``select``, with every job stage they depend on (through
    any chain of stages): a stage's wave is 1 + the latest wave of the job stages upstream of it."""
    jobs = {stage for stage in upstream if kind_of(stage) in JOB_KINDS}
    chosen = {stage for stage in jobs if fnmatch.fnmatchcase(stage, select)}
    if not chosen:
        raise ConfigError(
            f"--stages {select!r} matches no job stage ({', '.join(JOB_KINDS)}@…) of this DAG. Fix: give a glob such "
            "as 'train@guiroy2019-*', or leave it out for all."
        )
    job_ancestors: dict[str, set[str]] = {}

    def ancestors(stage: str) -> set[str]:
        """Job stages upstream of ``stage`` (memoised; the DAG has no cycles: DVC refuses them)."""
        if stage not in job_ancestors:
            found: set[str] = set()
            for parent in upstream.get(stage, ()):
                found |= ancestors(parent) | ({parent} if parent in jobs else set())
            job_ancestors[stage] = found
        return job_ancestors[stage]

    for stage in list(chosen):
        chosen |= ancestors(stage)
    wave: dict[str, int] = {}
    for stage in sorted(chosen, key=lambda s: len(ancestors(s))):
        wave[stage] = 1 + max((wave[a] for a in ancestors(stage)), default=-1)
    count = max(wave.values()) + 1
    return [Wave(i, tuple(sorted(s for s, w in wave.items() if w == i))) for i in range(count)]


@dataclass(frozen=True)
class Executor:
    name: str
    description: str
    submit: Callable[..., None]
    """``submit(waves, spec_of, launch, folder, dry_run)``: run (or, with ``dry_run``, describe) every wave in
    order; ``spec_of(stage)`` is the :class:`metaland.launch.worker.WorkerSpec` of a job. Returns when every job
    has finished; raises :class:`LaunchError` naming the failed jobs and their logs."""


EXECUTORS: Registry[Executor] = Registry("executor")


def check_wave(wave: Wave, codes: Mapping[str, int], logs: Mapping[str, object]) -> None:
    """Fail naming every job of ``wave`` that exited non-zero (``codes``: stage -> exit status) and its log."""
    failed = [stage for stage, code in codes.items() if code != 0]
    if failed:
        raise LaunchError(
            f"{len(failed)} job(s) of wave {wave.index} failed: "
            + "; ".join(f"{s} (status {codes[s]}, log {logs[s]})" for s in failed)
            + ". Later waves were not started. Fix: read the logs, fix the cause, and rerun the same "
            "`metaland launch`: finished stages come back from DVC's run-cache."
        )


def resources_of(launch: LaunchConfig, kind: str):
    """The :class:`metaland.config.StageResources` of a job kind."""
    return getattr(launch, kind)


# Registrations (one module per executor).
from metaland.launch import local as _local  # noqa: E402,F401
from metaland.launch import ray_cluster as _ray  # noqa: E402,F401
from metaland.launch import slurm as _slurm  # noqa: E402,F401
