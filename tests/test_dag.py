"""The whole DVC pipeline on the ci profile, in a fresh copy of the repository.

Checks what a user relies on: `dvc repro` builds every output from the raw archives, logs every
stage to MLflow, does nothing the second time, and after a change to one probe knob reruns only
probe -> aggregate -> plot.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.pipeline import BUILD_TIMEOUT_S, CHECK_PARAMS, sh, stages_run

REPO = Path(__file__).resolve().parents[1]
CI_RUNS = yaml.safe_load((REPO / "profiles" / "ci.yaml").read_text())["runs"]
RUNS = sorted(CI_RUNS)
QUEUE_TIMEOUT_S = 600
"""A queued experiment of the ci profile ends in about 130 s on 2 cores; past this, the test fails with its logs."""
CI_STUDIES = yaml.safe_load((REPO / "profiles" / "ci.yaml").read_text())["studies"]
CI_DATASETS = sorted(yaml.safe_load((REPO / "profiles" / "ci.yaml").read_text())["datasets"])
STUDIES_IN_CI = {study: sorted(r for r in RUNS if CI_RUNS[r]["study"] == study) for study in CI_STUDIES}
GUIROY_RUNS = STUDIES_IN_CI["guiroy2019"]


def train_setting(run: str, key: str):
    """A train knob of a ci run: its own override, else its study's default."""
    own = CI_RUNS[run].get("train", {})
    return own.get(key, CI_STUDIES[CI_RUNS[run]["study"]]["defaults"]["train"][key])


def iterations(run: str) -> int:
    return train_setting(run, "iterations")


def extracted_steps(run: str, work: Path | None = None) -> list[int]:
    """What extract keeps on the ci profile: every checkpoint (guiroy2019), the final one, or the best
    on validation accuracy, read from the run's checkpoint sidecars in ``work`` (ding2023)."""
    rule = CI_STUDIES[CI_RUNS[run]["study"]]["extract"]
    if rule["every"]:
        return list(range(0, iterations(run) + 1, train_setting(run, "checkpoint_every")))
    if rule["final"]:
        return [iterations(run)]
    sidecars = [json.loads(p.read_text()) for p in (work / "runs" / run / "ckpt").glob("step-*.json")]
    best = max(sidecars, key=lambda c: (c["metrics"]["val/query_accuracy"], -c["step"]))
    return [best["step"]]


pytestmark = [pytest.mark.dag, pytest.mark.xdist_group("dag")]


@pytest.fixture(scope="module")
def pipeline(ci_pipeline):
    """The ci-profile build shared with the other tests of xdist group "dag" (conftest.py)."""
    return ci_pipeline


def test_repro_builds_every_output(pipeline):
    work, _, log = pipeline
    assert sorted(stages_run(log)) == sorted(
        [
            CHECK_PARAMS,
            *(f"fetch@{d}" for d in CI_DATASETS),
            *(f"{s}@{r}" for s in ("train", "probe") for r in RUNS),
            "aggregate",
            "plot",
        ]
    )
    from metaland.claims import claims_of
    from metaland.studies import STUDIES

    metrics = json.loads((work / "results" / "metrics.json").read_text())
    page = (work / "report" / "index.html").read_text()
    assert sorted(metrics) == sorted(STUDIES_IN_CI)
    for study, runs in STUDIES_IN_CI.items():
        figures = sorted(p.name for p in (work / "figures" / study).glob("*.png"))
        assert figures == sorted(f"{f.name}.png" for f in STUDIES.get(study).figures)
        assert all((work / "figures" / study / f).stat().st_size > 10_000 for f in figures)
        assert all(f"{study}/{name}" in page for name in figures)
        assert sorted(metrics[study]) == runs
        for run, values in metrics[study].items():
            assert 0 <= values["query_accuracy"] <= 1 and values["step"] == iterations(run)
        for table in STUDIES.get(study).tables:
            assert (work / "results" / study / f"{table.name}.csv").stat().st_size > 0
            assert html.escape(table.caption) in page
    claims = json.loads((work / "results" / "claims.json").read_text())
    assert sorted(c["id"] for c in claims["claims"]) == sorted(c.id for s in STUDIES_IN_CI for c in claims_of(s))
    assert {c["verdict"] for c in claims["claims"]} <= {"holds", "fails", "inconclusive"}
    assert sum(claims["counts"].values()) + sum(claims["checks"].values()) == len(claims["claims"])
    assert all(html.escape(claim["claim"].split(",")[0][:40]) in page for claim in claims["claims"])
    for run in RUNS:
        assert (work / "probes" / run / "tasks.json").is_file()
        manifest = json.loads((work / "checkpoints" / run / "manifest.json").read_text())
        assert [c["step"] for c in manifest["checkpoints"]] == extracted_steps(run, work)
    grids = (work / "probes" / "sharpmaml-both-omniglot-small-5w1s-s0" / "grids.csv").read_text().splitlines()
    assert grids[0] == "run,step,grid,direction_seed,x,y,value" and len(grids) == 1 + 3 * 3


def test_every_stage_is_an_mlflow_run(pipeline):
    work, _, _ = pipeline
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    assert {"metaland/data", *(f"metaland/{s}" for s in STUDIES_IN_CI), "metaland/results"} <= set(experiments)
    every_run = client.search_runs(list(experiments.values()))
    parents = {r.info.run_id: r for r in every_run if r.data.tags["metaland.stage"] == "pipeline"}
    runs = [r for r in every_run if r.info.run_id not in parents]
    stages = sorted(r.data.tags["metaland.stage"] for r in runs)
    # the probe stage writes two runs: extract (its checkpoints, logged as models), then probe
    assert stages == sorted(
        ["fetch"] * len(CI_DATASETS) + ["aggregate", "plot", *["train", "extract", "probe"] * len(RUNS)]
    )
    # One `dvc repro` built everything: one parent run per experiment, every stage run nested in it.
    assert sorted(r.info.experiment_id for r in parents.values()) == sorted({r.info.experiment_id for r in runs})
    for run in runs:
        parent = parents[run.data.tags["mlflow.parentRunId"]]
        assert parent.info.experiment_id == run.info.experiment_id and parent.info.status == "FINISHED"
        assert parent.info.run_name.startswith("dvc repro · ")
    for run in runs:
        assert run.info.status == "FINISHED"
        assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["git.commit"])
    train = [r for r in runs if r.data.tags["metaland.stage"] == "train"]
    for run in train:
        key = run.data.tags["metaland.run_key"]
        steps = train_setting(key, "inner_steps")
        assert run.data.params["train.inner_steps"] == str(steps) and run.data.tags["metaland.params_hash"]
        pretraining = run.data.params["algorithm"] in ("finetune", "transfer")  # supervised batches
        loss = "train/batch_loss" if pretraining else "train/query_loss"
        every = train_setting(key, "log_every")
        logged = list(range(every, iterations(key) + 1, every))
        assert [m.step for m in client.get_metric_history(run.info.run_id, loss)] == logged
        timing = client.get_metric_history(run.info.run_id, "train/seconds_per_iteration")
        assert [m.step for m in timing] == logged and all(m.value > 0 for m in timing)
        assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} >= {
            f"checkpoints/step-{iterations(key):08d}.safetensors"
        }
    for probe in (r for r in runs if r.data.tags["metaland.stage"] == "probe"):
        key = probe.data.tags["metaland.run_key"]
        steps = [m.step for m in client.get_metric_history(probe.info.run_id, "probe/query_accuracy")]
        assert steps == extracted_steps(key, work)
    for study, study_runs in STUDIES_IN_CI.items():
        models = client.search_logged_models([experiments[f"metaland/{study}"]])
        assert len(models) == sum(len(extracted_steps(r, work)) for r in study_runs)
        assert all(m.status.name == "READY" for m in models)


def test_second_repro_does_nothing(pipeline):
    work, env, _ = pipeline
    log = sh(["dvc", "repro"], work, env)
    assert stages_run(log) == [] and "Data and pipelines are up to date." in log


def test_bytecode_beside_the_code_changes_no_stage(pipeline):
    """Python writes __pycache__ into the checkout's package when a stage imports it (an editable
    install of the clone): .dvcignore keeps it out of every code dependency's hash."""
    work, env, _ = pipeline
    cache = work / "metaland" / "probes" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "hessian.cpython-311.pyc").write_bytes(b"bytecode")
    try:
        assert "Data and pipelines are up to date." in sh(["dvc", "status"], work, env)
    finally:
        shutil.rmtree(cache)


def test_dvc_metrics_show_fits_a_screen_with_a_row_per_study_and_per_run(pipeline):
    work, env, _ = pipeline
    lines = [line for line in sh(["dvc", "metrics", "show"], work, env).splitlines() if line.strip()]
    assert max(len(line) for line in lines) < 200, lines[0]
    header, rows = lines[0].split(), {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == {f"results/headline/claims/{s}.json" for s in STUDIES_IN_CI} | {
        f"results/headline/runs/{r}.json" for r in RUNS
    }
    counts = json.loads((work / "results" / "claims.json").read_text())["by_study"]
    for study, verdicts in counts.items():
        shown = dict(zip(header[1:], rows[f"results/headline/claims/{study}.json"], strict=True))
        assert {k: int(shown[k]) for k in ("holds", "fails", "inconclusive")} == verdicts["findings"]


def test_dvc_plots_draw_every_runs_training_and_probed_accuracy_as_lines(pipeline):
    work, env, _ = pipeline
    shown = json.loads(sh(["dvc", "plots", "show", "--json"], work, env).splitlines()[-1])["data"]
    for kind in ("train", "probe"):
        for run in RUNS:
            (plot,) = shown[f"results/curves/{kind}/{run}.csv"]
            spec = json.dumps(plot["content"])
            assert plot["type"] == "vega" and '"mark": "line"' in spec and '"field": "query_accuracy"' in spec


def test_no_figure_has_text_running_into_other_text_or_off_the_figure(pipeline, tmp_path, caplog):
    """Every figure of the build drawn again: metaland.plots.save warns about each overlap."""
    from metaland.config import load_params
    from metaland.report import plot_all

    work, _, _ = pipeline
    with caplog.at_level(logging.WARNING, logger="metaland.plots"):
        drawn = plot_all(load_params(work / "params.yaml"), work / "results", tmp_path / "figures")
    assert len(drawn) > 10 and [r.getMessage() for r in caplog.records] == []


def test_a_misspelt_block_stops_repro_before_any_stage_and_says_how_to_fix_it(pipeline):
    """DVC reruns only stages whose tracked keys changed: without the check-params stage, which
    tracks the whole file, an unknown block (`run:` for `runs:`) would be "up to date", exit 0."""
    work, env, _ = pipeline
    valid = (work / "params.yaml").read_text()
    try:
        (work / "params.yaml").write_text(valid + "run:\n  seeds: 5\n")
        result = subprocess.run(["dvc", "repro"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        log = result.stdout + result.stderr
        assert result.returncode != 0 and stages_run(log) == [CHECK_PARAMS], log
        assert "metaland: error: params.yaml: run is not a known parameter. Did you mean 'runs'?" in log
    finally:
        (work / "params.yaml").write_text(valid)
    log = sh(["dvc", "repro"], work, env)
    assert stages_run(log) == [] and f"Stage '{CHECK_PARAMS}' is cached" in log, log


def test_an_experiment_reruns_only_what_its_change_touches_and_is_listed(pipeline):
    """`dvc exp run -S` in the workspace; the build of the committed params is restored afterwards."""
    work, env, _ = pipeline
    # not the knob test's 12, whose rerun DVC's run-cache would then serve
    knob = "studies.guiroy2019.probe.probes.curvature.max_iters=14"
    try:
        log = sh(["dvc", "exp", "run", "-n", "fewer-lanczos-steps", "-S", knob], work, env)
        assert sorted(stages_run(log)) == sorted(
            [CHECK_PARAMS, *(f"probe@{r}" for r in GUIROY_RUNS), "aggregate", "plot"]
        )
        assert "fewer-lanczos-steps" in sh(["dvc", "exp", "list"], work, env)
    finally:
        sh(["git", "checkout", "--", "params.yaml"], work, env)
    back = sh(["dvc", "repro"], work, env)
    assert stages_run(back) == [], "the build of the committed params comes back from DVC's run-cache"


def start_queue(work: Path, env: dict) -> None:
    """`dvc queue start`, its output to a file: the worker process it forks (dvc_task's ManagedProcess)
    inherits its standard streams and holds them as long as it lives, so a pipe would not reach its end
    before the worker exits, and the wait below could not report what the worker was doing."""
    output = work / ".dvc" / "tmp" / "queue-start.log"
    with output.open("w") as out:
        started = subprocess.run(["dvc", "queue", "start"], cwd=work, env=env, stdout=out, stderr=out, timeout=120)
    assert started.returncode == 0, output.read_text()


def wait_for_experiment(work: Path, env: dict, name: str) -> str:
    """`dvc queue status` once experiment ``name`` has ended; past :data:`QUEUE_TIMEOUT_S`, stop the queue
    (its worker would hold a core for the rest of the session) and fail with the queue's status, the
    experiment's log and the worker's log."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while not re.search(rf"{name}\s.*\b(Success|Failed)\b", status := sh(["dvc", "queue", "status"], work, env)):
        if time.monotonic() > deadline:
            logs = subprocess.run(["dvc", "queue", "logs", name], cwd=work, env=env, capture_output=True, text=True)
            workers = "\n".join(
                f"--- {path.name}\n{path.read_text(errors='replace')[-6000:]}"
                for path in (work / ".dvc" / "tmp" / "exps" / "celery").glob("*.out")
            )
            subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=work, env=env, capture_output=True, timeout=120)
            pytest.fail(
                f"the queued experiment did not end in {QUEUE_TIMEOUT_S} s:\n{status}\n"
                f"--- dvc queue logs {name}\n{(logs.stdout + logs.stderr)[-6000:]}\n{workers}"
            )
        time.sleep(5)
    return status


def test_a_queued_experiment_runs_in_the_background_and_logs_to_the_checkouts_store(pipeline):
    """`dvc exp run --queue -S` then `dvc queue start`: the experiment runs in a temporary copy of the
    committed workspace, where what its change does not touch comes back from DVC's run-cache; with
    MLFLOW_TRACKING_URI naming the checkout's store, its stage runs land there, tagged with the
    experiment's name and nested under the parent run of its execution."""
    from mlflow import MlflowClient

    work, env, _ = pipeline
    store = f"sqlite:///{work / 'mlflow.db'}"
    shared = {**env, "MLFLOW_TRACKING_URI": store}
    knob = "studies.guiroy2019.probe.probes.curvature.max_iters=16"  # no other test's value: no run-cache hit
    sh(["dvc", "exp", "run", "--queue", "-n", "queued-lanczos", "-S", knob], work, shared)
    start_queue(work, shared)
    status = wait_for_experiment(work, env, "queued-lanczos")
    log = sh(["dvc", "queue", "logs", "queued-lanczos"], work, env)
    assert re.search(r"queued-lanczos\s.*\bSuccess\b", status), log[-4000:]
    assert sorted(stages_run(log)) == sorted([CHECK_PARAMS, *(f"probe@{r}" for r in GUIROY_RUNS), "aggregate", "plot"])
    assert "queued-lanczos" in sh(["dvc", "exp", "list"], work, env)

    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.`metaland.dvc_exp` = 'queued-lanczos'")
    reran = [f"{kind}@{r}" for r in GUIROY_RUNS for kind in ("extract", "probe")]  # probe@ logs both runs
    assert sorted(r.info.run_name for r in runs) == sorted([*reran, "aggregate", "plot"])
    for run in runs:
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.info.run_name.startswith("dvc exp run (queued-lanczos) · ") and parent.info.status == "FINISHED"
    assert sh(["git", "status", "--porcelain", "params.yaml"], work, env) == "", "the workspace is left alone"


def test_changing_a_probe_knob_reruns_only_what_depends_on_it(pipeline):
    """An edit of params.yaml changes check-params; once it has run (it writes each stage's keys,
    metaland.stage_params), `dvc status` names exactly the stages whose keys changed."""
    work, env, _ = pipeline
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["studies"]["guiroy2019"]["probe"]["probes"]["curvature"]["max_iters"] = 12
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(sh(["dvc", "status", "--json"], work, env).splitlines()[-1])
    assert sorted(status) == [CHECK_PARAMS]
    assert stages_run(sh(["dvc", "repro", CHECK_PARAMS], work, env)) == [CHECK_PARAMS]
    status = json.loads(sh(["dvc", "status", "--json"], work, env).splitlines()[-1])
    assert sorted(status) == sorted([*(f"probe@{r}" for r in GUIROY_RUNS), "aggregate"])
    log = sh(["dvc", "repro"], work, env)
    assert sorted(stages_run(log)) == sorted([*(f"probe@{r}" for r in GUIROY_RUNS), "aggregate", "plot"])


def test_forced_rerun_from_scratch_gives_the_same_bytes(pipeline):
    """`dvc repro --force` after deleting the training runs and the probe cache rebuilds every
    output byte for byte: dvc.lock (which hashes every output: data, checkpoints, probe tables,
    results, figures, report) does not change."""
    work, env, _ = pipeline
    sh(["git", "checkout", "--", "params.yaml"], work, env)  # undo the probe-knob test's edit
    sh(["dvc", "repro"], work, env)
    first = (work / "dvc.lock").read_text()  # same commit for both builds: the report records it
    shutil.rmtree(work / "runs")
    shutil.rmtree(work / ".metaland", ignore_errors=True)
    log = sh(["dvc", "repro", "--force"], work, env, timeout=BUILD_TIMEOUT_S)
    assert set(stages_run(log)) >= {f"train@{r}" for r in RUNS} | {"aggregate", "plot"}
    assert (work / "dvc.lock").read_text() == first


def test_paper_profile_dry_run_lists_every_run_of_the_seeds(tmp_path):
    """`dvc repro --dry --force` on the paper profile names every stage without running one.

    (`--force` skips DVC's run-cache lookup, which would hash the not-yet-fetched datasets.)"""
    for name in ("dvc.yaml", ".dvc/config", ".dvcignore"):
        if (REPO / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tmp_path / name)
    shutil.copy2(REPO / "profiles" / "paper.yaml", tmp_path / "params.yaml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    sh(["git", "init", "-q"], tmp_path, env)
    stages = stages_run(sh(["dvc", "repro", "--dry", "--force"], tmp_path, env))
    runs = yaml.safe_load((REPO / "profiles" / "paper.yaml").read_text())["runs"]
    for kind in ("train", "probe"):  # a probe stage extracts its run's checkpoints first
        assert sorted(s for s in stages if s.startswith(f"{kind}@")) == sorted(f"{kind}@{r}" for r in runs)
    datasets = yaml.safe_load((REPO / "profiles" / "paper.yaml").read_text())["datasets"]
    assert {f"fetch@{d}" for d in datasets} | {"aggregate", "plot"} <= set(stages)
    assert {"fetch@tieredimagenet", "fetch@cars", "fetch@cifar-fs", "fetch@miniimagenet-224", "fetch@cub-224"} <= set(
        stages
    )
    assert stages[0] == CHECK_PARAMS and len(stages) == 1 + 2 * len(runs) + len(datasets) + 2
    counts = {(r["algorithm"], r["dataset"]) for r in runs.values()}
    assert counts == {
        *((a, "omniglot") for a in ("maml", "fomaml", "regmaml", "metasgd", "metacurvature", "klin", "kfc")),
        *((a, "miniimagenet") for a in ("maml", "fomaml", "finetune", "sharpmaml", "lil", "lil-pretrain", "transfer")),
        *((a, "miniimagenet") for a in ("metasgd", "metacurvature", "kfc")),  # seed 003 Table 2's row
        *((a, "cub") for a in ("fomaml", "transfer", "lil", "lil-pretrain")),
        *((a, d) for a in ("fomaml", "transfer") for d in ("miniimagenet-224", "cub-224")),  # seed 001's ResNets
        *((a, d) for a in ("lil", "lil-pretrain") for d in ("tieredimagenet", "cars")),  # seed 004 Tables 1-5
        *((a, "cifar-fs") for a in ("maml", "metasgd", "metacurvature", "kfc")),  # seed 003 Table A1, Table 2
        *((a, "synthetic-binary") for a in ("maml", "klin", "kfc")),
    }
