"""Realistic manifest dicts (agreed component property keys) for the evidence tests."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LLAMA_COMMIT = "b3a1d7c2e4f5061728394a5b6c7d8e9f00112233"
NUMPY_WHL = "wheels/numpy-2.1.0-cp311-cp311-manylinux_2_28_x86_64.whl"
JINJA_WHL = "wheels/jinja2-3.1.4-py3-none-any.whl"
CTRL_YAML_WHL = "controller/PyYAML-6.0.2-cp311-cp311-manylinux_2_17_x86_64.whl"


def digest(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def _file(path: str, size: int = 100, mode: str = "0644") -> dict[str, Any]:
    component = path.split("/", 1)[0] if "/" in path else "bundle"
    return {
        "path": path,
        "size": size,
        "sha256": digest(path),
        "mode": mode,
        "component": component,
    }


def manifest(**overrides: Any) -> dict[str, Any]:
    """A schema-1 manifest of a one-model CPU bundle with two wheelhouses."""
    files = [
        _file("README.md"),
        _file("SHA256SUMS"),
        _file(CTRL_YAML_WHL, 700_000),
        _file("controller/requirements.txt"),
        _file("engine/bin/llama-server", 5_000_000, "0755"),
        _file("engine/lib/libggml-base.so", 900_000),
        _file("engine/lib/libggml-cpu-haswell.so", 800_000),
        _file("engine/lib/libggml-cpu-x64.so", 800_000),
        _file("evidence/provenance.intoto.json", 4_000),
        _file("evidence/sbom.cdx.json", 20_000),
        _file("models/tiny/LICENSE", 11_000),
        _file("models/tiny/README.md", 2_000),
        _file("models/tiny/tiny.gguf", 400_000),
        _file("playbooks/install.yml"),
        _file("runtime/__init__.py"),
        _file("runtime/unpack.py"),
        _file("templates/airlock.service.j2"),
        _file(JINJA_WHL, 130_000),
        _file(NUMPY_WHL, 16_000_000),
        _file("wheels/requirements-cp311-manylinux_2_28_x86_64.txt"),
    ]
    files.sort(key=lambda f: f["path"].encode())
    m: dict[str, Any] = {
        "format": "airlock-bundle",
        "schema_version": 1,
        "name": "demo",
        "version": "1.0.0",
        "sequence": 1,
        "created": "2026-11-27T00:00:00Z",
        "expires": "2027-05-26T00:00:00Z",
        "builder": {"airlock": "0.1.0", "python": "3.11.7", "platform": "Linux-x86_64"},
        "components": {
            "models": {
                "type": "model",
                "properties": {
                    "models": [
                        {
                            "name": "tiny",
                            "source": "hub",
                            "repo": "airlock-test/tiny-llama",
                            "revision": "main",
                            "commit": COMMIT,
                            "endpoint": "https://huggingface.co",
                            "license": "apache-2.0",
                            "license_permissive": True,
                            "gated": False,
                            "license_files": ["models/tiny/LICENSE"],
                            "card": "models/tiny/README.md",
                            "entrypoint": "models/tiny/tiny.gguf",
                            "files": [
                                {
                                    "path": "models/tiny/tiny.gguf",
                                    "hub_path": "tiny.gguf",
                                    "sha256": digest("models/tiny/tiny.gguf"),
                                    "size": 400_000,
                                    "lfs": True,
                                },
                                {
                                    "path": "models/tiny/LICENSE",
                                    "hub_path": "LICENSE",
                                    "sha256": digest("models/tiny/LICENSE"),
                                    "size": 11_000,
                                    "lfs": False,
                                },
                            ],
                            "gguf": {
                                "architecture": "llama",
                                "parameters": 123_456,
                                "quantization": "F16",
                                "context_length": 2048,
                                "embedding_length": 64,
                                "block_count": 2,
                                "head_count": 4,
                                "head_count_kv": 4,
                                "chat_template": True,
                                "tensor_count": 21,
                                "split_count": 1,
                                "file_size": 400_000,
                            },
                        }
                    ]
                },
            },
            "engine": {
                "type": "runtime",
                "properties": {
                    "llama_cpp_python": {
                        "version": "0.3.16",
                        "sdist": "llama_cpp_python-0.3.16.tar.gz",
                        "sha256": digest("llama_cpp_python-0.3.16.tar.gz"),
                        "url": "https://files.pythonhosted.org/packages/source/l/"
                        "llama_cpp_python/llama_cpp_python-0.3.16.tar.gz",
                    },
                    "llama_cpp_commit": LLAMA_COMMIT,
                    "cmake_flags": [
                        "-DGGML_BACKEND_DL=ON",
                        "-DGGML_CPU_ALL_VARIANTS=OFF",
                        "-DGGML_NATIVE=OFF",
                    ],
                    "cpu_variants": ["x64", "haswell"],
                    "cuda": None,
                    "compiler": "gcc 12.2.0",
                    "cmake": "3.25.1",
                    "arch": "x86_64",
                    "server": "engine/bin/llama-server",
                    "lib_dir": "engine/lib",
                    "backend_dir": "engine/lib",
                    "server_defaults": {
                        "port": 8080,
                        "host": "0.0.0.0",
                        "ctx_size": "auto",
                        "parallel": "auto",
                        "model": "tiny",
                        "api_key_file": None,
                    },
                },
            },
            "wheels": {
                "type": "wheelhouse",
                "properties": {
                    "targets": [
                        {
                            "python": "3.11",
                            "platform": "manylinux_2_28_x86_64",
                            "abi": "cp311",
                            "requirements": "wheels/requirements-cp311-manylinux_2_28_x86_64.txt",
                        }
                    ],
                    "wheels": [
                        {
                            "file": NUMPY_WHL,
                            "name": "numpy",
                            "version": "2.1.0",
                            "sha256": digest(NUMPY_WHL),
                            "license": "BSD-3-Clause",
                        },
                        {
                            "file": JINJA_WHL,
                            "name": "Jinja2",
                            "version": "3.1.4",
                            "sha256": digest(JINJA_WHL),
                            "license": "BSD-3-Clause",
                        },
                    ],
                },
            },
            "controller": {
                "type": "wheelhouse",
                "properties": {
                    "targets": [
                        {
                            "python": "3.11",
                            "platform": "manylinux_2_17_x86_64",
                            "abi": "cp311",
                            "requirements": "controller/requirements.txt",
                        }
                    ],
                    "wheels": [
                        {
                            "file": CTRL_YAML_WHL,
                            "name": "PyYAML",
                            "version": "6.0.2",
                            "sha256": digest(CTRL_YAML_WHL),
                            "license": "MIT",
                        }
                    ],
                },
            },
            "runtime": {"type": "code", "properties": {"source": "airlock 0.1.0"}},
            "playbooks": {"type": "code", "properties": {"source": "airlock 0.1.0"}},
            "templates": {"type": "code", "properties": {"source": "airlock 0.1.0"}},
            "evidence": {"type": "evidence", "properties": {}},
            "bundle": {"type": "data", "properties": {}},
        },
        "files": files,
    }
    m.update(overrides)
    return m


def clone(m: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(m)


def set_file(m: dict[str, Any], path: str, **values: Any) -> None:
    for f in m["files"]:
        if f["path"] == path:
            f.update(values)
            return
    raise KeyError(path)
