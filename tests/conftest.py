"""Shared fixtures.

The real Omniglot archives come from a local mirror folder (no internet in CI): the folder named
by ``METALAND_DATA_MIRROR``, else ``../shared/datasets/omniglot`` beside the repository. A test
that needs it fails (it is not skipped) when neither exists, so a broken CI set-up cannot pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def find_omniglot_mirror() -> Path | None:
    candidates = [os.environ.get("METALAND_DATA_MIRROR"), REPO.parent / "shared" / "datasets" / "omniglot"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "images_background_small1.zip").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def omniglot_mirror() -> Path:
    mirror = find_omniglot_mirror()
    if mirror is None:
        pytest.fail(
            "No Omniglot mirror: set METALAND_DATA_MIRROR to a folder holding "
            "images_background_small1.zip and images_background_small2.zip."
        )
    return mirror


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Make `--dist loadgroup` keep each xdist_group on one worker again.

    pytest-xdist 3.8 marks a test's group by appending ``@<group>`` to ``item._nodeid``, which
    pytest 9.2 no longer reads (node ids live in ``item._id``): every test became its own group,
    and tests sharing the ci build ran on both workers, each building it. This applies the same
    suffix where pytest reads it; it does nothing where xdist's own suffix took effect, or
    without `--dist loadgroup` (set on each worker by xdist)."""
    if not config.getoption("loadgroup", default=False):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        groups = sorted(
            {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
        )
        suffix = "@" + "_".join(groups)
        if groups and not item.nodeid.endswith(suffix):
            item._id = NodeId.parse(item.nodeid + suffix)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


def synthetic_split(n_classes: int, per_class: int, size: int, seed: int, prefix: str):
    """A split of class-dependent blob images (learnable, tiny) in the normalised layout."""
    from metaland.data.layout import SplitData

    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n_classes, 1, size, size, generator=g)
    noise = torch.rand(n_classes, per_class, 1, size, size, generator=g) * 0.5
    images = ((centres.unsqueeze(1) * 0.7 + noise).clamp(0, 1) * 255).to(torch.uint8).reshape(-1, 1, size, size)
    offsets = torch.arange(n_classes + 1, dtype=torch.int64) * per_class
    return SplitData(images, offsets, tuple(f"{prefix}{c:03d}" for c in range(n_classes)))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """data/<name>/ of a synthetic 8×8 dataset: 12 / 8 / 8 classes × 20 images."""
    from metaland.data.layout import write_layout

    out = tmp_path_factory.mktemp("data") / "tiny"
    splits = {
        "train": synthetic_split(12, 20, 8, 1, "train-"),
        "val": synthetic_split(8, 20, 8, 2, "val-"),
        "test": synthetic_split(8, 20, 8, 3, "test-"),
    }
    write_layout(out, splits, {"dataset": "tiny"})
    return out


@pytest.fixture(scope="session")
def ci_pipeline(tmp_path_factory, omniglot_mirror) -> tuple[Path, dict, str]:
    """The whole DAG on the ci profile, built once per worker by `dvc repro` in a fresh checkout:
    (checkout, environment, log of the build). Tests that use it belong to xdist group "dag", so
    they share one build; each leaves the checkout as it found it (built and up to date).

    Its stages run with the ci profile's job threads, and unless another worker is building it now, the build
    is also kept as the session's reference ci build (tests/pipeline.py::ci_reference), which the cluster
    tests' builds must equal."""
    from tests.pipeline import BUILD_TIMEOUT_S, ci_checkout, keep_reference, reference_lock, sh, shared_folder

    shared = shared_folder(tmp_path_factory)
    with reference_lock(shared, wait=False) as keeps:
        work, env = ci_checkout(tmp_path_factory.mktemp("dag") / "repo", omniglot_mirror, job_threads=True)
        log = sh(["dvc", "repro"], work, env, timeout=BUILD_TIMEOUT_S)
        if keeps:
            keep_reference(work, shared)
    return work, env, log


@pytest.fixture(scope="session")
def trained_conv4(tiny_dataset, tmp_path_factory):
    """A real checkpoint: a tiny Conv4 (4 blocks of 4 filters, BatchNorm) meta-trained by second-order
    MAML for 12 iterations on the synthetic dataset, read back from its final checkpoint (float32),
    with 4 fixed tasks of the test split. Returns (forward, θ, tasks, inner steps, inner lr)."""
    import dataclasses

    from metaland.checkpoints import load_params
    from metaland.data.layout import load_split
    from metaland.data.tasks import materialise, sample_dataset_tasks
    from metaland.meta.train import train
    from metaland.models import build_for_run, make_forward
    from metaland.models.convnet import ConvNetParams
    from tests.helpers import DATASET_PARAMS, make_run

    run = dataclasses.replace(make_run(inner_lr=0.4), model=ConvNetParams(blocks=4, filters=4))
    result = train(run, DATASET_PARAMS, tiny_dataset, tmp_path_factory.mktemp("conv4"), device=torch.device("cpu"))
    split = load_split(tiny_dataset, "test")
    module = build_for_run(run, split.images)
    params = load_params(result.checkpoints[-1], dict(module.named_parameters()))
    tasks = sample_dataset_tasks(
        run.dataset, split, ways=run.ways, shots=2, queries=2, n_tasks=4, generator=torch.Generator().manual_seed(0)
    )
    return make_forward(module), params, materialise(split, tasks), run.train.inner_steps, run.train.inner_lr
