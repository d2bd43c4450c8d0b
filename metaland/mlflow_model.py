"""The code MLflow runs to load a logged checkpoint (models-from-code; ``metaland.serving``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow.pyfunc
from mlflow.models import set_model

from metaland.checkpoints import Checkpoint
from metaland.io import read_json
from metaland.serving import OUTPUT, MetaTestModel, load_meta_test_model, task_tensors


def _unshown(*args, **kwargs) -> None:
    """Where the class's warning goes: MLflow advises type hints on ``predict`` to infer a signature,
    but a dict of named tensors has no type-hint form there (and ``TypeFromExample`` takes no dict);
    the signature is given explicitly (``metaland.serving.signature``). MLflow forces that advice
    through its own warning filter, so only the display can be turned off, and only here."""


with warnings.catch_warnings():
    warnings.showwarning = _unshown

    class CheckpointModel(mlflow.pyfunc.PythonModel):
        """predict(task) -> {"query_logits": [Q, ways]}: the query logits after meta-test adaptation."""

        model: MetaTestModel

        def load_context(self, context) -> None:
            weights, sidecar = Path(context.artifacts["checkpoint"]), Path(context.artifacts["sidecar"])
            checkpoint = Checkpoint(weights, read_json(sidecar))
            self.model = load_meta_test_model(read_json(Path(context.artifacts["spec"])), checkpoint)

        def predict(self, context, model_input, params=None):
            logits = self.model.query_logits(*task_tensors(self.model, model_input))
            return {OUTPUT: logits.numpy()}


set_model(CheckpointModel())
