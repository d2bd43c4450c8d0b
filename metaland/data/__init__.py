"""Datasets: where they come from, how they are fetched safely, and their normalised layout.

``import metaland.data`` registers every dataset in :data:`DATASETS` (no network is touched);
``fetch_dataset`` builds ``data/<name>`` and ``load_split`` reads one split of it back.
"""

from metaland.data import cars as _cars  # noqa: F401  (registers Stanford Cars, seed 004)
from metaland.data import cifar_fs as _cifar_fs  # noqa: F401  (registers CIFAR-FS, seed 003)
from metaland.data import cub as _cub  # noqa: F401  (registers CUB-200-2011, seed 001)
from metaland.data import miniimagenet as _miniimagenet  # noqa: F401  (registers MiniImagenet)
from metaland.data import omniglot as _omniglot  # noqa: F401  (registers the Omniglot datasets)
from metaland.data import omniglot_runs as _omniglot_runs  # noqa: F401  (registers Lake's one-shot runs)
from metaland.data import synthetic as _synthetic  # noqa: F401  (registers synthetic-binary, seed 003)
from metaland.data import tieredimagenet as _tieredimagenet  # noqa: F401  (registers tieredImageNet, seed 004)
from metaland.data.fetch import fetch_dataset
from metaland.data.layout import SplitData, load_split
from metaland.data.registry import DATASETS, SPLITS, ArchiveSource, DatasetSpec, registered_name, spec_of
from metaland.data.sources import mirror_from_env

__all__ = [
    "DATASETS",
    "SPLITS",
    "ArchiveSource",
    "DatasetSpec",
    "SplitData",
    "fetch_dataset",
    "load_split",
    "mirror_from_env",
    "registered_name",
    "spec_of",
]
