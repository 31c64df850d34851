"""runtime.libc: the host's glibc and libstdc++ levels, and the refusal of an engine they
cannot load, on RHEL-8-like and RHEL-9-like fixture hosts and on this machine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from runtime import libc, release
from runtime import selection as s
from runtime.detect import detect
from runtime.errors import HostError, HostLibraryError
from runtime.layout import Layout
from tests.unit.runtime.test_selection import ALL_X86, manifest

HOSTS = Path(__file__).resolve().parents[2] / "fixtures" / "hosts"
RHEL8 = HOSTS / "rhel8-like-glibc-2.28" / "root"
RHEL9 = HOSTS / "rhel9-like-glibc-2.34" / "root"


def engine_manifest(glibc_min: Optional[str], glibcxx_min: Optional[str]) -> Dict[str, Any]:
    return manifest(variants=ALL_X86, extra={"glibc_min": glibc_min, "glibcxx_min": glibcxx_min})


def test_fixture_hosts_report_their_glibc_and_libstdcxx() -> None:
    assert detect(RHEL8)["libc"] == {
        "glibc": "2.28",
        "glibc_source": "/usr/lib64/libc.so.6",
        "glibcxx": "3.4.25",
        "glibcxx_source": "/usr/lib64/libstdc++.so.6",
    }
    f = detect(RHEL9)["libc"]
    assert (f["glibc"], f["glibcxx"]) == ("2.34", "3.4.29")


def test_live_host_reads_glibc_from_confstr_and_agrees_with_the_banner() -> None:
    f = detect(Path("/"))["libc"]
    assert f["glibc_source"] == "confstr CS_GNU_LIBC_VERSION"
    assert f["glibc"] == os.confstr("CS_GNU_LIBC_VERSION").split()[1]
    # the banner of this machine's real libc.so.6 says the same
    path = next(
        Path("/", d, "libc.so.6") for d in libc.LIB_DIRS if Path("/", d, "libc.so.6").is_file()
    )
    assert libc.glibc_from_banner(path.read_bytes()) == f["glibc"]


def test_a_tree_without_glibc_reports_none_and_a_warning(tmp_path: Path) -> None:
    warnings: list[str] = []
    assert libc.libc_facts(tmp_path, live=False, warnings=warnings)["glibc"] is None
    assert warnings and "no glibc found" in warnings[0]


@pytest.mark.parametrize(
    "text, expected",
    [("glibc 2.28", "2.28"), ("glibc 2.36\n", "2.36"), ("", None), ("musl 1.2", None)],
)
def test_parse_confstr(text: str, expected: Optional[str]) -> None:
    assert libc.parse_confstr(text) == expected


def test_versions_compare_numerically_not_as_text() -> None:
    assert libc.glibcxx_from_library(b"GLIBCXX_3.4.9\0GLIBCXX_3.4.30\0GLIBCXX_3.4\0") == "3.4.30"
    assert libc.engine_problems({"glibc": "2.9"}, "2.28", None)  # 2.9 < 2.28


def test_rhel8_refuses_an_engine_built_on_debian_12_naming_both_versions() -> None:
    """The engine gcc builds on Debian 12 needs GLIBC_2.34 and GLIBCXX_3.4.30 (issue 14)."""
    with pytest.raises(HostLibraryError) as e:
        s.select(detect(RHEL8), engine_manifest("2.34", "3.4.30"))
    assert e.value.exit_code == 51
    assert isinstance(e.value, HostError)
    assert list(e.value.problems) == [
        "the engine needs glibc 2.34 or newer; this host has glibc 2.28",
        "the engine needs libstdc++ with GLIBCXX_3.4.30; this host's libstdc++ stops at "
        "GLIBCXX_3.4.25",
    ]
    assert "Supported hosts" in (e.value.hint or "")


def test_stock_rhel9_has_the_glibc_but_not_the_libstdcxx_of_a_debian_12_build() -> None:
    with pytest.raises(HostLibraryError) as e:
        s.select(detect(RHEL9), engine_manifest("2.34", "3.4.30"))
    assert list(e.value.problems) == [
        "the engine needs libstdc++ with GLIBCXX_3.4.30; this host's libstdc++ stops at "
        "GLIBCXX_3.4.29"
    ]


@pytest.mark.parametrize("root", [RHEL8, RHEL9])
def test_the_portable_engine_runs_on_both_with_the_reason_reported(root: Path) -> None:
    d = s.select(detect(root), engine_manifest("2.28", None))
    have = detect(root)["libc"]["glibc"]
    assert f"glibc {have}: the engine needs 2.28 or newer, no libstdc++ needed" in d["reasons"]


def test_an_engine_without_a_recorded_floor_is_not_checked() -> None:
    d = s.select(detect(RHEL8), engine_manifest(None, None))
    assert not [r for r in d["reasons"] if r.startswith("glibc")]


def test_no_glibc_on_the_host_refuses_an_engine_that_needs_it(tmp_path: Path) -> None:
    facts = detect(RHEL8)
    facts["libc"] = {"glibc": None, "glibcxx": None}
    with pytest.raises(HostLibraryError, match="C runtime is older") as e:
        s.select(facts, engine_manifest("2.28", None))
    assert "no glibc was found" in e.value.problems[0]


def test_cli_refusal_exits_51(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f.json").write_text(json.dumps(detect(RHEL8)))
    (tmp_path / "m.json").write_text(json.dumps(engine_manifest("2.34", None)))
    rc = s.main(["--facts", str(tmp_path / "f.json"), "--manifest", str(tmp_path / "m.json")])
    assert rc == 51
    assert "this host has glibc 2.28" in capsys.readouterr().err


def test_host_facts_carry_the_rendered_refusal_for_preflight(tmp_path: Path) -> None:
    layout = Layout(
        root=str(tmp_path / "opt"), config=str(tmp_path / "etc"), state=str(tmp_path / "var")
    )
    ok = release.host_facts(layout, str(tmp_path), glibc_min="2.28")
    assert ok["libc_refusal"] is None and ok["libc"]["glibc"]
    refused = release.host_facts(layout, str(tmp_path), glibc_min="99.0", glibcxx_min="3.4.99")
    text = refused["libc_refusal"]
    assert text.startswith("error: this host's C runtime is older than the bundle's engine needs")
    assert (
        f"the engine needs glibc 99.0 or newer; this host has glibc {ok['libc']['glibc']}" in text
    )
    assert "GLIBCXX_3.4.99" in text
    assert not (tmp_path / "opt").exists()  # reading facts changes nothing
