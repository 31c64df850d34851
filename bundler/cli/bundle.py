"""Bundle subcommands: pack, sign, verify, unpack, inspect, join."""

from __future__ import annotations

import argparse
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from bundler import console
from bundler.errors import UsageError
from bundler.ssh.trust import TrustPolicy, load_policy


def register(sub: Any) -> None:
    """Add this group's subcommands to the ``airlock`` parser."""
    _register_pack(sub)
    _register_sign(sub)
    _register_verify(sub)
    _register_unpack(sub)
    _register_inspect(sub)
    _register_join(sub)


def _policy_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--allowed-signers",
        type=Path,
        required=required,
        help="the site's trust policy: an OpenSSH allowed_signers file",
    )
    p.add_argument(
        "--threshold", type=int, default=1, help="distinct trusted keys that must sign (k of n)"
    )
    p.add_argument(
        "--revoked",
        type=Path,
        help="revoked keys: public keys or certificates, one per line (as ssh-keygen -Y verify -r)",
    )


def _unknown_signers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-unknown-signers",
        action="store_true",
        help="accept valid signatures by keys in neither the allowed signers nor the revoked "
        "keys (a bundle co-signed for other sites too) as warnings; by default they fail it",
    )


def _policy(args: argparse.Namespace) -> Optional[TrustPolicy]:
    if args.allowed_signers is None:
        return None
    return load_policy(args.allowed_signers, threshold=args.threshold, revoked=args.revoked)


# --- pack / sign ---------------------------------------------------------------------------


def _register_pack(sub: Any) -> None:
    p = sub.add_parser(
        "pack",
        help="write a signed, deterministic bundle from a staged directory",
        description="Write NAME-VERSION.tar (and .tar.sig) from DIR, whose top-level "
        "directories are the components. The manifest is signed by every --key.",
    )
    p.add_argument("dir", type=Path, help="the staged directory (<component>/<path> files)")
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--key", action="append", required=True, help="signing key (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--sequence", type=int, default=1, help="release sequence number (>= 0)")
    p.add_argument(
        "--expires",
        default="180d",
        help="180d, 26w or a date (default 180d, counted from SOURCE_DATE_EPOCH when set)",
    )
    p.add_argument("--split", help="also cut into parts of this size (4G, 700M)")
    p.add_argument(
        "--fsync",
        action="store_true",
        help="flush the bundle to disk before returning (waits for the disk; by default "
        "the kernel writes it back in the background, as for tar or cp)",
    )
    p.add_argument(
        "--components",
        type=Path,
        help="JSON file: {component: {type, properties}} for the manifest",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_pack)


def _pack(args: argparse.Namespace) -> int:
    from bundler.bundle.manifest import check_expiry_after_now, parse_expires
    from bundler.bundle.pack import pack
    from bundler.bundle.split import parse_size
    from bundler.ssh.keys import load_signer

    if args.sequence < 0:
        raise UsageError("--sequence must be 0 or more")
    signers = [load_signer(k) for k in args.key]
    components: dict[str, Any] = {}
    if args.components is not None:
        try:
            components = json.loads(args.components.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read --components {args.components}: {e}") from e
    # Relative expiry counts from the creation time, so SOURCE_DATE_EPOCH builds repeat.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    created = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else None
    now = datetime.now(timezone.utc)
    expires = parse_expires(args.expires, now=created or now)
    check_expiry_after_now(expires, created=created or now, now=now, fix="--expires DATE")
    split = parse_size(args.split) if args.split else None
    console.step(f"packing {args.dir} as {args.name} {args.version}")
    total = sum(f.stat().st_size for f in args.dir.rglob("*") if f.is_file())
    with console.byte_progress("pack", total) as advance:
        result = pack(
            args.dir,
            name=args.name,
            version=args.version,
            sequence=args.sequence,
            expires=expires,
            components=components,
            signers=signers,
            out_dir=args.out,
            split=split,
            progress=advance,
            durable=args.fsync,
        )
    data = {
        "path": str(result.path),
        "signature": str(result.signature_path),
        "manifest_sha256": result.manifest_sha256,
        "size": result.size,
        "files": result.files,
        "bytes": result.payload_bytes,
        "signers": list(result.signers),
        "parts": [str(p) for p in result.parts],
    }
    if args.json:
        console.emit_json(data)
    else:
        console.info(f"wrote {result.path} ({result.size} bytes, {result.files} files)")
        console.info(f"manifest sha256 {result.manifest_sha256}")
        console.info(f"archive signature {result.signature_path}")
    return 0


def _register_sign(sub: Any) -> None:
    p = sub.add_parser(
        "sign",
        help="co-sign a bundle (adds a manifest signature, rewrites the .tar.sig)",
        description="Check BUNDLE against its manifest, add KEY's signature over the "
        "manifest the bundle carries (in place when the reserve has room) and rewrite "
        "BUNDLE.sig with KEY. Shows the name, version, sequence and manifest sha256 being "
        "signed; --manifest-sha256 refuses any other manifest.",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--key", required=True, help="the co-signer's key")
    p.add_argument(
        "--manifest-sha256",
        metavar="HEX",
        help="sign only if the bundle's manifest has this sha256 (the one you reviewed, as "
        "airlock inspect prints it)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_sign)


def _sign(args: argparse.Namespace) -> int:
    from bundler.bundle.cosign import CosignTarget, cosign
    from bundler.ssh.keys import load_signer

    expected = args.manifest_sha256
    if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise UsageError(
            f"--manifest-sha256 {expected!r} is not 64 lowercase hex digits",
            hint="copy the manifest sha256 from airlock inspect or the release notes",
        )
    signer = load_signer(args.key)

    def show(t: CosignTarget) -> None:
        console.step(
            f"co-signing {t.name} {t.version} (sequence {t.sequence}) with "
            f"{signer.public_key.fingerprint}"
        )
        console.info(f"manifest sha256 {t.manifest_sha256}")

    try:
        result = cosign(args.bundle, signer, expect_manifest=expected, show=show)
    except OSError as e:  # the disk, not the bundle: nothing half-written stays unnoticed
        raise UsageError(
            f"cannot co-sign {args.bundle}: {e.strerror or e}",
            hint="check that the bundle, its .sig and their directory are writable and the "
            "disk has room; if a co-sign was interrupted, run airlock sign again to finish it",
        ) from e
    t = result.target
    if args.json:
        console.emit_json(
            {
                "path": str(result.path),
                "signature": str(result.signature_path),
                "name": t.name,
                "version": t.version,
                "sequence": t.sequence,
                "manifest_sha256": t.manifest_sha256,
                "signer": signer.public_key.fingerprint,
                "added": result.added,
                "in_place": result.in_place,
                "signatures": list(result.signatures),
            }
        )
    else:
        how = "in place" if result.in_place else "by rewriting the archive (reserve was full)"
        console.info(f"added {result.added} {how}; {len(result.signatures)} signatures")
    return 0


# --- verify / unpack / inspect / join ------------------------------------------------------


def _register_verify(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="verify a bundle against the site's trust policy, every byte",
        description="Check signatures, threshold and expiry, then every member of BUNDLE "
        "(a .tar, or the .parts index of a split bundle).",
    )
    p.add_argument("bundle", type=Path)
    _policy_args(p, required=True)
    _unknown_signers_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    from bundler.bundle.verify import verify_bundle

    policy = _policy(args)
    assert policy is not None
    with console.byte_progress("verify", _bundle_size(args.bundle)) as advance:
        report = verify_bundle(
            args.bundle,
            policy,
            progress=advance,
            allow_unknown_signers=args.allow_unknown_signers,
        )
    if args.json:
        console.emit_json({"ok": True, **report.to_dict()})
    else:
        for problem in report.problems:
            console.warn(problem)
        console.step(f"{report.name} {report.version} (sequence {report.sequence}) verified")
        for s in report.signers:
            console.info(f"signed by {s['fingerprint']} ({', '.join(s['principals'])})")
        console.info(f"{report.files} files, {report.bytes} bytes; expires {report.expires}")
        console.info(f"manifest sha256 {report.manifest_sha256}")
    return 0


def _bundle_size(path: Path) -> Optional[int]:
    """Bytes a verify pass reads: the tar, or all parts of a split bundle."""
    from bundler.bundle.partsindex import load_index

    try:
        if path.name.endswith(".parts"):
            return load_index(path).size  # as listed: verify reads no more than that
        return path.stat().st_size
    except (OSError, UsageError):
        return None  # the verifier itself reports the missing file properly


def _register_unpack(sub: Any) -> None:
    p = sub.add_parser(
        "unpack",
        help="verify against the trust policy, then unpack atomically into DEST",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("dest", type=Path, help="directory to create (must not exist)")
    _policy_args(p, required=True)
    _unknown_signers_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_unpack)


def _unpack(args: argparse.Namespace) -> int:
    from bundler.bundle.verify import unpack_bundle

    policy = _policy(args)
    assert policy is not None
    with console.byte_progress("unpack", _bundle_size(args.bundle)) as advance:
        result = unpack_bundle(
            args.bundle,
            args.dest,
            policy,
            progress=advance,
            allow_unknown_signers=args.allow_unknown_signers,
        )
    if args.json:
        console.emit_json({"ok": True, **result._asdict()})
    else:
        console.step(f"unpacked {result.files} files ({result.bytes} bytes) into {result.dest}")
    return 0


def _register_inspect(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a bundle's manifest summary (reads only the metadata region)",
        description="Show what BUNDLE says about itself. Without --allowed-signers nothing "
        "is verified: every line is the bundle's own claim. With it, the signatures and "
        "expiry are checked as verify checks them; payload bytes are never read.",
    )
    p.add_argument("bundle", type=Path)
    _policy_args(p, required=False)
    _unknown_signers_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from bundler.bundle.summary import inspect_bundle
    from bundler.evidence.sbom import bundle_sbom_summary

    summary = inspect_bundle(
        args.bundle,
        policy=_policy(args),
        sbom=bundle_sbom_summary,
        allow_unknown_signers=args.allow_unknown_signers,
    )
    if args.json:
        console.emit_json(summary)
        return 0
    out = console.out  # every line below carries bundle-controlled text: made safe
    if summary["verified"] == "nothing":
        out("UNVERIFIED: no trust policy was given, so nothing below has been checked; it is")
        out("what the bundle claims about itself (verify it: airlock verify --allowed-signers)")
    else:
        out("signatures and expiry verified against the trust policy; payload bytes were not")
        out("read (airlock verify checks every byte)")
    out(f"{summary['name']} {summary['version']} (sequence {summary['sequence']})")
    out(f"  created {summary['created']}, expires {summary['expires']}")
    out(f"  manifest sha256 {summary['manifest_sha256']}")
    out(f"  {summary['files']} files, {summary['bytes']} bytes")
    b = summary["builder"]
    out(f"  built by airlock {b['airlock']}, Python {b['python']}, {b['platform']}")
    for s in summary["signers"]:
        state = {True: "verified", False: "NOT trusted", None: "unverified"}[s["verified"]]
        if "error" in s:
            out(f"  signature member {s['name']} is malformed: {s['error']}")
        else:
            out(f"  signer {s['fingerprint']} ({state})")
    for name, comp in summary["components"].items():
        out(f"  component {name}: {comp['type']}, {comp['files']} files, {comp['bytes']} bytes")
    for lic in summary["licenses"]:
        out(f"  model {lic['model']}: license {lic['license']}")
    for row in summary.get("lineage") or []:
        out(f"  model {row['model']}: {row['line']}")
    if summary.get("sbom"):
        out(f"  sbom: {json.dumps(summary['sbom'], sort_keys=True)}")
    return 0


def _register_join(sub: Any) -> None:
    p = sub.add_parser("join", help="join split parts into the bundle, naming every damaged part")
    p.add_argument("index", type=Path, help="the BUNDLE.tar.parts index")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    _policy_args(p, required=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_join)


def _join(args: argparse.Namespace) -> int:
    from bundler.bundle.split import join

    path = join(args.index, args.out, policy=_policy(args))
    if args.json:
        console.emit_json({"ok": True, "path": str(path)})
    else:
        console.step(f"joined {path}")
    return 0
