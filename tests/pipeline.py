"""End-to-end helpers: a fresh checkout of the repository on the ci profile, and local MLflow
processes (``mlflow server``, ``metaland ui``) on 127.0.0.1 for the tests that talk to them.

Shared by tests/test_dag.py, test_dvc_remote.py, test_tracking_server.py and test_ui_browser.py;
the session fixture that builds the whole ci pipeline once is ``ci_pipeline`` in conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT_S = 120


def sh(args: list[str], cwd: Path, env: dict, timeout: int = 900) -> str:
    """Run a command; fail the test with the end of its output unless it exits 0."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def stages_run(log: str) -> list[str]:
    """The DVC stages a `dvc repro` log says it ran."""
    return re.findall(r"Running stage '([^']+)'", log)


def ci_checkout(work: Path, mirror: Path) -> tuple[Path, dict]:
    """A fresh git repository at ``work`` holding what a clone would (tracked and untracked,
    not ignored, files), switched to the ci profile and committed; and the environment to run it."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        METALAND_DATA_MIRROR=str(mirror),
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        METALAND_CACHE=str(work.parent / "cache"),
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    sh(["git", "init", "-q"], work, env)
    sh([sys.executable, "-m", "metaland", "profile", "ci"], work, env)
    sh(["git", "add", "-A"], work, env)
    sh(["git", "commit", "-qm", "ci profile"], work, env)
    return work, env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(command: list[str], port: int, log: Path, cwd: Path, env: dict) -> Iterator[str]:
    """Start an MLflow server process on 127.0.0.1:``port``; yield its URL once ``/health``
    answers; stop it (its whole process group: uvicorn workers included) afterwards."""
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _answers(f"{url}/health"):
            assert process.poll() is None, f"{' '.join(command)} exited ({process.returncode}):\n{_tail(log)}"
            assert time.monotonic() < deadline, f"{url} did not answer in {SERVER_START_TIMEOUT_S} s:\n{_tail(log)}"
            time.sleep(0.5)
        yield url
    finally:
        _stop_group(process)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group started for ``process``; SIGKILL what is left of it (workers
    the server did not reap, or a server still busy 5 s after SIGTERM: a test server needs no graceful exit)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
