"""A checkpoint packaged as an MLflow model, without PyTorch: the files, the signature, an input example and
the pinned requirements.

The tracking sidecar writes these (``metaland.tracking_sidecar.log_model``) while its stage goes on; importing
PyTorch there would cost the stage's close 1-2 s of one core for nothing, so nothing here imports it. What
loads and runs the model is ``metaland.serving`` (through :data:`MODEL_CODE`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

SPEC_FILE = "model.json"
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
"""The models-from-code file MLflow stores with each logged checkpoint and runs on load."""
INPUTS = ("support_images", "support_labels", "query_images")
OUTPUT = "query_logits"
EXAMPLE_SEED = 0
"""Seed of the input example's pixels: a format example, not a real task."""


def input_example(spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """A task in the model's input format (seeded noise, one support image per class)."""
    rng = np.random.default_rng(EXAMPLE_SEED)
    ways, shape = spec["run"]["ways"], spec["input_shape"]
    return {
        "support_images": rng.standard_normal((ways, *shape), dtype=np.float32),
        "support_labels": np.arange(ways, dtype=np.int64),
        "query_images": rng.standard_normal((ways, *shape), dtype=np.float32),
    }


def signature(spec: dict[str, Any]):
    """The MLflow signature: the three named input tensors, the query logits out."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    shape = (-1, *spec["input_shape"])
    inputs = Schema(
        [
            TensorSpec(np.dtype(np.float32), shape, "support_images"),
            TensorSpec(np.dtype(np.int64), (-1,), "support_labels"),
            TensorSpec(np.dtype(np.float32), shape, "query_images"),
        ]
    )
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, spec["run"]["ways"]), OUTPUT)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def save_pyfunc(folder: Path, spec: dict[str, Any], weights: Path, metadata: dict[str, str]) -> None:
    """Write the MLflow model (MLmodel, the code file, the checkpoint ``weights`` with its sidecar, and
    ``model.json``) to ``folder``."""
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory() as scratch:
        spec_file = Path(scratch) / SPEC_FILE
        spec_file.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
        mlflow.pyfunc.save_model(
            str(folder),
            python_model=str(MODEL_CODE),
            artifacts={
                "checkpoint": str(weights),
                "sidecar": str(weights.with_suffix(".json")),
                "spec": str(spec_file),
            },
            signature=signature(spec),
            input_example=input_example(spec),
            pip_requirements=requirements(),
            metadata=metadata,
        )


RUNTIME_PACKAGES = ("torch", "numpy", "safetensors", "pydantic", "pyyaml", "mlflow")
"""What ``metaland`` needs to load and run a model, pinned in its requirements at the versions here."""


def requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in RUNTIME_PACKAGES]
