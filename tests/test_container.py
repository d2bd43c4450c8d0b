"""The image built and run for real on a Docker engine (`make test-container`; `.ci/run` runs it).

No image registry is reachable where CI runs, so the base is the local stand-in of
docker/local-base.sh (Debian's Python 3.11 on bookworm, reused between runs by its content tag);
on it the project image is built from the real Dockerfile by `metaland container build`. Then,
on a fresh clone switched to the ci profile and owned by uid 1000:

- a rebuild from the clone (another commit, other params) reuses the requirements layer;
- compose.yaml's `mlflow` service, moved onto the host network by a test override, becomes
  healthy, and compose's `pipeline-cpu` service reaches it by its service name;
- `metaland container doctor` reports the image healthy;
- `metaland container repro` runs the whole ci DAG as uid 1000, logging every stage to the
  mlflow service over HTTP; what it writes belongs to uid 1000, and its tables equal, within
  a tolerance, those of the same DAG run on the host (which ran in the background meanwhile).

Every container uses the host's network (the engine has no bridge: docker/engine.sh). Without
METALAND_CONTAINER_TESTS=1 (set by `make test-container`) the module is skipped, saying why: it
builds a 7 GB image and reruns the ci DAG twice (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

if os.environ.get("METALAND_CONTAINER_TESTS") != "1":
    pytest.skip(
        "builds the 7 GB image and runs the ci DAG in it and on the host (~15 min): run `make test-container` "
        "(needs a Docker engine, or root to install and start one; .ci/run does)",
        allow_module_level=True,
    )

from metaland.container import CHECKOUT_LABEL, ContainerError, buildkit_docker, engine
from tests.pipeline import CHECK_PARAMS, REPO, ci_checkout, compare_results, free_port, stages_run

pytestmark = pytest.mark.container

CALLER = (1000, 1000)  # the clone's owner, for whom the containers write (the image's own uid too)
HEALTHY_TIMEOUT_S = 240
DAG_TIMEOUT_S = 3600  # a guard only: the ci DAG takes minutes, but more on a machine shared with others


def say(line: str) -> None:
    """A measured figure, printed in the test log (make test-container runs pytest -s)."""
    print(f"[container] {line}", flush=True)


def metaland(*args: str, cwd: Path, env: dict | None = None, timeout: int = DAG_TIMEOUT_S):
    """`python -m metaland ARGS`, timed: (completed process, seconds)."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "metaland", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, time.monotonic() - started


def output(result: subprocess.CompletedProcess) -> str:
    return f"exit status {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"


# --- the engine, the base, the image ---------------------------------------------------------


@pytest.fixture(scope="module")
def docker_engine():
    """A Docker engine: the one that answers, else (as root) docker/engine.sh installs and starts
    Debian's, and stops it after the module."""
    started = False
    try:
        client = engine()
    except ContainerError as err:
        if os.geteuid() != 0:
            pytest.fail(f"{err} As root, this test would install and start one (docker/engine.sh start).")
        subprocess.run([REPO / "docker" / "engine.sh", "start"], check=True, timeout=900)
        started = True
        client = engine()
    version = client.version()
    say(f"engine: Docker {version['Version']} (API {version['ApiVersion']}), {client.info()['Driver']}")
    yield client
    client.close()
    if started:
        subprocess.run([REPO / "docker" / "engine.sh", "stop"], check=True, timeout=120)


@pytest.fixture(scope="module")
def docker_cli(docker_engine) -> str:
    return buildkit_docker(os.environ)


@pytest.fixture(scope="module")
def base_image(docker_cli) -> str:
    started = time.monotonic()
    result = subprocess.run(
        [REPO / "docker" / "local-base.sh"], env={**os.environ, "DOCKER": docker_cli}, capture_output=True, text=True
    )
    assert result.returncode == 0, output(result)
    tag = result.stdout.strip()
    built = "built" if "built" in result.stderr else "cached (same recipe)"
    say(f"stand-in base {tag}: {built}, {time.monotonic() - started:.0f} s")
    return tag


@dataclass
class HostRepro:
    """The ci DAG run by `dvc repro` on the host, in the background."""

    work: Path
    log: Path
    process: subprocess.Popen
    started: float

    def finished(self) -> Path:
        returncode = self.process.wait(timeout=DAG_TIMEOUT_S)
        assert returncode == 0, f"host dvc repro failed:\n{self.log.read_text()[-6000:]}"
        return self.work


@pytest.fixture(scope="module")
def host_repro(tmp_path_factory, omniglot_mirror):
    """Started first, so it runs while the image builds; read by the comparison."""
    work, env = ci_checkout(tmp_path_factory.mktemp("host") / "repo", omniglot_mirror)
    log = work.parent / "repro.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["dvc", "repro"], cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    repro = HostRepro(work, log, process, time.monotonic())
    yield repro
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Build:
    tag: str
    log: str
    seconds: float


def build(cwd: Path, tag: str, base: str) -> Build:
    result, seconds = metaland("container", "build", "--tag", tag, "--base-image", base, cwd=cwd)
    assert result.returncode == 0, output(result)
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"built {re.escape(tag)} in \d+ s; image size \d+\.\d\d GB \(\d+ bytes\)", summary)
    say(summary)
    return Build(tag, result.stderr, seconds)


@pytest.fixture(scope="module")
def image(host_repro, base_image) -> Build:
    """The project image of this checkout, from the real Dockerfile."""
    return build(REPO, "metaland-test:checkout", base_image)


@pytest.fixture(scope="module")
def clone(docker_engine, tmp_path_factory, omniglot_mirror) -> Iterator[Path]:
    """A fresh clone on the ci profile (a new commit: other params, and a code change no build
    before this test run has seen, so the engine's layer cache, which may outlive one run, cannot
    hold its code layer), owned by uid 1000. Any container still working on it at the end (its
    client killed by a timeout) is removed."""
    work, env = ci_checkout(tmp_path_factory.mktemp("clone") / "repo", omniglot_mirror)
    with (work / "metaland" / "__init__.py").open("a") as module:
        module.write(f"# changed by the container test {uuid.uuid4()}\n")
    subprocess.run(["git", "commit", "-qam", "a code change"], cwd=work, env=env, check=True)
    subprocess.run(["chown", "-R", f"{CALLER[0]}:{CALLER[1]}", work.parent], check=True)
    yield work
    for leftover in docker_engine.containers.list(all=True, filters={"label": f"{CHECKOUT_LABEL}={work}"}):
        leftover.remove(force=True)


def git_head(checkout: Path) -> str:
    """The commit of a checkout of uid 1000 (git refuses another user's checkout unless told)."""
    return subprocess.run(
        ["git", "-c", f"safe.directory={checkout}", "rev-parse", "HEAD"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture(scope="module")
def rebuilt(image, clone, base_image) -> Build:
    """The image rebuilt from the clone: a code change after the first build."""
    return build(clone, "metaland-test:clone", base_image)


# --- compose ---------------------------------------------------------------------------------


@dataclass
class Compose:
    command: list[str]
    env: dict
    url: str
    port: int


def compose_command() -> list[str]:
    """Compose v2 (`docker compose`) if installed, else Debian's docker-compose (v1)."""
    for candidate in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(candidate[0]) and subprocess.run([*candidate, "version"], capture_output=True).returncode == 0:
            return candidate
    pytest.fail("no compose: docker/engine.sh installs Debian's docker-compose")


def host_network_file(clone: Path, image: str, port: int, folder: Path, command: list[str], env: dict) -> Path:
    """compose.yaml with a test override: the one image, every service on the host network
    (`mlflow` resolves to 127.0.0.1 in the pipeline services), the server on a free port.

    Compose merges an override's lists into the base's, so the published port cannot be unset by
    one, and a published port with host networking is refused; the merged file (compose's own
    rendering) drops it, and names the host network as the default one so that no network is made."""
    service = yaml.safe_load((clone / "compose.yaml").read_text())["services"]["mlflow"]
    server = [
        "--host=127.0.0.1" if arg.startswith("--host=") else f"--port={port}" if arg.startswith("--port=") else arg
        for arg in service["command"]
    ]
    probe = [*service["healthcheck"]["test"][:-1], service["healthcheck"]["test"][-1].replace(":5000/", f":{port}/")]
    host = {"image": image, "network_mode": "host", "extra_hosts": ["mlflow:127.0.0.1"]}
    override = {
        "services": {
            "mlflow": {**host, "command": server, "healthcheck": {"test": probe}},
            "pipeline": dict(host),
            "pipeline-cpu": {**host, "environment": {"MLFLOW_TRACKING_URI": f"http://mlflow:{port}"}},
        }
    }
    (folder / "override.yaml").write_text(yaml.safe_dump(override))
    rendered = subprocess.run(
        [*command, "-f", clone / "compose.yaml", "-f", folder / "override.yaml", "config"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    merged = yaml.safe_load(rendered)
    for definition in merged["services"].values():
        definition.pop("ports", None)
        assert definition["network_mode"] == "host"
    merged["networks"] = {"default": {"external": True, "name": "host"}}
    path = folder / "compose.host.yaml"
    path.write_text(yaml.safe_dump(merged))
    return path


@pytest.fixture(scope="module")
def mlflow_service(docker_engine, rebuilt, clone, tmp_path_factory):
    """`compose up -d mlflow` on the clone, waited for until healthy; `compose down` afterwards."""
    port = free_port()
    command = compose_command()
    env = {
        **os.environ,
        "UID": str(CALLER[0]),
        "GID": str(CALLER[1]),
        "COMPOSE_PROJECT_NAME": f"metalandtest{os.getpid()}",
        "MLFLOW_SERVER_ALLOWED_HOSTS": f"mlflow:{port},localhost,localhost:*,127.0.0.1,127.0.0.1:*",
    }
    folder = tmp_path_factory.mktemp("compose")
    compose = [*command, "-f", str(host_network_file(clone, rebuilt.tag, port, folder, command, env))]
    started = time.monotonic()
    up = subprocess.run([*compose, "up", "-d", "mlflow"], cwd=clone, env=env, capture_output=True, text=True)
    try:
        assert up.returncode == 0, output(up)
        (server,) = docker_engine.containers.list(
            filters={"label": [f"com.docker.compose.project={env['COMPOSE_PROJECT_NAME']}"]}
        )
        status = "starting"
        while status != "healthy":
            assert time.monotonic() - started < HEALTHY_TIMEOUT_S, f"mlflow: {status}\n{server.logs()[-4000:]!r}"
            time.sleep(2)
            server.reload()
            status = server.attrs["State"]["Health"]["Status"]
        say(f"compose ({' '.join(command)}): mlflow service healthy after {time.monotonic() - started:.0f} s")
        yield Compose(compose, env, f"http://127.0.0.1:{port}", port)
    finally:
        subprocess.run([*compose, "down", "--timeout", "10"], cwd=clone, env=env, capture_output=True)


# --- the container repro ---------------------------------------------------------------------


def as_caller(command: str, image: Build, clone: Path, server: Compose, **options):
    """`metaland container COMMAND` on the clone as its owner, logging to the compose server."""
    user = f"{CALLER[0]}:{CALLER[1]}"
    tracking = f"MLFLOW_TRACKING_URI={server.url}"
    return metaland("container", command, "--image", image.tag, "--user", user, "--env", tracking, cwd=clone, **options)


@dataclass
class ContainerRepro:
    result: subprocess.CompletedProcess
    seconds: float


@pytest.fixture(scope="module")
def container_repro(rebuilt, clone, mlflow_service, omniglot_mirror) -> ContainerRepro:
    mirror = {"METALAND_DATA_MIRROR": str(omniglot_mirror)}
    result, seconds = as_caller("repro", rebuilt, clone, mlflow_service, env=mirror)
    assert result.returncode == 0, output(result)
    say(f"ci repro in the container: {seconds:.0f} s, {len(stages_run(result.stdout + result.stderr))} stages")
    say(f"ci repro in the container: {result.stdout.strip().splitlines()[-1]}")
    return ContainerRepro(result, seconds)


# --- the tests -------------------------------------------------------------------------------


def test_the_image_builds_on_the_stand_in_base_and_holds_no_certificate(docker_engine, image, base_image):
    attrs = docker_engine.images.get(image.tag).attrs
    assert attrs["Size"] > 3e9, "the pinned CUDA build of torch is in it"
    assert not any(variable.startswith("PIP_CERT=") for variable in attrs["Config"]["Env"])
    assert attrs["Config"]["User"] == "1000:1000"
    history = " ".join(layer.get("CreatedBy", "") for layer in docker_engine.api.history(image.tag))
    assert "BEGIN CERTIFICATE" not in history
    probe = docker_engine.containers.run(
        image.tag,
        ["sh", "-c", "test ! -e /run/secrets/pipcert && python -c 'import torch, metaland; print(torch.__version__)'"],
        network_mode="host",
        remove=True,
    )
    assert probe.decode().strip().split("+")[0] == "2.14.1"


def test_a_code_change_rebuilds_only_the_layers_after_the_requirements(rebuilt):
    """The clone differs from the checkout in its commit and params.yaml: the build context."""
    steps = dict(re.findall(r"^(#\d+) \[\d+/\d+\] (.+)$", rebuilt.log, flags=re.MULTILINE))
    cached = set(re.findall(r"^(#\d+) CACHED$", rebuilt.log, flags=re.MULTILINE))
    (requirements,) = [n for n, step in steps.items() if "pip install --no-cache-dir -r /tmp/requirements.txt" in step]
    (code,) = [n for n, step in steps.items() if step.startswith("COPY --chown=metaland:metaland . ")]
    assert requirements in cached, f"the requirements layer was rebuilt:\n{rebuilt.log[-4000:]}"
    assert code not in cached, "the code changed, its layer must be rebuilt"
    say(f"rebuild after a code change: {rebuilt.seconds:.0f} s, requirements layer {requirements} CACHED")


def test_run_streams_both_outputs_as_the_caller_and_returns_the_exit_status(rebuilt, clone):
    """Run from a folder of the checkout: the container works in the same folder, as whoever calls."""
    script = 'echo "$(id -u):$(id -g) in $(pwd)"; echo to-stderr >&2; exit 3'
    result, _ = metaland("container", "run", "--image", rebuilt.tag, "--", "sh", "-c", script, cwd=clone / "stages")
    assert result.returncode == 3, output(result)
    assert result.stdout == f"{os.getuid()}:{os.getgid()} in /workspace/stages\n"
    assert result.stderr.splitlines()[-1] == "to-stderr"
    assert f"(as uid:gid {os.getuid()}:{os.getgid()}, " in result.stderr


def test_a_command_that_ends_at_once_is_never_waited_for_forever(rebuilt, clone):
    """A container that exits before a late attach would see it: before the attach came first,
    4 in 10 of these runs hung."""
    for attempt in range(10):
        result, seconds = metaland(
            "container", "run", "--image", rebuilt.tag, "--", "sh", "-c", "exit 5", cwd=clone, timeout=120
        )
        assert result.returncode == 5, f"run {attempt}: {output(result)}"
    say(f"10 runs of a command that ends at once: all returned, the last in {seconds:.1f} s")


def test_doctor_in_the_image_is_healthy(rebuilt, clone, mlflow_service):
    result, seconds = as_caller("doctor", rebuilt, clone, mlflow_service, timeout=300)
    assert result.returncode == 0, output(result)
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line.startswith("[FAIL]")]
    commit = git_head(clone)
    for needle in (
        "[ok  ] engine: Docker ",
        f"[ok  ] image: {rebuilt.tag} ",
        "[ok  ] torch: 2.14.1",
        f"[ok  ] git: commit {commit[:12]}, ",
        "[ok  ] workspace: /workspace is writable",
        "[ok  ] params: params.yaml: profile 'ci'",
        f"[ok  ] tracking: {mlflow_service.url}",
    ):
        assert any(line.startswith(needle) for line in lines), f"{needle!r} missing:\n{result.stdout}"
    say(f"metaland container doctor ({seconds:.0f} s):\n" + result.stdout.rstrip())


def test_compose_pipeline_service_reaches_the_mlflow_service(mlflow_service, clone):
    result = subprocess.run(
        [*mlflow_service.command, "--profile", "cpu", "run", "--rm", "pipeline-cpu", "metaland", "doctor"],
        cwd=clone,
        env=mlflow_service.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, output(result)
    (tracking,) = [line for line in result.stdout.splitlines() if "] tracking: " in line]
    assert tracking.startswith(f"[ok  ] tracking: http://mlflow:{mlflow_service.port}"), tracking
    say(f"compose run pipeline-cpu metaland doctor: {tracking}")


def test_container_repro_writes_only_files_of_the_caller(container_repro, clone):
    assert (clone / "results" / "claims.json").is_file() and (clone / "report" / "index.html").is_file()
    foreign = [p for p in [clone, *clone.rglob("*")] if (p.lstat().st_uid, p.lstat().st_gid) != CALLER]
    assert not foreign, f"{len(foreign)} paths not owned by {CALLER}: {[str(p) for p in foreign[:10]]}"


def test_container_repro_equals_the_host_repro_in_numbers(container_repro, clone, host_repro):
    host = host_repro.finished()
    say(f"ci repro on the host (in the background, beside the builds): {time.monotonic() - host_repro.started:.0f} s")
    compared, deviation = compare_results(host, clone)
    say(f"container vs host: {compared} tables and JSON files equal within tolerance, max |difference| {deviation:.3g}")


def test_container_repro_logged_every_stage_to_the_compose_mlflow_service(container_repro, clone, mlflow_service):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_service.url)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000)
    logged = {run.data.tags.get("metaland.dvc_stage") for run in runs}
    ran = set(stages_run(container_repro.result.stdout + container_repro.result.stderr)) - {CHECK_PARAMS}
    assert ran and ran <= logged, sorted(ran - logged)
    assert all(run.info.status == "FINISHED" for run in runs)
    assert (clone / "mlflow.db").is_file(), "the server keeps the checkout's own store"
    say(f"mlflow service over HTTP: {len(runs)} runs, every one of the {len(ran)} stages that ran")
