"""The bundle commands end to end with stock tools: ssh-keygen, GNU tar, sha256sum."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.cli.main import main
from tests.bundlekit import COMPONENTS, EPOCH, make_stage

REPO = Path(__file__).resolve().parents[2]


def keygen(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key


@pytest.fixture
def env(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    alice = keygen(tmp_path / "keys", "alice")
    bob = keygen(tmp_path / "keys", "bob")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(
        f"alice@site {(tmp_path / 'keys/alice.pub').read_text()}"
        f"bob@site {(tmp_path / 'keys/bob.pub').read_text()}"
    )
    stage = make_stage(tmp_path)
    return tmp_path, alice, bob, allowed, stage


def run_json(args: list[str], capsys) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def pack_args(tmp: Path, stage: Path, key: Path, *extra: str) -> list[str]:
    return [
        "pack", str(stage), "--name", "demo", "--version", "1.0.0", "--key", str(key),
        "--out", str(tmp / "out"), "--expires", "2036-01-01", *extra,
    ]  # fmt: skip


def test_transfer_station_checks_with_stock_tools(env, capsys) -> None:
    tmp, alice, _, allowed, stage = env
    packed = run_json(pack_args(tmp, stage, alice), capsys)
    tar = Path(packed["path"])
    # Whole-archive signature: ssh-keygen, no airlock.
    with open(tar, "rb") as f:
        out = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "alice@site",
             "-n", "airlock-archive-v1", "-s", packed["signature"]],
            stdin=f, capture_output=True, text=True,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Good" in out.stdout
    # GNU tar lists and extracts it; sha256sum -c checks every payload file.
    listing = subprocess.run(["tar", "--list", "-f", str(tar)], check=True, capture_output=True)
    assert listing.stdout.decode().splitlines()[0] == "airlock/manifest.json"
    x = tmp / "x"
    x.mkdir()
    subprocess.run(["tar", "-xf", str(tar), "-C", str(x)], check=True)
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=x, capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    assert sums.stdout.count(": OK") == 6
    # The manifest signature also verifies with ssh-keygen.
    sig = next((x / "airlock/signatures").iterdir())
    with open(x / "airlock/manifest.json", "rb") as f:
        out = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "alice@site",
             "-n", "airlock-manifest-v1", "-s", str(sig)],
            stdin=f, capture_output=True, text=True,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr
    # A flipped payload byte fails sha256sum for that file only.
    (x / "README.md").write_bytes(b"# demo bundlf\n")
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=x, capture_output=True, text=True)
    assert sums.returncode == 1 and "README.md: FAILED" in sums.stdout


def test_pack_is_deterministic_through_the_cli(env, capsys) -> None:
    tmp, alice, _, _, stage = env
    a = run_json(pack_args(tmp, stage, alice), capsys)
    first = Path(a["path"]).read_bytes()
    Path(a["path"]).unlink()
    b = run_json(pack_args(tmp, stage, alice), capsys)
    assert Path(b["path"]).read_bytes() == first


def test_cosign_then_threshold_two_verify_unpack_and_inspect(env, capsys) -> None:
    tmp, alice, bob, allowed, stage = env
    comps = tmp / "components.json"
    comps.write_text(json.dumps(COMPONENTS))
    tar = Path(run_json(pack_args(tmp, stage, alice, "--components", str(comps)), capsys)["path"])
    policy = ["--allowed-signers", str(allowed), "--threshold", "2"]
    assert main(["verify", str(tar), *policy]) == 11  # TrustError: one of two
    assert "1 of the required 2" in capsys.readouterr().err
    signed = run_json(["sign", str(tar), "--key", str(bob)], capsys)
    assert signed["in_place"] and len(signed["signatures"]) == 2
    with open(tar, "rb") as f:  # the transfer station's check now names the co-signer
        out = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "bob@site",
             "-n", "airlock-archive-v1", "-s", signed["signature"]],
            stdin=f, capture_output=True, text=True,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = run_json(["verify", str(tar), *policy], capsys)
    assert sorted(s["principals"][0] for s in report["signers"]) == ["alice@site", "bob@site"]
    assert report["files"] == 7 and report["name"] == "demo"
    info = run_json(["inspect", str(tar)], capsys)
    assert [s["verified"] for s in info["signers"]] == [None, None]
    assert info["components"]["models"]["type"] == "model"
    assert info["licenses"] == [
        {"model": "tiny", "license": "apache-2.0", "permissive": None, "gated": None}
    ]
    checked = run_json(["inspect", str(tar), *policy], capsys)
    assert [s["verified"] for s in checked["signers"]] == [True, True]
    dest = tmp / "releases" / "1.0.0"
    dest.parent.mkdir()
    old_umask = os.umask(0o077)
    try:
        done = run_json(["unpack", str(tar), str(dest), *policy], capsys)
    finally:
        os.umask(old_umask)
    assert done["files"] == 7
    assert (dest / "models/tiny").stat().st_mode & 0o777 == 0o755
    assert dest.stat().st_mode & 0o777 == 0o755
    assert (dest / "engine/bin/llama-server").stat().st_mode & 0o777 == 0o755


def test_split_and_join_through_the_cli(env, capsys) -> None:
    tmp, alice, _, allowed, stage = env
    (stage / "models/tiny/big.bin").write_bytes(os.urandom(3 << 20))
    packed = run_json(pack_args(tmp, stage, alice, "--split", "1M"), capsys)
    index = Path(packed["path"])
    assert index.name == "demo-1.0.0.tar.parts" and len(packed["parts"]) == 4
    check = subprocess.run(["sha256sum", "-c", index.name], cwd=index.parent, capture_output=True)
    assert check.returncode == 0
    policy = ["--allowed-signers", str(allowed)]
    assert run_json(["verify", str(index), *policy], capsys)["files"] == 8
    Path(packed["parts"][2]).write_bytes(b"damaged in transit")
    assert main(["join", str(index), "--out", str(tmp / "j"), *policy]) == 20
    err = capsys.readouterr().err
    assert "demo-1.0.0.tar.part-0003: 18 bytes where the index lists 1048576" in err
    assert "part-0001" not in err


def test_host_unpack_module_runs_with_plain_python(env, capsys) -> None:
    tmp, alice, _, _, stage = env
    packed = run_json(pack_args(tmp, stage, alice), capsys)
    cmd = [sys.executable, "-I", "-m", "runtime.unpack", packed["path"], str(tmp / "r")]
    ok = subprocess.run(
        [*cmd, "--manifest-sha256", packed["manifest_sha256"], "--json"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["files"] == 7
    wrong = subprocess.run(
        [*cmd[:-1], str(tmp / "r2"), "--manifest-sha256", "f" * 64],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert wrong.returncode == 20 and "expected ffff" in wrong.stderr
    assert not (tmp / "r2").exists()


def test_verify_without_a_readable_policy_fails_closed(env, capsys) -> None:
    tmp, alice, _, _, stage = env
    tar = run_json(pack_args(tmp, stage, alice), capsys)["path"]
    assert main(["verify", tar, "--allowed-signers", str(tmp / "missing")]) == 11
    assert "missing" in capsys.readouterr().err


def test_pax_size_records_round_trip_through_gnu_tar(env, capsys, monkeypatch) -> None:
    """Members of 8 GiB or more carry a PAX size; exercise that path on small files by
    lowering the threshold, and check GNU tar, sha256sum and airlock all agree."""
    import runtime.tarformat as tarformat

    tmp, alice, _, allowed, stage = env
    monkeypatch.setattr(tarformat, "MAX_OCTAL_SIZE", 1000)  # the writer's and readers' one rule
    tar = Path(run_json(pack_args(tmp, stage, alice), capsys)["path"])
    assert b"size=179200\n" in tar.read_bytes()  # models/tiny/tiny.gguf
    x = tmp / "x"
    x.mkdir()
    subprocess.run(["tar", "-xf", str(tar), "-C", str(x)], check=True)
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=x, capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout
    assert run_json(["verify", str(tar), "--allowed-signers", str(allowed)], capsys)["files"] == 7


def test_pack_fsync_flushes_the_bundle_and_gives_the_same_bytes(env, capsys, monkeypatch) -> None:
    tmp, alice, _, _allowed, stage = env
    plain = run_json(pack_args(tmp, stage, alice), capsys)
    plain_bytes = Path(plain["path"]).read_bytes()
    flushed: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    durable = run_json(pack_args(tmp, stage, alice, "--fsync"), capsys)
    assert Path(durable["path"]).read_bytes() == plain_bytes
    assert any(Path(p).name.startswith(".demo-1.0.0.tar.") and ".sig" not in p for p in flushed)


def test_rejects_pack_that_is_expired_at_birth_under_a_pinned_clock(
    env, capsys, monkeypatch
) -> None:
    # A reproducible build pins the clock years back: the default 180d counts from it.
    tmp, alice, _, _, stage = env
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # 2023-11-14
    args = ["pack", str(stage), "--name", "demo", "--version", "1", "--key", str(alice)]
    assert main([*args, "--out", str(tmp / "out")]) == 2
    err = capsys.readouterr().err
    assert "2024-05-12T22:13:20Z" in err  # the computed expiry
    assert "2023-11-14T22:13:20Z" in err  # the pinned creation time it counted from
    assert "--expires DATE" in err and "SOURCE_DATE_EPOCH" in err
    assert not (tmp / "out").exists() or not any((tmp / "out").iterdir())
    # The same pinned clock with a date after today packs.
    assert main([*args, "--out", str(tmp / "out"), "--expires", "2036-01-01", "--json"]) == 0
