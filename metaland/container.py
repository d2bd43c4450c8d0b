"""``metaland container``: build the image (Dockerfile) and run commands in it on this checkout.

The engine is driven through the Python ``docker`` SDK: containers are created, started, their
output streamed and their exit status returned by it. The one exception is ``build``: the
Dockerfile needs BuildKit (``RUN --mount`` for the pip certificate secret, ``COPY --chmod``), which
the SDK cannot drive (it speaks only the legacy builder's API), so the build runs the ``docker``
client, the first one found that can do BuildKit builds (README.md, "Container").

Every container gets the checkout (the git repository around the working folder) bind-mounted
on ``/workspace`` and runs as the caller's uid:gid, so what it writes belongs to the caller.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

from metaland.errors import MetalandError

IMAGE_NAME = "metaland"
WORKSPACE = "/workspace"
DEFAULT_ENGINE = "unix:///var/run/docker.sock"
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
CHECKOUT_LABEL = "org.metaland.checkout"  # on every container: which checkout it works on
# The first Docker release whose `docker build` needs the buildx plugin for BuildKit; older
# clients (Debian's docker.io 20.10) have BuildKit built in behind DOCKER_BUILDKIT=1.
BUILDX_REQUIRED_FROM = (23,)


class ContainerError(MetalandError):
    """No engine, no usable docker client, no image, or the engine refused the container."""


# --------------------------------------------------------------------------------------------
# Pure parts: what to build and how to run, decided without an engine
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One container: image, command and everything the SDK's ``containers.create`` needs."""

    image: str
    command: tuple[str, ...]
    user: str
    checkout: Path
    workdir: str = WORKSPACE
    network: str = "host"
    gpus: bool = False
    environment: Mapping[str, str] = field(default_factory=dict)
    read_only_mounts: tuple[Path, ...] = ()

    def create_kwargs(self) -> dict:
        """Keyword arguments of ``docker.DockerClient.containers.create``."""
        from docker.types import DeviceRequest, Mount

        mounts = [Mount(WORKSPACE, str(self.checkout), type="bind")]
        mounts += [Mount(str(path), str(path), type="bind", read_only=True) for path in self.read_only_mounts]
        return {
            "image": self.image,
            "command": list(self.command),
            "user": self.user,
            "working_dir": self.workdir,
            "network_mode": self.network,
            # PyTorch's DataLoader workers and torch.multiprocessing share tensors through /dev/shm.
            "ipc_mode": "host",
            "mounts": mounts,
            "environment": dict(self.environment),
            "device_requests": [DeviceRequest(count=-1, capabilities=[["gpu"]])] if self.gpus else [],
            "labels": {CHECKOUT_LABEL: str(self.checkout)},
            "detach": True,
        }


def checkout_root(cwd: Path) -> Path:
    """The git repository around ``cwd`` (the folder mounted on /workspace), found by its ``.git``
    (git itself refuses to answer in a checkout of another user); ``cwd`` outside any."""
    cwd = cwd.resolve()
    return next((folder for folder in (cwd, *cwd.parents) if (folder / ".git").exists()), cwd)


def container_workdir(checkout: Path, cwd: Path) -> str:
    """The container's working folder: where ``cwd`` lies inside the mounted checkout."""
    relative = cwd.resolve().relative_to(checkout.resolve())
    return WORKSPACE if relative == Path() else f"{WORKSPACE}/{relative.as_posix()}"


def image_tag(checkout: Path, name: str = IMAGE_NAME) -> str:
    """``NAME:<commit>`` of the checkout's HEAD (12 hex digits), ``-dirty`` when tracked files
    differ from it: the image of a commit holds that commit's code and pins."""
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=checkout, capture_output=True, text=True)
    if head.returncode != 0:
        said = head.stderr.strip().splitlines()[0] if head.stderr.strip() else f"exit status {head.returncode}"
        raise ContainerError(
            f"git names no commit of {checkout} ({said}), so the image has no commit to be tagged with. "
            "Fix: run from a clone of the repository that you own, or give --tag NAME:TAG."
        )
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=checkout, capture_output=True, text=True
    )
    return f"{name}:{head.stdout.strip()}{'-dirty' if status.stdout.strip() else ''}"


def parse_env(pairs: Iterable[str], host: Mapping[str, str]) -> dict[str, str]:
    """``KEY=VALUE`` as given, ``KEY`` alone takes the host's value (as ``docker run -e``)."""
    environment = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ContainerError(f"--env {pair!r}: {key!r} is not a variable name. Fix: --env KEY=VALUE or --env KEY.")
        if not sep:
            if key not in host:
                raise ContainerError(f"--env {key}: {key} is not set here. Fix: set it, or give --env {key}=VALUE.")
            value = host[key]
        environment[key] = value
    return environment


def data_mirror(host: Mapping[str, str]) -> Path | None:
    """The host's ``METALAND_DATA_MIRROR`` folder, mounted read-only at the same path when set."""
    mirror = host.get("METALAND_DATA_MIRROR")
    return Path(mirror).resolve() if mirror and Path(mirror).is_dir() else None


def host_has_nvidia_gpus(gpus_dir: Path = NVIDIA_GPUS) -> bool:
    """True when the NVIDIA kernel driver lists a GPU on this host (one folder per device)."""
    return gpus_dir.is_dir() and any(gpus_dir.iterdir())


def wants_gpus(choice: str, host_has_gpus: bool) -> bool:
    """``--gpus auto`` requests every GPU when the host has NVIDIA GPUs; ``all`` and ``none`` force."""
    return {"all": True, "none": False, "auto": host_has_gpus}[choice]


def client_version(version_line: str) -> tuple[int, ...] | None:
    """(major, minor) from ``docker --version`` ("Docker version 20.10.24+dfsg1, build 297e128")."""
    match = re.search(r"version (\d+)\.(\d+)", version_line)
    return (int(match[1]), int(match[2])) if match else None


def can_build_with_buildkit(version: tuple[int, ...] | None, has_buildx: bool) -> bool:
    """A client builds with BuildKit if it has the buildx plugin, or BuildKit built in (< 23)."""
    return has_buildx or (version is not None and version < BUILDX_REQUIRED_FROM)


def pip_ca_bundle(host: Mapping[str, str], pip_config: str) -> Path | None:
    """The CA bundle this machine's pip is configured with (``PIP_CERT``, else ``cert`` in
    ``pip config list`` output), which the build's pip needs behind a TLS-inspecting proxy."""
    candidates = [host.get("PIP_CERT")]
    for line in pip_config.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.rsplit(".", 1)[-1] == "cert":
            candidates.append(value.strip().strip("'\""))
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def build_command(
    docker: str,
    context: Path,
    tags: Sequence[str],
    *,
    network: str,
    base_image: str | None,
    pip_cert: Path | None,
) -> list[str]:
    """The ``docker build`` command line (run with DOCKER_BUILDKIT=1)."""
    command = [docker, "build", "--progress", "plain", "--network", network]
    for tag in tags:
        command += ["--tag", tag]
    if base_image:
        command += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if pip_cert:
        command += ["--secret", f"id=pipcert,src={pip_cert}"]
    return [*command, str(context)]


# --------------------------------------------------------------------------------------------
# The engine and the docker client
# --------------------------------------------------------------------------------------------


def engine():
    """A ``docker.DockerClient`` whose engine answered a ping, or a ContainerError saying why not."""
    import docker

    where = os.environ.get("DOCKER_HOST") or DEFAULT_ENGINE
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as err:
        text = str(err)
        if "PermissionError" in text or "Permission denied" in text:
            reason, fix = (
                "permission denied on its socket",
                "add yourself to the `docker` group (`sudo usermod -aG docker $USER`, then log in again), "
                "or run as root",
            )
        else:
            reason = "the socket does not exist" if "FileNotFoundError" in text else f"it did not answer ({text})"
            fix = (
                "start the engine (`sudo systemctl start docker`; without systemd, `sudo dockerd &`), "
                "or point DOCKER_HOST at a running one; `docker info` answers once it is up"
            )
        raise ContainerError(f"no Docker engine reachable at {where}: {reason}. Fix: {fix}.") from err
    return client


def buildkit_docker(host: Mapping[str, str], fallback: Sequence[str] = ("/usr/bin/docker",)) -> str:
    """The first ``docker`` client that can run a BuildKit build: ``METALAND_DOCKER`` if set, else
    each ``docker`` on PATH in order, then ``fallback`` (Debian's client, whose BuildKit is built in)."""
    if host.get("METALAND_DOCKER"):
        candidates = [host["METALAND_DOCKER"]]
    else:
        folders = host.get("PATH", "").split(os.pathsep)
        candidates = [str(Path(folder) / "docker") for folder in folders if folder] + list(fallback)
    tried = []
    for path in dict.fromkeys(candidates):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        version_line = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()
        has_buildx = subprocess.run([path, "buildx", "version"], capture_output=True).returncode == 0
        if can_build_with_buildkit(client_version(version_line), has_buildx):
            return path
        tried.append(f"{path} ({version_line or 'no version'}, without the buildx plugin)")
    found = "; ".join(tried) if tried else "no docker client on PATH"
    raise ContainerError(
        f"no docker client here can build with BuildKit, which the Dockerfile needs ({found}). Fix: install "
        "the buildx plugin (Docker's docker-buildx-plugin), or Debian's docker.io (20.10: BuildKit built in), "
        "or name a client with METALAND_DOCKER=/path/to/docker."
    )


def pip_config_list() -> str:
    result = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


def find_image(client, checkout: Path, image: str | None) -> str:
    """``--image`` if given, else the image of the checkout's commit, else ``metaland:latest``."""
    import docker

    candidates = [image] if image else [_commit_image(checkout), f"{IMAGE_NAME}:latest"]
    for candidate in filter(None, candidates):
        try:
            client.images.get(candidate)
        except docker.errors.ImageNotFound:
            continue
        return candidate
    raise ContainerError(
        f"no image {' or '.join(filter(None, candidates))} on this engine. Fix: build it with "
        "`metaland container build` (or name another with --image)."
    )


def _commit_image(checkout: Path) -> str | None:
    try:
        return image_tag(checkout)
    except ContainerError:
        return None


def run_container(client, spec: RunSpec, out=None, err=None) -> int:
    """Create and start the container, stream its stdout and stderr to ours, return its exit
    status; the container is removed afterwards (Ctrl-C or SIGTERM stop it first)."""
    import docker

    out = out or sys.stdout.buffer
    err = err or sys.stderr.buffer
    try:
        container = client.containers.create(**spec.create_kwargs())
    except docker.errors.ImageNotFound as error:
        raise ContainerError(f"no image {spec.image} on this engine. Fix: `metaland container build`.") from error
    try:
        # Attached before it starts, as `docker run` does: attaching to a container that has
        # already exited (a short command) can leave the stream open forever.
        output = container.attach(stdout=True, stderr=True, stream=True, demux=True)
        try:
            container.start()
        except docker.errors.APIError as error:
            output.close()
            raise _start_error(spec, error) from error
        previous = signal.signal(signal.SIGTERM, _terminated)
        try:
            for chunk_out, chunk_err in output:
                for stream, chunk in ((out, chunk_out), (err, chunk_err)):
                    if chunk:
                        stream.write(chunk)
                        stream.flush()
            return int(container.wait()["StatusCode"])
        except (KeyboardInterrupt, SystemExit):
            container.stop(timeout=10)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        container.remove(force=True)


def _terminated(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def _start_error(spec: RunSpec, error) -> ContainerError:
    text = str(error.explanation or error)
    if spec.gpus and ("device driver" in text or "nvidia" in text.lower()):
        return ContainerError(
            f"the engine cannot give the container GPUs ({text}). Fix: install the NVIDIA Container "
            "Toolkit on this host and restart the engine, or run on the CPU with --gpus none."
        )
    return ContainerError(f"the engine refused to start {spec.image} ({text}). Fix: see `docker info`.")


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _run_options(command):
    options = [
        click.option(
            "--image", help="Image to run. Default: the image of this checkout's commit, else metaland:latest."
        ),
        click.option(
            "--gpus",
            type=click.Choice(["auto", "all", "none"]),
            default="auto",
            show_default=True,
            help="Give the container every GPU: auto does when this host has NVIDIA GPUs.",
        ),
        click.option(
            "--network",
            default="host",
            show_default=True,
            help="Docker network of the container; host reaches a tracking server on 127.0.0.1.",
        ),
        click.option(
            "-e", "--env", "env", multiple=True, metavar="KEY[=VALUE]", help="Set a variable (KEY alone: pass yours)."
        ),
        click.option(
            "--user",
            metavar="UID:GID",
            help="Run as this uid:gid instead of yours, e.g. the owner of a checkout you do not own.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _spec(image: str | None, gpus: str, network: str, env: Sequence[str], user: str | None, command: Sequence[str]):
    """(client, RunSpec) for a command on the checkout around the working folder, as the caller."""
    client = engine()
    cwd = Path.cwd()
    checkout = checkout_root(cwd)
    environment = parse_env(env, os.environ)
    mirror = data_mirror(os.environ)
    if mirror is not None:
        environment.setdefault("METALAND_DATA_MIRROR", str(mirror))
    spec = RunSpec(
        image=find_image(client, checkout, image),
        command=tuple(command),
        user=user or f"{os.getuid()}:{os.getgid()}",
        checkout=checkout,
        workdir=container_workdir(checkout, cwd),
        network=network,
        gpus=wants_gpus(gpus, host_has_nvidia_gpus()),
        environment=environment,
        read_only_mounts=(mirror,) if mirror is not None and not mirror.is_relative_to(checkout) else (),
    )
    return client, spec


def _announce(spec: RunSpec) -> None:
    click.echo(
        f"metaland container: {' '.join(spec.command)} in {spec.image} on {spec.checkout} (as uid:gid {spec.user}, "
        f"{'all GPUs' if spec.gpus else 'CPU only'}, network {spec.network})",
        err=True,
    )


@click.group(name="container")
def container() -> None:
    """Build the Docker image and run metaland in it on this checkout.

    \b
      build             build the image from the Dockerfile, tagged metaland:<commit> and metaland:latest
      run CMD...        any command in the image, e.g. `metaland container run -- metaland params`
      repro [ARGS]...   dvc repro in the image (arguments go to dvc repro)
      doctor            check the engine and GPUs, then `metaland doctor` in the image

    \b
    Containers run with this checkout mounted on /workspace, as your uid:gid (what they write
    is yours), with every GPU when this host has NVIDIA GPUs (--gpus), on the host network.
    Their output streams here and their exit status becomes this command's. Set DOCKER_HOST to
    use another engine.
    """


@container.command()
@click.option("--tag", help="Image tag. Default: metaland:<commit> (and metaland:latest).")
@click.option(
    "--base-image",
    help="Base image instead of python:3.11.7-slim-bookworm (same Python, Debian bookworm), "
    "e.g. one built by docker/local-base.sh where no registry is reachable.",
)
@click.option(
    "--pip-cert",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CA bundle for pip in the build (BuildKit secret, stored in no layer). "
    "Default: the one this machine's pip is configured with (PIP_CERT, pip config), if any.",
)
@click.option("--no-pip-cert", is_flag=True, help="Pass no CA bundle: pip in the build uses its own.")
@click.option("--network", default="host", show_default=True, help="Network of the build's RUN steps.")
def build(tag: str | None, base_image: str | None, pip_cert: Path | None, no_pip_cert: bool, network: str) -> None:
    """Build the image from this checkout's Dockerfile (BuildKit), then print its build time and size.

    The requirements layer is rebuilt only when requirements.txt (or the base) changes; a code
    change rebuilds the last, small layers only.
    """
    client = engine()
    checkout = checkout_root(Path.cwd())
    tags = [tag] if tag else [image_tag(checkout), f"{IMAGE_NAME}:latest"]
    cert = None if no_pip_cert else pip_cert or pip_ca_bundle(os.environ, pip_config_list())
    docker = buildkit_docker(os.environ)
    command = build_command(docker, checkout, tags, network=network, base_image=base_image, pip_cert=cert)
    click.echo(f"metaland container: {' '.join(command)}", err=True)
    started = time.monotonic()
    result = subprocess.run(command, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise ContainerError(
            f"docker build failed (exit status {result.returncode}) after {seconds:.0f} s; the build log above "
            "names the failing step. Fix that step's cause (behind a TLS-inspecting proxy: --pip-cert with "
            "its CA bundle)."
        )
    size = client.images.get(tags[0]).attrs["Size"]
    click.echo(f"built {', '.join(tags)} in {seconds:.0f} s; image size {size / 1e9:.2f} GB ({size} bytes)")


@container.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@_run_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    image: str | None, gpus: str, network: str, env: tuple[str, ...], user: str | None, command: tuple[str, ...]
) -> None:
    """Run COMMAND in the image on this checkout; exit with its exit status.

    Put `--` before a COMMAND that has options of its own: `metaland container run -- dvc exp show`.
    """
    client, spec = _spec(image, gpus, network, env, user, command)
    _announce(spec)
    sys.exit(run_container(client, spec))


@container.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@_run_options
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def repro(
    image: str | None, gpus: str, network: str, env: tuple[str, ...], user: str | None, args: tuple[str, ...]
) -> None:
    """`dvc repro [ARGS]` in the image on this checkout (e.g. `metaland container repro -- aggregate`)."""
    client, spec = _spec(image, gpus, network, env, user, ("dvc", "repro", *args))
    _announce(spec)
    sys.exit(run_container(client, spec))


@container.command()
@_run_options
def doctor(image: str | None, gpus: str, network: str, env: tuple[str, ...], user: str | None) -> None:
    """Check the engine, the image and the GPUs, then run `metaland doctor` in the image."""
    client, spec = _spec(image, gpus, network, env, user, ("metaland", "doctor"))
    info = client.info()
    runtimes = sorted(info.get("Runtimes", {}))
    click.echo(
        f"[ok  ] engine: Docker {info.get('ServerVersion')} ({info.get('OperatingSystem')}, "
        f"{info.get('Driver')}, cgroup v{info.get('CgroupVersion', '?')}, runtimes {', '.join(runtimes)})"
    )
    attrs = client.images.get(spec.image).attrs
    click.echo(f"[ok  ] image: {spec.image} ({attrs['Id'][7:19]}, {attrs['Size'] / 1e9:.2f} GB)")
    if host_has_nvidia_gpus():
        tag = "ok  " if spec.gpus else "warn"
        click.echo(f"[{tag}] host GPUs: NVIDIA GPUs present; container gets {'all' if spec.gpus else 'none'} (--gpus)")
    else:
        click.echo("[ok  ] host GPUs: none (no NVIDIA driver lists a GPU); the container runs on the CPU")
    _announce(spec)
    sys.exit(run_container(client, spec))
