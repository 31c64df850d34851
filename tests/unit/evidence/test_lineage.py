"""A model made at build time: its lineage in the SBOM, the provenance, inspect and the diff."""

from __future__ import annotations

import json
from typing import Any

from bundler.evidence.diff import diff_manifests
from bundler.evidence.provenance import resolved_dependencies
from bundler.evidence.sbom import build_sbom, validate_sbom
from runtime.components import models_of
from tests.evidence_fixtures import COMMIT, LLAMA_COMMIT, clone, digest, manifest

SRC = "publisher/tiny-llama"
SRC_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _derived(**conv: Any) -> dict[str, Any]:
    m = manifest()
    model = m["components"]["models"]["properties"]["models"][0]
    model["repo"], model["commit"] = SRC, SRC_COMMIT
    for f in model["files"]:
        f["hub_path"] = None
    model["derived_from"] = {
        "repo": SRC,
        "commit": SRC_COMMIT,
        "revision": "main",
        "endpoint": "https://huggingface.co",
        "files": [
            {"path": "config.json", "size": 600, "sha256": digest("config.json")},
            {"path": "model.safetensors", "size": 9000, "sha256": digest("model.safetensors")},
        ],
    }
    model["converter"] = {
        "llama_cpp_commit": LLAMA_COMMIT,
        "llama_cpp_python": {"version": "0.3.36", "sha256": digest("sdist")},
        "script": {"path": "vendor/llama.cpp/convert_hf_to_gguf.py", "sha256": digest("script")},
        "outtype": "f16",
        "quantize": "Q4_K_M",
        "quantize_tool_sha256": digest("tool"),
        "environment": {
            "requirements": ["torch==2.13.0"],
            "packages": [
                {
                    "name": "torch",
                    "version": "2.13.0+cpu",
                    "file": "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                    "sha256": digest("torch"),
                }
            ],
        },
        **conv,
    }
    return m


def _sbom(m: dict[str, Any]) -> dict[str, Any]:
    data = build_sbom(
        name=m["name"],
        version=m["version"],
        created=m["created"],
        components=m["components"],
        files=m["files"],
        serial_seed=b"seed",
    )
    assert validate_sbom(data) == []
    return dict(json.loads(data))


def test_sbom_gives_the_gguf_the_publishers_model_as_pedigree_ancestor() -> None:
    doc = _sbom(_derived())
    comp = next(c for c in doc["components"] if c["bom-ref"] == "model:tiny")
    assert "purl" not in comp, "nobody published the GGUF the build made"
    (ancestor,) = comp["pedigree"]["ancestors"]
    assert ancestor["purl"] == f"pkg:huggingface/{SRC}@{SRC_COMMIT}"
    files = {c["name"]: c["hashes"][0]["content"] for c in ancestor["components"]}
    assert files == {
        "config.json": digest("config.json"),
        "model.safetensors": digest("model.safetensors"),
    }
    assert (
        f"converted from {SRC}@{SRC_COMMIT} with llama.cpp {LLAMA_COMMIT}"
        in comp["pedigree"]["notes"]
    )


def test_published_gguf_has_no_pedigree() -> None:
    comp = next(c for c in _sbom(manifest())["components"] if c["bom-ref"] == "model:tiny")
    assert "pedigree" not in comp and comp["purl"].endswith(f"@{COMMIT}")


def test_provenance_lists_the_inputs_and_converter_wheels_not_the_output() -> None:
    deps = resolved_dependencies(_derived()["components"])
    uris = {d["uri"]: d["digest"]["sha256"] for d in deps}
    base = f"https://huggingface.co/{SRC}/resolve/{SRC_COMMIT}/"
    assert uris[base + "model.safetensors"] == digest("model.safetensors")
    assert uris[base + "config.json"] == digest("config.json")
    wheel = (
        "pkg:pypi/torch@2.13.0+cpu?file_name=torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    )
    assert uris[wheel] == digest("torch")
    assert not any(u.startswith("file:") for u in uris), "the GGUF made here is no input"


def test_lineage_line_names_repo_commit_and_llama_cpp_commit() -> None:
    (model,) = models_of(_derived())
    assert model.lineage == f"converted from {SRC}@{SRC_COMMIT} with llama.cpp {LLAMA_COMMIT}"
    assert models_of(manifest())[0].lineage is None


def test_diff_shows_a_change_of_each_lineage_fact() -> None:
    old = _derived()
    new = clone(old)
    model = new["components"]["models"]["properties"]["models"][0]
    model["derived_from"]["files"][1]["sha256"] = digest("other weights")
    model["converter"]["script"]["sha256"] = digest("other script")
    model["converter"]["quantize"] = "Q5_K_M"
    model["converter"]["environment"]["packages"][0]["version"] = "2.14.0+cpu"
    subjects = {c.subject for c in diff_manifests(old, new).section("models")}
    assert {
        "model tiny derived_from file model.safetensors",
        "model tiny converter.script.sha256",
        "model tiny converter.quantize",
        "model tiny converter package torch",
    } <= subjects
