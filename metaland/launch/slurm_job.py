"""The callable a SLURM job runs (submitit pickles it by reference: this module must import without
submitting anything). Checkpointable: on preemption or its time limit (SLURM's USR2 ``--signal``),
submitit requeues the job with the same spec, and the stage resumes in the same clone."""

from __future__ import annotations

import submitit

from metaland.launch.worker import WorkerSpec, run_worker


class WorkerJob(submitit.helpers.Checkpointable):
    def __call__(self, spec_json: str) -> str:
        spec = WorkerSpec.from_json(spec_json)
        run_worker(spec)
        return spec.stage
