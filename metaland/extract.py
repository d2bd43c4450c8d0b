"""Select, verify and publish the checkpoints a study probes.

Rules (a union; ``studies.<study>.extract``): every k-th checkpoint of the schedule, n
log-spaced ones, the best on validation accuracy, the final one; and always the algorithm's
milestones (``AlgorithmSpec.milestones``: the end of a training phase). Each selected checkpoint is
verified against its sha256, stripped to θ (no optimizer state) and written to
``checkpoints/<run>/`` with a manifest; the folder appears only complete.
"""

from __future__ import annotations

import math
from pathlib import Path

from metaland.checkpoints import Checkpoint, list_checkpoints, load_groups, save_checkpoint, verify
from metaland.config import ExtractConfig, Run
from metaland.errors import CheckpointError
from metaland.io import atomic_dir, read_json, write_json
from metaland.meta import ALGORITHMS

VAL_METRIC = "val/query_accuracy"


def select(
    checkpoints: list[Checkpoint], rule: ExtractConfig, milestones: dict[int, str] | None = None
) -> dict[int, list[str]]:
    """step -> the rules that selected it, for checkpoints sorted by step (``milestones``: {step: name})."""
    steps = [c.step for c in checkpoints]
    chosen: dict[int, list[str]] = {}

    def pick(step: int, reason: str) -> None:
        chosen.setdefault(step, []).append(reason)

    if rule.every:
        for step in steps[:: rule.every]:
            pick(step, f"every-{rule.every}")
    if rule.log_spaced:
        for step in log_spaced(steps, rule.log_spaced):
            pick(step, "log-spaced")
    if rule.best:
        best = max(checkpoints, key=lambda c: (c.sidecar["metrics"].get(VAL_METRIC, -math.inf), -c.step))
        pick(best.step, "best-val")
    if rule.final:
        pick(steps[-1], "final")
    for step, name in (milestones or {}).items():
        if step in steps:
            pick(step, name)
    return dict(sorted(chosen.items()))


def log_spaced(steps: list[int], count: int) -> list[int]:
    """The existing steps nearest to ``count`` log-spaced points between the first nonzero and last."""
    positive = [s for s in steps if s > 0]
    if not positive:
        return []
    lo, hi = math.log(positive[0]), math.log(positive[-1])
    targets = [math.exp(lo + (hi - lo) * i / max(count - 1, 1)) for i in range(count)]
    return sorted({min(positive, key=lambda s, t=t: abs(math.log(s) - math.log(t))) for t in targets})


def extract(run: Run, rule: ExtractConfig, train_dir: Path, out_dir: Path) -> dict:
    """Write ``out_dir`` (manifest + θ of each selected checkpoint); return the manifest."""
    checkpoints = list_checkpoints(Path(train_dir) / "ckpt")
    if not checkpoints or checkpoints[-1].step != run.train.iterations:
        last = checkpoints[-1].step if checkpoints else "none"
        raise CheckpointError(
            f"run {run.key} has not finished training: its last checkpoint is at step {last}, and "
            f"train.iterations is {run.train.iterations}. Fix: run `dvc repro train@{run.key}` (it resumes)."
        )
    hashes = {c.sidecar["params_hash"] for c in checkpoints}
    if len(hashes) != 1:
        raise CheckpointError(
            f"{train_dir} mixes checkpoints of different params ({', '.join(sorted(hashes))}). "
            f"Fix: rerun `dvc repro train@{run.key}`, which removes the stale ones."
        )
    by_step = {c.step: c for c in checkpoints}
    entries = []
    with atomic_dir(out_dir) as tmp:
        milestones = ALGORITHMS.get(run.algorithm).milestones(run.algorithm_options)
        for step, reasons in select(checkpoints, rule, milestones).items():
            source = by_step[step]
            verify(source)
            params = load_groups(source)["params"]
            written = save_checkpoint(
                tmp,
                step,
                {"params": params},
                params_hash=source.sidecar["params_hash"],
                metrics=source.sidecar["metrics"],
                extra={"run": run.key, "reasons": reasons},
            )
            entries.append(
                {
                    "step": step,
                    "file": written.path.name,
                    "sha256": written.sidecar["sha256"],
                    "reasons": reasons,
                    "metrics": source.sidecar["metrics"],
                }
            )
        manifest = {"run": run.key, "params_hash": hashes.pop(), "checkpoints": entries}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing. Fix: run the extract stage (`dvc repro extract@{Path(directory).name}`)."
        )
    return read_json(path)
