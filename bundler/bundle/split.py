"""Split transfers: fixed-size parts, a signed sha256sum index, ``join`` naming bad parts."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Optional, Union

from bundler.bundle.partsindex import (
    INDEX_HEADER,
    MAX_SIG_BYTES,
    Part,
    PartsIndex,
    load_index,
    read_bounded,
)
from bundler.bundle.region import ARCHIVE_HASH
from bundler.errors import IntegrityError, UsageError
from bundler.fsio import atomic_file, write_atomic
from bundler.ssh import sig as sshsig
from bundler.ssh.keys import Signer
from bundler.ssh.trust import TrustPolicy

CHUNK = 1 << 20
_SIZE = re.compile(r"\A(\d+)([KMGT]?)(i?B)?\Z", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MIN_PART = 1 << 20


@dataclass(frozen=True)
class SplitIndex:
    """The written parts, the index listing them, and the index's signature."""

    index: Path
    signature_path: Path
    parts: tuple[Path, ...]


def parse_size(text: str) -> int:
    """``4G``, ``700M``, ``4GiB``, ``1048576`` (binary multiples) to bytes."""
    m = _SIZE.match(text.strip())
    if not m:
        raise UsageError(
            f"cannot read the size {text!r}", hint="use a size like 4G, 700M or 650MiB"
        )
    size = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if size < MIN_PART:
        raise UsageError(f"--split {text} is below the 1M minimum part size")
    return size


def part_name(final: Path, number: int) -> str:
    return f"{final.name}.part-{number:04d}"


def index_path(final: Path) -> Path:
    return Path(str(final) + ".parts")


def write_parts(
    tar: Path,
    final: Path,
    part_size: int,
    *,
    signer: Signer,
    region: bytes,
    durable: bool = False,
) -> SplitIndex:
    """Cut the finished archive ``tar`` into parts named after ``final``.

    One read: each part's sha256 and the whole archive's digest (for ``<final>.sig``) are
    computed while copying. ``region`` is the archive's first bytes, already in memory.
    ``durable`` flushes each part to disk before it is renamed into place.
    """
    whole = hashlib.new(ARCHIVE_HASH)
    parts: list[Path] = []
    sizes: list[str] = []
    lines: list[str] = []
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(tar, "rb") as f:
        number = 0
        while True:
            number += 1
            path = final.parent / part_name(final, number)
            digest = hashlib.sha256()
            written = 0
            tmp = path.with_name("." + path.name + ".tmp")
            with open(tmp, "wb") as out:
                while written < part_size:
                    n = f.readinto(view[: min(CHUNK, part_size - written)])
                    if not n:
                        break
                    digest.update(view[:n])
                    whole.update(view[:n])
                    out.write(view[:n])
                    written += n
                out.flush()
                if durable:
                    os.fsync(out.fileno())
            if written == 0:
                tmp.unlink()
                break
            os.replace(tmp, path)
            parts.append(path)
            sizes.append(f"# size {written} {path.name}\n")
            lines.append(f"{digest.hexdigest()}  {path.name}\n")
            if written < part_size:
                break
    del region  # the region is part of the file read above; kept for symmetry with pack
    index = index_path(final)
    text = "".join([INDEX_HEADER + "\n", *sizes, *lines]).encode("ascii")
    write_atomic(index, text)
    sig_path = Path(str(index) + ".sig")
    write_atomic(sig_path, sshsig.sign(text, signer, namespace=sshsig.ARCHIVE_NAMESPACE))
    archive_sig = sshsig.sign_digest(
        whole.digest(), signer, namespace=sshsig.ARCHIVE_NAMESPACE, hash_algorithm=ARCHIVE_HASH
    )
    write_atomic(Path(str(final) + ".sig"), archive_sig)
    return SplitIndex(index=index, signature_path=sig_path, parts=tuple(parts))


def _open_part(part: Part) -> tuple[Optional[io.BufferedReader], Optional[str]]:
    """The part opened for reading, after checking it is a regular file of the listed size."""
    try:
        fd = os.open(part.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        return None, f"{part.path.name}: cannot read ({e.strerror or e}); re-send it"
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None, f"{part.path.name}: not a regular file; re-send it"
    if st.st_size != part.size:
        os.close(fd)
        return None, (
            f"{part.path.name}: {st.st_size} bytes where the index lists {part.size}; re-send it"
        )
    return os.fdopen(fd, "rb"), None


def _copy(f: io.BufferedReader, part: Part, out: Optional[IO[bytes]]) -> Optional[str]:
    """Hash exactly ``part.size`` bytes (copying them to ``out``); the problem, if any."""
    digest = hashlib.sha256()
    view = memoryview(bytearray(CHUNK))
    left = part.size
    while left:
        n = f.readinto(view[: min(CHUNK, left)])
        if not n:
            return f"{part.path.name}: shorter than the index says; re-send it"
        digest.update(view[:n])
        if out is not None:
            out.write(view[:n])
        left -= n
    if f.read(1):
        return f"{part.path.name}: grew while it was joined; re-send it"
    if digest.hexdigest() != part.sha256:
        return f"{part.path.name}: sha256 does not match the index; re-send it"
    return None


def join(
    index: Path,
    out_dir: Path,
    *,
    policy: Optional[TrustPolicy] = None,
    now: Optional[datetime] = None,
) -> Path:
    """Concatenate the parts into ``<out_dir>/<bundle>.tar``, checking each part's sha256.

    The index is read once and, with ``policy``, its signature checked over those bytes.
    Before a byte is copied, every part must be a regular file of exactly the size the index
    lists and the destination must have room for them all; then exactly those bytes are
    copied and hashed. Every bad or missing part is named (re-send only those). Raises
    IntegrityError, TrustError or UsageError; nothing is left at the destination on failure.
    """
    if not index.name.endswith(".parts"):
        raise UsageError(f"{index} is not a .parts index", hint="pass the BUNDLE.tar.parts file")
    loaded = load_index(index, policy, now=now)
    final = out_dir / index.name[: -len(".parts")]
    sig = Path(str(index)[: -len(".parts")] + ".sig")
    archive_sig = None  # the whole-archive .tar.sig goes along, unless it is already there
    if sig.exists() and sig.parent.resolve() != out_dir.resolve():
        archive_sig = read_bounded(
            sig, MAX_SIG_BYTES, "the archive signature", "copy the .tar.sig again"
        )
    opened = [_open_part(p) for p in loaded.parts]
    try:
        if any(problem for _, problem in opened):
            # name the damaged parts too: read (never copy) the listed bytes of the others
            _refuse(
                [
                    problem if f is None else _copy(f, part, None)
                    for part, (f, problem) in zip(loaded.parts, opened)
                ],
                loaded,
            )
        _check_room(out_dir, loaded)
        with atomic_file(final) as (_tmp, out):
            _refuse(
                [_copy(f, part, out) for part, (f, _) in zip(loaded.parts, opened) if f], loaded
            )
            out.flush()
            os.fsync(out.fileno())
    except OSError as e:
        raise UsageError(
            f"cannot join into {final}: {e.strerror or e}; nothing was left there",
            hint="check the parts can be read and the destination has room, then join again",
        ) from e
    finally:
        for f, _ in opened:
            if f is not None:
                f.close()
    if archive_sig is not None:
        write_atomic(Path(str(final) + ".sig"), archive_sig)
    return final


def _refuse(problems: Sequence[Optional[str]], loaded: PartsIndex) -> None:
    named = [p for p in problems if p]
    if named:
        raise IntegrityError(
            f"{len(named)} of {len(loaded.parts)} parts are damaged or missing",
            problems=named,
            hint="re-send only the parts named above, then join again",
        )


def _check_room(out_dir: Path, loaded: PartsIndex) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(out_dir).free
    except OSError as e:
        raise UsageError(f"cannot write to {out_dir}: {e.strerror or e}") from e
    if free < loaded.size:
        raise UsageError(
            f"{out_dir} has {free} bytes free; the joined bundle needs {loaded.size}",
            hint="free some space or join into another directory (--out)",
        )


class PartsReader(io.RawIOBase):
    """A read-only, seekable view of the concatenated parts (verify a split bundle in place).

    Given a ``PartsIndex``, each part must be a regular file of the size the index lists
    (IntegrityError naming every one that is not), so a part is never read past that size.
    """

    def __init__(self, parts: Union[Sequence[Path], PartsIndex]) -> None:
        super().__init__()
        self._files: list[io.BufferedReader] = []
        if isinstance(parts, PartsIndex):
            opened = [_open_part(p) for p in parts.parts]
            problems = [problem for _, problem in opened if problem]
            self._files = [f for f, _ in opened if f is not None]
            if problems:
                self.close()
                _refuse(problems, parts)
        else:
            self._files = [open(p, "rb") for p in parts]
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self._pos = offset
        elif whence == 1:
            self._pos += offset
        else:
            self._pos = sum(self._sizes) + offset
        return self._pos

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        start = 0
        for f, size in zip(self._files, self._sizes):
            if self._pos < start + size:
                f.seek(self._pos - start)
                n = f.readinto(memoryview(b)[: min(len(b), start + size - self._pos)])
                self._pos += n or 0
                return n or 0
            start += size
        return 0

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()
