"""Safe extraction: good archives come out exactly; hostile members are refused with no trace."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from metaland.data import archive
from metaland.data.archive import extract_archive
from metaland.errors import DataError

GOOD = {
    "top/a.txt": b"alpha\n",
    "top/sub/b.bin": bytes(range(256)) * 64,
    "top/sub/deeper/c.txt": b"",
}


def write_zip(path: Path, entries: list[tuple[str, bytes, int]]) -> Path:
    """A zip whose members carry the given unix modes (external_attr high word)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def write_tar(path: Path, entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    """A tar (compressed as the suffix says) of regular files and prepared special members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w:gz" if path.name.endswith((".tar.gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as tf:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def tar_special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def good_zip(path: Path) -> Path:
    dirs = [("top/", b"", stat.S_IFDIR | 0o755), ("top/empty/", b"", stat.S_IFDIR | 0o755)]
    files = [(name, data, stat.S_IFREG | 0o644) for name, data in GOOD.items()]
    return write_zip(path, dirs + files)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_good_zip_extracts_exactly(tmp_path):
    dest = extract_archive(good_zip(tmp_path / "good.zip"), tmp_path / "out" / "good")
    assert dest == tmp_path / "out" / "good"
    assert tree(dest) == GOOD
    assert (dest / "top" / "empty").is_dir()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good"]


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar"])
def test_good_tar_extracts_exactly(tmp_path, suffix):
    entries = [tar_special("top", tarfile.DIRTYPE), *GOOD.items(), ("./top/./d.txt", b"d")]
    dest = extract_archive(write_tar(tmp_path / f"good{suffix}", entries), tmp_path / "out")
    assert tree(dest) == {**GOOD, "top/d.txt": b"d"}


def test_extraction_replaces_an_existing_destination(tmp_path):
    dest = tmp_path / "out"
    (dest / "stale").mkdir(parents=True)
    extract_archive(good_zip(tmp_path / "good.zip"), dest)
    assert tree(dest) == GOOD
    assert not (dest / "stale").exists()


REG = stat.S_IFREG | 0o644
ZIP_ATTACKS = {
    "parent": ("../escape", REG, "'..'"),
    "nested-parent": ("top/../../escape", REG, "'..'"),
    "backslash-parent": ("top\\..\\..\\escape", REG, "'..'"),
    "absolute": ("/abs/path", REG, "absolute"),
    "drive": ("C:/windows/escape", REG, "drive letter"),
    "symlink": ("top/link", stat.S_IFLNK | 0o777, "symbolic link"),
    "fifo": ("top/fifo", stat.S_IFIFO | 0o644, "fifo"),
    "chardev": ("top/tty", stat.S_IFCHR | 0o644, "device"),
}


@pytest.mark.parametrize("attack", ZIP_ATTACKS.values(), ids=ZIP_ATTACKS.keys())
def test_unsafe_zip_member_is_refused_without_trace(tmp_path, attack):
    name, mode, why = attack
    entries = [("top/a.txt", b"alpha", REG), (name, b"../../etc/passwd", mode)]
    _assert_refused(write_zip(tmp_path / "in" / "bad.zip", entries), tmp_path, name, why)


TAR_ATTACKS = {
    "parent": (("../escape", b"x"), "../escape", "'..'"),
    "absolute": (("/abs/path", b"x"), "/abs/path", "absolute"),
    "symlink": (tar_special("top/link", tarfile.SYMTYPE, "/etc/passwd"), "top/link", "symbolic"),
    "hardlink": (tar_special("top/hard", tarfile.LNKTYPE, "/etc/passwd"), "top/hard", "hard link"),
    "fifo": (tar_special("top/fifo", tarfile.FIFOTYPE), "top/fifo", "fifo"),
    "chardev": (tar_special("top/tty", tarfile.CHRTYPE), "top/tty", "device"),
}


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar"])
@pytest.mark.parametrize("attack", TAR_ATTACKS.values(), ids=TAR_ATTACKS.keys())
def test_unsafe_tar_member_is_refused_without_trace(tmp_path, attack, suffix):
    entry, name, why = attack
    path = write_tar(tmp_path / "in" / f"bad{suffix}", [("top/a.txt", b"alpha"), entry])
    _assert_refused(path, tmp_path, name, why)


def test_refusal_keeps_the_previous_destination(tmp_path):
    dest = tmp_path / "out" / "dest"
    dest.mkdir(parents=True)
    (dest / "previous.txt").write_text("kept")
    path = write_zip(tmp_path / "bad.zip", [("top/a.txt", b"a", REG), ("../x", b"x", REG)])
    with pytest.raises(DataError):
        extract_archive(path, dest)
    assert tree(dest) == {"previous.txt": b"kept"}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["dest"]


def test_containment_check_backs_up_the_name_checks(tmp_path, monkeypatch):
    """Even if a name slipped past the lexical checks, a target outside dest is refused."""
    monkeypatch.setattr(archive, "_relative_path", lambda _archive, name: Path(name))
    path = write_zip(tmp_path / "in" / "bad.zip", [("../escape", b"x", REG)])
    _assert_refused(path, tmp_path, "../escape", "resolves outside the destination")


def test_malformed_and_unknown_archives_raise_data_error(tmp_path):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"broken\.zip could not be extracted.*Fix:"):
        extract_archive(broken, tmp_path / "out")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(write_tar(tmp_path / "full.tar.gz", list(GOOD.items())).read_bytes()[:60])
    with pytest.raises(DataError, match=r"truncated\.tar\.gz could not be extracted"):
        extract_archive(truncated, tmp_path / "out")
    unknown = tmp_path / "data.rar"
    unknown.write_bytes(b"Rar!")
    with pytest.raises(DataError, match=r"data\.rar has an unknown format.*Fix:"):
        extract_archive(unknown, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _assert_refused(path: Path, tmp_path: Path, member: str, why: str) -> None:
    """Extraction into tmp_path/out/dest fails naming the member and leaves nothing anywhere."""
    dest = tmp_path / "out" / "dest"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(DataError) as caught:
        extract_archive(path, dest)
    message = str(caught.value)
    assert str(path) in message
    assert repr(member) in message
    assert why in message
    assert message.rstrip().endswith(".") and "Fix:" in message
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == sorted([*before, Path("out")])
    assert not dest.exists()
    assert not (tmp_path / "escape").exists()
    assert not Path("/abs/path").exists()
