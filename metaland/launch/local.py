"""Executor ``local``: the jobs of each wave as worker processes on this machine, ``array_parallelism`` at
a time, each in its own clone (what a cluster does, without one: for a workstation, and to test the
hand-off). A wave starts only after every job of the previous one succeeded."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from metaland.launch import EXECUTORS, Executor, Wave, check_wave
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
        check_wave(wave, codes, logs)


EXECUTORS.register("local", Executor("local", "worker processes on this machine, one clone each", submit))
