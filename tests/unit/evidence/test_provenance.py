"""Build provenance: an in-toto Statement v1 with a SLSA Provenance v1 predicate."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jsonschema
import pytest

from bundler.errors import BuildError
from bundler.evidence.provenance import (
    PROVENANCE_PATH,
    build_provenance,
    resolved_dependencies,
)
from tests.evidence_fixtures import COMMIT, CTRL_YAML_WHL, NUMPY_WHL, digest, manifest

SPEC = b"""\
name: demo
version: 1.0.0
expires_days: 180
models:
  - name: tiny
    repo: airlock-test/tiny-llama
    revision: main
created: 2026-11-27
"""
LOCK = json.dumps(
    {"lock_version": 1, "models": {"tiny": {"commit": COMMIT}}}, sort_keys=True
).encode()

_DIGEST = {
    "type": "object",
    "required": ["sha256"],
    "properties": {"sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
}
_RESOURCE = {
    "type": "object",
    "required": ["uri", "digest"],
    "properties": {"uri": {"type": "string", "minLength": 1}, "digest": _DIGEST},
}
_RFC3339 = "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?(Z|[+-]\\d{2}:\\d{2})$"
# The shape of https://in-toto.io/Statement/v1 + https://slsa.dev/provenance/v1, written
# from the two specifications (the fields airlock fills in).
STATEMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["_type", "subject", "predicateType", "predicate"],
    "additionalProperties": False,
    "properties": {
        "_type": {"const": "https://in-toto.io/Statement/v1"},
        "predicateType": {"const": "https://slsa.dev/provenance/v1"},
        "subject": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "digest"],
                "properties": {"name": {"type": "string"}, "digest": _DIGEST},
            },
        },
        "predicate": {
            "type": "object",
            "required": ["buildDefinition", "runDetails"],
            "additionalProperties": False,
            "properties": {
                "buildDefinition": {
                    "type": "object",
                    "required": ["buildType", "externalParameters"],
                    "additionalProperties": False,
                    "properties": {
                        "buildType": {"type": "string", "pattern": "^https://"},
                        "externalParameters": {
                            "type": "object",
                            "required": ["spec", "lock"],
                        },
                        "internalParameters": {"type": "object"},
                        "resolvedDependencies": {"type": "array", "items": _RESOURCE},
                    },
                },
                "runDetails": {
                    "type": "object",
                    "required": ["builder"],
                    "additionalProperties": False,
                    "properties": {
                        "builder": {
                            "type": "object",
                            "required": ["id"],
                            "properties": {"id": {"type": "string", "minLength": 1}},
                        },
                        "metadata": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "invocationId": {"type": "string"},
                                "startedOn": {"type": "string", "pattern": _RFC3339},
                                "finishedOn": {"type": "string", "pattern": _RFC3339},
                            },
                        },
                    },
                },
            },
        },
    },
}


def _prov(**kw: Any) -> bytes:
    m = manifest()
    args: dict[str, Any] = {
        "files": m["files"],
        "spec_bytes": SPEC,
        "lock_bytes": LOCK,
        "resolved": resolved_dependencies(m["components"]),
        "builder_id": "https://airlock.dev/builders/local@v0.1.0",
        "started": "2026-11-27T00:00:00Z",
        "finished": "2026-11-27T00:05:00Z",
    }
    args.update(kw)
    return build_provenance(**args)


def test_statement_matches_in_toto_v1_and_slsa_provenance_v1_shape() -> None:
    doc = json.loads(_prov())
    jsonschema.validate(doc, STATEMENT_SCHEMA)
    run = doc["predicate"]["runDetails"]
    assert run["builder"]["id"] == "https://airlock.dev/builders/local@v0.1.0"
    assert run["metadata"]["startedOn"] == "2026-11-27T00:00:00Z"
    assert run["metadata"]["finishedOn"] == "2026-11-27T00:05:00Z"
    assert run["metadata"]["invocationId"].startswith("urn:uuid:")


def test_subject_is_every_payload_file_except_the_provenance_itself() -> None:
    m = manifest()
    doc = json.loads(_prov())
    subject = {s["name"]: s["digest"]["sha256"] for s in doc["subject"]}
    expected = {f["path"]: f["sha256"] for f in m["files"] if f["path"] != PROVENANCE_PATH}
    assert subject == expected
    assert [s["name"] for s in doc["subject"]] == sorted(subject)


def test_spec_and_lock_are_embedded_parsed_with_their_digests() -> None:
    params = json.loads(_prov())["predicate"]["buildDefinition"]["externalParameters"]
    assert params["spec"]["digest"]["sha256"] == hashlib.sha256(SPEC).hexdigest()
    assert params["spec"]["content"]["models"][0]["repo"] == "airlock-test/tiny-llama"
    # a YAML date becomes an ISO string, not a crash
    assert params["spec"]["content"]["created"] == "2026-11-27"
    assert params["lock"]["digest"]["sha256"] == hashlib.sha256(LOCK).hexdigest()
    assert params["lock"]["content"]["models"]["tiny"]["commit"] == COMMIT


def test_resolved_dependencies_pin_hub_files_wheels_and_source_by_digest() -> None:
    deps = json.loads(_prov())["predicate"]["buildDefinition"]["resolvedDependencies"]
    by_uri = {d["uri"]: d["digest"]["sha256"] for d in deps}
    hub = f"https://huggingface.co/airlock-test/tiny-llama/resolve/{COMMIT}/tiny.gguf"
    assert by_uri[hub] == digest("models/tiny/tiny.gguf")
    numpy = "pkg:pypi/numpy@2.1.0?file_name=numpy-2.1.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert by_uri[numpy] == digest(NUMPY_WHL)
    assert any(u.startswith("pkg:pypi/pyyaml@6.0.2?") for u in by_uri)
    assert by_uri[
        "https://files.pythonhosted.org/packages/source/l/llama_cpp_python/"
        "llama_cpp_python-0.3.16.tar.gz"
    ] == digest("llama_cpp_python-0.3.16.tar.gz")
    assert digest(CTRL_YAML_WHL) in by_uri.values()


def test_the_same_wheel_in_two_wheelhouses_is_one_dependency() -> None:
    m = manifest()
    ctrl = m["components"]["controller"]["properties"]["wheels"]
    ctrl.append(dict(m["components"]["wheels"]["properties"]["wheels"][0]))
    deps = resolved_dependencies(m["components"])
    assert sum(1 for d in deps if d["uri"].startswith("pkg:pypi/numpy@")) == 1


def test_nvidia_runtime_wheels_of_a_cuda_engine_are_dependencies() -> None:
    m = manifest()
    wheel = "nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_x86_64.whl"
    m["components"]["engine"]["properties"]["cuda"] = {
        "runtime_wheels": ["nvidia-cublas==13.0.*"],
        "runtime_wheel_files": [
            {"name": "nvidia-cublas", "version": "13.0.2.14", "file": wheel, "sha256": "c" * 64}
        ],
    }
    deps = resolved_dependencies(m["components"])
    assert {
        "uri": f"pkg:pypi/nvidia-cublas@13.0.2.14?file_name={wheel}",
        "digest": {"sha256": "c" * 64},
        "name": wheel,
    } in deps
    m["components"]["engine"]["properties"]["cuda"]["runtime_wheel_files"] = None  # unknown
    assert not [d for d in resolved_dependencies(m["components"]) if "nvidia" in d["uri"]]


def test_same_inputs_give_identical_bytes() -> None:
    assert _prov() == _prov()
    assert _prov(started=None, finished=None) == _prov(started=None, finished=None)


def test_times_are_omitted_when_not_given() -> None:
    meta = json.loads(_prov(started=None, finished=None))["predicate"]["runDetails"]["metadata"]
    assert set(meta) == {"invocationId"}


def test_invocation_id_changes_with_the_inputs() -> None:
    a = json.loads(_prov())["predicate"]["runDetails"]["metadata"]["invocationId"]
    b = json.loads(_prov(lock_bytes=LOCK + b" "))["predicate"]["runDetails"]["metadata"]
    assert a != b["invocationId"]


def test_reports_every_bad_input_at_once() -> None:
    m = manifest()
    m["files"][0]["sha256"] = "not-a-digest"
    with pytest.raises(BuildError) as exc:
        _prov(
            files=m["files"],
            spec_bytes=b"models: [unclosed",
            resolved=[{"uri": "https://x", "digest": {}, "name": "x"}],
            started="yesterday",
        )
    problems = "\n".join(exc.value.problems)
    assert "README.md" in problems
    assert "resolved dependency #0 (x)" in problems
    assert "started time" in problems
    assert "spec is not valid" in problems
    assert len(exc.value.problems) == 4
