"""Fault injection: a stage killed with SIGKILL loses no finished work and, rerun, ends in the same
bytes as a run that was never interrupted; a kill while a checkpoint is written never leaves a
torn file behind (issue: reliability). Then one test per row of docs/reliability.md's table (issue
28, never silently wrong): each failed on 02fddcf and passes now."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
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


# --------------------------------------------------------------------------------------------
# Never silently wrong (issue 28): one test per row of docs/reliability.md's table
# --------------------------------------------------------------------------------------------


def subworkspace(workspace, name: str, change=None, own_data: bool = False) -> Path:
    """A working folder beside the module's workspace: its params (edited by ``change(raw)``) and
    its data (linked, or an empty folder to fetch into); its own runs, resume area, probe cache and
    tracking store."""
    work, _ = workspace
    sub = work / name
    sub.mkdir()
    raw = yaml.safe_load((work / "params.yaml").read_text())
    if change is not None:
        change(raw)
    (sub / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    if not own_data:
        (sub / "data").symlink_to(work / "data")
    return sub


def guiroy_train(raw: dict) -> dict:
    return raw["studies"]["guiroy2019"]["defaults"]["train"]


def short(raw: dict) -> None:
    guiroy_train(raw).update(iterations=10, checkpoint_every=5, log_every=5)


def training_past_its_first_checkpoints(sub: Path, env: dict) -> subprocess.Popen:
    """`metaland train RUN` in ``sub``, in its own process group (as a terminal or a batch system
    starts it), returned once its step-10 checkpoint exists (in the resume area, or in runs/ where a
    stage trained in place) and its MLflow run is open (the sidecar loads MLflow while training runs,
    so on a loaded machine the checkpoints can come first)."""
    training = subprocess.Popen(
        [sys.executable, "-m", "metaland", "train", RUN, "--params", "params.yaml"],
        cwd=sub,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    places = (sub / ".metaland" / "train" / RUN / "ckpt", sub / "runs" / RUN / "ckpt")
    deadline = time.monotonic() + 300
    while not any((place / "step-00000010.json").is_file() for place in places):
        assert training.poll() is None, f"training ended first: {training.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint in 300 s"
        time.sleep(0.01)
    while not (sub / "mlflow.db").is_file() or not stage_runs(sub, "train"):
        assert training.poll() is None, f"training ended first: {training.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no MLflow run in 300 s"
        time.sleep(0.1)
    return training


def store(sub: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{sub / 'mlflow.db'}")


def stage_runs(sub: Path, stage: str) -> list:
    client = store(sub)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [r for r in client.search_runs(experiments) if r.data.tags.get("metaland.stage") == stage]


def one_paragraph(err: str, status: int, returncode: int, *needles: str) -> None:
    assert returncode == status, f"exit status {returncode}, expected {status}: {err[-3000:]}"
    assert err.startswith("metaland: error: ") and err.count("\n") == 1 and "Traceback" not in err, err[-3000:]
    assert "Fix" in err and all(needle in err for needle in needles), err


def in_process(sub: Path, monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """``metaland ARGV --params params.yaml`` called in this process, in folder ``sub``: (status, stderr)."""
    from tests.test_cli import run_cli

    monkeypatch.chdir(sub)
    code, _, err = run_cli(capsys, *argv, "--params", "params.yaml")
    return code, err


def test_row01_a_changed_split_reprobes_the_step0_checkpoint(workspace, omniglot_mirror, monkeypatch, capsys):
    """Row 1. After split_seed changes, the step-0 checkpoint (the same initialisation) is probed on
    the new split, not read from the probe cache: the rows equal those of an empty cache."""

    def short_and_cheap(raw: dict) -> None:
        short(raw)
        raw["studies"]["guiroy2019"]["probe"]["probes"] = {"adaptation": {}}

    sub = subworkspace(workspace, "row01", short_and_cheap, own_data=True)
    monkeypatch.setenv("METALAND_DATA_MIRROR", str(omniglot_mirror))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for split_seed in (0, 1):
        raw = yaml.safe_load((sub / "params.yaml").read_text())
        raw["datasets"]["omniglot-small"]["split_seed"] = split_seed
        (sub / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        for stage in (("fetch", "omniglot-small"), ("train", RUN), ("extract", RUN), ("probe", RUN)):
            assert in_process(sub, monkeypatch, capsys, *stage) == (0, ""), stage
    fresh = ("--probes-dir", "probes-fresh", "--cache-dir", "cache-fresh")
    assert in_process(sub, monkeypatch, capsys, "probe", RUN, *fresh) == (0, "")
    cached = (sub / "probes" / RUN / "checkpoints.csv").read_text().splitlines()
    recomputed = (sub / "probes-fresh" / RUN / "checkpoints.csv").read_text().splitlines()
    assert cached[1].startswith(f"{RUN},0,") and cached == recomputed


def test_row02_params_edited_while_training_fail_the_stage(workspace):
    """Row 2. params.yaml edited while train runs: the stage stops at its next checkpoint and fails (DVC
    records nothing, and reruns it); its checkpoints, trained at the old learning rate, are not
    published."""
    _, env = workspace
    sub = subworkspace(workspace, "row02")
    training = training_past_its_first_checkpoints(sub, env)
    raw = yaml.safe_load((sub / "params.yaml").read_text())
    guiroy_train(raw)["inner_lr"] = 0.3
    (sub / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _, err = training.communicate(timeout=300)
    one_paragraph(err, 2, training.returncode, f"changed while train@{RUN} ran", "dvc repro")
    assert not (sub / "runs" / RUN).exists()
    assert not (sub / ".metaland" / "train" / RUN / "ckpt" / "step-00000300.json").exists(), "stopped early"


def test_row02_extract_refuses_checkpoints_trained_for_other_params(workspace, monkeypatch, capsys):
    """Row 2. Checkpoints trained at inner_lr 0.1 while params.yaml says 0.3 (a stale dvc.lock made
    DVC skip train): extract names the mismatch instead of passing them on."""
    sub = subworkspace(workspace, "row02b", short)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert in_process(sub, monkeypatch, capsys, "train", RUN)[0] == 0
    raw = yaml.safe_load((sub / "params.yaml").read_text())
    guiroy_train(raw)["inner_lr"] = 0.3
    (sub / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    code, err = in_process(sub, monkeypatch, capsys, "extract", RUN)
    one_paragraph(err, 6, code, "trained for other params", f"dvc repro --force train@{RUN}")
    assert not (sub / "checkpoints" / RUN).exists()


def test_row03_fewer_iterations_cut_the_log_with_the_checkpoints(tiny_dataset, tmp_path):
    """Row 3. Lowering train.iterations (resumable) keeps checkpoints and log rows up to the new end only."""
    from metaland.meta.train import train
    from tests.helpers import DATASET_PARAMS, make_run

    cpu = torch.device("cpu")
    train(make_run(iterations=12), DATASET_PARAMS, tiny_dataset, tmp_path, device=cpu)
    result = train(make_run(iterations=8), DATASET_PARAMS, tiny_dataset, tmp_path, device=cpu)
    assert [c.step for c in result.checkpoints] == [0, 4, 8]
    with open(tmp_path / "train_log.csv") as stream:
        assert [int(row["step"]) for row in csv.DictReader(stream)] == [2, 4, 6, 8]


@pytest.fixture()
def fresh_store(tmp_path, monkeypatch):
    """A working folder with no tracking store and no MLFLOW_TRACKING_URI: the default store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def log_one_artifact(folder: Path, name: str) -> str:
    from metaland.tracking import stage_run

    (folder / f"{name}.txt").write_text(name)
    with stage_run("probe", experiment="s", run_key=name) as run:
        run.log_artifact(folder / f"{name}.txt")
    return run.run_id


def test_row04_a_copied_checkout_logs_artifacts_beside_its_own_store(fresh_store, monkeypatch):
    """Row 4. A checkout copied (and the original deleted): its stages log artifacts beside the copy's
    store, never into (or re-creating) the original; the runs copied with it point into the copy."""
    original, copy = fresh_store / "original", fresh_store / "copy"
    original.mkdir()
    monkeypatch.chdir(original)
    first = log_one_artifact(original, "before")
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    monkeypatch.chdir(copy)
    second = log_one_artifact(copy, "after")
    assert not original.exists(), "the stage re-created the checkout it was copied from"
    client = store(copy)
    for run_id, name in ((first, "before"), (second, "after")):
        location = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
        assert location.is_relative_to(copy / "mlartifacts") and (location / f"{name}.txt").is_file()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_row05_a_terminated_stage_ends_its_run_killed(workspace, signum):
    """Row 5. SIGTERM or SIGHUP to the process group (docker stop, scancel, a closed terminal): exit
    128 + N with one line, and the MLflow run is KILLED, not RUNNING forever."""
    _, env = workspace
    sub = subworkspace(workspace, f"row05-{signum}")
    training = training_past_its_first_checkpoints(sub, env)
    os.killpg(training.pid, signum)
    _, err = training.communicate(timeout=120)
    assert training.returncode == 128 + signum and err.count("\n") == 1, err[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in err
    (run,) = stage_runs(sub, "train")
    assert run.info.status == "KILLED"


def test_row05_a_stage_killed_with_its_sidecar_is_reaped_by_the_next_stage(workspace):
    """Row 5. SIGKILL to the process group leaves no process to close the run; the next stage on this
    machine finds it RUNNING with its process gone, and marks it KILLED."""
    _, env = workspace
    sub = subworkspace(workspace, "row05-kill")
    training = training_past_its_first_checkpoints(sub, env)
    os.killpg(training.pid, signal.SIGKILL)
    training.communicate(timeout=60)
    (killed,) = stage_runs(sub, "train")
    assert killed.info.status == "RUNNING"
    finish(metaland(sub, env, "fetch", "synthetic-binary"))
    assert store(sub).get_run(killed.info.run_id).info.status == "KILLED"


def test_row07_a_relative_sqlite_uri_is_the_file_in_the_working_folder(fresh_store, monkeypatch, capsys):
    """Row 7. MLFLOW_TRACKING_URI=sqlite:///mlflow.db (MLflow's docs' form) works: the store is
    mlflow.db in the working folder, artifacts beside it, and the doctor says the same."""
    from metaland.tracking import describe_store

    monkeypatch.chdir(fresh_store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    run_id = log_one_artifact(fresh_store, "relative")
    assert (fresh_store / "mlflow.db").is_file()
    location = Path(store(fresh_store).get_run(run_id).info.artifact_uri.removeprefix("file://"))
    assert location.is_relative_to(fresh_store / "mlartifacts") and (location / "relative.txt").is_file()
    assert describe_store().startswith(f"sqlite:///{fresh_store / 'mlflow.db'}: answers")


@pytest.mark.parametrize("folder", ["a?q", "b%41", "c #x", "d ünï cödé"])
def test_row08_a_checkout_path_with_uri_characters_keeps_its_store_inside(fresh_store, monkeypatch, folder):
    """Row 8. `?`, `%41`, `#`, spaces or non-ASCII letters in the checkout's path: the store is created
    inside it."""
    checkout = fresh_store / folder
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    run_id = log_one_artifact(checkout, "inside")
    assert sorted(p.name for p in fresh_store.iterdir()) == [folder], "nothing created outside the checkout"
    assert {"mlflow.db", "mlartifacts"} <= {p.name for p in checkout.iterdir()}
    from mlflow import MlflowClient

    from metaland.tracking import tracking_uri

    assert MlflowClient(tracking_uri()).get_run(run_id).info.status == "FINISHED"


LIMITED_FILE_SIZE = (
    "import resource, runpy, signal, sys\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "sys.argv = ['metaland', *sys.argv[1:]]\n"
    "runpy.run_module('metaland', run_name='__main__')\n"
)
"""`python -m metaland` whose files may not grow past 8 MB: writes fail with EFBIG as a full disk's
fail with ENOSPC (the limit and the ignored SIGXFSZ pass on to the tracking sidecar)."""


def test_row11_a_checkpoint_the_disk_cannot_hold_fails_in_one_paragraph(workspace):
    """Row 11. Writing a checkpoint fails for lack of room (here: files limited to 8 MB, a 28 MB
    checkpoint): one paragraph naming the file and the fix, exit status 7, no traceback."""
    _, env = workspace

    def wide(raw: dict) -> None:
        raw["studies"]["guiroy2019"]["defaults"]["model"]["filters"] = 512

    sub = subworkspace(workspace, "row11", wide)
    training = subprocess.Popen(
        [sys.executable, "-c", LIMITED_FILE_SIZE, "train", RUN, "--params", "params.yaml"],
        cwd=sub,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = training.communicate(timeout=300)
    one_paragraph(err, 7, training.returncode, "writing checkpoint", "step-00000000.safetensors", "larger")


def test_row11_an_archive_that_does_not_fit_is_not_blamed(tmp_path, monkeypatch):
    """Row 11. A full disk while unpacking: the error says so, and never advises deleting the archive
    (which may be the user's mirror copy)."""
    import errno
    import zipfile

    from metaland.data import archive
    from metaland.errors import EXIT_SYSTEM, MetalandError

    source = tmp_path / "mirror.zip"
    with zipfile.ZipFile(source, "w") as zf:
        zf.writestr("a/b.txt", "x" * 1000)

    def full(src, dst, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive.shutil, "copyfileobj", full)
    with pytest.raises(MetalandError) as info:
        archive.extract_archive(source, tmp_path / "out")
    assert info.value.exit_code == EXIT_SYSTEM and "no space is left" in str(info.value)
    assert "delete" not in str(info.value).lower() and source.is_file()


def test_row11_a_store_whose_creation_fails_leaves_no_half_database(tmp_path, monkeypatch):
    """Row 11. Creating the tracking database fails midway (a full disk during MLflow's migrations):
    no half-migrated mlflow.db is left, so the next stage creates it whole."""
    import mlflow.store.db.utils as db_utils
    from sqlalchemy.exc import OperationalError

    from metaland.tracking import ensure_store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    real = db_utils._upgrade_db

    def disk_full(engine):
        raise OperationalError("ALTER TABLE", {}, Exception("database or disk is full"))

    monkeypatch.setattr(db_utils, "_upgrade_db", disk_full)
    with pytest.raises(OperationalError):
        ensure_store()
    assert not (tmp_path / "mlflow.db").exists()
    monkeypatch.setattr(db_utils, "_upgrade_db", real)
    ensure_store()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def test_row13_a_killed_fetch_leaves_no_temporary_folder_after_its_rerun(workspace, omniglot_mirror):
    """Row 13. fetch killed while it extracts: its temporary folders are gone after the next fetch."""
    _, env = workspace
    sub = subworkspace(workspace, "row13", own_data=True)
    env = {**env, "METALAND_DATA_MIRROR": str(omniglot_mirror)}
    fetching = metaland(sub, env, "fetch", "omniglot-small")
    kill_when(fetching, lambda: (sub / "data").is_dir() and any((sub / "data").glob(".omniglot-small.*")))
    finish(metaland(sub, env, "fetch", "omniglot-small"))
    assert sorted(p.name for p in (sub / "data").iterdir()) == ["omniglot-small"]


def test_row13_temporaries_of_killed_aggregate_and_plot_are_removed(tmp_path):
    """Row 13. What a SIGKILL leaves beside results/ or figures/ (a temporary folder, the previous
    output moved aside) is removed when the folder is next written; a live writer's is kept."""
    from metaland.io import atomic_dir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in ("results", "figures"):
        stale = [
            tmp_path / f".{name}.q8zk1m2a.tmp",  # a temporary folder of a writer before pids were recorded
            tmp_path / f".{name}.{dead.pid}-q8zk1m2a.tmp",  # of a writer that is gone
            tmp_path / f".{name}.old",  # the previous output, moved aside just before the kill
        ]
        live = tmp_path / f".{name}.{os.getpid()}-livewrit.tmp"
        for folder in [*stale, live]:
            (folder / "sub").mkdir(parents=True)
        with atomic_dir(tmp_path / name) as out:
            (out / "table.csv").write_text("a\n")
        assert not any(p.exists() for p in stale) and live.is_dir()
        shutil.rmtree(live)


def test_row14_an_output_folder_that_is_a_symlink_is_refused_untouched(tmp_path):
    """Row 14. probes/<run> is a link to a folder elsewhere: the stage stops, and the link, the folder
    it points to (contents and mode) and the folder around it are as they were."""
    from metaland.errors import EXIT_SYSTEM, MetalandError
    from metaland.io import atomic_dir

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "checkpoints.csv").write_text("kept\n")
    elsewhere.chmod(0o750)
    probes = tmp_path / "probes"
    probes.mkdir()
    (probes / RUN).symlink_to(elsewhere)
    with pytest.raises(MetalandError) as info, atomic_dir(probes / RUN) as out:
        (out / "checkpoints.csv").write_text("new\n")
    assert info.value.exit_code == EXIT_SYSTEM and "symbolic link" in str(info.value)
    assert os.readlink(probes / RUN) == str(elsewhere) and [p.name for p in probes.iterdir()] == [RUN]
    assert (elsewhere / "checkpoints.csv").read_text() == "kept\n" and (elsewhere.stat().st_mode & 0o777) == 0o750


def test_row15_a_read_only_store_fails_in_one_paragraph(workspace):
    """Row 15. A tracking database SQLite must treat as read-only (its header's write version > 2;
    root ignores file modes): one paragraph with the store's reason and exit status 5."""
    from metaland.tracking import ensure_store

    _, env = workspace
    sub = subworkspace(workspace, "row15")
    with contextlib.chdir(sub):
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        ensure_store()
    with open(sub / "mlflow.db", "r+b") as database:
        database.seek(18)
        database.write(bytes([3]))  # the file format's write version: SQLite opens it read-only
    fetching = metaland(sub, env, "fetch", "synthetic-binary")
    _, err = fetching.communicate(timeout=300)
    one_paragraph(err, 5, fetching.returncode, "attempt to write a readonly database")


def test_row15_an_unwritable_store_stops_the_stage_before_it_works(fresh_store, monkeypatch, capsys):
    """Row 15. A tracking database this user cannot write (checked by its mode, which root ignores)
    stops the stage at its start with exit status 5."""
    from metaland.cli import main

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: not str(path).endswith("mlflow.db"))
    monkeypatch.chdir(fresh_store)
    shutil.copy(REPO / "profiles" / "ci.yaml", fresh_store / "params.yaml")
    (fresh_store / "mlflow.db").write_bytes(b"")
    (fresh_store / "mlflow.db").chmod(0o444)
    with pytest.raises(SystemExit) as exit_:
        main(["fetch", "synthetic-binary"])
    err = capsys.readouterr().err
    assert exit_.value.code == 5 and err.count("\n") == 1 and "cannot be written by this user" in err
    assert not (fresh_store / "data").exists()


def test_row16_a_checkpoint_of_the_wrong_shape_is_refused(tiny_dataset, tmp_path):
    """Row 16. The newest checkpoint has a valid sha256 and sidecar but tensors of another shape and
    dtype: resuming from it stops with a CheckpointError naming it, instead of training on."""
    from metaland.checkpoints import save_checkpoint
    from metaland.errors import CheckpointError
    from metaland.meta.train import train
    from tests.helpers import DATASET_PARAMS, make_run

    cpu = torch.device("cpu")
    train(make_run(iterations=8), DATASET_PARAMS, tiny_dataset, tmp_path, device=cpu)
    newest = list_checkpoints(tmp_path / "ckpt")[-1]
    groups = load_groups(newest)
    bad = {group: {name: torch.zeros(3, dtype=torch.float64) for name in d} for group, d in groups.items()}
    sidecar = dict(newest.sidecar)
    fields = {k: sidecar.pop(k) for k in ("params_hash", "metrics")}
    extra = {k: v for k, v in sidecar.items() if k not in ("format", "file", "step", "sha256")}
    save_checkpoint(tmp_path / "ckpt", newest.step, bad, **fields, extra=extra)
    with pytest.raises(CheckpointError, match=r"step-00000008\.safetensors does not fit the model.*Fix:"):
        train(make_run(iterations=12), DATASET_PARAMS, tiny_dataset, tmp_path, device=cpu)


def test_row16_a_split_of_another_image_size_is_refused(tiny_dataset, tmp_path):
    """Row 16. The val split holds images of another size than the other splits: loading it says so."""
    from metaland.data.layout import SplitData, load_split, write_split
    from metaland.errors import DataError

    data = tmp_path / "tiny"
    shutil.copytree(tiny_dataset, data)
    val = load_split(data, "val")
    smaller = torch.zeros(len(val.images), 1, 6, 6, dtype=torch.uint8)
    write_split(data, "val", SplitData(smaller, val.offsets, val.class_names))
    with pytest.raises(DataError, match=r"val\.safetensors.*\[1, 6, 6\].*\[1, 8, 8\].*Fix:"):
        load_split(data, "val")


def test_row17_failing_in_process_calls_leave_no_tracking_sidecar(tmp_path, monkeypatch, capsys):
    """Row 17. metaland.cli.main() called in-process and failing early (bad params) ends the tracking
    sidecar it started, instead of leaving a 220 MB process per call."""
    import psutil

    from metaland.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("runs: 3\n")
    for _ in range(3):
        with pytest.raises(SystemExit):
            main(["aggregate"])
    capsys.readouterr()
    sidecars = [
        child
        for child in psutil.Process().children(recursive=True)
        if "metaland.tracking_sidecar" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE
    ]
    assert sidecars == []


def test_row18_switching_profiles_back_and_forth_retrains_nothing(tmp_path, omniglot_mirror):
    """Row 18. ci -> another setting -> ci: the second ci build restores train's outputs from DVC's
    run-cache (no `persist` output), byte for byte, instead of retraining."""
    from tests.pipeline import CHECK_PARAMS, ci_checkout, sh, stages_run

    work, env = ci_checkout(tmp_path / "repo", omniglot_mirror)
    stage = f"train@{RUN}"
    sh(["dvc", "repro", stage], work, env)
    first = tree_digests(work / "runs" / RUN)
    ci_params = (work / "params.yaml").read_text()
    raw = yaml.safe_load(ci_params)
    guiroy_train(raw)["meta_lr"] = 0.002  # another profile, as far as this run is concerned
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert stages_run(sh(["dvc", "repro", stage], work, env)) == [CHECK_PARAMS, stage]
    (work / "params.yaml").write_text(ci_params)
    back = sh(["dvc", "repro", stage], work, env)
    assert stages_run(back) == [] and f"Stage '{stage}' is cached" in back, back
    assert tree_digests(work / "runs" / RUN) == first
