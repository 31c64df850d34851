"""Project subcommands: init, demo, report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bundler import console


def register(sub: Any) -> None:
    """Add this group's subcommands to the ``airlock`` parser."""
    p = sub.add_parser(
        "init",
        help="start a project: commented spec, signing key, allowed_signers",
        description="Write DIR/airlock.yaml (from the commented example), a new Ed25519 "
        "signing key DIR/keys/signing (passphrase from AIRLOCK_KEY_PASSPHRASE or a prompt) "
        "and DIR/allowed_signers trusting it. Never overwrites.",
    )
    p.add_argument("directory", type=Path, metavar="DIR")
    p.add_argument("--name", help="bundle name (default: from the directory name)")
    p.add_argument("--principal", help="signer identity in allowed_signers (default: NAME-release)")
    p.add_argument(
        "--no-passphrase",
        action="store_true",
        help="leave the key unencrypted (tests and throw-away demos only)",
    )
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=_init)

    p = sub.add_parser(
        "demo",
        help="the whole path on a tiny generated model, installed on a local test host",
        description="Generate a tiny model, serve it from a local Hub-compatible server, "
        "lock, build, sign and verify a bundle, install it with the real playbooks on a "
        "disconnected network-namespace test host, and ask the installed server a question. "
        "Needs root (network namespaces).",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="where to work (default: a fresh directory under $AIRLOCK_DEMO_DIR "
        "or ~/.cache/airlock/demo)",
    )
    p.add_argument("--keep", action="store_true", help="leave the test host running afterwards")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "report",
        help="one self-contained HTML page for the reviewer approving a transfer",
        description="Read the bundle's manifest, signatures and SBOM (never the whole "
        "payload) and write one HTML page with inline CSS, no scripts, no external resources.",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    p.add_argument(
        "--allowed-signers",
        type=Path,
        help="the site's OpenSSH allowed_signers file: check each signer against it",
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=_report)


def _init(args: argparse.Namespace) -> int:
    from bundler.project.init import init_project
    from bundler.ssh.keys import new_key_passphrase

    passphrase = new_key_passphrase(
        f"the signing key in {args.directory}", no_passphrase=args.no_passphrase
    )
    project = init_project(
        args.directory, name=args.name, principal=args.principal, passphrase=passphrase
    )
    if args.json:
        console.emit_json(
            {
                "spec": str(project.spec),
                "key": str(project.key),
                "public_key": str(project.public_key),
                "allowed_signers": str(project.allowed_signers),
                "fingerprint": project.fingerprint,
                "principal": project.principal,
            }
        )
        return 0
    d = project.directory
    console.step(f"new airlock project in {d}")
    console.info(f"spec:            {project.spec}")
    console.info(f"signing key:     {project.key} ({project.fingerprint})")
    console.info(f"allowed_signers: {project.allowed_signers} (principal {project.principal})")
    print(
        "\nNext steps:\n"
        f"  1. edit {project.spec}: models, runtime, targets, server\n"
        f"  2. airlock lock {project.spec}          # resolve revisions to commits\n"
        f"  3. airlock build {project.spec} --key {project.key}\n"
        f"  4. airlock verify BUNDLE.tar --allowed-signers {project.allowed_signers}\n"
        f"  5. airlock report BUNDLE.tar --allowed-signers {project.allowed_signers} "
        "--out report.html\n"
        f"Keep {project.key} secret; give {project.allowed_signers} to the far side."
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from bundler.demo.run import run_demo

    result = run_demo(workdir=args.workdir, keep=args.keep)
    if args.json:
        console.emit_json(result.to_json())
    else:
        print(result.summary())
    return 0


def _report(args: argparse.Namespace) -> int:
    from bundler.evidence.report import write_report

    report = write_report(args.bundle, args.out, allowed_signers=args.allowed_signers)
    if args.json:
        console.emit_json(
            {
                "out": str(args.out),
                "manifest_sha256": report.manifest_sha256,
                "flags": list(report.flags),
                "signers": [
                    {"member": s.member, "fingerprint": s.fingerprint, "status": s.status}
                    for s in report.signers
                ],
            }
        )
        return 0
    console.step(f"wrote {args.out}")
    for flag in report.flags:
        console.warn(flag)
    if not report.flags:
        console.info("no findings")
    return 0
