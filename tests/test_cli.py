"""The command line: every user error is one paragraph with a fix and exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import metaland
from metaland.cli import main
from metaland.errors import EXIT_CHECKPOINT, EXIT_DATA, EXIT_USAGE

REPO = Path(__file__).resolve().parents[1]
RUN = "guiroy2019-maml-omniglot-small-5w1s-s0"


@pytest.fixture(autouse=True)
def _scratch_tracking_store(monkeypatch, tmp_path):
    """Runs the CLI starts (also failing ones) go to a store of the test, never to the checkout's mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'scratch-mlflow.db'}")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str, status: int = EXIT_USAGE) -> None:
    """One paragraph on stderr with a fix, and the exit status of the failure's kind (metaland.errors)."""
    assert code == status, f"exit status {code}, expected {status}: {err}"
    assert err.startswith("metaland: error: ") and err.count("\n") == 1, "one paragraph on stderr"
    assert "Fix" in err
    for needle in needles:
        assert needle in err


@pytest.fixture()
def ci_params(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "profiles" / "ci.yaml", path)
    return path


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert (code, out) == (0, f"metaland {metaland.__version__}\n")


def test_check_params_writes_what_each_stage_reads_and_nothing_for_a_typo(capsys, ci_params, tmp_path):
    out = tmp_path / "checked"
    code, printed, _ = run_cli(capsys, "check-params", "--params", str(ci_params), "--out", str(out))
    assert code == 0 and printed.startswith(f"{ci_params}: valid (profile 'ci': ")
    first = {path.name: path.read_bytes() for path in out.iterdir()}
    raw = yaml.safe_load(ci_params.read_text())
    raw["studies"]["guiroy2019"]["probe"]["probes"]["curvature"]["max_iters"] = 12
    ci_params.write_text(yaml.safe_dump(raw))
    assert run_cli(capsys, "check-params", "--params", str(ci_params), "--out", str(out))[0] == 0
    changed = {path.name for path in out.iterdir() if path.read_bytes() != first.get(path.name)}
    guiroy = {f"probe@{key}.json" for key, run in raw["runs"].items() if run["study"] == "guiroy2019"}
    assert guiroy and changed == {*guiroy, "aggregate.json"}, "a valid edit reruns only the stages that read it"
    ci_params.write_text(ci_params.read_text() + "run:\n  seeds: 5\n")
    code, _, err = run_cli(capsys, "check-params", "--params", str(ci_params), "--out", str(out))
    assert_user_error(code, err, "run is not a known parameter. Did you mean 'runs'?")
    shutil.rmtree(out)
    assert run_cli(capsys, "check-params", "--params", str(ci_params), "--out", str(out))[0] != 0
    assert not out.exists()


def test_bad_param_value(capsys, ci_params):
    raw = yaml.safe_load(ci_params.read_text())
    raw["studies"]["guiroy2019"]["defaults"]["train"]["meta_lr"] = 0
    ci_params.write_text(yaml.safe_dump(raw))
    code, _, err = run_cli(capsys, "train", RUN, "--params", str(ci_params))
    assert_user_error(code, err, "studies.guiroy2019.defaults.train.meta_lr = 0 is invalid", "greater than 0")


def test_missing_dataset(capsys, ci_params, tmp_path):
    code, _, err = run_cli(capsys, "train", RUN, "--params", str(ci_params), "--data-dir", str(tmp_path / "none"))
    assert_user_error(
        code,
        err,
        "dataset 'omniglot-small' has not been fetched",
        "dvc repro fetch@omniglot-small",
        "METALAND_DATA_MIRROR",
        status=EXIT_DATA,
    )


def test_mirror_without_the_archives(capsys, ci_params, tmp_path):
    empty = tmp_path / "mirror"
    empty.mkdir()
    code, _, err = run_cli(
        capsys,
        "fetch",
        "omniglot-small",
        "--params",
        str(ci_params),
        "--data-dir",
        str(tmp_path / "data"),
        "--mirror",
        str(empty),
    )
    assert_user_error(code, err, str(empty), "images_background_small1.zip", status=EXIT_DATA)
    assert not (tmp_path / "data" / "omniglot-small").exists(), "nothing half-written"


def test_unknown_run_lists_the_known_ones(capsys, ci_params):
    code, _, err = run_cli(capsys, "probe", "guiroy2019-nope", "--params", str(ci_params))
    assert_user_error(code, err, "no run 'guiroy2019-nope'", RUN)


def test_unknown_dataset(capsys, ci_params):
    code, _, err = run_cli(capsys, "fetch", "imagenet", "--params", str(ci_params))
    assert_user_error(code, err, "dataset 'imagenet' is not declared under datasets")


def fetched_as(tiny_dataset: Path, data: Path, params_path: Path, dataset: str = "omniglot-small") -> Path:
    """``data/<dataset>``: the tiny dataset, its manifest saying it was fetched for the params file's params."""
    from metaland.config import load_params

    shutil.copytree(tiny_dataset, data / dataset)
    manifest = json.loads((data / dataset / "manifest.json").read_text())
    manifest["params"] = load_params(params_path).datasets[dataset].model_dump(mode="json")
    (data / dataset / "manifest.json").write_text(json.dumps(manifest))
    return data / dataset


def test_missing_checkpoints_for_probe(capsys, ci_params, tiny_dataset, tmp_path):
    data = tmp_path / "data"
    fetched_as(tiny_dataset, data, ci_params)
    code, _, err = run_cli(
        capsys,
        "probe",
        RUN,
        "--params",
        str(ci_params),
        "--data-dir",
        str(data),
        "--checkpoints-dir",
        str(tmp_path / "ckpts"),
    )
    assert_user_error(code, err, "manifest.json is missing", f"dvc repro probe@{RUN}", status=EXIT_CHECKPOINT)


@pytest.mark.parametrize(
    "command", ["fetch", "train", "extract", "probe", "aggregate", "plot", "ui", "doctor", "profile", "params"]
)
def test_every_command_has_help(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0 and "Usage: metaland" in out and len(out.splitlines()) > 4


def test_top_level_help_teaches_the_pipeline(capsys):
    _code, out, _ = run_cli(capsys, "--help")
    for word in ("fetch DATASET", "train RUN", "probe RUN", "make repro", "metaland params"):
        assert word in out


def test_params_lists_every_knob_with_provenance(capsys):
    code, out, _ = run_cli(capsys, "params")
    assert code == 0
    assert "inner_lr" in out and "§2.7.3" in out and "studies.<study>.probe.probes.curvature" in out


def test_profile_switch_and_protection(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    shutil.copy(REPO / "profiles" / "default.yaml", tmp_path / "params.yaml")
    code, _out, _ = run_cli(capsys, "profile", "ci")
    assert code == 0 and (tmp_path / "params.yaml").read_text() == (REPO / "profiles" / "ci.yaml").read_text()
    (tmp_path / "params.yaml").write_text((tmp_path / "params.yaml").read_text() + "# my edit\n")
    code, _, err = run_cli(capsys, "profile", "default")
    assert_user_error(code, err, "has edits that match no profile", "--force")
    (tmp_path / "params.yaml").write_bytes((tmp_path / "params.yaml").read_bytes() + b"# caf\xe9\n")  # Latin-1
    code, _, err = run_cli(capsys, "profile", "default")
    assert_user_error(code, err, "has edits that match no profile", "--force")
    assert run_cli(capsys, "profile", "default", "--force")[0] == 0


def test_real_entry_point_exit_status(tmp_path):
    """The installed entry point (python -m metaland) returns 2 on a user error."""
    bad = tmp_path / "params.yaml"
    bad.write_text("datasets: {}\nstudies: {}\nruns: {}\nbogus: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "metaland", "aggregate", "--params", str(bad)],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": "sqlite://"},
    )
    assert result.returncode == 2
    assert "bogus is not a known parameter" in result.stderr


def test_doctor_reports_each_check(capsys, ci_params, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(REPO)
    code, out, _ = run_cli(capsys, "doctor", "--params", str(ci_params), "--data-dir", str(tmp_path / "data"))
    assert code == 0
    for check in (
        "[ok  ] torch: 2.14.1",
        "[ok  ] dvc-s3: ",
        "[ok  ] params",
        "dataset omniglot-small: not fetched yet",
        "] device: CUDA " if torch.cuda.is_available() else "[warn] device: CPU, ",
        f"[ok  ] workspace: {REPO} is writable",
        "] dvc remote: ",
        f"[ok  ] tracking: sqlite:///{tmp_path / 'mlflow.db'}: not created yet",
    ):
        assert check in out
    assert not (tmp_path / "mlflow.db").exists(), "the doctor only looks"
    broken = tmp_path / "broken.yaml"
    broken.write_text("runs: 3\n")
    code, out, err = run_cli(capsys, "doctor", "--params", str(broken))
    assert code == 2 and "[FAIL] params" in out and "doctor found 1 problem" in err


def test_ui_listens_on_localhost_only(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the default store, mlflow.db, is created in the working folder
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    calls = []
    monkeypatch.setattr(os, "execv", lambda path, args: calls.append(args))
    code, out, _ = run_cli(capsys, "ui", "--port", "5123")
    assert code == 0 and "http://127.0.0.1:5123" in out
    args = calls[0]
    assert args[args.index("--host") + 1] == "127.0.0.1" and args[args.index("--port") + 1] == "5123"
    assert "--workers" not in args, "MLflow's default unless asked"
    assert os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false", "no job runner beside the UI"
    run_cli(capsys, "ui", "--port", "5123", "--workers", "1")
    assert calls[1][calls[1].index("--workers") + 1] == "1"


@pytest.fixture()
def dvc_checkout(tmp_path, monkeypatch, ci_params) -> Path:
    """An empty git + DVC repository as the working folder (what `dvc init` makes: a .dvc folder
    with a config file; written here because DVC's logger would write to a closed capture)."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


@pytest.mark.parametrize(
    ("remote", "status", "needle"),
    [
        (None, 0, "[warn] dvc remote: no default remote"),
        ("s3://bucket/metaland", 0, "[ok  ] dvc remote: 'shared' = s3://bucket/metaland (not contacted"),
        ("ssh://user@gpu-box/srv/dvc", 0, "[ok  ] dvc remote: 'shared' = ssh:///srv/dvc"),
        ("LOCAL", 0, "[ok  ] dvc remote: 'shared' = local folder"),
        ("gs://bucket/metaland", 2, "[FAIL] dvc remote: 'shared': gs is supported, but requires 'dvc-gs'"),
    ],
)
def test_doctor_checks_the_dvc_remote(capsys, dvc_checkout, ci_params, remote, status, needle):
    if remote is not None:
        url = str(dvc_checkout.parent / "remote") if remote == "LOCAL" else remote
        (dvc_checkout.parent / "remote").mkdir(exist_ok=True)
        config = dvc_checkout / ".dvc" / "config"
        config.write_text(f"[core]\n    remote = shared\n['remote \"shared\"']\n    url = {url}\n")
    code, out, _ = run_cli(capsys, "doctor", "--params", str(ci_params))
    assert code == status and needle in out, out


def test_doctor_fails_a_cuda_device_without_a_gpu(capsys, dvc_checkout, ci_params):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    ci_params.write_text(ci_params.read_text().replace("device: auto", "device: cuda"))
    code, out, _ = run_cli(capsys, "doctor", "--params", str(ci_params))
    assert code == 2 and "[FAIL] params: params.yaml: device = 'cuda' but PyTorch sees no CUDA device" in out
