"""runtime.slots: slot ports, the slot argv, assignments, the upgrade plan and its check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime import slots
from runtime.errors import UsageError

ARGV = ["engine/bin/llama-server", "--model", "m.gguf", "--host", "0.0.0.0", "--port", "8080"]


def test_slot_ports_default_to_the_two_ports_above_the_public_one() -> None:
    assert slots.slot_ports(8080) == [8081, 8082]
    assert slots.slot_ports(8080, [9001, 9002]) == [9001, 9002]


@pytest.mark.parametrize("override", [[9001], [9001, 9001], [8080, 9002], [0, 9002], [9001, 70000]])
def test_rejects_slot_ports_that_are_not_two_other_ports(override: list[int]) -> None:
    with pytest.raises(UsageError, match="slot port"):
        slots.slot_ports(8080, override)


def test_a_slot_serves_on_loopback_at_its_own_port() -> None:
    assert slots.listen_of(ARGV) == ("0.0.0.0", 8080)
    out = slots.on_slot(ARGV, 8082)
    assert out[out.index("--host") + 1] == "127.0.0.1"
    assert out[out.index("--port") + 1] == "8082"
    assert out[:3] == ARGV[:3] and len(out) == len(ARGV)
    assert slots.on_slot(["bin/x"], 8081) == ["bin/x", "--host", "127.0.0.1", "--port", "8081"]
    assert slots.format_listen("::", 8080) == "[::]:8080"


def test_first_install_takes_the_first_slot() -> None:
    plan = slots.plan(argv=ARGV, active=None)
    assert plan["listen"] == "0.0.0.0:8080" and plan["ports"] == [8081, 8082]
    assert plan["new"] == 8081 and plan["old"] == 8082 and plan["active"] is None


def test_an_upgrade_takes_the_slot_that_does_not_serve() -> None:
    assert slots.plan(argv=ARGV, active=8081)["new"] == 8082
    plan = slots.plan(argv=ARGV, active=8082)
    assert plan["new"] == 8081 and plan["old"] == 8082


def test_a_moved_public_port_starts_on_the_new_pair_and_stops_the_old_slot() -> None:
    moved = [*ARGV[:-1], "9090"]
    plan = slots.plan(argv=moved, active=8082)
    assert plan["listen"] == "0.0.0.0:9090" and plan["ports"] == [9091, 9092]
    assert plan["new"] == 9091 and plan["old"] == 8082


def test_plan_without_settings_knows_only_the_active_slot() -> None:
    plan = slots.plan(argv=None, active=8081)
    assert plan["listen"] is None and plan["new"] is None and plan["old"] == 8081


def test_assign_is_atomic_and_idempotent(tmp_path: Path) -> None:
    assert slots.assigned(str(tmp_path), 8081) is None
    assert slots.assign(str(tmp_path), 8081, "1.0.0") is True
    assert slots.assign(str(tmp_path), 8081, "1.0.0") is False
    assert (tmp_path / "slots" / "8081").read_text() == "1.0.0\n"
    assert slots.assigned(str(tmp_path), 8081) == "1.0.0"
    assert slots.clear(str(tmp_path), 8081) is True and slots.clear(str(tmp_path), 8081) is False


@pytest.mark.parametrize("version", ["", "../etc", "a/b", ".hidden"])
def test_rejects_an_assignment_that_is_not_a_version(tmp_path: Path, version: str) -> None:
    with pytest.raises(UsageError):
        slots.assign(str(tmp_path), 8081, version)
    assert not (tmp_path / "slots").exists()


def test_check_names_a_front_that_forwards_to_another_release(tmp_path: Path) -> None:
    state = str(tmp_path)
    assert slots.check(state, None) == []
    assert "names no slot" in slots.check(state, "2.0.0")[0]
    (tmp_path / "active-port").write_text("8082\n")
    slots.assign(state, 8082, "1.0.0")
    assert "serves 1.0.0, but current is 2.0.0" in slots.check(state, "2.0.0")[0]
    slots.assign(state, 8082, "2.0.0")
    assert slots.check(state, "2.0.0") == []


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = slots.main(list(argv))
    return code, json.loads(capsys.readouterr().out)


def test_cli_plans_from_the_release_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etc, var = tmp_path / "etc", tmp_path / "var"
    (etc / "releases").mkdir(parents=True)
    var.mkdir()
    (etc / "releases" / "2.0.0.env").write_text("AIRLOCK_ARGV='bin/s --host :: --port 8443'\n")
    (var / "active-port").write_text("8444\n")
    base = ["--config", str(etc), "--state", str(var)]
    code, out = _cli(capsys, *base, "plan", "--version", "2.0.0")
    assert code == 0
    assert out["listen"] == "[::]:8443" and out["new"] == 8445 and out["old"] == 8444
    code, out = _cli(capsys, *base, "plan", "--version", "2.0.0", "--ports", "9001,9002")
    assert out["new"] == 9001
    code, out = _cli(capsys, *base, "plan", "--version", "3.0.0")
    assert out["listen"] is None
    code, out = _cli(capsys, *base, "check")
    assert code == 0  # nothing installed: no current to serve


def test_cli_check_fails_with_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "state.json").write_text(
        json.dumps({"schema": 1, "current": "2.0.0", "releases": {}, "floor": 0, "history": []})
    )
    code, out = _cli(capsys, "--state", str(tmp_path), "check")
    assert code != 0 and out["failed"] is True
    assert out["exit_code"] == code  # the same report as runtime.release's (errors.report)
    assert "names no slot" in str(out["problems"])
