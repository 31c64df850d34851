"""A seeded corpus of trust-policy files and signatures for the airlock / ssh-keygen differential.

Every case is a set of files a site or an attacker could write (allowed_signers, revoked
keys, SSHSIG files) plus the names a transfer station could pass to ``ssh-keygen -I``. The
same seed gives the same cases; the only randomness from outside is in the few keys and
certificates that stock ssh-keygen makes (``Materials``), which no decision depends on.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler.ssh.keys import Ed25519Signer
from bundler.ssh.sig import ARCHIVE_NAMESPACE, MANIFEST_NAMESPACE, sign
from tests.unit.ssh import sshcerts

SEED = 20260615
MESSAGE = b'{"format":"airlock-bundle","name":"demo","sequence":7}'
VERIFY_TIME = "20260615120000Z"  # ssh-keygen -O verify-time=, and airlock's now
# Characters that some line splitter might take for a line break; getline() takes only \n.
NOT_LINE_BREAKS = ["\u2028", "\u2029", "\x85", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]
HOSTILE = [
    b"\0", b"\r", b"\n", b"\x0b", b"\x0c", b"\x1c", b"\x85", "\u2028".encode(), "\u2029".encode(),
    b'"', b",", b"!", b"*", b"?", b"=", b" ", b"\t", b"#", b"\\", b"\xff", b"\xc2\xa0",
]  # fmt: skip
NAMES = [b"alice", b"bob", b"carol", b"mallory"]


@dataclass
class Case:
    """One differential case: the files, who signed, and what the answer must agree on."""

    name: str
    allowed: bytes
    signers: list[int]  # indexes into Materials.keys; each signs MESSAGE
    revoked: Optional[bytes] = None
    threshold: int = 1
    namespace: str = MANIFEST_NAMESPACE
    names: tuple[bytes, ...] = tuple(NAMES)  # identities to try with ssh-keygen -I
    armor: Optional[bytes] = None  # a hand-made signature file replacing signers[0]'s
    stricter: str = ""  # why airlock may refuse what ssh-keygen accepts (docs/SECURITY.md)
    signatures: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass
class Materials:
    """Keys for the corpus; the extras come from stock ssh-keygen (real certificates etc.)."""

    keys: list[Ed25519Signer]
    rsa_line: bytes  # a 2048-bit RSA public key line
    ecdsa_line: bytes
    dsa_line: bytes  # ssh-keygen -t dsa: airlock refuses DSA lines (stricter)
    stock_cert_line: bytes  # ssh-keygen -s CA -I id -n alice alice.pub
    ca_line: bytes  # that CA's public key
    krl: bytes  # ssh-keygen -k listing keys[3]
    rsa_ca_cert_line: bytes  # a certificate of alice's key by an RSA CA (rsa-sha2-512)
    ecdsa_ca_cert_line: bytes  # ... by an ECDSA (nistp384) CA
    cert_signature: bytes  # ssh-keygen -Y sign with alice's certificate: airlock refuses

    def line(self, i: int) -> bytes:
        return self.keys[i].public_key.openssh().encode()


def corpus_private_key(i: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"%d/%d" % (SEED, i)).digest())


def corpus_keys() -> list[Ed25519Signer]:
    """Four Ed25519 keys derived from the seed: alice, bob, carol, mallory."""
    return [Ed25519Signer(corpus_private_key(i), comment=NAMES[i].decode()) for i in range(4)]


def _entry(m: Materials, i: int, options: bytes = b"", principals: bytes = b"") -> bytes:
    principals = principals or NAMES[i]
    return principals + b" " + (options + b" " if options else b"") + m.line(i) + b"\n"


def _key_b64(m: Materials, i: int) -> bytes:
    return m.line(i).split(b" ")[1]


def _cert_line(m: Materials, i: int, ca_seed: int, **kw: object) -> bytes:
    ca = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"ca/%d" % ca_seed).digest())
    blob = sshcerts.certificate(m.keys[i].public_key.ed25519_bytes, ca, **kw)  # type: ignore[arg-type]
    return sshcerts.line(blob).encode()


def hidden_keys(m: Materials) -> Iterator[Case]:
    """The reported attack: a key inside another entry's comment must not count."""
    for sep in [*NOT_LINE_BREAKS, "\n"]:
        text = _entry(m, 0).rstrip(b"\n") + b" release key" + sep.encode() + _entry(m, 3)
        tag = repr(sep)
        yield Case(f"hidden key after {tag}, 2-of-n", text, [0, 3], threshold=2)
        yield Case(f"hidden key after {tag}, its own signature", text, [3])
        yield Case(f"hidden key after {tag} in a revoked file", _entry(m, 3), [3],
                   revoked=m.line(0) + sep.encode() + m.line(3) + b"\n")  # fmt: skip


def line_shapes(m: Materials) -> Iterator[Case]:
    """Whitespace, NUL, quotes and line ends around one entry of alice's."""
    k, e = m.line(0), _entry(m, 0)
    shapes = {
        "plain": e,
        "no final newline": e.rstrip(b"\n"),
        "crlf": e.replace(b"\n", b"\r\n"),
        "leading space": b"  " + e,
        "leading tab": b"\t" + e,
        "leading cr": b"\r" + e,
        "leading vt": b"\x0b" + e,
        "blank lines around": b"\n\n \t\n" + e + b"\n\r\n",
        "comment line": b"# alice " + k + b"\n",
        "indented comment": b"   # alice " + k + b"\n",
        "nul at start": b"\0" + e,
        "nul in principals": b"ali\0ce " + k + b"\n",
        "nul after key": e.rstrip(b"\n") + b"\0 trailing\n",
        "nul inside base64": e.replace(_key_b64(m, 0)[:20], _key_b64(m, 0)[:20] + b"\0"),
        "cr between fields": b"alice\r" + k + b"\n",
        "tab between fields": b"alice\t" + k.replace(b" ", b"\t", 1) + b"\n",
        "double space in key": b"alice " + k.replace(b" ", b"  ", 1) + b"\n",
        "vt inside base64": e.replace(_key_b64(m, 0)[:20], _key_b64(m, 0)[:20] + b"\x0b"),
        "cr inside base64": e.replace(_key_b64(m, 0)[:20], _key_b64(m, 0)[:20] + b"\r"),
        "quoted principals": b'"alice,ops team" ' + k + b"\n",
        "quote inside principals": b'ali"ce x" ' + k + b"\n",
        "quote closing mid field": b'"alice"x ' + k + b"\n",
        "unterminated quote": b'"alice ' + k + b"\n",
        "empty quoted principals": b'"" ' + k + b"\n",
        "principals only": b"alice\n",
        "type only": b"alice ssh-ed25519\n",
        "comment with key of bob": e.rstrip(b"\n") + b" " + m.line(1) + b"\n",
        "bob on the same line after tab": e.rstrip(b"\n") + b"\t" + _entry(m, 1),
        "utf8 principals": "älice,δ ".encode() + k + b"\n",
        "latin1 principals": b"\xe4lice " + k + b"\n",
        "overlong comment": e.rstrip(b"\n") + b" " + b"c" * 200_000 + b"\n",
        "overlong principal list": b"alice," + b"p" * 5000 + b" " + k + b"\n",
        "overlong principal first": b"p" * 1023 + b",alice " + k + b"\n",
        "principal just under the limit": b"alice," + b"p" * 1022 + b" " + k + b"\n",
    }
    for name, text in shapes.items():
        yield Case(f"line: {name}", text, [0], names=(*NAMES, "älice".encode(), b"\xe4lice", b""))


def options(m: Materials) -> Iterator[Case]:
    """The option grammar of sshsigopt_parse, one option string at a time."""
    ns = MANIFEST_NAMESPACE.encode()
    opts = [
        b'namespaces="' + ns + b'"', b'NAMESPACES="' + ns + b'"', b'namespaces="git,airlock-*"',
        b'namespaces="airlock-archive-v1"', b'namespaces="airlock-*,!airlock-manifest-*"',
        b'namespaces="!git,*"', b'namespaces="airlock-manifest-v?"', b'namespaces="*"',
        b'namespaces=""', b'namespaces="' + ns + b'",namespaces="x"', b"namespaces=" + ns,
        b'namespaces="' + ns + b",x" * 600 + b'"', b'namespaces="' + ns + b"," + b"x" * 1100 + b'"',
        b'namespaces="a\\"b,' + ns + b'"', b'namespaces="' + ns + b' x"',
        b"cert-authority", b"Cert-Authority", b"cert-authorityx", b"cert-authority=1",
        b',namespaces="' + ns + b'"', b',,namespaces="' + ns + b'"', b'namespaces="' + ns + b'",',
        b'namespaces="' + ns + b'",,cert-authority', b'namespaces="' + ns + b'";x', b"foo",
        b'valid-after="20260101Z"', b'valid-after="20260615120001Z"',
        b'valid-after="20260615120000Z"', b'valid-before="20260615120000Z"',
        b'valid-before="202606151159Z"', b'valid-before="20270101"',
        b'valid-after="20260101",valid-before="20270101"', b'valid-after="20260101UTC"',
        b'valid-after="20260101utc"', b'valid-after="20260101z"', b'valid-after="2026 101Z"',
        b'valid-after="20260231Z"', b'valid-after="20260615115960Z"', b'valid-after="20261301Z"',
        b'valid-after="19700101Z"', b'valid-after="19700101000001Z"', b'valid-after="19691231Z"',
        b'valid-after="2026-01-01"', b'valid-after="20260101T1200"', b'valid-after="202601011"',
        b'valid-after="20270101Z",valid-before="20260101Z"',
        b'valid-after="20260101Z",valid-after="20260102Z"',
        b'valid-before="99991231Z"', b'valid-after="2026\\"0101Z"', b'valid-after=20260101Z',
        b'valid-after=" 20260101Z"', b'valid-before="20260615 120000Z"',
        b'valid-before="\t0260615Z"', b'cert-authority,namespaces="' + ns + b'"',
        b'namespaces="' + ns + b'",valid-before="20300101Z"',
    ]  # fmt: skip
    for opt in opts:
        yield Case(f"option {opt[:60]!r}", _entry(m, 0, opt), [0])
        yield Case(f"option {opt[:60]!r}, archive namespace", _entry(m, 0, opt), [0],
                   namespace=ARCHIVE_NAMESPACE)  # fmt: skip


def principals(m: Materials) -> Iterator[Case]:
    """Principal fields are match_pattern_list patterns matched against -I."""
    fields = [
        b"*", b"?lice", b"al*", b"*@example.org", b"!alice,*", b"!*", b"alice,!alice",
        b"!bob,alice", b"alice,,bob", b",", b"!", b"!!alice", b"a*b*c*d*e*f*g*h*i*j*k*", b"*,!*",
    ]  # fmt: skip
    for f in fields:
        names = (*NAMES, f, f.lstrip(b"!"), b"", b"x@example.org", b"abcdefghijk")
        yield Case(f"principals {f!r}", _entry(m, 0, principals=f), [0], names=names)


def key_forms(m: Materials) -> Iterator[Case]:
    """Key text and blob variants: what sshkey_read accepts must be the same key, or refused."""
    raw = m.keys[0].public_key.ed25519_bytes
    b64 = _key_b64(m, 0)
    slop = b64[:-2] + bytes([b64[-2] + 1]) + b64[-1:]  # unused bits set in the last character
    short_type = base64.b64encode(sshcerts.ed25519_blob(raw, b"ED25519"))
    lines = {
        "shortname type in blob": b"alice ssh-ed25519 " + short_type + b"\n",
        "non-canonical base64": b"alice ssh-ed25519 " + slop + b"\n",
        "missing padding": b"alice ssh-ed25519 " + b64.rstrip(b"=") + b"\n",
        "type mismatch": b"alice ssh-rsa " + b64 + b"\n",
        "unknown type": b"alice ssh-ed448 " + b64 + b"\n",
        "truncated key": b"alice ssh-ed25519 " + b64[:40] + b"\n",
        "options then key mismatch": b'alice namespaces="x" ssh-rsa ' + b64 + b"\n",
        "certificate of alice as a plain entry": b"alice " + _cert_line(m, 0, 1) + b"\n",
        "stock certificate as a plain entry": b"alice " + m.stock_cert_line + b"\n",
        "forged certificate": b"alice " + _cert_line(m, 0, 1, bad_signature=True) + b"\n",
        "alice as cert-authority": b"alice cert-authority " + m.line(0) + b"\n",
        "stock CA as cert-authority": b"alice cert-authority " + m.ca_line + b"\n",
        "rsa entry then alice": b"carol " + m.rsa_line + b"\n" + _entry(m, 0),
        "ecdsa entry then alice": b"carol " + m.ecdsa_line + b"\n" + _entry(m, 0),
        "rsa-sha2-512 alias then alice": b"carol rsa-sha2-512 " + m.rsa_line.split(b" ")[1]
        + b"\n" + _entry(m, 0),
        "RSA-CA certificate as a plain entry": b"alice " + m.rsa_ca_cert_line + b"\n",
        "ECDSA-CA certificate then alice": b"bob " + m.ecdsa_ca_cert_line + b"\n" + _entry(m, 0),
        "forged RSA-CA certificate then alice": b"bob " + _flip(m.rsa_ca_cert_line) + b"\n"
        + _entry(m, 0),
    }  # fmt: skip
    for name, text in lines.items():
        yield Case(f"key: {name}", text, [0])
    yield Case("key: dsa entry then alice", b"carol " + m.dsa_line + b"\n" + _entry(m, 0), [0],
               stricter="dsa")  # fmt: skip


def duplicates(m: Materials) -> Iterator[Case]:
    """One key on several lines, one signature under several names: distinct keys count."""
    wrong_ns = _entry(m, 0, b'namespaces="git"')
    expired = _entry(m, 0, b'valid-before="20200101Z"')
    both = _entry(m, 0) + _entry(m, 1)
    yield Case("dup: first line refuses, second allows", wrong_ns + _entry(m, 0), [0])
    yield Case("dup: first line allows, second refuses", _entry(m, 0) + expired, [0])
    yield Case("dup: every line refuses", wrong_ns + expired, [0])
    yield Case("dup: one key twice pads nothing", _entry(m, 0) * 2, [0, 0], threshold=2)
    yield Case("dup: alice under two names", _entry(m, 0) + _entry(m, 0, principals=b"bob"),
               [0, 0], threshold=2)  # fmt: skip
    yield Case("dup: two keys meet 2-of-n", both, [0, 1], threshold=2)
    yield Case("dup: two keys, one revoked", both, [0, 1], threshold=2, revoked=m.line(1) + b"\n")
    yield Case("dup: three keys, 3-of-n with a stranger", both, [0, 1, 2], threshold=3)


def revoked_files(m: Materials) -> Iterator[Case]:
    """What ssh-keygen -Y verify -r reads as revoking, and files it cannot read."""
    cert = _cert_line(m, 0, 2)
    rsa_short = base64.b64encode(
        b"\0\0\0\x07ssh-rsa\0\0\0\x03\x01\0\x01\0\0\0\x61\0" + b"\x80" + b"\x01" * 95
    )
    files = {
        "plain key": m.line(0) + b"\n",
        "certificate of the key": cert + b" lost laptop\n",
        "stock certificate of the key": m.stock_cert_line + b"\n",
        "forged certificate": _cert_line(m, 0, 2, bad_signature=True) + b"\n",
        "certificate of another key": _cert_line(m, 1, 2) + b"\n",
        "shortname blob": b"ssh-ed25519 "
        + base64.b64encode(sshcerts.ed25519_blob(m.keys[0].public_key.ed25519_bytes, b"ed25519"))
        + b"\n",
        "indented key": b" \t " + m.line(0) + b"\n",
        "crlf": m.line(0) + b"\r\n",
        "cr-only line first": b"\r\n" + m.line(1) + b"\n",
        "comment and blank": b"# nothing\n\n   \n\t#x\n",
        "nul-started junk": b"\0junk\n" + m.line(1) + b"\n",
        "junk after the key": m.line(0) + b"\nnot a key\n",
        "junk before the key": b"not a key\n" + m.line(0) + b"\n",
        "other key then junk": m.line(1) + b"\nnot a key\n",
        "short rsa key skipped": b"ssh-rsa " + rsa_short + b"\n" + m.line(1) + b"\n",
        "rsa and ecdsa keys": m.rsa_line + b"\n" + m.ecdsa_line + b"\n",
        "certificate by an RSA CA": m.rsa_ca_cert_line + b"\n",
        "certificate by an ECDSA CA": m.ecdsa_ca_cert_line + b"\n",
        "certificate by an RSA CA, one byte off": _flip(m.rsa_ca_cert_line) + b"\n",
        "ca key only": m.ca_line + b"\n",
        "empty": b"",
        "key in a comment": b"# " + m.line(0) + b"\n",
        "key after u2028": m.line(1) + "\u2028".encode() + m.line(0) + b"\n",
    }
    for name, text in files.items():
        yield Case(f"revoked: {name}", _entry(m, 0) + _entry(m, 1), [0], revoked=text)
    yield Case("revoked: dsa key", _entry(m, 0), [0], revoked=m.dsa_line + b"\n", stricter="dsa")
    yield Case("revoked: binary KRL not listing the key", _entry(m, 0), [0], revoked=m.krl,
               stricter="krl")  # fmt: skip
    yield Case("revoked: binary KRL listing the key", _entry(m, 3), [3], revoked=m.krl,
               stricter="krl")  # fmt: skip
    yield Case("revoked: damaged KRL", _entry(m, 0), [0], revoked=m.krl[:20])


def _flip(line: bytes) -> bytes:
    """The line with one base64 character of its CA signature changed (a forged certificate)."""
    kind, b64 = line.split(b" ")[:2]
    at = len(b64) - 10
    return kind + b" " + b64[:at] + (b"A" if b64[at : at + 1] != b"A" else b"B") + b64[at + 1 :]


def armors(m: Materials) -> Iterator[Case]:
    """Signature files as an attacker could shape them; the key and message stay the same."""
    good = sign(MESSAGE, m.keys[0], namespace=MANIFEST_NAMESPACE)
    lines = good.split(b"\n")
    mid = lines[1][:30]
    shaped = {
        "as signed": good,
        "trailing junk": good + b"junk\xff\n",
        "no final newline": good.rstrip(b"\n"),
        "leading space": b" " + good,
        "leading newline": b"\n" + good,
        "crlf": good.replace(b"\n", b"\r\n"),
        "cr before END": good.replace(b"\n-----END", b"\r\n-----END"),
        "vt in base64": good.replace(mid, mid + b"\x0b"),
        "fs in base64": good.replace(mid, mid + b"\x1c"),
        "space in base64": good.replace(mid, mid + b" "),
        "nul in base64": good.replace(mid, mid + b"\0"),
        "one line base64": b"\n".join([lines[0], b"".join(lines[1:-2]), *lines[-2:]]),
        "two END lines": good + good,
        "END without newline before": good.replace(b"\n-----END", b"-----END"),
        "lowercase BEGIN": good.replace(b"BEGIN", b"begin"),
        "bob's signature": sign(MESSAGE, m.keys[1], namespace=MANIFEST_NAMESPACE),
        "archive namespace": sign(MESSAGE, m.keys[0], namespace=ARCHIVE_NAMESPACE),
        "other message": sign(MESSAGE + b" ", m.keys[0], namespace=MANIFEST_NAMESPACE),
    }
    for name, armor in shaped.items():
        yield Case(f"armor: {name}", _entry(m, 0), [0], armor=armor)
    cert_authority = b"alice cert-authority " + m.ca_line + b"\n"
    yield Case("armor: signed with alice's certificate, its CA trusted", cert_authority, [0],
               armor=m.cert_signature, stricter="certificate")  # fmt: skip
    yield Case("armor: signed with alice's certificate, alice trusted", _entry(m, 0), [0],
               armor=m.cert_signature)  # fmt: skip


def mutations(m: Materials, count: int = 220) -> Iterator[Case]:
    """Seeded random edits of valid policies: hostile bytes inserted, bytes dropped, lines moved."""
    rng = random.Random(SEED)
    pool = [b"", b'namespaces="airlock-*"', b'valid-after="20260101Z"', b"cert-authority",
            b'valid-before="20261231Z",namespaces="airlock-manifest-v1,git"']  # fmt: skip
    for n in range(count):
        keys = rng.sample(range(4), rng.choice((1, 2, 3)))
        text = b"".join(_entry(m, i, rng.choice(pool)) for i in keys)
        if rng.random() < 0.3:
            text = b"# site policy\n" + text
        for _ in range(rng.choice((1, 1, 2, 3))):
            at = rng.randrange(len(text) + 1)
            action = rng.random()
            if action < 0.7:
                text = text[:at] + rng.choice(HOSTILE) + text[at:]
            elif action < 0.85:
                text = text[:at] + text[at + 1 :]
            else:
                parts = text.split(b"\n")
                rng.shuffle(parts)
                text = b"\n".join(parts)
        signers = rng.sample(keys, rng.choice((1, len(keys))))
        revoked = m.line(rng.choice(keys)) + b"\n" if rng.random() < 0.15 else None
        yield Case(f"mutation {n}", text, signers, threshold=rng.choice((1, 1, 2)),
                   revoked=revoked)  # fmt: skip


def corpus(m: Materials) -> list[Case]:
    """Every case, in a fixed order; signatures made here (Ed25519 is deterministic)."""
    cases = [
        *hidden_keys(m), *line_shapes(m), *options(m), *principals(m), *key_forms(m),
        *duplicates(m), *revoked_files(m), *armors(m), *mutations(m),
    ]  # fmt: skip
    for case in cases:
        case.signatures = [
            (i, sign(MESSAGE, m.keys[i], namespace=case.namespace)) for i in case.signers
        ]
        if case.armor is not None:
            case.signatures[0] = (case.signers[0], case.armor)
    return cases
