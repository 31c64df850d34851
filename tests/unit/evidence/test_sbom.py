"""The CycloneDX 1.6 SBOM: schema-valid, deterministic, and complete about what ships."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from bundler.errors import ArchiveFormatError, BuildError
from bundler.evidence.sbom import SBOM_PATH, build_sbom, summarize, validate_sbom
from tests.evidence_fixtures import (
    COMMIT,
    CTRL_YAML_WHL,
    JINJA_WHL,
    LLAMA_COMMIT,
    NUMPY_WHL,
    clone,
    digest,
    manifest,
)


def _sbom(m: dict[str, Any] | None = None, **kw: Any) -> bytes:
    m = m or manifest()
    args: dict[str, Any] = {
        "name": m["name"],
        "version": m["version"],
        "created": m["created"],
        "components": m["components"],
        "files": m["files"],
        "serial_seed": b"lock-digest",
    }
    args.update(kw)
    return build_sbom(**args)


def _walk(comps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in comps:
        out.append(c)
        out.extend(_walk(c.get("components", [])))
    return out


def _by_ref(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["bom-ref"]: c for c in _walk(doc["components"])}


def _props(c: dict[str, Any], name: str) -> list[str]:
    return sorted(p["value"] for p in c.get("properties", []) if p["name"] == name)


def test_sbom_validates_against_the_official_cyclonedx_1_6_schema() -> None:
    data = _sbom()
    # The library's strict validator carries the official bom-1.6 schema (no extra keys).
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(data.decode(), all_errors=True)
    assert errors is None, [str(e) for e in errors or []]
    doc = json.loads(data)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.6"


def test_schema_validation_catches_a_broken_document() -> None:
    doc = json.loads(_sbom())
    doc["components"][0]["type"] = "spaceship"
    assert validate_sbom(json.dumps(doc).encode())


def test_same_inputs_give_bit_identical_bytes() -> None:
    assert _sbom() == _sbom()
    reordered = manifest()
    reordered["files"] = list(reversed(reordered["files"]))
    assert _sbom(reordered) == _sbom()


def test_serial_number_changes_when_any_file_digest_changes() -> None:
    base = json.loads(_sbom())
    m = manifest()
    m["files"][3]["sha256"] = digest("tampered")
    other = json.loads(_sbom(m))
    assert base["serialNumber"].startswith("urn:uuid:")
    assert other["serialNumber"] != base["serialNumber"]
    assert json.loads(_sbom(serial_seed=b"other lock"))["serialNumber"] != base["serialNumber"]


def test_timestamp_is_the_manifest_created_time_not_the_clock() -> None:
    doc = json.loads(_sbom(created="2030-01-02T03:04:05Z"))
    assert doc["metadata"]["timestamp"].startswith("2030-01-02T03:04:05")


def test_model_is_a_machine_learning_model_with_hub_purl_card_and_file_hashes() -> None:
    doc = json.loads(_sbom())
    model = _by_ref(doc)["model:tiny"]
    assert model["type"] == "machine-learning-model"
    assert model["purl"] == f"pkg:huggingface/airlock-test/tiny-llama@{COMMIT}"
    assert model["licenses"] == [{"license": {"id": "Apache-2.0"}}]
    refs = {r["type"]: r["url"] for r in model["externalReferences"]}
    assert refs["distribution"] == f"https://huggingface.co/airlock-test/tiny-llama/tree/{COMMIT}"
    card = model["modelCard"]
    assert card["modelParameters"]["modelArchitecture"] == "llama"
    card_props = {p["name"]: p["value"] for p in card["properties"]}
    assert card_props["airlock:gguf.parameters"] == "123456"
    assert card_props["airlock:gguf.quantization"] == "F16"
    assert card_props["airlock:gguf.context_length"] == "2048"
    files = {c["name"]: c for c in model["components"]}
    assert set(files) == {"models/tiny/LICENSE", "models/tiny/README.md", "models/tiny/tiny.gguf"}
    gguf = files["models/tiny/tiny.gguf"]
    assert gguf["hashes"] == [{"alg": "SHA-256", "content": digest("models/tiny/tiny.gguf")}]
    assert _props(gguf, "airlock:hub_path") == ["tiny.gguf"]


def test_every_payload_file_is_listed_once_with_its_sha256() -> None:
    m = manifest()
    doc = json.loads(_sbom(m))
    listed: dict[str, str] = {}
    for c in _walk(doc["components"]):
        path = c["name"] if c["type"] == "file" else None
        if c["bom-ref"].startswith("wheel:"):
            path = c["bom-ref"][len("wheel:") :]
        if path is not None:
            assert path not in listed, f"{path} listed twice"
            (h,) = c["hashes"]
            listed[path] = h["content"]
    expected = {f["path"]: f["sha256"] for f in m["files"] if f["path"] != SBOM_PATH}
    assert listed == expected


def test_wheels_are_libraries_with_pypi_purl_hash_and_license() -> None:
    doc = json.loads(_sbom())
    refs = _by_ref(doc)
    numpy = refs["wheel:" + NUMPY_WHL]
    assert numpy["type"] == "library"
    assert numpy["purl"] == (
        "pkg:pypi/numpy@2.1.0?file_name=numpy-2.1.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    )
    assert numpy["hashes"] == [{"alg": "SHA-256", "content": digest(NUMPY_WHL)}]
    assert numpy["licenses"] == [{"license": {"id": "BSD-3-Clause"}}]
    assert refs["wheel:" + JINJA_WHL]["purl"].startswith("pkg:pypi/jinja2@3.1.4?")
    yaml_whl = refs["wheel:" + CTRL_YAML_WHL]
    assert _props(yaml_whl, "airlock:wheelhouse") == ["controller"]


def test_runtime_records_source_commit_flags_variants_and_cuda() -> None:
    m = manifest()
    m["components"]["engine"]["properties"]["cuda"] = {
        "architectures": ["80", "90"],
        "cuda_version": "12.4",
        "min_driver": "525.60.13",
        "module": "engine/lib/libggml-cuda.so",
    }
    doc = json.loads(_sbom(m))
    refs = _by_ref(doc)
    engine = refs["runtime:llama.cpp"]
    assert engine["type"] == "application"
    assert engine["version"] == LLAMA_COMMIT
    assert _props(engine, "airlock:llama_cpp.commit") == [LLAMA_COMMIT]
    assert "-DGGML_BACKEND_DL=ON" in _props(engine, "airlock:build.cmake_flag")
    assert _props(engine, "airlock:cpu.variant") == ["haswell", "x64"]
    assert _props(engine, "airlock:cuda.architecture") == ["80", "90"]
    assert _props(engine, "airlock:cuda.min_driver") == ["525.60.13"]
    source = refs["source:llama-cpp-python"]
    assert source["hashes"][0]["content"] == digest("llama_cpp_python-0.3.16.tar.gz")
    assert source["purl"].startswith("pkg:pypi/llama-cpp-python@0.3.16?file_name=")
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in doc["dependencies"]}
    assert deps["runtime:llama.cpp"] == {"source:llama-cpp-python"}


def test_bundle_root_depends_on_model_runtime_wheels_and_far_side_code() -> None:
    doc = json.loads(_sbom())
    assert doc["metadata"]["component"]["bom-ref"] == "bundle"
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in doc["dependencies"]}
    root = deps["bundle"]
    assert {
        "model:tiny",
        "runtime:llama.cpp",
        "wheel:" + NUMPY_WHL,
        "wheel:" + CTRL_YAML_WHL,
        "code:runtime",
        "code:playbooks",
        "code:templates",
    } <= root
    # the source is not shipped: it is reached through the runtime only
    assert "source:llama-cpp-python" not in root
    every_ref = {c["bom-ref"] for c in doc["components"]}
    assert every_ref <= set(deps)


def test_local_model_has_no_hub_purl() -> None:
    m = manifest()
    model = m["components"]["models"]["properties"]["models"][0]
    model.update(source="local", repo=None, commit=None, endpoint=None)
    doc = json.loads(_sbom(m))
    comp = _by_ref(doc)["model:tiny"]
    assert "purl" not in comp and comp["name"] == "tiny"


def test_incomplete_component_properties_raise_build_error() -> None:
    m = clone(manifest())
    del m["components"]["wheels"]["properties"]["wheels"][0]["sha256"]
    with pytest.raises(BuildError, match="incomplete"):
        _sbom(m)


def test_bad_created_time_raises_build_error() -> None:
    with pytest.raises(BuildError, match="ISO 8601"):
        _sbom(created="yesterday")


def test_summarize_counts_types_models_and_licenses() -> None:
    s = summarize(_sbom())
    assert s["spec_version"] == "1.6"
    assert s["bundle"] == {"name": "demo", "version": "1.0.0"}
    assert s["components"]["machine-learning-model"] == 1
    assert s["components"]["library"] == 4  # three wheels and the llama-cpp-python source
    assert s["models"] == [f"pkg:huggingface/airlock-test/tiny-llama@{COMMIT}"]
    assert s["licenses"] == ["Apache-2.0", "BSD-3-Clause", "MIT"]


def test_summarize_rejects_a_non_cyclonedx_document() -> None:
    with pytest.raises(ArchiveFormatError):
        summarize(b'{"spdxVersion": "SPDX-2.3"}')
    with pytest.raises(ArchiveFormatError):
        summarize(b"\xff not json")


def test_shipped_cuda_runtime_is_its_own_component_not_llama_cpp() -> None:
    m = manifest()
    m["components"]["engine"]["properties"]["cuda"] = {
        "architectures": ["80"],
        "cuda_version": "12.4",
        "min_driver": "525.60.13",
        "module": "engine/lib/libggml-cuda.so",
        "runtime_dir": "engine/lib/cuda",
        "runtime_libraries": ["engine/lib/cuda/libcudart.so.12"],
    }
    m["files"].append(
        {
            "path": "engine/lib/cuda/libcudart.so.12",
            "size": 700_000,
            "sha256": digest("cudart"),
            "mode": "0644",
            "component": "engine",
        }
    )
    doc = json.loads(_sbom(m))
    refs = _by_ref(doc)
    cuda = refs["runtime:cuda"]
    assert cuda["type"] == "library" and cuda["version"] == "12.4"
    assert [c["name"] for c in cuda["components"]] == ["engine/lib/cuda/libcudart.so.12"]
    assert cuda["licenses"] == [{"license": {"name": "LicenseRef-NVIDIA-CUDA-EULA"}}]
    engine_files = [c["name"] for c in refs["runtime:llama.cpp"]["components"]]
    assert "engine/lib/cuda/libcudart.so.12" not in engine_files
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in doc["dependencies"]}
    assert "runtime:cuda" in deps["runtime:llama.cpp"]


def test_license_text_in_wheel_metadata_becomes_license_text_not_a_name() -> None:
    m = manifest()
    text = "Copyright (c) 2005-2024, NumPy Developers.\nAll rights reserved.\n" * 10
    m["components"]["wheels"]["properties"]["wheels"][0]["license"] = text
    doc = json.loads(_sbom(m))
    (lic,) = _by_ref(doc)["wheel:" + NUMPY_WHL]["licenses"]
    assert lic["license"]["name"] == "Copyright (c) 2005-2024, NumPy Developers."
    assert lic["license"]["text"]["content"] == text.strip()
    assert validate_sbom(json.dumps(doc).encode()) == []


def test_cuda_runtime_names_the_exact_nvidia_wheels_its_libraries_came_from() -> None:
    m = manifest()
    cublas_whl = "nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_x86_64.whl"
    m["components"]["engine"]["properties"]["cuda"] = {
        "architectures": ["90"],
        "cuda_version": "13.0",
        "min_driver": "580.65.06",
        "module": "engine/lib/libggml-cuda.so",
        "runtime_dir": "engine/lib/cuda",
        "runtime_libraries": ["engine/lib/cuda/libcublas.so.13", "engine/lib/cuda/libcudart.so.13"],
        "runtime_wheels": ["nvidia-cuda-runtime==13.0.*", "nvidia-cublas==13.0.*"],
        "runtime_wheel_files": [
            {
                "name": "nvidia-cublas",
                "version": "13.0.2.14",
                "file": cublas_whl,
                "sha256": digest("cublas-wheel"),
                "size": 1,
                "index_url": None,
                "libraries": ["engine/lib/cuda/libcublas.so.13"],
            }
        ],
        "runtime_wheel_files_note": None,
    }
    for lib in ("libcublas.so.13", "libcudart.so.13"):
        m["files"].append(
            {
                "path": "engine/lib/cuda/" + lib,
                "size": 1000,
                "sha256": digest(lib),
                "mode": "0644",
                "component": "engine",
            }
        )
    data = _sbom(m)
    assert validate_sbom(data) == []
    refs = _by_ref(json.loads(data))
    wheel = refs["runtime:cuda:nvidia-cublas"]
    assert wheel["version"] == "13.0.2.14"
    assert wheel["purl"] == f"pkg:pypi/nvidia-cublas@13.0.2.14?file_name={cublas_whl}"
    assert wheel["hashes"] == [{"alg": "SHA-256", "content": digest("cublas-wheel")}]
    # the library taken out of the wheel is nested under it, listed once, with its own hash
    assert [c["name"] for c in wheel["components"]] == ["engine/lib/cuda/libcublas.so.13"]
    cuda = refs["runtime:cuda"]
    assert {c["bom-ref"] for c in cuda["components"]} == {
        "runtime:cuda:nvidia-cublas",
        "file:engine/lib/cuda/libcudart.so.13",
    }
    assert _props(cuda, "airlock:cuda.runtime_wheel") == [
        "nvidia-cublas==13.0.*",
        "nvidia-cuda-runtime==13.0.*",
    ]
