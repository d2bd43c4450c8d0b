"""`metaland container` without a Docker engine: its help, its message when no engine answers,
and the decisions it takes before talking to one (which client builds, what a container gets).
The image built and run for real is tests/test_container.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metaland import container
from metaland.container import ContainerError, RunSpec

REPO = Path(__file__).resolve().parents[1]


def metaland(*args: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metaland", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_names_every_command():
    result = metaland("container", "--help")
    assert result.returncode == 0
    for line in ("build ", "run CMD...", "repro [ARGS]...", "doctor ", "as your uid:gid", "--gpus"):
        assert line in result.stdout
    assert "container" in metaland("--help").stdout
    for command in ("build", "run", "repro", "doctor"):
        sub = metaland("container", command, "--help")
        assert sub.returncode == 0 and f"Usage: metaland container {command}" in sub.stdout


@pytest.mark.parametrize("command", [("doctor",), ("run", "--", "true"), ("repro",), ("build",)])
def test_without_an_engine_every_command_says_so_and_how_to_fix_it(tmp_path, command):
    socket = tmp_path / "docker.sock"
    result = metaland("container", *command, env={"DOCKER_HOST": f"unix://{socket}"})
    assert result.returncode == 2 and result.stdout == ""
    message = result.stderr.strip()
    assert message == (
        f"metaland: error: no Docker engine reachable at unix://{socket}: the socket does not exist. Fix: start "
        "the engine (`sudo systemctl start docker`; without systemd, `sudo dockerd &`), or point DOCKER_HOST at a "
        "running one; `docker info` answers once it is up."
    )


def test_run_spec_mounts_the_checkout_as_the_caller_with_gpus_when_asked(tmp_path):
    mirror = tmp_path / "mirror"
    spec = RunSpec(
        image="metaland:abc",
        command=("dvc", "repro"),
        user="1000:1000",
        checkout=tmp_path,
        workdir="/workspace/stages",
        gpus=True,
        environment={"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"},
        read_only_mounts=(mirror,),
    )
    kwargs = spec.create_kwargs()
    assert kwargs["image"] == "metaland:abc" and kwargs["command"] == ["dvc", "repro"]
    assert kwargs["user"] == "1000:1000" and kwargs["working_dir"] == "/workspace/stages"
    assert kwargs["network_mode"] == "host" and kwargs["ipc_mode"] == "host"
    checkout, data = kwargs["mounts"]
    assert (checkout["Source"], checkout["Target"], checkout["Type"], checkout["ReadOnly"]) == (
        str(tmp_path),
        "/workspace",
        "bind",
        False,
    )
    assert (data["Source"], data["Target"], data["ReadOnly"]) == (str(mirror), str(mirror), True)
    (gpus,) = kwargs["device_requests"]
    assert gpus["Count"] == -1 and gpus["Capabilities"] == [["gpu"]]
    assert kwargs["environment"] == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert RunSpec("i", ("true",), "0:0", tmp_path).create_kwargs()["device_requests"] == []


def test_gpus_auto_follows_the_nvidia_driver(tmp_path):
    assert not container.host_has_nvidia_gpus(tmp_path / "absent")
    gpus = tmp_path / "gpus"
    gpus.mkdir()
    assert not container.host_has_nvidia_gpus(gpus)
    (gpus / "0000:01:00.0").mkdir()
    assert container.host_has_nvidia_gpus(gpus)
    assert container.wants_gpus("auto", True) and not container.wants_gpus("auto", False)
    assert container.wants_gpus("all", False) and not container.wants_gpus("none", True)


def test_environment_pairs_and_names(tmp_path):
    assert container.parse_env(["A=1", "B", "C="], {"B": "from host"}) == {"A": "1", "B": "from host", "C": ""}
    with pytest.raises(ContainerError, match=r"--env MISSING: MISSING is not set here"):
        container.parse_env(["MISSING"], {})
    with pytest.raises(ContainerError, match="is not a variable name"):
        container.parse_env(["1X=2"], {})
    assert container.data_mirror({"METALAND_DATA_MIRROR": str(tmp_path)}) == tmp_path.resolve()
    assert container.data_mirror({"METALAND_DATA_MIRROR": str(tmp_path / "absent")}) is None
    assert container.data_mirror({}) is None


def fake_client(folder: Path, version: str, buildx: bool) -> Path:
    """A `docker` script that prints a version and has (or lacks) the buildx plugin."""
    folder.mkdir()
    script = folder / "docker"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = --version ] && {{ echo "Docker version {version}, build 0"; exit 0; }}\n'
        f'[ "$1" = buildx ] && exit {0 if buildx else 1}\n'
        "exit 3\n"
    )
    script.chmod(0o755)
    return script


def test_the_build_uses_the_first_client_that_can_build_with_buildkit(tmp_path):
    new_without_buildx = fake_client(tmp_path / "local", "28.2.2", buildx=False)
    debian = fake_client(tmp_path / "debian", "20.10.24+dfsg1", buildx=False)
    new_with_buildx = fake_client(tmp_path / "plugin", "28.2.2", buildx=True)
    path = os.pathsep.join(str(p.parent) for p in (new_without_buildx, debian, new_with_buildx))
    assert container.buildkit_docker({"PATH": path}, fallback=()) == str(debian)
    path = os.pathsep.join(str(p.parent) for p in (new_without_buildx, new_with_buildx))
    assert container.buildkit_docker({"PATH": path}, fallback=()) == str(new_with_buildx)
    assert container.buildkit_docker({"PATH": str(new_without_buildx.parent)}, fallback=(str(debian),)) == str(debian)
    with pytest.raises(ContainerError, match=r"28\.2\.2, build 0, without the buildx plugin\)\).*METALAND_DOCKER"):
        container.buildkit_docker({"PATH": str(new_without_buildx.parent)}, fallback=())
    assert container.buildkit_docker({"METALAND_DOCKER": str(new_with_buildx), "PATH": ""}) == str(new_with_buildx)
    assert container.client_version("Docker version 20.10.24+dfsg1, build 297e128") == (20, 10)


def test_the_pip_certificate_is_the_one_pip_is_configured_with(tmp_path):
    bundle = tmp_path / "ca.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    config = f"global.index-url='https://example.invalid/simple'\nglobal.cert='{bundle}'\n"
    assert container.pip_ca_bundle({}, config) == bundle
    assert container.pip_ca_bundle({"PIP_CERT": str(bundle)}, "") == bundle
    assert container.pip_ca_bundle({"PIP_CERT": str(tmp_path / "gone")}, config) == bundle
    assert container.pip_ca_bundle({}, "global.timeout='60'\n") is None
    command = container.build_command(
        "/usr/bin/docker", REPO, ["metaland:abc", "metaland:latest"], network="host", base_image="b:1", pip_cert=bundle
    )
    assert command == [
        "/usr/bin/docker",
        "build",
        "--progress",
        "plain",
        "--network",
        "host",
        "--tag",
        "metaland:abc",
        "--tag",
        "metaland:latest",
        "--build-arg",
        "BASE_IMAGE=b:1",
        "--secret",
        f"id=pipcert,src={bundle}",
        str(REPO),
    ]
    plain = container.build_command("docker", REPO, ["t"], network="default", base_image=None, pip_cert=None)
    assert "--secret" not in plain and "--build-arg" not in plain


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


def test_the_image_is_tagged_with_the_commit_and_dirty_when_the_code_differs(tmp_path):
    with pytest.raises(ContainerError, match="git names no commit of"):
        container.image_tag(tmp_path)
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "commit", "-qm", "code")
    commit = git(tmp_path, "rev-parse", "HEAD").strip()
    assert container.image_tag(tmp_path) == f"metaland:{commit[:12]}"
    (tmp_path / "notes.txt").write_text("untracked files are not in the image's code\n")
    assert container.image_tag(tmp_path) == f"metaland:{commit[:12]}"
    (tmp_path / "code.py").write_text("x = 2\n")
    assert container.image_tag(tmp_path) == f"metaland:{commit[:12]}-dirty"
    (tmp_path / "sub").mkdir()
    assert container.checkout_root(tmp_path / "sub") == tmp_path.resolve()
    assert container.container_workdir(tmp_path, tmp_path / "sub") == "/workspace/sub"
    assert container.container_workdir(tmp_path, tmp_path) == "/workspace"


def test_results_compare_in_numbers_within_tolerance_and_ignore_run_ids(tmp_path):
    """The comparison tests/test_container.py makes between the container's and the host's DAG."""
    import json

    from tests.pipeline import compare_results

    def outputs(root: Path, accuracy: float, verdict: str, run_id: str) -> Path:
        (root / "probes" / "run").mkdir(parents=True)
        (root / "results").mkdir()
        (root / "probes" / "run" / "checkpoints.csv").write_text(f"step,name,accuracy\n0,a,{accuracy}\n10,b,nan\n")
        claims = {"claims": [{"verdict": verdict, "p": accuracy / 10, "mlflow": {"probe_runs": {"run": run_id}}}]}
        (root / "results" / "claims.json").write_text(json.dumps(claims))
        (root / "results" / "grids.csv").write_text("\n")  # a table without rows or columns
        return root

    host = outputs(tmp_path / "host", 0.5, "holds", "a1")
    assert compare_results(host, outputs(tmp_path / "same", 0.5 + 1e-7, "holds", "b2")) == (3, pytest.approx(1e-7))
    with pytest.raises(AssertionError, match=r"checkpoints.csv: .* 1 outside tolerance"):
        compare_results(host, outputs(tmp_path / "far", 0.5 + 1e-3, "holds", "a1"))
    with pytest.raises(AssertionError, match=r"\.claims\[0\]\.verdict: 'holds' vs 'fails'"):
        compare_results(host, outputs(tmp_path / "flip", 0.5, "fails", "a1"))
