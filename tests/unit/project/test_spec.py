"""airlock.yaml validation: every problem, with its key path and a fix, in one SpecError."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from bundler.errors import SpecError
from bundler.project.spec import load_spec, parse_spec

NOW = dt.datetime(2026, 11, 27, tzinfo=dt.timezone.utc)


def _base() -> dict[str, Any]:
    return {
        "name": "demo",
        "version": "1.0.0",
        "sequence": 3,
        "expires": "90d",
        "models": [{"name": "tiny", "repo": "org/tiny-GGUF", "revision": "main"}],
    }


def _parse(data: Any, tmp_path: Path) -> Any:
    return parse_spec(data, base_dir=tmp_path, now=NOW)


def _problems(data: Any, tmp_path: Path) -> list[str]:
    with pytest.raises(SpecError) as e:
        _parse(data, tmp_path)
    return list(e.value.problems)


def test_minimal_spec_gets_defaults(tmp_path: Path) -> None:
    spec = _parse(_base(), tmp_path)
    assert spec.expires == NOW + dt.timedelta(days=90)
    assert spec.models[0].revision == "main" and not spec.models[0].pinned
    assert spec.server.model == "tiny" and spec.server.ctx_size == "auto"
    assert spec.engine is None and spec.targets is None


def test_full_spec_with_engine_targets_server_and_local_model(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    data = _base()
    data["models"].append({"name": "mine", "source": "local", "path": "m.gguf", "license": "MIT"})
    data["engine"] = {
        "llama_cpp_python": "0.3.16",
        "cpu_variants": ["x64", "haswell"],
        "cuda": {"enabled": True, "architectures": ["80", "90"]},
    }
    data["targets"] = {"python": ["3.11", "3.12"], "requirements": ["numpy==2.1.0"]}
    data["server"] = {"port": 9000, "ctx_size": 4096, "parallel": "auto", "model": "mine"}
    data["expires"] = dt.date(2027, 5, 26)
    spec = _parse(data, tmp_path)
    assert spec.model("mine").path == (tmp_path / "m.gguf").resolve()
    assert spec.engine is not None and spec.engine.cuda.architectures == ("80", "90")
    assert spec.engine.cpu_variants == ("x64", "haswell")
    assert spec.targets is not None and spec.targets.python == ("3.11", "3.12")
    assert spec.server.properties()["ctx_size"] == 4096
    assert spec.expires == dt.datetime(2027, 5, 26, tzinfo=dt.timezone.utc)


def test_targets_ship_the_binding_unless_told_not_to(tmp_path: Path) -> None:
    data = _base()
    data["targets"] = {"python": ["3.11"]}
    assert _parse(data, tmp_path).targets.llama_cpp_python is True
    data["targets"]["llama_cpp_python"] = False
    assert _parse(data, tmp_path).targets.llama_cpp_python is False
    data["targets"]["llama_cpp_python"] = "no"
    assert any(p.startswith("targets.llama_cpp_python") for p in _problems(data, tmp_path))


def test_commit_revision_counts_as_pinned(tmp_path: Path) -> None:
    data = _base()
    data["models"][0]["revision"] = "a" * 40
    assert _parse(data, tmp_path).models[0].pinned


def test_reports_every_problem_at_once_with_key_paths(tmp_path: Path) -> None:
    data = _base()
    data["expiry"] = "30d"  # typo of expires
    data["sequence"] = "three"
    del data["version"]
    data["models"].append({"name": "Bad Name", "repo": "not-a-repo", "revison": "main"})
    data["runtime"] = {"llama_cpp_python": "0.3.16", "cpu_variants": ["x64", "haswel"]}
    data["server"] = {"port": 70000, "ctx_size": "big", "model": "tiyn"}
    problems = _problems(data, tmp_path)
    text = "\n".join(problems)
    assert "expiry: unknown key (did you mean 'expires'?)" in text
    assert any(p.startswith("sequence: expected an integer") for p in problems)
    assert any(p.startswith("version: missing value") for p in problems)
    assert any(p.startswith("models[1].name:") for p in problems)
    assert any(p.startswith("models[1].repo:") for p in problems)
    assert "models[1].revison: unknown key (did you mean 'revision'?)" in text
    assert "did you mean 'haswell'?" in text
    assert any(p.startswith("server.port:") for p in problems)
    assert any(p.startswith("server.ctx_size:") for p in problems)
    assert "server.model: no model named 'tiyn' (did you mean 'tiny'?)" in text
    assert len(problems) >= 10


def test_rejects_duplicate_model_names(tmp_path: Path) -> None:
    data = _base()
    data["models"].append(dict(data["models"][0]))
    assert any("used twice" in p for p in _problems(data, tmp_path))


def test_rejects_missing_local_model_file(tmp_path: Path) -> None:
    data = _base()
    data["models"] = [{"name": "x", "source": "local", "path": "nope.gguf"}]
    assert any(p.startswith("models[0].path:") for p in _problems(data, tmp_path))


def test_rejects_files_and_allow_together_and_hub_keys_on_local(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    data = _base()
    data["models"][0]["files"] = ["a.gguf"]
    data["models"][0]["allow"] = ["*.gguf"]
    data["models"].append({"name": "l", "source": "local", "path": "m.gguf", "repo": "a/b"})
    problems = _problems(data, tmp_path)
    assert any(p.startswith("models[0].allow:") for p in problems)
    assert any(p.startswith("models[1].repo: not used by a local source") for p in problems)


def test_rejects_expiry_in_the_past(tmp_path: Path) -> None:
    data = _base()
    data["expires"] = dt.date(2020, 1, 1)
    assert any(p.startswith("expires:") and "past" in p for p in _problems(data, tmp_path))


def test_cuda_enabled_needs_architectures_and_variants_need_x64(tmp_path: Path) -> None:
    data = _base()
    data["runtime"] = {
        "llama_cpp_python": "0.3.16",
        "cpu_variants": ["haswell"],
        "cuda": {"enabled": True},
    }
    problems = _problems(data, tmp_path)
    assert any(p.startswith("runtime.cuda.architectures: missing") for p in problems)
    assert any(p.startswith("runtime.cpu_variants: must include 'x64'") for p in problems)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="mapping"):
        _parse(["a"], tmp_path)


def test_load_spec_reports_yaml_syntax_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "airlock.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "missing.yaml")


def test_example_spec_in_templates_is_valid(repo_root: Path) -> None:
    example = repo_root / "templates" / "airlock.example.yaml"
    data = yaml.safe_load(example.read_text())
    # The example's local model points at a file that only exists in a real project.
    data["models"] = [m for m in data["models"] if m.get("source", "hub") == "hub"]
    spec = parse_spec(data, base_dir=example.parent, now=NOW)
    assert spec.engine is not None and spec.targets is not None
    assert spec.lock_path.name == "airlock.lock"


def test_every_variant_ggml_builds_is_accepted_and_a_typo_gets_the_closest(
    tmp_path: Path,
) -> None:
    from runtime.variants import X86_VARIANT_NAMES

    data = _base()
    data["engine"] = {"llama_cpp_python": "0.3.16", "cpu_variants": list(X86_VARIANT_NAMES)}
    assert _parse(data, tmp_path).engine.cpu_variants == X86_VARIANT_NAMES
    data["engine"]["cpu_variants"] = ["x64", "sapphirerapid"]
    assert _problems(data, tmp_path) == [
        "engine.cpu_variants: unknown CPU variant 'sapphirerapid' (did you mean 'sapphirerapids'?)"
    ]


@pytest.mark.parametrize("text", ["90d", "26w", "2027-05-26", "2027-05-26T12:00:00Z"])
def test_expires_reads_the_same_grammar_as_pack(tmp_path: Path, text: str) -> None:
    from bundler.bundle.manifest import parse_expires

    data = _base()
    data["expires"] = text  # quoted in YAML: text, not a date
    assert _parse(data, tmp_path).expires == parse_expires(text, now=NOW)


def test_unreadable_expires_is_one_problem(tmp_path: Path) -> None:
    data = _base()
    data["expires"] = "soon"
    assert _problems(data, tmp_path) == [
        "expires: cannot read 'soon' (use a date (2027-05-26) or a duration (180d))"
    ]


def test_runtime_is_still_read_as_the_engine_section(tmp_path: Path) -> None:
    data = _base()
    data["runtime"] = {"llama_cpp_python": "0.3.16", "cpu_variants": ["x64"]}
    engine = _parse(data, tmp_path).engine
    assert engine is not None and engine.llama_cpp_python == "0.3.16"
    data["runtime"]["cpu_variants"] = ["haswell"]  # problems name the key the spec used
    assert _problems(data, tmp_path) == [
        "runtime.cpu_variants: must include 'x64' (x64 is the fallback for any CPU)"
    ]


def test_engine_and_runtime_together_is_a_problem(tmp_path: Path) -> None:
    data = _base()
    data["engine"] = {"llama_cpp_python": "0.3.16"}
    data["runtime"] = {"llama_cpp_python": "0.3.15"}
    assert _problems(data, tmp_path) == [
        "runtime: 'runtime' is the older name of 'engine'; the spec has both (keep only 'engine')"
    ]


def test_controller_pythons_default_to_what_the_pinned_ansible_core_supports(
    tmp_path: Path,
) -> None:
    every = ("3.10", "3.11", "3.12", "3.13")
    assert _parse(_base(), tmp_path).controller_python == every
    data = _base() | {"targets": {"python": ["3.11"]}}
    assert _parse(data, tmp_path).controller_python == every
    data = _base() | {"targets": {"controller_python": ["3.13"]}}
    assert _parse(data, tmp_path).controller_python == ("3.13",)


def test_controller_python_that_ansible_core_does_not_support_is_refused(
    tmp_path: Path,
) -> None:
    data = _base() | {"targets": {"controller_python": ["3.9", "3.14", "3.x", "3.12", "3.12"]}}
    problems = _problems(data, tmp_path)
    assert len(problems) == 4, problems
    assert problems[0].startswith(
        "targets.controller_python: Python 3.9 cannot run the controller: the bundle's "
        "controller runs on Python 3.10 (ansible-core 2.17, the newest series that supports "
        "it) and 3.11-3.13 (ansible-core 2.19)"
    )
    assert "choose from '3.10', '3.11', '3.12', '3.13'" in problems[0]
    assert "Python 3.14 cannot run the controller" in problems[1]
    assert "'3.x' is not a Python version" in problems[2]
    assert "'3.12' is listed twice" in problems[3]
    empty = _problems(_base() | {"targets": {"controller_python": []}}, tmp_path)
    assert empty == [
        "targets.controller_python: expected a non-empty list of Python versions "
        "(e.g. ['3.10', '3.11', '3.12', '3.13'])"
    ]


@pytest.mark.parametrize(
    ("repo", "name"),
    [
        ("org/tiny-GGUF", "tiny-gguf"),
        ("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-gguf"),
        ("org/Odd..Name_", "odd..name"),
        ("org/" + "A" * 70, "a" * 64),
    ],
)
def test_hub_model_without_a_name_is_named_after_its_repo(
    tmp_path: Path, repo: str, name: str
) -> None:
    data = _base()
    data["models"] = [{"repo": repo}]
    spec = _parse(data, tmp_path)
    assert spec.models[0].name == name
    assert spec.server.model == name


def test_local_model_without_a_name_is_still_a_problem(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    data = _base()
    data["models"] = [{"source": "local", "path": "m.gguf", "license": "mit"}]
    assert any(p.startswith("models[0].name: missing value") for p in _problems(data, tmp_path))
