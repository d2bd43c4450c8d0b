"""Executor ``local``: the jobs of each wave as worker processes on this machine, ``array_parallelism`` at
a time, each in its own clone (what a cluster does, without one: for a workstation, and to test the
hand-off). A wave starts only after every job of the previous one succeeded."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from metaland.launch import EXECUTORS, Executor, LaunchError, Wave
from metaland.launch.worker import worker_command


def _run_job(spec, log: Path) -> int:
    with log.open("wb") as out:
        return subprocess.run(worker_command(spec), stdout=out, stderr=subprocess.STDOUT).returncode


def submit(waves: list[Wave], spec_of, launch, folder: Path, dry_run: bool) -> None:
    for wave in waves:
        print(f"wave {wave.index}: {len(wave.stages)} job(s), {launch.array_parallelism} at a time: "
              + ", ".join(f"{kind} × {len(stages)}" for kind, stages in wave.by_kind().items()))  # fmt: skip
        if dry_run:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        logs = {stage: folder / f"{stage.replace('@', '--')}.log" for stage in wave.stages}
        with ThreadPoolExecutor(max_workers=launch.array_parallelism) as pool:
            results = pool.map(_run_job, [spec_of(s) for s in wave.stages], [logs[s] for s in wave.stages])
            codes = dict(zip(wave.stages, results, strict=True))
        failed = [stage for stage, code in codes.items() if code != 0]
        if failed:
            raise LaunchError(
                f"{len(failed)} job(s) of wave {wave.index} failed: "
                + "; ".join(f"{s} (status {codes[s]}, log {logs[s]})" for s in failed)
                + ". Later waves were not started. Fix: read the logs, fix the cause, and rerun the same "
                "`metaland launch`: finished stages come back from DVC's run-cache."
            )


EXECUTORS.register("local", Executor("local", "worker processes on this machine, one clone each", submit))
