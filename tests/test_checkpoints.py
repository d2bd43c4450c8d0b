"""Checkpoints: safetensors + sidecar, verified by sha256, never unpickled."""

from __future__ import annotations

import json

import pytest
import torch

from metaland.checkpoints import (
    is_valid,
    latest_valid,
    list_checkpoints,
    load_groups,
    load_params,
    save_checkpoint,
    verify,
)
from metaland.errors import CheckpointError
from metaland.io import file_digest


def params(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value), "b": torch.arange(3.0) + value}


def test_round_trip(tmp_path):
    ckpt = save_checkpoint(
        tmp_path,
        5,
        {"params": params(1.0), "adam_m": params(0.5)},
        params_hash="h",
        metrics={"val/query_accuracy": 0.7},
    )
    assert ckpt.path.name == "step-00000005.safetensors" and ckpt.sidecar_path.is_file()
    groups = load_groups(ckpt)
    assert torch.equal(groups["params"]["w"], params(1.0)["w"])
    assert torch.equal(groups["adam_m"]["b"], params(0.5)["b"])
    assert list(load_params(ckpt, {"b": params(0.0)["b"], "w": params(0.0)["w"]})) == ["b", "w"]
    assert list_checkpoints(tmp_path)[0].sidecar["metrics"] == {"val/query_accuracy": 0.7}


def test_corrupt_file_is_detected_and_skipped(tmp_path):
    for step in (1, 2):
        save_checkpoint(tmp_path, step, {"params": params(step)}, params_hash="h", metrics={})
    newest = list_checkpoints(tmp_path)[-1]
    newest.path.write_bytes(newest.path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="is corrupt: sha256") as info:
        verify(newest)
    assert str(newest.path) in str(info.value) and "Fix: delete both files and rerun" in str(info.value)
    assert not is_valid(newest)
    assert latest_valid(tmp_path, {"params_hash": "h"}).step == 1


def test_tensor_file_without_sidecar_is_not_a_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 1, {"params": params(1)}, params_hash="h", metrics={})
    ckpt = save_checkpoint(tmp_path, 2, {"params": params(2)}, params_hash="h", metrics={})
    ckpt.sidecar_path.unlink()
    assert [c.step for c in list_checkpoints(tmp_path)] == [1]


def test_checkpoints_of_other_params_are_not_resumed(tmp_path):
    save_checkpoint(tmp_path, 1, {"params": params(1)}, params_hash="old", metrics={})
    assert latest_valid(tmp_path, {"params_hash": "new"}) is None
    assert latest_valid(tmp_path, {"params_hash": "old"}).step == 1


def test_missing_tensor_file_and_wrong_model(tmp_path):
    ckpt = save_checkpoint(tmp_path, 1, {"params": params(1.0)}, params_hash="h", metrics={})
    with pytest.raises(CheckpointError, match=r"does not fit the model of this run \(params: conv is missing\)"):
        load_params(ckpt, {"w": params(0.0)["w"], "b": params(0.0)["b"], "conv": torch.zeros(1)})
    ckpt.path.unlink()
    with pytest.raises(CheckpointError, match="is missing although its sidecar exists"):
        verify(ckpt)


def test_a_huge_safetensors_header_is_refused_not_allocated(tmp_path):
    """A tensor file whose header claims 2^40 bytes (its sidecar's sha256 matching): refused with the
    file named, before anything that size is read or allocated."""
    ckpt = save_checkpoint(tmp_path, 1, {"params": params(1.0)}, params_hash="h", metrics={})
    ckpt.path.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    sidecar = {**ckpt.sidecar, "sha256": file_digest(ckpt.path)}
    ckpt.sidecar_path.write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match=r"step-00000001\.safetensors is not a readable safetensors file.*Fix:"):
        load_groups(list_checkpoints(tmp_path)[0])


def test_the_validation_table_has_each_checkpoints_validation_metrics_unprefixed(tmp_path):
    """results' ``validation`` table (seed 001 Figs. 19-20 draw it) reads the sidecars training wrote: one row per
    checkpoint, by step, the ``val/`` metrics only, without the prefix."""
    from metaland.results import validation_rows

    for step, accuracy in ((20, 0.75), (0, 0.25), (10, 0.5)):
        metrics = {"val/query_accuracy": accuracy, "val/query_loss": 2 * accuracy, "train/seconds": 3.0}
        save_checkpoint(tmp_path, step, {"params": params(0.0)}, params_hash="h", metrics=metrics)
    rows = validation_rows(tmp_path)
    assert rows.to_dict("list") == {
        "step": [0, 10, 20],
        "query_accuracy": [0.25, 0.5, 0.75],
        "query_loss": [0.5, 1.0, 1.5],
    }
    assert validation_rows(tmp_path / "absent").empty
