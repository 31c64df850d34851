"""A local Hugging Face Hub-compatible HTTP server for tests and the demo (loopback only).

It answers what ``huggingface_hub`` asks of a model repo that is not on Xet storage:
``/api/models/{repo}/revision/{rev}``, ``/api/models/{repo}/tree/{rev}``,
``/api/models/{repo}/paths-info/{rev}`` and ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``
with ``ETag``, ``X-Linked-Etag``, ``X-Linked-Size``, ``X-Repo-Commit``,
``Content-Length`` and ``Range``; the Hub's ``X-Error-Code`` for gated (401), missing repos,
revisions and files (404). Faults can be injected: tampered bytes served under the
original digests, a connection dropped in the middle of a file.

Run ``python -m bundler.demo.hubserver --repo org/name=DIR`` to serve directories.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".gguf", ".bin", ".safetensors")
LFS_MIN_SIZE = 10 * 1024


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE


@dataclass
class Repo:
    files_by_commit: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    card_data: Optional[dict[str, Any]] = None


@dataclass
class Faults:
    """Misbehaviour to inject, keyed by ``(repo, path)``."""

    tampered: dict[tuple[str, str], bytes] = field(default_factory=dict)
    drop_after: dict[tuple[str, str], int] = field(default_factory=dict)  # once, then healthy
    ignore_range: set[tuple[str, str]] = field(default_factory=set)  # answer 200, whole body


class HubServer:
    """In-memory Hub. ``with HubServer() as hub: hub.add_repo(...); hub.endpoint``."""

    def __init__(
        self,
        *,
        token: str = "hf_test_token",  # noqa: S107 - a fake Hub's fake token
        host: str = "127.0.0.1",
    ) -> None:
        self.repos: dict[str, Repo] = {}
        self.faults = Faults()
        self.token = token
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        # Digests by bytes object, computed once: a real Hub stores them, it does not rehash
        # a file for every HEAD/GET (each entry keeps its bytes alive, so ids stay unique).
        self._digests: dict[tuple[str, int], tuple[bytes, str]] = {}
        self._httpd = ThreadingHTTPServer((host, 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- content ---------------------------------------------------------------------------

    def add_repo(
        self,
        repo: str,
        files: Mapping[str, bytes],
        *,
        gated: bool = False,
        card_data: Optional[dict[str, Any]] = None,
        branch: str = "main",
    ) -> str:
        """Create ``repo`` with one commit on ``branch``; returns the commit id."""
        with self._lock:
            self.repos[repo] = Repo(gated=gated, card_data=card_data)
        return self.commit(repo, files, branch=branch)

    def commit(self, repo: str, files: Mapping[str, bytes], *, branch: str = "main") -> str:
        """Add a commit with exactly ``files`` and move ``branch`` to it; returns the commit id."""
        with self._lock:
            r = self.repos[repo]
            h = hashlib.sha1(repo.encode(), usedforsecurity=False)
            h.update(r.refs.get(branch, "").encode())
            for path in sorted(files):
                h.update(path.encode() + b"\0" + bytes.fromhex(self.sha256(files[path])))
            commit = h.hexdigest()
            r.files_by_commit[commit] = dict(files)
            r.refs[branch] = commit
            return commit

    def tag(self, repo: str, name: str, commit: str) -> None:
        with self._lock:
            self.repos[repo].refs[name] = commit

    # --- lookups used by the handler -------------------------------------------------------

    def resolve(self, repo: str, rev: str) -> Optional[str]:
        r = self.repos[repo]
        if rev in r.refs:
            return r.refs[rev]
        return rev if rev in r.files_by_commit else None

    def _digest(self, kind: str, data: bytes) -> str:
        key = (kind, id(data))
        hit = self._digests.get(key)
        if hit is not None and hit[0] is data:
            return hit[1]
        value = hashlib.sha256(data).hexdigest() if kind == "sha256" else git_blob_id(data)
        self._digests[key] = (data, value)
        return value

    def sha256(self, data: bytes) -> str:
        """``data``'s sha256 (the LFS oid), computed once per bytes object."""
        return self._digest("sha256", data)

    def blob_id(self, data: bytes) -> str:
        """``data``'s git blob id, computed once per bytes object."""
        return self._digest("sha1", data)

    def entry(self, repo: str, path: str, data: bytes) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "file", "path": path}
        if is_lfs(path, data):
            sha = self.sha256(data)
            pointer = _pointer(sha, len(data))
            d["lfs"] = {"oid": sha, "size": len(data), "pointerSize": len(pointer)}
            d["oid"] = git_blob_id(pointer)
            d["size"] = len(pointer)
        else:
            d["oid"] = self.blob_id(data)
            d["size"] = len(data)
        return d


def _pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer a real repo stores for an LFS file (what the blob id is over)."""
    return (
        b"version https://git-lfs.github.com/spec/v1\n"
        + b"oid sha256:"
        + sha256.encode()
        + b"\nsize %d\n" % size
    )


_API = re.compile(r"^/api/models/([^/]+/[^/]+)/(revision|tree|paths-info)/([^/]+)(/.*)?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def _handler_for(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "airlock-hubserver"

        def log_message(self, format: str, *args: Any) -> None:
            del format, args  # quiet: tests read hub.requests instead

        # -- helpers ----------------------------------------------------------------------

        def _send(
            self,
            status: int,
            body: Union[bytes, memoryview] = b"",
            headers: Optional[Mapping[str, str]] = None,
        ) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj: Any, headers: Optional[Mapping[str, str]] = None) -> None:
            h = {"Content-Type": "application/json", **(headers or {})}
            self._send(status, json.dumps(obj).encode(), h)

        def _error(self, status: int, code: str, message: str, commit: str = "") -> None:
            h = {"X-Error-Code": code, "X-Error-Message": message}
            if commit:
                h["X-Repo-Commit"] = commit
            self._json(status, {"error": message}, h)

        def _repo_or_error(self, repo: str) -> Optional[Repo]:
            r = hub.repos.get(repo)
            if r is None:
                self._error(404, "RepoNotFound", f"Repository {repo} not found")
                return None
            if r.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
                self._error(
                    401,
                    "GatedRepo",
                    f"Access to model {repo} is restricted. You must have access to it "
                    "and be authenticated to access it. Please log in.",
                )
                return None
            return r

        def _record(self) -> None:
            with hub._lock:
                hub.requests.append(
                    (self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                )

        # -- verbs ------------------------------------------------------------------------

        def do_HEAD(self) -> None:
            self._record()
            self._route()

        def do_GET(self) -> None:
            self._record()
            self._route()

        def do_POST(self) -> None:
            self._record()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            self._route(form=parse_qs(body))

        def _route(self, form: Optional[dict[str, list[str]]] = None) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            m = _API.match(path)
            if m:
                self._api(m.group(1), m.group(2), m.group(3), (m.group(4) or "").lstrip("/"), form)
                return
            m = _RESOLVE.match(path)
            if m:
                self._resolve(m.group(1), m.group(2), m.group(3))
                return
            self._error(404, "NotFound", f"no route for {path}")

        def _api(
            self, repo: str, kind: str, rev: str, sub: str, form: Optional[dict[str, list[str]]]
        ) -> None:
            found = self._snapshot_or_error(repo, rev)
            if found is None:
                return
            r, commit, files = found
            if kind == "revision":
                info: dict[str, Any] = {
                    "id": repo,
                    "modelId": repo,
                    "sha": commit,
                    "private": False,
                    "gated": "auto" if r.gated else False,
                    "disabled": False,
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                }
                if r.card_data is not None:
                    info["cardData"] = r.card_data
                self._json(200, info)
                return
            if kind == "paths-info":
                wanted = (form or {}).get("paths", [])
                out = [hub.entry(repo, p, files[p]) for p in sorted(files) if p in wanted]
                self._json(200, out)
                return
            prefix = sub + "/" if sub else ""
            recursive = parse_qs(urlparse(self.path).query).get("recursive", ["false"])[0]
            entries: dict[str, dict[str, Any]] = {}
            for p in sorted(files):
                if not p.startswith(prefix):
                    continue
                rest = p[len(prefix) :]
                if "/" in rest and recursive.lower() != "true":
                    d = prefix + rest.split("/", 1)[0]
                    entries[d] = {"type": "directory", "oid": "0" * 40, "size": 0, "path": d}
                else:
                    if "/" in rest:
                        parts = rest.split("/")[:-1]
                        for i in range(1, len(parts) + 1):
                            d = prefix + "/".join(parts[:i])
                            entries[d] = {
                                "type": "directory",
                                "oid": "0" * 40,
                                "size": 0,
                                "path": d,
                            }
                    entries[p] = hub.entry(repo, p, files[p])
            self._json(200, [entries[k] for k in sorted(entries)])

        def _snapshot_or_error(self, repo: str, rev: str) -> Optional[tuple[Any, str, Any]]:
            """(repo, commit, files at that commit), or None after answering 401/404."""
            r = self._repo_or_error(repo)
            if r is None:
                return None
            commit = hub.resolve(repo, rev)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return None
            return r, commit, r.files_by_commit[commit]

        def _resolve(self, repo: str, rev: str, path: str) -> None:
            found = self._snapshot_or_error(repo, rev)
            if found is None:
                return
            _, commit, files = found
            if path not in files:
                self._error(404, "EntryNotFound", f"{path} does not exist", commit)
                return
            data = files[path]
            headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
            if is_lfs(path, data):
                sha = hub.sha256(data)
                headers["ETag"] = f'"{sha}"'
                headers["X-Linked-Etag"] = f'"{sha}"'
                headers["X-Linked-Size"] = str(len(data))
            else:
                headers["ETag"] = f'"{hub.blob_id(data)}"'
            # A memoryview: a Range answer is sent from the stored bytes without copying them.
            body = memoryview(hub.faults.tampered.get((repo, path), data))
            start = 0
            rng = self.headers.get("Range")
            status = 200
            if rng and self.command == "GET" and (repo, path) not in hub.faults.ignore_range:
                m = re.match(r"bytes=(\d+)-(\d*)$", rng)
                if not m:
                    self._send(416, b"", headers)
                    return
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else len(body) - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
                body = body[start : end + 1]
                status = 206
            drop = hub.faults.drop_after.pop((repo, path), None) if self.command == "GET" else None
            if drop is None:
                self._send(status, body, headers)
                return
            # Promise the whole body, send part of it, hang up: a dropped connection.
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True

    return Handler


def _read_dir(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Serve directories as Hub model repos on loopback")
    parser.add_argument("--repo", action="append", default=[], metavar="ORG/NAME=DIR")
    parser.add_argument("--gated", action="append", default=[], metavar="ORG/NAME")
    args = parser.parse_args(argv)
    hub = HubServer()
    for spec in args.repo:
        repo, _, directory = spec.partition("=")
        hub.add_repo(repo, _read_dir(Path(directory)), gated=repo in args.gated)
    with hub:
        print(f"HF_ENDPOINT={hub.endpoint}", flush=True)
        print(f"HF_TOKEN={hub.token}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
