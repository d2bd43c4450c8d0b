"""The CUDA image, checked statically (no Docker engine here): hadolint plus parsed invariants."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run(
        [hadolint, "--config", str(REPO / ".hadolint.yaml"), str(REPO / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_pinned_by_version():
    bases = [args for op, args in instructions() if op == "FROM"]
    assert len(bases) == 1
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", bases[0]), bases[0]


def test_installs_the_pinned_requirements_before_the_code():
    ops = instructions()
    copies = [i for i, (op, args) in enumerate(ops) if op == "COPY"]
    installs = [i for i, (op, args) in enumerate(ops) if op == "RUN" and "-r /tmp/requirements.txt" in args]
    assert installs and ops[copies[0]][1].startswith("requirements.txt")
    assert copies[0] < installs[0] < copies[1], "dependency layer comes before the code layer"
    pins = (REPO / "requirements.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


def test_copied_sources_exist_and_outputs_are_not_baked_in():
    for op, args in instructions():
        if op == "COPY":
            source = next(word for word in args.split() if not word.startswith("--"))
            assert (REPO / source).exists(), f"COPY source {source} missing"
    ignored = (REPO / ".dockerignore").read_text().split()
    for output in ("data/", "runs/", "results/", ".venv/", "mlflow.db"):
        assert output in ignored


def test_default_command_rebuilds_the_results():
    assert ("CMD", '["dvc", "repro"]') in instructions()
    assert ("WORKDIR", "/workspace") in instructions()


def test_runs_as_an_unprivileged_user_and_carries_no_secrets():
    users = [args for op, args in instructions() if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    secret = re.compile(r"(password|passwd|secret|token|api[_-]?key)\s*[=:]", re.IGNORECASE)
    for path in [REPO / "Dockerfile", *sorted((REPO / "profiles").glob("*.yaml")), REPO / "params.yaml"]:
        assert not secret.search(path.read_text()), f"{path.name} looks like it holds a secret"
