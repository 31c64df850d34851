"""Test helpers for the bundle format: keys, policies, staged trees, packed bundles, raw tars."""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from bundler.bundle.pack import PackResult, pack
from bundler.bundle.region import build_region, metadata_region_size, signature_name
from bundler.ssh import sig as sshsig
from bundler.ssh.keys import Signer, generate_keypair, load_signer
from bundler.ssh.trust import TrustPolicy, load_policy
from runtime.bundle import Header, read_metadata, walk_headers
from runtime.tarformat import FIELDS, end_of_archive, member_header

MANIFEST_NS = sshsig.MANIFEST_NAMESPACE

EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z
CREATED = datetime.fromtimestamp(EPOCH, timezone.utc)
EXPIRES = CREATED + timedelta(days=3650)
DURING = CREATED + timedelta(days=1)


@dataclass
class Key:
    path: Path
    signer: Signer
    principal: str

    @property
    def allowed_line(self) -> str:
        return f"{self.principal} {self.signer.public_key.openssh()}\n"


def make_key(directory: Path, principal: str) -> Key:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / principal
    generate_keypair(path, comment=principal, passphrase=None)
    return Key(path, load_signer(path), principal)


def policy_for(
    tmp: Path,
    keys: list[Key],
    *,
    threshold: int = 1,
    revoked: Optional[list[Key]] = None,
    options: str = "",
) -> TrustPolicy:
    allowed = tmp / "allowed_signers"
    allowed.write_text(
        "".join(
            f"{k.principal} {options + ' ' if options else ''}{k.signer.public_key.openssh()}\n"
            for k in keys
        )
    )
    rev = None
    if revoked:
        rev = tmp / "revoked"
        rev.write_text("".join(k.signer.public_key.openssh() + "\n" for k in revoked))
    return load_policy(allowed, threshold=threshold, revoked=rev)


def make_stage(root: Path, extra: Optional[dict[str, bytes]] = None) -> Path:
    stage = root / "stage"
    files: dict[str, bytes] = {
        "README.md": b"# demo bundle\n",
        "models/tiny/tiny.gguf": bytes(range(256)) * 700,
        "models/tiny/LICENSE": b"Apache-2.0\n",
        "engine/bin/llama-server": b"#!/bin/sh\necho serve\n",
        "evidence/notes.txt": b"",
        "runtime/" + "deep/" * 30 + "long-name.py": b"print('long path')\n",
    }
    files.update(extra or {})
    for rel, data in files.items():
        p = stage / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (stage / "engine/bin/llama-server").chmod(0o755)
    return stage


COMPONENTS: dict[str, Any] = {
    "models": {
        "type": "model",
        "properties": {"models": [{"name": "tiny", "license": "apache-2.0"}]},
    },
    "engine": {"type": "runtime", "properties": {"server": "engine/bin/llama-server"}},
}


def make_bundle(
    tmp: Path,
    keys: list[Key],
    *,
    name: str = "demo",
    version: str = "1.0.0",
    stage: Optional[Path] = None,
    out: Optional[Path] = None,
    expires: datetime = EXPIRES,
    split: Optional[int] = None,
) -> PackResult:
    return pack(
        stage or make_stage(tmp),
        name=name,
        version=version,
        sequence=1,
        expires=expires,
        components=COMPONENTS,
        signers=[k.signer for k in keys],
        out_dir=out or tmp / "out",
        source_date_epoch=EPOCH,
        split=split,
    )


def members(tar: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Every member of a tar with its data (small test bundles only)."""
    out = []
    with tarfile.open(tar, "r:") as tf:
        for info in tf.getmembers():
            f = tf.extractfile(info) if info.isfile() else None
            out.append((info, f.read() if f else b""))
    return out


def write_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    """Write members exactly as given (crafted archives): regular files with the headers
    airlock writes (so only the crafted difference is refused), other kinds as ``tarfile``
    writes them (PAX format)."""
    out = b""
    for info, data in entries:
        if info.isfile():
            out += member_header(info.name, len(data), info.mode, info.mtime) + data
            out += bytes(-len(data) % 512)
        else:
            out += info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    path.write_bytes(out + end_of_archive(len(out)))


def file_info(name: str, data: bytes, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = EPOCH
    return info


# --------------------------------------------------------------------------- crafting


def canonical(obj: Any) -> bytes:
    """Manifest bytes as the writer serializes them, without the writer's checks."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signatures_by(manifest: bytes, keys: list[Key]) -> list[tuple[str, bytes]]:
    return [
        (signature_name(k.signer), sshsig.sign(manifest, k.signer, namespace=MANIFEST_NS))
        for k in keys
    ]


def region_for(manifest: bytes, signatures: list[tuple[str, bytes]], size: int = 0) -> bytes:
    """A canonical metadata region (at least ``size`` bytes) around ``manifest``."""
    size = max(size, metadata_region_size(len(manifest), len(signatures)))
    region = build_region(manifest, signatures, size, EPOCH)
    assert region is not None
    return region


def with_region(
    bundle: Path,
    out: Path,
    signatures: list[tuple[str, bytes]],
    *,
    manifest: Optional[bytes] = None,
) -> Path:
    """``bundle`` with its metadata region rebuilt around ``signatures`` (and ``manifest``,
    default its own): every header canonical, so only what the test crafted differs."""
    meta = read_metadata(bundle, collect_signature_problems=True)
    region = region_for(manifest or meta.manifest_bytes, signatures, meta.payload_offset)
    out.write_bytes(region + bundle.read_bytes()[meta.payload_offset :])
    return out


def craft_bundle(
    out: Path,
    manifest: dict[str, Any],
    payload: list[tuple[str, bytes, int]],
    keys: list[Key],
) -> bytes:
    """A bundle of ``manifest`` (any content, signed by ``keys``) and ``payload`` members
    (path, data, mode) with canonical headers; returns the manifest bytes."""
    raw = canonical(manifest)
    data = region_for(raw, signatures_by(raw, keys))
    for path, body, mode in payload:
        data += member_header(path, len(body), mode, EPOCH) + body + bytes(-len(body) % 512)
    out.write_bytes(data + end_of_archive(len(data)))
    return raw


def manifest_of(files: dict[str, bytes], **fields: Any) -> dict[str, Any]:
    """A schema-1 manifest listing ``files`` (mode 0644), ``fields`` overriding the rest."""
    obj: dict[str, Any] = {
        "format": "airlock-bundle",
        "schema_version": 1,
        "name": "demo",
        "version": "1.0.0",
        "sequence": 1,
        "created": "2026-01-01T00:00:00Z",
        "expires": "2036-01-01T00:00:00Z",
        "builder": {"airlock": "0.1.0", "python": "3.11.2", "platform": "Linux-x86_64"},
        "components": {},
        "files": [
            {
                "path": p,
                "size": len(d),
                "sha256": hashlib.sha256(d).hexdigest(),
                "mode": "0644",
                "component": p.split("/", 1)[0] if "/" in p else "bundle",
            }
            for p, d in sorted(files.items(), key=lambda kv: kv[0].encode())
        ],
    }
    for comp in {f["component"] for f in obj["files"]} - {"bundle"}:
        obj["components"][comp] = {"type": "files", "properties": {}}
    obj.update(fields)
    return obj


def set_field(block: bytes, field: str, value: bytes) -> bytes:
    """A header block with one field replaced (NUL-padded) and its checksum made right again."""
    start, end = next((s, e) for name, s, e in FIELDS if name == field)
    out = bytearray(block)
    out[start:end] = value.ljust(end - start, b"\0")[: end - start]
    out[148:156] = b" " * 8
    out[148:156] = b"%06o\0 " % sum(out)
    return bytes(out)


def header_of(bundle: Path, path: str) -> Header:
    """Where member ``path``'s header(s) and data lie in ``bundle``."""
    meta = read_metadata(bundle, collect_signature_problems=True)
    with open(bundle, "rb") as f:
        f.seek(meta.payload_offset)
        for header in walk_headers(f, offset=meta.payload_offset, mtime=EPOCH):
            if header.path == path:
                return header
    raise KeyError(path)


def splice(bundle: Path, out: Path, path: str, headers: bytes) -> Path:
    """``bundle`` with member ``path``'s header block(s) replaced by ``headers``."""
    h = header_of(bundle, path)
    data = bundle.read_bytes()
    out.write_bytes(data[: h.start] + headers + data[h.offset :])
    return out
