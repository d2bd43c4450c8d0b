"""Logged checkpoints are MLflow models: loaded with `mlflow.pyfunc.load_model` (no pickle), they
meta-test a task as the probes did.

The oracle is the probe stage of the same ci build: for each probed task of the final checkpoint,
the loaded model's query predictions must give the query accuracy that probes/<run>/tasks.csv
recorded. Runs cover the three kinds of meta-test adaptation: the plain inner loop (MAML), a learned
inner update (Meta-Curvature, seed 003 §4) and fine-tuning a new head on frozen features (seed 001's
transfer baseline), plus the finetune baseline, whose pre-training head is replaced at meta-test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metaland.errors import ConfigError

pytestmark = [pytest.mark.dag, pytest.mark.xdist_group("dag")]

RUNS = (
    "guiroy2019-maml-omniglot-small-5w1s-s0",
    "guiroy2019-finetune-omniglot-small-5w1s-s0",
    "metaopt-metacurvature-cnn2-omniglot-small-5w1s-s0",
    "ding2023-transfer-conv4-noaug-omniglot-small-5w1s-s5",
)


@pytest.fixture(scope="module")
def tracking(ci_pipeline):
    """The ci build's store, as a user browsing it would open it."""
    import mlflow

    work, _, _ = ci_pipeline
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    yield work, mlflow.MlflowClient()
    mlflow.set_tracking_uri(previous)


def final_model(client, run_key: str):
    """The logged model of the run's last probed checkpoint."""
    models = client.search_logged_models(
        experiment_ids=[e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`metaland.run_key` = '{run_key}'",
    )
    assert models, f"no logged model for {run_key}"
    return max(models, key=lambda m: int(m.params["step"]))


@pytest.mark.parametrize("run_key", RUNS)
def test_a_logged_checkpoint_loads_and_meta_tests_as_the_probe_measured(tracking, run_key):
    import mlflow.pyfunc

    from metaland.config import load_params
    from metaland.data.layout import load_split
    from metaland.data.tasks import load_task_set, materialise
    from metaland.model_package import INPUTS, OUTPUT

    work, client = tracking
    config = load_params(work / "params.yaml")
    run = config.runs[run_key]
    model = final_model(client, run_key)
    loaded = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    assert [spec.name for spec in loaded.metadata.get_input_schema().inputs] == list(INPUTS)
    assert loaded.metadata.get_output_schema().input_names() == [OUTPUT]
    assert loaded.metadata.metadata["run"] == run_key

    step = int(model.params["step"])
    split = load_split(work / "data" / run.dataset, config.studies[run.study].probe.split)
    batch = materialise(split, load_task_set(work / "probes" / run_key / "tasks.json"))
    accuracies = []
    for support_x, support_y, query_x, query_y in zip(*batch.tensors(), strict=True):
        task = {
            "support_images": support_x.numpy(),
            "support_labels": support_y.numpy(),
            "query_images": query_x.numpy(),
        }
        logits = loaded.predict(task)[OUTPUT]
        assert logits.shape == (len(query_y), run.ways) and logits.dtype == np.float32
        accuracies.append(float((logits.argmax(1) == query_y.numpy()).mean()))

    probed = pd.read_csv(work / "probes" / run_key / "tasks.csv")
    recorded = probed[probed.step == step].sort_values("task").query_accuracy.to_numpy()
    assert len(recorded) == len(accuracies)
    # The probe adapts tasks vectorised, the model one at a time: float32 rounding may flip the
    # prediction of a query image whose two top logits tie to ~1e-6, never more than a few.
    flipped = np.abs(np.array(accuracies) - recorded) * run.ways * run.queries
    assert flipped.sum() <= 0.01 * len(recorded) * run.ways * run.queries, (accuracies, recorded.tolist())


def test_the_input_example_is_a_task_the_model_predicts(tracking):
    import mlflow.pyfunc
    from mlflow.models import Model

    from metaland.model_package import OUTPUT

    _, client = tracking
    uri = f"models:/{final_model(client, RUNS[0]).model_id}"
    example = Model.load(uri).load_input_example(mlflow.artifacts.download_artifacts(uri))
    logits = mlflow.pyfunc.load_model(uri).predict(example)[OUTPUT]
    assert logits.shape == (len(example["query_images"]), len(np.unique(example["support_labels"])))
    assert np.isfinite(logits).all()


def test_a_wrong_task_is_refused_with_its_fix(tracking):
    import mlflow.pyfunc

    from metaland.serving import task_tensors

    _, client = tracking
    model = mlflow.pyfunc.load_model(f"models:/{final_model(client, RUNS[0]).model_id}").unwrap_python_model().model
    good = {
        "support_images": np.zeros((5, *model.input_shape), np.float32),
        "support_labels": np.arange(5),
        "query_images": np.zeros((3, *model.input_shape), np.float32),
    }
    with pytest.raises(ConfigError, match=r"the task lacks query_images\. Fix: pass a dict with support_images"):
        task_tensors(model, {k: v for k, v in good.items() if k != "query_images"})
    with pytest.raises(ConfigError, match=r"query_images has shape \(3, 3, 28, 28\), but this model takes images"):
        task_tensors(model, {**good, "query_images": np.zeros((3, 3, 28, 28), np.float32)})
    with pytest.raises(ConfigError, match=r"support_labels must be one label in 0 … 4 per support image \(5\)"):
        task_tensors(model, {**good, "support_labels": np.array([0, 1, 2, 3, 5])})


def test_packaging_a_checkpoint_imports_no_pytorch(tmp_path):
    """The tracking sidecar writes each model while its stage goes on and the stage waits for it at its close:
    the package (MLmodel, requirements, signature, input example, artifacts) is written without PyTorch."""
    import subprocess
    import sys

    script = """
import json, sys
from pathlib import Path
from metaland.model_package import SPEC_FILE, save_pyfunc
folder = Path(sys.argv[1])
weights = folder / "step-00000010.safetensors"
weights.write_bytes(b"weights")
weights.with_suffix(".json").write_text(json.dumps({"step": 10, "metrics": {}}))
spec = {"run": {"key": "r", "ways": 5}, "input_shape": [1, 28, 28], "classes": 5, "step": 10}
save_pyfunc(folder / "model", spec, weights, {"run": "r"})
files = sorted(p.name for p in (folder / "model").rglob("*") if p.is_file())
assert "MLmodel" in files and SPEC_FILE in files and weights.name in files, files
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
