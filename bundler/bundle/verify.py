"""Bundle verification: trust policy, signatures and expiry first, then one streaming pass."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Optional

from bundler.bundle.manifest import parse_time
from bundler.bundle.partsindex import PartsIndex, load_index
from bundler.bundle.split import PartsReader
from bundler.errors import ExpiredError, UsageError
from bundler.ssh import sig as sshsig
from bundler.ssh import trust
from bundler.ssh.trust import TrustDecision, TrustPolicy
from runtime.bundle import BundleMetadata, check_payload, read_metadata_stream
from runtime.unpack import UnpackResult, unpack


@dataclass(frozen=True)
class VerifyReport:
    """What was verified: the manifest digest, identity, who signed, and how much."""

    manifest_sha256: str
    name: str
    version: str
    sequence: int
    created: str
    expires: str
    signers: tuple[dict[str, Any], ...]
    files: int
    bytes: int
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest_sha256": self.manifest_sha256,
            "name": self.name,
            "version": self.version,
            "sequence": self.sequence,
            "created": self.created,
            "expires": self.expires,
            "signers": list(self.signers),
            "files": self.files,
            "bytes": self.bytes,
            "warnings": list(self.problems),
        }


@contextmanager
def open_bundle(path: Path, index: Optional[PartsIndex] = None) -> Iterator[IO[bytes]]:
    """Open a bundle ``.tar``, or a split bundle through its ``.parts`` index (read once:
    pass the ``index`` already loaded and verified, if any)."""
    try:
        if path.name.endswith(".parts"):
            reader = PartsReader(index or load_index(path))
            with reader:
                yield reader  # type: ignore[misc]
        else:
            with open(path, "rb") as f:
                yield f
    except FileNotFoundError as e:
        raise UsageError(
            f"cannot open {e.filename}: no such file",
            hint="pass the bundle .tar, or the .parts index with all parts beside it",
        ) from e


def check_policy(meta: BundleMetadata, policy: TrustPolicy, *, now: datetime) -> TrustDecision:
    """Signatures over the manifest bytes meet ``policy`` and the bundle has not expired.

    Raises TrustError (signatures) or ExpiredError; the clock is the caller's ``now``.
    """
    decision = trust.evaluate(
        policy, meta.manifest_bytes, meta.signatures, namespace=sshsig.MANIFEST_NAMESPACE, now=now
    )
    expires = parse_time(meta.manifest["expires"])
    if now >= expires:
        raise ExpiredError(
            f"bundle {meta.manifest['name']} {meta.manifest['version']} expired at "
            f"{meta.manifest['expires']} (verification started {now:%Y-%m-%dT%H:%M:%SZ})",
            hint="build and sign a fresh bundle (airlock build / airlock pack --expires)",
        )
    return decision


def verify_bundle(
    path: Path,
    policy: TrustPolicy,
    *,
    now: Optional[datetime] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> VerifyReport:
    """Verify ``path`` (a ``.tar`` or a ``.parts`` index) against ``policy``.

    Policy, signatures and expiry are checked before any payload byte is read; then every
    member is checked in one streaming pass. Raises TrustError, ExpiredError,
    IntegrityError or ArchiveFormatError, each listing every problem found.
    """
    now = now or datetime.now(timezone.utc)
    index = None
    if path.name.endswith(".parts"):
        index = load_index(path, policy, now=now)
    else:
        from bundler.bundle.cosign import refuse_pending_cosign

        refuse_pending_cosign(path)  # an interrupted in-place co-sign: finish it first
    with open_bundle(path, index) as f:
        meta = read_metadata_stream(f)
        decision = check_policy(meta, policy, now=now)
        files, total = check_payload(
            f, meta.manifest, offset=meta.payload_offset, progress=progress
        )
    m = meta.manifest
    return VerifyReport(
        manifest_sha256=meta.manifest_sha256,
        name=m["name"],
        version=m["version"],
        sequence=m["sequence"],
        created=m["created"],
        expires=m["expires"],
        signers=tuple(
            {"name": a.name, "fingerprint": a.fingerprint, "principals": list(a.principals)}
            for a in decision.accepted
        ),
        files=files,
        bytes=total,
        problems=decision.problems,
    )


def unpack_bundle(
    path: Path,
    dest: Path,
    policy: TrustPolicy,
    *,
    now: Optional[datetime] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> UnpackResult:
    """Check ``policy`` and expiry, then verify-and-unpack into ``dest`` (which must not exist).

    Nothing appears at ``dest`` unless every byte matched. Raises TrustError, ExpiredError,
    IntegrityError, ArchiveFormatError or InstallError.
    """
    now = now or datetime.now(timezone.utc)
    index = load_index(path, policy, now=now) if path.name.endswith(".parts") else None
    with open_bundle(path, index) as f:
        meta = read_metadata_stream(f)
        check_policy(meta, policy, now=now)
        f.seek(0)
        return unpack(path, dest, manifest_sha256=meta.manifest_sha256, stream=f, progress=progress)
