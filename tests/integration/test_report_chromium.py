"""The reviewer's report in a real headless Chromium: it renders, offline, showing the facts."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bundler.cli.main import main
from bundler.project.init import allowed_signers_line
from runtime.bundle import read_metadata
from tests.evidence_fixtures import COMMIT
from tests.report_fixtures import packed_bundle

WIDTH, HEIGHT = 1200, 1600


@dataclass(frozen=True)
class Page:
    html: Path
    name: str
    version: str
    manifest_sha256: str
    facts: tuple[str, ...]


def report_page(tmp_path: Path) -> Page:
    """``airlock report`` on a real signed bundle, checked against a real trust file."""
    bundle, (pub,) = packed_bundle(tmp_path, ("release",))
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(allowed_signers_line("release@example.org", pub) + "\n")
    html = tmp_path / "report.html"
    argv = ["report", str(bundle), "--out", str(html), "--allowed-signers", str(allowed)]
    assert main(argv) == 0
    meta = read_metadata(bundle)
    return Page(
        html=html,
        name="demo",
        version="1.0.0",
        manifest_sha256=meta.manifest_sha256,
        facts=(
            COMMIT,
            pub.fingerprint,
            "release@example.org",
            "verified",
            "machine-learning-model",
            "ssh-keygen -Y verify",
            "sha256sum -c --strict SHA256SUMS",
        ),
    )


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    assert exe, "chromium is missing: run bash .ci/setup (it installs the Debian package)"
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_report_renders_in_chromium_with_the_key_facts(tmp_path: Path) -> None:
    page = report_page(tmp_path)
    dom = chromium(tmp_path, "--dump-dom", page.html.as_uri()).stdout
    assert f"Bundle review: {page.name} {page.version}" in dom
    assert page.manifest_sha256 in dom
    for fact in page.facts:
        assert fact in dom, f"the rendered page lacks {fact!r}"
    assert "No findings" in dom
    # Nothing executable and nothing fetched: the page works on an offline review machine.
    assert "<script" not in dom and "<link" not in dom


def test_report_screenshot_is_a_full_non_blank_page(tmp_path: Path) -> None:
    page = report_page(tmp_path)
    shot = tmp_path / "report.png"
    chromium(
        tmp_path, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", page.html.as_uri()
    )
    with Image.open(shot) as img:
        assert img.size == (WIDTH, HEIGHT)
        rgb = img.convert("RGB")
        colors = rgb.getcolors(maxcolors=1 << 20) or []
        # A blank or unstyled page has a handful of colours; the styled report has the dark
        # header, the findings box and anti-aliased text.
        assert len(colors) > 50
        header = rgb.getpixel((WIDTH // 2, 5))
        assert header == (0x12, 0x26, 0x3A), f"header colour {header}: the inline CSS did not apply"
