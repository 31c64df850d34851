"""A real packed and signed bundle for the report tests."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from bundler.bundle.pack import pack
from bundler.evidence.sbom import build_sbom
from bundler.ssh import keys as sshkeys
from tests.evidence_fixtures import manifest as fixture_manifest


def packed_bundle(
    tmp_path: Path, signer_names: tuple[str, ...], *, model_size: int = 64 * 1024
) -> tuple[Path, list[Any]]:
    """A real signed bundle (pack) with a model and an SBOM, signed by each named new key."""
    fixture = fixture_manifest()
    stage = tmp_path / "stage"
    (stage / "models" / "tiny").mkdir(parents=True)
    (stage / "evidence").mkdir()
    (stage / "models" / "tiny" / "tiny.gguf").write_bytes(os.urandom(model_size))
    sbom_bytes = build_sbom(
        name="demo",
        version="1.0.0",
        created="2026-11-27T00:00:00Z",
        components=fixture["components"],
        files=fixture["files"],
        serial_seed=b"seed",
    )
    (stage / "evidence" / "sbom.cdx.json").write_bytes(sbom_bytes)
    pubs, signers = [], []
    for name in signer_names:
        key = tmp_path / "keys" / name
        key.parent.mkdir(exist_ok=True)
        pubs.append(sshkeys.generate_keypair(key, comment=name, passphrase=None))
        signers.append(sshkeys.load_signer(key))
    result = pack(
        stage,
        name="demo",
        version="1.0.0",
        sequence=3,
        expires=dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc),
        components={k: v for k, v in fixture["components"].items() if k in ("models", "evidence")},
        signers=signers,
        out_dir=tmp_path / "out",
        source_date_epoch=1_800_000_000,
    )
    return result.path, pubs
