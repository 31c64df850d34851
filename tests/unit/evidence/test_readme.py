"""The bundle's README: names what it holds, and Hub text cannot inject markup into it."""

from __future__ import annotations

from bundler.evidence.readme import plain, render_bundle_readme


def test_names_the_bundle_models_and_the_commands_with_the_right_file_names() -> None:
    text = render_bundle_readme(
        name="demo",
        version="1.2.0",
        sequence=4,
        expires="2027-05-26T00:00:00Z",
        models=[{"name": "tiny", "repo": "org/tiny", "commit": "a" * 40, "license": "mit"}],
    )
    assert text.startswith("# demo 1.2.0: an airlock bundle (sequence 4)\n")
    assert f"- `tiny`: org/tiny at commit `{'a' * 40}`, license mit\n" in text
    assert "-n airlock-archive-v1 \\\n  -s demo-1.2.0.tar.sig < demo-1.2.0.tar" in text
    assert "-n airlock-manifest-v1" in text
    assert "tar -xf demo-1.2.0.tar -C ctl SHA256SUMS controller playbooks runtime templates" in text
    assert "sha256sum --check --ignore-missing --quiet --strict SHA256SUMS" in text
    assert "(cd ctl && python3 -m runtime.controller /opt/airlock-controller)" in text
    assert "python3 -m venv" not in text  # needs python3-venv, absent on many Debian hosts
    assert "-e airlock_threshold=1" in text


def test_hostile_license_text_from_the_hub_cannot_inject_markup() -> None:
    text = render_bundle_readme(
        name="demo",
        version="1",
        sequence=1,
        expires="x",
        models=[{"name": "tiny", "repo": "org/tiny", "commit": "c", "license": "mit`<img src=x>"}],
    )
    assert "<img" not in text
    assert "license mit??img src?x?" in text
    assert plain("a-b_c.d/e:f@g+h") == "a-b_c.d/e:f@g+h"
