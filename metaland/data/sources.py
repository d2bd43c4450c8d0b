"""Verified archive files: from a mirror folder, the download cache, or the network.

Where a file comes from, in order:

1. a **mirror** folder (``METALAND_DATA_MIRROR`` or a param), for machines without internet; it is
   read in place and never written to, and a missing file there is an error (no silent download);
2. the **cache** folder (``METALAND_CACHE``, default ``~/.cache/metaland/archives``), when the file
   there passes its checksums; a cached file that fails them is downloaded again and replaced;
3. the file's public **address**, streamed into a temporary file in the cache folder that is
   checked and only then renamed, so the cache never holds an unverified file under its name.

Every checksum the source declares (sha256 and/or md5) is verified on the file that is returned.
"""

from __future__ import annotations

import http.client
import logging
import os
import sys
import urllib.request
from pathlib import Path

from tqdm import tqdm

from metaland.data.registry import ArchiveSource
from metaland.errors import DataError
from metaland.io import atomic_path, file_digest

MIRROR_ENV = "METALAND_DATA_MIRROR"
CACHE_ENV = "METALAND_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/metaland/archives"
TIMEOUT_S = 60.0
"""Seconds a connection or a single read may stall before the download is abandoned."""

_CHUNK = 1 << 20
_log = logging.getLogger(__name__)


def mirror_from_env() -> Path | None:
    """The folder named by ``METALAND_DATA_MIRROR``, or ``None`` when it is unset or empty."""
    value = os.environ.get(MIRROR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def cache_dir_from_env() -> Path:
    """The download cache: ``METALAND_CACHE`` if set, else ``~/.cache/metaland/archives``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value or DEFAULT_CACHE_DIR).expanduser()


def obtain(source: ArchiveSource, *, mirror: Path | None, cache_dir: Path) -> Path:
    """The path of a local copy of ``source`` that passes all of its checksums."""
    if mirror is not None:
        return _from_mirror(source, Path(mirror))
    cached = Path(cache_dir) / source.filename
    if cached.is_file():
        mismatches = digest_mismatches(cached, source)
        if not mismatches:
            return cached
        _log.warning("%s fails its checksum (%s); downloading it again", cached, mismatches[0])
    if not source.url:
        raise DataError(
            f"{source.filename} has no public address, and no copy of it that passes its checksum is in "
            f"{cache_dir}. Fix: put the file in a folder named by {MIRROR_ENV} (or the mirror param), or "
            f"set the address in the dataset's params (its url)."
        )
    with atomic_path(cached) as tmp:
        _download(source.url, tmp, label=source.filename)
        verify(
            tmp,
            source,
            label=f"The file downloaded from {source.url}",
            fix=f"retry later; if it persists the server no longer publishes this version, so put "
            f"a verified copy of {source.filename} in a folder named by {MIRROR_ENV}.",
        )
    return cached


def digest_mismatches(path: Path, source: ArchiveSource) -> list[str]:
    """One ``"<algorithm> expected <digest>, got <digest>"`` line per checksum that fails."""
    expected = {"sha256": source.sha256, "md5": source.md5}
    mismatches = []
    for algorithm, digest in expected.items():
        if digest is None:
            continue
        actual = file_digest(path, algorithm)
        if actual != digest.lower():
            mismatches.append(f"{algorithm} expected {digest.lower()}, got {actual}")
    return mismatches


def verify(path: Path, source: ArchiveSource, *, label: str, fix: str) -> None:
    """Raise :class:`DataError` (``label`` names the file, ``fix`` the remedy) on a mismatch."""
    mismatches = digest_mismatches(path, source)
    if mismatches:
        raise DataError(f"{label} is not the published {source.filename}: {'; '.join(mismatches)}. Fix: {fix}")


def _from_mirror(source: ArchiveSource, mirror: Path) -> Path:
    path = mirror / source.filename
    origin = f"the file published at {source.url}" if source.url else "the file whose checksum the params give"
    if not path.is_file():
        raise DataError(
            f"The data mirror folder {mirror} has no file {source.filename}. Fix: copy {origin} into "
            f"{mirror}, or unset {MIRROR_ENV} (and the mirror param) to download it."
        )
    verify(
        path,
        source,
        label=f"Mirror file {path}",
        fix=f"replace it with {origin}, or point {MIRROR_ENV} at a mirror that holds the right one.",
    )
    return path


def _download(url: str, dest: Path, *, label: str) -> None:
    """Stream ``url`` into ``dest``; a progress bar titled ``label`` shows when stderr is a TTY."""
    try:
        with (
            urllib.request.urlopen(url, timeout=TIMEOUT_S) as response,
            open(dest, "wb") as out,
            tqdm(
                total=int(response.headers.get("Content-Length") or 0) or None,
                unit="B",
                unit_scale=True,
                desc=label,
                disable=not sys.stderr.isatty(),
            ) as bar,
        ):
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                bar.update(len(block))
    except (OSError, http.client.HTTPException) as err:
        raise DataError(
            f"Downloading {url} failed ({type(err).__name__}: {err}). Fix: check this machine's "
            f"network access to that address, or, without internet, set {MIRROR_ENV} to a folder "
            f"holding the dataset's archive files."
        ) from err
