"""runtime.release: state, sequence floor, atomic switch, drift, discard, rollback, the gate."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import release
from runtime.errors import InstallError, IntegrityError, RollbackError


@pytest.fixture
def layout(tmp_path: Path) -> release.Layout:
    return release.Layout(
        root=str(tmp_path / "opt"), config=str(tmp_path / "etc"), state=str(tmp_path / "var")
    )


def _install(layout: release.Layout, version: str, files: dict[str, bytes], seq: int) -> str:
    """Lay out a release as unpack would and record it as install.yml does; returns digest."""
    base = Path(layout.release_dir(version))
    entries = []
    for rel, data in sorted(files.items()):
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
        entries.append({"path": rel, "sha256": hashlib.sha256(data).hexdigest()})
    manifest = json.dumps({"files": entries, "version": version}, sort_keys=True).encode()
    digest = hashlib.sha256(manifest).hexdigest()
    release.atomic_write(layout.manifest_file(digest), manifest)
    state = release.load_state(layout)
    release.switch_current(layout, version)
    release.record_release(state, version=version, digest=digest, sequence=seq, name="demo")
    release.save_state(layout, state)
    return digest


def test_rejects_rollback_below_floor() -> None:
    state = release.empty_state()
    state["floor"] = 5
    with pytest.raises(RollbackError) as e:
        release.check_sequence(state, 4, allow_downgrade=False)
    assert e.value.exit_code == 13
    assert "airlock_allow_downgrade" in (e.value.hint or "")


def test_downgrade_needs_the_explicit_flag_and_is_reported() -> None:
    state = release.empty_state()
    state["floor"] = 5
    assert "DOWNGRADE" in release.check_sequence(state, 4, allow_downgrade=True)
    assert "at or above" in release.check_sequence(state, 5, allow_downgrade=False)


def test_same_version_from_a_different_manifest_is_refused() -> None:
    state = release.empty_state()
    release.record_release(state, version="1.0", digest="a" * 64, sequence=1, name="d")
    with pytest.raises(InstallError, match="different manifest"):
        release.record_release(state, version="1.0", digest="b" * 64, sequence=2, name="d")


def test_switch_is_a_symlink_replaced_atomically(layout: release.Layout) -> None:
    _install(layout, "1.0", {"a.txt": b"one"}, 1)
    _install(layout, "2.0", {"a.txt": b"two"}, 2)
    assert os.readlink(layout.current) == "releases/2.0"
    assert Path(layout.current, "a.txt").read_bytes() == b"two"
    assert not [p for p in os.listdir(layout.root) if ".tmp" in p]
    state = release.load_state(layout)
    assert state["floor"] == 2 and state["current"] == "2.0"
    assert release.previous_release(state) == "1.0"


def test_switch_refuses_a_missing_release(layout: release.Layout) -> None:
    with pytest.raises(InstallError, match="does not exist"):
        release.switch_current(layout, "9.9")


def test_rejects_release_names_that_escape_the_releases_dir(layout: release.Layout) -> None:
    for bad in ("..", "../x", ".hidden", ""):
        with pytest.raises(release.UsageError):
            layout.release_dir(bad)


def test_verify_reports_every_modified_missing_and_extra_file(layout: release.Layout) -> None:
    _install(layout, "1.0", {"a.txt": b"a", "b/c.txt": b"c", "d.txt": b"d"}, 1)
    base = Path(layout.release_dir("1.0"))
    (base / "a.txt").write_bytes(b"tampered")
    (base / "d.txt").unlink()
    (base / "implant.so").write_bytes(b"x")
    drift = release.find_drift(layout, release.load_state(layout), "1.0")
    by_file = {Path(d["file"]).name: d for d in drift}
    assert set(by_file) == {"a.txt", "d.txt", "implant.so"}
    assert by_file["a.txt"]["actual"] == hashlib.sha256(b"tampered").hexdigest()
    assert by_file["a.txt"]["expected"] == hashlib.sha256(b"a").hexdigest()
    assert by_file["d.txt"]["actual"] == "missing"


def test_verify_catches_a_swapped_manifest_copy(layout: release.Layout) -> None:
    digest = _install(layout, "1.0", {"a.txt": b"a"}, 1)
    Path(layout.manifest_file(digest)).write_bytes(b'{"files": []}')
    drift = release.find_drift(layout, release.load_state(layout), "1.0")
    assert drift and drift[0]["expected"] == digest


def test_verify_cli_fails_with_integrity_exit_code(
    layout: release.Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    _install(layout, "1.0", {"a.txt": b"a"}, 1)
    Path(layout.release_dir("1.0"), "a.txt").write_bytes(b"b")
    argv = ["--root", layout.root, "--config", layout.config, "--state", layout.state, "verify"]
    assert release.main(argv) == IntegrityError.exit_code
    out = json.loads(capsys.readouterr().out)
    assert out["failed"] and "a.txt" in out["problems"][0]


def test_discard_after_a_failed_first_install_leaves_nothing(layout: release.Layout) -> None:
    Path(layout.release_dir("1.0")).mkdir(parents=True)
    Path(layout.config).mkdir()
    removed = release.discard(layout, "1.0", first_install=True, fresh=True, previous=None)
    assert removed
    for path in (layout.root, layout.config, layout.state):
        assert not os.path.exists(path)


def test_discard_after_switch_restores_previous_release_and_floor(
    layout: release.Layout,
) -> None:
    _install(layout, "1.0", {"a": b"1"}, 1)
    _install(layout, "2.0", {"a": b"2"}, 7)
    release.discard(layout, "2.0", first_install=False, fresh=True, previous="1.0")
    state = release.load_state(layout)
    assert state["current"] == "1.0" and "2.0" not in state["releases"]
    assert state["floor"] == 1
    assert os.readlink(layout.current) == "releases/1.0"
    assert not os.path.exists(layout.release_dir("2.0"))
    assert os.path.isdir(layout.release_dir("1.0"))


def test_rollback_to_previous_and_named(layout: release.Layout) -> None:
    _install(layout, "1.0", {"a": b"1"}, 1)
    _install(layout, "2.0", {"a": b"2"}, 2)
    assert release.rollback(layout, None)["current"] == "1.0"
    assert os.readlink(layout.current) == "releases/1.0"
    assert release.rollback(layout, "2.0")["changed"]
    assert release.rollback(layout, "2.0")["changed"] is False
    with pytest.raises(InstallError, match="not installed"):
        release.rollback(layout, "3.0")


def test_rollback_without_a_previous_release_explains(layout: release.Layout) -> None:
    _install(layout, "1.0", {"a": b"1"}, 1)
    with pytest.raises(InstallError, match="no previous release"):
        release.rollback(layout, None)


def _bundle(path: Path, manifest: bytes, first: str = "airlock/manifest.json") -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(first)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))


def test_manifest_copy_is_checked_against_the_verified_digest(tmp_path: Path) -> None:
    data = b'{"files":[]}'
    _bundle(tmp_path / "b.tar", data)
    assert release.read_manifest(str(tmp_path / "b.tar"), hashlib.sha256(data).hexdigest()) == data
    with pytest.raises(IntegrityError, match="controller verified"):
        release.read_manifest(str(tmp_path / "b.tar"), "0" * 64)


def test_rejects_a_bundle_that_does_not_start_with_the_manifest(tmp_path: Path) -> None:
    _bundle(tmp_path / "b.tar", b"x", first="models/evil.gguf")
    with pytest.raises(IntegrityError, match="does not start with"):
        release.read_manifest(str(tmp_path / "b.tar"), "0" * 64)


def test_zip_self_is_byte_stable(tmp_path: Path) -> None:
    assert release.zip_self(str(tmp_path / "r.zip")) is True
    first = (tmp_path / "r.zip").read_bytes()
    assert release.zip_self(str(tmp_path / "r.zip")) is False
    assert (tmp_path / "r.zip").read_bytes() == first


class _Server(http.server.BaseHTTPRequestHandler):
    completion_status = 200

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply(200, {"status": "ok"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = {"choices": [{"text": " Paris"}], "usage": {"completion_tokens": 2}}
        self._reply(self.completion_status, body)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_health_and_completion_pass_against_a_serving_server(server: str) -> None:
    release.wait_healthy(server, timeout=5)
    assert release.check_completion(server, timeout=5) == " Paris"


def test_health_gate_fails_when_the_server_dies(server: str) -> None:
    with pytest.raises(InstallError, match="exited before it became healthy"):
        release.wait_healthy("http://127.0.0.1:9", timeout=5, alive=lambda: False)


def test_health_gate_times_out_with_the_last_error() -> None:
    with pytest.raises(InstallError, match="did not answer 200"):
        release.wait_healthy("http://127.0.0.1:9", timeout=0.6)


def test_health_gate_fails_on_a_broken_completion(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Server, "completion_status", 500)
    with pytest.raises(InstallError, match="completion failed"):
        release.check_completion(server, timeout=5)
