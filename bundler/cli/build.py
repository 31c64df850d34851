"""Build subcommands: lock, build."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bundler import console


def register(sub: Any) -> None:
    """Add this group's subcommands to the ``airlock`` parser."""
    p = sub.add_parser(
        "lock",
        help="pin every model revision to a commit and every file to size and sha256",
        description="Resolve the spec's model revisions on the Hub (HF_ENDPOINT, HF_TOKEN) "
        "and write airlock.lock next to the spec (atomically; unchanged when nothing moved).",
    )
    p.add_argument("spec", type=Path, help="the airlock.yaml spec")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=_lock)

    b = sub.add_parser(
        "build",
        help="build a signed bundle from a spec and its lock",
        description="Stage the locked models (digest-checked), the far-side code, the runtime "
        "and wheelhouses, write the SBOM and provenance, smoke-test, then pack and sign.",
    )
    b.add_argument("spec", type=Path, help="the airlock.yaml spec")
    b.add_argument("--out", type=Path, default=Path("dist"), help="output directory (dist)")
    b.add_argument(
        "--key",
        action="append",
        default=[],
        help="signing key (OpenSSH Ed25519 private key, .pub for ssh-agent, or agent:SHA256:...); "
        "repeat for several signers",
    )
    b.add_argument(
        "--offline",
        action="store_true",
        help="use only the local Hub cache (HF_HUB_OFFLINE=1 semantics); digests still checked",
    )
    b.add_argument(
        "--update-lock",
        action="store_true",
        help="re-resolve revisions and rewrite airlock.lock before building",
    )
    b.add_argument(
        "--skip-engine",
        "--skip-runtime",
        dest="skip_engine",
        action="store_true",
        help="leave out the llama.cpp engine and wheelhouses (models and code only; "
        "--skip-runtime is its older name)",
    )
    b.add_argument("--split", metavar="SIZE", help="also cut into parts of this size (4G, 700M)")
    b.add_argument(
        "--fsync",
        action="store_true",
        help="flush the bundle to disk before returning (waits for the disk; by default "
        "the kernel writes it back in the background, as for tar or cp)",
    )
    b.add_argument("--json", action="store_true", help="print a JSON summary")
    b.set_defaults(func=_build)


def _lock(args: argparse.Namespace) -> int:
    from bundler.pipeline import lock  # Hub pins, and the converter's when a model converts
    from bundler.project.spec import load_spec

    spec = load_spec(args.spec)
    lk, changed = lock(spec)
    if args.json:
        console.emit_json(
            {
                "lock": str(spec.lock_path),
                "changed": changed,
                "models": {
                    m.name: {"commit": m.commit, "files": len(m.files), "entrypoint": m.entrypoint}
                    for m in lk.models
                },
            }
        )
        return 0
    for m in lk.models:
        pin = f"{m.repo}@{m.commit}" if m.source == "hub" else f"local {m.path}"
        console.info(f"{m.name}: {pin} ({len(m.files)} files)")
    verb = "wrote" if changed else "unchanged:"
    print(f"{verb} {spec.lock_path}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from bundler.bundle.split import parse_size
    from bundler.pipeline import BuildOptions, build

    result = build(
        args.spec,
        BuildOptions(
            out_dir=args.out,
            keys=tuple(args.key),
            offline=args.offline,
            update_lock=args.update_lock,
            skip_engine=args.skip_engine,
            split=parse_size(args.split) if args.split else None,
            durable=args.fsync,
        ),
    )
    if args.json:
        console.emit_json(
            {
                "bundle": str(result.path),
                "manifest_sha256": result.manifest_sha256,
                "lock": str(result.lock_path),
                "lock_changed": result.lock_changed,
                "files": result.files,
                "size": result.size,
                "warnings": list(result.warnings),
            }
        )
        return 0
    print(f"wrote {result.path} ({result.files} files, {result.size} bytes)")
    print(f"manifest sha256 {result.manifest_sha256}")
    return 0
