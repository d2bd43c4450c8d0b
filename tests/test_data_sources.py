"""Obtaining verified archives: mirror, cache, and the real download path against a local server.

Policy under test: a cached file that fails its checksum is downloaded again and replaced; a
download that fails its checksum is an error and leaves nothing under the final name.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from metaland.data import mirror_from_env
from metaland.data.registry import ArchiveSource
from metaland.data.sources import cache_dir_from_env, obtain
from metaland.errors import DataError

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB: several read chunks
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


@dataclass
class Server:
    url: str
    root: Path
    requests: list[str] = field(default_factory=list)

    def source(self, filename: str = "archive.zip", **digests: str | None) -> ArchiveSource:
        digests = digests or {"sha256": SHA256, "md5": MD5}
        return ArchiveSource(filename, f"{self.url}{filename}", **digests)


@pytest.fixture
def server(tmp_path, monkeypatch) -> Iterator[Server]:
    """A local HTTP server in a thread serving ``root``; ``/truncated/<f>`` cuts ``f`` short."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    (root / "archive.zip").write_bytes(PAYLOAD)
    state = Server(url="", root=root)

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            state.requests.append(self.path)
            if self.path.startswith("/truncated/"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
                self.close_connection = True
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_port}/"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_download_lands_in_cache_verified_then_is_reused(server, tmp_path):
    cache = tmp_path / "cache"
    path = obtain(server.source(), mirror=None, cache_dir=cache)
    assert path == cache / "archive.zip"
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/archive.zip"]
    assert obtain(server.source(), mirror=None, cache_dir=cache) == path
    assert server.requests == ["/archive.zip"], "a verified cached file must not be downloaded"
    assert sorted(p.name for p in cache.iterdir()) == ["archive.zip"]


def test_corrupt_cached_file_is_downloaded_again(server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "archive.zip").write_bytes(PAYLOAD[:-1] + b"X")
    path = obtain(server.source(), mirror=None, cache_dir=cache)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/archive.zip"]


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_download_with_wrong_checksum_leaves_nothing(server, tmp_path, algorithm):
    wrong = "0" * len(SHA256 if algorithm == "sha256" else MD5)
    actual = SHA256 if algorithm == "sha256" else MD5
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as caught:
        obtain(server.source(**{algorithm: wrong}), mirror=None, cache_dir=cache)
    message = str(caught.value)
    assert f"{server.url}archive.zip" in message
    assert f"{algorithm} expected {wrong}, got {actual}" in message
    assert "Fix:" in message
    assert list(cache.iterdir()) == []


def test_truncated_download_is_rejected_and_not_kept(server, tmp_path):
    cache = tmp_path / "cache"
    source = ArchiveSource("archive.zip", f"{server.url}truncated/archive.zip", sha256=SHA256)
    with pytest.raises(DataError, match=r"truncated/archive\.zip is not the published archive\.zip"):
        obtain(source, mirror=None, cache_dir=cache)
    assert server.requests == ["/truncated/archive.zip"]
    assert list(cache.iterdir()) == []


def test_http_error_names_the_url(server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as caught:
        obtain(server.source("missing.zip"), mirror=None, cache_dir=cache)
    assert f"Downloading {server.url}missing.zip failed" in str(caught.value)
    assert "404" in str(caught.value)
    assert list(cache.iterdir()) == []


def test_unreachable_url_names_the_url_and_the_mirror_variable(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/archive.zip"
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as caught:
        obtain(ArchiveSource("archive.zip", url, md5=MD5), mirror=None, cache_dir=cache)
    message = str(caught.value)
    assert f"Downloading {url} failed" in message
    assert "METALAND_DATA_MIRROR" in message and "Fix:" in message
    assert not (cache / "archive.zip").exists()
    assert list(cache.iterdir()) == []


def _mirror(tmp_path: Path, data: bytes = PAYLOAD) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "archive.zip").write_bytes(data)
    return mirror


def _source(**digests: str | None) -> ArchiveSource:
    digests = digests or {"sha256": SHA256, "md5": MD5}
    return ArchiveSource("archive.zip", "https://example.invalid/archive.zip", **digests)


def test_mirror_file_is_used_in_place_without_touching_the_cache(tmp_path):
    mirror = _mirror(tmp_path)
    cache = tmp_path / "cache"
    assert obtain(_source(), mirror=mirror, cache_dir=cache) == mirror / "archive.zip"
    assert obtain(_source(md5=MD5), mirror=mirror, cache_dir=cache) == mirror / "archive.zip"
    assert not cache.exists()


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_mirror_checksum_mismatch_names_file_expected_and_actual(tmp_path, algorithm):
    mirror = _mirror(tmp_path, PAYLOAD + b"!")
    actual = hashlib.new(algorithm, PAYLOAD + b"!").hexdigest()
    expected = SHA256 if algorithm == "sha256" else MD5
    with pytest.raises(DataError) as caught:
        obtain(_source(**{algorithm: expected}), mirror=mirror, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert str(mirror / "archive.zip") in message
    assert f"{algorithm} expected {expected}, got {actual}" in message
    assert "Fix:" in message


def test_both_checksums_are_checked(tmp_path):
    mirror = _mirror(tmp_path)
    with pytest.raises(DataError, match=f"md5 expected {'f' * 32}, got {MD5}"):
        obtain(_source(sha256=SHA256, md5="f" * 32), mirror=mirror, cache_dir=tmp_path)


def test_mirror_without_the_file_names_mirror_file_and_fix(tmp_path):
    mirror = tmp_path / "empty-mirror"
    mirror.mkdir()
    with pytest.raises(DataError) as caught:
        obtain(_source(), mirror=mirror, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert f"mirror folder {mirror} has no file archive.zip" in message
    assert "Fix:" in message and "https://example.invalid/archive.zip" in message


def test_environment_variables(monkeypatch, tmp_path):
    monkeypatch.delenv("METALAND_DATA_MIRROR", raising=False)
    monkeypatch.delenv("METALAND_CACHE", raising=False)
    assert mirror_from_env() is None
    assert cache_dir_from_env() == Path.home() / ".cache" / "metaland" / "archives"
    monkeypatch.setenv("METALAND_DATA_MIRROR", str(tmp_path / "m"))
    monkeypatch.setenv("METALAND_CACHE", str(tmp_path / "c"))
    assert mirror_from_env() == tmp_path / "m"
    assert cache_dir_from_env() == tmp_path / "c"
    monkeypatch.setenv("METALAND_DATA_MIRROR", "")
    assert mirror_from_env() is None
