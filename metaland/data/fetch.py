"""The fetch step: verified archives -> safe extraction -> the normalised layout in ``data/<name>``.

The layout is built in a temporary folder that replaces ``data/<name>`` only when it is complete,
so an interrupted or failed fetch never leaves a partial dataset where ``load_split`` would find it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from metaland.data.archive import extract_archive
from metaland.data.layout import MANIFEST_FILE
from metaland.data.registry import ArchiveSource, DatasetSpec
from metaland.data.sources import cache_dir_from_env, obtain
from metaland.io import atomic_dir, file_digest, read_json, scratch_dir, write_json
from metaland.schema import Params


def fetch_dataset(
    spec: DatasetSpec,
    params: Params,
    data_root: Path,
    *,
    mirror: Path | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Build ``<data_root>/<spec.name>`` from ``spec.sources(params)`` and return its path.

    ``mirror`` is a folder holding the archive files (no network is used then; pass
    ``mirror_from_env()`` to honour ``METALAND_DATA_MIRROR``). Downloads go to ``cache_dir``,
    by default ``METALAND_CACHE`` or ``~/.cache/metaland/archives``. The manifest records the
    dataset, its params and its sources (file, address, checksums) next to the split counts.
    """
    if not isinstance(params, spec.config_model):
        raise TypeError(f"{spec.name} takes {spec.config_model.__name__}, got {type(params)}")
    cache_dir = cache_dir_from_env() if cache_dir is None else Path(cache_dir)
    sources = spec.sources(params)
    archives = {s.filename: obtain(s, mirror=mirror, cache_dir=cache_dir) for s in sources}
    data_root = Path(data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    with atomic_dir(data_root / spec.name) as out, scratch_dir(data_root / spec.name, "extract") as work:
        extracted = {name: extract_archive(path, work / name) for name, path in archives.items()}
        spec.build(params, extracted, out)
        _add_provenance(out, spec, params, sources)
    return data_root / spec.name


def _add_provenance(out: Path, spec: DatasetSpec, params: Params, sources: tuple[ArchiveSource, ...]) -> None:
    """Complete the builder's manifest with what only the fetch step knows, and the sha256 of every
    file of the layout: the manifest's own digest then identifies the data (checkpoints and probe
    results record it)."""
    manifest_path = out / MANIFEST_FILE
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    write_json(
        manifest_path,
        {
            **read_json(manifest_path),
            "dataset": spec.name,
            "params": params.model_dump(mode="json"),
            "sources": [dataclasses.asdict(source) for source in sources],
            "files": {p.name: file_digest(p) for p in files},
        },
    )
