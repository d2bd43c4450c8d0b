"""``metaland doctor``: what a user checks first when something does not run.

One line per check, ``[ok  ]``, ``[warn]`` (works, but not as you may expect) or ``[FAIL]`` (a
stage would fail; the line names the fix). The exit status is non-zero when any check fails, so
the same command is the container image's health check. Every check is read-only: the doctor
never creates the tracking store, a DVC remote or a dataset.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
from collections.abc import Callable
from pathlib import Path

from metaland.errors import MetalandError

PINNED = {"torch": "2.14.1", "torchvision": "0.29.1"}
REPORTED = ("dvc", "dvc-s3", "dvc-ssh", "mlflow", "safetensors", "pydantic")
GIB = 1024**3


def run_checks(params_path: Path, data_dir: Path, echo: Callable[[str], None]) -> int:
    """Print one line per check; return the number of failures."""
    failures = 0

    def report(ok: bool | None, what: str, detail: str) -> None:
        nonlocal failures
        tag = {True: "ok  ", False: "FAIL", None: "warn"}[ok]
        failures += ok is False
        echo(f"[{tag}] {what}: {detail}")

    report(True, "python", f"{platform.python_version()} ({platform.machine()}, {platform.system()})")
    for package, pinned in PINNED.items():
        version = _version(package)
        report(
            version is not None and version.startswith(pinned),
            package,
            f"{version} (pinned {pinned}; fix: `make install`)",
        )
    for package in REPORTED:
        version = _version(package)
        report(version is not None, package, version or "missing (fix: `make install`)")

    report(*_device())
    from metaland.tracking import git_state

    git = git_state() if shutil.which("git") else {"commit": "unknown", "dirty": "unknown"}
    report(
        git["commit"] != "unknown" or None,
        "git",
        f"commit {git['commit'][:12]}, uncommitted changes: {git['dirty']}"
        if git["commit"] != "unknown"
        else "no git checkout here: DVC needs one and runs record no commit; run from the repository root",
    )
    cwd = Path.cwd()
    report(
        os.access(cwd, os.W_OK),
        "workspace",
        f"{cwd} is writable"
        if os.access(cwd, os.W_OK)
        else f"{cwd} is not writable by uid {os.getuid()}, so no stage can write its outputs. Fix: in Docker, "
        'add `--user "$(id -u):$(id -g)"` to `docker run`; elsewhere, fix the folder\'s owner or permissions.',
    )

    try:
        from metaland.config import load_params
        from metaland.runtime import select_device

        config = load_params(params_path)
        report(True, "params", f"{params_path}: profile {config.profile!r}, {len(config.runs)} runs")
        select_device(config.device)
    except MetalandError as err:
        report(False, "params", str(err))
        return failures

    mirror = os.environ.get("METALAND_DATA_MIRROR")
    report(
        None if mirror is None else Path(mirror).is_dir(),
        "data mirror",
        mirror or "METALAND_DATA_MIRROR unset: fetch downloads from the public addresses",
    )
    for dataset in config.datasets:
        fetched = (Path(data_dir) / dataset / "manifest.json").is_file()
        report(
            True if fetched else None,
            f"dataset {dataset}",
            "fetched" if fetched else f"not fetched yet (`dvc repro fetch@{dataset}`, or `dvc pull` from a remote)",
        )

    report(*_dvc_remote())

    from metaland.tracking import describe_store

    try:
        report(True, "tracking", describe_store())
    except MetalandError as err:
        report(False, "tracking", str(err))
    return failures


def _device() -> tuple[bool | None, str, str]:
    """The CUDA devices PyTorch sees (name, memory), else the CPU: what `device: auto` will use."""
    import torch

    if torch.cuda.is_available():
        names = [
            f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / GIB:.1f} GiB)"
            for i in range(torch.cuda.device_count())
        ]
        cudnn = torch.backends.cudnn.version()
        return True, "device", f"CUDA {torch.version.cuda}, cuDNN {cudnn}: {', '.join(names)}"
    build = f"PyTorch built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only PyTorch build"
    return (
        None,
        "device",
        f"CPU, {os.cpu_count()} cores: no CUDA device visible ({build}); `device: auto` runs on the CPU. "
        "In Docker, `--gpus all` makes the GPUs visible.",
    )


def _dvc_remote() -> tuple[bool | None, str, str]:
    """The default DVC remote, where `dvc push` / `dvc pull` share data, checkpoints and results.

    Only the configuration is checked (the filesystem plugin is installed, a local folder
    exists); remote storage is not contacted: credentials are asked for by `dvc push` itself."""
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo()
    except NotDvcRepoError:
        return False, "dvc remote", f"{Path.cwd()} is not inside a DVC repository. Fix: run from the repository root."
    except DvcException as err:
        return (
            False,
            "dvc remote",
            f"DVC cannot open the repository ({err}). Fix: run from a git checkout of the repository "
            '(in Docker, mount it: `-v "$PWD":/workspace`).',
        )
    with repo:
        name = repo.config["core"].get("remote")
        if not name:
            return (
                None,
                "dvc remote",
                "no default remote: `dvc push` has nowhere to share data and results "
                "(`dvc remote add -d NAME URL`, see README.md, Sharing data and results)",
            )
        try:
            remote = repo.cloud.get_remote(name)
        except ImportError as err:
            return False, "dvc remote", f"{name!r}: {err}. Fix: `pip install dvc-<scheme>` (or `make install`)."
        except DvcException as err:
            return False, "dvc remote", f"{name!r}: {err}. Fix: `dvc remote modify` or `dvc remote add -f`."
    protocol = remote.fs.protocol if isinstance(remote.fs.protocol, str) else remote.fs.protocol[0]
    if protocol == "local":
        if Path(remote.path).is_dir():
            return True, "dvc remote", f"{name!r} = local folder {remote.path}"
        return None, "dvc remote", f"{name!r} = local folder {remote.path}, not created yet (`dvc push` creates it)"
    return True, "dvc remote", f"{name!r} = {protocol}://{remote.path} (not contacted; `dvc push` asks for credentials)"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
