"""Helpers shared by tests: a small run on the synthetic dataset of ``conftest.tiny_dataset``."""

from __future__ import annotations

from metaland.config import Run, TrainConfig
from metaland.meta import ALGORITHMS
from metaland.models.convnet import ConvNetParams
from metaland.schema import NoOptions

DATASET_PARAMS = NoOptions()


def make_run(algorithm: str = "maml", options: dict | None = None, **train) -> Run:
    settings = {
        "inner_steps": 2,
        "inner_lr": 0.1,
        "meta_batch": 2,
        "iterations": 12,
        "checkpoint_every": 4,
        "log_every": 2,
        "val_tasks": 3,
        **train,
    }
    return Run(
        key=f"guiroy2019-{algorithm}-tiny",
        study="guiroy2019",
        algorithm=algorithm,
        algorithm_options=ALGORITHMS.get(algorithm).options_model(**(options or {})),
        dataset="tiny",
        ways=3,
        shots=1,
        queries=2,
        seed=0,
        model_name="convnet",
        model=ConvNetParams(blocks=1, filters=4),
        train=TrainConfig(**settings),
    )
