"""End-to-end helpers: a fresh checkout of the repository on the ci profile, local MLflow
processes (``mlflow server``, ``metaland ui``) on 127.0.0.1 for the tests that talk to them, and
the comparison in numbers of two runs' outputs (tests/test_container.py: container against host).

Shared by tests/test_dag.py, test_dvc_remote.py, test_tracking_server.py and test_ui_browser.py;
the session fixture that builds the whole ci pipeline once is ``ci_pipeline`` in conftest.py.
"""

from __future__ import annotations

import contextlib
import json
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

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT_S = 120
CHROMIUM = Path(os.environ.get("METALAND_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("METALAND_CHROMEDRIVER", "/usr/bin/chromedriver"))
PAGE_TIMEOUT_S = 60
PNG = b"\x89PNG\r\n\x1a\n"


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


@contextlib.contextmanager
def headless_chromium() -> Iterator:
    """A Selenium driver of headless Chromium (Debian's ``chromium`` and ``chromium-driver``; nothing
    is downloaded). Skips the test, saying why, where Chromium is not installed; with
    METALAND_REQUIRE_BROWSER=1 (set by .ci/run) that is a failure instead."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        reason = (
            f"Chromium is not installed ({', '.join(missing)} missing); install it with `make browser` "
            "(Debian's chromium and chromium-driver, as root)"
        )
        if os.environ.get("METALAND_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}. METALAND_REQUIRE_BROWSER=1 (set by .ci/run) forbids skipping this test.")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1920,1080"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, path: Path) -> Path:
    """Save what the browser shows as a PNG (checked to be one, and not blank) and print where."""
    assert driver.save_screenshot(str(path)) and path.read_bytes()[:8] == PNG and path.stat().st_size > 20_000
    print(f"screenshot: {path}")
    return path


# --- results of two runs, compared in numbers ---------------------------------------------------

COMPARED_OUTPUTS = ("probes", "results")
# claims.json records the MLflow runs of its inputs: ids that each tracking store makes its own.
VOLATILE_KEYS = frozenset({"mlflow"})


def compare_results(expected: Path, actual: Path, rtol: float = 1e-5, atol: float = 1e-6) -> tuple[int, float]:
    """Assert that two checkouts' pipeline outputs hold the same values: every table (CSV), JSON
    file and array (safetensors) under probes/ and results/, text equal and numbers within
    ``rtol``/``atol`` (atol covers a last-digit flip of the 6-decimal rounding of the study tables);
    figures and the report are not compared, nor the MLflow run ids. Returns (files compared,
    largest absolute difference). For runs under different interpreter builds (the image's Python
    against the host's), whose bytes need not agree. It stands in for `python -m metaland
    compare-results A B`, being added on main: once there, this helper is that command's caller."""
    largest = 0.0
    compared = 0
    for output in COMPARED_OUTPUTS:
        files = sorted(p.relative_to(expected / output) for p in (expected / output).rglob("*") if p.is_file())
        theirs = sorted(p.relative_to(actual / output) for p in (actual / output).rglob("*") if p.is_file())
        assert theirs == files, f"{output}/: files differ: {sorted(set(files) ^ set(theirs))}"
        for name in files:
            a, b = expected / output / name, actual / output / name
            where = f"{output}/{name}"
            if name.suffix == ".csv":
                largest = max(largest, _compare_tables(a, b, rtol, atol, where))
            elif name.suffix == ".json":
                left, right = json.loads(a.read_text()), json.loads(b.read_text())
                largest = max(largest, _compare_json(left, right, rtol, atol, where))
            elif name.suffix == ".safetensors":
                largest = max(largest, _compare_arrays(a, b, rtol, atol, where))
            else:
                raise AssertionError(f"{where}: no way to compare a {name.suffix or 'suffix-less'} file in numbers")
            compared += 1
    assert compared, f"no outputs under {', '.join(COMPARED_OUTPUTS)} of {expected}"
    return compared, largest


def _close(a, b, rtol: float, atol: float, where: str) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, f"{where}: shape {a.shape} != {b.shape}"
    same_nan = np.isnan(a) == np.isnan(b)
    assert same_nan.all(), f"{where}: NaN in one run only"
    ok = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    assert ok.all(), f"{where}: {int((~ok).sum())} numbers beyond rtol={rtol}, atol={atol}: {a[~ok][:5]}, {b[~ok][:5]}"
    finite = ~np.isnan(a)
    return float(np.abs(a[finite] - b[finite]).max()) if finite.any() else 0.0


def _compare_tables(a: Path, b: Path, rtol: float, atol: float, where: str) -> float:
    import pandas as pd

    if not a.read_text().strip():  # a table without rows or columns (some studies on the ci profile)
        assert not b.read_text().strip(), f"{where}: empty in one run only"
        return 0.0
    left, right = pd.read_csv(a), pd.read_csv(b)
    assert list(left.columns) == list(right.columns) and len(left) == len(right), f"{where}: layout differs"
    largest = 0.0
    for column in left.columns:
        if pd.api.types.is_numeric_dtype(left[column]) and pd.api.types.is_numeric_dtype(right[column]):
            largest = max(largest, _close(left[column], right[column], rtol, atol, f"{where}[{column}]"))
        else:
            assert left[column].equals(right[column]), f"{where}[{column}]: values differ"
    return largest


def _compare_json(a, b, rtol: float, atol: float, where: str) -> float:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        return max(
            (_compare_json(a[k], b[k], rtol, atol, f"{where}.{k}") for k in a if k not in VOLATILE_KEYS), default=0.0
        )
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        pairs = enumerate(zip(a, b, strict=True))
        return max((_compare_json(x, y, rtol, atol, f"{where}[{i}]") for i, (x, y) in pairs), default=0.0)
    if isinstance(a, float | int) and not isinstance(a, bool):
        assert isinstance(b, float | int) and not isinstance(b, bool), f"{where}: {a!r} != {b!r}"
        return _close(a, b, rtol, atol, where)
    assert a == b, f"{where}: {a!r} != {b!r}"
    return 0.0


def _compare_arrays(a: Path, b: Path, rtol: float, atol: float, where: str) -> float:
    from safetensors.numpy import load_file

    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys(), f"{where}: arrays differ"
    return max((_close(left[k], right[k], rtol, atol, f"{where}:{k}") for k in left), default=0.0)
