"""Structure-aware fuzzing of the bundle readers: mutations of real bundles, and the invariants.

Shared by the bounded run in the test suite (tests/integration/test_fuzz_bundle.py) and the
long run (bench/fuzz_bundle.py). A case is a real signed bundle mutated by hypothesis
draws: tar header fields, PAX records, member order, the manifest JSON (re-signed by the
trusted key, so the mutation reaches the parser), signature members, the end of the
archive, split parts. :func:`check` runs it through verify, unpack (policy-checked and
host-side), inspect and, for split bundles, join, and asserts the invariants: a refusal is
an AirlockError subclass with its own exit code; an acceptance means the payload bytes are
exactly what the signed manifest lists and GNU tar and Python's tarfile list exactly the
members airlock read; never another exception; nothing left outside a fresh destination.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import struct
import subprocess
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from hypothesis import strategies as st

from bundler.bundle.split import join, write_parts
from bundler.bundle.summary import inspect_bundle
from bundler.bundle.verify import unpack_bundle, verify_bundle
from bundler.errors import AirlockError
from runtime.bundle import BLOCK, PAX_NAME, Header, read_metadata, walk_headers
from runtime.tarformat import FIELDS, pad, padded, pax_record, ustar_block
from runtime.unpack import unpack
from tests.bundlekit import (
    DURING,
    EPOCH,
    Key,
    canonical,
    make_bundle,
    make_key,
    make_stage,
    policy_for,
    region_for,
    signatures_by,
)

Draw = Callable[[Any], Any]
STAGE_EXTRA = {
    "models/tiny/tiny.gguf": b"GGUF" + bytes(range(256)) * 3,
    "models/tiny/\u00e9t\u00e9-\u6a21\u578b.txt": b"non-ASCII name: a PAX path\n",
    "models/" + "n" * 93: b"a name of exactly 100 bytes: no PAX\n",
}


@dataclass(repr=False)
class Base:
    """The bundle every case starts from, its keys and the site's policy."""

    root: Path
    tar: bytes
    manifest: bytes
    alice: Key
    bob: Key
    mallory: Key
    stats: Counter[str] = field(default_factory=Counter)

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing case
        return f"Base({self.root})"

    @classmethod
    def make(cls, root: Path) -> Base:
        keys = root / "keys"
        alice, bob, mallory = (make_key(keys, n) for n in ("alice", "bob", "mallory"))
        stage = make_stage(root, STAGE_EXTRA)
        result = make_bundle(root, [alice, bob], stage=stage, out=root / "base")
        tar = result.path.read_bytes()
        return cls(root, tar, read_metadata(result.path).manifest_bytes, alice, bob, mallory)


# --------------------------------------------------------------------------- mutations


def members_of(tar: bytes) -> list[Header]:
    """Every member header of a (still walkable) archive, metadata region included."""
    return list(walk_headers(io.BytesIO(tar), offset=0, mtime=EPOCH))


def _end(h: Header) -> int:
    return h.offset + padded(h.size)


_VALUES = st.sampled_from(
    [
        b"",
        b"ustar ",
        b"ustar\0",
        b"00",
        b" \0",
        b"0000000\0",
        b"0001750\0",
        b"0000644 ",
        b"644",
        b"0004755\0",
        b"root",
        b"evil",
        b"../../etc/passwd",
        b"\x80\0\0\0\0\0\0\0\0\0\0\x10",
        b"77777777777\0",
        b"\xff" * 12,
        b"%011o\0" % (EPOCH + 1),
    ]
)


def mutate_header(draw: Draw, tar: bytes) -> bytes:
    """One field of one header block set to a drawn value; the checksum usually fixed up."""
    h = draw(st.sampled_from(members_of(tar)))
    blocks = list(range(h.start, h.offset, BLOCK))
    at = draw(st.sampled_from(blocks))
    name, lo, hi = draw(st.sampled_from(FIELDS))
    value = draw(st.one_of(_VALUES, st.binary(min_size=0, max_size=hi - lo)))
    block = bytearray(tar[at : at + BLOCK])
    block[lo:hi] = value.ljust(hi - lo, b"\0")[: hi - lo]
    if name != "chksum" and draw(st.booleans() | st.just(True)):
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block)
    return tar[:at] + bytes(block) + tar[at + BLOCK :]


_PAX_KEYS = st.sampled_from(
    ["path", "size", "mtime", "uid", "gid", "uname", "linkpath", "hdrcharset", "comment"]
)


def insert_pax(draw: Draw, tar: bytes) -> bytes:
    """A PAX header (records drawn from real and foreign keys) in front of one member."""
    h = draw(st.sampled_from(members_of(tar)))
    path, start, offset = h.path, h.start, h.offset
    records = b""
    for key in draw(st.lists(_PAX_KEYS, min_size=1, max_size=3)):
        value = draw(
            st.one_of(
                st.just(path),
                st.just(str(offset)),
                st.text(min_size=0, max_size=40),
                st.sampled_from(["0", "99999999999999", "README.md", "../x", "a" * 150]),
            )
        )
        records += pax_record(key, value)
    if draw(st.booleans()):
        records = bytearray(records)
        records[draw(st.integers(0, len(records) - 1))] ^= draw(st.integers(1, 255))
        records = bytes(records)
    typeflag = draw(st.sampled_from([b"x", b"x", b"g"]))
    pax = ustar_block(PAX_NAME.encode(), len(records), 0o644, EPOCH, typeflag) + pad(records)
    keep_own = draw(st.booleans())  # replace the member's own PAX header, or add one
    cut = start if keep_own else offset - BLOCK
    return tar[:start] + pax + tar[cut:]


def reorder(draw: Draw, tar: bytes) -> bytes:
    """Two payload members swapped, one duplicated or one dropped."""
    payload = [h for h in members_of(tar) if not h.path.startswith("airlock/")]
    start, end = payload[0].start, _end(payload[-1])
    members = [tar[h.start : _end(h)] for h in payload]
    how = draw(st.sampled_from(["swap", "duplicate", "drop"]))
    i = draw(st.integers(0, len(members) - 1))
    j = draw(st.integers(0, len(members) - 1))
    if how == "swap":
        members[i], members[j] = members[j], members[i]
    elif how == "duplicate":
        members.insert(j, members[i])
    else:
        del members[i]
    return tar[:start] + b"".join(members) + tar[end:]


def payload_offset(tar: bytes) -> int:
    return next(h.start for h in members_of(tar) if not h.path.startswith("airlock/"))


# JSON values a trusted but careless signer might be made to sign.
_JSON_VALUES = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "\x1b[2J",
            "\u009b31m",
            "a\nb",
            "\u202eevil",
            "2026-02-30T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "../evil",
            "a/" * 200 + "b",
            "x" * 256,
            "/abs",
            "airlock/manifest.json",
            "0755",
            "e\u0301",
        ]
    ),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.booleans(),
    st.none(),
    st.just([]),
    st.just({}),
)


def _json_paths(obj: Any, where: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [where]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _json_paths(v, (*where, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _json_paths(v, (*where, i))
    return out


def mutate_manifest(draw: Draw, base: Base, tar: bytes) -> bytes:
    """One value (or key) of the manifest replaced, the result re-signed by alice."""
    obj = json.loads(base.manifest)
    where = draw(st.sampled_from(_json_paths(obj)[1:]))
    parent = obj
    for part in where[:-1]:
        parent = parent[part]
    if draw(st.integers(0, 4)) == 0 and isinstance(parent, dict):
        parent[draw(_JSON_VALUES.filter(lambda v: isinstance(v, str)))] = parent.pop(where[-1])
    else:
        parent[where[-1]] = draw(_JSON_VALUES)
    raw = canonical(obj)
    if draw(st.integers(0, 5)) == 0:  # not canonical: spaces, escapes
        raw = json.dumps(obj, sort_keys=True, ensure_ascii=True).encode()
    payload = tar[payload_offset(tar) :]
    return region_for(raw, signatures_by(raw, [base.alice])) + payload


def mutate_signatures(draw: Draw, base: Base, tar: bytes) -> bytes:
    """The signature members replaced: damaged, renamed, by an unknown key, or dropped."""
    meta = payload_offset(tar)
    sigs = signatures_by(base.manifest, [base.alice, base.bob])
    how = draw(st.sampled_from(["damage", "rename", "mallory", "drop", "reserved", "junk"]))
    i = draw(st.integers(0, len(sigs) - 1))
    name, data = sigs[i]
    if how == "damage":
        pos = draw(st.integers(0, len(data) - 1))
        data = data[:pos] + bytes([data[pos] ^ draw(st.integers(1, 255))]) + data[pos + 1 :]
        sigs[i] = (name, data)
    elif how == "rename":
        sigs[i] = (
            "airlock/signatures/" + draw(st.sampled_from(["A", "z", "-"])) * 43 + ".sig",
            data,
        )
    elif how == "mallory":
        sigs += signatures_by(base.manifest, [base.mallory])
    elif how == "drop":
        del sigs[i]
    elif how == "reserved":
        sigs[i] = (name, _with_reserved(data, draw(st.binary(min_size=1, max_size=64))))
    else:
        sigs[i] = (name, draw(st.binary(max_size=400)))
    sigs.sort(key=lambda s: s[0].encode())
    if len({n for n, _ in sigs}) != len(sigs):
        sigs = sigs[:1]
    return region_for(base.manifest, sigs, meta) + tar[meta:]


def _with_reserved(armored: bytes, reserved: bytes) -> bytes:
    """The same SSHSIG with bytes in its (unsigned) reserved field: ssh-keygen accepts it."""
    lines = armored.decode().strip().split("\n")
    blob = base64.b64decode("".join(lines[1:-1]))
    pos = 10
    for _ in range(2):  # public key, namespace
        (n,) = struct.unpack(">I", blob[pos : pos + 4])
        pos += 4 + n
    (n,) = struct.unpack(">I", blob[pos : pos + 4])
    blob = blob[:pos] + struct.pack(">I", len(reserved)) + reserved + blob[pos + 4 + n :]
    b64 = base64.b64encode(blob).decode()
    body = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    return "\n".join([lines[0], *body, lines[-1], ""]).encode()


def mutate_end(draw: Draw, tar: bytes) -> bytes:
    """Bytes appended (zeros or not), or the archive cut short, or a byte flipped anywhere."""
    how = draw(st.sampled_from(["append", "truncate", "flip"]))
    if how == "append" or not tar:
        return tar + draw(st.sampled_from([bytes(512), bytes(10240), b"smuggled", b"\1"]))
    if how == "truncate":
        return tar[: draw(st.integers(0, len(tar) - 1))]
    pos = draw(st.integers(0, len(tar) - 1))
    return tar[:pos] + bytes([tar[pos] ^ draw(st.integers(1, 255))]) + tar[pos + 1 :]


def mutate(draw: Draw, base: Base) -> tuple[str, bytes]:
    """A drawn mutation kind and the mutated archive (one to three mutations in a row)."""
    tar = base.tar
    kinds = []
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["header", "pax", "order", "manifest", "signature", "end"]))
        kinds.append(kind)
        try:
            if kind == "header":
                tar = mutate_header(draw, tar)
            elif kind == "pax":
                tar = insert_pax(draw, tar)
            elif kind == "order":
                tar = reorder(draw, tar)
            elif kind == "manifest":
                tar = mutate_manifest(draw, base, tar)
            elif kind == "signature":
                tar = mutate_signatures(draw, base, tar)
            else:
                tar = mutate_end(draw, tar)
        except AirlockError:
            break  # an earlier mutation made the archive unwalkable: check it as it is
    return "+".join(kinds), tar


# --------------------------------------------------------------------------- invariants


def refusal(action: Callable[[], Any]) -> tuple[str, Any]:
    """("accepted", result) or (error class name, error): only AirlockError subclasses
    with their own exit code may escape; anything else is a crash and propagates."""
    try:
        return "accepted", action()
    except AirlockError as e:
        assert type(e) is not AirlockError and e.exit_code not in (0, 1), (
            f"unclassified refusal {type(e).__name__} (exit {e.exit_code}): {e.message}"
        )
        assert e.message, "a refusal says what failed"
        return type(e).__name__, e


def airlock_listing(tar: Path) -> list[tuple[str, int, str]]:
    """The members as airlock's reader reads them (it accepts regular files only)."""
    with open(tar, "rb") as f:
        return [(h.path, h.size, "file") for h in walk_headers(f, offset=0, mtime=EPOCH)]


def tarfile_listing(tar: Path) -> list[tuple[str, int, str]]:
    with tarfile.open(tar, "r:") as tf:
        return [(m.name, m.size, "file" if m.isreg() else repr(m.type)) for m in tf.getmembers()]


_GNU_ESCAPE = re.compile(rb"\\([0-7]{3}|.)")
_GNU_CHAR = {b"\\": b"\\", b"n": b"\n", b"t": b"\t", b"r": b"\r", b"a": b"\a", b"b": b"\b"}


def gnu_listing(tar: Path) -> list[tuple[str, int, str]]:
    """``tar --numeric-owner -tvf`` (GNU tar, C locale: names octal-escaped), parsed."""
    out = subprocess.run(
        ["tar", "--numeric-owner", "--full-time", "--quoting-style=escape", "-tvf", str(tar)],
        capture_output=True,
        check=True,
        env={"LC_ALL": "C", "TZ": "UTC", "PATH": "/usr/bin:/bin"},
    ).stdout
    rows = []
    for line in out.splitlines():
        perms, _owner, size, _date, _time, name = line.split(None, 5)
        raw = _GNU_ESCAPE.sub(
            lambda m: (
                bytes([int(m.group(1), 8)])
                if len(m.group(1)) == 3
                else _GNU_CHAR.get(m.group(1), m.group(1))
            ),
            name,
        )
        kind = "file" if perms[:1] == b"-" else perms[:1].decode()
        rows.append((raw.decode("utf-8"), int(size), kind))
    return rows


def check_tree(dest: Path, manifest: dict[str, Any]) -> None:
    """``dest`` holds exactly the manifest's files, with their bytes and modes, and nothing
    else (no links, no empty directories)."""
    files = {}
    for p in sorted(dest.rglob("*")):
        assert not p.is_symlink(), p
        if p.is_file():
            files[p.relative_to(dest).as_posix()] = p
        else:
            assert p.is_dir() and any(p.iterdir()), f"unexpected {p}"
    want = {e["path"]: e for e in manifest["files"]}
    assert set(files) == set(want), "unpacked files differ from the signed manifest"
    for rel, p in files.items():
        e = want[rel]
        assert p.stat().st_size == e["size"], rel
        assert hashlib.sha256(p.read_bytes()).hexdigest() == e["sha256"], rel
        assert oct(p.stat().st_mode & 0o7777)[2:].rjust(4, "0") == e["mode"], rel


def check_payload_bytes(tar: Path, manifest: dict[str, Any]) -> None:
    """An accepted tar, read by Python's tarfile: the same members as airlock read (and as
    GNU tar lists), and each payload member's bytes are exactly what the manifest lists."""
    ours = airlock_listing(tar)
    assert tarfile_listing(tar) == ours, "tarfile reads other members than airlock"
    if shutil.which("tar"):
        assert gnu_listing(tar) == ours, "GNU tar lists other members than airlock"
    want = {e["path"]: e for e in manifest["files"]}
    with tarfile.open(tar, "r:") as tf:
        payload = [m for m in tf.getmembers() if not m.name.startswith("airlock/")]
        assert [m.name for m in payload] == [e["path"] for e in manifest["files"]]
        for m in payload:
            f = tf.extractfile(m)
            assert f is not None
            data = f.read()
            assert len(data) == want[m.name]["size"], m.name
            assert hashlib.sha256(data).hexdigest() == want[m.name]["sha256"], m.name


def _only(parent: Path, names: list[str]) -> None:
    found = sorted(p.name for p in parent.iterdir())
    assert found == sorted(names), f"left in {parent}: {found} (expected {names})"


def _snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in skip
    }


def _digest(tar: Path) -> Optional[str]:
    """The sha256 of the manifest ``tar`` carries, when its region can be read at all."""
    try:
        return read_metadata(tar, collect_signature_problems=True).manifest_sha256
    except AirlockError:
        return None


def _split(draw: Draw, base: Base, bundle: Path, parts: Path) -> Path:
    """``bundle`` cut into parts (signed index), then maybe one part or the index damaged."""
    parts.mkdir()
    size = draw(st.integers(BLOCK, max(BLOCK, bundle.stat().st_size)))
    index = write_parts(bundle, parts / bundle.name, size, signer=base.alice.signer, region=b"")
    if not index.parts:
        return index.index
    how = draw(st.sampled_from(["none", "none", "flip", "drop", "truncate", "index"]))
    k = draw(st.integers(0, len(index.parts) - 1))
    part = index.parts[k]
    if how == "flip":
        data = bytearray(part.read_bytes())
        data[draw(st.integers(0, len(data) - 1))] ^= 1
        part.write_bytes(bytes(data))
    elif how == "drop":
        part.unlink()
    elif how == "truncate":
        part.write_bytes(part.read_bytes()[:-1])
    elif how == "index":
        lines = index.index.read_bytes().splitlines(keepends=True)
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(_INDEX_LINES)))
        index.index.write_bytes(b"".join(lines))
    return index.index


_INDEX_LINES = [
    b"0" * 64 + b"  ../../etc/passwd\n",
    b"0" * 64 + b"  demo-1.0.0.tar.part-9999\n",
    b"garbage\n",
    b"\n",
]


def check(base: Base, tar: bytes, work: Path, *, split: Optional[Draw] = None) -> str:
    """Run one case through every reader and assert the invariants; returns verify's outcome
    ("accepted" or the refusal's class name)."""
    work.mkdir(parents=True)
    bundle = work / "demo-1.0.0.tar"
    bundle.write_bytes(tar)
    policy = policy_for(work, [base.alice, base.bob])
    target = bundle
    if split is not None:
        target = _split(split, base, bundle, work / "parts")
    before = _snapshot(work)
    verdict, _ = refusal(lambda: verify_bundle(target, policy, now=DURING))
    (work / "u").mkdir()
    got, _ = refusal(lambda: unpack_bundle(target, work / "u" / "r", policy, now=DURING))
    assert got == verdict, f"verify says {verdict}, unpack says {got}"
    _only(work / "u", ["r"] if got == "accepted" else [])
    host_tar: Optional[Path] = bundle
    if split is not None:
        joined, path = refusal(lambda: join(target, work / "joined", policy=policy))
        if verdict == "accepted":
            assert joined == "accepted", f"verify accepted the parts, join refused: {joined}"
        host_tar = path if joined == "accepted" else None
    if verdict == "accepted":
        assert host_tar is not None
        meta = read_metadata(host_tar, collect_signature_problems=True)
        check_tree(work / "u" / "r", meta.manifest)
        check_payload_bytes(host_tar, meta.manifest)
    if host_tar is not None:
        digest = _digest(host_tar) or hashlib.sha256(base.manifest).hexdigest()
        (work / "h").mkdir()
        host, _ = refusal(lambda: unpack(host_tar, work / "h" / "r", manifest_sha256=digest))
        if verdict == "accepted":
            assert host == "accepted", f"verify accepted, the host refused: {host}"
        _only(work / "h", ["r"] if host == "accepted" else [])
        if host == "accepted":
            host_meta = read_metadata(host_tar, collect_signature_problems=True)
            check_tree(work / "h" / "r", host_meta.manifest)
    seen, _ = refusal(lambda: inspect_bundle(target))
    if verdict == "accepted":
        assert seen == "accepted", f"verify accepted, inspect refused: {seen}"
    assert _snapshot(work, skip=("u", "h", "joined")) == before, "a reader changed its input"
    return verdict
