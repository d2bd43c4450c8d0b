"""Checkpoint selection (every k, log-spaced, best on validation, final) and publication."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metaland.checkpoints import Checkpoint, list_checkpoints, load_groups
from metaland.config import ExtractConfig
from metaland.errors import CheckpointError
from metaland.extract import extract, log_spaced, select
from metaland.meta.train import train
from tests.helpers import DATASET_PARAMS, make_run


def fake(steps_and_acc) -> list[Checkpoint]:
    return [
        Checkpoint(Path(f"step-{s:08d}.safetensors"), {"step": s, "metrics": {"val/query_accuracy": a}})
        for s, a in steps_and_acc
    ]


CKPTS = fake([(0, 0.2), (10, 0.5), (20, 0.9), (30, 0.7), (40, 0.6), (50, 0.8)])


def test_every_k_best_and_final():
    chosen = select(CKPTS, ExtractConfig(every=2, log_spaced=0, best=True, final=True))
    assert chosen == {0: ["every-2"], 20: ["every-2", "best-val"], 40: ["every-2"], 50: ["final"]}


def test_best_ties_go_to_the_earliest():
    ckpts = fake([(0, 0.5), (10, 0.9), (20, 0.9)])
    assert select(ckpts, ExtractConfig(every=0, best=True, final=False)) == {10: ["best-val"]}


def test_log_spaced_steps():
    steps = list(range(0, 1001, 10))
    assert log_spaced(steps, 4) == [10, 50, 220, 1000]
    assert log_spaced([0], 3) == []


def test_extract_publishes_verified_params_only(tiny_dataset, tmp_path):
    run = make_run()
    train(run, DATASET_PARAMS, tiny_dataset, tmp_path / "run", device=torch.device("cpu"))
    rule = ExtractConfig(every=2, best=True, final=True)
    manifest = extract(run, rule, tmp_path / "run", tmp_path / "out", params_hash=run.trajectory_hash(DATASET_PARAMS))
    steps = [entry["step"] for entry in manifest["checkpoints"]]
    assert 0 in steps and 8 in steps and 12 in steps
    published = list_checkpoints(tmp_path / "out")
    assert [c.step for c in published] == steps
    assert set(load_groups(published[0])) == {"params"}, "optimizer state is stripped"
    source = {c.step: c for c in list_checkpoints(tmp_path / "run" / "ckpt")}
    for ckpt in published:
        assert torch.equal(
            load_groups(ckpt)["params"]["4.weight"], load_groups(source[ckpt.step])["params"]["4.weight"]
        )


def test_extract_refuses_unfinished_training(tiny_dataset, tmp_path):
    train(make_run(iterations=8), DATASET_PARAMS, tiny_dataset, tmp_path / "run", device=torch.device("cpu"))
    with pytest.raises(CheckpointError, match="has not finished training: its last checkpoint is at step 8"):
        extract(make_run(), ExtractConfig(), tmp_path / "run", tmp_path / "out", params_hash="unused")
    assert not (tmp_path / "out").exists(), "nothing half-written"
