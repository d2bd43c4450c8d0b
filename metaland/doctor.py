"""``metaland doctor``: what a user checks first when something does not run."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
from collections.abc import Callable
from pathlib import Path

from metaland.errors import MetalandError

PINNED = {"torch": "2.14.1", "torchvision": "0.29.1"}


def run_checks(params_path: Path, data_dir: Path, echo: Callable[[str], None]) -> int:
    """Print one line per check; return the number of failures."""
    failures = 0

    def report(ok: bool | None, what: str, detail: str) -> None:
        nonlocal failures
        tag = {True: "ok  ", False: "FAIL", None: "warn"}[ok]
        failures += ok is False
        echo(f"[{tag}] {what}: {detail}")

    report(True, "python", platform.python_version())
    for package, pinned in PINNED.items():
        version = _version(package)
        report(
            version is not None and version.startswith(pinned),
            package,
            f"{version} (pinned {pinned}; fix: `make install`)",
        )
    for package in ("dvc", "mlflow", "safetensors", "pydantic"):
        version = _version(package)
        report(version is not None, package, version or "missing (fix: `make install`)")

    import torch

    cuda = torch.cuda.is_available()
    report(
        True if cuda else None,
        "device",
        f"CUDA: {torch.cuda.get_device_name(0)}" if cuda else "no CUDA device; `auto` runs on the CPU",
    )
    report(
        (shutil.which("git") is not None and Path(".git").exists()) or None,
        "git",
        "DVC needs a git checkout; run from the repository root",
    )

    try:
        from metaland.config import load_params

        config = load_params(params_path)
        report(True, "params", f"{params_path}: profile {config.profile!r}, {len(config.runs)} runs")
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
            "fetched" if fetched else f"not fetched yet (`dvc repro fetch@{dataset}`)",
        )

    try:
        from metaland.tracking import check_reachable, ensure_store, tracking_uri

        check_reachable()
        ensure_store()
        report(True, "tracking", tracking_uri())
    except Exception as err:
        report(False, "tracking", f"{err} (fix: check MLFLOW_TRACKING_URI)")
    return failures


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
