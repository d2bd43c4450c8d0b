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

from metaland.checkpoints import Checkpoint, check_like, list_checkpoints, load_groups, save_checkpoint, verify
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


IDENTITY_FIELDS = ("params_hash", "data_sha256", "code_sha256")
"""Sidecar fields of a training checkpoint that say what it was trained for (metaland.meta.train)."""


def extract(run: Run, rule: ExtractConfig, train_dir: Path, out_dir: Path, *, params_hash: str) -> dict:
    """Write ``out_dir`` (manifest + θ of each selected checkpoint); return the manifest.

    ``params_hash`` is the hash of the run's params as the caller reads them now: checkpoints
    trained for other params (a params.yaml edited while they trained) are refused."""
    checkpoints = list_checkpoints(Path(train_dir) / "ckpt")
    if not checkpoints or checkpoints[-1].step != run.train.iterations:
        last = checkpoints[-1].step if checkpoints else "none"
        raise CheckpointError(
            f"run {run.key} has not finished training: its last checkpoint is at step {last}, and "
            f"train.iterations is {run.train.iterations}. Fix: run `dvc repro train@{run.key}` (it resumes)."
        )
    identities = {tuple(c.sidecar.get(field) for field in IDENTITY_FIELDS) for c in checkpoints}
    if len(identities) != 1:
        raise CheckpointError(
            f"{train_dir} mixes checkpoints of different params, data or code. "
            f"Fix: rerun `dvc repro --force train@{run.key}`, which removes the stale ones."
        )
    if checkpoints[-1].sidecar["params_hash"] != params_hash:
        raise CheckpointError(
            f"the checkpoints in {train_dir} were trained for other params of run {run.key} than params.yaml "
            f"gives now (params hash {checkpoints[-1].sidecar['params_hash']}, now {params_hash}): params.yaml "
            f"was edited, or the profile switched, while they trained. Fix: `dvc repro --force train@{run.key}`, "
            "then `dvc repro`."
        )
    selected = select(checkpoints, rule, ALGORITHMS.get(run.algorithm).milestones(run.algorithm_options))
    by_step = {c.step: c for c in checkpoints}
    entries = []
    signature = None
    with atomic_dir(out_dir) as tmp:
        for step, reasons in selected.items():
            source = by_step[step]
            verify(source)
            params = load_groups(source)["params"]
            signature = signature or (source, params)
            check_like(source, "params", params, signature[1])
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
        manifest = {
            "run": run.key,
            **dict(zip(IDENTITY_FIELDS, identities.pop(), strict=True)),
            "checkpoints": entries,
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest


def read_manifest(directory: Path, *, run_key: str, params_hash: str, data_sha256: str) -> dict:
    """The manifest of ``checkpoints/<run>``, checked to hold checkpoints of this run trained for
    these params (``params_hash``) and this dataset (``data_sha256``, its manifest's digest)."""
    path = Path(directory) / "manifest.json"
    fix = (
        f"run `dvc repro probe@{run_key}`, which extracts them "
        f"(`dvc repro --force train@{run_key}` first if training is stale)"
    )
    if not path.is_file():
        raise CheckpointError(f"{path} is missing. Fix: {fix}.")
    manifest = read_json(path)
    recorded = (manifest.get("run"), manifest.get("params_hash"), manifest.get("data_sha256"))
    if recorded != (run_key, params_hash, data_sha256):
        raise CheckpointError(
            f"{path} lists checkpoints of run {recorded[0]} trained for params hash {recorded[1]} on data "
            f"{str(recorded[2])[:12]}, but run {run_key} now has params hash {params_hash} and data "
            f"{data_sha256[:12]}: they were trained for other params or data. Fix: {fix}."
        )
    if not manifest.get("checkpoints"):
        raise CheckpointError(f"{path} lists no checkpoint, so there is nothing to probe. Fix: {fix}.")
    return manifest
