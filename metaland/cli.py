"""``python -m metaland`` — one command per DVC stage, plus the UI, a doctor, profiles and a results comparison.

The DVC stages (``stages/*.py``) call these commands, so ``dvc repro`` and a hand-run command do
exactly the same thing. Every command reads ``params.yaml`` through ``metaland.config`` and stops
with a one-paragraph message and the exit status of its kind (``metaland.errors``) on any error a
user or the machine can cause, leaving no half-written output. SIGTERM and SIGHUP stop a command
as Ctrl-C does: its MLflow run ends KILLED and it exits with 128 + the signal's number.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from metaland import __version__
from metaland.container import container
from metaland.errors import (
    EXIT_SIGNAL_BASE,
    EXIT_STATUSES,
    ConfigError,
    DataError,
    Interrupted,
    MetalandError,
    system_error,
)

PARAMS = click.option(
    "--params",
    "params_path",
    default="params.yaml",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Params file (see `metaland params`).",
)


def _dir(name: str, default: str, help_text: str):
    return click.option(
        f"--{name}-dir",
        f"{name}_dir",
        default=default,
        show_default=True,
        type=click.Path(path_type=Path),
        help=help_text,
    )


DATA_DIR = _dir("data", "data", "Normalised datasets (fetch output).")
RUNS_DIR = _dir("runs", "runs", "Training runs: checkpoints, logs (train output).")
CKPT_DIR = _dir("checkpoints", "checkpoints", "Selected, verified checkpoints (extract output).")
PROBES_DIR = _dir("probes", "probes", "Probe tables (probe output).")
RESULTS_DIR = _dir("results", "results", "Study tables, metrics.json, claims.json (aggregate output).")
FIGURES_DIR = _dir("figures", "figures", "Figures of every study (plot output).")
REPORT_DIR = _dir("report", "report", "The report: index.html and its Markdown twin index.md (plot output).")


EXIT_STATUS_HELP = "\n".join(
    f"  {'128+N' if code == EXIT_SIGNAL_BASE else code:<6}{what}" for code, what in EXIT_STATUSES.items()
)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="\b\nExit statuses:\n" + EXIT_STATUS_HELP,
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.version_option(__version__, "-V", "--version", prog_name="metaland", message="%(prog)s %(version)s")
def cli(verbose: bool) -> None:
    """metaland: rebuild the loss-landscape studies of gradient-based meta-learning.

    \b
    The pipeline (each command is one DVC stage, but extract runs in the stage probe@RUN;
    `dvc repro` runs them all):
      check-params    validate the whole params file, first          -> .metaland/params-checked/
      fetch DATASET   download, verify and normalise a dataset       -> data/<dataset>/
      train RUN       meta-train one run, resumable                  -> runs/<run>/
      extract RUN     select and verify the checkpoints to probe     -> checkpoints/<run>/
      probe RUN       landscape probes on every selected checkpoint  -> probes/<run>/
      aggregate       study tables, statistics, claim verdicts       -> results/
      plot            every figure and the report page               -> figures/, report/

    \b
    Start with `make repro` (installs, then `dvc repro`) and `make ui` (MLflow UI).
    `metaland params` lists every knob; `metaland profile ci|default|long|paper` switches scale.
    `metaland compare-results A B` says whether two builds (two machines) agree in numbers.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _termination_raises() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread while the block runs (so the
    stage's ``finally`` blocks run and its MLflow run ends KILLED); the previous handlers return after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _interrupt) for signum in TERMINATION_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> None:
    """Entry point: an error a user or the machine can cause becomes one paragraph on stderr and the
    exit status of its kind (``metaland.errors``); a termination signal exits with 128 + its number."""
    try:
        with _termination_raises():
            cli.main(args=argv, prog_name="metaland", standalone_mode=False)
    except MetalandError as err:
        _fail(str(err), err.exit_code)
    except OSError as err:
        mapped = system_error(err, "this command")
        if mapped is None:
            raise
        _fail(str(mapped), mapped.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except (click.Abort, KeyboardInterrupt, Interrupted) as err:
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        _fail(
            f"stopped by {name}. Its MLflow run is marked KILLED and finished work is kept: rerun the same command "
            "to continue (a training resumes from its newest checkpoint).",
            EXIT_SIGNAL_BASE + signum,
        )


def _fail(message: str, status: int) -> None:
    click.echo(f"metaland: error: {message}", err=True)
    sys.exit(status)


def stage_main(command: str) -> None:
    """Entry point of the DVC stage scripts (``stages/<command>.py``): :func:`main`, then, once the
    stage has succeeded, exit without the interpreter's teardown of PyTorch's modules, which takes
    about a second per stage (two minutes of the default profile). By then every output is written
    and renamed into place and the MLflow run is closed; nothing left to run at exit matters."""
    main([command, *sys.argv[1:]])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --------------------------------------------------------------------------------------------
# Shared set-up
# --------------------------------------------------------------------------------------------


_READ_AS: dict[Path, tuple[int, int]] = {}
"""Size and modification time of each params file when a stage command read it (:func:`_still_reads`)."""


def _config(params_path: Path):
    """The validated params of a stage command, after checking that its tracking store answers."""
    from metaland.config import load_params
    from metaland.tracking import check_reachable

    stat = params_path.stat() if params_path.is_file() else None
    config = load_params(params_path)
    if stat is not None:
        _READ_AS[params_path] = (stat.st_size, stat.st_mtime_ns)
    check_reachable()
    return config


@contextlib.contextmanager
def _stage(params_path: Path) -> Iterator[tuple[Any, Any]]:
    """(tracking, config) of a stage command: its tracking sidecar, started first so that MLflow loads
    there while this process loads PyTorch, and its validated params. The sidecar ends with the
    block, however it ends (a stage called in-process that fails early leaves no process behind)."""
    from metaland.tracking import StageRun

    with StageRun() as tracking:
        yield tracking, _config(params_path)


def _still_reads(params_path: Path, config, stage: str, pick: Callable[[Any], Any]) -> None:
    """Fail unless ``params_path`` still gives what ``stage`` read at its start (``pick(config)``).

    DVC records a stage's params in dvc.lock when the stage ends; a params.yaml edited (or a profile
    switched) while it ran would record values its outputs were not computed with, and the next
    `dvc repro` would skip it. Failing instead makes DVC rerun it with the new values. The file is
    read again only if its size or modification time differs from the first read's."""
    from metaland.config import load_params

    try:
        stat = params_path.stat()
        if (stat.st_size, stat.st_mtime_ns) == _READ_AS.setdefault(params_path, (stat.st_size, stat.st_mtime_ns)):
            return
        unchanged = pick(load_params(params_path)) == pick(config)
    except (MetalandError, KeyError, OSError):
        unchanged = False
    if not unchanged:
        raise ConfigError(
            f"{params_path} changed while {stage} ran, in what it reads (or it no longer validates), so its "
            f"outputs were computed for the old values and DVC would record them under the new ones. Fix: run "
            f"`dvc repro` again (it reruns {stage} with the new values)."
        )


def _run(config, key: str):
    if key not in config.runs:
        known = ", ".join(sorted(config.runs)) or "(none)"
        raise ConfigError(f"{config.source}: no run {key!r} under runs. Fix: use one of: {known}.")
    return config.runs[key]


def _device(config):
    from metaland.runtime import make_deterministic, select_device, tune_allocator

    make_deterministic()
    tune_allocator()
    return select_device(config.device)


def _provenance(config, params_path: Path) -> dict:
    """Params of the whole-pipeline stages: the profile and the exact params file."""
    from metaland.io import file_digest

    return {"profile": config.profile, "params_sha256": file_digest(params_path)}


def _dataset_dir(data_dir: Path, dataset: str, config) -> Path:
    """``data/<dataset>``, checked to be fetched for the dataset params ``config`` gives."""
    from metaland.io import read_json

    path = data_dir / dataset
    if not (path / "manifest.json").is_file():
        raise DataError(
            f"dataset {dataset!r} has not been fetched: {path}/manifest.json is missing. Fix: run "
            f"`dvc repro fetch@{dataset}` (or `python -m metaland fetch {dataset}`); without internet, set "
            "METALAND_DATA_MIRROR to a folder holding its archives."
        )
    fetched = read_json(path / "manifest.json").get("params")
    wanted = config.datasets[dataset].model_dump(mode="json")
    if fetched != wanted:
        raise DataError(
            f"{path} was fetched for other params of dataset {dataset!r} than {config.source} gives now "
            f"({_first_difference(fetched, wanted)}). Fix: run `dvc repro fetch@{dataset}` (or `python -m metaland "
            f"fetch {dataset}`) to rebuild it, then this stage."
        )
    return path


def _first_difference(old: Any, new: Any, key: str = "") -> str:
    """``key: old -> new`` for the first value that differs between two nested params mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                return _first_difference(old.get(name), new.get(name), f"{key}.{name}".strip("."))
    return f"{key or 'params'}: {old!r} -> {new!r}"


# --------------------------------------------------------------------------------------------
# Stage commands
# --------------------------------------------------------------------------------------------


PARAMS_CHECKED = Path(".metaland/params-checked")
"""The output of the `check-params` stage: one file per stage of the keys it reads (``metaland.stage_params``)."""


@cli.command(name="check-params")
@PARAMS
@click.option(
    "--out",
    default=PARAMS_CHECKED,
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Written once the file is valid: <stage>.json for every stage, and `valid`.",
)
def check_params(params_path: Path, out: Path) -> None:
    """Validate every block of the params file, whatever changed since the last build; write what each
    stage reads of it.

    A misspelt block (`run:` for `runs:`) would otherwise never be read: the `check-params` stage depends
    on the whole file and runs first on any edit, and an invalid one stops `dvc repro` before any stage
    runs. Each other stage depends on its own file OUT/<stage>.json, the keys it reads, so a valid edit
    reruns only the stages whose keys changed (as DVC's `params:` would, with a far smaller dvc.lock).
    """
    from metaland.config import read_raw_params, resolve
    from metaland.stage_params import write_stage_params

    raw = read_raw_params(params_path)
    config = resolve(raw, source=str(params_path))
    stages = write_stage_params(raw, out)
    click.echo(
        f"{params_path}: valid (profile {config.profile!r}: {len(config.datasets)} datasets, "
        f"{len(config.studies)} studies, {len(config.runs)} runs); the keys of {stages} stages -> {out}"
    )


@cli.command()
@click.argument("dataset")
@PARAMS
@DATA_DIR
@click.option(
    "--mirror",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="METALAND_DATA_MIRROR",
    help="Folder holding the dataset's archive files (replaces the network). Default: $METALAND_DATA_MIRROR.",
)
def fetch(dataset: str, params_path: Path, data_dir: Path, mirror: Path | None) -> None:
    """Download DATASET (or take it from a mirror), verify checksums, unpack safely, normalise.

    The public addresses and checksums are in the dataset registry (metaland/data/); the result
    is data/DATASET/ with one safetensors file per split, classes.json and manifest.json.
    """
    from metaland.tracking import stage_run

    with _stage(params_path) as (tracking, config):
        from metaland.data import fetch_dataset, spec_of

        if dataset not in config.datasets:
            raise ConfigError(
                f"{config.source}: dataset {dataset!r} is not declared under datasets. Fix: add "
                f"datasets.{dataset} or fetch one of: {', '.join(sorted(config.datasets))}."
            )
        spec = spec_of(dataset)
        params = config.datasets[dataset]
        with stage_run(
            "fetch", experiment="data", run_key=dataset, params=params.model_dump(), started=tracking
        ) as tracker:
            out = fetch_dataset(spec, params, data_dir, name=dataset, mirror=mirror)
            tracker.log_artifact(out / "manifest.json")
            _still_reads(params_path, config, f"fetch@{dataset}", lambda c: c.datasets[dataset])
    click.echo(f"fetched {dataset} -> {out}")


@cli.command()
@click.argument("run_key", metavar="RUN")
@PARAMS
@DATA_DIR
@RUNS_DIR
@_dir("resume", ".metaland/train", "Where training happens and resumes (not a DVC output); runs/RUN gets the result.")
def train(run_key: str, params_path: Path, data_dir: Path, runs_dir: Path, resume_dir: Path) -> None:
    """Meta-train RUN (a key under `runs` in params.yaml) into runs/RUN/.

    Checkpoints (safetensors + JSON sidecar) are written at step 0, every train.checkpoint_every
    iterations and at the end, into the resume area RESUME_DIR/RUN; the finished run is then
    published to runs/RUN as a whole. Rerunning resumes from the newest valid checkpoint of the same
    params, data and code, continuing bit for bit; checkpoints of anything else are removed.
    """
    from metaland.tracking import stage_run

    with _stage(params_path) as (tracking, config):
        from metaland.data.layout import dataset_digest
        from metaland.meta.train import train as train_run

        run = _run(config, run_key)
        device = _device(config)
        dataset_params = config.datasets[run.dataset]
        params_hash = run.trajectory_hash(dataset_params)

        dataset_dir = _dataset_dir(data_dir, run.dataset, config)
        dataset = {"name": run.dataset, "digest": dataset_digest(dataset_dir), "source": str(dataset_dir.resolve())}

        def open_tracker(resumed: bool):
            return stage_run(
                "train",
                experiment=run.study,
                run_key=run.key,
                params=run.to_dict(),
                params_hash=params_hash,
                resume=resumed,
                started=tracking,
                system_metrics=True,
                dataset=dataset,
            )

        def still_valid() -> None:
            _still_reads(params_path, config, f"train@{run.key}", lambda c: (c.runs[run.key], c.datasets[run.dataset]))

        result = train_run(
            run,
            dataset_params,
            dataset_dir,
            runs_dir / run.key,
            device=device,
            open_tracker=open_tracker,
            work_dir=resume_dir / run.key,
            still_valid=still_valid,
        )
    resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from is not None else ""
    click.echo(f"trained {run.key}: {len(result.checkpoints)} checkpoints in {runs_dir / run.key}{resumed}")


def _publish_checkpoints(
    config, run, params_path: Path, runs_dir: Path, checkpoints_dir: Path, tracking, *, wait: bool = True
) -> dict:
    """Select ``run``'s checkpoints to probe, verify them, publish them to checkpoints/<run>/ and log each
    as an MLflow model (an ``extract`` run written by the sidecar ``tracking``); return the manifest.
    Without ``wait`` the sidecar packages the models while the caller goes on (``tracking.finished()``)."""
    from metaland.checkpoints import list_checkpoints
    from metaland.data.registry import spec_of
    from metaland.extract import extract as extract_run
    from metaland.serving import model_spec
    from metaland.tracking import stage_run

    rule = config.studies[run.study].extract
    out_dir = checkpoints_dir / run.key
    with stage_run(
        "extract", experiment=run.study, run_key=run.key, params=rule.model_dump(), started=tracking, wait=wait
    ) as tracker:
        manifest = extract_run(
            run, rule, runs_dir / run.key, out_dir, params_hash=run.trajectory_hash(config.datasets[run.dataset])
        )
        input_shape = spec_of(run.dataset).shape_of(config.datasets[run.dataset])
        for checkpoint in list_checkpoints(out_dir):
            tracker.log_model(
                f"{run.key}-step{checkpoint.step:08d}",
                checkpoint.path,
                model_spec(run, input_shape, checkpoint),
                params={"step": checkpoint.step, "reasons": ",".join(checkpoint.sidecar["reasons"])},
                tags={"metaland.run_key": run.key},
            )
        tracker.log_artifact(out_dir / "manifest.json")
        _still_reads(
            params_path,
            config,
            f"extract@{run.key}",
            lambda c: (c.runs[run.key], c.datasets[run.dataset], c.studies[run.study].extract),
        )
    click.echo(f"extracted {len(manifest['checkpoints'])} checkpoints of {run.key} -> {out_dir}")
    return manifest


@cli.command()
@click.argument("run_key", metavar="RUN")
@PARAMS
@RUNS_DIR
@CKPT_DIR
def extract(run_key: str, params_path: Path, runs_dir: Path, checkpoints_dir: Path) -> None:
    """Select RUN's checkpoints to probe (studies.<study>.extract), verify, publish to checkpoints/RUN/.

    The checkpoints must have been trained for the params params.yaml gives now. Each selected
    checkpoint is also logged to MLflow as a model that `mlflow.pyfunc.load_model` loads and
    meta-tests with: given a task's support set it adapts as the run does and predicts the query set.
    The DVC stage probe@RUN does this first (`metaland probe --extract`); run it alone to inspect
    or serve checkpoints without probing them.
    """
    with _stage(params_path) as (tracking, config):
        _publish_checkpoints(config, _run(config, run_key), params_path, runs_dir, checkpoints_dir, tracking)


@cli.command()
@click.argument("run_key", metavar="RUN")
@PARAMS
@click.option(
    "--extract",
    "extract_first",
    is_flag=True,
    help="First select and publish RUN's checkpoints, exactly as `metaland extract RUN` does (its own MLflow "
    "run). The DVC stage probe@RUN runs with this flag: one process instead of two saves a stage's start-up.",
)
@RUNS_DIR
@DATA_DIR
@CKPT_DIR
@PROBES_DIR
@_dir("cache", ".metaland/probe-cache", "Per-checkpoint probe results kept for resuming (not a DVC output).")
def probe(
    run_key: str,
    params_path: Path,
    extract_first: bool,
    runs_dir: Path,
    data_dir: Path,
    checkpoints_dir: Path,
    probes_dir: Path,
    cache_dir: Path,
) -> None:
    """Run the study's probes (studies.<study>.probe) on every extracted checkpoint of RUN.

    All checkpoints are probed on one fixed, seeded task set (saved as probes/RUN/tasks.json);
    results are tidy tables probes/RUN/checkpoints.csv and probes/RUN/tasks.csv, and each
    checkpoint's summary is logged to MLflow with step = meta-iteration. Each checkpoint's results
    are kept in the cache folder as soon as they exist, so a killed sweep restarts where it stopped.
    """
    from metaland.tracking import StageRun, stage_run

    # Both sidecars start before PyTorch is imported, so that their MLflow imports overlap with it.
    extract_sidecar = StageRun() if extract_first else contextlib.nullcontext()
    with extract_sidecar as extract_tracking, _stage(params_path) as (tracking, config):
        from metaland.probes.runner import probe_run

        run = _run(config, run_key)
        if extract_tracking is not None:  # its models are packaged while the probes run
            _publish_checkpoints(config, run, params_path, runs_dir, checkpoints_dir, extract_tracking, wait=False)
        study = config.studies[run.study]
        device = _device(config)
        dataset_dir = _dataset_dir(data_dir, run.dataset, config)
        with stage_run(
            "probe", experiment=run.study, run_key=run.key, params=study.probe.model_dump(), started=tracking
        ) as tracker:
            rows = probe_run(
                run,
                study,
                dataset_dir,
                checkpoints_dir / run.key,
                probes_dir / run.key,
                device=device,
                params_hash=run.trajectory_hash(config.datasets[run.dataset]),
                tracker=tracker,
                cache_dir=cache_dir,
            )
            tracker.tag_outputs(probes_dir / run.key)
            _still_reads(
                params_path,
                config,
                f"probe@{run.key}",
                lambda c: (c.runs[run.key], c.datasets[run.dataset], c.studies[run.study].probe),
            )
        if extract_tracking is not None:
            extract_tracking.finished()
    click.echo(f"probed {len(rows)} checkpoints of {run.key} -> {probes_dir / run.key}")


def _whole_pipeline(config) -> tuple:
    """What aggregate and plot read of the params: every run and study."""
    return config.runs, config.studies


@cli.command()
@PARAMS
@RUNS_DIR
@PROBES_DIR
@RESULTS_DIR
def aggregate(params_path: Path, runs_dir: Path, probes_dir: Path, results_dir: Path) -> None:
    """Join probe tables per study; write statistics, results/metrics.json, results/claims.json and
    results/cross_study.csv. Each claim records the MLflow runs of the probe stages that wrote its inputs."""
    from metaland.tracking import producer_run_id, stage_run

    with _stage(params_path) as (tracking, config):
        from metaland.aggregate import aggregate as aggregate_all

        provenance = _provenance(config, params_path)
        with stage_run("aggregate", experiment="results", params=provenance, started=tracking) as tracker:
            record = aggregate_all(
                config,
                probes_dir,
                runs_dir,
                results_dir,
                probe_run_id=lambda run, digest: producer_run_id(run.study, "probe", run.key, digest),
            )
            tracker.log_metrics({f"claims/{k}": v for k, v in record["counts"].items()}, step=0)
            tracker.log_metrics({f"checks/{k}": v for k, v in record["checks"].items()}, step=0)
            tracker.log_artifact(results_dir / "claims.json")
            tracker.log_artifact(results_dir / "cross_study.csv")
            tracker.tag_outputs(results_dir)
            _still_reads(params_path, config, "aggregate", _whole_pipeline)
    counts, checks = record["counts"], record["checks"]
    click.echo(
        f"findings: {counts['holds']} hold, {counts['fails']} fail, {counts['inconclusive']} inconclusive; "
        f"sanity checks: {checks['holds']} pass of {sum(checks.values())}"
    )


@cli.command()
@PARAMS
@RESULTS_DIR
@FIGURES_DIR
@REPORT_DIR
def plot(params_path: Path, results_dir: Path, figures_dir: Path, report_dir: Path) -> None:
    """Redraw every figure of every study from results/, then write report/index.html and index.md.

    The report is logged to this run and to the aggregate run that wrote results/ (when the tracking
    store holds it), beside the claims.json it renders."""
    from metaland.io import tree_digest
    from metaland.tracking import producer_run_id, stage_run

    with _stage(params_path) as (tracking, config):
        from metaland.report import plot_all, write_report

        provenance = _provenance(config, params_path)
        with stage_run("plot", experiment="results", params=provenance, started=tracking) as tracker:
            figures = plot_all(config, results_dir, figures_dir)
            pages = write_report(config, params_path, results_dir, figures_dir, report_dir)
            for path in figures:
                tracker.log_artifact(path, f"figures/{path.parent.name}")
            aggregate_run = producer_run_id("results", "aggregate", None, tree_digest(results_dir))
            for page in pages:
                tracker.log_artifact(page, "report")
                if aggregate_run is not None:
                    tracker.log_artifact(page, "report", run_id=aggregate_run)
            _still_reads(params_path, config, "plot", _whole_pipeline)
    click.echo(f"{len(figures)} figures -> {figures_dir}; report -> {', '.join(map(str, pages))}")


@cli.command()
@PARAMS
@RESULTS_DIR
@FIGURES_DIR
@REPORT_DIR
def report(params_path: Path, results_dir: Path, figures_dir: Path, report_dir: Path) -> None:
    """Rewrite report/index.html and index.md from results/ and figures/ (the plot stage does this too)."""
    from metaland.report import write_report

    for page in write_report(_config(params_path), params_path, results_dir, figures_dir, report_dir):
        click.echo(page)


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


@cli.command()
@click.option("--port", default=5000, show_default=True, help="Port on 127.0.0.1.")
@click.option("--workers", type=click.IntRange(min=1), help="Server processes (default: MLflow's); 1 starts fastest.")
def ui(port: int, workers: int | None) -> None:
    """Open the MLflow UI on http://127.0.0.1:PORT over this repository's tracking store.

    To share one store between machines or parallel `dvc exp run --queue` jobs, run a tracking
    server instead (`docker compose up -d mlflow`, README.md "Tracking server")."""
    from metaland.tracking import ensure_store, mlflow_store_uri, tracking_uri

    ensure_store()
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    click.echo(f"MLflow UI: http://127.0.0.1:{port}  (store: {tracking_uri()}; Ctrl-C stops it)")
    # MLflow's server-side job runner serves GenAI judges and scorers, which metaland never uses;
    # it would start five more processes beside the pipeline. Set the variable to override.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    args = [mlflow, "ui", "--backend-store-uri", mlflow_store_uri(), "--host", "127.0.0.1", "--port", str(port)]
    os.execv(mlflow, args + (["--workers", str(workers)] if workers else []))


@cli.command()
@click.argument("name", type=click.Choice(["ci", "default", "long", "paper"]), required=False)
@click.option("--force", is_flag=True, help="Overwrite params.yaml even if it has local edits.")
@click.option(
    "--write-long", is_flag=True, help="Regenerate profiles/long.yaml from profiles/default.yaml (after editing it)."
)
def profile(name: str | None, force: bool, write_long: bool) -> None:
    """Make params.yaml the NAME profile (profiles/NAME.yaml): ci (minutes, tests), default
    (CPU-sized), long (the default's runs in three seeds and 600 probe tasks: what the claims need to
    decide), paper (the seeds' published settings, for GPU machines)."""
    from metaland.io import write_text
    from metaland.profiles import long_profile, use_profile

    if write_long:
        profiles = Path("profiles")
        write_text(profiles / "long.yaml", long_profile((profiles / "default.yaml").read_text(encoding="utf-8")))
        click.echo("profiles/long.yaml regenerated from profiles/default.yaml")
    elif name is None:
        raise click.UsageError("name a profile (ci, default, long, paper), or give --write-long")
    if name is not None:
        click.echo(use_profile(name, Path("profiles"), Path("params.yaml"), force=force))


@cli.command()
@click.option(
    "--executor",
    type=click.Choice(["slurm", "ray", "local"]),
    default="slurm",
    show_default=True,
    help="slurm: job arrays through submitit; ray: ray.remote tasks (the ray extra); local: processes here.",
)
@click.option(
    "--stages",
    "select",
    default="*",
    show_default=True,
    help="Glob over job stages, e.g. 'train@guiroy2019-*' (the job stages they depend on come too).",
)
@click.option("--dry-run", is_flag=True, help="Print the waves, array sizes and sbatch options; submit nothing.")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".metaland/launch"),
    show_default=True,
    help="The jobs' clones and logs: on a filesystem every node sees.",
)
@click.option("--cache", "cache", help="DVC cache dir every clone shares (default: this checkout's).")
@click.option("--remote", help="A DVC remote instead of a shared cache: jobs pull and push data and run-cache.")
@click.option("--repo", help="Git URL or path the jobs clone (default: this checkout, on a shared filesystem).")
@click.option(
    "--no-final",
    "final",
    is_flag=True,
    flag_value=False,
    default=True,
    help="Skip the head's closing `dvc repro` (restore every stage from the run-cache, aggregate, plot; with "
    "--stages, just the launched stages).",
)
def launch(
    executor: str, select: str, dry_run: bool, workdir: Path, cache: str | None, remote: str | None, repo: str | None,
    final: bool,
) -> None:  # fmt: skip
    """Spread this checkout's DAG over a cluster: fetch, then train, then probe jobs, each wave a job array
    starting after the previous one succeeded; then `dvc repro` here restores everything from DVC's run-cache.

    Every job builds its stage with `dvc repro` in its own clone of the committed checkout, sharing one DVC cache
    (or a --remote), and logs to the MLflow server MLFLOW_TRACKING_URI names. A preempted or timed-out training
    job is requeued and resumes from its newest checkpoint. After a failure, fix the cause and rerun the same
    command: finished stages come back from the run-cache. Resources per job kind are the `launch` block of
    params.yaml. README "Running on a cluster" has the SLURM and Ray recipes.
    """
    from metaland.launch.head import launch as run_launch

    if cache and remote:
        raise click.UsageError("give --cache (a shared filesystem) or --remote (a DVC remote), not both")
    ran = run_launch(
        Path.cwd(), executor=executor, select=select, dry_run=dry_run, workdir=workdir, cache=cache, remote=remote,
        repo=repo, final=final,
    )  # fmt: skip
    if final and not dry_run:
        jobs = [stage for stage in ran if stage.split("@", 1)[0] in ("fetch", "train", "probe")]
        click.echo(f"metaland launch: done; the head's `dvc repro` ran {len(ran)} stage(s), {len(jobs)} of them "
                   "fetch/train/probe (0 when every job's result came back from the run-cache)")  # fmt: skip


@cli.command(name="launch-worker", hidden=True)
@click.argument("spec_json", metavar="SPEC")
def launch_worker(spec_json: str) -> None:
    """One job of `metaland launch` (SPEC: the job's JSON, written by the head)."""
    from metaland.launch.worker import WorkerSpec, run_worker

    run_worker(WorkerSpec.from_json(spec_json))


@cli.command(name="params")
def params_command() -> None:
    """List every knob: its block, type and range, default, and where the value comes from."""
    from metaland.profiles import knob_table

    click.echo(knob_table())


@cli.command()
@PARAMS
@DATA_DIR
def doctor(params_path: Path, data_dir: Path) -> None:
    """Check this machine and checkout: versions, device, params, datasets, tracking store."""
    from metaland.doctor import run_checks

    problems = run_checks(params_path, data_dir, click.echo)
    if problems:
        raise MetalandError(f"doctor found {problems} problem(s); each is marked FAIL above with its fix.")


@cli.command(name="compare-results")
@click.argument("a", type=click.Path(exists=True, path_type=Path))
@click.argument("b", type=click.Path(exists=True, path_type=Path))
@click.option("--rtol", default=1e-5, show_default=True, type=click.FloatRange(min=0), help="Relative tolerance.")
@click.option("--atol", default=1e-8, show_default=True, type=click.FloatRange(min=0), help="Absolute tolerance.")
@click.option(
    "--ignore-key",
    "ignore_keys",
    multiple=True,
    help="A JSON key not to compare, e.g. mlflow (run ids differ in every build's tracking store). Repeatable.",
)
def compare_results(a: Path, b: Path, rtol: float, atol: float, ignore_keys: tuple[str, ...]) -> None:
    """Do two builds agree in numbers? Compare folders A and B (e.g. two checkouts' results/,
    or probes/) file by file, or two files.

    \b
    Same params on the same machine give the same bytes; another CPU model, thread count or a GPU
    computes in another floating-point order, so bytes (and dvc.lock hashes) differ while numbers
    should agree within a tolerance. Tables (CSV) are compared cell by cell, JSON value by value,
    safetensors tensor by tensor: numbers within |a - b| <= atol + rtol·|b| (NaN equals NaN), text
    and verdicts exactly. Figures and report pages are not compared (their numbers are the tables').

    \b
    Exit status: 0 when every file agrees, 1 when any differs or exists on one side only.
    Example:  metaland compare-results results/ ../colleague/results/ --rtol 1e-3 --ignore-key mlflow
    """
    from metaland.compare import Tolerance, compare_trees, format_comparison

    if a.is_file() != b.is_file():
        raise click.BadParameter("give two folders or two files, not one of each", param_hint="A B")
    tolerance = Tolerance(rtol=rtol, atol=atol, ignore_keys=frozenset(ignore_keys))
    results = compare_trees(a, b, tolerance)
    click.echo(format_comparison(results, tolerance))
    if not all(r.agrees for r in results):
        sys.exit(1)


@cli.command()
@click.argument("claim_id", metavar="ID", required=False)
@RESULTS_DIR
@click.option("--list", "list_only", is_flag=True, help="List every claim id with its category and verdict.")
def claim(claim_id: str | None, results_dir: Path, list_only: bool) -> None:
    """Recompute claim ID's verdict, step by step, from the rows it was computed from.

    \b
    Reads results/claims/<study>/<claim>.csv (checking its sha256 against results/claims.json), then
    prints each part (component × stratum): the value each training run (seed) contributes, their mean,
    s.d., CI and one-sided p-values; how the parts combine; Holm's adjustment over the study's
    findings; the verdict and, when inconclusive, the minimal detectable effect and the seeds that
    would decide. Exit status 1 if the recomputation does not match results/claims.json.
    Example:  metaland claim guiroy2019/support-loss-falls
    """
    from metaland.explain import explain_claim, list_claims

    if list_only or claim_id is None:
        if claim_id is None and not list_only:
            raise click.UsageError("give a claim ID, or --list to see them")
        click.echo("\n".join(list_claims(results_dir)))
        return
    lines, matches = explain_claim(results_dir, claim_id)
    click.echo("\n".join(lines))
    if not matches:
        sys.exit(1)


cli.add_command(container)  # metaland container build|run|repro|doctor (metaland/container.py)
