"""Evidence subcommands: sbom, diff (report is registered by its own module)."""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path
from typing import Any

from bundler import console
from bundler.bundle.verify import open_bundle
from bundler.errors import AirlockError, ArchiveFormatError, UsageError
from bundler.fsio import write_atomic
from runtime.bundle import BundleMetadata, read_metadata_stream

# bundler.evidence.sbom and bundler.evidence.diff pull in cyclonedx and jsonschema (about a
# second to import): they are imported inside the commands so every other command starts fast.
_UNVERIFIED = "note: signatures not checked; 'airlock verify' checks who signed a bundle"


def register(sub: Any) -> None:
    """Add this group's subcommands to the ``airlock`` parser."""
    p = sub.add_parser(
        "sbom",
        help="write a bundle's CycloneDX SBOM out for other tools",
        description="Extract evidence/sbom.cdx.json from a bundle (digest-checked against "
        "the manifest; reads only the metadata region and that member).",
    )
    p.add_argument("bundle", type=Path, help="the bundle .tar")
    p.add_argument("--out", type=Path, help="write the SBOM to this file (default: stdout)")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of human text")
    p.set_defaults(func=cmd_sbom)

    d = sub.add_parser(
        "diff",
        help="show what changed between two bundles",
        description="Compare two bundles from their manifests and signature files alone: "
        "models, files, wheels, runtime, licenses, signers, sequence and expiry. "
        "Informational: always exits 0 when both bundles can be read.",
    )
    d.add_argument("old", type=Path, help="the older bundle .tar")
    d.add_argument("new", type=Path, help="the newer bundle .tar")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_diff)


def _metadata(path: Path) -> BundleMetadata:
    """The metadata region of a bundle ``.tar`` or of a split bundle's ``.parts`` index."""
    if not path.is_file():
        raise UsageError(
            f"bundle not found: {path}",
            hint="pass the path of a bundle .tar written by 'airlock build' or 'airlock pack'",
        )
    try:
        with open_bundle(path) as f:
            # BufferedReader loops over short reads: a split bundle's parts reader returns
            # short reads at part boundaries, which the region reader takes for truncation.
            if isinstance(f, io.RawIOBase):
                return read_metadata_stream(io.BufferedReader(f))
            return read_metadata_stream(f)
    except OSError as e:
        raise UsageError(f"cannot read bundle {path}: {e.strerror}") from e
    except AirlockError as e:
        e.message = f"{path}: {e.message}"
        raise


def cmd_sbom(args: argparse.Namespace) -> int:
    from bundler.evidence.sbom import SBOM_PATH, bundle_sbom, summarize

    if args.bundle.name.endswith(".parts"):
        raise UsageError(
            f"{args.bundle} is a split bundle's index; 'airlock sbom' reads a whole bundle",
            hint=f"run 'airlock join {args.bundle}' first, then pass the joined .tar",
        )
    data = bundle_sbom(args.bundle, _metadata(args.bundle))
    if data is None:
        raise ArchiveFormatError(
            f"{args.bundle} has no {SBOM_PATH}",
            hint="the bundle was packed without evidence; rebuild it with 'airlock build'",
        )
    summary = summarize(data)
    if args.out is not None:
        write_atomic(args.out, data)
    elif not args.json:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    if args.json:
        console.emit_json(
            {
                "bundle": str(args.bundle),
                "out": str(args.out) if args.out is not None else None,
                "sha256": hashlib.sha256(data).hexdigest(),
                "summary": summary,
            }
        )
    elif args.out is not None:
        console.step(f"wrote {args.out} ({len(data)} bytes, CycloneDX {summary['spec_version']})")
        types = ", ".join(f"{n} {t}" for t, n in summary["components"].items())
        console.info(f"components: {types}")
        for purl in summary["models"]:
            console.info(f"model: {purl}")
        console.info("licenses: " + (", ".join(summary["licenses"]) or "none recorded"))
    console.err.print(_UNVERIFIED)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from bundler.evidence.diff import diff_manifests, fingerprints, render

    old = _metadata(args.old)
    new = _metadata(args.new)
    diff = diff_manifests(
        old.manifest,
        new.manifest,
        old_signers=fingerprints(old.signatures),
        new_signers=fingerprints(new.signatures),
        old_sha256=old.manifest_sha256,
        new_sha256=new.manifest_sha256,
    )
    if args.json:
        console.emit_json(diff.to_json())
    else:
        sys.stdout.write(render(diff))
    console.err.print(_UNVERIFIED)
    return 0
