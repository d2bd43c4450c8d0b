"""Executor ``ray``: the jobs of each wave as ``ray.remote`` tasks (the ``ray`` extra: ``pip install
metaland[ray]``), for a few cloud machines joined with ``ray start`` or a KubeRay cluster. Each task asks
for the job kind's resources (``num_cpus``, ``num_gpus``, ``memory``) and runs the same worker command
as a SLURM job; at most ``array_parallelism`` tasks are in flight, and a wave starts after the previous
one succeeded. The head connects to the cluster at ``RAY_ADDRESS`` (``ray.init``'s rule).

A task whose worker process or node died (a preempted spot machine, the OOM killer) is run again by Ray, up
to :data:`MAX_RETRIES` times, in the same clone (a shared filesystem): the stage resumes there, training
from its newest checkpoint, as a requeued SLURM job does. A job that exits non-zero failed and is not retried.

A SLURM job inherits the environment it was submitted from (``sbatch --export=ALL``); a Ray task inherits the
environment ``ray start`` ran in, so the head hands each task its own settings of the variables a job reads
(:data:`FORWARDED_ENV`: the tracking server, the data mirror and cache, DVC's and the object store's)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from metaland.launch import EXECUTORS, Executor, LaunchError, Wave, check_wave, resources_of
from metaland.launch.worker import worker_command

NODE_IP_ENV = "METALAND_RAY_NODE_IP"
"""This machine's address as the Ray cluster knows it (its ``ray start --node-ip-address``), where Ray's own guess,
the address of the default route's interface, is not it. Ray rewrites a ``RAY_ADDRESS`` of ``127.0.0.1`` or
``localhost`` to that guess, so a cluster on loopback is one on another loopback address, e.g. 127.0.0.2."""

FORWARDED_ENV = ("METALAND_", "MLFLOW_", "DVC_", "AWS_", "GIT_")
"""Prefixes of the head's environment variables every task runs with."""


MAX_RETRIES = 3
"""Times Ray runs a job again after its worker process or node died (Ray's ``max_retries``)."""


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


def _job(command: list[str], log: str) -> int:
    import ray

    with open(log, "ab") as out:  # a retried task appends to the log of the attempt it follows
        out.write(f"metaland launch: ray task on node {ray.get_runtime_context().get_node_id()}\n".encode())
        out.flush()
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode


def submit(waves: list[Wave], spec_of, launch, folder: Path, dry_run: bool) -> None:
    for wave in waves:
        for kind, stages in wave.by_kind().items():
            r = resources_of(launch, kind)
            print(f"wave {wave.index}: {kind} × {len(stages)} task(s), num_cpus={r.cpus} num_gpus={r.gpus} "
                  f"memory={r.mem_gb:g} GiB, {launch.array_parallelism} in flight")  # fmt: skip
        if dry_run:
            continue
        _run_wave(wave, spec_of, launch, folder)


def _run_wave(wave: Wave, spec_of, launch, folder: Path) -> None:
    try:
        import ray
    except ImportError:
        raise LaunchError(
            "the ray executor needs Ray, which is not installed. Fix: pip install 'metaland[ray]' (or ray), or use "
            "--executor slurm or local."
        ) from None
    if not ray.is_initialized():
        ray.init(log_to_driver=False, _node_ip_address=os.environ.get(NODE_IP_ENV))
    folder.mkdir(parents=True, exist_ok=True)
    logs = {stage: str(folder / f"{stage.replace('@', '--')}.log") for stage in wave.stages}
    pending, codes = [], {}
    runtime_env = {"env_vars": forwarded_env()}
    for stage in wave.stages:
        r = resources_of(launch, stage.split("@", 1)[0])
        task = ray.remote(
            num_cpus=r.cpus,
            num_gpus=r.gpus,
            memory=int(r.mem_gb * 2**30),
            max_retries=MAX_RETRIES,
            runtime_env=runtime_env,
        )(_job)
        pending.append((stage, task.remote(worker_command(spec_of(stage)), logs[stage])))
        while len(pending) >= launch.array_parallelism:
            stage_done, ref = pending.pop(0)
            codes[stage_done] = _exit_status(ref, logs[stage_done])
    for stage_done, ref in pending:
        codes[stage_done] = _exit_status(ref, logs[stage_done])
    check_wave(wave, codes, logs)


def _exit_status(ref, log: str) -> int:
    """The job's exit status; -1, said in its log, when Ray lost the task (its worker or node died once more
    than :data:`MAX_RETRIES` allows, or the task could not start)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        with open(log, "a") as out:
            out.write(f"metaland launch: Ray lost the task ({type(err).__name__}: {err}); one whose worker or node "
                      f"died was run again at most {MAX_RETRIES} times\n")  # fmt: skip
        return -1


EXECUTORS.register("ray", Executor("ray", "ray.remote tasks on a Ray cluster (the ray extra)", submit))
