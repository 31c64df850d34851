"""Bundle verification: trust policy, signatures and expiry first, then one streaming pass."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Optional

from bundler.bundle.partsindex import PartsIndex, load_index
from bundler.bundle.split import PartsReader
from bundler.errors import ExpiredError, SignatureError, TrustError, UsageError
from bundler.ssh import sig as sshsig
from bundler.ssh import trust
from bundler.ssh.trust import TrustDecision, TrustPolicy
from runtime.bundle import BundleMetadata, check_payload, parse_time, read_metadata_stream
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
    pass the ``index`` already loaded and verified, if any).

    An OS error opening or reading it (no such file, a directory, an unreadable part) is a
    UsageError naming the file.
    """
    try:
        if path.name.endswith(".parts"):
            reader = PartsReader(index or load_index(path))
            with reader:
                yield reader  # type: ignore[misc]
        else:
            with open(path, "rb") as f:
                yield f
    except OSError as e:
        raise UsageError(
            f"cannot read {e.filename or path}: {e.strerror or e}",
            hint="pass the bundle .tar, or the .parts index with all parts beside it",
        ) from e


def check_policy(
    meta: BundleMetadata,
    policy: TrustPolicy,
    *,
    now: datetime,
    allow_unknown_signers: bool = False,
) -> TrustDecision:
    """Signatures over the manifest bytes meet ``policy``, the bundle has not expired, and
    every signature member is a valid signature by a key the policy knows.

    The threshold counts the well-formed signatures; a member that is not shaped as airlock
    writes signatures (``meta.signature_problems``, read with collect_signature_problems)
    or does not verify over the manifest still fails the bundle (SignatureError): a
    verified bundle carries nothing unsigned. A valid signature by a key in neither the
    allowed signers nor the revoked keys fails it too (TrustError) unless
    ``allow_unknown_signers`` (bundles co-signed by other sites' keys); it is then a warning.
    Raises TrustError, ExpiredError or SignatureError; the clock is the caller's ``now``.
    """
    malformed = dict(meta.signature_problems)
    shaped = [(n, sig) for n, sig in meta.signatures if n not in malformed]
    listed = [f"{name}: {why}" for name, why in meta.signature_problems]
    try:
        decision = trust.evaluate(
            policy, meta.manifest_bytes, shaped, namespace=sshsig.MANIFEST_NAMESPACE, now=now
        )
    except TrustError as e:
        if not listed:
            raise
        raise TrustError(e.message, problems=[*listed, *e.problems], hint=e.hint) from e
    expires = parse_time(meta.manifest["expires"])
    if now >= expires:
        raise ExpiredError(
            f"bundle {meta.manifest['name']} {meta.manifest['version']} expired at "
            f"{meta.manifest['expires']} (verification started {now:%Y-%m-%dT%H:%M:%SZ})",
            hint="build and sign a fresh bundle (airlock build / airlock pack --expires)",
        )
    counted = {a.name for a in decision.accepted}
    invalid, unknown = _uncounted(meta, policy, [n for n, _ in shaped if n not in counted])
    met = f"{len(decision.accepted)} of the required {policy.threshold} trusted signature(s)"
    if listed or invalid:
        raise SignatureError(
            f"{len(listed) + len(invalid)} signature member(s) are not valid signatures over"
            f" this manifest, although {met} are present",
            problems=[*listed, *invalid, *unknown],
            hint="a verified bundle carries nothing unsigned: obtain the bundle again from its"
            " builder (each line above names the member and why)",
        )
    if unknown and not allow_unknown_signers:
        raise TrustError(
            f"{len(unknown)} signature(s) by keys the trust policy does not know, although"
            f" {met} are present",
            problems=unknown,
            hint="add the keys to the allowed signers (or the revoked keys) file, or pass"
            " --allow-unknown-signers when the bundle is also co-signed for other sites",
        )
    if unknown:
        decision = replace(decision, problems=(*decision.problems, *unknown))
    return decision


def _uncounted(
    meta: BundleMetadata, policy: TrustPolicy, names: list[str]
) -> tuple[list[str], list[str]]:
    """Of the well-formed signatures that did not count: (invalid ones, ones by unknown keys).

    Those by a key the policy lists (revoked, out of its validity, another namespace) are
    neither: trust.evaluate already reported them as warnings.
    """
    known = {s.public_key.blob for s in policy.signers} | set(policy.revoked)
    data = dict(meta.signatures)
    invalid: list[str] = []
    unknown: list[str] = []
    for name in names:
        try:
            sig = sshsig.parse(data[name])
            digest = sshsig.message_digest(meta.manifest_bytes, sig.hash_algorithm)
            sshsig.verify_digest(digest, sig, namespace=sshsig.MANIFEST_NAMESPACE)
        except SignatureError as e:
            invalid.append(f"{name}: {e.message}")
            continue
        if sig.public_key.blob not in known:
            unknown.append(
                f"{name}: key {sig.public_key.fingerprint} is in neither the allowed signers"
                " nor the revoked keys"
            )
    return invalid, unknown


def verify_bundle(
    path: Path,
    policy: TrustPolicy,
    *,
    now: Optional[datetime] = None,
    progress: Optional[Callable[[int], None]] = None,
    allow_unknown_signers: bool = False,
) -> VerifyReport:
    """Verify ``path`` (a ``.tar`` or a ``.parts`` index) against ``policy``.

    Policy, signatures and expiry are checked before any payload byte is read; then every
    member is checked in one streaming pass. Raises TrustError, ExpiredError,
    SignatureError, IntegrityError or ArchiveFormatError, each listing every problem found.
    """
    now = now or datetime.now(timezone.utc)
    index = None
    if path.name.endswith(".parts"):
        index = load_index(path, policy, now=now)
    else:
        from bundler.bundle.cosign import refuse_pending_cosign

        refuse_pending_cosign(path)  # an interrupted in-place co-sign: finish it first
    with open_bundle(path, index) as f:
        meta = read_metadata_stream(f, collect_signature_problems=True)
        decision = check_policy(meta, policy, now=now, allow_unknown_signers=allow_unknown_signers)
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
    allow_unknown_signers: bool = False,
) -> UnpackResult:
    """Check ``policy`` and expiry, then verify-and-unpack into ``dest`` (which must not exist).

    Nothing appears at ``dest`` unless every byte matched. Raises TrustError, ExpiredError,
    SignatureError, IntegrityError, ArchiveFormatError or InstallError.
    """
    now = now or datetime.now(timezone.utc)
    index = load_index(path, policy, now=now) if path.name.endswith(".parts") else None
    with open_bundle(path, index) as f:
        meta = read_metadata_stream(f, collect_signature_problems=True)
        check_policy(meta, policy, now=now, allow_unknown_signers=allow_unknown_signers)
        f.seek(0)
        return unpack(path, dest, manifest_sha256=meta.manifest_sha256, stream=f, progress=progress)
