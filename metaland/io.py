"""Atomic, byte-stable writes and checksums.

Every output goes through a temporary file in the destination folder and ``os.replace``, so a
killed process never leaves a half-written file under its final name. JSON is written with sorted
keys and a trailing newline, so the same content gives the same bytes.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


TEMPORARY_PATTERNS = (".*.tmp", ".tmp*")
"""Temporary files of :func:`atomic_path` (``.<name>.<random>.tmp``) and of safetensors' own
writer (``.tmp<random>``, the Rust ``tempfile`` crate), which a SIGKILL can leave behind."""


def remove_stale_temporaries(folder: Path | str) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder``; return them.

    Only call this where no other process writes into ``folder`` (a stage owns its outputs)."""
    folder = Path(folder)
    found = {p for pattern in TEMPORARY_PATTERNS for p in folder.glob(pattern)} if folder.is_dir() else set()
    stale = sorted(p for p in found if p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, two-space indent, trailing newline."""
    return json.dumps(obj, sort_keys=True, indent=2, allow_nan=True) + "\n"


def write_json(path: Path | str, obj: Any) -> None:
    write_text(path, dumps_json(obj))


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path: Path | str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Write tidy rows (one observation each) with a fixed column order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _csv_cell(row.get(c)) for c in columns})
    write_text(path, buffer.getvalue())


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else value


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_digest(text: str) -> str:
    """sha256 of ``text`` as written by :func:`write_text` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tree_digest(root: Path | str, pattern: str = "*") -> str:
    """sha256 over the files under ``root`` matching ``pattern`` (relative paths and contents, sorted)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob(pattern) if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def source_digest() -> str:
    """sha256 over the package's Python sources (paths and contents): changes with any code change."""
    return tree_digest(Path(__file__).resolve().parent, "*.py")


def stable_hash(obj: Any, length: int = 16) -> str:
    """Short sha256 of an object's canonical JSON (used for params hashes)."""
    return hashlib.sha256(dumps_json(obj).encode()).hexdigest()[:length]
