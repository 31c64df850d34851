"""Test helpers for the bundle format: keys, policies, staged trees, packed bundles, raw tars."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from bundler.bundle.pack import PackResult, pack
from bundler.ssh.keys import Signer, generate_keypair, load_signer
from bundler.ssh.trust import TrustPolicy, load_policy

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
    """Write members exactly as given (crafted archives), PAX format."""
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)


def file_info(name: str, data: bytes, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = EPOCH
    return info
