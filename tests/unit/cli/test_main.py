"""The command line's contract: version, usage errors, and error rendering."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundler import __version__
from bundler.cli.main import main
from bundler.errors import AirlockError, SignatureError


def test_version_comes_from_version_file(repo_root, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    expected = (repo_root / "VERSION").read_text().strip()
    assert __version__ == expected
    assert capsys.readouterr().out.strip() == f"airlock {expected}"


def test_missing_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_error_render_lists_every_problem_and_the_fix() -> None:
    err = SignatureError(
        "2 signatures failed", problems=["a.sig: bad", "b.sig: bad"], hint="re-sign"
    )
    text = err.render()
    assert text.splitlines() == [
        "error: 2 signatures failed",
        "  - a.sig: bad",
        "  - b.sig: bad",
        "hint: re-sign",
    ]
    assert isinstance(err, AirlockError) and err.exit_code == 10


def test_json_callers_get_the_failure_as_json(tmp_path, capsys) -> None:
    import json

    missing = tmp_path / "nope.tar"
    code = main(["inspect", str(missing), "--json"])
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert code == doc["exit_code"] != 0
    assert str(missing) in doc["error"] + " ".join(doc["problems"])
    assert out.err.startswith("error: ")


def test_skip_runtime_is_still_accepted_as_skip_engine() -> None:
    from bundler.cli.main import build_parser

    for flag in ("--skip-engine", "--skip-runtime"):
        args = build_parser().parse_args(["build", "airlock.yaml", "--key", "k", flag])
        assert args.skip_engine is True
    assert build_parser().parse_args(["build", "airlock.yaml"]).skip_engine is False


def test_build_side_commands_refuse_a_python_older_than_3_11() -> None:
    from bundler.cli.main import BUILD_COMMANDS, refuse_build_here
    from bundler.errors import HostError

    assert set(BUILD_COMMANDS) == {"lock", "build", "demo"}
    for command in BUILD_COMMANDS:
        with pytest.raises(HostError) as exc:
            refuse_build_here(command, (3, 10), ["huggingface_hub"])
        assert exc.value.message.startswith(
            f"airlock {command} needs Python 3.11 or newer (this is Python 3.10)"
        )
        assert exc.value.exit_code == 50
        refuse_build_here(command, (3, 11), [])
    for command in ("verify", "inspect", "unpack", "sbom", "keygen"):
        refuse_build_here(command, (3, 10), ["huggingface_hub", "ziglang"])


def test_build_side_commands_refuse_without_the_build_extra_and_name_it() -> None:
    from bundler.cli.main import BUILD_COMMANDS, refuse_build_here
    from bundler.errors import HostError

    for command in BUILD_COMMANDS:
        with pytest.raises(HostError) as exc:
            refuse_build_here(command, (3, 13), ["huggingface_hub", "ziglang"])
        assert exc.value.message == (
            f"airlock {command} needs airlock's build dependencies (the build extra), which "
            "are not installed here: missing huggingface_hub, ziglang"
        )
        assert "pip install 'airlock[build]'" in (exc.value.hint or "")
        assert exc.value.exit_code == 50
    refuse_build_here("verify", (3, 13), ["huggingface_hub", "ziglang"])


def test_build_modules_are_the_build_extra_of_pyproject() -> None:
    """The refusal's list and pyproject.toml's extra cannot drift apart; the extra is
    installed here (.ci/setup), so nothing is missing."""
    import tomllib
    from packaging.requirements import Requirement

    from bundler.cli.main import BUILD_MODULES, missing_build_modules

    meta = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    extra = meta["project"]["optional-dependencies"]["build"]
    assert sorted(Requirement(r).name for r in extra) == sorted(BUILD_MODULES)
    deps = {Requirement(r).name for r in meta["project"]["dependencies"]}
    assert not deps & set(BUILD_MODULES), "a build-only package is back in dependencies"
    assert missing_build_modules() == []


def test_main_refuses_a_build_command_without_the_build_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bundler.cli import main as main_mod

    real = main_mod.find_spec
    monkeypatch.setattr(
        main_mod, "find_spec", lambda name: None if name == "ziglang" else real(name)
    )
    assert main_mod.main(["build", "airlock.yaml"]) == 50
    err = capsys.readouterr().err
    assert "missing ziglang" in err and "airlock[build]" in err
