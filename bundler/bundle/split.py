"""Split transfers: fixed-size parts, a signed sha256sum index, ``join`` naming bad parts."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from bundler.bundle.region import ARCHIVE_HASH
from bundler.errors import IntegrityError, UsageError
from bundler.fsio import atomic_file, write_atomic
from bundler.ssh import sig as sshsig
from bundler.ssh import trust
from bundler.ssh.keys import Signer
from bundler.ssh.trust import TrustPolicy

CHUNK = 1 << 20
_SIZE = re.compile(r"\A(\d+)([KMGT]?)(i?B)?\Z", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_LINE = re.compile(r"\A([0-9a-f]{64})  ([A-Za-z0-9._+-]{1,255})\Z")
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
            lines.append(f"{digest.hexdigest()}  {path.name}\n")
            if written < part_size:
                break
    del region  # the region is part of the file read above; kept for symmetry with pack
    index = index_path(final)
    text = "".join(lines).encode("ascii")
    write_atomic(index, text)
    sig_path = Path(str(index) + ".sig")
    write_atomic(sig_path, sshsig.sign(text, signer, namespace=sshsig.ARCHIVE_NAMESPACE))
    archive_sig = sshsig.sign_digest(
        whole.digest(), signer, namespace=sshsig.ARCHIVE_NAMESPACE, hash_algorithm=ARCHIVE_HASH
    )
    write_atomic(Path(str(final) + ".sig"), archive_sig)
    return SplitIndex(index=index, signature_path=sig_path, parts=tuple(parts))


def read_index(index: Path) -> list[tuple[str, Path]]:
    """The (sha256, part path) pairs of a parts index; raises UsageError when malformed."""
    try:
        text = index.read_text("ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read the parts index {index}: {e}") from e
    pairs: list[tuple[str, Path]] = []
    for number, line in enumerate(text.splitlines(), 1):
        m = _LINE.match(line)
        if not m:
            raise UsageError(
                f"{index}, line {number}, is not a `sha256  part-name` line",
                hint="copy the .parts index again from the bundle's builder",
            )
        pairs.append((m.group(1), index.parent / m.group(2)))
    if not pairs:
        raise UsageError(f"the parts index {index} lists no parts")
    return pairs


def check_index_signature(
    index: Path, policy: TrustPolicy, *, now: Optional[datetime] = None
) -> None:
    """Verify ``<index>.sig`` against the trust policy (namespace airlock-archive-v1).

    One trusted signer suffices: the index only names parts; the manifest signatures
    (checked by verify) carry the policy's threshold. Raises TrustError.
    """
    sig_path = Path(str(index) + ".sig")
    try:
        sig = sig_path.read_bytes()
    except OSError as e:
        raise UsageError(
            f"cannot read the index signature {sig_path}: {e.strerror or e}",
            hint="copy the .parts.sig file next to the .parts index",
        ) from e
    trust.evaluate(
        dataclasses.replace(policy, threshold=1),
        index.read_bytes(),
        [(sig_path.name, sig)],
        namespace=sshsig.ARCHIVE_NAMESPACE,
        now=now or datetime.now(timezone.utc),
    )


def join(index: Path, out_dir: Path, *, policy: Optional[TrustPolicy] = None) -> Path:
    """Concatenate the parts into ``<out_dir>/<bundle>.tar``, checking each part's sha256.

    Every bad or missing part is named (re-send only those). Raises IntegrityError; nothing
    is left at the destination on failure.
    """

    if policy is not None:
        check_index_signature(index, policy)
    pairs = read_index(index)
    if not index.name.endswith(".parts"):
        raise UsageError(f"{index} is not a .parts index")
    final = out_dir / index.name[: -len(".parts")]
    out_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with atomic_file(final) as (_tmp, out):
        for expected, part in pairs:
            digest = hashlib.sha256()
            try:
                with open(part, "rb") as f:
                    while n := f.readinto(view):
                        digest.update(view[:n])
                        out.write(view[:n])
            except OSError as e:
                problems.append(f"{part.name}: cannot read ({e.strerror or e}); re-send it")
                continue
            if digest.hexdigest() != expected:
                problems.append(f"{part.name}: sha256 does not match the index; re-send it")
        if problems:
            raise IntegrityError(
                f"{len(problems)} of {len(pairs)} parts are damaged or missing",
                problems=problems,
                hint="re-send only the parts named above, then join again",
            )
        out.flush()
        os.fsync(out.fileno())
    sig = Path(str(index)[: -len(".parts")] + ".sig")
    if sig.exists() and sig.parent.resolve() != out_dir.resolve():
        write_atomic(Path(str(final) + ".sig"), sig.read_bytes())
    return final


class PartsReader(io.RawIOBase):
    """A read-only, seekable view of the concatenated parts (verify a split bundle in place)."""

    def __init__(self, parts: Sequence[Path]) -> None:
        super().__init__()
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
