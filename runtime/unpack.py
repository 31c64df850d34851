"""Unpack-and-verify a bundle into a fresh staging directory, then rename it into place.

Target hosts run this as ``python3 -m runtime.unpack BUNDLE DEST --manifest-sha256 HEX``
(standard library only, Python 3.8+). The controller has already checked the signatures
over the manifest; here every byte is checked against that manifest in one streaming pass.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import IO, Any, Dict, List, NamedTuple, Optional, Sequence, Set

from runtime.bundle import MODES, check_payload, read_metadata_stream
from runtime.errors import AirlockError, InstallError, IntegrityError, UsageError
from runtime.fsio import fsync_dir


class UnpackResult(NamedTuple):
    """What was unpacked: where, which manifest, how many files and bytes."""

    dest: str
    manifest_sha256: str
    name: str
    version: str
    sequence: int
    files: int
    bytes: int


def unpack(
    bundle: os.PathLike[str] | str,
    dest: os.PathLike[str] | str,
    *,
    manifest_sha256: str,
    stream: Optional[IO[bytes]] = None,
    progress: Any = None,
) -> UnpackResult:
    """Verify and unpack ``bundle`` into ``dest``, which must not exist yet.

    Files are written into a staging directory beside ``dest`` while they are hashed;
    ``dest`` appears (by one rename) only when every member matched. On any failure the
    staging directory is removed and ``dest`` is untouched. Raises IntegrityError,
    ArchiveFormatError, InstallError.
    """
    dest = os.path.abspath(os.fspath(dest))
    if os.path.lexists(dest):
        raise InstallError(
            f"destination {dest} already exists",
            hint="unpack into a new release directory, or remove the old one first",
        )
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise InstallError(
            f"the parent directory {parent} does not exist",
            hint="create it (the install role does this) and run again",
        )
    staging = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + ".staging-", dir=parent)
    try:
        own = stream is None
        f = open(bundle, "rb") if stream is None else stream
        try:
            meta = read_metadata_stream(f)
            if meta.manifest_sha256 != manifest_sha256.lower():
                raise IntegrityError(
                    f"manifest sha256 of {os.fspath(bundle)} is {meta.manifest_sha256},"
                    f" expected {manifest_sha256}",
                    hint="this is not the bundle the controller verified; copy it again",
                )
            made: Set[str] = set()

            def sink(entry: Dict[str, Any]) -> IO[bytes]:
                return _create(staging, entry["path"], MODES[entry["mode"]], made)

            files, total = check_payload(
                f, meta.manifest, offset=meta.payload_offset, sink=sink, progress=progress
            )
        finally:
            if own:
                f.close()
        os.chmod(staging, 0o755)  # noqa: S103 - a release directory is world-readable
        fsync_dir(staging)
        os.rename(staging, dest)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    m = meta.manifest
    return UnpackResult(
        dest=dest,
        manifest_sha256=meta.manifest_sha256,
        name=m["name"],
        version=m["version"],
        sequence=m["sequence"],
        files=files,
        bytes=total,
    )


def _create(root: str, path: str, mode: int, made: Set[str]) -> IO[bytes]:
    """Open a new file for ``path`` under ``root``; never follows or replaces anything."""
    parts = path.split("/")
    current = root
    for part in parts[:-1]:
        current = os.path.join(current, part)
        if current not in made:
            try:
                os.mkdir(current)
                os.chmod(current, 0o755)  # noqa: S103 - release trees are world-readable, umask or not
            except FileExistsError:
                # Only directories this function made may exist; anything else is an attack.
                if os.path.islink(current) or not os.path.isdir(current):
                    raise InstallError(f"{path}: a parent is not a directory") from None
            made.add(current)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(os.path.join(root, path), flags, 0o600)
    os.fchmod(fd, mode)
    return os.fdopen(fd, "wb")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python3 -m runtime.unpack``: exit 0 when unpacked, else the error's exit code."""
    parser = argparse.ArgumentParser(
        prog="python3 -m runtime.unpack",
        description="Verify every byte of an airlock bundle and unpack it atomically.",
    )
    parser.add_argument("bundle", help="the bundle .tar")
    parser.add_argument("dest", help="the release directory to create (must not exist)")
    parser.add_argument(
        "--manifest-sha256",
        required=True,
        help="sha256 of the manifest bytes whose signatures the controller verified",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        if len(args.manifest_sha256) != 64:
            raise UsageError("--manifest-sha256 must be 64 hex digits")
        result = unpack(args.bundle, args.dest, manifest_sha256=args.manifest_sha256)
    except AirlockError as e:
        if args.json:
            _print_json(
                {
                    "ok": False,
                    "error": type(e).__name__,
                    "exit_code": e.exit_code,
                    "message": e.message,
                    "problems": list(e.problems),
                    "hint": e.hint,
                }
            )
        print(e.render(), file=sys.stderr)
        return e.exit_code
    except OSError as e:
        err = InstallError(f"unpacking failed: {e}", hint="check disk space and permissions")
        print(err.render(), file=sys.stderr)
        return err.exit_code
    if args.json:
        data: Dict[str, Any] = dict(result._asdict())
        data["ok"] = True
        _print_json(data)
    else:
        print(f"unpacked {result.files} files ({result.bytes} bytes) into {result.dest}")
    return 0


def _print_json(data: Dict[str, Any]) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


__all__: List[str] = ["UnpackResult", "main", "unpack"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
