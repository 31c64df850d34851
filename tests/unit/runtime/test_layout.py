"""runtime.layout: where airlock lives on a host, and state.json (defaults, schema refusal)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runtime.errors import InstallError
from runtime.layout import STATE_SCHEMA, Layout, empty_state, load_state, save_state


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(
        root=str(tmp_path / "opt"), config=str(tmp_path / "etc"), state=str(tmp_path / "var")
    )


def test_paths_of_a_release(layout: Layout, tmp_path: Path) -> None:
    assert layout.current == str(tmp_path / "opt/current")
    assert layout.release_dir("1.2.0") == str(tmp_path / "opt/releases/1.2.0")
    assert layout.env_file("1.2.0") == str(tmp_path / "etc/releases/1.2.0.env")
    assert layout.manifest_file("ab" * 32) == str(
        tmp_path / "var/manifests" / ("ab" * 32 + ".json")
    )
    assert layout.state_file == str(tmp_path / "var/state.json")


def test_a_host_without_state_has_the_empty_state_and_nothing_is_created(
    layout: Layout, tmp_path: Path
) -> None:
    assert load_state(layout) == empty_state()
    assert empty_state() == {
        "schema": STATE_SCHEMA,
        "current": None,
        "releases": {},
        "floor": 0,
        "history": [],
    }
    assert list(tmp_path.iterdir()) == []


def test_empty_states_are_independent() -> None:
    a = empty_state()
    a["releases"]["1.0"] = {}
    a["history"].append({})
    assert empty_state()["releases"] == {} and empty_state()["history"] == []


def test_save_then_load_round_trips_sorted_and_world_readable(layout: Layout) -> None:
    state = empty_state()
    state.update(current="1.0", floor=3, releases={"1.0": {"sequence": 3}})
    save_state(layout, state)
    assert load_state(layout) == state
    text = Path(layout.state_file).read_text()
    assert text == json.dumps(state, indent=2, sort_keys=True) + "\n"
    assert os.stat(layout.state_file).st_mode & 0o777 == 0o644


@pytest.mark.parametrize("schema", [2, 0, None, "1"])
def test_rejects_a_state_file_of_an_unknown_schema(layout: Layout, schema: object) -> None:
    os.makedirs(layout.state)
    raw = json.dumps({"schema": schema, "current": None, "releases": {}, "floor": 0}).encode()
    Path(layout.state_file).write_bytes(raw)
    with pytest.raises(InstallError, match="has an unknown schema") as e:
        load_state(layout)
    assert e.value.exit_code == 60
    assert "newer airlock" in (e.value.hint or "")
    assert Path(layout.state_file).read_bytes() == raw


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[1, 2]"])
def test_rejects_a_state_file_that_is_not_a_json_object(layout: Layout, raw: bytes) -> None:
    os.makedirs(layout.state)
    Path(layout.state_file).write_bytes(raw)
    with pytest.raises(InstallError, match=f"state file {layout.state_file}"):
        load_state(layout)
    assert Path(layout.state_file).read_bytes() == raw
