"""The pinned llama-cpp-python source distribution: index digest, vendored llama.cpp, tree.

llama.cpp is pinned by one llama-cpp-python sdist from the package index: its sha256 is
taken from the index page (PEP 691 JSON or PEP 503 HTML) and checked while downloading; its
vendored ``vendor/llama.cpp`` is the only source built, and its commit is read from the
sdist. The extracted tree is cached by the sdist's digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from bundler import console
from bundler.engine.buildcache import file_lock
from bundler.errors import BuildError, FetchError
from bundler.fsio import hash_file

__all__ = ["PACKAGE", "SourceArchive", "fetch_sdist", "llama_cpp_commit", "source_tree"]

PACKAGE = "llama-cpp-python"
DEFAULT_INDEX = "https://pypi.org/simple"


@dataclass(frozen=True)
class SourceArchive:
    """The pinned llama-cpp-python sdist on disk, digest-checked against the index."""

    path: Path
    version: str
    sha256: str
    url: str
    llama_cpp_commit: str

    def properties(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sdist": self.path.name,
            "sha256": self.sha256,
            "url": self.url,
        }


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for k, v in attrs:
                if k == "href" and v:
                    self.links.append(v)


def sdist_filenames(version: str) -> tuple[str, ...]:
    return (f"llama_cpp_python-{version}.tar.gz", f"llama-cpp-python-{version}.tar.gz")


def find_in_simple_index(
    body: bytes, content_type: str, page_url: str, version: str
) -> tuple[str, str | None]:
    """(url, sha256 or None) of the sdist in a PEP 503/691 simple-index page (pure)."""
    wanted = sdist_filenames(version)
    if "json" in content_type:
        doc = json.loads(body)
        for f in doc.get("files", []):
            if f.get("filename") in wanted:
                url = urllib.parse.urljoin(page_url, f["url"])
                return url, (f.get("hashes") or {}).get("sha256")
    else:
        parser = _Links()
        parser.feed(body.decode("utf-8", errors="replace"))
        for href in parser.links:
            url = urllib.parse.urljoin(page_url, href)
            parsed = urllib.parse.urlsplit(url)
            if parsed.path.rsplit("/", 1)[-1] in wanted:
                m = re.search(r"sha256=([0-9a-f]{64})", parsed.fragment)
                return parsed._replace(fragment="").geturl(), m.group(1) if m else None
    raise FetchError(
        f"{PACKAGE} {version}: no source distribution on the index page {page_url}",
        hint="check the version in the spec exists as an sdist on the index (or mirror it)",
    )


def _index_url(index_url: str | None) -> str:
    return (index_url or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def fetch_sdist(version: str, *, cache_dir: Path, index_url: str | None = None) -> SourceArchive:
    """Download (or reuse) the llama-cpp-python sdist, checking the index's sha256.

    ``index_url`` is a PEP 503 simple index (default ``$PIP_INDEX_URL``, else PyPI).

    Raises:
        FetchError: the index is unreachable, has no such sdist, publishes no digest, or
            the downloaded bytes do not match it.
    """
    index = _index_url(index_url)
    page = f"{index}/{PACKAGE}/"
    if urllib.parse.urlsplit(page).scheme not in ("https", "http", "file"):
        raise FetchError(f"unsupported index URL {page}", hint="use an https:// simple index")
    req = urllib.request.Request(  # noqa: S310 - scheme checked above
        page,
        headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - index URL
            body = resp.read()
            ctype = resp.headers.get("Content-Type", "")
    except OSError as e:
        raise FetchError(
            f"cannot read the package index page {page}: {e}",
            hint="check network access to the index, or set PIP_INDEX_URL to a mirror",
        ) from e
    url, digest = find_in_simple_index(body, ctype, page, version)
    if not digest:
        raise FetchError(
            f"the index publishes no sha256 for {url}",
            hint="use an index that serves PEP 503 hashes so the source can be pinned",
        )
    dest_dir = cache_dir / "sdist"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    if not (dest.is_file() and hash_file(dest)[1] == digest):
        _download(url, dest, digest)
    return SourceArchive(
        path=dest,
        version=version,
        sha256=digest,
        url=url,
        llama_cpp_commit=llama_cpp_commit(dest),
    )


def _download(url: str, dest: Path, digest: str) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=120) as resp, open(tmp, "wb") as out:  # noqa: S310
            size = int(resp.headers.get("Content-Length") or 0) or None
            with console.byte_progress(dest.name, size) as advance:
                while chunk := resp.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
                    advance(len(chunk))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"cannot download {url}: {e}", hint="check network access") from e
    if h.hexdigest() != digest:
        tmp.unlink(missing_ok=True)
        raise FetchError(
            f"{url}: sha256 {h.hexdigest()} does not match the index's {digest}",
            hint="the index or a proxy served other bytes; do not build from them",
        )
    os.replace(tmp, dest)


def llama_cpp_commit(sdist: Path) -> str:
    """The vendored llama.cpp commit recorded inside the sdist, or ``"unknown"``.

    llama-cpp-python ships the submodule's git metadata
    (``.git/modules/vendor/llama.cpp/HEAD``, a full 40-hex commit); older sdists only
    name it in CHANGELOG.md ("update llama.cpp to ggml-org/llama.cpp@<hex>").
    """
    head_re = re.compile(r"^[^/]+/\.git/modules/vendor/llama\.cpp/HEAD$")
    changelog = None
    with tarfile.open(sdist, "r:gz") as tf:
        for member in tf:
            if head_re.match(member.name) and member.isfile():
                fh = tf.extractfile(member)
                text = fh.read().decode().strip() if fh else ""
                if re.fullmatch(r"[0-9a-f]{40}", text):
                    return text
            elif member.name.count("/") == 1 and member.name.endswith("/CHANGELOG.md"):
                fh = tf.extractfile(member)
                changelog = fh.read().decode("utf-8", errors="replace") if fh else None
    if changelog:
        m = re.search(r"llama\.cpp@([0-9a-f]{7,40})", changelog)
        if m:
            return m.group(1)
    return "unknown"


def source_tree(source: SourceArchive, *, cache_dir: Path) -> Path:
    """The extracted sdist (shared by every build of it): its root directory.

    Extraction refuses links that leave the tree, absolute and ``..`` paths.
    """
    base = cache_dir / "src" / source.sha256
    (cache_dir / "src").mkdir(parents=True, exist_ok=True)
    with file_lock(cache_dir / "src" / f".{source.sha256}.lock"):
        if not (base / ".complete").is_file():
            _extract(source, cache_dir, base)
    return _single_child(base)


def _extract(source: SourceArchive, cache_dir: Path, base: Path) -> None:
    tmp = cache_dir / "src" / f".{source.sha256}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with tarfile.open(source.path, "r:gz") as tf:
        members = []
        for m in tf.getmembers():
            target = Path(m.name)
            if target.is_absolute() or ".." in target.parts:
                raise BuildError(f"{source.path.name}: unsafe member path {m.name!r}")
            if (m.issym() or m.islnk()) and (
                Path(m.linkname).is_absolute() or ".." in Path(m.linkname).parts
            ):
                continue  # never followed by the build; do not create it
            if m.isdev():
                continue
            members.append(m)
        tf.extractall(tmp, members=members)  # noqa: S202 - members checked above
    (tmp / ".complete").write_text(source.sha256 + "\n")
    if base.exists():
        shutil.rmtree(base)
    os.replace(tmp, base)


def _single_child(base: Path) -> Path:
    dirs = [p for p in base.iterdir() if p.is_dir()]
    if len(dirs) != 1:
        raise BuildError(f"{base}: expected one top-level directory in the sdist")
    return dirs[0]
