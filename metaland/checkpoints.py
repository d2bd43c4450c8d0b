"""Checkpoints: safetensors + a JSON sidecar; never unpickled.

``<dir>/step-00000500.safetensors`` holds tensors named ``params/<name>`` (θ) and, for training
checkpoints, ``adam_m/<name>`` and ``adam_v/<name>`` (optimizer state). The sidecar
``step-00000500.json`` records the step, the params hash of the run that wrote it, the file's
sha256 and metrics. The sidecar is written last, after the tensor file is complete: a checkpoint
without a sidecar, or whose sha256 does not match, is not valid and is never resumed from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from metaland.errors import CheckpointError
from metaland.io import atomic_path, file_digest, read_json, write_json
from metaland.models import ParamDict

FORMAT = "metaland-checkpoint/1"
NAME = re.compile(r"^step-(\d{8})\.json$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path  # the .safetensors file
    sidecar: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.sidecar["step"])

    @property
    def sidecar_path(self) -> Path:
        return self.path.with_suffix(".json")


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:08d}.safetensors"


def save_checkpoint(
    directory: Path,
    step: int,
    groups: dict[str, ParamDict],
    *,
    params_hash: str,
    metrics: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> Checkpoint:
    """Write ``groups`` ({"params": θ, "adam_m": ..., ...}) atomically, then the sidecar."""
    path = checkpoint_path(directory, step)
    tensors = {
        f"{group}/{name}": t.detach().to("cpu").contiguous() for group, d in groups.items() for name, t in d.items()
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    sidecar = {
        "format": FORMAT,
        "file": path.name,
        "step": step,
        "params_hash": params_hash,
        "sha256": file_digest(path),
        "metrics": metrics,
        **(extra or {}),
    }
    write_json(path.with_suffix(".json"), sidecar)
    return Checkpoint(path, sidecar)


def list_checkpoints(directory: Path) -> list[Checkpoint]:
    """Checkpoints with a readable sidecar, by step (validity is checked by ``verify``)."""
    found = []
    directory = Path(directory)
    if not directory.is_dir():
        return found
    for sidecar_path in directory.iterdir():
        if not NAME.match(sidecar_path.name):
            continue
        try:
            sidecar = read_json(sidecar_path)
        except ValueError:
            continue
        if sidecar.get("format") == FORMAT:
            found.append(Checkpoint(sidecar_path.with_suffix(".safetensors"), sidecar))
    return sorted(found, key=lambda c: c.step)


def verify(checkpoint: Checkpoint) -> None:
    """Raise :class:`CheckpointError` unless the tensor file exists and matches its sha256."""
    if not checkpoint.path.is_file():
        raise CheckpointError(
            f"checkpoint {checkpoint.path} is missing although its sidecar exists. Fix: rerun the train "
            "stage (`dvc repro train@<run>`); it resumes from the newest valid checkpoint."
        )
    actual = file_digest(checkpoint.path)
    if actual != checkpoint.sidecar["sha256"]:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} is corrupt: sha256 {actual} does not match {checkpoint.sidecar['sha256']} "
            "recorded in its sidecar. Fix: delete both files and rerun the train stage to rewrite it."
        )


def is_valid(checkpoint: Checkpoint, params_hash: str | None = None) -> bool:
    if params_hash is not None and checkpoint.sidecar.get("params_hash") != params_hash:
        return False
    try:
        verify(checkpoint)
    except CheckpointError:
        return False
    return True


def latest_valid(directory: Path, params_hash: str) -> Checkpoint | None:
    """The newest checkpoint written for ``params_hash`` that passes verification."""
    for checkpoint in reversed(list_checkpoints(directory)):
        if is_valid(checkpoint, params_hash):
            return checkpoint
    return None


def load_groups(checkpoint: Checkpoint, device: torch.device | str = "cpu") -> dict[str, ParamDict]:
    """Verify, then load the tensor groups of a checkpoint ({"params": {...}, ...})."""
    verify(checkpoint)
    groups: dict[str, ParamDict] = {}
    for key, tensor in load_file(str(checkpoint.path), device=str(device)).items():
        group, name = key.split("/", 1)
        groups.setdefault(group, {})[name] = tensor
    return groups


def load_params(checkpoint: Checkpoint, names: list[str], device: torch.device | str = "cpu") -> ParamDict:
    """θ of a checkpoint, in the order of ``names`` (the module's parameter order)."""
    params = load_groups(checkpoint, device)["params"]
    missing = set(names) - set(params)
    if missing:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} lacks parameters {', '.join(sorted(missing))}: it was written for "
            "another model. Fix: rerun the train stage for this run."
        )
    return {name: params[name] for name in names}
