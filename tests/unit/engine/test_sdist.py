"""The pinned llama-cpp-python sdist: index pages, digest check while downloading, commit."""

from __future__ import annotations

import functools
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest

from bundler.engine import sdist
from bundler.engine.sdist import find_in_simple_index, llama_cpp_commit
from bundler.errors import FetchError

COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"


def test_simple_index_json_page_gives_url_and_digest() -> None:
    doc = {
        "files": [
            {
                "filename": "llama_cpp_python-0.3.35.tar.gz",
                "url": "a/x35.tar.gz",
                "hashes": {"sha256": "1" * 64},
            },
            {
                "filename": "llama_cpp_python-0.3.36.tar.gz",
                "url": "../../f/x36.tar.gz",
                "hashes": {"sha256": "2" * 64},
            },
        ]
    }
    url, digest = find_in_simple_index(
        json.dumps(doc).encode(),
        "application/vnd.pypi.simple.v1+json",
        "https://mirror.example/simple/llama-cpp-python/",
        "0.3.36",
    )
    assert url == "https://mirror.example/f/x36.tar.gz"
    assert digest == "2" * 64


def test_simple_index_html_page_reads_the_hash_fragment() -> None:
    html = (
        b'<html><body><a href="/p/llama_cpp_python-0.3.36.tar.gz#sha256='
        + b"3" * 64
        + b'">llama_cpp_python-0.3.36.tar.gz</a></body></html>'
    )
    url, digest = find_in_simple_index(
        html, "text/html", "http://127.0.0.1:9/simple/llama-cpp-python/", "0.3.36"
    )
    assert url == "http://127.0.0.1:9/p/llama_cpp_python-0.3.36.tar.gz"
    assert digest == "3" * 64


def test_version_missing_from_index_is_a_fetch_error() -> None:
    with pytest.raises(FetchError, match=r"0\.9\.99"):
        find_in_simple_index(
            b"<html></html>", "text/html", "http://x/simple/llama-cpp-python/", "0.9.99"
        )


def _sdist(tmp_path: Path, members: dict[str, bytes]) -> Path:
    path = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_commit_comes_from_the_vendored_submodule_head(tmp_path: Path) -> None:
    archive = _sdist(
        tmp_path,
        {
            "llama_cpp_python-0.3.36/.git/modules/vendor/llama.cpp/HEAD": COMMIT.encode() + b"\n",
            "llama_cpp_python-0.3.36/CHANGELOG.md": b"- update to ggml-org/llama.cpp@deadbee\n",
        },
    )
    assert llama_cpp_commit(archive) == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"


def test_commit_falls_back_to_changelog_then_unknown(tmp_path: Path) -> None:
    archive = _sdist(
        tmp_path,
        {"llama_cpp_python-0.3.36/CHANGELOG.md": b"## [0.3.36]\n- ggml-org/llama.cpp@0c1e57098\n"},
    )
    assert llama_cpp_commit(archive) == "0c1e57098"
    (tmp_path / "b").mkdir()
    assert (
        llama_cpp_commit(_sdist(tmp_path / "b", {"llama_cpp_python-0.3.36/README.md": b"x"}))
        == "unknown"
    )


def test_fetch_sdist_rejects_bytes_that_differ_from_the_index_digest(tmp_path: Path) -> None:
    served = tmp_path / "srv"
    (served / "llama-cpp-python").mkdir(parents=True)
    archive = _sdist(tmp_path, {"llama_cpp_python-0.3.36/README.md": b"x"})
    (served / "llama_cpp_python-0.3.36.tar.gz").write_bytes(archive.read_bytes())
    (served / "llama-cpp-python" / "index.html").write_text(
        '<a href="../llama_cpp_python-0.3.36.tar.gz#sha256=' + "0" * 64 + '">x</a>'
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(FetchError, match="does not match"):
            sdist.fetch_sdist(
                "0.3.36",
                cache_dir=tmp_path / "cache",
                index_url=f"http://127.0.0.1:{httpd.server_address[1]}/",
            )
    finally:
        httpd.shutdown()
    assert not list((tmp_path / "cache" / "sdist").glob("*.tar.gz"))
