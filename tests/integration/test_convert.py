"""A model from the publisher's safetensors: lock, convert, quantize, smoke test, lineage.

Real components: a tiny Llama repository in the Hugging Face layout (random weights written
with ``safetensors``, a tokenizer trained with ``tokenizers``, a chat template), sharded with
its index and served by the local Hub test server; the pinned sdist's own
``convert_hf_to_gguf.py`` in its locked environment (offline); ``llama-quantize`` and
``llama-server`` built from the same source.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bundler.cli.main import main
from bundler.demo.hubserver import HubServer
from bundler.demo.tinyhf import TinyHfOptions, tiny_hf_repo
from bundler.demo.tinymodel import TinyModelOptions, write_tiny_model
from bundler.engine import llamacpp, quantize, sdist
from bundler.engine.buildcache import default_cache_dir
from bundler.errors import ConvertError
from bundler.pipeline import BuildOptions, build
from bundler.project.derive import QUANT_TYPES
from bundler.ssh.keys import generate_keypair
from runtime.components import models_of
from tests.integration.llamacpp_support import VERSION

REPO = "publisher/tiny-llama"
ODD = "publisher/tiny-odd"
F16 = "publisher/tiny-F16-GGUF"
CARD = b"---\nlicense: apache-2.0\n---\n# tiny llama\n"
EPOCH = int(time.time()) // 86400 * 86400


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[HubServer, str]]:
    files = tiny_hf_repo(TinyHfOptions(shards=2))
    files.update({"README.md": CARD, "LICENSE": b"Apache License 2.0\n"})
    odd = tiny_hf_repo(TinyHfOptions(architecture="AirlockTestForCausalLM"))
    (f16,) = write_tiny_model(tmp_path / "tiny-f16.gguf", TinyModelOptions(f16=True))
    with HubServer() as server:
        commit = server.add_repo(REPO, files)
        server.add_repo(ODD, {**odd, "README.md": CARD})
        server.add_repo(F16, {"tiny-f16.gguf": f16.read_bytes(), "README.md": CARD})
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server, commit


def _project(tmp_path: Path, repo: str, model_keys: str) -> Path:
    d = tmp_path / "project"
    d.mkdir()
    generate_keypair(d / "key", comment="builder@test", passphrase=None)
    variants = json.dumps(llamacpp.default_variants())
    (d / "airlock.yaml").write_text(
        f"""
name: converted
version: "1.0.0"
sequence: 1
expires: 30d
models:
  - name: tiny
    repo: {repo}
    revision: main
{model_keys}
engine:
  llama_cpp_python: "{VERSION}"
  cpu_variants: {variants}
server:
  model: tiny
"""
    )
    return d


def _manifest(bundle: Path) -> dict[str, Any]:
    with tarfile.open(bundle) as tar:
        f = tar.extractfile("airlock/manifest.json")
        assert f is not None
        return dict(json.load(f))


def _member(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def _build(d: Path, out: str) -> Path:
    options = BuildOptions(out_dir=d / out, keys=(str(d / "key"),), source_date_epoch=EPOCH)
    return build(d / "airlock.yaml", options).path


@pytest.mark.slow
def test_safetensors_repo_is_converted_quantized_served_and_recorded(
    hub: tuple[HubServer, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, commit = hub
    d = _project(tmp_path, REPO, "    convert: {outtype: f16}\n    quantize: Q4_K_M")
    assert main(["lock", str(d / "airlock.yaml")]) == 0
    locked = json.loads((d / "airlock.lock").read_text())["models"]["tiny"]
    assert locked["entrypoint"] == "model.safetensors.index.json"
    pins = json.loads((d / "airlock.lock").read_text())["converter"]
    assert pins["llama_cpp_python"] == VERSION
    assert any(p["name"] == "torch" and len(p["sha256"]) == 64 for p in pins["packages"])
    shards = {f["path"] for f in locked["files"] if f["path"].endswith(".safetensors")}
    assert shards == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}

    bundle = _build(d, "dist")  # the smoke test serves the quantized GGUF before signing
    m = _manifest(bundle)
    model = m["components"]["models"]["properties"]["models"][0]
    assert model["entrypoint"] == "models/tiny/tiny-Q4_K_M.gguf"
    assert model["gguf"]["quantization"] == "Q4_K_M"
    assert model["gguf"]["architecture"] == "llama"
    paths = {f["path"] for f in m["files"]}
    assert "models/tiny/tiny-Q4_K_M.gguf" in paths
    assert not any(p.endswith(".safetensors") for p in paths), "weights ship as the GGUF only"
    derived = model["derived_from"]
    assert (derived["repo"], derived["commit"]) == (REPO, commit)
    assert {f["path"]: f["sha256"] for f in derived["files"]} == {
        f["path"]: f["sha256"] for f in locked["files"]
    }
    conv = model["converter"]
    engine = m["components"]["engine"]["properties"]
    assert conv["llama_cpp_commit"] == engine["llama_cpp_commit"]
    assert conv["outtype"] == "f16" and conv["quantize"] == "Q4_K_M"
    assert len(conv["script"]["sha256"]) == 64 and len(conv["quantize_tool_sha256"]) == 64
    assert conv["environment"]["packages"] == sorted(pins["packages"], key=lambda p: p["name"])
    packages = {p["name"]: p for p in conv["environment"]["packages"]}
    assert packages["torch"]["version"].startswith("2.13.0")
    assert all(len(p["sha256"]) == 64 for p in packages.values())

    sbom = json.loads(_member(bundle, "evidence/sbom.cdx.json"))
    comp = next(c for c in sbom["components"] if c.get("bom-ref") == "model:tiny")
    ancestors = comp["pedigree"]["ancestors"]
    assert ancestors[0]["purl"] == f"pkg:huggingface/{REPO}@{commit}"
    prov = json.loads(_member(bundle, "evidence/provenance.intoto.json"))
    deps = prov["predicate"]["buildDefinition"]["resolvedDependencies"]
    uris = {x["uri"] for x in deps}
    for f in locked["files"]:
        assert f"{server.endpoint}/{REPO}/resolve/{commit}/{f['path']}" in uris
    assert any(u.startswith("pkg:pypi/torch@2.13.0") for u in uris)

    capsys.readouterr()
    assert main(["inspect", str(bundle)]) == 0
    line = f"converted from {REPO}@{commit} with llama.cpp {engine['llama_cpp_commit']}"
    assert line in capsys.readouterr().out
    assert main(["report", str(bundle), "--out", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    assert line in page and locked["files"][0]["sha256"] in page

    # Drop the cached conversion and quantization: the second build really runs both tools,
    # so byte-identical bundles show the converter and llama-quantize are deterministic.
    made = {
        conv["converted_sha256"],
        next(f["sha256"] for f in model["files"] if not f["hub_path"]),
    }
    dropped = 0
    for kind in ("convert", "quantize"):
        for entry in (default_cache_dir() / kind).glob("*/model.gguf"):
            if hashlib.sha256(entry.read_bytes()).hexdigest() in made:
                shutil.rmtree(entry.parent)
                dropped += 1
    assert dropped == 2
    again = _build(d, "again")
    assert (
        hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(bundle.read_bytes()).digest()
    )


@pytest.mark.slow
def test_unknown_architecture_is_refused_before_signing(
    hub: tuple[HubServer, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _project(tmp_path, ODD, "")  # no GGUF in the repository: converted automatically
    assert main(["lock", str(d / "airlock.yaml")]) == 0
    assert "the selection has no GGUF file" in capsys.readouterr().err
    with pytest.raises(ConvertError, match="AirlockTestForCausalLM"):
        _build(d, "dist")
    assert not list((d / "dist").glob("*.tar")), "nothing is written when conversion is refused"


@pytest.mark.slow
def test_spec_quantization_types_are_the_pinned_tools() -> None:
    cache = default_cache_dir()
    tool = quantize.build_quantize_tool(
        sdist.fetch_sdist(VERSION, cache_dir=cache), cache_dir=cache
    )
    assert tool.types == QUANT_TYPES


@pytest.mark.slow
def test_published_f16_gguf_is_quantized_and_says_so(
    hub: tuple[HubServer, str], tmp_path: Path
) -> None:
    d = _project(tmp_path, F16, "    quantize: Q8_0")
    assert main(["lock", str(d / "airlock.yaml")]) == 0
    assert "converter" not in json.loads((d / "airlock.lock").read_text()), "nothing to convert"
    m = _manifest(_build(d, "dist"))
    (model,) = m["components"]["models"]["properties"]["models"]
    assert model["entrypoint"] == "models/tiny/tiny-Q8_0.gguf"
    assert model["gguf"]["quantization"] == "Q8_0"
    assert model["converter"]["script"] is None and model["converter"]["quantize"] == "Q8_0"
    assert {f["path"] for f in model["derived_from"]["files"]} == {"README.md", "tiny-f16.gguf"}
    commit = model["derived_from"]["commit"]
    line = f"quantized from {F16}@{commit} with llama.cpp "
    assert str(models_of(m)[0].lineage).startswith(line)
