"""Safe extraction of zip and tar archives.

Archives come from the network, so every member name is treated as hostile: absolute paths, drive
letters, ``..`` components, links (symbolic or hard), devices and fifos are refused, and each
target is checked to resolve inside the destination. Members are listed and checked *before*
anything is written, then streamed one by one (no ``extractall``), without their permissions or
timestamps, into a temporary folder that replaces the destination only when every member is out.
A rejected or malformed archive therefore leaves nothing behind.
"""

from __future__ import annotations

import re
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from metaland.errors import DataError, system_error
from metaland.io import atomic_dir

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_DRIVE = re.compile(r"^[A-Za-z]:")
_SPECIAL_MODES = (stat.S_ISCHR, stat.S_ISBLK, stat.S_ISFIFO, stat.S_ISSOCK)


@dataclass(frozen=True)
class _Member:
    """One checked member: where it goes (relative to the destination) and how to read it."""

    target: PurePosixPath
    is_dir: bool
    open: Callable[[], IO[bytes]]


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a zip or tar (``.tar``, ``.tar.gz``, ``.tgz``, ...) ``archive`` into ``dest``.

    ``dest`` is replaced as a whole, and only once every member is written; an unsafe member
    (named in the :class:`DataError`) or a malformed archive leaves no trace of ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    with ExitStack() as stack, atomic_dir(dest) as tmp:
        try:
            members = _list_members(archive, stack)
            for member in members:
                _write(member, tmp, archive)
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as err:
            machine = isinstance(err, OSError) and system_error(err, f"extracting {archive} into {dest.parent}")
            if machine:  # a full disk is not the archive's fault: it must not be deleted
                raise machine from None
            raise DataError(
                f"Archive {archive} could not be extracted ({type(err).__name__}: {err}). Fix: replace it with the "
                "published file (a copy in the download cache is fetched again once deleted; a mirror's copy is "
                "never deleted by metaland)."
            ) from None
    return dest


def _list_members(archive: Path, stack: ExitStack) -> list[_Member]:
    """Open ``archive`` (kept open by ``stack``) and check all of its members."""
    name = archive.name.lower()
    if name.endswith(".zip"):
        return list(_zip_members(archive, stack.enter_context(zipfile.ZipFile(archive))))
    if name.endswith(TAR_SUFFIXES):
        return list(_tar_members(archive, stack.enter_context(tarfile.open(archive, "r:*"))))
    raise DataError(
        f"Archive {archive} has an unknown format: its name ends in neither .zip nor one of "
        f"{', '.join(TAR_SUFFIXES)}. Fix: give the source a file name with its real extension."
    )


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise _unsafe(archive, info.filename, "is a symbolic link")
        if any(is_special(mode) for is_special in _SPECIAL_MODES):
            raise _unsafe(archive, info.filename, "is a device, fifo or socket")
        target = _relative_path(archive, info.filename)
        if target is not None:
            yield _Member(target, info.is_dir(), lambda info=info: zf.open(info))


def _tar_members(archive: Path, tf: tarfile.TarFile) -> Iterator[_Member]:
    for info in tf.getmembers():
        if info.issym():
            raise _unsafe(archive, info.name, f"is a symbolic link to {info.linkname!r}")
        if info.islnk():
            raise _unsafe(archive, info.name, f"is a hard link to {info.linkname!r}")
        if info.isdev():
            raise _unsafe(archive, info.name, "is a device or fifo")
        if not (info.isfile() or info.isdir()):
            raise _unsafe(archive, info.name, "is neither a regular file nor a folder")
        target = _relative_path(archive, info.name)
        if target is not None:
            yield _Member(target, info.isdir(), lambda info=info: _tar_open(tf, info))


def _tar_open(tf: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    stream = tf.extractfile(info)
    assert stream is not None, "regular tar members always have data"
    return stream


def _relative_path(archive: Path, name: str) -> PurePosixPath | None:
    """The member ``name`` as a relative path, or ``None`` for the archive root itself.

    Backslashes count as separators (archives written on Windows); absolute paths, drive letters
    and ``..`` components raise :class:`DataError`.
    """
    if name.startswith(("/", "\\")):
        raise _unsafe(archive, name, "is an absolute path")
    if _DRIVE.match(name):
        raise _unsafe(archive, name, "starts with a drive letter")
    parts = [part for part in re.split(r"[/\\]", name) if part not in ("", ".")]
    if ".." in parts:
        raise _unsafe(archive, name, "has a '..' component")
    return PurePosixPath(*parts) if parts else None


def _write(member: _Member, root: Path, archive: Path) -> None:
    """Create ``member`` under ``root`` after checking that it resolves inside ``root``."""
    path = root.joinpath(member.target)
    if not path.resolve().is_relative_to(root.resolve()):
        raise _unsafe(archive, str(member.target), "resolves outside the destination")
    if member.is_dir:
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with member.open() as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)


def _unsafe(archive: Path, member: str, why: str) -> DataError:
    return DataError(
        f"Archive {archive} holds an unsafe member {member!r}: it {why}, so nothing was extracted. "
        f"Fix: do not use this archive; fetch the published file again, or check its source."
    )
