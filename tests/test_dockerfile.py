"""The CUDA image, checked without a Docker engine: hadolint, the parsed Dockerfile's invariants,
the entrypoint's behaviour (it is a plain shell script) and the compose file's services. The image
built and run for real is tests/test_container.py."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def arguments(op: str) -> list[str]:
    return [args for name, args in instructions() if name == op]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in arguments("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


PIP_CERT_SECRET = (
    "--mount=type=secret,id=pipcert,required=false "
    "if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi "
)


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and " " not in line, f"requirements.txt: {line!r} is not pinned as name==version"
            pins[name.lower()] = version
    return pins


def test_hadolint_passes():
    """`hadolint Dockerfile` as a user runs it (from the repository root, which picks up
    .hadolint.yaml: no rule waived there, failure on any finding); waivers are inline only."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((REPO / ".hadolint.yaml").read_text())
    assert not config.get("ignored") and config.get("failure-threshold") == "style"
    lines = (REPO / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert lines[i - 1].startswith("#") and len(lines[i - 1]) > 40, f"waiver on line {i + 1} has no reason"


def test_base_image_is_pinned_by_version():
    """Slim Python of the interpreter the pins were locked with, a build argument a site without
    registry access replaces (docker/local-base.sh); CUDA comes from torch's wheels. No `# syntax=`
    line: BuildKit would pull its frontend from a registry."""
    (arg,) = (args for args in arguments("ARG") if args.startswith("BASE_IMAGE="))
    base = arg.split("=", 1)[1]
    assert instructions()[0] == ("ARG", arg) and arguments("FROM") == ["${BASE_IMAGE}"]
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.\d+-slim-(\w+)", base)
    assert match, base
    assert (int(match[1]), int(match[2])) == sys.version_info[:2], "requirements.txt is locked for this Python"
    assert match[3] == "bookworm", "docker/local-base.sh builds the same Debian"
    assert "syntax=" not in (REPO / "Dockerfile").read_text().split("\n", 1)[0]
    pins = requirement_pins()
    assert "nvidia-cuda-runtime" in pins and pins["torch"] == "2.14.1", "one CUDA stack: torch's pinned wheels"


def test_local_base_builds_the_same_python_on_the_same_debian():
    """docker/local-base.sh: Debian bookworm's python3.11 (what BASE_IMAGE's tag names), tagged by
    the recipe's own content, so a changed recipe never reuses an old image."""
    script = (REPO / "docker" / "local-base.sh").read_text()
    assert "debootstrap --variant=minbase bookworm" in script and "python3.11 python3.11-venv" in script
    assert 'recipe="$(sha256sum "$0"' in script and "${recipe}" in script.split("tag=", 1)[1].split("\n", 1)[0]
    assert os.access(REPO / "docker" / "local-base.sh", os.X_OK)


def test_every_python_dependency_comes_from_the_pinned_requirements():
    ops = instructions()
    copies = {args.split()[-1]: args.split()[-2] for op, args in ops if op == "COPY"}
    installs = [" ".join(args.split()) for op, args in ops if op == "RUN" and re.search(r"\bpip3? install\b", args)]
    assert len(installs) == 2, installs
    requirements, project = installs
    for install in installs:
        # The pip certificate: an optional BuildKit secret, exported only when given, never a layer.
        assert install.startswith(PIP_CERT_SECRET), install
    assert requirements.endswith("&& pip install --no-cache-dir -r /tmp/requirements.txt")
    assert copies["/tmp/requirements.txt"] == "requirements.txt", "the file the tests install (`make install`)"
    assert re.search(r"&& pip install --no-cache-dir --no-deps -e /workspace\b", project), "the project adds no deps"
    assert not any(re.search(r"\b(conda|mamba|uv|pipx|easy_install)\b", args) for op, args in ops if op == "RUN")
    dependency_layer = next(i for i, (op, args) in enumerate(ops) if op == "RUN" and "-r /tmp/req" in args)
    code_layer = next(i for i, (op, args) in enumerate(ops) if op == "COPY" and args.split()[-2] == ".")
    assert dependency_layer < code_layer, "the dependency layer survives code changes"
    makefile = (REPO / "Makefile").read_text()
    assert "pip install -q -r requirements.txt" in makefile and "--no-deps -e ." in makefile
    from metaland.doctor import PINNED

    pins = requirement_pins()
    assert all(pins[name] == version for name, version in PINNED.items())


def test_environment_for_determinism_tracking_and_dvc():
    from metaland.runtime import CUBLAS_WORKSPACE_CONFIG

    env = image_env()
    assert env["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE_CONFIG
    assert env["PYTHONHASHSEED"].isdigit()
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:////workspace/mlflow.db", "absolute, in the mounted checkout"
    assert env["DVC_NO_ANALYTICS"] == "1" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["METALAND_CACHE"].startswith("/workspace/.metaland/")
    assert ".metaland/" in (REPO / ".gitignore").read_text()


def test_workspace_entrypoint_command_and_healthcheck():
    assert arguments("WORKDIR") == ["/workspace"]
    assert any("git config --system --add safe.directory /workspace" in args for args in arguments("RUN"))
    (entrypoint,) = (json.loads(args) for args in arguments("ENTRYPOINT"))
    (command,) = (json.loads(args) for args in arguments("CMD"))
    assert command == ["dvc", "repro"]
    copied = {args.split()[-1]: args.split()[-2] for args in arguments("COPY")}
    assert copied[f"/usr/local/bin/{entrypoint[0]}"] == "docker/entrypoint.sh"
    assert os.access(ENTRYPOINT, os.X_OK) and "--chmod=0755" in next(a for a in arguments("COPY") if "entrypoint" in a)
    (health,) = arguments("HEALTHCHECK")
    assert health.endswith('CMD ["metaland", "doctor"]')


def test_runs_as_an_unprivileged_user_and_carries_no_secrets():
    users = arguments("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    secret = re.compile(r"(password|passwd|secret|token|api[_-]?key)\s*[=:]", re.IGNORECASE)
    for path in [REPO / "Dockerfile", REPO / "compose.yaml", *sorted((REPO / "profiles").glob("*.yaml"))]:
        assert not secret.search(path.read_text()), f"{path.name} looks like it holds a secret"
    assert not secret.search((REPO / "params.yaml").read_text())


def test_copied_sources_exist_and_outputs_history_and_credentials_are_not_baked_in():
    for args in arguments("COPY"):
        source = next(word for word in args.split() if not word.startswith("--"))
        assert (REPO / source).exists(), f"COPY source {source} missing"
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in ("data/", "runs/", "checkpoints/", "probes/", "results/", ".venv/", "mlflow.db", "mlartifacts/"):
        assert entry in ignored
    for entry in (".git/", ".dvc/config.local", ".dvc/cache/", ".env"):
        assert entry in ignored


# --- the entrypoint ------------------------------------------------------------------------------


def entrypoint(tmp_path: Path, *command: str, prefix: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    """Run the entrypoint with a fake `dvc` on PATH that only records its arguments.

    The script is fed on standard input (``sh -s``), so a ``prefix`` that drops privileges needs no
    read access to the checkout (a fresh clone under a private temporary folder, as in CI)."""
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "dvc").write_text('#!/bin/sh\necho "dvc ran: $*"\n')
    (shim / "dvc").chmod(0o755)
    full_env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(tmp_path), **env}
    with ENTRYPOINT.open() as script:
        return subprocess.run(
            [*prefix, "sh", "-s", "--", *command],
            stdin=script,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=60,
        )


def mount_points() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def test_entrypoint_runs_the_command_given(tmp_path):
    result = entrypoint(tmp_path, "printf", "%s|", "a", "b c", METALAND_WORKSPACE=str(tmp_path))
    assert result.returncode == 0 and result.stdout == "a|b c|"
    assert "no checkout mounted" in result.stderr


def test_entrypoint_refuses_to_write_outputs_into_an_unmounted_workspace(tmp_path):
    result = entrypoint(tmp_path, "dvc", "repro", METALAND_WORKSPACE=str(tmp_path))
    assert result.returncode == 2 and "dvc ran" not in result.stdout
    assert "no checkout is mounted" in result.stderr and '-v "$PWD":' in result.stderr
    assert result.stderr.count("\n") == 1, "one paragraph"
    forced = entrypoint(tmp_path, "dvc", "repro", METALAND_WORKSPACE=str(tmp_path), METALAND_ALLOW_UNMOUNTED="1")
    assert forced.returncode == 0 and forced.stdout == "dvc ran: repro\n"


@pytest.mark.skipif("/dev/shm" not in mount_points(), reason="needs a writable mount point (/dev/shm) to stand in")
def test_entrypoint_runs_the_pipeline_on_a_mounted_workspace(tmp_path):
    result = entrypoint(tmp_path, "dvc", "repro", METALAND_WORKSPACE="/dev/shm")
    assert result.returncode == 0 and result.stdout == "dvc ran: repro\n" and result.stderr == ""


def test_entrypoint_refuses_a_workspace_it_cannot_write(tmp_path):
    """As when the checkout belongs to a host uid other than the image's: a read-only folder, and
    when the tests run as root (who may write anywhere) the entrypoint runs as nobody."""
    workspace = tmp_path / "checkout"
    workspace.mkdir()
    workspace.chmod(0o555)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without util-linux's setpriv to drop privileges")
        prefix = (setpriv, "--reuid=65534", "--regid=65534", "--clear-groups")
    result = entrypoint(
        tmp_path,
        "dvc",
        "repro",
        prefix=prefix,
        HOME="/tmp",
        METALAND_WORKSPACE=str(workspace),
        METALAND_ALLOW_UNMOUNTED="1",
    )
    assert result.returncode == 2 and "dvc ran" not in result.stdout
    assert "is not writable by uid" in result.stderr and '--user "$(id -u):$(id -g)"' in result.stderr


def test_entrypoint_gives_an_unknown_user_a_writable_home(tmp_path):
    result = entrypoint(
        tmp_path, "sh", "-c", 'echo "$HOME"; test -w "$HOME"', HOME="/nonexistent", METALAND_WORKSPACE=str(tmp_path)
    )
    assert result.returncode == 0 and result.stdout.strip() == f"{tmp_path}/metaland-home-{os.getuid()}"


# --- docker compose ------------------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def test_compose_runs_the_pipeline_against_the_mlflow_service():
    services = compose()["services"]
    assert {"mlflow", "pipeline"} <= set(services)
    for service in services.values():
        assert service["build"] == "." and ".:/workspace" in service["volumes"], "one image, one shared workspace"
        assert service["user"] == "${UID:-1000}:${GID:-1000}" and arguments("USER")[-1] == "1000:1000"
    pipeline = services["pipeline"]
    assert pipeline["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert pipeline["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert pipeline["ipc"] == "host" and "command" not in pipeline, "the image's default: dvc repro"
    (gpus,) = pipeline["deploy"]["resources"]["reservations"]["devices"]
    assert gpus == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert "deploy" not in services["pipeline-cpu"]


def test_compose_mlflow_service_is_a_valid_server_on_localhost():
    """The UI is published on 127.0.0.1 unless MLFLOW_BIND says otherwise, answers the pipeline's
    Host header, keeps its store in the workspace, and its command parses as `mlflow server`."""
    mlflow = compose()["services"]["mlflow"]
    (port,) = mlflow["ports"]
    assert port == "${MLFLOW_BIND:-127.0.0.1}:${MLFLOW_PORT:-5000}:5000"
    assert "mlflow:5000" in mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"]
    options = dict(arg.removeprefix("--").split("=", 1) for arg in command[2:])
    assert options["backend-store-uri"] == image_env()["MLFLOW_TRACKING_URI"], "the checkout's own store"
    assert options["artifacts-destination"] == "/workspace/mlartifacts" and options["host"] == "0.0.0.0"
    from mlflow.cli import cli

    cli.commands["server"].make_context("server", command[2:])  # raises on an unknown option or bad value
    assert "/health" in mlflow["healthcheck"]["test"][-1]
