"""Lake et al.'s official one-shot classification runs of Omniglot (Science 2015), as fixed probe tasks.

``all_runs.zip`` (``brendenlake/omniglot``, ``python/one-shot-classification/``) holds 20 runs, each a
20-way 1-shot task within one alphabet of the 20 *evaluation* alphabets: ``runNN/training/classNN.png``
(one drawing per class), ``runNN/test/itemNN.png`` (one drawing per class, by another drawer) and
``runNN/class_labels.txt``, one ``<test file> <training file>`` pair per line (paths relative to the
folder of the runs, as ``demo_classification.py`` reads them). Lake's own score is the error over the
20 runs.

The dataset ``omniglot-lake-runs`` has only a test split, one class per (run, training class) named
``runNN/classNN`` with two images: the training drawing (index 0, the support) and the test item the
labels file matches to it (index 1, the query). It is a probe target, never a run's dataset: a run
trained on Omniglot measures its accuracy on Lake's runs with a cross-domain probe key
(``adaptation@omniglot-lake-runs``), adapting on each run's 20 training drawings and classifying its
20 test items. A 20-way run gets the 20 official tasks; an N-way run, for N < 20, the runs' classes
cut into ⌊20 / N⌋ N-way tasks per run (classes permuted with the probe seed), so every test item is
classified once among N candidates instead of 20: a stated departure, the only way a model with an
N-way head meets the runs. The drawings come from the evaluation alphabets, so a model trained on
them is refused (``omniglot`` with ``split_by`` other than ``lake``): its score would be optimistic.

There is no published checksum of the archive: fetch refuses to run until ``sha256`` is set to that of
the copy you trust (the message says how to get it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from pydantic import Field

from metaland.data.layout import SplitData, write_layout
from metaland.data.omniglot import FULL, SMALL, load_drawing
from metaland.data.registry import DATASETS, ArchiveSource, DatasetSpec
from metaland.data.tasks import TaskSet
from metaland.errors import ConfigError, DataError
from metaland.schema import Params

NAME = "omniglot-lake-runs"
URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/one-shot-classification/all_runs.zip"
LABELS_FILE = "class_labels.txt"
RUN_FOLDER = re.compile(r"run\d{2}")
FIX_ARCHIVE = f"Fix: use the published all_runs.zip ({URL})."


@dataclass(frozen=True)
class Expected:
    """What the archive must hold: runs, and classes (= test items) per run."""

    runs: int
    ways: int


LAKE_RUNS = Expected(runs=20, ways=20)
"""20 runs of 20-way 1-shot classification (Lake et al. 2015; ``demo_classification.py``: ``nrun = 20``)."""


class LakeRunsParams(Params):
    """Which copy of all_runs.zip to use and the size of its drawings."""

    image_size: int = Field(
        28,
        ge=8,
        le=105,
        description="Side of the square images in pixels, downsampled from 105 with Lanczos, inverted (ink = 255) as "
        "the Omniglot datasets are: must equal the image size of the runs it probes.",
    )
    url: str = Field(
        URL,
        pattern=r"^(https?://\S+)?$",
        description="Address of all_runs.zip (default: the brendenlake/omniglot repository, where the Omniglot "
        "archives live); empty = the mirror folder or the download cache only.",
    )
    sha256: str = Field(
        "",
        pattern=r"^([0-9a-fA-F]{64})?$",
        description="sha256 of all_runs.zip (64 hex digits). No checksum is published, so fetch refuses to run "
        "until it is set to that of a copy you trust (metaland default: empty).",
    )


def sources(params: LakeRunsParams) -> tuple[ArchiveSource, ...]:
    """The one archive; refused before any work while its checksum is unset."""
    if not params.sha256:
        raise ConfigError(
            f"datasets.{NAME}.sha256 is empty: Lake et al. publish no checksum of all_runs.zip, so fetch verifies "
            f"the copy you use against the one you give. Fix: download it ({params.url or URL}), check it is the "
            f"file of the brendenlake/omniglot repository, and set datasets.{NAME}.sha256 to the output of "
            "`sha256sum all_runs.zip` (or put the file in the folder named by METALAND_DATA_MIRROR)."
        )
    return (ArchiveSource("all_runs.zip", params.url, sha256=params.sha256.lower()),)


def run_folders(top: Path, expected: Expected) -> list[Path]:
    """The ``runNN`` folders (each with its labels file) at any depth, in name order."""
    folders = sorted({p.parent for p in top.rglob(LABELS_FILE) if RUN_FOLDER.fullmatch(p.parent.name)})
    if len(folders) != expected.runs or len({f.name for f in folders}) != len(folders):
        raise DataError(
            f"all_runs.zip holds {len(folders)} runNN/{LABELS_FILE} files, but {NAME} is declared with "
            f"{expected.runs} runs. {FIX_ARCHIVE}"
        )
    return folders


def read_pairs(folder: Path, expected: Expected) -> list[tuple[Path, Path]]:
    """(training drawing, test item) per class of one run, in the name order of the training drawings."""
    label = f"{folder.name}/{LABELS_FILE}"
    pairs = {}
    for number, line in enumerate(folder.joinpath(LABELS_FILE).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"Line {number} of {label} is not a '<test file> <training file>' pair. {FIX_ARCHIVE}")
        test, training = (
            _inside_run(folder, path, kind, label) for path, kind in zip(parts, ("test", "training"), strict=True)
        )
        if training in pairs or test in pairs.values():
            raise DataError(f"{label} pairs {training.name} or {test.name} twice. {FIX_ARCHIVE}")
        pairs[training] = test
    if len(pairs) != expected.ways:
        raise DataError(f"{label} pairs {len(pairs)} classes, not {expected.ways}. {FIX_ARCHIVE}")
    return sorted(pairs.items(), key=lambda pair: pair[0].name)


def _inside_run(folder: Path, path: str, kind: str, label: str) -> Path:
    """``runNN/<kind>/<file>.png`` (or ``<kind>/<file>.png``) of a labels file as a file of ``folder``."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if len(parts) < 2 or parts[-2] != kind or not parts[-1].endswith(".png") or ".." in parts:
        raise DataError(f"{label} names {path!r} where a {kind}/<file>.png of the run belongs. {FIX_ARCHIVE}")
    if len(parts) > 2 and parts[-3] != folder.name:
        raise DataError(f"{label} names {path!r}, a file of another run. {FIX_ARCHIVE}")
    file = folder / kind / parts[-1]
    if not file.is_file():
        raise DataError(f"{label} names {path!r}, which the archive lacks. {FIX_ARCHIVE}")
    return file


def build(expected: Expected, params: LakeRunsParams, archives: Mapping[str, Path], out_dir: Path) -> None:
    """Write the test split (two drawings per class: training, then its test item) into ``out_dir``."""
    ((_, top),) = archives.items()
    images, names = [], []
    for folder in run_folders(top, expected):
        for training, test in read_pairs(folder, expected):
            images += [load_drawing(training, params.image_size), load_drawing(test, params.image_size)]
            names.append(f"{folder.name}/{training.stem}")
    offsets = torch.arange(0, 2 * len(names) + 1, 2)
    split = SplitData(torch.stack(images).unsqueeze(1), offsets, tuple(names))
    write_layout(out_dir, {"test": split}, {"runs": expected.runs, "ways_per_run": expected.ways})


def sample_lake_tasks(
    split: SplitData, *, ways: int, shots: int, queries: int, n_tasks: int, generator: torch.Generator
) -> TaskSet:
    """The runs as ``ways``-way 1-shot tasks with one query per class (the run's ``queries`` do not apply:
    each class has one test item). ``ways`` = the classes of a run gives the official runs; fewer cuts each
    run's classes, permuted, into ⌊classes / ways⌋ tasks, ordered group after group so that the first
    ``n_tasks`` cover every run evenly. Class order within a task is permuted too (random labels)."""
    runs: dict[str, list[int]] = {}
    for c, name in enumerate(split.class_names):
        runs.setdefault(name.split("/")[0], []).append(c)
    per_run = min(len(classes) for classes in runs.values())
    if shots != 1 or ways > per_run:
        raise ValueError(f"Lake's runs are {per_run}-way 1-shot; {ways}-way {shots}-shot tasks cannot be cut from them")
    groups = per_run // ways
    cut = []
    for classes in runs.values():
        order = torch.tensor(classes)[torch.randperm(len(classes), generator=generator)]
        cut.append([order[g * ways : (g + 1) * ways] for g in range(groups)])
    tasks = [cut[r][g] for g in range(groups) for r in range(len(cut))][:n_tasks]
    classes = torch.stack(tasks)
    support = torch.zeros(len(tasks), ways, 1, dtype=torch.int64)
    return TaskSet(classes, support, torch.ones_like(support))


def trained_on_the_runs(spec: DatasetSpec, params: Params) -> str | None:
    """Why a run trained on ``spec`` with ``params`` must not be scored on Lake's runs, or None."""
    if spec.name == SMALL.name:
        return None  # background alphabets only
    if spec.name == FULL.name and getattr(params, "split_by", None) == "lake":
        return None
    if spec.name == FULL.name:
        return (
            "its dataset omniglot trains on characters of the evaluation alphabets, which Lake's runs are drawn "
            "from, so the score would be optimistic. Fix: set split_by: lake for its dataset (a variant such as "
            "omniglot-lake), or train on omniglot-small"
        )
    return f"Lake's runs are Omniglot drawings and the run trains on {spec.name}. Fix: probe Omniglot runs only"


def make_spec(expected: Expected) -> DatasetSpec:
    """The dataset whose archive must hold ``expected``; registered with :data:`LAKE_RUNS`."""
    return DatasetSpec(
        name=NAME,
        description="Lake et al.'s 20 official one-shot runs (20-way 1-shot, evaluation alphabets); probe target only.",
        sources=sources,
        config_model=LakeRunsParams,
        split_sizes=lambda _params: {"test": expected.runs * expected.ways},
        min_instances=lambda _params: 2,
        build=lambda params, archives, out_dir: build(expected, params, archives, out_dir),
        channels=1,
        sample_tasks=sample_lake_tasks,
        splits=("test",),
        fixed_queries=1,
        probe_check=trained_on_the_runs,
    )


DATASETS.register(NAME, make_spec(LAKE_RUNS))
