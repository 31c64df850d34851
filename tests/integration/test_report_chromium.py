"""The reviewer's report in a real headless Chromium: it renders, offline, showing the facts."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bundler.report import Signer, build_report, render_html

WIDTH, HEIGHT = 1200, 1600


@dataclass(frozen=True)
class Page:
    html: Path
    name: str
    version: str
    manifest_sha256: str
    facts: tuple[str, ...]


def report_page(tmp_path: Path) -> Page:
    commit = "0123456789abcdef0123456789abcdef01234567"
    manifest = {
        "name": "demo",
        "version": "1.2.3",
        "sequence": 4,
        "created": "2026-11-27T00:00:00Z",
        "expires": "2027-05-26T00:00:00Z",
        "components": {
            "models": {
                "type": "model",
                "properties": {
                    "models": [
                        {
                            "name": "tiny",
                            "repo": "org/<script>alert(1)</script>",
                            "commit": commit,
                            "license": "llama3",
                            "license_permissive": False,
                            "gated": True,
                            "gguf": {"architecture": "llama", "quantization": "F16"},
                        }
                    ]
                },
            },
            "engine": {"type": "runtime", "properties": {"cpu_variants": ["x64", "haswell"]}},
        },
        "files": [
            {"path": "models/tiny/tiny.gguf", "size": 4096, "sha256": "ab" * 32,
             "mode": "0644", "component": "models"},
        ],
    }  # fmt: skip
    signer = Signer(
        member="airlock/signatures/k1.sig",
        fingerprint="SHA256:Zm9vYmFyZm9vYmFy",
        principals=("release@example.org",),
        status="verified",
        ok=True,
    )
    report = build_report(
        manifest,
        manifest_sha256="cd" * 32,
        bundle_file="demo-1.2.3.tar",
        signers=[signer],
        trust_checked=True,
        sbom_summary={"components": 3},
    )
    html = tmp_path / "report.html"
    html.write_text(render_html(report), encoding="utf-8")
    return Page(
        html=html,
        name="demo",
        version="1.2.3",
        manifest_sha256="cd" * 32,
        facts=(
            commit,
            "ab" * 32,
            "SHA256:Zm9vYmFyZm9vYmFy",
            "model tiny comes from a gated Hub repository",
            "ssh-keygen -Y verify",
            "haswell",
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
    # Hostile text from the Hub arrives as text, never as markup the browser built.
    assert "<script" not in dom


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
