"""Hugging Face Hub snapshots through ``huggingface_hub``, digest-checked while downloading.

Resolution (revision -> commit, file list with LFS sha256 / git blob ids) uses the real
client's ``HfApi``; downloads use its ``get_hf_file_metadata`` (HEAD, redirects, auth) and
its HTTP session through :mod:`bundler.sources.download`, which hashes while writing and resumes
with ``Range`` from the exact byte where a connection dropped (the client's ``http_get``
re-chunks into 10 MiB pieces and resumes only from the last whole piece, and that
re-chunking costs more time than the hashing). Files land in the
standard Hub cache layout under ``HF_HUB_CACHE``/``HF_HOME`` (``blobs/<etag>``,
``snapshots/<commit>/<path>`` links, ``refs/<revision>``), so an existing cache is reused
and a cache this module filled serves other tools too.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import WeakFileLock, build_hf_headers

from bundler import console
from bundler.errors import AirlockError, FetchError, IntegrityError
from bundler.fsio import FileStamp, vouching_stamp
from bundler.paths import safe_relpath
from bundler.sources.download import (
    CHUNK,
    HashingWriter,
    digest_problems,
    open_partial,
    stream,
)
from bundler.sources.licenses import LICENSE_FILE_PATTERNS

DEFAULT_ENDPOINT = "https://huggingface.co"
# Files a model's license review needs, always taken along when the repo has them.
LICENSE_PATTERNS = ("README.md", *LICENSE_FILE_PATTERNS)


@dataclass(frozen=True)
class HubSettings:
    """Where and how to reach the Hub, read from the environment at call time."""

    endpoint: str
    token: Optional[str]
    cache_dir: Path
    offline: bool

    @classmethod
    def from_env(cls, *, offline: bool = False) -> HubSettings:
        env = os.environ
        home = Path(env.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
        cache = Path(env.get("HF_HUB_CACHE") or home / "hub")
        token = env.get("HF_TOKEN") or None
        if token is None:
            token_file = Path(env.get("HF_TOKEN_PATH") or home / "token")
            if token_file.is_file():
                token = token_file.read_text(encoding="utf-8").strip() or None
        env_offline = env.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        return cls(
            endpoint=(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
            token=token,
            cache_dir=cache,
            offline=offline or env_offline,
        )


@dataclass(frozen=True)
class RemoteFile:
    """A file in the repo tree at one commit, as the Hub describes it."""

    path: str
    size: int
    blob_id: str
    lfs_sha256: Optional[str]

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.blob_id


@dataclass(frozen=True)
class RepoSnapshot:
    repo: str
    revision: str
    commit: str
    files: tuple[RemoteFile, ...]
    gated: bool
    card_license: Optional[str]


@dataclass(frozen=True)
class FetchedFile:
    """A verified file in the cache; ``sha256`` was computed from the bytes that were stored."""

    path: Path
    size: int
    sha256: str
    downloaded: bool
    # When the cached blob was read to check it: the stamp that lets pack reuse ``sha256``
    # without hashing the blob again (fsio.FileStamp). None for a fresh download (its mtime
    # is too recent to vouch for anything) or a blob that changed while it was read.
    stamp: Optional[FileStamp] = None


def git_blob_id(data: bytes) -> str:
    """The git blob id the Hub reports for a non-LFS file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _valid_entry(path: str, blob_id: Optional[str], lfs_sha256: Optional[str]) -> bool:
    """Names that become file names in the cache and the bundle must be harmless."""
    return (
        safe_relpath(path)
        and (blob_id is None or bool(HEX40.match(blob_id)))
        and (lfs_sha256 is None or bool(HEX64.match(lfs_sha256)))
    )


def select_files(
    tree: Sequence[str], *, files: Sequence[str], allow: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The paths to take (requested plus license files) and the requested ones missing. Pure."""
    present = set(tree)
    missing = [f for f in files if f not in present]
    if files:
        chosen = {f for f in files if f in present}
    elif allow:
        chosen = {p for p in tree if any(fnmatch.fnmatchcase(p, pat) for pat in allow)}
    else:
        chosen = set(tree) - {".gitattributes"}
    chosen |= {p for p in tree if any(fnmatch.fnmatchcase(p, pat) for pat in LICENSE_PATTERNS)}
    return sorted(chosen), missing


def _card_license(card: Any) -> Optional[str]:
    value = getattr(card, "license", None) if card is not None else None
    if value is None and isinstance(card, dict):
        value = card.get("license")
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value).lower() if value else None


def hub_error(e: BaseException, *, repo: str, what: str, settings: HubSettings) -> FetchError:
    """Translate a huggingface_hub / HTTP exception into a FetchError that says what to do."""
    where = f"{repo} at {settings.endpoint}"
    if isinstance(e, GatedRepoError):
        return FetchError(
            f"{what}: {repo} is a gated repository and the Hub refused access",
            hint="accept the model's license on the Hub and set HF_TOKEN to that account's token",
        )
    if isinstance(e, RevisionNotFoundError):
        return FetchError(f"{what}: revision not found in {where}", hint="check 'revision'")
    if isinstance(e, EntryNotFoundError):
        return FetchError(f"{what}: file not found in {where}", hint="check 'files'/'allow'")
    if isinstance(e, RepositoryNotFoundError):
        return FetchError(
            f"{what}: repository {where} not found (or private without a valid token)",
            hint="check the repo id, HF_ENDPOINT, and HF_TOKEN for private repositories",
        )
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else "?"
        return FetchError(f"{what}: the Hub answered HTTP {status} for {where}", hint="retry later")
    if isinstance(e, (httpx2.HTTPError, OSError)):
        return FetchError(
            f"{what}: cannot download from {settings.endpoint}: {e}",
            hint="check the network or HF_ENDPOINT; rerun to resume, or use --offline with a cache",
        )
    return FetchError(f"{what}: {e}")


class HubClient:
    """Resolve and fetch model repos; every byte fetched is checked against its pinned digest."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self._api = HfApi(endpoint=settings.endpoint, token=settings.token or False)

    # --- resolution ------------------------------------------------------------------------

    def resolve(self, repo: str, revision: str) -> RepoSnapshot:
        """Resolve ``revision`` to a commit and list the tree there (paths, sizes, digests)."""
        if self.settings.offline:
            raise FetchError(
                f"cannot resolve {repo}@{revision} offline",
                hint="run 'airlock lock' on a connected machine, then build with --offline",
            )
        try:
            info = self._api.model_info(repo, revision=revision)
            commit = info.sha
            if not commit:
                raise FetchError(f"{repo}@{revision}: the Hub returned no commit id")
            tree = list(self._api.list_repo_tree(repo, revision=commit, recursive=True))
        except FetchError:
            raise
        except Exception as e:
            raise hub_error(
                e, repo=repo, what=f"resolving {repo}@{revision}", settings=self.settings
            ) from e
        files = []
        bad = []
        for entry in tree:
            if not hasattr(entry, "blob_id"):
                continue  # a folder
            lfs = getattr(entry, "lfs", None)
            if not _valid_entry(entry.path, entry.blob_id, lfs.sha256 if lfs else None):
                bad.append(f"{entry.path!r}")
                continue
            files.append(
                RemoteFile(
                    path=entry.path,
                    size=int(lfs.size if lfs is not None else getattr(entry, "size", 0)),
                    blob_id=entry.blob_id,
                    lfs_sha256=lfs.sha256 if lfs is not None else None,
                )
            )
        if bad or not HEX40.match(commit):
            raise IntegrityError(
                f"{self.settings.endpoint} answered {repo}@{revision} with unsafe names",
                problems=[f"commit {commit!r}"] if not HEX40.match(commit) else bad,
                hint="paths must stay inside the repository and digests be hex; "
                "check HF_ENDPOINT (is it really a Hub mirror?)",
            )
        self._write_ref(repo, revision, commit)
        return RepoSnapshot(
            repo=repo,
            revision=revision,
            commit=commit,
            files=tuple(sorted(files, key=lambda f: f.path)),
            gated=bool(getattr(info, "gated", False)),
            card_license=_card_license(getattr(info, "card_data", None)),
        )

    # --- cache layout ----------------------------------------------------------------------

    def _storage(self, repo: str) -> Path:
        return self.settings.cache_dir / ("models--" + repo.replace("/", "--"))

    def _write_ref(self, repo: str, revision: str, commit: str) -> None:
        if revision == commit:
            return
        ref = self._storage(repo) / "refs" / revision
        try:
            ref.parent.mkdir(parents=True, exist_ok=True)
            tmp = ref.with_name(ref.name + ".tmp")
            tmp.write_text(commit, encoding="utf-8")
            os.replace(tmp, ref)
        except OSError:
            pass  # the ref is a convenience for other tools; the lock is what pins

    def _link_snapshot(self, repo: str, commit: str, path: str, blob: Path) -> None:
        pointer = self._storage(repo) / "snapshots" / commit / path
        try:
            pointer.parent.mkdir(parents=True, exist_ok=True)
            if not pointer.is_symlink() and not pointer.exists():
                pointer.symlink_to(os.path.relpath(blob, pointer.parent))
        except OSError:
            pass  # the snapshot view is for other tools; airlock reads blobs/ directly

    # --- fetching --------------------------------------------------------------------------

    def fetch(
        self,
        repo: str,
        commit: str,
        path: str,
        *,
        size: int,
        lfs_sha256: Optional[str],
        blob_id: Optional[str],
        sha256: Optional[str] = None,
    ) -> FetchedFile:
        """Make ``path`` of ``repo@commit`` available, verified, as a cache blob.

        ``lfs_sha256`` (LFS files) or ``blob_id`` (others) is the Hub's digest; ``sha256``,
        when the lock knows it, is checked too. Raises IntegrityError on any mismatch and
        FetchError when the file cannot be had.
        """
        etag = lfs_sha256 or blob_id
        if not etag or not _valid_entry(path, blob_id, lfs_sha256):
            raise FetchError(
                f"{repo}/{path}: no valid digest or an unsafe path", hint="re-run 'airlock lock'"
            )
        blob = self._storage(repo) / "blobs" / etag
        if blob.is_file():
            # A cache is not trusted: read it once to check it against the pinned digests.
            result = self._check_cached(repo, path, blob, size, lfs_sha256, blob_id, sha256)
            if result is not None:
                self._link_snapshot(repo, commit, path, blob)
                return result
        if self.settings.offline:
            raise FetchError(
                f"{repo}/{path} (commit {commit[:12]}) is not in the Hub cache "
                f"{self.settings.cache_dir}",
                hint="build once without --offline (or copy the HF cache here), then retry",
            )
        blob.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.settings.cache_dir / ".locks" / blob.parent.parent.name / f"{etag}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(str(lock_path)):
            result = self._download(repo, commit, path, blob, size, lfs_sha256, blob_id, sha256)
        self._link_snapshot(repo, commit, path, blob)
        return result

    def _check_cached(
        self,
        repo: str,
        path: str,
        blob: Path,
        size: int,
        lfs_sha256: Optional[str],
        blob_id: Optional[str],
        sha256: Optional[str],
    ) -> Optional[FetchedFile]:
        started = time.time_ns()
        with blob.open("rb") as f, console.byte_progress(f"checking {path}", size) as advance:
            before = os.fstat(f.fileno())
            with HashingWriter(
                None, git_size=size, advance=advance, git_blob=lfs_sha256 is None
            ) as w:
                while chunk := f.read(CHUNK):
                    w.write(chunk)
                w.flush()
            stamp = vouching_stamp(before, os.fstat(f.fileno()), started)
        problems = digest_problems(w, size, lfs_sha256, blob_id, sha256)
        if not problems:
            return FetchedFile(
                path=blob, size=size, sha256=w.sha256.hexdigest(), downloaded=False, stamp=stamp
            )
        if self.settings.offline:
            raise IntegrityError(
                f"cached {repo}/{path} ({blob}) does not match the lock",
                problems=problems,
                hint=f"delete {blob} and build once without --offline to fetch it again",
            )
        console.warn(f"cached {repo}/{path} is corrupt ({problems[0]}); downloading it again")
        blob.unlink()
        return None

    def _download(
        self,
        repo: str,
        commit: str,
        path: str,
        blob: Path,
        size: int,
        lfs_sha256: Optional[str],
        blob_id: Optional[str],
        sha256: Optional[str],
    ) -> FetchedFile:
        s = self.settings
        what = f"downloading {repo}/{path}"
        url = hf_hub_url(repo, path, revision=commit, endpoint=s.endpoint)
        headers = build_hf_headers(token=s.token or False)
        try:
            meta = get_hf_file_metadata(url, token=s.token or False, endpoint=s.endpoint)
        except Exception as e:
            raise hub_error(e, repo=repo, what=what, settings=s) from e
        want_etag = lfs_sha256 or blob_id
        if meta.etag != want_etag or (meta.size is not None and meta.size != size):
            raise IntegrityError(
                f"the Hub describes {repo}/{path} at commit {commit} differently than the lock",
                problems=[
                    f"etag: lock {want_etag}, Hub {meta.etag}",
                    f"size: lock {size}, Hub {meta.size}",
                ],
                hint="a commit never changes: suspect the mirror (HF_ENDPOINT) or the lock",
            )
        location = meta.location or url
        if urlparse(location).netloc != urlparse(url).netloc:
            headers.pop("authorization", None)  # never send the token to a CDN
        partial = blob.with_name(blob.name + ".airlock-partial")
        keep_partial = True
        try:
            with ExitStack() as stack:
                f = stack.enter_context(open_partial(partial))
                advance = stack.enter_context(console.byte_progress(path, size))
                w = stack.enter_context(
                    HashingWriter(f, git_size=size, advance=advance, git_blob=lfs_sha256 is None)
                )
                resume = w.seed()  # resume an interrupted run: hash what is already stored
                if resume > size:
                    w.truncate(0)
                    resume = 0
                advance(resume)
                try:
                    stream(location, w, headers=headers, start=resume, size=size, name=path)
                    # No fsync: a blob torn by a crash is caught, since every use of a
                    # cached blob checks its digest again.
                    w.flush()
                except AirlockError:
                    raise
                except Exception as e:
                    raise hub_error(e, repo=repo, what=what, settings=s) from e
            problems = digest_problems(w, size, lfs_sha256, blob_id, sha256)
            if problems:
                keep_partial = False
                raise IntegrityError(
                    f"{repo}/{path} at commit {commit} does not match its pinned digest",
                    problems=problems,
                    hint="the server sent other bytes than the Hub's metadata promise; "
                    "check HF_ENDPOINT/proxies. Nothing was cached or bundled",
                )
            os.chmod(partial, 0o644)
            os.replace(partial, blob)
            keep_partial = False
            return FetchedFile(path=blob, size=size, sha256=w.sha256.hexdigest(), downloaded=True)
        finally:
            if not keep_partial:
                partial.unlink(missing_ok=True)
