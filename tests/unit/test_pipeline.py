"""The build pipeline's runtime wiring, with fakes for llamacpp, wheelhouse and smoke."""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import bundler.pipeline
from bundler.demo.tinymodel import write_tiny_model
from bundler.errors import SmokeTestError
from bundler.pipeline import BuildOptions, build, lock
from bundler.project.spec import load_spec
from bundler.ssh.keys import generate_keypair

EPOCH = int(time.time()) // 86400 * 86400


@dataclass
class FakeRuntime:
    calls: list[str] = field(default_factory=list)
    smoke_fails: bool = False

    def fetch_sdist(self, version: str, *, cache_dir: Path) -> Any:
        self.calls.append(f"fetch_sdist {version}")
        return SimpleNamespace(version=version)

    def cuda_options(self, architectures: tuple[str, ...]) -> Any:
        return SimpleNamespace(architectures=architectures)

    def build_engine(
        self,
        source: Any,
        *,
        variants: Any,
        cuda: Any,
        cache_dir: Path,
        log_dir: Path,
        compiler: str,
    ) -> Any:
        self.calls.append(
            f"build_engine {variants} cuda={cuda and cuda.architectures} compiler={compiler}"
        )
        props = {
            "llama_cpp_commit": "unknown",
            "cmake_flags": ["-DGGML_BACKEND_DL=ON"],
            "cpu_variants": list(variants),
            "cuda": None,
            "server": "engine/bin/llama-server",
            "lib_dir": "engine/lib",
        }
        return SimpleNamespace(properties=props)

    def stage_engine(self, build: Any, dest_dir: Path) -> None:
        (dest_dir / "bin").mkdir(parents=True)
        (dest_dir / "bin" / "llama-server").write_bytes(b"#!/bin/sh\n")
        (dest_dir / "bin" / "llama-server").chmod(0o755)

    def build_llama_cpp_python_wheel(
        self, source: Any, *, variants: Any, cache_dir: Path, log_dir: Path
    ) -> Path:
        self.calls.append("wheel")
        return Path("llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl")

    def Target(self, *, python: str, platform: str) -> Any:
        return (python, platform)

    def _wheelhouse(self, dest: Path, name: str) -> Any:
        dest.mkdir(parents=True)
        data = b"wheel " + name.encode()
        (dest / f"{name}-1.0-py3-none-any.whl").write_bytes(data)
        wheel = {
            "file": f"{dest.name}/{name}-1.0-py3-none-any.whl",
            "name": name,
            "version": "1.0",
            "sha256": hashlib.sha256(data).hexdigest(),
            "license": "MIT",
        }
        return SimpleNamespace(properties={"targets": [], "wheels": [wheel]})

    def build_wheelhouse(
        self, targets: Any, requirements: Any, *, extra_wheels: Any, dest: Path, cache_dir: Path
    ) -> Any:
        self.calls.append(
            f"build_wheelhouse {targets} {requirements} {[p.name for p in extra_wheels]}"
        )
        return self._wheelhouse(dest, "numpy")

    def build_controller_wheelhouse(
        self, dest: Path, *, cache_dir: Path, pythons: Sequence[str]
    ) -> Any:
        self.calls.append("controller " + " ".join(pythons))
        return self._wheelhouse(dest, "ansible_core")

    def smoke_test(self, engine_dir: Path, model_path: Path) -> Any:
        self.calls.append(f"smoke {engine_dir.name} {model_path.name} {model_path.is_file()}")
        if self.smoke_fails:
            raise SmokeTestError("llama-server never became healthy")
        return None


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    runtime = FakeRuntime()
    for module in ("llamacpp", "sdist", "cudalib", "wheelhouse", "smoke"):
        monkeypatch.setattr(bundler.pipeline, module, runtime)
    return runtime


@pytest.fixture
def project(tmp_path: Path) -> Path:
    generate_keypair(tmp_path / "key", comment="b@t", passphrase=None)
    write_tiny_model(tmp_path / "m.gguf")
    (tmp_path / "airlock.yaml").write_text(
        """
name: demo
version: "1"
sequence: 1
expires: 30d
models:
  - {name: m, source: local, path: m.gguf, license: mit}
runtime:
  llama_cpp_python: "0.3.36"
  cpu_variants: [x64, haswell]
  cuda: {enabled: true, architectures: ["90"]}
targets: {python: ["3.11"], requirements: ["numpy==1.0"]}
server: {port: 9999, ctx_size: 512}
"""
    )
    lock(load_spec(tmp_path / "airlock.yaml"))
    return tmp_path


def _build(project: Path) -> Any:
    opts = BuildOptions(
        out_dir=project / "dist", keys=(str(project / "key"),), source_date_epoch=EPOCH
    )
    return build(project / "airlock.yaml", opts)


def test_runtime_steps_run_in_order_and_feed_the_manifest(fake: FakeRuntime, project: Path) -> None:
    result = _build(project)
    assert fake.calls == [
        "fetch_sdist 0.3.36",
        "build_engine ('x64', 'haswell') cuda=('90',) compiler=system",
        "wheel",
        "build_wheelhouse [('3.11', 'manylinux_2_28_x86_64')] ['numpy==1.0'] "
        "['llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl']",
        "controller 3.10 3.11 3.12 3.13",
        "smoke engine m.gguf True",
    ]
    with tarfile.open(result.path) as tar:
        f = tar.extractfile("airlock/manifest.json")
        assert f is not None
        manifest = json.load(f)
        names = tar.getnames()
    comps = manifest["components"]
    assert comps["engine"]["type"] == "runtime"
    assert comps["engine"]["properties"]["server_defaults"]["port"] == 9999
    assert comps["engine"]["properties"]["server_defaults"]["ctx_size"] == 512
    assert comps["wheels"]["properties"]["wheels"][0]["name"] == "numpy"
    assert comps["controller"]["properties"]["wheels"][0]["name"] == "ansible_core"
    assert "engine/bin/llama-server" in names and "evidence/sbom.cdx.json" in names
    modes = {e["path"]: e["mode"] for e in manifest["files"]}
    assert modes["engine/bin/llama-server"] == "0755"


def test_failed_smoke_test_signs_nothing(fake: FakeRuntime, project: Path) -> None:
    fake.smoke_fails = True
    with pytest.raises(SmokeTestError):
        _build(project)
    assert list((project / "dist").iterdir()) == []


def test_skip_engine_leaves_the_engine_out(fake: FakeRuntime, project: Path) -> None:
    opts = BuildOptions(
        out_dir=project / "dist",
        keys=(str(project / "key"),),
        source_date_epoch=EPOCH,
        skip_engine=True,
    )
    result = build(project / "airlock.yaml", opts)
    assert fake.calls == []
    with tarfile.open(result.path) as tar:
        assert not [n for n in tar.getnames() if n.startswith(("engine/", "wheels/"))]


@pytest.mark.parametrize("durable", [False, True])
def test_build_fsync_reaches_pack(
    fake: FakeRuntime, project: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    seen: list[bool] = []
    real_pack = bundler.pipeline.pack

    def pack(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["durable"])
        return real_pack(*args, **kwargs)

    monkeypatch.setattr(bundler.pipeline, "pack", pack)
    opts = BuildOptions(
        out_dir=project / "dist",
        keys=(str(project / "key"),),
        source_date_epoch=EPOCH,
        skip_engine=True,
        durable=durable,
    )
    build(project / "airlock.yaml", opts)
    assert seen == [durable]


def test_bad_key_fails_before_any_work(fake: FakeRuntime, project: Path) -> None:
    from bundler.errors import KeyFileError

    opts = BuildOptions(out_dir=project / "dist", keys=(str(project / "nokey"),))
    with pytest.raises(KeyFileError):
        build(project / "airlock.yaml", opts)
    assert fake.calls == [] and not (project / "dist").exists()


def _set_targets(project: Path, targets: str) -> None:
    spec = project / "airlock.yaml"
    old = 'targets: {python: ["3.11"], requirements: ["numpy==1.0"]}'
    spec.write_text(spec.read_text().replace(old, "targets: " + targets))
    lock(load_spec(spec))


def test_targets_without_the_binding_skip_the_second_llama_cpp_compile(
    fake: FakeRuntime, project: Path
) -> None:
    _set_targets(
        project, '{python: ["3.11"], requirements: ["numpy==1.0"], llama_cpp_python: false}'
    )
    _build(project)
    assert "wheel" not in fake.calls
    assert any(c.startswith("build_wheelhouse") and c.endswith("[]") for c in fake.calls)


def test_controller_wheelhouse_is_built_for_the_spec_controller_pythons(
    fake: FakeRuntime, project: Path
) -> None:
    _set_targets(project, '{python: ["3.11"], controller_python: ["3.13", "3.12"]}')
    _build(project)
    assert "controller 3.13 3.12" in fake.calls


def test_targets_that_need_no_packages_get_no_target_wheelhouse(
    fake: FakeRuntime, project: Path
) -> None:
    _set_targets(project, '{python: ["3.11"], requirements: [], llama_cpp_python: false}')
    result = _build(project)
    assert not any(c.startswith(("wheel", "build_wheelhouse")) for c in fake.calls)
    assert "controller 3.10 3.11 3.12 3.13" in fake.calls
    with tarfile.open(result.path) as tar:
        f = tar.extractfile("airlock/manifest.json")
        assert f is not None
        manifest = json.load(f)
        assert not [n for n in tar.getnames() if n.startswith("wheels/")]
    assert "wheels" not in manifest["components"]


def test_rejects_build_that_is_expired_at_birth_before_any_work(
    fake: FakeRuntime, project: Path
) -> None:
    from bundler.errors import UsageError

    opts = BuildOptions(
        out_dir=project / "dist", keys=(str(project / "key"),), source_date_epoch=1_700_000_000
    )
    with pytest.raises(UsageError) as info:
        build(project / "airlock.yaml", opts)
    # expires: 30d from the pinned 2023-11-14T22:13:20Z
    assert "2023-12-14T22:13:20Z" in info.value.message
    assert "2023-11-14T22:13:20Z" in info.value.message
    assert "expires: DATE in" in (info.value.hint or "")
    assert fake.calls == [] and not (project / "dist").exists()
