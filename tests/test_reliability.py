"""Fault injection: a stage killed with SIGKILL loses no finished work and, rerun, ends in the same
bytes as a run that was never interrupted; a kill while a checkpoint is written never leaves a
torn file behind (issue: reliability)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from metaland.checkpoints import latest_valid, list_checkpoints, load_groups, verify
from metaland.config import load_params
from metaland.data import DATASETS, fetch_dataset
from metaland.io import file_digest, remove_stale_temporaries

REPO = Path(__file__).resolve().parents[1]
RUN = "guiroy2019-maml-omniglot-small-5w1s-s0"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, omniglot_mirror) -> tuple[Path, dict]:
    """A working folder with one ci-sized run of 300 iterations (a checkpoint every 10) and its data."""
    work = tmp_path_factory.mktemp("reliability")
    raw = yaml.safe_load((REPO / "profiles" / "ci.yaml").read_text())
    raw["runs"] = {RUN: raw["runs"][RUN]}
    raw["studies"]["guiroy2019"]["defaults"]["train"].update(iterations=300, checkpoint_every=10, log_every=5)
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_params(work / "params.yaml")
    fetch_dataset(
        DATASETS.get("omniglot-small"), config.datasets["omniglot-small"], work / "data", mirror=omniglot_mirror
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(REPO), DVC_NO_ANALYTICS="1")
    return work, env


def metaland(work: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "metaland", *args, "--params", "params.yaml"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]


def kill_when(process: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` is true; fail if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the stage ended before it could be killed: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the kill point"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def tree_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_killed_training_resumes_to_the_same_bytes(workspace):
    work, env = workspace
    straight = metaland(work, env, "train", RUN, "--runs-dir", "runs-straight", "--resume-dir", "resume-straight")
    finish(straight)

    ckpt = work / ".metaland" / "train" / RUN / "ckpt"  # the resume area: runs/<run> appears only complete
    training = metaland(work, env, "train", RUN, "--runs-dir", "runs")
    kill_when(training, lambda: (ckpt / "step-00000010.json").is_file())  # the second checkpoint
    assert not (ckpt / "step-00000300.json").exists(), "the kill came after the end of training"
    assert not (work / "runs" / RUN).exists(), "nothing published before training ends"
    finish(metaland(work, env, "train", RUN, "--runs-dir", "runs"))

    assert tree_digests(work / "runs" / RUN) == tree_digests(work / "runs-straight" / RUN)
    assert [c.step for c in list_checkpoints(work / "runs" / RUN / "ckpt")] == list(range(0, 301, 10))


def test_killed_probe_sweep_reuses_finished_checkpoints(workspace):
    work, env = workspace
    if not (work / "runs" / RUN / "ckpt" / "step-00000300.json").is_file():
        finish(metaland(work, env, "train", RUN, "--runs-dir", "runs"))
    finish(metaland(work, env, "extract", RUN, "--runs-dir", "runs"))
    finish(metaland(work, env, "probe", RUN, "--probes-dir", "probes-straight", "--cache-dir", "cache-straight"))

    cache = work / "cache" / RUN
    sweep = metaland(work, env, "probe", RUN, "--cache-dir", "cache")
    kill_when(sweep, lambda: cache.is_dir() and len(list(cache.glob("*.json"))) >= 3)
    assert not (work / "probes" / RUN).exists(), "the kill came after the tables were written"
    finished = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.json")}
    finish(metaland(work, env, "probe", RUN, "--cache-dir", "cache"))

    assert all(cache.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in finished.items())
    assert len(list(cache.glob("*.json"))) == len(list((work / "cache-straight" / RUN).glob("*.json"))) == 31
    assert tree_digests(work / "probes" / RUN) == tree_digests(work / "probes-straight" / RUN)


WRITER = """
import sys, torch
from metaland.checkpoints import save_checkpoint
directory = sys.argv[1]
generator = torch.Generator().manual_seed(0)
for step in range(10_000):
    params = {"w": torch.randn(512, 512, generator=generator), "b": torch.randn(512, generator=generator)}
    save_checkpoint(directory, step, {"params": params}, params_hash="h", metrics={}, extra={})
"""


def test_kills_while_checkpoints_are_written_never_leave_a_torn_file(tmp_path):
    """20 kills at random moments of a loop that writes 1 MB checkpoints: every file under a
    checkpoint's name is whole (tensor files load, sidecars verify), the newest valid checkpoint is
    found, and what a kill leaves is only a dot-named temporary file, which the next run removes."""
    directory = tmp_path / "ckpt"
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(20):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)], env=env)
        deadline = time.monotonic() + 60
        while not (directory.is_dir() and any(directory.glob("*.json"))):
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        checkpoints = list_checkpoints(directory)
        assert checkpoints, "at least the first checkpoint was complete"
        for checkpoint in checkpoints:
            verify(checkpoint)
            assert load_groups(checkpoint)["params"]["w"].shape == (512, 512)
        for tensors in directory.glob("step-*.safetensors"):  # with or without its sidecar
            assert load_file(tensors)["params/w"].shape == (512, 512)
        assert latest_valid(directory, {"params_hash": "h"}).step == checkpoints[-1].step
        remove_stale_temporaries(directory)
        leftovers = [p.name for p in directory.iterdir() if not p.name.startswith("step-")]
        assert not leftovers, leftovers
        shutil.rmtree(directory)
