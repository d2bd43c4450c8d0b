"""End-to-end helpers: a fresh checkout of the repository on the ci profile, local MLflow
processes (``mlflow server``, ``metaland ui``) on 127.0.0.1 for the tests that talk to them, and
the comparison in numbers of two runs' outputs (tests/test_container.py: container against host).

Shared by tests/test_dag.py, test_dvc_remote.py, test_tracking_server.py and test_ui_browser.py;
the session fixture that builds the whole ci pipeline once is ``ci_pipeline`` in conftest.py.
"""

from __future__ import annotations

import contextlib
import fcntl
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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT_S = 120
CHROMIUM = Path(os.environ.get("METALAND_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("METALAND_CHROMEDRIVER", "/usr/bin/chromedriver"))
PAGE_TIMEOUT_S = 60
PNG = b"\x89PNG\r\n\x1a\n"


BUILD_TIMEOUT_S = 2700
"""How long a whole ci-profile `dvc repro` may take: about 10 minutes on 2 idle cores, and up to three
times that while the other test worker loads them and machines differ in speed."""


def sh(args: list[str], cwd: Path, env: dict, timeout: int = 900) -> str:
    """Run a command; fail the test with the end of its output unless it exits 0."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


CHECK_PARAMS = "check-params"
"""The stage that validates the whole params file before any other runs; it logs no MLflow run."""


def stages_run(log: str) -> list[str]:
    """The DVC stages a `dvc repro` log says it ran."""
    return re.findall(r"Running stage '([^']+)'", log)


CI_COMMIT_DATE = "2026-01-01T00:00:00+0000"
"""Author and committer date of every ci checkout's commit: one working tree, one commit id."""


def ci_job_threads(work: Path) -> int:
    """The CPUs the ci profile gives every kind of `metaland launch` job (the same for each kind)."""
    from metaland.config import load_params

    launch = load_params(work / "params.yaml").launch
    threads = {launch.fetch.cpus, launch.train.cpus, launch.probe.cpus}
    assert len(threads) == 1, "the ci profile gives every kind of job the same cpus"
    return threads.pop()


def ci_checkout(work: Path, mirror: Path, *, job_threads: bool = False) -> tuple[Path, dict]:
    """A fresh git repository at ``work`` holding what a clone would (tracked and untracked,
    not ignored, files), switched to the ci profile and committed; and the environment to run it.

    All but the committed dvc.lock, which records the default profile's stages: DVC parses and rewrites
    the whole lock file after every stage it runs (about 7 s per stage with the default's 120 stages
    kept beside the ci profile's 76, on 2 cores), so a ci build starts from no lock, as on a project
    that was never built.

    Every such checkout of one working tree has the same commit (fixed author and dates: the report records
    the commit). With ``job_threads`` its stages run with the CPU threads the ci profile gives every `metaland
    launch` job (``OMP_NUM_THREADS``: a kernel's partial sums, so a stage's floats, depend on the thread
    count), so that its build and a launched one must agree byte for byte (:func:`ci_reference`)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, files.split("\0")):
        if name != "dvc.lock" and (REPO / name).is_file():
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
        GIT_AUTHOR_DATE=CI_COMMIT_DATE,
        GIT_COMMITTER_DATE=CI_COMMIT_DATE,
    )
    sh(["git", "init", "-q"], work, env)
    sh([sys.executable, "-m", "metaland", "profile", "ci"], work, env)
    if job_threads:
        env["OMP_NUM_THREADS"] = str(ci_job_threads(work))
    sh(["git", "add", "-A"], work, env)
    sh(["git", "commit", "-qm", "ci profile"], work, env)
    return work, env


# --- one reference build of the ci profile, shared by the test workers ---------------------------

REFERENCE = "ci-reference"
"""The folder, in :func:`shared_folder`, that holds the first ci build's dvc.lock and results/."""


def shared_folder(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this session sees (the parent of the workers' base temps)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def reference_lock(shared: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the lock of the reference build (an exclusive ``flock``, released if the holder dies); yields
    whether it was taken (always, with ``wait``)."""
    with (shared / f"{REFERENCE}.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def head_commit(checkout: Path) -> str:
    return sh(["git", "rev-parse", "HEAD"], checkout, dict(os.environ)).strip()


def keep_reference(built: Path, shared: Path) -> Path:
    """Keep a freshly built ci checkout's dvc.lock and results/ (and its commit) as the session's reference,
    unless one is kept already (call it holding :func:`reference_lock`); the reference folder."""
    reference = shared / REFERENCE
    if not reference.is_dir():
        partial = shared / f"{REFERENCE}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        shutil.copy2(built / "dvc.lock", partial / "dvc.lock")
        shutil.copytree(built / "results", partial / "results")
        (partial / "commit").write_text(head_commit(built))
        partial.rename(reference)
    return reference


def ci_reference(shared: Path, commit: str, build: Callable[[], Path]) -> Path:
    """The session's reference ci build of ``commit``: the one the first built ci checkout kept (the
    ``ci_pipeline`` fixture keeps its build before any test changes it), waiting while one is being built;
    else, or where that one has another commit (a file the tests left in the repository), ``build()``'s."""
    with reference_lock(shared):
        reference = shared / REFERENCE
        if not reference.is_dir():
            return keep_reference(build(), shared)
        return reference if (reference / "commit").read_text() == commit else build()


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
VOLATILE_KEYS = frozenset({"mlflow"})
"""JSON keys two builds never share: MLflow run ids belong to each build's tracking store."""


def compare_results(expected: Path, actual: Path, rtol: float = 1e-5, atol: float = 1e-6) -> tuple[int, float]:
    """Assert that two checkouts' pipeline outputs (probes/ and results/) agree in numbers with
    :mod:`metaland.compare` (what `metaland compare-results --ignore-key mlflow` runs): the same files, text
    equal, numbers within ``rtol``/``atol`` (atol covers a last-digit flip of the 6-decimal rounding of the
    study tables); figures and the report are not compared, nor the MLflow run ids. Returns (files
    compared, largest absolute difference)."""
    from metaland.compare import Tolerance, compare_trees, format_comparison

    tolerance = Tolerance(rtol=rtol, atol=atol, ignore_keys=VOLATILE_KEYS)
    results = [r for output in COMPARED_OUTPUTS for r in compare_trees(expected / output, actual / output, tolerance)]
    assert all(r.agrees for r in results), format_comparison(results, tolerance)
    compared = [r for r in results if r.status in ("equal", "close")]
    assert compared, f"no outputs under {', '.join(COMPARED_OUTPUTS)} of {expected}"
    return len(compared), max(r.max_abs for r in compared)
