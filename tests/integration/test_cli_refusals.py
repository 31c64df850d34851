"""No crafted input ends in a traceback or in exit code 1 (the unclassified failure): every
refusal by ``airlock verify``, ``unpack``, ``inspect``, ``join`` and ``python3 -m
runtime.unpack`` is an AirlockError subclass with its own exit code and message."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundler.bundle.split import write_parts
from bundler.cli.main import main
from bundler.errors import AirlockError
from runtime.bundle import read_metadata
from runtime.unpack import main as unpack_main
from tests.bundlekit import (
    craft_bundle,
    make_bundle,
    make_key,
    manifest_of,
    policy_for,
)
from tests.fuzzkit import Base, mutate

EXIT_CODES = {0, 2, 10, 11, 12, 13, 20, 21, 60}


def run_all(path: Path, work: Path, allowed: Path, capsys: pytest.CaptureFixture[str]) -> set[int]:
    """Every reader on ``path``; returns the exit codes (asserting none is 1 or unknown)."""
    work.mkdir(parents=True, exist_ok=True)
    codes = {
        main(["verify", str(path), "--allowed-signers", str(allowed)]),
        main(["unpack", str(path), str(work / "u"), "--allowed-signers", str(allowed)]),
        main(["inspect", str(path)]),
        main(["inspect", str(path), "--allowed-signers", str(allowed), "--json"]),
    }
    if path.name.endswith(".parts"):
        codes.add(main(["join", str(path), "--out", str(work / "joined")]))
        codes.add(
            main(["join", str(path), "--out", str(work / "j2"), "--allowed-signers", str(allowed)])
        )
    else:
        sha = _manifest_sha(path)
        codes.add(unpack_main([str(path), str(work / "h"), "--manifest-sha256", sha]))
        codes.add(
            unpack_main([str(path), str(work / "h2"), "--manifest-sha256", "0" * 64, "--json"])
        )
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert 1 not in codes and codes <= EXIT_CODES, codes
    return codes


def _manifest_sha(path: Path) -> str:
    """The digest a controller would have verified: that of the manifest inside, if any."""
    try:
        return read_metadata(path, collect_signature_problems=True).manifest_sha256
    except (AirlockError, OSError):
        return "0" * 64


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("refusals")
    alice = make_key(root / "keys", "alice")
    allowed = root / "allowed_signers"
    policy_for(root, [alice])  # writes root/allowed_signers
    good = make_bundle(root, [alice]).path
    return root, alice, allowed, good


def _crafted(fields: dict) -> Callable[[Path, object, Path], Path]:
    def build(root: Path, alice: object, good: Path) -> Path:
        files = {"README.md": b"hi\n", "models/m.bin": b"w"}
        out = root / "crafted.tar"
        payload = [(p, files[p], 0o644) for p in sorted(files)]
        craft_bundle(out, manifest_of(files, **fields), payload, [alice])  # type: ignore[list-item]
        return out

    return build


def _bytes(change: Callable[[bytes], bytes]) -> Callable[[Path, object, Path], Path]:
    def build(root: Path, alice: object, good: Path) -> Path:
        out = root / "changed.tar"
        out.write_bytes(change(good.read_bytes()))
        return out

    return build


def _nothing(root: Path, alice: object, good: Path) -> Path:
    return root / "no-such-bundle.tar"


def _directory(root: Path, alice: object, good: Path) -> Path:
    (root / "a-directory.tar").mkdir()
    return root / "a-directory.tar"


def _parts(damage: str) -> Callable[[Path, object, Path], Path]:
    def build(root: Path, alice, good: Path) -> Path:
        parts = root / "parts"
        parts.mkdir()
        index = write_parts(good, parts / good.name, 4096, signer=alice.signer, region=b"")
        if damage == "missing part":
            index.parts[1].unlink()
        elif damage == "garbage index":
            index.index.write_bytes(b"not an index\n")
        elif damage == "missing index":
            index.index.unlink()
        elif damage == "missing index signature":
            index.signature_path.unlink()
        elif damage == "part is a directory":
            index.parts[0].unlink()
            index.parts[0].mkdir()
        return index.index

    return build


CORPUS = {
    "empty file": _bytes(lambda d: b""),
    "not a tar": _bytes(lambda d: b"PK\x03\x04" + d[:2000]),
    "truncated": _bytes(lambda d: d[: len(d) // 2]),
    "trailing data": _bytes(lambda d: d + b"x"),
    "flipped header": _bytes(lambda d: d[:300] + b"\xff" + d[301:]),
    "impossible date": _crafted({"created": "2026-02-30T00:00:00Z"}),
    "leap second": _crafted({"expires": "2030-06-30T23:59:60Z"}),
    "escape in name": _crafted({"name": "x\x1b[2J"}),
    "huge sequence": _crafted({"sequence": 10**30}),
    "float": _crafted({"sequence": 1.5}),
    "traversal version": _crafted({"version": "../../x"}),
    "no such file": _nothing,
    "a directory": _directory,
    "split intact": _parts("none"),
    "split missing part": _parts("missing part"),
    "split garbage index": _parts("garbage index"),
    "split missing index": _parts("missing index"),
    "split missing index signature": _parts("missing index signature"),
    "split part is a directory": _parts("part is a directory"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_crafted_inputs_end_in_a_classified_refusal(env, tmp_path, capsys, case) -> None:
    _, alice, allowed, good = env
    work = tmp_path / "case"
    work.mkdir()
    path = CORPUS[case](work, alice, good)
    codes = run_all(path, tmp_path / "out", allowed, capsys)
    if case != "split intact":
        assert codes - {0}, f"{case} was accepted by every reader"


def test_the_host_unpack_process_reports_without_a_traceback(env, tmp_path) -> None:
    _, alice, _, good = env
    bad = _crafted({"created": "2026-02-30T00:00:00Z"})(tmp_path, alice, good)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.unpack",
            str(bad),
            str(tmp_path / "r"),
            "--manifest-sha256",
            "0" * 64,
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 20 and "Traceback" not in out.stderr, out.stderr


_cases = itertools.count()


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzzed_bundles_end_in_a_classified_refusal_on_the_command_line(
    tmp_path_factory: pytest.TempPathFactory, capsys, data: st.DataObject
) -> None:
    root = tmp_path_factory.mktemp("cli-fuzz")
    base = _base(tmp_path_factory)
    _kind, tar = mutate(data.draw, base)
    bundle = root / "demo-1.0.0.tar"
    bundle.write_bytes(tar)
    try:
        run_all(bundle, root / "out", base.root / "allowed", capsys)
    finally:
        shutil.rmtree(root, ignore_errors=True)


_BASE: list[Base] = []


def _base(factory: pytest.TempPathFactory) -> Base:
    if not _BASE:
        base = Base.make(factory.mktemp("cli-fuzz-base"))
        policy_for(base.root, [base.alice, base.bob])
        (base.root / "allowed_signers").rename(base.root / "allowed")
        _BASE.append(base)
    return _BASE[0]


def test_the_corpus_covers_an_accepted_bundle(env, tmp_path, capsys) -> None:
    _, _, allowed, good = env
    # Accepted everywhere, except by the host told to expect another manifest (20).
    assert run_all(good, tmp_path / "out", allowed, capsys) == {0, 20}
