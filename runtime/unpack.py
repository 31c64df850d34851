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

from runtime.bundle import MAX_PATH_BYTES, MODES, check_payload, read_metadata_stream
from runtime.errors import AirlockError, InstallError, UsageError
from runtime.fsio import fsync_dir

PATH_MAX = 4096  # Linux, with the terminating NUL


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

    The manifest bytes are compared with ``manifest_sha256`` (the digest the controller
    verified) before they are parsed. Files are written into a staging directory beside
    ``dest`` while they are hashed; ``dest`` appears (by one rename) only when every member
    matched. On any failure the staging directory is removed and ``dest`` is untouched.
    Raises IntegrityError, ArchiveFormatError, InstallError (also for every OS error: a
    full disk, a destination too long for the bundle's paths, permissions).
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
    try:
        staging = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + ".staging-", dir=parent)
    except OSError as e:
        raise _install_error(f"cannot create a staging directory beside {dest}", e) from e
    try:
        f = stream if stream is not None else open(bundle, "rb")
        try:
            meta = read_metadata_stream(f, manifest_sha256=manifest_sha256)
            _check_fits(staging, meta.manifest)
            made: Set[str] = set()

            def sink(entry: Dict[str, Any]) -> IO[bytes]:
                return _create(staging, entry["path"], MODES[entry["mode"]], made)

            files, total = check_payload(
                f, meta.manifest, offset=meta.payload_offset, sink=sink, progress=progress
            )
        finally:
            if stream is None:
                f.close()
        os.chmod(staging, 0o755)  # noqa: S103 - a release directory is world-readable
        fsync_dir(staging)
        os.rename(staging, dest)
        fsync_dir(parent)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise _install_error(f"unpacking {os.fspath(bundle)} into {dest} failed", e) from e
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


def _install_error(what: str, e: OSError) -> InstallError:
    """An OS error (full disk, permissions, a name too long) as the InstallError it means."""
    where = f" ({e.filename})" if e.filename else ""
    return InstallError(
        f"{what}: {e.strerror or e}{where}",
        hint="check free space, permissions and the destination path, then run again",
    )


def _check_fits(staging: str, manifest: Dict[str, Any]) -> None:
    """Refuse, before writing anything, a destination too long for the bundle's paths."""
    longest = max((len(e["path"].encode("utf-8")) for e in manifest["files"]), default=0)
    need = len(os.fsencode(staging)) + 1 + longest
    if need >= PATH_MAX:
        raise InstallError(
            f"the bundle's longest path ({longest} bytes) does not fit under {staging}:"
            f" {need} bytes, the limit is {PATH_MAX - 1}",
            hint=f"unpack into a destination of at most {PATH_MAX - 2 - MAX_PATH_BYTES - 24}"
            " bytes (every bundle path fits under such a destination)",
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
