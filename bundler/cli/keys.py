"""Key and signature subcommands: keygen, sign."""

from __future__ import annotations

import argparse
import getpass
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

from bundler import console
from bundler.ssh.keys import (
    PASSPHRASE_ENV,
    fingerprint_line,
    generate_keypair,
    new_key_passphrase,
    refuse_existing_key,
)
from bundler.ssh.sig import signature_id


def register(sub: Any) -> None:
    """Add this group's subcommands to the ``airlock`` parser."""
    _register_keygen(sub)


def _unused(args: argparse.Namespace) -> int:  # pragma: no cover - placeholder until filled
    del args
    return 0


# --- keygen (owner: signing) ---------------------------------------------------------------


def _register_keygen(sub: Any) -> None:
    p = sub.add_parser(
        "keygen",
        help="make an Ed25519 signing key (OpenSSH format, passphrase-protected)",
        description="Make an Ed25519 signing key in OpenSSH format (usable with ssh-keygen "
        f"and ssh-agent). The passphrase comes from ${PASSPHRASE_ENV} or a prompt.",
    )
    p.add_argument("--out", required=True, type=Path, help="private key path (PATH.pub too)")
    p.add_argument("--comment", help="key comment (default: user@host, as ssh-keygen)")
    p.add_argument(
        "--no-passphrase",
        action="store_true",
        help="write the private key unencrypted, on purpose (protect the file by other means)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_keygen)


def _keygen(args: argparse.Namespace) -> int:
    out: Path = args.out
    comment = args.comment
    if comment is None:
        comment = f"{getpass.getuser()}@{socket.gethostname()}"
    refuse_existing_key(out)
    passphrase = new_key_passphrase(str(out), no_passphrase=args.no_passphrase)
    pub = generate_keypair(out, comment=comment, passphrase=passphrase)
    # `ssh-keygen -l -f PATH` shows the .pub file's name when the comment is empty.
    line = fingerprint_line(pub if pub.comment else replace(pub, comment=f"{out}.pub"))
    if args.json:
        console.emit_json(
            {
                "private_key": str(out),
                "public_key_file": f"{out}.pub",
                "public_key": pub.openssh(),
                "fingerprint": pub.fingerprint,
                "fingerprint_line": line,
                "signature_id": signature_id(pub),
                "comment": pub.comment,
                "encrypted": passphrase is not None,
            }
        )
    else:
        print(line)
        console.info(f"wrote {out} (private, 0600) and {out}.pub")
        if passphrase is None:
            console.warn(f"{out} is not encrypted; keep it somewhere only you can read")
    return 0
