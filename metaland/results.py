"""Study tables: the probe outputs of all runs of a study, joined with run metadata.

``results/<study>/`` holds, one tidy row per observation:

    checkpoints.csv   run × checkpoint: run metadata, step, every probe summary
    final_tasks.csv   run × task at each run's final checkpoint: per-task probe values
    milestone_tasks.csv  run × task at the initial checkpoint (milestone ``initial``) and at the
                      algorithm's milestones (``AlgorithmSpec.milestones``): per-task probe values
    train_log.csv     run × log step: meta-training query loss / accuracy
    validation.csv    run × checkpoint: the validation metrics training recorded with it (``val/`` in the
                      checkpoint's sidecar: adapted query loss / accuracy on the run's fixed validation tasks)
    grids.csv         run × checkpoint × surface × grid point: 2-D loss surfaces (surface probes)

Aggregate writes them; claims, plots and the report read them back with :func:`load_tables`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from metaland.checkpoints import list_checkpoints
from metaland.config import Run
from metaland.errors import MetalandError
from metaland.io import write_text
from metaland.meta import ALGORITHMS
from metaland.models import MODELS

TABLES = ("checkpoints", "final_tasks", "train_log", "grids", "milestone_tasks", "validation")
INITIAL = "initial"
"""The milestone name of step 0, the initialisation."""
STRATUM_KNOBS = ("dataset", "backbone", "ways", "shots", "queries", "inner_steps", "inner_lr", "augment")
"""The identity knobs a seed keeps apart (the dataset key fixes the image size): claims never pair,
and tables and figures never average, across them (docs/claims.md)."""


@dataclass(frozen=True)
class StudyTables:
    study: str
    checkpoints: pd.DataFrame
    final_tasks: pd.DataFrame
    train_log: pd.DataFrame
    grids: pd.DataFrame = field(default_factory=pd.DataFrame)
    milestone_tasks: pd.DataFrame = field(default_factory=pd.DataFrame)
    validation: pd.DataFrame = field(default_factory=pd.DataFrame)


def run_metadata(run: Run) -> dict:
    """The columns that identify a run in study tables."""
    return {
        "run": run.key,
        "algorithm": run.algorithm,
        "variant": ALGORITHMS.get(run.algorithm).variant_of(run.algorithm_options, run.train.inner_params),
        "dataset": run.dataset,
        "ways": run.ways,
        "shots": run.shots,
        "queries": run.queries,
        "seed": run.seed,
        "inner_steps": run.train.inner_steps,
        "inner_lr": run.train.inner_lr,
        "iterations": run.train.iterations,
        "setting": f"{run.dataset} {run.ways}-way {run.shots}-shot",
        "backbone": MODELS.get(run.model_name).label_of(run.model),
        "augment": run.train.augment,
    }


def stratum_of(frame: pd.DataFrame, varies: tuple[str, ...] = ()) -> pd.Series:
    """Each row's stratum: its identity knobs (:data:`STRATUM_KNOBS`) except those the claim compares
    (``varies``, e.g. ``augment`` for "augmentation lowers sharpness"), as one readable key."""
    knobs = [k for k in STRATUM_KNOBS if k not in varies and k in frame.columns]
    if frame.empty:
        return pd.Series([], dtype=str, index=frame.index)
    return frame[knobs].astype(str).apply(lambda row: " ".join(f"{k}={v}" for k, v in row.items()), axis=1)


def build_tables(study: str, runs: list[Run], probes_dir: Path, runs_dir: Path) -> StudyTables:
    """Join every run's probe tables and training log with its metadata."""
    checkpoints, final_tasks, train_log, grids, milestone_tasks, validation = [], [], [], [], [], []
    for run in runs:
        meta = run_metadata(run)
        checkpoints.append(_with_meta(_read(Path(probes_dir) / run.key / "checkpoints.csv", run.key), meta))
        tasks = _read(Path(probes_dir) / run.key / "tasks.csv", run.key)
        final_tasks.append(_with_meta(tasks[tasks["step"] == tasks["step"].max()], meta))
        milestones = {0: INITIAL, **ALGORITHMS.get(run.algorithm).milestones(run.algorithm_options)}
        at_milestones = tasks[tasks["step"].isin(milestones)]
        if not at_milestones.empty:
            named = at_milestones.assign(milestone=at_milestones["step"].map(milestones))
            milestone_tasks.append(_with_meta(named, meta))
        log = Path(runs_dir) / run.key / "train_log.csv"
        if log.is_file():
            train_log.append(_with_meta(pd.read_csv(log), meta))
        surfaces = Path(probes_dir) / run.key / "grids.csv"
        if surfaces.is_file():
            grids.append(_with_meta(pd.read_csv(surfaces), meta))
        validated = validation_rows(Path(runs_dir) / run.key / "ckpt")
        if not validated.empty:
            validation.append(_with_meta(validated, meta))
    parts = (checkpoints, final_tasks, train_log, grids, milestone_tasks, validation)
    return StudyTables(study, *(_concat(frames) for frames in parts))


VALIDATION_PREFIX = "val/"
"""How training (``metaland.meta.train``) prefixes the validation metrics it records in a checkpoint's sidecar."""


def validation_rows(checkpoint_dir: Path) -> pd.DataFrame:
    """One row per checkpoint of a run: its step and the validation metrics recorded with it, unprefixed."""
    rows = [
        {"step": c.step}
        | {
            k.removeprefix(VALIDATION_PREFIX): v
            for k, v in c.sidecar["metrics"].items()
            if k.startswith(VALIDATION_PREFIX)
        }
        for c in list_checkpoints(checkpoint_dir)
    ]
    return pd.DataFrame(rows)


def write_tables(tables: StudyTables, out_dir: Path) -> None:
    for name in TABLES:
        frame: pd.DataFrame = getattr(tables, name)
        if frame.columns.empty:  # a table no run has rows for (grids without surface probes) still parses
            frame = pd.DataFrame(columns=["run"])
        write_text(Path(out_dir) / f"{name}.csv", frame.to_csv(index=False, lineterminator="\n"))


def load_tables(results_dir: Path, study: str) -> StudyTables:
    folder = Path(results_dir) / study
    frames = {}
    for name in TABLES:
        path = folder / f"{name}.csv"
        if not path.is_file():
            raise MetalandError(f"{path} is missing. Fix: run the aggregate stage (`dvc repro aggregate`).")
        frame = pd.read_csv(path)
        frames[name] = frame if len(frame) else pd.DataFrame()
    return StudyTables(study, **frames)


def _read(path: Path, run_key: str) -> pd.DataFrame:
    if not path.is_file():
        raise MetalandError(f"{path} is missing. Fix: run the probe stage (`dvc repro probe@{run_key}`).")
    return pd.read_csv(path)


def _with_meta(frame: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """Metadata columns first, then the frame's own (its ``run`` column is replaced)."""
    own = [c for c in frame.columns if c != "run"]
    return frame[own].assign(**meta)[[*meta, *own]]


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
