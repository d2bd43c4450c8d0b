"""A checkpoint as a model MLflow loads: meta-test on one task, with the run's own adaptation.

Each checkpoint the extract stage publishes is logged as an MLflow *models-from-code* pyfunc
(``metaland.model_package`` writes it, without PyTorch): no pickle anywhere. Its artifacts are the
checkpoint itself (safetensors weights + sidecar, verified on load) and ``model.json``
(:func:`model_spec`: the resolved run, the input shape and the head's width), from which
:func:`load_meta_test_model` rebuilds the functional model exactly as training and the probes build it.

Prediction is meta-testing one task (seed 000 §2.4): θ^s is adapted to the support set with the
run's inner loop — its T steps of α on the parameters it adapts, with its learned update where it
learns one (seed 003 §4) — or with the run's own meta-test procedure (seed 001's transfer baseline
fine-tunes a new head), exactly as validation and the probes do (:func:`metaland.meta.evaluate.
meta_test_adaptation`); the result is the query set's logits at the adapted parameters θ̃.

Input (the signature): ``support_images`` float32 [S, C, H, W], ``support_labels`` int64 [S] with
values in 0 … ways − 1, ``query_images`` float32 [Q, C, H, W]; output: ``query_logits`` float32
[Q, ways]. Pixels are in [0, 1] (the stored uint8 images / 255, ``metaland.data.tasks.model_inputs``).
Loading needs ``metaland`` importable (the commit in the model's ``metaland_commit`` metadata).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from metaland.checkpoints import Checkpoint, load_params
from metaland.config import Run
from metaland.errors import ConfigError
from metaland.meta import ALGORITHMS
from metaland.meta.evaluate import meta_test_adaptation
from metaland.meta.inner import InnerStep, adapted_names
from metaland.model_package import INPUTS
from metaland.models import Forward, ParamDict, build_for_run, head_names, initial_params, make_forward


def model_spec(run: Run, input_shape: tuple[int, ...], checkpoint: Checkpoint) -> dict[str, Any]:
    """What rebuilds the model of ``checkpoint``: the run, one input's shape, the head's width as
    trained (``run.ways``, or one logit per meta-train class for the finetune baseline)."""
    module = build_for_run(run, torch.zeros(1, *input_shape), classes=run.ways)
    head_weight, _ = head_names(module)
    with safe_open(str(checkpoint.path), framework="pt") as tensors:
        classes = tensors.get_slice(f"params/{head_weight}").get_shape()[0]
    return {"run": run.to_dict(), "input_shape": list(input_shape), "classes": classes, "step": checkpoint.step}


@dataclass(frozen=True)
class MetaTestModel:
    """θ^s of one checkpoint as meta-test tasks see it, and how the run adapts it to a task."""

    forward: Forward
    params: ParamDict
    ways: int
    input_shape: tuple[int, ...]
    steps: int
    lr: float
    adapted: frozenset[str] | None
    update: InnerStep | None
    adaptation: Any

    def query_logits(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Logits [Q, ways] of the query images at θ̃, the parameters adapted to the support set."""
        adapted = meta_test_adaptation(
            self.forward,
            self.params,
            support_x[None],
            support_y[None],
            steps=self.steps,
            lr=self.lr,
            chunk=1,
            inner_params=self.adapted,
            update=self.update,
            adaptation=self.adaptation,
        )
        with torch.no_grad():
            return self.forward({name: value[0] for name, value in adapted.items()}, query_x)


def load_meta_test_model(spec: dict[str, Any], checkpoint: Checkpoint) -> MetaTestModel:
    """The model ``spec`` (:func:`model_spec`) describes, at the verified weights of ``checkpoint``."""
    run = Run.from_dict(spec["run"])
    input_shape = tuple(spec["input_shape"])
    algorithm = ALGORITHMS.get(run.algorithm)
    module = build_for_run(run, torch.zeros(1, *input_shape), classes=spec["classes"])
    head = head_names(module)
    adapted = adapted_names(list(dict(module.named_parameters())), head, run.train.inner_params)
    reference = algorithm.meta_parameters(initial_params(module), adapted, run.algorithm_options)
    trained = load_params(checkpoint, reference)
    return MetaTestModel(
        make_forward(module),
        algorithm.at_meta_test(trained, head, run, spec["step"]),
        run.ways,
        input_shape,
        run.train.inner_steps,
        run.train.inner_lr,
        adapted,
        algorithm.inner_update(run.algorithm_options),
        algorithm.meta_test_adaptation(run.algorithm_options, module, head, run.seed),
    )


def task_tensors(model: MetaTestModel, task: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    """The task's arrays as tensors, checked against the model: a wrong task fails with its fix."""
    missing = [name for name in INPUTS if name not in task]
    if missing:
        raise ConfigError(f"the task lacks {', '.join(missing)}. Fix: pass a dict with {', '.join(INPUTS)}.")
    support_x, query_x = (torch.as_tensor(np.asarray(task[n], dtype=np.float32)) for n in INPUTS[::2])
    support_y = torch.as_tensor(np.asarray(task["support_labels"]), dtype=torch.long)
    for name, images in (("support_images", support_x), ("query_images", query_x)):
        if tuple(images.shape[1:]) != model.input_shape:
            raise ConfigError(
                f"{name} has shape {tuple(images.shape)}, but this model takes images of shape {model.input_shape}. "
                "Fix: pass [N, C, H, W] images as the dataset stage stores them."
            )
    if support_y.shape != support_x.shape[:1] or not ((support_y >= 0) & (support_y < model.ways)).all():
        raise ConfigError(
            f"support_labels must be one label in 0 … {model.ways - 1} per support image ({support_x.shape[0]}); "
            f"got {support_y.tolist()}. Fix: number the task's {model.ways} classes 0 … {model.ways - 1}."
        )
    return support_x, support_y, query_x
