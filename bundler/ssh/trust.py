"""The site's trust policy: OpenSSH allowed_signers, revoked keys, the k-of-n decision (pure).

The files are read by bundler/ssh/policyfile.py exactly as OpenSSH 9.2 reads them; this
module decides, in ssh-keygen's order (sshsig verify, then ``sshkey_check_revoked``, then
``sshsig_check_allowed_keys``), whether each signature counts, and counts distinct keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from bundler.errors import SignatureError, TrustError
from bundler.fsio import read_small
from bundler.ssh import policyfile
from bundler.ssh.keys import ED25519, PublicKey
from bundler.ssh.policyfile import KRL_MAGIC, LineError
from bundler.ssh.sig import SshSignature, message_digest, parse, verify_digest
from bundler.ssh.wire import Reader

_POLICY_HINT = (
    "fix the line (format: `principals [options] ssh-ed25519 AAAA... [comment]`, "
    "see docs/FORMAT.md, Signatures and trust policy)"
)
Text = Union[str, bytes]
MAX_POLICY_BYTES = 64 << 20  # far beyond any real allowed_signers or revoked keys file


@dataclass(frozen=True)
class AllowedSigner:
    """One allowed_signers line: who may sign, with which key, for what and when."""

    principals: tuple[str, ...]  # the identities the line vouches for (empty: nobody)
    public_key: PublicKey  # a plain key in its canonical form, or the certificate written
    namespaces: Optional[bytes] = None  # the namespaces= pattern list as written
    valid_after: Optional[datetime] = None
    valid_before: Optional[datetime] = None
    cert_authority: bool = False
    source: str = field(default="", compare=False)  # "file:line", for messages

    def allows_namespace(self, namespace: str) -> bool:
        return (
            self.namespaces is None
            or policyfile.match_pattern_list(namespace.encode("utf-8"), self.namespaces) == 1
        )

    def why_not_valid_at(self, now: datetime) -> Optional[str]:
        """None when the line is in force at ``now``, else the reason (as ssh-keygen words it).

        Whole seconds, as ssh-keygen compares them; both ends are inclusive.
        """
        seconds = _seconds(now)
        if self.valid_after is not None and seconds < _seconds(self.valid_after):
            return f"key is not yet valid: now {_fmt(now)} < valid-after {_fmt(self.valid_after)}"
        if self.valid_before is not None and seconds > _seconds(self.valid_before):
            return f"key has expired: now {_fmt(now)} > valid-before {_fmt(self.valid_before)}"
        return None


@dataclass(frozen=True)
class TrustPolicy:
    """The allowed signers, how many distinct keys must sign, and the revoked key blobs."""

    signers: tuple[AllowedSigner, ...]
    threshold: int = 1
    revoked: frozenset[bytes] = frozenset()  # plain public keys (a certificate's subject key)

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise TrustError(
                f"the signature threshold must be at least 1, got {self.threshold}",
                hint="set the threshold to the number of distinct keys that must sign (k of n)",
            )


@dataclass(frozen=True)
class AcceptedSignature:
    name: str
    fingerprint: str
    principals: tuple[str, ...]


@dataclass(frozen=True)
class TrustDecision:
    accepted: tuple[AcceptedSignature, ...]
    problems: tuple[str, ...]
    threshold: int


def _seconds(t: datetime) -> int:
    return int((t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp() // 1)


def _fmt(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(seconds: int) -> Optional[datetime]:
    return datetime.fromtimestamp(seconds, timezone.utc) if seconds else None


def _bytes(text: Text) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else text


def _shown(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def match_pattern_list(value: str, patterns: Sequence[str]) -> bool:
    """OpenSSH ``match_pattern_list``: ``*``/``?`` wildcards, ``!`` negates and wins."""
    joined = ",".join(patterns).encode("utf-8")
    return policyfile.match_pattern_list(value.encode("utf-8"), joined) == 1


def parse_time(text: str) -> datetime:
    """``YYYYMMDD[HHMM[SS]][Z]`` as ssh-keygen reads it; without ``Z`` it is the local time."""
    return datetime.fromtimestamp(policyfile.parse_absolute_time(text.encode()), timezone.utc)


def _signer(line: policyfile.SignerLine, source: str) -> AllowedSigner:
    key = line.key
    if key.certificate is None:
        canonical = Reader(key.public).string().decode("ascii")
        public_key = PublicKey(canonical, key.public)
    else:
        public_key = PublicKey(key.key_type, key.blob)
    return AllowedSigner(
        principals=tuple(_shown(p) for p in policyfile.identities(line.principals)),
        public_key=public_key,
        namespaces=line.namespaces,
        valid_after=_epoch(line.valid_after),
        valid_before=_epoch(line.valid_before),
        cert_authority=line.cert_authority,
        source=source,
    )


def parse_allowed_signers(
    text: Text, *, source: str = "allowed_signers"
) -> tuple[AllowedSigner, ...]:
    """Every signer line of an allowed_signers file; raises TrustError listing each bad line.

    OpenSSH skips a line it cannot parse; airlock refuses the whole file instead (a typo
    must not silently narrow or widen trust), naming each such line with OpenSSH's reason.
    """
    signers: List[AllowedSigner] = []
    problems: List[str] = []
    for number, line in policyfile.lines(_bytes(text)):
        where = f"{source}:{number}"
        try:
            parsed = policyfile.parse_signer_line(number, line)
        except LineError as e:
            problems.append(f"{where}: {e}")
            continue
        if parsed is not None:
            signers.append(_signer(parsed, where))
    if problems:
        raise TrustError(
            f"the trust policy {source} has {len(problems)} malformed line(s)",
            problems=problems,
            hint=_POLICY_HINT,
        )
    return tuple(signers)


def parse_revoked(text: Text, *, source: str = "revoked keys") -> frozenset[bytes]:
    """Revoked public keys from a list of keys or certificates, one per line (``#`` comments).

    As ``ssh-keygen -Y verify -r`` reads it: a certificate revokes its subject key, and an
    unreadable line makes the file unusable (OpenSSH then refuses every signature; airlock
    refuses the policy). Binary KRL files (``ssh-keygen -k``) are refused: airlock does not
    read KRLs, so it cannot tell what one revokes; list the revoked keys instead.
    """
    data = _bytes(text)
    if data.startswith(KRL_MAGIC):
        raise TrustError(
            f"{source} is a binary OpenSSH KRL; airlock reads a plain list of revoked keys",
            hint="put the revoked public keys in the file, one `ssh-ed25519 AAAA...` line each",
        )
    blobs = set()
    problems = []
    for number, line in policyfile.lines(data):
        try:
            key = policyfile.parse_revoked_line(line)
        except LineError as e:
            problems.append(f"{source}:{number}: {e}")
            continue
        if key is not None:
            blobs.add(key.public)
    if problems:
        raise TrustError(
            f"the revoked keys file {source} has {len(problems)} malformed line(s)",
            problems=problems,
            hint="each line must be one public key or certificate, as in a .pub file",
        )
    return frozenset(blobs)


def _read(path: Path, what: str) -> bytes:
    try:
        return read_small(path, MAX_POLICY_BYTES)
    except (OSError, ValueError) as e:
        raise TrustError(
            f"cannot read the {what} {path}: {getattr(e, 'strerror', None) or e}",
            hint=f"check the path; the {what} is part of the site's trust policy "
            f"(a regular file of at most {MAX_POLICY_BYTES >> 20} MiB)",
        ) from e


def countable(signer: AllowedSigner) -> bool:
    """Whether a line can ever make a signature count: a plain Ed25519 key, for someone."""
    return (
        not signer.cert_authority
        and signer.public_key.key_type == ED25519
        and bool(signer.principals)
    )


def load_policy(
    allowed_signers: Path, *, threshold: int = 1, revoked: Optional[Path] = None
) -> TrustPolicy:
    """Read the site's policy files; raises TrustError naming the file and line at fault.

    Also refuses a threshold that the listed keys could never meet.
    """
    signers = parse_allowed_signers(
        _read(allowed_signers, "allowed signers file"), source=str(allowed_signers)
    )
    blobs: frozenset[bytes] = frozenset()
    if revoked is not None:
        blobs = parse_revoked(_read(revoked, "revoked keys file"), source=str(revoked))
    policy = TrustPolicy(signers=signers, threshold=threshold, revoked=blobs)
    usable = {s.public_key.blob for s in signers if countable(s)} - blobs
    if len(usable) < threshold:
        raise TrustError(
            f"the threshold is {threshold} but {allowed_signers} lists only {len(usable)} "
            "usable key(s) (revoked, cert-authority, certificate and non-Ed25519 keys, and "
            "lines whose principals match no name, do not count)",
            hint="add trusted keys to the allowed signers file or lower the threshold",
        )
    return policy


def _check_one(
    policy: TrustPolicy,
    name: str,
    sig: SshSignature,
    digest: bytes,
    namespace: str,
    now: datetime,
) -> Tuple[Optional[tuple[str, ...]], List[str]]:
    """The principals this signature speaks for (None when it does not count) and why not."""
    key = sig.public_key
    who = f"{name}: key {key.fingerprint}"
    try:
        verify_digest(digest, sig, namespace=namespace)
    except SignatureError as e:
        return None, [f"{name}: {e.message}"]
    problems = []
    if key.blob in policy.revoked:
        problems.append(f"{who} is revoked")
    lines = [s for s in policy.signers if s.public_key.blob == key.blob]
    plain = [s for s in lines if not s.cert_authority]
    if not plain:
        if lines:
            problems.append(
                f"{who} is listed only as cert-authority ({lines[0].source}); airlock does not "
                "accept certificate signatures, list the key without cert-authority"
            )
        else:
            problems.append(f"{who} is not in the allowed signers (untrusted key)")
        return None, problems
    principals: List[str] = []
    for line in plain:
        if not line.principals:
            problems.append(
                f"{who}: the principals of {line.source} match no name (ssh-keygen -Y verify "
                "-I would accept none), so the line vouches for nobody"
            )
            continue
        if not line.allows_namespace(namespace):
            problems.append(
                f"{who} is not allowed to sign namespace {namespace!r} "
                f'({line.source}: namespaces="{_shown(line.namespaces or b"")}")'
            )
            continue
        why = line.why_not_valid_at(now)
        if why is not None:
            problems.append(f"{who}: {why} ({line.source})")
            continue
        principals.extend(p for p in line.principals if p not in principals)
    if key.blob in policy.revoked or not principals:
        return None, problems
    # Another line may allow the key where this one did not: only the rejections matter
    # when nothing allowed it, so drop them once one line did.
    return tuple(principals), []


def evaluate(
    policy: TrustPolicy,
    message: bytes,
    signatures: Sequence[Tuple[str, bytes]],
    *,
    namespace: str,
    now: datetime,
) -> TrustDecision:
    """Decide whether ``signatures`` over ``message`` meet ``policy`` at time ``now``.

    Every signature is checked (armor, namespace, cryptographic validity, revocation,
    allowed key, namespaces= option, valid-after/valid-before); distinct keys are counted,
    so one key signing twice counts once. Raises TrustError listing every problem when
    fewer than ``policy.threshold`` distinct trusted keys signed; otherwise returns the
    decision with any non-fatal problems. A naive ``now`` is taken as UTC.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    digests: Dict[str, bytes] = {}
    accepted: List[AcceptedSignature] = []
    seen: Dict[str, str] = {}
    problems: List[str] = []
    for name, armored in signatures:
        try:
            sig = parse(armored)
        except SignatureError as e:
            problems.append(f"{name}: {e.message}")
            continue
        if sig.hash_algorithm not in digests:
            try:
                digests[sig.hash_algorithm] = message_digest(message, sig.hash_algorithm)
            except SignatureError as e:
                problems.append(f"{name}: {e.message}")
                continue
        principals, found = _check_one(
            policy, name, sig, digests[sig.hash_algorithm], namespace, now
        )
        problems.extend(found)
        if principals is None:
            continue
        fingerprint = sig.public_key.fingerprint
        if fingerprint in seen:
            problems.append(
                f"{name}: key {fingerprint} already signed as {seen[fingerprint]}; "
                "a key counts once toward the threshold"
            )
            continue
        seen[fingerprint] = name
        accepted.append(AcceptedSignature(name, fingerprint, principals))
    if len(accepted) < policy.threshold:
        if not signatures:
            problems.append("no signatures were found")
        raise TrustError(
            f"trust policy not met: {len(accepted)} of the required {policy.threshold} "
            f"distinct trusted signature(s) for namespace {namespace!r}",
            problems=problems,
            hint="each line above names a signature and why it did not count: have trusted "
            "key holders sign (airlock sign), or fix the site's allowed signers and revoked "
            "keys files",
        )
    return TrustDecision(tuple(accepted), tuple(problems), policy.threshold)
