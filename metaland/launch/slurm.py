"""Executor ``slurm``: one SLURM job array per wave and job kind, through ``submitit``.

Every array of wave k+1 starts ``afterok`` on the arrays of wave k; the tasks of an array run at most
``launch.array_parallelism`` at a time (``--array=0-N%P``). The sbatch options come from the params
(``launch.<kind>``: ``--cpus-per-task``, ``--gpus-per-node``, ``--mem``, ``--time``; ``partition``,
``account``, ``qos``, ``constraint`` passed through); jobs are requeueable (``--requeue``) and receive
USR2 90 s before their time limit, upon which submitit requeues them (:mod:`metaland.launch.slurm_job`).
The head waits until the arrays have left the queue (``squeue``: no accounting database needed); a job
succeeded if it wrote its marker (:attr:`metaland.launch.worker.WorkerSpec.done`). When one failed, the head
cancels the arrays still waiting for it and names the failed job's log. Submitit writes its job files (a
pickle of the job's callable, read by the job itself) and logs under ``<workdir>/logs/slurm/``; metaland
itself never loads a pickle.
"""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

from metaland.launch import EXECUTORS, Executor, LaunchError, Wave, resources_of

POLL_S = 5
"""Seconds between two looks at the queue while the head waits."""
SIGNAL_DELAY_S = 90
"""Seconds before its time limit at which a job receives USR2 and is requeued (submitit's default)."""


def sbatch_parameters(launch, kind: str, dependency: list[str]) -> dict:
    """Keyword parameters of ``submitit.SlurmExecutor`` (= sbatch options) for one job array."""
    resources = resources_of(launch, kind)
    optional = {"partition": launch.partition, "account": launch.account, "qos": launch.qos,
                "constraint": launch.constraint, "gpus_per_node": resources.gpus or None,
                "dependency": f"afterok:{':'.join(dependency)}" if dependency else None}  # fmt: skip
    return {
        "job_name": f"metaland-{kind}",
        "time": resources.time_min,
        "cpus_per_task": resources.cpus,
        "mem": f"{math.ceil(resources.mem_gb * 1024)}M",
        "array_parallelism": launch.array_parallelism,
        "signal_delay_s": SIGNAL_DELAY_S,
        "additional_parameters": {"requeue": True},
        **{key: value for key, value in optional.items() if value is not None},
    }


def sbatch_header(parameters: dict, count: int, folder: Path) -> str:
    """The ``#SBATCH`` lines submitit writes for an array of ``count`` jobs (what ``--dry-run`` prints)."""
    from submitit.slurm.slurm import _make_sbatch_string

    text = _make_sbatch_string(command="…", folder=str(folder / "%j"), map_count=count, **parameters)
    return "\n".join(line for line in text.splitlines() if line.startswith("#SBATCH"))


def submit(waves: list[Wave], spec_of, launch, folder: Path, dry_run: bool) -> None:
    submitted = []  # (wave, kind, jobs)
    previous: list[str] = []
    try:
        for wave in waves:
            current = []
            for kind, stages in wave.by_kind().items():
                after = [f"wave{wave.index - 1}"] if dry_run and wave.index else previous
                parameters = sbatch_parameters(launch, kind, after)
                print(f"wave {wave.index}: {kind} array of {len(stages)} job(s)")
                if dry_run:
                    print(sbatch_header(parameters, len(stages), folder / "slurm"))
                    if wave.index:
                        print(
                            f"  (wave{wave.index - 1}: the job ids of wave {wave.index - 1}'s arrays, once submitted)"
                        )
                    continue
                jobs = _submit_array(parameters, [spec_of(s) for s in stages], folder / "slurm")
                print(f"  submitted array {jobs[0].job_id.split('_')[0]}")
                submitted.append((wave.index, kind, stages, jobs))
                current.append(jobs[0].job_id.split("_")[0])
            previous = current
        if not dry_run:
            _wait(submitted, spec_of)
    except BaseException:
        _cancel([jobs for *_, jobs in submitted])
        raise


def _submit_array(parameters: dict, specs: list, folder: Path) -> list:
    import submitit

    from metaland.launch.slurm_job import WorkerJob

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=1000)
    executor.update_parameters(**parameters)
    return executor.map_array(WorkerJob(), [spec.to_json() for spec in specs])


def _queued(arrays: set[str]) -> set[str]:
    """The arrays among ``arrays`` that still have a task pending, running or requeued (``squeue``; no
    accounting database needed)."""
    result = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True)
    if result.returncode != 0:
        raise LaunchError(f"`squeue` failed: {result.stderr.strip()}. Fix: check that SLURM answers (`sinfo`).")
    return arrays & set(result.stdout.split())


def _wait(submitted: list, spec_of) -> None:
    """Wait until every array has left the queue, wave by wave; a job succeeded when it wrote its marker
    (:attr:`WorkerSpec.done`). On the first wave with a failed job, fail naming each and its log."""
    for wave in sorted({w for w, *_ in submitted}):
        arrays = [(kind, stages, jobs) for w, kind, stages, jobs in submitted if w == wave]
        ids = {jobs[0].job_id.split("_")[0] for _, _, jobs in arrays}
        while _queued(ids):
            time.sleep(POLL_S)
        failed = [
            f"{stage} (job {job.job_id}, log {job.paths.stdout})"
            for kind, stages, jobs in arrays
            for stage, job in zip(stages, jobs, strict=True)
            if not spec_of(stage).done.is_file()
        ]
        if failed:
            raise LaunchError(
                f"{len(failed)} job(s) of wave {wave} failed: " + "; ".join(failed) + ". The arrays waiting for them "
                "were cancelled. Fix: read the logs, fix the cause, and rerun the same `metaland launch`: finished "
                "stages come back from DVC's run-cache."
            )


def _cancel(arrays: list[list]) -> None:
    ids = sorted({jobs[0].job_id.split("_")[0] for jobs in arrays if jobs})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


EXECUTORS.register("slurm", Executor("slurm", "SLURM job arrays through submitit, one per wave and kind", submit))
