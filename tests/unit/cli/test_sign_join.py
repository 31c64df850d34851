"""`airlock sign` and `airlock join`: what the co-signer is shown, and hostile inputs that
must end in an airlock error with its exit code, never a traceback (or exit 1)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import bundler.errors as errors
from bundler.bundle.region import journal_path
from bundler.cli.main import main
from runtime.bundle import read_metadata
from tests.bundlekit import make_bundle, make_key, make_stage, policy_for

MIB = 1 << 20
EXIT_CODES = {
    cls.exit_code
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.AirlockError) and cls is not errors.AirlockError
}


@pytest.fixture
def signed(tmp_path: Path):
    alice, bob = make_key(tmp_path / "keys", "alice"), make_key(tmp_path / "keys", "bob")
    bundle = make_bundle(tmp_path, [alice]).path
    return bundle, alice, bob


def test_sign_shows_what_is_signed_and_json_carries_it(signed, capsys) -> None:
    bundle, _, bob = signed
    digest = read_metadata(bundle).manifest_sha256
    assert main(["sign", str(bundle), "--key", str(bob.path)]) == 0
    err = capsys.readouterr().err
    assert "co-signing demo 1.0.0 (sequence 1) with " + bob.signer.public_key.fingerprint in err
    assert f"manifest sha256 {digest}" in err
    carol = make_key(bundle.parent.parent / "keys", "carol")
    argv = ["sign", str(bundle), "--key", str(carol.path), "--manifest-sha256", digest, "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["name"], out["version"], out["sequence"]) == ("demo", "1.0.0", 1)
    assert out["manifest_sha256"] == digest
    assert out["signer"] == carol.signer.public_key.fingerprint
    assert len(out["signatures"]) == 3


def test_sign_refuses_a_manifest_other_than_the_one_pinned(signed, capsys) -> None:
    bundle, _, bob = signed
    before = bundle.read_bytes()
    other = hashlib.sha256(b"the bundle I reviewed").hexdigest()
    assert main(["sign", str(bundle), "--key", str(bob.path), "--manifest-sha256", other]) == 20
    assert "nothing was signed" in capsys.readouterr().err
    assert bundle.read_bytes() == before


def _fifo(path: Path) -> Path:
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


def _sparse(path: Path, size: int) -> Path:
    with open(path, "ab") as f:
        f.truncate(size)
    return path


def _sign_inputs(tmp: Path, bundle: Path, key: Path) -> dict[str, Callable[[], list[str]]]:
    def argv(target: Path, *extra: str) -> list[str]:
        return ["sign", str(target), "--key", str(key), *extra]

    def with_bundle(edit: Callable[[Path], object], *extra: str) -> Callable[[], list[str]]:
        def make() -> list[str]:
            edit(bundle)
            return argv(bundle, *extra)

        return make

    def journal(data: bytes) -> Callable[[Path], object]:
        return lambda b: journal_path(b).write_bytes(data)

    bad_types = {"format": "airlock-cosign-journal", "version": 2, "mode": [], "bundle_size": "x"}
    not_b64 = {**bad_types, "mode": "in-place", "bundle_size": 1, "manifest_sha256": "0",
               "base_region": "!!", "region": "!!", "base_region_sha256": "", "region_sha256": "",
               "archive_signature": "x"}  # fmt: skip
    return {
        "missing bundle": lambda: argv(tmp / "nope.tar"),
        "bundle is a directory": lambda: argv(tmp),
        "bundle is a fifo": lambda: argv(_fifo(tmp / "fifo.tar")),
        "empty bundle": lambda: argv(_sparse(tmp / "empty.tar", 0)),
        "random bytes": with_bundle(lambda b: b.write_bytes(os.urandom(8192))),
        "truncated bundle": with_bundle(lambda b: b.write_bytes(b.read_bytes()[:10000])),
        "sparse huge bundle": with_bundle(lambda b: _sparse(b, 1 << 36)),
        "flipped payload byte": with_bundle(
            lambda b: b.write_bytes(b.read_bytes().replace(b"echo serve", b"echo serf"))
        ),
        "binary journal": with_bundle(journal(os.urandom(512))),
        "journal of wrong types": with_bundle(journal(json.dumps(bad_types).encode())),
        "journal not base64": with_bundle(journal(json.dumps(not_b64).encode())),
        "journal is a fifo": with_bundle(lambda b: _fifo(journal_path(b))),
        "journal is a directory": with_bundle(lambda b: journal_path(b).mkdir()),
        "journal is huge": with_bundle(lambda b: _sparse(journal_path(b), 1 << 32)),
        ".tar.sig is a directory": with_bundle(
            lambda b: (Path(str(b) + ".sig").unlink(), Path(str(b) + ".sig").mkdir())
        ),
        "split index": lambda: argv(_sparse(tmp / "x.tar.parts", 10)),
        "bad --manifest-sha256": lambda: argv(bundle, "--manifest-sha256", "xyz"),
        "missing key": lambda: ["sign", str(bundle), "--key", str(tmp / "nokey")],
        "key is garbage": lambda: ["sign", str(bundle), "--key", str(_garbage(tmp / "k"))],
        "key is a directory": lambda: ["sign", str(bundle), "--key", str(tmp)],
    }


def _garbage(path: Path) -> Path:
    path.write_bytes(b"\x00\xffnot a key\n" * 10)
    return path


@pytest.mark.timeout(60)  # a FIFO read without O_NONBLOCK would hang here
@pytest.mark.parametrize("json_output", [False, True])
@pytest.mark.parametrize("name", list(_sign_inputs(Path(), Path(), Path())))
def test_sign_refuses_hostile_input_with_an_airlock_error(
    signed, tmp_path: Path, capsys, name: str, json_output: bool
) -> None:
    bundle, _, bob = signed
    argv = _sign_inputs(tmp_path / "in", bundle, bob.path)[name]
    (tmp_path / "in").mkdir()
    _expect_airlock_error(argv(), json_output, capsys)


def _expect_airlock_error(argv: list[str], json_output: bool, capsys) -> None:
    code = main([*argv, "--json"] if json_output else argv)
    captured = capsys.readouterr()
    assert code in EXIT_CODES, (code, captured.err)
    assert "Traceback" not in captured.err and "\nerror: " in "\n" + captured.err
    if json_output:
        assert json.loads(captured.out)["exit_code"] == code


@pytest.fixture
def split_parts(tmp_path: Path):
    key = make_key(tmp_path / "keys", "alice")
    stage = make_stage(tmp_path, {"models/tiny/big.bin": bytes(range(256)) * (12 * 1024)})
    packed = make_bundle(tmp_path, [key], stage=stage, out=tmp_path / "parts", split=MIB)
    assert packed.index is not None
    policy_for(tmp_path, [key])  # writes tmp_path/allowed_signers
    return packed.index, list(packed.parts), tmp_path / "allowed_signers"


def _join_inputs(tmp: Path, index: Path, parts: list[Path], allowed: Path):
    policy = ["--allowed-signers", str(allowed)]

    def argv(target: Path, *extra: str) -> list[str]:
        return ["join", str(target), "--out", str(tmp / "out"), *extra]

    def edit(change: Callable[[], object], *extra: str) -> Callable[[], list[str]]:
        def make() -> list[str]:
            change()
            return argv(index, *extra)

        return make

    text = index.read_text() if index.exists() else ""
    return {
        "missing index": lambda: argv(tmp / "nope.tar.parts"),
        "index is a directory": lambda: argv(_dir(tmp / "d.tar.parts")),
        "index is a fifo": lambda: argv(_fifo(tmp / "f.tar.parts")),
        "index is huge": lambda: argv(_sparse(tmp / "h.tar.parts", 1 << 34)),
        "index is random bytes": edit(lambda: index.write_bytes(os.urandom(4096))),
        "index without sizes": edit(
            lambda: index.write_text("".join(line + "\n" for line in text.splitlines()[5:]))
        ),
        "index names a part twice": edit(lambda: index.write_text(text.replace("0002", "0001"))),
        "index not a .parts file": lambda: argv(parts[0]),
        "out is a file": lambda: ["join", str(index), "--out", str(parts[0])],
        "missing part": edit(lambda: parts[1].unlink()),
        "sparse huge part": edit(lambda: _sparse(parts[2], 1 << 36)),
        "fifo part": edit(lambda: _fifo(parts[0])),
        "garbage index signature": edit(
            lambda: Path(str(index) + ".sig").write_bytes(os.urandom(300)), *policy
        ),
        "index signature is a fifo": edit(lambda: _fifo(Path(str(index) + ".sig")), *policy),
        "edited index": edit(lambda: index.write_text(text.replace("# size", "# size 1")), *policy),
        "policy is garbage": edit(lambda: allowed.write_bytes(os.urandom(200)), *policy),
        "policy is a fifo": edit(lambda: _fifo(allowed), *policy),
        "policy is huge": edit(lambda: _sparse(allowed, 1 << 34), *policy),
        "threshold zero": edit(lambda: None, *policy, "--threshold", "0"),
        "revoked is a directory": edit(lambda: None, *policy, "--revoked", str(tmp)),
    }


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("json_output", [False, True])
@pytest.mark.parametrize("name", list(_join_inputs(Path(), Path("x"), [], Path())))
def test_join_refuses_hostile_input_with_an_airlock_error(
    split_parts, tmp_path: Path, capsys, name: str, json_output: bool
) -> None:
    index, parts, allowed = split_parts
    (tmp_path / "in").mkdir()
    argv = _join_inputs(tmp_path / "in", index, parts, allowed)[name]
    _expect_airlock_error(argv(), json_output, capsys)
    out = tmp_path / "in" / "out"
    assert not out.exists() or list(out.iterdir()) == []
