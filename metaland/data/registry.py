"""The dataset registry: what a dataset is made of and how its normalised layout is built.

Normalised layout written by ``fetch`` (see ``metaland.data.layout``)::

    data/<dataset>/
      train.safetensors   images: uint8 [N, C, H, W]; offsets: int64 [classes + 1]
      val.safetensors     (class c of a split owns images[offsets[c]:offsets[c+1]])
      test.safetensors
      classes.json        {"train": [class names], "val": [...], "test": [...]}
      manifest.json       dataset, its params, source archives and checksums, counts

Pixel convention: uint8, 255 = ink / signal, so ``images / 255`` is the model input everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from metaland.registry import Registry
from metaland.schema import Params

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ArchiveSource:
    """One downloadable file: its public address and checksums (at least one must be given).

    An empty ``url`` means the file has no public address: it comes from a mirror folder or the
    download cache only.
    """

    filename: str
    url: str
    sha256: str | None = None
    md5: str | None = None

    def __post_init__(self) -> None:
        if not (self.sha256 or self.md5):
            raise ValueError(f"archive {self.filename} has no checksum")


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset.

    ``split_sizes`` and ``min_instances`` are known before anything is downloaded, so params
    validation can refuse an impossible task (20-way on a 10-class split) before work starts.
    ``sources`` gives the archives for the dataset's params (fixed for most datasets; user-given
    for MiniImagenet, which has no canonical public archive) and may raise :class:`ConfigError`
    when the params cannot name one. ``build`` turns the verified archives into the normalised
    layout inside ``out_dir``. ``sample_tasks`` replaces episodic class sampling for a dataset whose
    tasks are not random class subsets (``metaland.data.tasks.sample_dataset_tasks``).
    """

    name: str
    description: str
    sources: Callable[[Params], tuple[ArchiveSource, ...]]
    config_model: type[Params]
    split_sizes: Callable[[Params], Mapping[str, int]]
    min_instances: Callable[[Params], int]
    build: Callable[[Params, Mapping[str, Path], Path], None]
    channels: int = 1
    sample_tasks: Callable | None = None  # a task sampler like metaland.data.tasks.sample_tasks; None = that
    input_shape: Callable[[Params], tuple[int, ...]] | None = None  # None: (channels, image_size, image_size)
    splits: tuple[str, ...] = SPLITS
    fixed_queries: int | None = None
    probe_check: Callable[[DatasetSpec, Params], str | None] | None = None

    def shape_of(self, params: Params) -> tuple[int, ...]:
        """The shape of one model input of the dataset built with ``params``."""
        if self.input_shape is not None:
            return self.input_shape(params)
        size = params.image_size  # type: ignore[attr-defined]  (every image dataset has the knob)
        return (self.channels, size, size)


DATASETS: Registry[DatasetSpec] = Registry("dataset")

VARIANT_SEPARATOR = "-"


def spec_of(name: str, *, key: str = "") -> DatasetSpec:
    """The registered dataset a ``datasets`` entry stands for: the entry's own name, or, for an entry
    ``<dataset>-<variant>`` (``cub-224``, ``omniglot-small-alphabets``), the longest registered name it
    extends. A variant is one more fetch of the same dataset with its own params (a second image size, a
    second class split), so that runs in two settings of one dataset can live in one params file; it is
    its own dataset everywhere else (``data/<entry>``, the ``dataset`` column, the strata of the claims).
    ``key`` names the parameter that asked, for the message of an unknown name."""
    names = DATASETS.names()
    if name in names:
        return DATASETS.get(name)
    bases = [base for base in names if name.startswith(base + VARIANT_SEPARATOR) and len(name) > len(base) + 1]
    if bases:
        return DATASETS.get(max(bases, key=len))
    return DATASETS.get(name, key=key)  # unknown: the registry's message, with the known names


def registered_name(name: str) -> str | None:
    """The registered dataset a ``datasets`` entry (or a study table's ``dataset`` value) stands for, or
    ``None`` for a name that is neither registered nor a variant of a registered dataset."""
    from metaland.errors import ConfigError

    try:
        return spec_of(name).name
    except ConfigError:
        return None
