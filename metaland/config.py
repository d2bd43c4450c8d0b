"""Typed, validated parameters: the one place a knob is defined.

``params.yaml`` is loaded through :func:`load_params`. Every block is a pydantic model that
rejects unknown keys; every field has a type, a range, a default and a description citing the
seed it comes from (``python -m metaland params`` prints them). Cross-field checks that need
dataset facts (20-way on a split with 10 classes, 5 shots + 16 queries from 20 drawings) run
here too, before any work starts, and every failure is one paragraph naming the key and the fix.

Shape of ``params.yaml``::

    profile: default                # which profile this file was made from (profiles/<name>.yaml)
    device: auto                    # auto | cpu | cuda (execution only; not a DVC dependency)
    datasets:  {<name>: <dataset params>}
    studies:   {<study>: {defaults: <run params>, extract: ..., probe: ...}}
    runs:      {<study>-<...>: {study, algorithm, dataset, ways, shots, seed, [overrides]}}

A run names its identity explicitly (study, algorithm, dataset, ways, shots, seed) and inherits
every other knob from ``studies.<study>.defaults``; it may override any of them. DVC tracks
``runs.<key>`` and ``studies.<study>.defaults`` for its train stage, so changing one knob reruns
exactly what depends on it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import Field, ValidationError, model_validator

from metaland.errors import ConfigError
from metaland.io import stable_hash
from metaland.params_file import load_yaml, read_params_text
from metaland.schema import Params

RUN_KEY = re.compile(r"[a-z0-9][a-z0-9._-]*")
MAX_RUN_KEY = 100
"""Longest run key: it names folders, temporary files beside them (``.<run>.<pid>-<random>.tmp``)
and MLflow runs, within the 255 bytes a file name may have."""
MAX_SEED = 2**63 - 1
IDENTITY_KEYS = ("study", "algorithm", "dataset", "ways", "shots", "seed")
# Knobs that do not change the training trajectory: a run may be extended or shortened and still
# resume from its checkpoints (they are left out of the checkpoint params hash).
RESUME_INVARIANT_TRAIN_KEYS = ("iterations", "log_every")
DEFAULT_PROBE_SET = "default"
ENGINE_DESCRIPTION = (
    "How per-task meta-gradients are computed (metaland.meta.engines; the same numbers to float rounding): "
    "vmap = torch.func.vmap over tasks of per-task grad (one launch: GPUs); loop = the same, a task at a "
    "time; hybrid = plain autograd, the support passes of all tasks as one grouped network, query passes "
    "task by task, tasks split among worker threads of one intra-op thread each (fastest on CPUs, "
    "docs/performance.md); auto = hybrid on a CPU with the plain inner step, vmap otherwise (a fixed rule, "
    "so the same params give the same bytes; the resolved engine is in every checkpoint's sidecar)."
)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class TrainConfig(Params):
    """Meta-training knobs (seed 000 §2.3.1 eqs. 2.1-2.2, §2.7.3)."""

    inner_steps: int = Field(
        5, ge=1, le=100, description="T: full-batch GD steps on the support set (eq. 2.1; §2.7.3: 5)."
    )
    inner_lr: float = Field(
        0.1, gt=0, le=10, description="α: inner-loop learning rate (§2.7.3: 0.1 Omniglot, 0.01 MiniImagenet)."
    )
    meta_batch: int = Field(
        16, ge=1, le=1024, description="n: tasks per meta-iteration (§2.7.3: 16 for 1-shot, 8 for 5-shot, Omniglot)."
    )
    meta_lr: float = Field(
        1e-3,
        gt=0,
        le=10,
        description="β: learning rate of the meta-update, no schedule (§2.7.3: 0.001; seed 003 A.1.1 uses SGD "
        "steps up to 3.9).",
    )
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999),
        description="Adam β1, β2 of the meta-update, each in [0, 1) (seed 000 silent: PyTorch/TensorFlow defaults).",
    )
    adam_eps: float = Field(1e-8, gt=0, description="Adam ε of the meta-update (seed 000 silent: PyTorch default).")
    meta_optimizer: Literal["adam", "sgd"] = Field(
        "adam",
        description="Optimizer of the meta-update: Adam (seed 000 §2.7.3; official Sharp-MAML code) or plain SGD "
        "θ ← θ − β ∇ (seed 002, step 9 as written). Adam's β1, β2, ε are unused under SGD.",
    )
    iterations: int = Field(50_000, ge=1, description="Meta-iterations in all (§2.7.3: 100 epochs × 500 iterations).")
    checkpoint_every: int = Field(
        500, ge=1, description="Meta-iterations between checkpoints; the thesis probes once per epoch = 500."
    )
    log_every: int = Field(25, ge=1, description="Meta-iterations between logged training metrics.")
    val_tasks: int = Field(
        50, ge=1, description="Fixed validation-split tasks evaluated at each checkpoint (best-on-validation)."
    )
    task_chunk: int = Field(
        0,
        ge=0,
        description="Tasks computed together (0 = the whole meta-batch, 1 = one at a time): under the vmap "
        "engine, tasks vectorised with torch.func.vmap; under hybrid, tasks in one grouped support pass; "
        "changes speed and memory only.",
    )
    engine: Literal["auto", "vmap", "loop", "hybrid"] = Field("auto", description=ENGINE_DESCRIPTION)
    inner_params: str = Field(
        "all",
        min_length=1,
        description="Parameters the inner loop adapts (the outer loop meta-learns all): all; head (ANIL, "
        "seed 004); body (BOIL, seed 004: head frozen in the inner loop); or comma-separated shell patterns "
        "over parameter names (layer-wise adaptation, seed 003 §3.2).",
    )
    augment: Literal["none", "chen"] = Field(
        "none",
        description="Data augmentation of the images each training iteration trains on (support and query "
        "images of every task; the finetune baseline's batches); validation and probes never augment. none; "
        "chen = Chen et al.'s RandomResizedCrop + brightness/contrast/saturation jitter 0.4 + horizontal flip "
        "(seed 001 §3.3, §4.2.1 'aug'; metaland.data.augment).",
    )
    algorithm_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the algorithm, validated by its registry entry."
    )


class ExtractConfig(Params):
    """Which checkpoints the study probes (union of the rules)."""

    every: int = Field(1, ge=0, description="Keep every k-th checkpoint of the schedule (0 = none of them).")
    log_spaced: int = Field(0, ge=0, description="Also keep this many log-spaced checkpoints.")
    best: bool = Field(True, description="Also keep the checkpoint with the best validation accuracy.")
    final: bool = Field(True, description="Also keep the final checkpoint.")

    @model_validator(mode="after")
    def _selects_something(self) -> ExtractConfig:
        if not (self.every or self.log_spaced or self.best or self.final):
            raise ValueError(
                "every rule is off (every = 0, log_spaced = 0, best and final false), so no checkpoint "
                "would be probed; turn on at least one, e.g. final: true"
            )
        return self


class ProbeConfig(Params):
    """Landscape probes on fixed, seeded evaluation task sets (seed 000 §2.4)."""

    split: Literal["val", "test"] = Field(
        "test", description="Class split the probe tasks come from (§2.4: meta-test)."
    )
    tasks: int = Field(
        100, ge=2, description="Fixed tasks per checkpoint (§2.5.2: 500 for coherence; §2.5.1: 60 for curvature)."
    )
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="Seed of the study's evaluation task set (same tasks for every run and checkpoint).",
    )
    chunk: int = Field(
        25,
        ge=1,
        description="Tasks vectorised together; 1 = a plain loop. Speed and memory only (on a CPU, chunks whose "
        "activations outgrow the last-level cache run slower than small ones; docs/performance.md).",
    )
    inner_steps: int | None = Field(
        None,
        ge=0,
        description="Inner steps of the meta-test adaptation the probes use; none = the run's train.inner_steps "
        "(seed 000 §2.7.3: always the same; seed 001 Table 5: 5 in meta-training, 10 at meta-test).",
    )
    probes: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Probe name -> options, each validated by the probe registry: the probe set of every run that "
        "names no other. A key `<probe>/<split>` (train | val | test) runs the probe on the same number of fixed "
        "tasks of that split instead (seed 001 measures meta-train and meta-test tasks); its outputs carry the "
        "suffix `/<split>`. A key `<probe>@<dataset>` (or `<probe>@<dataset>/<split>`) runs it on the fixed tasks of "
        "another declared dataset (cross-domain evaluation, seed 004 Tables 1, 3-5: train on one dataset, meta-test "
        "on another's test split; Lake's one-shot runs, omniglot-lake-runs); its outputs carry `@<dataset>`.",
    )
    probe_sets: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description="Further named probe sets (name -> probes, as above) that a run selects with `probe_set`, "
        "e.g. costly landscapes on one seed only, or a baseline probed differently (seed 001 §4.3).",
    )


class AggregateConfig(Params):
    """Study tables and claim statistics."""

    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the reported intervals.")
    alpha: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Significance level of the claim rules (fixed before the data), after Holm's adjustment over "
        "a study's findings.",
    )
    min_seeds: int = Field(
        3,
        ge=2,
        le=1000,
        description="Training runs (seeds) a stratum needs before a claim can hold or fail; with fewer it is "
        "inconclusive (the run is the unit of replication: tasks and checkpoints of one run are not replicates).",
    )


class StudyBlock(Params):
    defaults: dict[str, Any] = Field(default_factory=dict, description="Run params every run of the study inherits.")
    extract: ExtractConfig = ExtractConfig()
    probe: ProbeConfig = ProbeConfig()
    aggregate: AggregateConfig = AggregateConfig()


class RunBlock(Params):
    """One run after merging ``studies.<study>.defaults`` with its own entry."""

    study: str = Field(description="Study key (registry: metaland.studies); the run key starts with it.")
    algorithm: str = Field(description="Meta-learning algorithm (registry: metaland.meta).")
    dataset: str = Field(description="Dataset key, declared under datasets (registry: metaland.data).")
    ways: int = Field(ge=2, le=1000, description="m: classes per task.")
    shots: int = Field(ge=1, le=1000, description="k: support samples per class.")
    queries: int = Field(
        15, ge=1, le=1000, description="Target (query) samples per class; seed 000 silent, cbfinn/maml: 15."
    )
    seed: int = Field(ge=0, le=MAX_SEED, description="Run seed: init, task sampling.")
    probe_set: str = Field(
        DEFAULT_PROBE_SET,
        min_length=1,
        description="Which of its study's probe sets probes the run: default (probe.probes) or a name under "
        "probe.probe_sets. It does not change training.",
    )
    model: dict[str, Any] = Field(description="Model name and options (registry: metaland.models).")
    train: TrainConfig = Field(TrainConfig(), description="Meta-training knobs (block below).")


class StageResources(Params):
    """What one job of a stage kind asks the cluster for (``metaland launch``)."""

    cpus: int = Field(ge=1, le=1024, description="CPU cores per job (SLURM --cpus-per-task; Ray num_cpus).")
    gpus: int = Field(0, ge=0, le=64, description="GPUs per job (SLURM --gpus-per-task; Ray num_gpus).")
    mem_gb: float = Field(gt=0, le=65536, description="Memory per job in GiB (SLURM --mem; Ray memory).")
    time_min: int = Field(
        ge=1,
        le=525_600,
        description="Wall-clock limit per job in minutes (SLURM --time). A job that reaches it, or is preempted, "
        "is requeued and its stage resumes: training from its newest checkpoint, probes from their cache.",
    )


class LaunchConfig(Params):
    """How `metaland launch` spreads the DAG over a cluster: resources per job kind and SLURM passthrough."""

    fetch: StageResources = Field(
        StageResources(cpus=1, mem_gb=4, time_min=60), description="A fetch@<dataset> job (download, checksum, layout)."
    )
    train: StageResources = Field(
        StageResources(cpus=2, mem_gb=8, time_min=120), description="A train@<run> job (meta-training)."
    )
    probe: StageResources = Field(
        StageResources(cpus=2, mem_gb=8, time_min=60), description="A probe@<run> job (extract, then probes)."
    )
    array_parallelism: int = Field(
        32, ge=1, le=100_000, description="Jobs of one wave running at once (SLURM's %N of --array; Ray: in flight)."
    )
    partition: str | None = Field(None, description="SLURM partition (--partition); none = the cluster's default.")
    account: str | None = Field(None, description="SLURM account (--account); none = the user's default.")
    qos: str | None = Field(None, description="SLURM quality of service (--qos); none = the default.")
    constraint: str | None = Field(None, description="SLURM node features (--constraint), e.g. a GPU model.")


class TopLevel(Params):
    profile: str = Field("default", description="Name of the profile this file was made from.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks CUDA when present.")
    seed_offset: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Added to every run's seed (initialisation, meta-batches); the probe tasks stay fixed. Rebuild "
        "with another offset to see which verdicts depend on the draw of training seeds (docs/claims.md).",
    )
    datasets: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Dataset name -> its params (one fetch stage each)."
    )
    studies: dict[str, StudyBlock] = Field(default_factory=dict, description="Study name -> defaults, extract, probe.")
    runs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Run key -> identity and overrides (one train/extract/probe each)."
    )
    launch: LaunchConfig = Field(
        LaunchConfig(), description="Resources of the jobs `metaland launch` submits (no effect on `dvc repro`)."
    )


# --------------------------------------------------------------------------------------------
# Resolved configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One fully resolved run: what ``train@<key>`` trains and ``probe@<key>`` probes."""

    key: str
    study: str
    algorithm: str
    algorithm_options: Params
    dataset: str
    ways: int
    shots: int
    queries: int
    seed: int
    model_name: str
    model: Params
    train: TrainConfig
    probe_set: str = DEFAULT_PROBE_SET  # which of the study's probe sets probes it (not part of training)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "study": self.study,
            "algorithm": self.algorithm,
            "algorithm_options": self.algorithm_options.model_dump(),
            "dataset": self.dataset,
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "seed": self.seed,
            "model": {"name": self.model_name, **self.model.model_dump()},
            "train": self.train.model_dump(),
        }

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Run:
        """The run :meth:`to_dict` wrote, its options validated again (a logged model's run)."""
        from metaland.meta import ALGORITHMS  # imported here: the registries import this module
        from metaland.models import MODELS

        model = dict(spec["model"])
        model_name = model.pop("name")
        return cls(
            **{k: spec[k] for k in ("key", "study", "algorithm", "dataset", "ways", "shots", "queries", "seed")},
            algorithm_options=ALGORITHMS.get(spec["algorithm"]).options_model.model_validate(spec["algorithm_options"]),
            model_name=model_name,
            model=MODELS.get(model_name).config_model.model_validate(model),
            train=TrainConfig.model_validate(spec["train"]),
        )

    def trajectory_hash(self, dataset_params: Params) -> str:
        """Hash of everything that determines the training trajectory (checkpoint sidecars)."""
        spec = self.to_dict()
        del spec["key"]
        for name in RESUME_INVARIANT_TRAIN_KEYS:
            del spec["train"][name]
        spec["dataset_params"] = dataset_params.model_dump()
        return stable_hash(spec)


@dataclass(frozen=True)
class StudyConfig:
    name: str
    extract: ExtractConfig
    probe: ProbeConfig
    probes: dict[str, Params]  # the default probe set: validated options per probe key, in the order given
    aggregate: AggregateConfig
    probe_sets: dict[str, dict[str, Params]] = dataclasses.field(default_factory=dict)  # further named sets

    def probes_for(self, run: Run) -> dict[str, Params]:
        """The probe set that probes ``run`` (validated when the params were loaded)."""
        return self.probes if run.probe_set == DEFAULT_PROBE_SET else self.probe_sets[run.probe_set]

    def probe_targets(self, run: Run) -> list[tuple[str, str]]:
        """The (dataset, split) pairs whose fixed tasks ``run``'s probes measure: its own dataset's probe.split
        first, then those of `/<split>` and `@<dataset>` keys, in key order."""
        extra = (probe_target(key, run.dataset, self.probe.split) for key in self.probes_for(run))
        return list(dict.fromkeys([(run.dataset, self.probe.split), *extra]))

    def probe_splits(self, run: Run) -> list[str]:
        """The splits of ``run``'s own dataset whose fixed tasks its probes measure: probe.split first."""
        return [split for dataset, split in self.probe_targets(run) if dataset == run.dataset]


_PROBE_KEY = re.compile(r"^(?P<probe>[^@/]+)(?:@(?P<dataset>[^@/]+))?(?:/(?P<split>[^@/]+))?$")


def _key_parts(key: str) -> dict[str, str | None]:
    match = _PROBE_KEY.match(key)
    if match is None:
        raise ConfigError(
            f"probe key {key!r} is malformed. Fix: write <probe>, <probe>/<split>, <probe>@<dataset> or "
            "<probe>@<dataset>/<split>."
        )
    return match.groupdict()


def probe_target(key: str, dataset: str, default_split: str) -> tuple[str, str]:
    """The (dataset, split) a probe key measures for a run on ``dataset``: `@<dataset>` and `/<split>` name them,
    else the run's dataset and ``default_split``."""
    parts = _key_parts(key)
    return parts["dataset"] or dataset, parts["split"] or default_split


def probe_split(key: str, default: str) -> str:
    """The split a probe key measures: `<probe>/<split>` names it, a plain `<probe>` uses ``default``."""
    return _key_parts(key)["split"] or default


def probe_name(key: str) -> str:
    """The registered probe a key runs (`surface/train` -> surface, `adaptation@cars` -> adaptation)."""
    return _key_parts(key)["probe"]


def probe_suffix(key: str) -> str:
    """What a key's outputs carry after the probe's own names: `@<dataset>` and `/<split>` as the key gives them."""
    parts = _key_parts(key)
    return (f"@{parts['dataset']}" if parts["dataset"] else "") + (f"/{parts['split']}" if parts["split"] else "")


@dataclass(frozen=True)
class Config:
    source: str
    profile: str
    device: str
    datasets: dict[str, Params]
    studies: dict[str, StudyConfig]
    runs: dict[str, Run]
    launch: LaunchConfig = dataclasses.field(default_factory=LaunchConfig)

    def studies_with_runs(self) -> list[str]:
        """Studies this params file gives at least one run (the others produce nothing)."""
        return [name for name in self.studies if self.runs_of(name)]

    def runs_of(self, study: str) -> list[Run]:
        return [run for run in self.runs.values() if run.study == study]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def read_raw_params(path: Path | str = "params.yaml") -> Any:
    """A params file as parsed (:mod:`metaland.params_file`), before validation."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist. Fix: run from the repository root, or create it from a profile "
            "with `python -m metaland profile default`."
        )
    return load_yaml(read_params_text(path), str(path))


def load_params(path: Path | str = "params.yaml") -> Config:
    """Read, validate and resolve a params file; raise :class:`ConfigError` on any problem."""
    return resolve(read_raw_params(path), source=str(path))


def resolve(raw: Any, *, source: str = "params.yaml") -> Config:
    """Validate a params mapping (as loaded from YAML) into a :class:`Config`."""
    # Registries are populated on import; imported here so that config stays importable alone.
    from metaland.data import spec_of
    from metaland.studies import STUDIES

    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{source} must be a mapping of top-level keys (datasets, studies, runs). Fix: see README.md."
        )
    top = _validate(TopLevel, raw, source, prefix="")

    datasets = {
        name: _validate(spec_of(name, key=f"datasets.{name}").config_model, block, source, f"datasets.{name}")
        for name, block in top.datasets.items()
    }

    studies: dict[str, StudyConfig] = {}
    for name, block in top.studies.items():
        STUDIES.check(name, key=f"studies.{name}")
        probes = _probe_set(block.probe.probes, block.probe, source, f"studies.{name}.probe.probes")
        sets = {
            set_name: _probe_set(entries, block.probe, source, f"studies.{name}.probe.probe_sets.{set_name}")
            for set_name, entries in block.probe.probe_sets.items()
        }
        if DEFAULT_PROBE_SET in sets:
            raise ConfigError(
                f"{source}: studies.{name}.probe.probe_sets.{DEFAULT_PROBE_SET} would shadow probe.probes, the "
                f"set named {DEFAULT_PROBE_SET!r}. Fix: rename the set."
            )
        studies[name] = StudyConfig(name, block.extract, block.probe, probes, block.aggregate, sets)

    runs = {}
    for key, entry in top.runs.items():
        runs[key] = _resolve_run(key, entry, top, datasets, source)
        _check_run(runs[key], datasets, studies[runs[key].study], source)
    return Config(source, top.profile, top.device, datasets, studies, runs, top.launch)


def _probe_set(entries: Mapping[str, Any], probe: ProbeConfig, source: str, where: str) -> dict[str, Params]:
    """Validate one probe set: every key names a registered probe, optionally `/<split>`."""
    from metaland.data.registry import SPLITS
    from metaland.probes import PROBES

    validated = {}
    for probe_key, options in entries.items():
        key = f"{where}.{probe_key}"
        try:
            split = probe_split(probe_key, probe.split)
        except ConfigError as err:
            raise ConfigError(f"{source}: {key}: {err}") from None
        if split not in SPLITS:
            raise ConfigError(
                f"{source}: {key}: {split!r} is not a split. Fix: write <probe>/<split> with one of "
                f"{', '.join(SPLITS)}."
            )
        spec = PROBES.get(probe_name(probe_key), key=key)
        validated[probe_key] = _validate(spec.options_model, options, source, key)
        problem = spec.check(validated[probe_key], probe)
        if problem:
            raise ConfigError(f"{source}: {key}: {problem}")
    return validated


def _resolve_run(key: str, entry: Any, top: TopLevel, datasets: dict[str, Params], source: str) -> Run:
    from metaland.meta import ALGORITHMS
    from metaland.models import MODELS

    where = f"runs.{key}"
    if not RUN_KEY.fullmatch(key):
        raise ConfigError(
            f"{source}: run key {_shown(key)} has characters DVC stage names cannot carry. Fix: use lower-case "
            "letters, digits, '.', '_' and '-', starting with a letter or digit."
        )
    if len(key) > MAX_RUN_KEY:
        raise ConfigError(
            f"{source}: run key {_shown(key)} is {len(key)} characters long; it names folders and files, so at most "
            f"{MAX_RUN_KEY} are allowed. Fix: shorten it."
        )
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{source}: {where} must be a mapping with keys {', '.join(IDENTITY_KEYS)}.")
    missing = [k for k in IDENTITY_KEYS if k not in entry]
    if missing:
        raise ConfigError(
            f"{source}: {where} lacks {', '.join(missing)}. Fix: every run names its identity explicitly "
            f"({', '.join(IDENTITY_KEYS)}); the rest is inherited from studies.<study>.defaults."
        )
    study = entry["study"]
    if study not in top.studies:
        raise ConfigError(
            f"{source}: {where}.study = {study!r} has no block under studies. Fix: add studies.{study} "
            f"or use one of: {', '.join(sorted(top.studies)) or '(none)'}."
        )
    if not key.startswith(f"{study}-"):
        raise ConfigError(
            f"{source}: run key {key!r} must start with its study name and a dash ({study}-...), so outputs "
            "group by study. Fix: rename the run."
        )
    if entry["dataset"] not in datasets:
        raise ConfigError(
            f"{source}: {where}.dataset = {entry['dataset']!r} is not declared under datasets, so nothing "
            f"fetches it. Fix: add datasets.{entry['dataset']} or use one of: {', '.join(sorted(datasets))}."
        )
    defaults = top.studies[study].defaults
    merged = _deep_merge(defaults, entry)
    run_block = _validate(RunBlock, merged, source, where, overrides=entry, defaults_key=f"studies.{study}.defaults")

    model_cfg = dict(run_block.model)
    model_name = model_cfg.pop("name", None)
    model_key = _origin(("model", "name"), entry, where, f"studies.{study}.defaults")
    if model_name is None:
        raise ConfigError(f"{source}: {model_key} is missing. Fix: name a model, e.g. convnet.")
    model_params = _validate(
        MODELS.get(model_name, key=model_key).config_model, model_cfg, source, model_key.rsplit(".", 1)[0]
    )
    algo_key = f"{where}.algorithm"
    algo = ALGORITHMS.get(run_block.algorithm, key=algo_key)
    options = _validate(
        algo.options_model,
        run_block.train.algorithm_options,
        source,
        _origin(("train", "algorithm_options"), entry, where, f"studies.{study}.defaults"),
    )
    return Run(
        key=key,
        study=study,
        algorithm=run_block.algorithm,
        algorithm_options=options,
        dataset=run_block.dataset,
        ways=run_block.ways,
        shots=run_block.shots,
        queries=run_block.queries,
        seed=run_block.seed + top.seed_offset,
        model_name=model_name,
        model=model_params,
        train=run_block.train,
        probe_set=run_block.probe_set,
    )


def _check_run(run: Run, datasets: dict[str, Params], study: StudyConfig, source: str) -> None:
    """Cross-field checks that need dataset facts."""
    from metaland.data import spec_of

    where = f"runs.{run.key}"
    spec = spec_of(run.dataset)
    dataset_params = datasets[run.dataset]
    if run.probe_set != DEFAULT_PROBE_SET and run.probe_set not in study.probe_sets:
        known = ", ".join([DEFAULT_PROBE_SET, *study.probe_sets])
        raise ConfigError(
            f"{source}: {where}.probe_set = {run.probe_set!r} is not a probe set of study {run.study}. "
            f"Fix: use one of: {known}, or add it under studies.{run.study}.probe.probe_sets."
        )
    if not {"train", "val"} <= set(spec.splits):
        raise ConfigError(
            f"{source}: {where}.dataset = {run.dataset!r} holds only the {', '.join(spec.splits)} split "
            f"({spec.description}) and cannot be trained on. Fix: train on another dataset and probe this one "
            f"with a key `<probe>@{run.dataset}` in the run's probe set."
        )
    needed = [(run.dataset, "train", "meta-training"), (run.dataset, "val", "validation at checkpoints")]
    needed += [(dataset, split, "probing") for dataset, split in study.probe_targets(run)]
    for dataset, split, use in needed:
        target = _probe_target_spec(run, dataset, datasets, source) if dataset != run.dataset else spec
        sizes = target.split_sizes(datasets[dataset])
        if split not in sizes:
            raise ConfigError(
                f"{source}: {where}: its probes measure the {split} split of {dataset!r}, which has only "
                f"{', '.join(sizes)}. Fix: name one of those splits in the probe key (<probe>@{dataset}/<split>)."
            )
        if run.ways > sizes[split]:
            raise ConfigError(
                f"{source}: {where}.ways = {run.ways} is impossible: the {split} split of dataset "
                f"{dataset!r} has {sizes[split]} classes, and {use} draws {run.ways}-way tasks from it. "
                f"Fix: lower ways to at most {sizes[split]}, or enlarge the split in datasets.{dataset}.split."
            )
        if dataset != run.dataset:
            queries = target.fixed_queries or run.queries
            if run.shots + queries > target.min_instances(datasets[dataset]):
                raise ConfigError(
                    f"{source}: {where}: its probes on {dataset!r} need shots + queries = {run.shots} + {queries} "
                    f"samples per class, and that dataset's classes have {target.min_instances(datasets[dataset])}. "
                    f"Fix: lower queries, or drop the key `<probe>@{dataset}` from the run's probe set."
                )
    per_class = spec.min_instances(dataset_params)
    if run.shots + run.queries > per_class:
        raise ConfigError(
            f"{source}: {where}: shots + queries = {run.shots} + {run.queries} exceeds the {per_class} "
            f"samples every class of {run.dataset!r} has, and support and query samples must differ. "
            f"Fix: lower queries (a run may override it) to at most {per_class - run.shots}."
        )
    if run.train.checkpoint_every % run.train.log_every:
        raise ConfigError(
            f"{source}: {where}: train.checkpoint_every = {run.train.checkpoint_every} is not a multiple of "
            f"train.log_every = {run.train.log_every}, so a run resumed from a checkpoint would average a partial "
            "logging window. Fix: make checkpoint_every a multiple of log_every."
        )
    from metaland.meta import ALGORITHMS

    for step, name in ALGORITHMS.get(run.algorithm).milestones(run.algorithm_options).items():
        if step < run.train.iterations and step % run.train.log_every:
            raise ConfigError(
                f"{source}: {where}: the {name} milestone of algorithm {run.algorithm} at step {step} is not a "
                f"multiple of train.log_every = {run.train.log_every}; it is always checkpointed, so a run resumed "
                "from it would average a partial logging window. Fix: make it a multiple of log_every."
            )
    if run.train.checkpoint_every > run.train.iterations:
        raise ConfigError(
            f"{source}: {where}: train.checkpoint_every = {run.train.checkpoint_every} is larger than "
            f"train.iterations = {run.train.iterations}, so only the initial and final checkpoints would exist. "
            "Fix: lower checkpoint_every."
        )


def _probe_target_spec(run: Run, dataset: str, datasets: dict[str, Params], source: str):
    """The spec of a dataset another run's probes measure (cross-domain), after checking that the run's model can
    read its inputs and that the dataset accepts the run (Lake's runs refuse a model trained on their alphabets)."""
    from metaland.data import spec_of

    where = f"runs.{run.key}"
    if dataset not in datasets:
        raise ConfigError(
            f"{source}: {where}: a probe key of its probe set measures `@{dataset}`, which is not declared under "
            f"datasets, so nothing fetches it. Fix: add datasets.{dataset}, or use one of: "
            f"{', '.join(sorted(datasets))}."
        )
    own, target = spec_of(run.dataset), spec_of(dataset)
    own_shape, target_shape = own.shape_of(datasets[run.dataset]), target.shape_of(datasets[dataset])
    if own_shape != target_shape:
        raise ConfigError(
            f"{source}: {where}: its model reads inputs of shape {list(own_shape)} ({run.dataset}), but the probes "
            f"`@{dataset}` would feed it {list(target_shape)}. Fix: give datasets.{dataset} the same image size "
            f"(a variant entry such as {dataset}-{own_shape[-1]} if other runs need the present one)."
        )
    refusal = target.probe_check(own, datasets[run.dataset]) if target.probe_check else None
    if refusal:
        raise ConfigError(f"{source}: {where}: its probes `@{dataset}` cannot score this run: {refusal}.")
    return target


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), Mapping):
            merged[k] = _deep_merge(merged[k], v)
        else:
            merged[k] = copy.deepcopy(v)
    return merged


def _origin(loc: tuple, overrides: Mapping | None, prefix: str, defaults_key: str | None) -> str:
    """The dotted key a value came from: the run's own entry if it sets it, else the study defaults."""
    if overrides is None or defaults_key is None:
        return ".".join([prefix, *map(str, loc)]).strip(".")
    node: Any = overrides
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return ".".join([defaults_key, *map(str, loc)])
    return ".".join([prefix, *map(str, loc)])


def _validate(model: type[Params], data: Any, source: str, prefix: str, overrides=None, defaults_key=None):
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_explain(err, model, data, source, prefix, overrides, defaults_key)) from None


def _explain(err: ValidationError, model, data, source, prefix, overrides, defaults_key) -> str:
    parts = []
    for e in err.errors()[:3]:
        loc = tuple(e["loc"])
        key = _origin(loc, overrides, prefix, defaults_key)
        kind = e["type"]
        if kind == "extra_forbidden":
            known = _known_keys(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            parts.append(
                f"{key} is not a known parameter.{hint} Known keys there: {', '.join(known) or '(none)'}. "
                "Fix: correct the spelling or remove it"
            )
        elif kind == "missing":
            parts.append(f"{key} is required but missing. Fix: add it (`python -m metaland params` lists every knob)")
        else:
            parts.append(
                f"{key} = {_shown(e.get('input'))} is invalid: {e['msg']}. Fix: give a value that satisfies this "
                "(`python -m metaland params` lists every knob with its type, range and default)"
            )
    more = f" (and {err.error_count() - 3} more problems)" if err.error_count() > 3 else ""
    return f"{source}: " + "; ".join(parts) + f"{more}."


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a wrongly typed value may be an expanded alias of
    megabytes)."""
    if isinstance(value, Mapping | list) and len(value) > limit:
        return f"<a {type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _known_keys(model: type[Params], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, Params):
            model = annotation
        else:
            return []
    return sorted(model.model_fields)


BOUNDS = (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))


def describe(model: type[Params]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) for every field of a block, for `metaland params`."""
    rows = []
    for name, field in model.model_fields.items():
        if get_origin(field.annotation) is Literal:
            annotation = " | ".join(map(str, get_args(field.annotation)))
        else:
            annotation = getattr(field.annotation, "__name__", str(field.annotation)).replace("typing.", "")
        bounds = [f"{symbol} {getattr(m, attr)}" for m in field.metadata for attr, symbol in BOUNDS if hasattr(m, attr)]
        kind = annotation + (f" ({', '.join(bounds)})" if bounds else "")
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = repr(field.default_factory())
        elif isinstance(field.default, Params):
            default = "(block)"
        else:
            default = repr(field.default)
        rows.append((name, kind, default, field.description or ""))
    return rows
