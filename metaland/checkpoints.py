"""Checkpoints: safetensors + a JSON sidecar; never unpickled.

``<dir>/step-00000500.safetensors`` holds tensors named ``params/<name>`` (θ) and, for training
checkpoints, ``adam_m/<name>`` and ``adam_v/<name>`` (optimizer state). The sidecar
``step-00000500.json`` records the step, the params hash of the run that wrote it, the file's
sha256 and metrics (a training checkpoint also the digests of the data and the code it was trained
with). The sidecar is written last, after the tensor file is complete: a checkpoint without a
sidecar, or whose sha256 does not match, is not valid and is never resumed from; one whose tensors
do not have the names, shapes and dtypes of the model that loads it is refused (:func:`check_like`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from metaland.errors import CheckpointError
from metaland.io import file_digest, read_json, write_json, write_safetensors
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
    write_safetensors(path, tensors, f"checkpoint {path}")
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


def written_for(checkpoint: Checkpoint, identity: Mapping[str, str]) -> bool:
    """Whether the sidecar records every field of ``identity`` (params hash, data and code digests)."""
    return all(checkpoint.sidecar.get(field) == value for field, value in identity.items())


def is_valid(checkpoint: Checkpoint, identity: Mapping[str, str] | None = None) -> bool:
    if identity is not None and not written_for(checkpoint, identity):
        return False
    try:
        verify(checkpoint)
    except CheckpointError:
        return False
    return True


def latest_valid(directory: Path, identity: Mapping[str, str]) -> Checkpoint | None:
    """The newest checkpoint written for ``identity`` (sidecar fields, :func:`written_for`) that
    passes verification."""
    for checkpoint in reversed(list_checkpoints(directory)):
        if is_valid(checkpoint, identity):
            return checkpoint
    return None


def check_like(checkpoint: Checkpoint, group: str, tensors: ParamDict, reference: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointError` unless ``tensors`` (group ``group`` of ``checkpoint``) have exactly
    the names, shapes and dtypes of ``reference`` (what the model that loads them expects)."""
    problems = [f"{name} is missing" for name in reference if name not in tensors]
    problems += [f"{name} is not a tensor of this model" for name in tensors if name not in reference]
    for name in reference.keys() & tensors.keys():
        want, have = reference[name], tensors[name]
        if tuple(have.shape) != tuple(want.shape) or have.dtype != want.dtype:
            problems.append(f"{name} is {have.dtype} {list(have.shape)}, the model's {want.dtype} {list(want.shape)}")
    if problems:
        shown = "; ".join(sorted(problems)[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        raise CheckpointError(
            f"checkpoint {checkpoint.path} does not fit the model of this run ({group}: {shown}): it was written for "
            "another model or image size, although its sha256 matches. Fix: delete it (and its .json sidecar) and "
            "rerun the train stage for this run (`dvc repro train@<run>`)."
        )


def load_groups(checkpoint: Checkpoint, device: torch.device | str = "cpu") -> dict[str, ParamDict]:
    """Verify, then load the tensor groups of a checkpoint ({"params": {...}, ...})."""
    verify(checkpoint)
    groups: dict[str, ParamDict] = {}
    try:
        tensors = load_file(str(checkpoint.path), device=str(device))
    except SafetensorError as err:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} is not a readable safetensors file ({err}), although its sha256 matches "
            "its sidecar. Fix: delete both files and rerun the train stage to rewrite it."
        ) from None
    for key, tensor in tensors.items():
        group, name = key.split("/", 1)
        groups.setdefault(group, {})[name] = tensor
    return groups


def load_params(
    checkpoint: Checkpoint, reference: Mapping[str, torch.Tensor], device: torch.device | str = "cpu"
) -> ParamDict:
    """θ of a checkpoint, in the order of ``reference`` (the module's parameters), checked to have
    their names, shapes and dtypes (:func:`check_like`)."""
    params = load_groups(checkpoint, device).get("params", {})
    check_like(checkpoint, "params", params, reference)
    return {name: params[name] for name in reference}
