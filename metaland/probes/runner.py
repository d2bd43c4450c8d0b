"""Run a study's probes on every extracted checkpoint of one run.

All checkpoints of a run (and all runs of a study with the same setting) are probed on the same
fixed task set, drawn from the study's probe seed and saved beside the tables. Outputs, one tidy
row per observation::

    probes/<run>/checkpoints.csv   one row per checkpoint: step + every probe summary
    probes/<run>/tasks.csv         one row per checkpoint × task: per-task values
    probes/<run>/tasks.json        the fixed task set (class and sample indices) on probe.split
    probes/<run>/tasks-<split>.json  the fixed task set on another split a `<probe>/<split>` key measures
    probes/<run>/grids.csv         one row per checkpoint × surface × grid point (surface probes only),
                                   with the probe seed the directions are drawn from

A probe sweep over many checkpoints can take hours, and the tables are written only when it ends.
So each checkpoint's results are also kept, as soon as they exist, in a cache folder outside the
DVC outputs (``.metaland/probe-cache/<run>/`` by default), under a key that hashes everything they
depend on: the checkpoint's sha256, the digest of the dataset (``dataset_digest``: the same task
indices on another split are other images), the run's params hash,
the task set, the probe options, the run's inner loop, the device type and the source code of the
package. A sweep that is killed and restarted recomputes only the checkpoints it had not finished;
a changed input changes the key, so stale results are never reused. Another dataset a cross-domain
key measures is read from beside the run's own (``<data>/<dataset>``), and its digest is part of the key.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from metaland.checkpoints import Checkpoint, load_params
from metaland.config import Run, StudyConfig, probe_name, probe_suffix, probe_target
from metaland.data.layout import SplitData, dataset_digest, load_split
from metaland.data.tasks import TaskBatch, TaskSet, materialise, sample_dataset_tasks, save_task_set
from metaland.extract import read_manifest
from metaland.io import (
    atomic_dir,
    read_json,
    remove_stale_temporaries,
    source_digest,
    stable_hash,
    write_csv,
    write_json,
)
from metaland.meta import ALGORITHMS
from metaland.meta.engines import resolve_engine
from metaland.meta.inner import adapted_names
from metaland.models import Forward, ParamDict, build_for_run, head_names, initial_params, make_forward
from metaland.models.grouped import BatchedForward, task_batched_forward
from metaland.probes import PROBES, ProbeContext
from metaland.seeding import generator


def probe_task_set(
    run: Run, study: StudyConfig, split: SplitData, split_name: str | None = None, dataset: str | None = None
) -> TaskSet:
    """The study's fixed evaluation tasks on a split (default probe.split) of a dataset (default the run's) for
    this run's setting (independent of the run seed): a cross-domain probe meets the tasks that the target
    dataset's own runs of the setting are probed on."""
    probe = study.probe
    split_name = split_name or probe.split
    dataset = dataset or run.dataset
    return sample_dataset_tasks(
        dataset,
        split,
        ways=run.ways,
        shots=run.shots,
        queries=run.queries,
        n_tasks=probe.tasks,
        generator=generator(probe.seed, "probe-tasks", dataset, split_name, run.ways, run.shots, run.queries),
    )


def task_set_file(split: str, study: StudyConfig, dataset: str | None = None) -> str:
    """tasks.json for probe.split, tasks-<split>.json for the other splits probes measure; tasks@<dataset>.json
    (-<split> for another split) for another dataset's."""
    name = f"tasks@{dataset}" if dataset else "tasks"
    return f"{name}.json" if split == study.probe.split else f"{name}-{split}.json"


DEFAULT_CACHE_DIR = Path(".metaland") / "probe-cache"


@dataclass
class RunProbes:
    """What probing any checkpoint of one run needs, built once per run: the fixed task sets of every
    (dataset, split) its probes measure, where those datasets are, the model and its parameter layout."""

    run: Run
    study: StudyConfig
    dataset_dirs: dict[str, Path]
    task_sets: dict[tuple[str, str], TaskSet]
    batches: dict[tuple[str, str], TaskBatch]
    train_split: SplitData
    forward: Forward
    head: tuple[str, str]
    adapted: frozenset[str] | None
    reference: ParamDict
    module: torch.nn.Module
    batched_forward: BatchedForward | None = None  # the run's engine is hybrid: adapt as one grouped network

    @classmethod
    def build(cls, run: Run, study: StudyConfig, dataset_dir: Path, device: torch.device) -> RunProbes:
        targets = study.probe_targets(run)
        dirs = {dataset: Path(dataset_dir).parent / dataset for dataset, _ in targets if dataset != run.dataset}
        dirs[run.dataset] = Path(dataset_dir)
        splits = {(dataset, name): load_split(dirs[dataset], name) for dataset, name in targets}
        task_sets = {
            (dataset, name): probe_task_set(run, study, split, name, dataset)
            for (dataset, name), split in splits.items()
        }
        batches = {target: materialise(splits[target], tasks).to(device) for target, tasks in task_sets.items()}
        train_split = splits.get((run.dataset, "train")) or load_split(dataset_dir, "train")
        algorithm = ALGORITHMS.get(run.algorithm)
        module = build_for_run(run, train_split.images, device, classes=algorithm.output_classes(run, train_split))
        head = head_names(module)
        adapted = adapted_names(list(dict(module.named_parameters())), head, run.train.inner_params)
        reference = algorithm.meta_parameters(initial_params(module), adapted, run.algorithm_options)
        engine = resolve_engine(run.train.engine, device=device, update=algorithm.inner_update(run.algorithm_options))
        batched_forward = task_batched_forward(module) if engine == "hybrid" else None
        forward = make_forward(module)
        return cls(
            run,
            study,
            dirs,
            task_sets,
            batches,
            train_split,
            forward,
            head,
            adapted,
            reference,
            module,
            batched_forward,
        )

    def contexts(self, checkpoint: Checkpoint, step: int, device: torch.device) -> dict[tuple[str, str], ProbeContext]:
        """A probe context per (dataset, split), at the checkpoint's θ as meta-tested."""
        run, study = self.run, self.study
        algorithm = ALGORITHMS.get(run.algorithm)
        trained = load_params(checkpoint, self.reference, device)
        params = algorithm.at_meta_test(trained, self.head, run, step)
        return {
            target: ProbeContext(
                self.forward,
                params,
                batch,
                run.train.inner_steps if study.probe.inner_steps is None else study.probe.inner_steps,
                run.train.inner_lr,
                study.probe.chunk,
                study.probe.seed,
                self.head,
                self.adapted,
                algorithm.inner_update(run.algorithm_options),
                algorithm.meta_test_adaptation(run.algorithm_options, self.module, self.head, run.seed),
                trained,
                self.train_split,
                self.batched_forward,
            )
            for target, batch in self.batches.items()
        }


def probe_run(
    run: Run,
    study: StudyConfig,
    dataset_dir: Path,
    checkpoint_dir: Path,
    out_dir: Path,
    *,
    device: torch.device,
    params_hash: str,
    tracker=None,
    cache_dir: Path = DEFAULT_CACHE_DIR,
) -> list[dict]:
    """Probe every checkpoint in ``checkpoint_dir``'s manifest, which must list checkpoints trained
    for ``params_hash`` (the run's params as read now) on this dataset; write the tables; return
    the rows."""
    data_sha256 = dataset_digest(dataset_dir)
    manifest = read_manifest(checkpoint_dir, run_key=run.key, params_hash=params_hash, data_sha256=data_sha256)
    setup = RunProbes.build(run, study, dataset_dir, device)
    task_sets = setup.task_sets
    tasks = task_sets[(run.dataset, study.probe.split)]
    probes = study.probes_for(run)

    inputs = {
        "data": data_sha256,
        "params_hash": params_hash,
        "tasks": stable_hash({"@".join(target): task_set.to_json() for target, task_set in task_sets.items()}),
        "other_datasets": {
            name: dataset_digest(path) for name, path in sorted(setup.dataset_dirs.items()) if name != run.dataset
        },
        "probe": study.probe.model_dump(mode="json"),
        "probe_set": run.probe_set,
        "run": {k: v for k, v in run.to_dict().items() if k not in ("key", "train")},
        "inner_loop": [run.train.inner_steps, run.train.inner_lr, run.train.inner_params],
        "device": device.type,
        "code": source_digest(),
    }
    remove_stale_temporaries(Path(cache_dir) / run.key)
    checkpoint_rows, task_rows, grid_rows = [], [], []
    entries = tqdm(manifest["checkpoints"], desc=f"probe {run.key}", disable=not sys.stderr.isatty())
    for entry in entries:
        path = Path(checkpoint_dir) / entry["file"]
        checkpoint = Checkpoint(path, read_json(path.with_suffix(".json")))
        step = entry["step"]
        key = stable_hash({**inputs, "checkpoint": checkpoint.sidecar["sha256"]})
        cached = Path(cache_dir) / run.key / f"step-{step:08d}-{key}.json"
        if cached.is_file():
            result = read_json(cached)
        else:
            contexts = setup.contexts(checkpoint, step, device)
            result = _probe_checkpoint(contexts, probes, run.dataset, study.probe.split)
            write_json(cached, {"step": step, **result})
        checkpoint_rows.append({"run": run.key, "step": step, "n_tasks": len(tasks), **result["summary"]})
        for t in range(len(tasks)):
            values = {k: _cell(v, t) for k, v in result["per_task"].items()}
            task_rows.append({"run": run.key, "step": step, "task": t, **values})
        for name, grid in result.get("grids", {}).items():
            for i, x in enumerate(grid["x"]):
                for j, y in enumerate(grid["y"]):
                    grid_rows.append(
                        {
                            "run": run.key,
                            "step": step,
                            "grid": name,
                            "direction_seed": study.probe.seed,
                            "x": x,
                            "y": y,
                            "value": grid["values"][i][j],
                        }
                    )
        if tracker is not None:
            tracker.log_metrics({f"probe/{k}": v for k, v in result["summary"].items()}, step=step)

    # Metric columns in name order, whether the results were computed now or read from the cache.
    checkpoint_columns = [
        "run",
        "step",
        "n_tasks",
        *sorted(k for k in checkpoint_rows[0] if k not in ("run", "step", "n_tasks")),
    ]
    task_columns = ["run", "step", "task", *sorted(k for k in task_rows[0] if k not in ("run", "step", "task"))]
    with atomic_dir(out_dir) as tmp:
        write_csv(tmp / "checkpoints.csv", checkpoint_rows, checkpoint_columns)
        write_csv(tmp / "tasks.csv", task_rows, task_columns)
        if grid_rows:
            write_csv(tmp / "grids.csv", grid_rows, list(grid_rows[0]))
        for (dataset, name), task_set in task_sets.items():
            meta = {"split": name, "dataset": dataset, "seed": study.probe.seed}
            other = dataset if dataset != run.dataset else None
            save_task_set(tmp / task_set_file(name, study, other), task_set, meta)
    return checkpoint_rows


def _probe_checkpoint(
    contexts: dict[tuple[str, str], ProbeContext], probes: dict, dataset: str, default_split: str
) -> dict:
    """Every probe of the run's probe set on one checkpoint, each on the fixed tasks of its dataset and split, as
    JSON-ready lists: {"summary": {...}, "per_task": {name: [values]}, "grids": {name: {"x", "y", "values"}}}.
    Outputs of a `<probe>/<split>` key carry the suffix `/<split>`, those of `<probe>@<dataset>` `@<dataset>`."""
    summary: dict[str, float] = {}
    per_task: dict[str, list[float]] = {}
    grids: dict[str, dict] = {}
    for key, options in probes.items():
        suffix = probe_suffix(key)
        output = PROBES.get(probe_name(key)).run(contexts[probe_target(key, dataset, default_split)], options)
        summary.update({k + suffix: v for k, v in output.summary.items()})
        per_task.update({k + suffix: v.tolist() for k, v in output.per_task.items()})
        grids.update(
            {
                k + suffix: {"x": g.x.tolist(), "y": g.y.tolist(), "values": g.values.tolist()}
                for k, g in output.grids.items()
            }
        )
    return {"summary": summary, "per_task": per_task, "grids": grids}


def _cell(values: list[float], task: int):
    """A per-task value, or None for tasks the probe did not measure (first-k probes)."""
    return values[task] if task < len(values) else None
