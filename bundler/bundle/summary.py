"""A bundle's summary from its metadata region only (fast for any size), SBOM if present."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from bundler.bundle.verify import check_policy, open_bundle
from bundler.errors import SignatureError
from bundler.ssh import sig as sshsig
from bundler.ssh.trust import TrustPolicy
from runtime.bundle import BundleMetadata, read_metadata_stream
from runtime.components import models_of

SbomSummary = Callable[[Path, BundleMetadata], Optional[dict[str, Any]]]


def inspect_bundle(
    path: Path,
    *,
    policy: Optional[TrustPolicy] = None,
    now: Optional[datetime] = None,
    sbom: Optional[SbomSummary] = None,
    allow_unknown_signers: bool = False,
) -> dict[str, Any]:
    """Name, version, sequence, times, signers, components, files and sizes of ``path``.

    Without ``policy`` NOTHING is verified: every value is what the bundle claims, and
    ``verified`` says so ("nothing"). With it, the policy, expiry and every signature member
    are checked as verify checks them (TrustError / ExpiredError / SignatureError), signers
    are marked verified and ``verified`` is "signatures" (payload bytes are not read:
    ``airlock verify`` does that). A signature member not shaped as airlock writes them is
    listed with its ``error`` either way. The
    ``sbom`` entry is what ``sbom(path, metadata)`` returns (the evidence package's
    ``bundle_sbom_summary``, which reads one small member, hash-checked), else None. Refuses, as
    verify does (IntegrityError), a bundle whose co-sign was interrupted: its metadata
    region may be half-written.
    """
    if not path.name.endswith(".parts"):
        from bundler.bundle.cosign import refuse_pending_cosign

        refuse_pending_cosign(path)
    with open_bundle(path) as f:
        meta = read_metadata_stream(f, collect_signature_problems=True)
    verified: dict[str, list[str]] = {}
    if policy is not None:
        decision = check_policy(
            meta,
            policy,
            now=now or datetime.now(timezone.utc),
            allow_unknown_signers=allow_unknown_signers,
        )
        verified = {a.name: list(a.principals) for a in decision.accepted}
    m = meta.manifest
    malformed = dict(meta.signature_problems)
    summary: dict[str, Any] = {
        "path": str(path),
        "verified": "nothing" if policy is None else "signatures",
        "manifest_sha256": meta.manifest_sha256,
        "name": m["name"],
        "version": m["version"],
        "sequence": m["sequence"],
        "created": m["created"],
        "expires": m["expires"],
        "builder": m["builder"],
        "signers": [
            _signer(n, sig, verified, policy is not None, malformed.get(n))
            for n, sig in meta.signatures
        ],
        "components": _components(m),
        "files": len(m["files"]),
        "bytes": sum(e["size"] for e in m["files"]),
        "reserve_bytes": meta.reserve_size,
        "licenses": _licenses(m),
        "lineage": [
            {"model": model.name, "line": model.lineage} for model in models_of(m) if model.lineage
        ],
    }
    summary["sbom"] = sbom(path, meta) if sbom is not None else None
    return summary


def _signer(
    name: str,
    armored: bytes,
    verified: dict[str, list[str]],
    checked: bool,
    malformed: Optional[str],
) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name}
    if malformed is not None:
        entry["error"] = malformed
        entry["verified"] = False if checked else None
        return entry
    try:
        sig = sshsig.parse(armored)
        entry["fingerprint"] = sig.public_key.fingerprint
        entry["key"] = sig.public_key.openssh()
        entry["namespace"] = sig.namespace
    except SignatureError as e:
        entry["error"] = e.message
    if checked:
        entry["verified"] = name in verified
        if name in verified:
            entry["principals"] = verified[name]
    else:
        entry["verified"] = None
    return entry


def _components(m: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cname, comp in sorted(m["components"].items()):
        files = [e for e in m["files"] if e["component"] == cname]
        out[cname] = {
            "type": comp["type"],
            "files": len(files),
            "bytes": sum(e["size"] for e in files),
        }
    return out


def _licenses(m: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "model": model.name,
            "license": model.license,
            "permissive": model.license_permissive,
            "gated": model.gated,
        }
        for model in models_of(m)
    ]
