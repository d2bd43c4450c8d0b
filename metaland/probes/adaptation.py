"""Meta-test adaptation probe (seed 000 §2.4: M1 target accuracy, M3 support loss, M6 norm).

Per task: target (query) accuracy and loss at θ̃_i (M1, eq. 1.11), support loss and accuracy at
θ̃_i (M3), the same at θ^s before adaptation (§2.4.1 sanity check: chance, 1/m, on average) and
the trajectory norm ‖θ̃_i − θ^s‖₂ (M6). The summary is the mean over tasks.
"""

from __future__ import annotations

from metaland.probes import PROBES, ProbeContext, ProbeOutput, ProbeSpec
from metaland.schema import NoOptions, Params


def adaptation(context: ProbeContext, options: Params) -> ProbeOutput:
    metrics, _ = context.adaptation()
    per_task = {**metrics, "trajectory_norm": context.displacements().norm(dim=1)}
    return ProbeOutput(per_task, {name: values.mean().item() for name, values in per_task.items()})


PROBES.register(
    "adaptation",
    ProbeSpec(
        "adaptation",
        "Query/support accuracy and loss before and after adaptation; trajectory norm",
        NoOptions,
        adaptation,
    ),
)
