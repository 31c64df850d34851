"""The host-side reader: metadata limits, strict headers, every problem reported, seeks."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import sys
from pathlib import Path

import pytest

from bundler.bundle.region import build_region, member_header, signature_name
from bundler.ssh import sig as sshsig
from runtime import bundle as rb
from runtime import tarformat
from runtime.errors import ArchiveFormatError, IntegrityError
from runtime.unpack import main as unpack_main
from runtime.unpack import unpack
from tests.bundlekit import make_key

EPOCH = 1_767_225_600


def manifest_for(files: dict[str, bytes]) -> bytes:
    obj = {
        "format": "airlock-bundle",
        "schema_version": 1,
        "name": "t",
        "version": "1",
        "sequence": 1,
        "created": "2026-01-01T00:00:00Z",
        "expires": "2036-01-01T00:00:00Z",
        "builder": {"airlock": "0", "python": "3", "platform": "x"},
        "components": {"models": {"type": "model", "properties": {}}},
        "files": [
            {
                "path": p,
                "size": len(d),
                "sha256": hashlib.sha256(d).hexdigest(),
                "mode": "0644",
                "component": rb.component_of(p),
            }
            for p, d in sorted(files.items())
        ],
    }
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def tar_bytes(
    files: dict[str, bytes],
    *,
    payload: list[tuple[str, bytes]] | None = None,
    signatures: list[tuple[str, bytes]] | None = None,
) -> bytes:
    """A bundle, by default without signatures (this reader does not check them)."""
    manifest = manifest_for(files)
    region = build_region(manifest, signatures or [], 8192, EPOCH)
    assert region is not None
    out = region
    for path, data in payload if payload is not None else sorted(files.items()):
        out += member_header(path, len(data), 0o644, EPOCH) + data + b"\0" * (-len(data) % 512)
    out += b"\0" * 1024
    return out + b"\0" * (-len(out) % 10240)


FILES = {"models/a.bin": b"a" * 1000, "models/b.bin": b"b" * 10, "README.md": b"hi\n"}


def test_reads_the_metadata_region_only(tmp_path: Path) -> None:
    key = make_key(tmp_path, "alice")
    sig = sshsig.sign(manifest_for(FILES), key.signer, namespace=sshsig.MANIFEST_NAMESPACE)
    name = signature_name(key.signer)
    data = tar_bytes(FILES, signatures=[(name, sig)])
    stream = io.BytesIO(data)
    meta = rb.read_metadata_stream(stream)
    assert meta.payload_offset == 8192 == stream.tell()
    assert meta.signatures == [(name, sig)]
    assert meta.manifest_sha256 == hashlib.sha256(meta.manifest_bytes).hexdigest()
    assert meta.reserve_size > 0


def test_check_payload_accepts_a_good_bundle() -> None:
    data = tar_bytes(FILES)
    meta = rb.read_metadata_stream(io.BytesIO(data))
    _, files, total = rb.verify_stream(io.BytesIO(data), meta.manifest_sha256)
    assert (files, total) == (3, 1013)


def test_reports_every_problem_not_just_the_first() -> None:
    payload = [
        ("README.md", b"HI\n"),  # changed
        ("extra.txt", b"x"),  # extra
        ("models/b.bin", b"b" * 10),  # a.bin missing
    ]
    data = tar_bytes(FILES, payload=payload)
    meta = rb.read_metadata_stream(io.BytesIO(data))
    with pytest.raises(IntegrityError) as exc:
        rb.verify_stream(io.BytesIO(data), meta.manifest_sha256)
    assert exc.value.problems == (
        "README.md: sha256 does not match the signed manifest",
        "member 'extra.txt' is not listed in the signed manifest",
        "models/a.bin: listed in the manifest but missing from the archive",
    )


def test_refuses_a_manifest_digest_other_than_the_verified_one() -> None:
    with pytest.raises(IntegrityError, match="expected 0000"):
        rb.verify_stream(io.BytesIO(tar_bytes(FILES)), "0" * 64)


def test_refuses_a_first_member_that_is_not_the_manifest() -> None:
    data = member_header("README.md", 3, 0o644, EPOCH) + b"hi\n".ljust(512, b"\0") + b"\0" * 1024
    with pytest.raises(ArchiveFormatError, match=r"not airlock/manifest\.json"):
        rb.read_metadata_stream(io.BytesIO(data))


def test_refuses_an_oversized_manifest_header_without_reading_it() -> None:
    header = bytearray(member_header(rb.MANIFEST_NAME, 0, 0o644, EPOCH))
    fake = member_header(rb.MANIFEST_NAME, rb.MAX_MANIFEST_BYTES + 1, 0o644, EPOCH)
    with pytest.raises(ArchiveFormatError, match="over the"):
        rb.read_metadata_stream(io.BytesIO(fake + bytes(header)))


def test_refuses_unknown_pax_keys_and_base256_sizes() -> None:
    for bad in (b"5 a\n", b"x a=b\n", b"9 noequals\n", b"99 a=b\n"):
        with pytest.raises(ValueError):
            tarformat.parse_pax(bad)
    pax = b"19 linkpath=/etc/x\n"
    bad = member_header("README.md", 3, 0o644, EPOCH)
    block = bytearray(bad)
    block[156:157] = b"x"
    block[124:136] = b"%011o\0" % len(pax)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    stream = io.BytesIO(bytes(block) + pax.ljust(512, b"\0") + bad + b"hi\n".ljust(512, b"\0"))
    with pytest.raises(ArchiveFormatError, match="linkpath"):
        tarformat.read_header(tarformat.StreamReader(stream))
    big = bytearray(bad)
    big[124:136] = b"\x80" + b"\0" * 11
    big[148:156] = b" " * 8
    big[148:156] = b"%06o\0 " % sum(big)
    with pytest.raises(ArchiveFormatError, match=r"size field .* is not an octal number"):
        tarformat.read_header(tarformat.StreamReader(io.BytesIO(bytes(big))))


def test_pax_size_above_8_gib_is_read(tmp_path: Path) -> None:
    header = member_header("models/huge.bin", 9 * 1024**3, 0o644, EPOCH)
    assert len(header) == 1536  # PAX header + its data block + the ustar header
    parsed = tarformat.read_header(tarformat.StreamReader(io.BytesIO(header)))
    assert parsed is not None and parsed.size == 9 * 1024**3


def test_read_member_seeks_to_one_file_and_checks_it(tmp_path: Path) -> None:
    path = tmp_path / "b.tar"
    path.write_bytes(tar_bytes(FILES))
    meta = rb.read_metadata(path)
    assert rb.read_member(path, "models/b.bin", manifest=meta.manifest) == b"b" * 10
    with pytest.raises(ArchiveFormatError, match="read limit"):
        rb.read_member(path, "models/a.bin", manifest=meta.manifest, limit=100)
    data = bytearray(path.read_bytes())
    at = bytes(data).index(b"b" * 10)
    data[at] = ord("c")
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        rb.read_member(path, "models/b.bin", manifest=meta.manifest)


def test_unpack_cli_exit_codes_and_json(tmp_path: Path, capsys) -> None:
    path = tmp_path / "b.tar"
    path.write_bytes(tar_bytes(FILES))
    sha = rb.read_metadata(path).manifest_sha256
    assert unpack_main([str(path), str(tmp_path / "r"), "--manifest-sha256", sha, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["files"] == 3
    assert (tmp_path / "r/models/a.bin").read_bytes() == b"a" * 1000
    assert unpack_main([str(path), str(tmp_path / "r"), "--manifest-sha256", sha]) == 60
    assert unpack_main([str(path), str(tmp_path / "s"), "--manifest-sha256", "0" * 64]) == 20
    path.write_bytes(path.read_bytes()[:9000])
    assert unpack_main([str(path), str(tmp_path / "s"), "--manifest-sha256", sha, "--json"]) == 21
    assert json.loads(capsys.readouterr().out)["error"] == "ArchiveFormatError"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar", "r"]


def test_unpacked_files_get_manifest_modes(tmp_path: Path) -> None:
    path = tmp_path / "b.tar"
    path.write_bytes(tar_bytes(FILES))
    result = unpack(path, tmp_path / "r", manifest_sha256=rb.read_metadata(path).manifest_sha256)
    assert result.bytes == 1013
    assert (tmp_path / "r/README.md").stat().st_mode & 0o7777 == 0o644


RUNTIME_MODULES = sorted(
    p.stem for p in (Path(__file__).resolve().parents[2] / "runtime").glob("*.py")
)


def test_every_runtime_module_is_checked() -> None:
    assert {"bundle", "unpack", "selection", "release", "detect", "supervise"} <= set(
        RUNTIME_MODULES
    )


@pytest.mark.parametrize("module", RUNTIME_MODULES)
def test_runtime_modules_use_only_the_standard_library(repo_root: Path, module: str) -> None:
    # feature_version rejects syntax newer than the hosts' oldest Python (3.8).
    tree = ast.parse((repo_root / "runtime" / f"{module}.py").read_text(), feature_version=(3, 8))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            assert top == "runtime" or top in sys.stdlib_module_names or top == "__future__", name
        # Python 3.8: no match statements, no walrus-free worries, no PEP 604 at runtime.
        assert not type(node).__name__ == "Match"
