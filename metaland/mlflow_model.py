"""The code MLflow runs to load a logged checkpoint (models-from-code; ``metaland.serving``).

MLflow also runs this file when it saves a model (``mlflow.pyfunc.save_model`` loads the code to check it): the
tracking sidecar does that at every extract stage's close, so PyTorch and the model code are imported only when a
model is loaded (``load_context``), not here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow.pyfunc
from mlflow.models import set_model

from metaland.model_package import OUTPUT

if TYPE_CHECKING:
    from metaland.serving import MetaTestModel


def _unshown(*args, **kwargs) -> None:
    """Where the class's warning goes: MLflow advises type hints on ``predict`` to infer a signature,
    but a dict of named tensors has no type-hint form there (and ``TypeFromExample`` takes no dict);
    the signature is given explicitly (``metaland.model_package.signature``). MLflow forces that advice
    through its own warning filter, so only the display can be turned off, and only here."""


with warnings.catch_warnings():
    warnings.showwarning = _unshown

    class CheckpointModel(mlflow.pyfunc.PythonModel):
        """predict(task) -> {"query_logits": [Q, ways]}: the query logits after meta-test adaptation."""

        model: MetaTestModel

        def load_context(self, context) -> None:
            from metaland.checkpoints import Checkpoint
            from metaland.io import read_json
            from metaland.serving import load_meta_test_model

            weights, sidecar = Path(context.artifacts["checkpoint"]), Path(context.artifacts["sidecar"])
            checkpoint = Checkpoint(weights, read_json(sidecar))
            self.model = load_meta_test_model(read_json(Path(context.artifacts["spec"])), checkpoint)

        def predict(self, context, model_input, params=None):
            from metaland.serving import task_tensors

            logits = self.model.query_logits(*task_tensors(self.model, model_input))
            return {OUTPUT: logits.numpy()}


set_model(CheckpointModel())
