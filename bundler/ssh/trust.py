"""The site's trust policy: OpenSSH allowed_signers, revoked keys, the k-of-n decision (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from bundler.errors import KeyFileError, SignatureError, TrustError
from bundler.ssh.keys import PublicKey, is_key_type
from bundler.ssh.sig import SshSignature, message_digest, parse, verify_digest

KRL_MAGIC = b"SSHKRL\n\x00"
_TIME = re.compile(r"(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})(\d{2})?)?([Zz])?")
_POLICY_HINT = (
    "fix the line (format: `principals [options] ssh-ed25519 AAAA... [comment]`, "
    "see docs/FORMAT.md, Signatures and trust policy)"
)


@dataclass(frozen=True)
class AllowedSigner:
    """One allowed_signers line: who may sign, with which key, for what and when."""

    principals: tuple[str, ...]
    public_key: PublicKey
    namespaces: Optional[tuple[str, ...]]
    valid_after: Optional[datetime]
    valid_before: Optional[datetime]
    cert_authority: bool = False
    source: str = field(default="", compare=False)  # "file:line", for messages

    def allows_namespace(self, namespace: str) -> bool:
        return self.namespaces is None or match_pattern_list(namespace, self.namespaces)

    def why_not_valid_at(self, now: datetime) -> Optional[str]:
        """None when the line is in force at ``now``, else the reason (as ssh-keygen words it)."""
        if self.valid_after is not None and now < self.valid_after:
            return f"key is not yet valid: now {_fmt(now)} < valid-after {_fmt(self.valid_after)}"
        if self.valid_before is not None and now > self.valid_before:
            return f"key has expired: now {_fmt(now)} > valid-before {_fmt(self.valid_before)}"
        return None


@dataclass(frozen=True)
class TrustPolicy:
    """The allowed signers, how many distinct keys must sign, and the revoked key blobs."""

    signers: tuple[AllowedSigner, ...]
    threshold: int = 1
    revoked: frozenset[bytes] = frozenset()

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


def _fmt(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def match_pattern_list(value: str, patterns: Sequence[str]) -> bool:
    """OpenSSH ``match_pattern_list``: ``*``/``?`` wildcards, ``!`` negates and wins."""
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in body)
        if re.fullmatch(regex, value, flags=re.DOTALL):
            if negated:
                return False
            matched = True
    return matched


def parse_time(text: str) -> datetime:
    """``YYYYMMDD[HHMM[SS]][Z]`` as in ssh-keygen(1); without ``Z`` it is the local time."""
    m = _TIME.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS (+ optional Z)")
    year, month, day, hour, minute, second, zulu = m.groups()
    try:
        naive = datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)
        )
    except ValueError as e:
        raise ValueError(f"{text!r} is not a real date and time: {e}") from e
    return naive.replace(tzinfo=timezone.utc) if zulu else naive.astimezone()


def _take_field(text: str) -> Tuple[str, str]:
    """The first whitespace-delimited field (a ``"quoted"`` one may hold spaces), and the rest."""
    if text.startswith('"'):
        end = text.find('"', 1)
        if end < 0:
            raise ValueError("unterminated quote in the principals field")
        return text[1:end], text[end + 1 :].lstrip(" \t")
    parts = re.split(r"[ \t]+", text, maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def _dequote(opts: str, pos: int, name: str) -> Tuple[str, int]:
    if pos >= len(opts) or opts[pos] != '"':
        raise ValueError(f'the {name} value must be in double quotes: {name}="..."')
    out: List[str] = []
    pos += 1
    while pos < len(opts) and opts[pos] != '"':
        if opts[pos] == "\\" and pos + 1 < len(opts) and opts[pos + 1] == '"':
            pos += 1
        out.append(opts[pos])
        pos += 1
    if pos >= len(opts):
        raise ValueError(f"unterminated quote in the {name} option")
    return "".join(out), pos + 1


def _split_options(text: str) -> Tuple[str, str]:
    """Split ``opts rest`` at the first whitespace outside quotes."""
    quoted = False
    for i, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif c in " \t" and not quoted:
            return text[:i], text[i:].lstrip(" \t")
    if quoted:
        raise ValueError("unterminated quote in the options")
    return text, ""


def _parse_options(
    opts: str,
) -> Tuple[bool, Optional[tuple[str, ...]], Optional[datetime], Optional[datetime]]:
    ca = False
    namespaces: Optional[tuple[str, ...]] = None
    times: Dict[str, datetime] = {}
    pos = 0
    while pos < len(opts):
        lower = opts[pos:].lower()
        if lower.startswith("cert-authority") and lower[14:15] in ("", ","):
            ca = True
            pos += len("cert-authority")
        else:
            name = next(
                (
                    n
                    for n in ("namespaces", "valid-after", "valid-before")
                    if lower.startswith(n + "=")
                ),
                None,
            )
            if name is None:
                unknown = opts[pos:].split(",", 1)[0]
                raise ValueError(
                    f"unknown option {unknown!r} (supported: cert-authority, namespaces=, "
                    "valid-after=, valid-before=)"
                )
            value, pos = _dequote(opts, pos + len(name) + 1, name)
            if name == "namespaces":
                if namespaces is not None:
                    raise ValueError('multiple "namespaces" clauses')
                namespaces = tuple(value.split(","))
            else:
                if name in times:
                    raise ValueError(f'multiple "{name}" clauses')
                try:
                    times[name] = parse_time(value)
                except ValueError as e:
                    raise ValueError(f"invalid {name} time: {e}") from e
        if pos >= len(opts):
            break
        if opts[pos] != ",":
            raise ValueError(
                f"unexpected {opts[pos:]!r} after an option; separate options with ','"
            )
        pos += 1
        if pos >= len(opts):
            raise ValueError("unexpected end of options after ','")
    after, before = times.get("valid-after"), times.get("valid-before")
    if after is not None and before is not None and before <= after:
        raise ValueError('"valid-before" is not after "valid-after"')
    return ca, namespaces, after, before


def _parse_line(line: str, source: str) -> Optional[AllowedSigner]:
    text = line.strip(" \t\r\n")
    if not text or text.startswith("#"):
        return None
    principals_text, rest = _take_field(text)
    principals = tuple(principals_text.split(","))
    if not principals_text or any(not p for p in principals):
        raise ValueError("empty principal; list principals as a,b,c (quote them if needed)")
    if not rest:
        raise ValueError("missing key after the principals")
    options = ""
    if not is_key_type(re.split(r"[ \t]+", rest, maxsplit=1)[0]):
        options, rest = _split_options(rest)
        if not rest:
            raise ValueError("missing key after the options")
    try:
        key = PublicKey.parse(rest)
    except KeyFileError as e:
        raise ValueError(e.message) from e
    ca, namespaces, after, before = _parse_options(options)
    return AllowedSigner(
        principals=principals,
        public_key=key,
        namespaces=namespaces,
        valid_after=after,
        valid_before=before,
        cert_authority=ca,
        source=source,
    )


def parse_allowed_signers(
    text: str, *, source: str = "allowed_signers"
) -> tuple[AllowedSigner, ...]:
    """Every signer line of an allowed_signers file; raises TrustError listing each bad line."""
    signers: List[AllowedSigner] = []
    problems: List[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        try:
            signer = _parse_line(line, where)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        if signer is not None:
            signers.append(signer)
    if problems:
        raise TrustError(
            f"the trust policy {source} has {len(problems)} malformed line(s)",
            problems=problems,
            hint=_POLICY_HINT,
        )
    return tuple(signers)


def parse_revoked(text: str, *, source: str = "revoked keys") -> frozenset[bytes]:
    """Revoked key blobs from a plain list of public keys, one per line (``#`` comments).

    Binary KRL files (``ssh-keygen -k``) are refused: list the revoked public keys instead.
    """
    if text.startswith(KRL_MAGIC.decode("latin-1")):
        raise TrustError(
            f"{source} is a binary OpenSSH KRL; airlock reads a plain list of revoked keys",
            hint="put the revoked public keys in the file, one `ssh-ed25519 AAAA...` line each",
        )
    blobs = set()
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            blobs.add(PublicKey.parse(stripped).blob)
        except KeyFileError as e:
            problems.append(f"{source}:{number}: {e.message}")
    if problems:
        raise TrustError(
            f"the revoked keys file {source} has {len(problems)} malformed line(s)",
            problems=problems,
            hint="each line must be one public key, as in a .pub file",
        )
    return frozenset(blobs)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TrustError(
            f"cannot read the {what} {path}: {e.strerror or e}",
            hint=f"check the path; the {what} is part of the site's trust policy",
        ) from e


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TrustError(f"{path} is not UTF-8 text: {e}", hint=_POLICY_HINT) from e


def load_policy(
    allowed_signers: Path, *, threshold: int = 1, revoked: Optional[Path] = None
) -> TrustPolicy:
    """Read the site's policy files; raises TrustError naming the file and line at fault.

    Also refuses a threshold that the listed keys could never meet.
    """
    signers = parse_allowed_signers(
        _decode(_read(allowed_signers, "allowed signers file"), allowed_signers),
        source=str(allowed_signers),
    )
    blobs: frozenset[bytes] = frozenset()
    if revoked is not None:
        data = _read(revoked, "revoked keys file")
        if data.startswith(KRL_MAGIC):
            parse_revoked(KRL_MAGIC.decode("latin-1"), source=str(revoked))
        blobs = parse_revoked(_decode(data, revoked), source=str(revoked))
    policy = TrustPolicy(signers=signers, threshold=threshold, revoked=blobs)
    usable = {s.public_key.blob for s in signers if not s.cert_authority} - blobs
    if len(usable) < threshold:
        raise TrustError(
            f"the threshold is {threshold} but {allowed_signers} lists only {len(usable)} "
            "usable key(s) (revoked and cert-authority keys do not count)",
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
        if not line.allows_namespace(namespace):
            problems.append(
                f"{who} is not allowed to sign namespace {namespace!r} "
                f'({line.source}: namespaces="{",".join(line.namespaces or ())}")'
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
