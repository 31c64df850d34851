"""Build cache keyed by its inputs: an unchanged rebuild is a directory lookup.

An entry is ``<cache>/<kind>/<key>/`` where ``key`` is the sha256 of the canonical JSON of
the build's inputs (source digest, flags, variants, compiler and cmake versions, ...).
A builder fills a private work directory; only a build that finished is renamed into
place, so an interrupted or failed build never leaves a half entry that later looks
complete. A lock file per key keeps two concurrent builds of the same inputs (several
test sessions on one machine) from doing the work twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler.errors import BuildError

__all__ = [
    "BuildCache",
    "CacheEntry",
    "cache_key",
    "copy_log",
    "default_cache_dir",
    "file_lock",
    "log_tail",
]

INPUTS_FILE = "inputs.json"
LOG_FILE = "build.log"
SECONDS_FILE = "build-seconds"
TAIL_LINES = 40


def default_cache_dir() -> Path:
    """``$AIRLOCK_CACHE``, else ``~/.cache/airlock``."""
    env = os.environ.get("AIRLOCK_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "airlock"


def canonical_json(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def cache_key(inputs: Mapping[str, Any]) -> str:
    """The sha256 hex of the inputs' canonical JSON: equal inputs, equal key."""
    return hashlib.sha256(canonical_json(inputs)).hexdigest()


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    text = data[-256 * 1024 :].decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class CacheEntry:
    """A finished build: ``path`` holds its outputs, ``log`` its build log."""

    kind: str
    key: str
    path: Path
    inputs: Mapping[str, Any]
    hit: bool
    seconds: float

    @property
    def log(self) -> Path:
        return self.path / LOG_FILE

    @property
    def cold_seconds(self) -> float | None:
        """How long the build that made this entry took (None if not recorded)."""
        try:
            return float((self.path / SECONDS_FILE).read_text())
        except (OSError, ValueError):
            return None


Builder = Callable[[Path, Path], None]
"""``builder(out_dir, log_path)``: fill ``out_dir``, append all tool output to ``log_path``."""


class BuildCache:
    """Finished builds under ``root``, one directory per (kind, inputs)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_cache_dir()

    def entry_path(self, kind: str, inputs: Mapping[str, Any]) -> Path:
        return self.root / kind / cache_key(inputs)

    def lookup(self, kind: str, inputs: Mapping[str, Any]) -> CacheEntry | None:
        """The finished entry for these inputs, or None."""
        path = self.entry_path(kind, inputs)
        if (path / INPUTS_FILE).is_file():
            return CacheEntry(kind, path.name, path, inputs, hit=True, seconds=0.0)
        return None

    def build(self, kind: str, inputs: Mapping[str, Any], builder: Builder) -> CacheEntry:
        """Return the cached entry for ``inputs`` or run ``builder`` to make it.

        Raises:
            BuildError: the builder failed; the message carries the tail of the build log
                and the log is kept at ``<cache>/<kind>/failed-<key>.log``.
        """
        start = time.monotonic()
        key = cache_key(inputs)
        final = self.root / kind / key
        (self.root / kind).mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / kind / f".{key}.lock"):
            found = self.lookup(kind, inputs)
            if found is not None:
                return found
            # Holding the lock, any other work directory of this key is a killed build's.
            for stale in (self.root / kind).glob(f".work-{key}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            work = self.root / kind / f".work-{key}-{os.getpid()}"
            work.mkdir()
            log = work / LOG_FILE
            log.touch()
            try:
                builder(work, log)
            except BaseException as exc:
                kept = self.root / kind / f"failed-{key}.log"
                if log.exists():
                    os.replace(log, kept)
                shutil.rmtree(work, ignore_errors=True)
                if isinstance(exc, BuildError):
                    exc.problems = (*exc.problems, f"build log: {kept}")
                    raise
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                raise BuildError(
                    f"{kind} build failed: {exc}",
                    hint=f"see the full build log at {kept}",
                    problems=log_tail(kept).splitlines(),
                ) from exc
            (work / SECONDS_FILE).write_text(f"{time.monotonic() - start:.1f}\n")
            (work / INPUTS_FILE).write_bytes(canonical_json(inputs) + b"\n")
            if final.exists():  # a stale, unfinished entry from an older layout
                shutil.rmtree(final)
            os.replace(work, final)
            return CacheEntry(kind, key, final, inputs, hit=False, seconds=time.monotonic() - start)

    def entries(self, kind: str) -> Iterator[Path]:
        base = self.root / kind
        if base.is_dir():
            for child in sorted(base.iterdir()):
                if (child / INPUTS_FILE).is_file():
                    yield child


def copy_log(entry: CacheEntry, log_dir: Path | None, name: str) -> Path | None:
    """Copy the entry's build log to ``log_dir/name`` (the build output keeps its logs)."""
    if log_dir is None or not entry.log.is_file():
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    dest = log_dir / name
    tmp = log_dir / f".{name}.tmp"
    shutil.copyfile(entry.log, tmp)
    os.replace(tmp, dest)
    return dest


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing) for the with-block."""
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
