"""The signed parts index of a split bundle: its format, and reading it once, verified.

docs/FORMAT.md, "Split transfers": a header line, then ``# size BYTES NAME`` per part,
then ``sha256sum`` lines (so stock ``sha256sum -c`` still checks the parts). The bytes
whose signature is checked are the bytes parsed: the index is read once, bounded.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from bundler.errors import UsageError
from bundler.fsio import read_small
from bundler.ssh import sig as sshsig
from bundler.ssh import trust
from bundler.ssh.trust import TrustPolicy

_NAME = r"([A-Za-z0-9._+-]{1,255})"
_LINE = re.compile(r"\A([0-9a-f]{64})  " + _NAME + r"\Z")
_SIZE_LINE = re.compile(r"\A# size ([1-9][0-9]{0,19}) " + _NAME + r"\Z")
INDEX_HEADER = "# airlock parts index: the size of each part, then its sha256 (sha256sum -c)"
MAX_INDEX_BYTES = 4 << 20  # 10k parts take about 2 MiB
MAX_SIG_BYTES = 64 << 10  # an armored Ed25519 SSHSIG is about 300 bytes


@dataclass(frozen=True)
class Part:
    """One part as the index lists it."""

    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class PartsIndex:
    """An index read once: its exact bytes (verified when a policy was given) and its parts."""

    path: Path
    data: bytes
    parts: tuple[Part, ...]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)


def parse_index(data: bytes, index: Path) -> tuple[Part, ...]:
    """The parts an index lists, in order; raises UsageError when it is malformed.

    The format (docs/FORMAT.md, "Split transfers"): a header line, one ``# size BYTES NAME``
    line per part, then one ``sha256sum`` line per part, the same names in the same order.
    """
    hint = "copy the .parts index again from the bundle's builder"
    try:
        lines = data.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise UsageError(f"the parts index {index} is not ASCII text", hint=hint) from None
    if lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != INDEX_HEADER:
        raise UsageError(
            f"{index} does not start with the airlock parts index header (an index without "
            "part sizes, from an older airlock, cannot be joined safely)",
            hint="split the bundle again with this airlock, or check each part with "
            "`sha256sum -c` and concatenate them with cat",
        )
    count = (len(lines) - 1) // 2
    sizes, sums = lines[1 : 1 + count], lines[1 + count :]
    parts: list[Part] = []
    for number, (size_line, sum_line) in enumerate(zip(sizes, sums), 1):
        size, digest = _SIZE_LINE.match(size_line), _LINE.match(sum_line)
        if not size or not digest or size.group(2) != digest.group(2):
            raise UsageError(
                f"{index}: the entry of part {number} is not a `# size BYTES NAME` line and a "
                "`sha256  NAME` line for the same name",
                hint=hint,
            )
        parts.append(Part(index.parent / digest.group(2), int(size.group(1)), digest.group(1)))
    if not parts or len(lines) != 1 + 2 * count:
        raise UsageError(f"the parts index {index} lists no parts or is cut short", hint=hint)
    if len({p.path.name for p in parts}) != len(parts):
        raise UsageError(f"the parts index {index} names a part twice", hint=hint)
    return tuple(parts)


def read_bounded(path: Path, limit: int, what: str, hint: str) -> bytes:
    try:
        return read_small(path, limit)
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror or e}", hint=hint) from e
    except ValueError as e:
        raise UsageError(f"{what} {path} is over {limit} bytes; it is not one", hint=hint) from e


def load_index(
    index: Path, policy: Optional[TrustPolicy] = None, *, now: Optional[datetime] = None
) -> PartsIndex:
    """Read ``index`` once; with ``policy``, verify ``<index>.sig`` over those bytes first.

    The signature (namespace airlock-archive-v1) needs one trusted signer: the index only
    names parts; the manifest signatures (checked by verify) carry the policy's threshold.
    Raises UsageError (unreadable or malformed) or TrustError.
    """
    data = read_bounded(index, MAX_INDEX_BYTES, "the parts index", "pass the BUNDLE.tar.parts file")
    if policy is not None:
        sig_path = Path(str(index) + ".sig")
        sig = read_bounded(
            sig_path, MAX_SIG_BYTES, "the index signature",
            "copy the .parts.sig file next to the .parts index",
        )  # fmt: skip
        trust.evaluate(
            dataclasses.replace(policy, threshold=1),
            data,
            [(sig_path.name, sig)],
            namespace=sshsig.ARCHIVE_NAMESPACE,
            now=now or datetime.now(timezone.utc),
        )
    return PartsIndex(index, data, parse_index(data, index))


def read_index(index: Path) -> list[tuple[str, Path]]:
    """The (sha256, part path) pairs of a parts index (unverified); raises UsageError."""
    return [(p.sha256, p.path) for p in load_index(index).parts]
