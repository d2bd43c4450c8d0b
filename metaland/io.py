"""Atomic, byte-stable writes and checksums.

Every output goes through a temporary file in the destination folder and ``os.replace``, so a
killed process never leaves a half-written file under its final name. JSON is written with sorted
keys and a trailing newline, so the same content gives the same bytes.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io
import json
import os
import re
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
    """Yield a temporary folder next to ``path``; it replaces ``path`` only if the block succeeds.

    The temporary folder is ``.<name>.<pid>-<random>.tmp``: the temporaries a killed writer left
    beside ``path`` are removed first (:func:`remove_stale_siblings`). ``path`` must not be a
    symbolic link, which the rename would replace (:func:`refuse_symlink`)."""
    path = Path(path)
    refuse_symlink(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(path)
    with scratch_dir(path) as tmp:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)


@contextlib.contextmanager
def scratch_dir(near: Path | str, purpose: str = "") -> Iterator[Path]:
    """A temporary folder ``.<name>.[<purpose>.]<pid>-<random>.tmp`` beside ``near``, removed on exit
    (unless renamed away); the pid in its name lets a later writer tell it was left by a dead one."""
    near = Path(near)
    label = f".{near.name}.{purpose + '.' if purpose else ''}{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(prefix=label, suffix=".tmp", dir=near.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_WRITER_PID = re.compile(r"\.(\d+)-[^./]*\.tmp$")


def remove_stale_siblings(path: Path | str) -> list[Path]:
    """Delete what killed writers of ``path`` left beside it: temporary folders and files
    ``.<name>.….tmp`` whose writer process (the pid in the name; none in older names) is gone, and
    ``.<name>.old``; return them. Outputs are written by one stage at a time (DVC's lock), so a live
    writer's temporaries are all that is kept."""
    path = Path(path)
    stale = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if candidate.name == f".{path.name}.old":
            stale.append(candidate)
        elif candidate.name.endswith(".tmp"):
            writer = _WRITER_PID.search(candidate.name)
            if writer is None or not process_alive(int(writer.group(1))):
                stale.append(candidate)
    for candidate in stale:
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
    return sorted(stale)


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on this machine, under any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def refuse_symlink(path: Path) -> None:
    """Raise :class:`metaland.errors.SystemError_` if output ``path`` is a symbolic link: replacing it
    by rename would drop the link (and leave the folder it points to stale)."""
    if path.is_symlink():
        from metaland.errors import SystemError_

        raise SystemError_(
            f"the output {path} is a symbolic link (to {os.readlink(path)}); metaland writes an output as a new "
            "folder renamed into place, which would replace the link. Nothing was changed. Fix: remove the link "
            f"(`rm {path}`) and rerun; to keep outputs on another disk, put DVC's cache there (`dvc cache dir`)."
        )


def write_safetensors(path: Path | str, tensors: Mapping[str, Any], what: str) -> None:
    """Write ``tensors`` to a safetensors file atomically. safetensors' writer is Rust and reports the
    OS's errors as text ("... No space left on device (os error 28)"): those become the user-facing
    :class:`metaland.errors.SystemError_` of the OS error, naming ``what`` was written."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from metaland.errors import system_error

    with atomic_path(path) as tmp:
        try:
            save_file(dict(tensors), str(tmp))
        except SafetensorError as err:
            found = re.search(r"os error (\d+)", str(err))
            code = int(found.group(1)) if found else 0
            mapped = system_error(OSError(code, os.strerror(code), str(path)), f"writing {what}") if code else None
            if mapped is None:
                raise
            raise mapped from None


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


PACKAGE = Path(__file__).resolve().parent


def source_digest() -> str:
    """sha256 over the package's Python sources (paths and contents): changes with any code change."""
    return tree_digest(PACKAGE, "*.py")


def package_digest(paths: Sequence[str]) -> str:
    """sha256 over the Python sources of some of the package's files and folders (``meta``,
    ``checkpoints.py``, ...), by relative path and content."""
    digest = hashlib.sha256()
    for relative in sorted(paths):
        path = PACKAGE / relative
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(PACKAGE).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Short sha256 of an object's canonical JSON (used for params hashes)."""
    return hashlib.sha256(dumps_json(obj).encode()).hexdigest()[:length]
