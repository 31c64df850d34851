"""The report's stock-tool commands really re-check a bundle with OpenSSH and coreutils."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bundler.errors import TrustError
from bundler.evidence.report import write_report
from bundler.project.init import allowed_signers_line
from tests.report_fixtures import packed_bundle


def _run_all(commands: tuple[tuple[str, str], ...], cwd: Path) -> list[tuple[str, int, str]]:
    results = []
    for title, cmd in commands:
        proc = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {cmd}"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        results.append((title, proc.returncode, proc.stdout + proc.stderr))
    return results


def _station(tmp_path: Path) -> tuple[Path, Path, tuple[tuple[str, str], ...]]:
    """A transfer station dir holding the bundle, its .sig and the site's allowed_signers."""
    bundle, (pub,) = packed_bundle(tmp_path, ("release",))
    station = tmp_path / "station"
    station.mkdir()
    for f in (bundle, Path(f"{bundle}.sig")):
        (station / f.name).write_bytes(f.read_bytes())
    allowed = station / "allowed_signers"
    allowed.write_text(allowed_signers_line("release@example.org", pub) + "\n")
    report = write_report(bundle, tmp_path / "report.html", allowed_signers=allowed)
    assert report.flags == ()
    return station, station / bundle.name, report.commands


def test_every_command_on_the_page_passes_on_the_genuine_bundle(tmp_path: Path) -> None:
    station, _, commands = _station(tmp_path)
    assert any("airlock-archive-v1" in c for _, c in commands)
    assert any("SHA256SUMS" in c for _, c in commands)
    for title, rc, out in _run_all(commands, station):
        assert rc == 0, f"{title}: exit {rc}\n{out}"


def test_commands_catch_a_payload_byte_flipped_in_transit(tmp_path: Path) -> None:
    station, bundle, commands = _station(tmp_path)
    data = bytearray(bundle.read_bytes())
    at = data.index(b'"bomFormat"')  # inside evidence/sbom.cdx.json, a payload member
    data[at + 1] ^= 0x01
    bundle.write_bytes(bytes(data))
    results = {title: rc for title, rc, _ in _run_all(commands, station)}
    archive = next(t for t in results if t.startswith("Whole archive"))
    sums = next(t for t in results if "SHA256SUMS" in t or t.startswith("Every payload"))
    assert results[archive] != 0
    assert results[sums] != 0
    # The manifest itself was not touched: its signature still verifies, as it should.
    manifest_sigs = [t for t in results if t.startswith("Manifest signature")]
    assert manifest_sigs and all(results[t] == 0 for t in manifest_sigs)


def test_report_refuses_an_unreadable_trust_file(tmp_path: Path) -> None:
    bundle, _ = packed_bundle(tmp_path, ("release",))
    with pytest.raises(TrustError, match="missing"):
        write_report(bundle, tmp_path / "r.html", allowed_signers=tmp_path / "missing")
    assert not (tmp_path / "r.html").exists()
