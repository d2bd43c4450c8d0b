"""`metaland launch` (issue 24): the waves it plans from DVC's DAG, the sbatch options it derives from the
params, the checks before it submits, and, on a real one-node SLURM cluster on loopback
(cluster/slurm.sh), the whole ci profile built by job arrays in worker clones with one training job
requeued mid-way, after which the head's `dvc repro` reruns no job stage and equals a local build; the same
on a Ray cluster of two nodes, with one training task killed mid-way. Both cluster tests (xdist group
``launch``) compare with the session's one reference ci build (tests/pipeline.py::ci_reference), which the
DAG tests' build usually provides.

The cluster test needs root and Debian's slurmctld/slurmd/munge (cluster/slurm.sh installs them); it is
skipped, saying why, where that is impossible, and METALAND_REQUIRE_SLURM=1 (set by .ci/run) makes that
skip a failure.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from metaland.config import load_params
from metaland.errors import EXIT_LAUNCH
from metaland.launch import Wave, parse_dot, plan_waves
from metaland.launch.slurm import sbatch_header, sbatch_parameters
from metaland.launch.worker import WorkerSpec
from tests.pipeline import (
    BUILD_TIMEOUT_S,
    REPO,
    ci_checkout,
    ci_reference,
    free_port,
    head_commit,
    serving,
    sh,
    shared_folder,
    stages_run,
)

DOT = """strict digraph  {
"check-params";
"fetch@d";
"train@a";
"train@b";
"prepare@a";
"prepare@b";
"probe@a";
"probe@b";
"aggregate";
"check-params" -> "fetch@d";
"check-params" -> "train@a";
"fetch@d" -> "train@a";
"fetch@d" -> "train@b";
"train@a" -> "prepare@a";
"train@b" -> "prepare@b";
"prepare@a" -> "probe@a";
"prepare@b" -> "probe@b";
"fetch@d" -> "probe@a";
"probe@a" -> "aggregate";
"probe@b" -> "aggregate";
}
"""


def test_waves_are_fetch_then_train_then_probe_and_a_non_job_stage_is_built_inside_its_job():
    upstream = parse_dot(DOT)
    assert upstream["probe@a"] == {"prepare@a", "fetch@d"} and upstream["check-params"] == set()
    assert plan_waves(upstream) == [
        Wave(0, ("fetch@d",)),
        Wave(1, ("train@a", "train@b")),
        Wave(2, ("probe@a", "probe@b")),
    ]


def test_a_stage_glob_brings_the_job_stages_it_depends_on_and_nothing_else():
    upstream = parse_dot(DOT)
    assert plan_waves(upstream, "probe@b") == [Wave(0, ("fetch@d",)), Wave(1, ("train@b",)), Wave(2, ("probe@b",))]
    assert plan_waves(upstream, "train@*") == [Wave(0, ("fetch@d",)), Wave(1, ("train@a", "train@b"))]
    with pytest.raises(Exception, match=r"matches no job stage.*Fix:"):
        plan_waves(upstream, "aggregate")


def test_sbatch_options_come_from_the_launch_params_of_each_job_kind():
    launch = load_params(REPO / "profiles" / "paper.yaml").launch
    launch = launch.model_copy(update={"partition": "gpu", "account": "lab", "qos": "high", "constraint": "a100"})
    header = sbatch_header(sbatch_parameters(launch, "train", ["41", "42"]), 7, Path("/tmp/logs"))
    for option in (
        f"--array=0-6%{min(7, launch.array_parallelism)}",
        f"--cpus-per-task={launch.train.cpus}",
        f"--gpus-per-node={launch.train.gpus}",
        f"--mem={int(launch.train.mem_gb * 1024)}M",
        f"--time={launch.train.time_min}",
        "--dependency=afterok:41:42",
        "--partition=gpu",
        "--account=lab",
        "--qos=high",
        "--constraint=a100",
        "--requeue",
        "--signal=USR2@90",
    ):
        assert f"#SBATCH {option}" in header, option
    fetch = sbatch_header(sbatch_parameters(launch, "fetch", []), 3, Path("/tmp/logs"))
    assert "--gpus-per-node" not in fetch and "--dependency" not in fetch and "--partition=gpu" in fetch


def test_worker_spec_round_trips_and_names_its_clone_and_marker():
    spec = WorkerSpec("/repo", "a" * 40, "train@x-s0", "/work", "/cache", None, 2)
    assert WorkerSpec.from_json(spec.to_json()) == spec
    assert spec.clone == Path("/work/clones/train--x-s0")
    assert spec.done == Path(f"/work/done/train--x-s0.{'a' * 12}")


def test_a_job_runs_its_stages_with_its_own_interpreter_and_a_ray_task_gets_the_heads_settings(monkeypatch):
    """A scheduler may start a job with another PATH (a Ray task gets `ray start`'s environment): the stages'
    `python` must still be the job's interpreter, and the head's tracking, data and DVC settings reach the task."""
    from metaland.launch.ray_cluster import forwarded_env
    from metaland.launch.worker import job_environment

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://head:5000")
    monkeypatch.setenv("METALAND_DATA_MIRROR", "/shared/datasets")
    monkeypatch.setenv("UNRELATED_SETTING", "x")
    python = shutil.which("python", path=job_environment()["PATH"])
    assert python is not None and Path(python).parent == Path(sys.executable).parent
    forwarded = forwarded_env()
    assert (
        forwarded["MLFLOW_TRACKING_URI"] == "http://head:5000"
        and forwarded["METALAND_DATA_MIRROR"] == "/shared/datasets"
    )
    assert "UNRELATED_SETTING" not in forwarded and "PATH" not in forwarded


def test_a_jobs_stages_run_with_as_many_torch_threads_as_the_job_has_cpus():
    """A stage's floats depend on its thread count: every executor gives a job its kind's `cpus` threads."""
    from metaland.launch.worker import job_environment

    code = "import torch; print(torch.get_num_threads())"
    ran = subprocess.run([sys.executable, "-c", code], env=job_environment(1), capture_output=True, text=True)
    assert ran.stdout.strip() == "1", ran.stderr
    assert job_environment(None).get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")  # none: left as is


@pytest.fixture(scope="module")
def ci_repo(tmp_path_factory, omniglot_mirror):
    return ci_checkout(tmp_path_factory.mktemp("launch") / "repo", omniglot_mirror, job_threads=True)


def metaland(args: list[str], cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metaland", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_dry_run_on_the_paper_profile_prints_every_wave_and_submits_nothing(ci_repo, tmp_path):
    """Without SLURM on PATH: nothing can be submitted, and nothing is."""
    work, env = ci_repo
    sh([sys.executable, "-m", "metaland", "profile", "paper", "--force"], work, env)
    try:
        paper = load_params(work / "params.yaml")
        no_slurm = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin"}
        shutil.rmtree(work / ".metaland" / "launch", ignore_errors=True)
        result = metaland(["launch", "--dry-run", "--executor", "slurm"], work, no_slurm)
    finally:
        sh([sys.executable, "-m", "metaland", "profile", "ci", "--force"], work, env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    runs, datasets = len(paper.runs), len(paper.datasets)
    assert f"{datasets + 2 * runs} job(s) in 3 wave(s)" in out
    assert f"wave 0: fetch array of {datasets} job(s)" in out
    assert f"wave 1: train array of {runs} job(s)" in out and f"wave 2: probe array of {runs} job(s)" in out
    assert out.count("#SBATCH --dependency=afterok:wave") == 2
    assert f"#SBATCH --time={paper.launch.train.time_min}" in out and "#SBATCH --gpus-per-node=1" in out
    assert "submitted array" not in out and not (work / ".metaland" / "launch").exists()


def test_launch_refuses_uncommitted_changes_and_a_missing_tracking_server(ci_repo):
    work, env = ci_repo
    params = work / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("seed_offset: 0", "seed_offset: 1"))
    try:
        result = metaland(["launch", "--executor", "local"], work, env)
    finally:
        params.write_text(original)
    assert result.returncode == EXIT_LAUNCH
    assert "uncommitted changes (params.yaml)" in result.stderr and "Fix: commit them" in result.stderr
    result = metaland(["launch", "--executor", "local"], work, {**env, "MLFLOW_TRACKING_URI": "sqlite:///x.db"})
    assert result.returncode == EXIT_LAUNCH
    assert "one MLflow tracking server" in result.stderr and "Fix: start one" in result.stderr


def test_a_failed_local_job_names_its_log_and_stops_the_later_waves(ci_repo, tmp_path):
    """A job that cannot build its stage (its dataset's mirror is gone) fails the launch with status 8, naming
    the job and its log; no train job starts."""
    work, env = ci_repo
    with mlflow_server(tmp_path, env) as url:
        broken = {**env, "MLFLOW_TRACKING_URI": url, "METALAND_DATA_MIRROR": str(tmp_path)}
        result = metaland(
            ["launch", "--executor", "local", "--stages", "train@sharpmaml-*", "--workdir", str(tmp_path / "w"),
             "--cache", str(tmp_path / "cache")],
            work, broken,
        )  # fmt: skip
    assert result.returncode == EXIT_LAUNCH, result.stdout + result.stderr
    assert "job(s) of wave 0 failed: fetch@omniglot-small" in result.stderr
    assert "Later waves were not started" in result.stderr
    assert not (tmp_path / "w" / "clones" / "train--sharpmaml-maml-omniglot-small-5w1s-s0").exists()


@contextlib.contextmanager
def mlflow_server(folder: Path, env: dict) -> Iterator[str]:
    """One MLflow server on 127.0.0.1 for every job (SQLite behind the single server process); its URL."""
    port = free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "server", "--backend-store-uri", f"sqlite:///{folder}/server.db", "--artifacts-destination",
               str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    server_env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with serving(command, port, folder / "server.log", folder, server_env) as url:
        yield url


# ----------------------------------------------------------------------------------------------
# A real SLURM cluster on loopback
# ----------------------------------------------------------------------------------------------

SLURM_SCRIPT = REPO / "cluster" / "slurm.sh"


@pytest.fixture(scope="module")
def slurm_cluster():
    """A one-node SLURM cluster (cluster/slurm.sh), its SLURM_CONF; stopped after the module."""
    why = None
    if os.geteuid() != 0:
        why = "starting SLURM daemons needs root"
    elif shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        why = "no SLURM and no apt-get to install it"
    if why:
        if os.environ.get("METALAND_REQUIRE_SLURM") == "1":
            pytest.fail(f"METALAND_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    result = subprocess.run(["sh", str(SLURM_SCRIPT), "start"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    conf = re.search(r"export SLURM_CONF=(\S+)", result.stdout).group(1)
    yield conf
    subprocess.run(["sh", str(SLURM_SCRIPT), "stop"], capture_output=True, timeout=60)


def _training_mid_way(clones: Path) -> Iterator[str]:
    """Runs whose training job's clone holds a checkpoint after the initial one but no finished run."""
    for clone in sorted(clones.glob("train--*")):
        run = clone.name.split("--", 1)[1]
        checkpoints = (clone / ".metaland" / "train" / run).glob("**/step-*.safetensors")
        if any(p.stem != "step-00000000" for p in checkpoints) and not (clone / "runs" / run).exists():
            yield run


def _requeue_a_training_job_mid_way(work: Path, env: dict, done: threading.Event) -> list[str]:
    """Wait for a training job mid-way; requeue it (SLURM kills it and starts it again). Returns the stages
    requeued."""
    clones = work / ".metaland" / "launch" / "clones"
    deadline = time.monotonic() + 900
    while not done.is_set() and time.monotonic() < deadline:
        for run in _training_mid_way(clones):
            queue = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], env=env, capture_output=True, text=True)
            for line in queue.stdout.splitlines():
                job, name, state = line.split()
                if name == "metaland-train" and state == "RUNNING" and _job_builds(work, job, run):
                    subprocess.run(["scontrol", "requeue", job], env=env, check=True)
                    return [f"train@{run}"]
        time.sleep(0.2)
    return []


def _job_builds(work: Path, job: str, run: str) -> bool:
    log = work / ".metaland" / "launch" / "logs" / "slurm" / f"{job}_0_log.out"
    return log.is_file() and f"metaland launch: job train@{run} in" in log.read_text(errors="replace")


@pytest.mark.slurm
@pytest.mark.xdist_group("launch")
def test_slurm_builds_the_ci_profile_in_worker_clones_and_the_head_reruns_no_job_stage(
    slurm_cluster, ci_repo, reference_build, tmp_path
):
    work, env = ci_repo
    env = {**env, "SLURM_CONF": slurm_cluster}
    with mlflow_server(tmp_path, env) as url:
        env["MLFLOW_TRACKING_URI"] = url
        done = threading.Event()
        result: dict = {}

        def head():
            result["run"] = metaland(["launch", "--executor", "slurm"], work, env, timeout=3000)
            done.set()

        thread = threading.Thread(target=head)
        thread.start()
        requeued = _requeue_a_training_job_mid_way(work, env, done)
        thread.join()
    launched = result["run"]
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert requeued, "no training job was caught mid-way to requeue"
    run = requeued[0].split("@", 1)[1]
    logs = (work / ".metaland" / "launch" / "logs" / "slurm").glob("*_log.out")
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    assert f"trained {run}" in text and f"{run}: " in text and "resumed from step" in text
    assert_the_head_ran_no_job_stage(launched, work, env)
    assert_same_build(work, reference_build())


@pytest.fixture(scope="module")
def reference_build(ci_repo, tmp_path_factory) -> Callable[[], Path]:
    """The session's reference ci build (dvc.lock and results/), which every executor's build must equal: the one
    the ``ci_pipeline`` fixture kept (same commit, same threads: tests/pipeline.py::ci_checkout), or, where no
    worker built it, a `dvc repro` of a clone of the launch tests' commit. Called once the cluster has built."""
    work, env = ci_repo

    @functools.cache
    def build() -> Path:
        local = tmp_path_factory.mktemp("local") / "repo"
        sh(["git", "clone", "-q", str(work), str(local)], local.parent, env)
        sh(["dvc", "repro"], local, env, timeout=BUILD_TIMEOUT_S)
        return local

    return lambda: ci_reference(shared_folder(tmp_path_factory), head_commit(work), build)


def assert_same_build(work: Path, local: Path) -> None:
    """Every job stage's outputs have the same hashes (dvc.lock), and every result file the same bytes, as in
    ``local`` (a build's dvc.lock and results/), but for the MLflow run ids claims.json links to (each store has
    its own)."""
    head_lock = lock_stages(work)
    jobs = sorted(s for s in head_lock if s.split("@")[0] in ("check-params", "fetch", "train", "probe"))
    config = load_params(work / "params.yaml")
    built = {f"{kind}@{run}" for run in config.runs for kind in ("train", "probe")}
    assert {"check-params", *(f"fetch@{d}" for d in config.datasets), *built} <= set(jobs)
    assert_same_lock_entries(work, local, jobs)
    files = sorted(p.relative_to(work) for p in (work / "results").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(local) for p in (local / "results").rglob("*") if p.is_file())
    for path in files:
        if path.name != "claims.json":
            assert (work / path).read_bytes() == (local / path).read_bytes(), path
    claims = [json.loads((d / "results" / "claims.json").read_text()) for d in (work, local)]
    for record in claims:
        for claim in record["claims"]:
            claim.pop("mlflow")
    assert claims[0] == claims[1]


def lock_stages(checkout: Path) -> dict:
    return yaml.safe_load((checkout / "dvc.lock").read_text())["stages"]


def assert_same_lock_entries(work: Path, local: Path, stages) -> None:
    """The stages' dvc.lock entries (the hashes of their deps, params and outputs) are the same in both checkouts."""
    head_lock, local_lock = lock_stages(work), lock_stages(local)
    assert {s: head_lock[s] for s in stages} == {s: local_lock[s] for s in stages}


def assert_the_head_ran_no_job_stage(
    launched: subprocess.CompletedProcess, work: Path, env: dict, targets: tuple[str, ...] = ()
) -> None:
    """The head's closing `dvc repro` restored every job stage from the run-cache, and `dvc status` (of
    ``targets``, or of everything) is clean."""
    assert "fetch/train/probe (0 when" in launched.stdout and ", 0 of them" in launched.stdout
    head_ran = stages_run(launched.stdout)
    assert not [s for s in head_ran if s.split("@")[0] in ("fetch", "train", "probe")], head_ran
    status = sh(["dvc", "status", *targets], work, env)
    assert "up to date" in status, status


# ----------------------------------------------------------------------------------------------
# A real Ray cluster of two nodes on loopback
# ----------------------------------------------------------------------------------------------

RAY_NODE_IP = "127.0.0.2"
"""The cluster's loopback address: Ray rewrites 127.0.0.1 in an address to the default route's interface address."""


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A Ray cluster of two nodes on loopback (``ray.cluster_utils.Cluster``), one CPU and one logical GPU each; its
    address. Skipped, saying why, without the ray extra, unless METALAND_REQUIRE_RAY=1 (.ci/run)."""
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        why = "Ray is not installed (`make ray`, or pip install 'metaland[ray]')"
        if os.environ.get("METALAND_REQUIRE_RAY") == "1":
            pytest.fail(f"METALAND_REQUIRE_RAY=1 but {why}")
        pytest.skip(why)
    node = {"num_cpus": 1, "num_gpus": 1, "node_ip_address": RAY_NODE_IP}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        try:
            cluster.add_node(**node)
            cluster.wait_for_nodes()
            yield cluster.address
        finally:
            cluster.shutdown()


def _kill_a_ray_training_task_mid_way(jobs: Path, done: threading.Event) -> list[str]:
    """Wait for a training job mid-way; kill its Ray worker process and every process under it at once, as the
    loss of its node would (Ray then runs the task again). Returns the stages killed."""
    import psutil

    deadline = time.monotonic() + 900
    while not done.is_set() and time.monotonic() < deadline:
        for run in _training_mid_way(jobs / "clones"):
            spec = f'"stage": "train@{run}"'
            for process in psutil.process_iter(["cmdline"]):
                command = process.info["cmdline"] or []
                if "launch-worker" in command and spec in command[-1]:
                    worker = process.parent()
                    tree = [worker, *worker.children(recursive=True)]
                    for act in ("suspend", "kill"):  # frozen first: no process of the job outlives another
                        for victim in tree:
                            with contextlib.suppress(psutil.NoSuchProcess):
                                getattr(victim, act)()
                    return [f"train@{run}"]
        time.sleep(0.2)
    return []


@pytest.mark.ray
@pytest.mark.xdist_group("launch")
def test_ray_builds_the_ci_profile_on_both_nodes_and_the_head_reruns_no_job_stage(
    ray_address, ci_repo, reference_build, tmp_path
):
    """The head is a clone of the launch tests' commit with a DVC cache of its own, so no job finds another test's
    outputs in the run-cache; each job runs as a Ray task in its own clone, with the head's settings (the tracking
    server) though the cluster was started without them. One training task is killed mid-way with its worker
    process: Ray runs it again, and it resumes in its clone. The head's `dvc repro` then runs no job stage, and
    the build equals a local `dvc repro` of the same commit."""
    origin, env = ci_repo
    work, jobs = tmp_path / "head", tmp_path / "jobs"
    sh(["git", "clone", "-q", str(origin), str(work)], tmp_path, env)
    env = {**env, "RAY_ADDRESS": ray_address, "METALAND_RAY_NODE_IP": RAY_NODE_IP, "RAY_USAGE_STATS_ENABLED": "0"}
    with mlflow_server(tmp_path, env) as url:
        env["MLFLOW_TRACKING_URI"] = url
        done = threading.Event()
        result: dict = {}

        def head():
            result["run"] = metaland(["launch", "--executor", "ray", "--workdir", str(jobs)], work, env, timeout=3000)
            done.set()

        thread = threading.Thread(target=head)
        thread.start()
        killed = _kill_a_ray_training_task_mid_way(jobs, done)
        thread.join()
    launched = result["run"]
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert killed, "no training task was caught mid-way to kill"
    config = load_params(work / "params.yaml")
    count = len(config.datasets) + 2 * len(config.runs)
    assert f"{count} job(s) in 3 wave(s) on ray" in launched.stdout
    logs = {p.stem.replace("--", "@"): p.read_text(errors="replace") for p in (jobs / "logs").glob("*.log")}
    assert len(logs) == count
    nodes = {node for log in logs.values() for node in re.findall(r"ray task on node (\w+)", log)}
    assert len(nodes) == 2, "the jobs ran on both nodes"
    retried = logs[killed[0]]
    assert retried.count("ray task on node") == 2 and "resumed from step" in retried, retried[-3000:]
    assert_the_head_ran_no_job_stage(launched, work, env)
    assert_same_build(work, reference_build())
