"""Meta-training: checkpoint schedule, exact resume, stale-checkpoint pruning, divergence errors."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metaland.checkpoints import list_checkpoints, load_groups
from metaland.data.layout import load_split
from metaland.errors import DivergenceError
from metaland.io import file_digest
from metaland.meta import ALGORITHMS, MetaProblem, episodic_batch
from metaland.meta.inner import cross_entropy
from metaland.meta.train import train
from metaland.models import build_for_run, make_forward
from tests.helpers import DATASET_PARAMS, make_run

CPU = torch.device("cpu")


def digests(out: Path) -> dict[str, str]:
    return {p.name: file_digest(p) for p in sorted((out / "ckpt").iterdir())} | {
        "train_log.csv": file_digest(out / "train_log.csv")
    }


def test_checkpoint_schedule_and_sidecars(tiny_dataset, tmp_path):
    result = train(make_run(), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    assert [c.step for c in result.checkpoints] == [0, 4, 8, 12]
    sidecar = result.checkpoints[-1].sidecar
    assert sidecar["sha256"] == file_digest(result.checkpoints[-1].path)
    assert set(sidecar["metrics"]) >= {"val/query_accuracy", "val/support_loss", "val/pre_query_accuracy"}
    groups = load_groups(result.checkpoints[-1])
    assert set(groups) == {"params", "adam_m", "adam_v"} and sidecar["adam_step"] == 12
    with open(tmp_path / "train_log.csv") as stream:
        assert [int(r["step"]) for r in csv.DictReader(stream)] == [2, 4, 6, 8, 10, 12]


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "regmaml", "finetune", "sharpmaml", "kfc"])
def test_resumed_training_is_bit_identical_to_uninterrupted(tiny_dataset, tmp_path, algorithm):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(make_run(algorithm), DATASET_PARAMS, tiny_dataset, straight, device=CPU)
    train(make_run(algorithm, iterations=8), DATASET_PARAMS, tiny_dataset, resumed, device=CPU)
    result = train(make_run(algorithm), DATASET_PARAMS, tiny_dataset, resumed, device=CPU)
    assert result.resumed_from == 8
    assert digests(straight) == digests(resumed)


def test_finetune_pretrains_on_all_train_classes_and_validates_with_an_m_way_head(tiny_dataset, tmp_path):
    result = train(make_run("finetune", {"batch_size": 16}), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    params = load_groups(result.checkpoints[-1])["params"]
    assert params["4.weight"].shape[0] == 12  # one logit per class of the 12-class train split
    metrics = result.checkpoints[-1].sidecar["metrics"]
    assert 0 <= metrics["val/query_accuracy"] <= 1 and metrics["val/pre_query_accuracy"] <= 1
    with open(tmp_path / "train_log.csv") as stream:
        assert next(csv.reader(stream)) == ["step", "batch_loss", "batch_accuracy"]


def test_regularised_maml_logs_the_correction_size(tiny_dataset, tmp_path):
    train(make_run("regmaml", {"gamma": 0.5}), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    with open(tmp_path / "train_log.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert all(float(r["correction_ratio"]) > 0 for r in rows)


def test_sgd_meta_optimizer_takes_the_plain_step_of_the_meta_gradient(tiny_dataset, tmp_path):
    """Seed 002 step 9 as written: θ ← θ − β ∇, with the same meta-gradient Adam would get."""
    run = make_run("sharpmaml", iterations=1, checkpoint_every=1, meta_optimizer="sgd", meta_lr=0.05)
    result = train(run, DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    start, end = (load_groups(c)["params"] for c in result.checkpoints)

    split = load_split(tiny_dataset, "train")
    forward = make_forward(build_for_run(run, split.images, CPU))
    problem = MetaProblem(forward, cross_entropy(forward), 2, 0.1, 0)
    grads, _ = ALGORITHMS.get("sharpmaml").meta_gradient(
        problem, start, episodic_batch(run, split, 0, run.algorithm_options), run.algorithm_options
    )
    for name in start:
        torch.testing.assert_close(end[name], start[name] - 0.05 * grads[name], rtol=1e-6, atol=1e-7)


def test_sharp_maml_logs_its_cost_and_the_perturbed_loss(tiny_dataset, tmp_path):
    train(make_run("sharpmaml"), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    with open(tmp_path / "train_log.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert {r["gradient_evaluations"] for r in rows} == {"9.0"}  # T = 2: 4T + 1
    assert all(float(r["perturbed_query_loss"]) > 0 for r in rows)


def test_corrupt_newest_checkpoint_resumes_from_the_previous_one(tiny_dataset, tmp_path):
    train(make_run(), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    before = digests(tmp_path)
    newest = list_checkpoints(tmp_path / "ckpt")[-1].path
    newest.write_bytes(newest.read_bytes()[:-7] + b"garbage")
    result = train(make_run(), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    assert result.resumed_from == 8
    assert digests(tmp_path) == before


def test_finished_run_is_not_retrained(tiny_dataset, tmp_path):
    train(make_run(), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    before = digests(tmp_path)
    assert train(make_run(), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU).resumed_from == 12
    assert digests(tmp_path) == before


def test_checkpoints_of_other_params_are_removed(tiny_dataset, tmp_path):
    train(make_run(), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    old = {c.sidecar["params_hash"] for c in list_checkpoints(tmp_path / "ckpt")}
    result = train(make_run(inner_lr=0.2), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    assert result.resumed_from is None
    new = {c.sidecar["params_hash"] for c in list_checkpoints(tmp_path / "ckpt")}
    assert len(new) == 1 and new.isdisjoint(old)


def test_divergence_stops_with_a_clear_error_and_keeps_checkpoints(tiny_dataset, tmp_path, monkeypatch):
    """A non-finite meta-gradient at iteration 6 stops training; checkpoints 0 and 4 survive."""
    real = ALGORITHMS.get("maml")
    calls = []

    def poisoned(problem, params, batch, options):
        grads, metrics = real.meta_gradient(problem, params, batch, options)
        calls.append(1)
        if len(calls) == 6:
            grads = {k: torch.full_like(g, float("nan")) for k, g in grads.items()}
        return grads, metrics

    monkeypatch.setitem(ALGORITHMS._entries, "maml", dataclasses.replace(real, meta_gradient=poisoned))
    with pytest.raises(DivergenceError) as info:
        train(make_run(), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    message = str(info.value)
    assert "diverged at meta-iteration 6" in message and "Fix: lower" in message
    assert [c.step for c in list_checkpoints(tmp_path / "ckpt")] == [0, 4]


def test_different_seeds_give_different_runs(tiny_dataset, tmp_path):
    a = train(make_run(iterations=4), DATASET_PARAMS, tiny_dataset, tmp_path / "a", device=CPU)
    b = train(
        dataclasses.replace(make_run(iterations=4), seed=1), DATASET_PARAMS, tiny_dataset, tmp_path / "b", device=CPU
    )
    assert a.checkpoints[-1].sidecar["sha256"] != b.checkpoints[-1].sidecar["sha256"]


def test_temporary_files_of_a_killed_run_are_removed_on_restart(tiny_dataset, tmp_path):
    train(make_run(iterations=8), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    leftovers = [
        tmp_path / "ckpt" / ".step-00000012.safetensors.k3j4.tmp",  # metaland.io.atomic_path
        tmp_path / "ckpt" / ".tmpQ0gVD3",  # safetensors' own temporary file
        tmp_path / ".train_log.csv.x9z.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half")
    result = train(make_run(), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    assert result.resumed_from == 8 and not any(path.exists() for path in leftovers)


def test_learned_update_is_meta_learned_and_checkpointed(tiny_dataset, tmp_path):
    """KLin's factors (seed 003 eq. 5) start at the identity, are saved with θ and moved by the meta-update."""
    result = train(make_run("klin"), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    first, last = (load_groups(c)["params"] for c in (result.checkpoints[0], result.checkpoints[-1]))
    factors = [k for k in first if k.startswith("metaopt.")]
    assert sorted(factors) == sorted(
        f"metaopt.{n}.{f}" for n in first if not n.startswith("metaopt.") for f in ("L1", "R1")
    )
    assert all(torch.equal(first[k], torch.eye(len(first[k]))) for k in factors)
    assert any(not torch.equal(first[k], last[k]) for k in factors)


def test_the_training_code_a_checkpoint_records_is_the_train_stages_code_dependencies():
    """A checkpoint records the digest of TRAINING_CODE; DVC reruns train when its code deps change.
    They must be the same files, or a resumed training could mix code versions unseen."""
    import yaml

    from metaland.meta.train import TRAINING_CODE

    stage = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]["train"]
    deps = {dep.removeprefix("metaland/") for dep in stage["do"]["deps"] if dep.startswith("metaland/")}
    assert deps == set(TRAINING_CODE)


def test_checkpoints_of_other_code_or_data_are_not_resumed(tiny_dataset, tmp_path, monkeypatch):
    """The run's identity holds the digests of its data and training code: another dataset content
    or a changed training module starts the run over instead of resuming it."""
    import shutil

    import metaland.meta.train as training
    from metaland.data.layout import load_split, write_split

    train(make_run(iterations=8), DATASET_PARAMS, tiny_dataset, tmp_path / "run", device=CPU)
    assert train(make_run(), DATASET_PARAMS, tiny_dataset, tmp_path / "run", device=CPU).resumed_from == 8
    other = tmp_path / "other-data"
    shutil.copytree(tiny_dataset, other)
    train_split = load_split(other, "train")
    write_split(other, "train", dataclasses.replace(train_split, images=255 - train_split.images))
    assert train(make_run(), DATASET_PARAMS, other, tmp_path / "run", device=CPU).resumed_from is None
    monkeypatch.setattr(training, "package_digest", lambda paths: "another version of the code")
    assert train(make_run(), DATASET_PARAMS, other, tmp_path / "run", device=CPU).resumed_from is None


@pytest.mark.parametrize("algorithm,resolved", [("maml", "hybrid"), ("klin", "vmap")])
def test_every_checkpoint_records_the_engine_auto_resolved_to(tiny_dataset, tmp_path, algorithm, resolved):
    """`train.engine: auto` is resolved once, by a fixed rule (CPU + plain inner step -> hybrid; a
    learned update -> vmap), and the resolved engine is written beside every checkpoint."""
    result = train(make_run(algorithm), DATASET_PARAMS, tiny_dataset, tmp_path, device=CPU)
    assert {c.sidecar["engine"] for c in result.checkpoints} == {resolved}


def test_training_under_each_engine_reaches_the_same_validation_numbers(tiny_dataset, tmp_path):
    """The engines lay out the same meta-gradient (tests/test_engines.py): 12 meta-iterations under
    vmap, loop and hybrid validate alike, up to float32 rounding carried through Adam."""
    metrics = {}
    for engine in ("vmap", "loop", "hybrid"):
        result = train(make_run(engine=engine), DATASET_PARAMS, tiny_dataset, tmp_path / engine, device=CPU)
        assert result.checkpoints[-1].sidecar["engine"] == engine
        metrics[engine] = result.checkpoints[-1].sidecar["metrics"]
    for engine in ("loop", "hybrid"):
        for name in ("val/query_loss", "val/support_loss", "val/pre_query_loss"):
            assert metrics[engine][name] == pytest.approx(metrics["vmap"][name], abs=1e-4), (engine, name)


def test_a_hybrid_training_process_never_imports_dynamo(tiny_dataset, tmp_path):
    """`torch.func.grad`'s first call imports torch._dynamo and TorchInductor (3 s of a stage's start-up,
    docs/performance.md), as `torch.use_deterministic_algorithms` does; the hybrid engine's plain autograd,
    grouped validation and checkpoints need none of it, nor does the stage's deterministic set-up, so a
    training stage on a CPU does not pay it."""
    code = (
        "import sys, pathlib, torch\n"
        "from metaland.meta.train import train\n"
        "from metaland.runtime import make_deterministic\n"
        "from tests.helpers import DATASET_PARAMS, make_run\n"
        "make_deterministic()\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "assert torch.is_deterministic_algorithms_warn_only_enabled()\n"
        "train(make_run(engine=sys.argv[3], iterations=4), DATASET_PARAMS, pathlib.Path(sys.argv[1]),\n"
        "      pathlib.Path(sys.argv[2]), device=torch.device('cpu'))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    imported = {
        engine: subprocess.run(
            [sys.executable, "-c", code, str(tiny_dataset), str(tmp_path / engine), engine],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        ).stdout.split()[-1]
        for engine in ("hybrid", "vmap")
    }
    assert imported == {"hybrid": "False", "vmap": "True"}  # vmap shows the check can see the import
