"""Meta-training of one run, with checkpoints on a schedule and exact resume.

Iteration ``s`` draws its batch (a meta-batch of tasks; images for the finetune baseline) from a
generator seeded by (run seed, purpose, s) only, augments it when ``train.augment`` asks (seed 001
§3.3; validation and probes never augment), and the Adam state is saved with θ, so a run
restarted from its newest valid checkpoint continues bit for bit as if it had never stopped.
Layout of the run folder::

    runs/<run>/ckpt/step-00000500.safetensors + .json   θ, Adam state (and the algorithm's own training
                                                        state, if it keeps one); sidecar with val metrics
    runs/<run>/train_log.csv                            per log step: the algorithm's training metrics
    runs/<run>/val_tasks.json                           the fixed validation task set

The train stage trains in a *resume area* (``.metaland/train/<run>/``, same layout, outside the DVC
outputs) and publishes it to ``runs/<run>`` as a whole when training ends (hard links: no second
copy). ``runs/<run>`` is then an ordinary DVC output: DVC removes it before rerunning the stage and
can restore it from its run-cache (switching profiles back and forth retrains nothing), while a
killed or extended training resumes from the resume area. A checkpoint is resumed from only if its
sidecar records this run's identity: the params hash (run and dataset params), the digest of the
dataset (:func:`metaland.data.layout.dataset_digest`) and the digest of the training
code (:data:`TRAINING_CODE`, the train stage's code dependencies in dvc.yaml); others are removed.
The log is cut back to the checkpoint training resumes from, so it never holds steps past it.

A restarted run continues the MLflow run of the same run key and params hash, so its metrics
form one curve in the UI.

A checkpoint is written at step 0 (the initialisation), every ``checkpoint_every`` iterations,
at the algorithm's milestones (``AlgorithmSpec.milestones``) and at the last iteration.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from metaland.checkpoints import (
    Checkpoint,
    check_like,
    latest_valid,
    list_checkpoints,
    load_groups,
    save_checkpoint,
    written_for,
)
from metaland.config import Run
from metaland.data.augment import augment_batch
from metaland.data.layout import SplitData, dataset_digest, load_split
from metaland.data.tasks import TaskSet, materialise, sample_dataset_tasks, save_task_set
from metaland.errors import DivergenceError
from metaland.io import atomic_dir, package_digest, remove_stale_temporaries, write_csv
from metaland.meta import ALGORITHMS, MetaProblem
from metaland.meta.adam import AdamState, adam_init, adam_step
from metaland.meta.engines import resolve_engine
from metaland.meta.evaluate import evaluate_tasks
from metaland.meta.inner import adapted_names, cross_entropy, sgd_step
from metaland.models import ParamDict, build_for_run, head_names, initial_params, make_forward
from metaland.models.grouped import task_batched_forward
from metaland.schema import Params
from metaland.seeding import generator

log = logging.getLogger(__name__)


TRAINING_CODE = (
    "checkpoints.py",
    "data/augment.py",
    "data/synthetic.py",
    "data/tasks.py",
    "meta",
    "models",
    "vectorise.py",
)
"""The package sources a training depends on: the train stage's code dependencies in dvc.yaml
(tested to agree), so DVC reruns train exactly when the code a checkpoint records changes."""


@dataclass(frozen=True)
class TrainResult:
    checkpoints: list[Checkpoint]
    resumed_from: int | None


def run_identity(run: Run, dataset_params: Params, dataset_dir: Path) -> dict[str, str]:
    """What a checkpoint must record to be resumed from: the params hash of the run and its dataset
    params, the digest of the dataset's content, and the digest of the training code."""
    return {
        "params_hash": run.trajectory_hash(dataset_params),
        "data_sha256": dataset_digest(dataset_dir),
        "code_sha256": package_digest(TRAINING_CODE),
    }


def val_task_set(run: Run, split: SplitData) -> TaskSet:
    """Fixed validation tasks: identical for every run of the same setting (seed-independent)."""
    return sample_dataset_tasks(
        run.dataset,
        split,
        ways=run.ways,
        shots=run.shots,
        queries=run.queries,
        n_tasks=run.train.val_tasks,
        generator=generator(0, "val-tasks", run.dataset, run.ways, run.shots, run.queries),
    )


def train(
    run: Run,
    dataset_params: Params,
    dataset_dir: Path,
    out_dir: Path,
    *,
    device: torch.device,
    open_tracker: Callable[[bool], contextlib.AbstractContextManager] | None = None,
    work_dir: Path | None = None,
    still_valid: Callable[[], None] | None = None,
) -> TrainResult:
    """Meta-train ``run`` into ``out_dir``, resuming from its newest valid checkpoint.

    ``open_tracker(resumed)`` opens the MLflow run to log into (none: no tracking). With
    ``work_dir`` (the resume area), training happens there and ``out_dir`` receives the finished
    run, complete or not at all; without, it happens in ``out_dir`` itself. ``still_valid()`` runs
    after every checkpoint and before ``out_dir`` is written: a check that raises (params.yaml was
    edited meanwhile) stops training there, keeps the checkpoints and publishes nothing.
    """
    published = Path(out_dir)
    out_dir = Path(work_dir) if work_dir is not None else published
    train_split = load_split(dataset_dir, "train")
    val_split = load_split(dataset_dir, "val")
    algorithm = ALGORITHMS.get(run.algorithm)
    module = build_for_run(run, train_split.images, device, classes=algorithm.output_classes(run, train_split))
    forward = make_forward(module)
    head = head_names(module)
    cfg = run.train
    inner_params = adapted_names([name for name, _ in module.named_parameters()], head, cfg.inner_params)
    update = algorithm.inner_update(run.algorithm_options)
    engine = resolve_engine(cfg.engine, device=torch.device(device), update=update)
    problem = MetaProblem(
        forward,
        cross_entropy(forward),
        cfg.inner_steps,
        cfg.inner_lr,
        cfg.task_chunk,
        inner_params,
        update,
        engine,
        task_batched_forward(module) if engine == "hybrid" else None,
    )
    log.debug("%s: meta-gradient engine %s (train.engine %s)", run.key, engine, cfg.engine)
    milestones = algorithm.milestones(run.algorithm_options)
    initial = algorithm.meta_parameters(initial_params(module), inner_params, run.algorithm_options)
    identity = run_identity(run, dataset_params, dataset_dir)
    ckpt_dir = Path(out_dir) / "ckpt"

    meta_test = algorithm.meta_test_adaptation(run.algorithm_options, module, head, run.seed)
    val_tasks = val_task_set(run, val_split)
    save_task_set(Path(out_dir) / "val_tasks.json", val_tasks, {"split": "val", "dataset": run.dataset})
    val_batch = materialise(val_split, val_tasks).to(device)

    def validate(params: ParamDict, step: int) -> dict[str, float]:
        metrics, _ = evaluate_tasks(
            forward,
            algorithm.at_meta_test(params, head, run, step),
            val_batch,
            steps=cfg.inner_steps,
            lr=cfg.inner_lr,
            chunk=cfg.task_chunk or len(val_batch),
            inner_params=inner_params,
            update=problem.update,
            adaptation=meta_test,
            batched_forward=problem.batched_forward,
        )
        return {f"val/{k}": v.mean().item() for k, v in metrics.items()}

    def checkpoint(
        step: int, params: ParamDict, adam: AdamState, state: ParamDict, log_rows: list[dict], tracker
    ) -> Checkpoint:
        val = validate(params, step)
        write_csv(Path(out_dir) / "train_log.csv", log_rows, list(log_rows[0]) if log_rows else ["step"])
        ckpt = save_checkpoint(
            ckpt_dir,
            step,
            # an empty algorithm_state group writes no tensor: stateless runs write the same file as ever
            {"params": params, "adam_m": adam.exp_avg, "adam_v": adam.exp_avg_sq, "algorithm_state": state},
            params_hash=identity["params_hash"],
            metrics=val,
            extra={"run": run.key, "adam_step": adam.step, "engine": engine, **identity},
        )
        if tracker is not None:
            tracker.log_metrics(val, step=step)
            tracker.log_artifact(ckpt.path, "checkpoints")
            tracker.log_artifact(ckpt.sidecar_path, "checkpoints")
        if still_valid is not None:
            still_valid()
        return ckpt

    _prune(ckpt_dir, identity, cfg.iterations)
    resume = latest_valid(ckpt_dir, identity)
    tracking = open_tracker(resume is not None) if open_tracker else contextlib.nullcontext()
    with tracking as tracker:
        if resume is None:
            params = {k: v.to(device) for k, v in initial.items()}
            adam = adam_init(params)
            state = algorithm.state_at_start(params, run.algorithm_options)
            log_rows: list[dict] = []
            checkpoint(0, params, adam, state, log_rows, tracker)
            start = 0
        else:
            groups = load_groups(resume, device)
            for group in ("params", "adam_m", "adam_v"):
                check_like(resume, group, groups.get(group, {}), initial)
            params = {name: groups["params"][name] for name in initial}
            adam = AdamState(int(resume.sidecar["adam_step"]), groups["adam_m"], groups["adam_v"])
            expected_state = algorithm.state_at_start(params, run.algorithm_options)
            check_like(resume, "algorithm_state", groups.get("algorithm_state", {}), expected_state)
            state = {name: groups["algorithm_state"][name] for name in expected_state}
            log_rows = [row for row in _read_log(Path(out_dir) / "train_log.csv") if row["step"] <= resume.step]
            write_csv(Path(out_dir) / "train_log.csv", log_rows, list(log_rows[0]) if log_rows else ["step"])
            start = resume.step
            log.info("resuming %s from step %d", run.key, start)

        window: dict[str, list[float]] = {}
        seconds: list[float] = []  # wall time per iteration: MLflow only (it is not reproducible)
        progress = tqdm(
            total=cfg.iterations, initial=start, desc=run.key, disable=not sys.stderr.isatty(), dynamic_ncols=True
        )
        for step in range(start, cfg.iterations):
            began = time.perf_counter()
            batch = algorithm.training_batch(run, train_split, step, run.algorithm_options)
            batch = augment_batch(batch, cfg.augment, run.seed, step).to(device)
            grads, metrics = algorithm.step_gradient(problem, params, batch, run.algorithm_options, state, step)
            _check_finite(run, step, metrics, grads)
            if cfg.meta_optimizer == "adam":
                params, adam = adam_step(params, grads, adam, lr=cfg.meta_lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
            else:
                params = sgd_step(params, grads, cfg.meta_lr)
            state = algorithm.state_after(state, params, step, run.algorithm_options)
            seconds.append(time.perf_counter() - began)
            for k, value in metrics.items():
                window.setdefault(k, []).append(value)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.iterations:
                row = {"step": done, **{k: sum(v) / len(v) for k, v in window.items()}}
                log_rows.append(row)
                window = {}
                progress.set_postfix({k: f"{v:.3f}" for k, v in list(row.items())[1:3]})
                if tracker is not None:
                    logged = {f"train/{k}": v for k, v in row.items() if k != "step"}
                    logged["train/seconds_per_iteration"] = sum(seconds) / len(seconds)
                    tracker.log_metrics(logged, step=done)
                seconds = []
            if done % cfg.checkpoint_every == 0 or done == cfg.iterations or done in milestones:
                checkpoint(done, params, adam, state, log_rows, tracker)
            progress.update(1)
        progress.close()
        if still_valid is not None:
            still_valid()
        if published != out_dir:
            _publish(out_dir, published)
    return TrainResult(list_checkpoints(published / "ckpt"), None if resume is None else resume.step)


def _publish(work_dir: Path, out_dir: Path) -> None:
    """Make ``out_dir`` a copy of the finished run in ``work_dir``, atomically; files are hard-linked
    where the file system allows (outputs are only ever replaced, never written in place)."""
    with atomic_dir(out_dir) as tmp:
        for source in sorted(work_dir.rglob("*")):
            target = tmp / source.relative_to(work_dir)
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)


def _check_finite(run: Run, step: int, metrics: dict[str, float], grads: ParamDict) -> None:
    if all(map(math.isfinite, metrics.values())) and all(torch.isfinite(g).all() for g in grads.values()):
        return
    raise DivergenceError(
        f"run {run.key} diverged at meta-iteration {step + 1}: a training metric or the meta-gradient is not "
        "finite. "
        f"Fix: lower runs.{run.key}.train.meta_lr (now {run.train.meta_lr}) or train.inner_lr "
        f"(now {run.train.inner_lr}); the checkpoints written so far are kept."
    )


def _prune(ckpt_dir: Path, identity: dict[str, str], iterations: int) -> None:
    """Remove checkpoints of another identity (params, data, code), those past the last iteration
    of this run, tensor files without a sidecar and temporary files, all of which a killed or
    changed run leaves behind."""
    for folder in (ckpt_dir, ckpt_dir.parent):
        remove_stale_temporaries(folder)
    for ckpt in list_checkpoints(ckpt_dir):
        stale = not written_for(ckpt, identity) or ckpt.step > iterations
        if stale:
            log.info("removing stale checkpoint %s", ckpt.path.name)
            ckpt.sidecar_path.unlink(missing_ok=True)
            ckpt.path.unlink(missing_ok=True)
    for orphan in ckpt_dir.glob("*.safetensors") if ckpt_dir.is_dir() else []:
        if not orphan.with_suffix(".json").exists():
            orphan.unlink()


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as stream:
        return [{"step": int(r.pop("step")), **{k: float(v) for k, v in r.items()}} for r in csv.DictReader(stream)]
