"""runtime.components: the typed view of the manifest's engine and models records."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from runtime import components as c
from runtime.errors import UsageError
from tests.unit.runtime.test_selection import CUDA, MISTRAL, TINY, manifest

# What bundler.engine.llamacpp (engine_properties, build_engine) and bundler.pipeline.stage_engine
# write for a CUDA build, every key filled in (docs/FORMAT.md, "engine").
PRODUCED: Dict[str, Any] = {
    "llama_cpp_python": {
        "version": "0.3.16",
        "sdist": "llama_cpp_python-0.3.16.tar.gz",
        "sha256": "a" * 64,
        "url": "https://files.example/llama_cpp_python-0.3.16.tar.gz",
    },
    "llama_cpp_commit": "b" * 40,
    "cmake_flags": ["-DGGML_BACKEND_DL=ON", "-DGGML_NATIVE=OFF"],
    "cpu_variants": ["x64", "haswell"],
    "cuda": {
        "architectures": ["80", "90"],
        "cuda_version": "12.4",
        "min_driver": "525.60.13",
        "module": "engine/lib/libggml-cuda.so",
        "runtime_dir": "engine/lib/cuda",
        "runtime_libraries": ["engine/lib/cuda/libcublas.so.12"],
        "runtime_wheels": ["nvidia-cublas-cu12==12.4.*"],
        "runtime_wheel_files": [
            {
                "name": "nvidia-cublas-cu12",
                "version": "12.4.5.8",
                "file": "nvidia_cublas_cu12-12.4.5.8-py3-none-manylinux2014_x86_64.whl",
                "sha256": "c" * 64,
                "size": 123,
                "index_url": "https://pypi.org/simple",
                "libraries": ["engine/lib/cuda/libcublas.so.12"],
            }
        ],
        "runtime_wheel_files_note": None,
        "nvcc": "12.4.131",
        "vmm": True,
    },
    "compiler": "gcc 12.2.0",
    "cmake": "3.25.1",
    "arch": "x86_64",
    "glibc_min": "2.34",
    "server": "engine/bin/llama-server",
    "lib_dir": "engine/lib",
    "backend_dir": "engine/lib",
    "server_defaults": {"port": 8080, "host": "127.0.0.1", "ctx_size": "auto"},
}


def test_the_defaults_are_the_layout_the_producer_writes() -> None:
    assert c.ENGINE_SERVER == "engine/bin/llama-server"
    assert c.ENGINE_LIB_DIR == "engine/lib"
    assert c.CUDA_RUNTIME_DIR == c.ENGINE_LIB_DIR + "/cuda"
    assert c.CUDA_MODULE == "engine/lib/libggml-cuda.so"


def test_every_key_the_producer_writes_is_a_field() -> None:
    e = c.parse_engine(PRODUCED)
    assert set(PRODUCED) <= set(c.EngineFacts._fields)
    assert e.cuda is not None
    assert set(PRODUCED["cuda"]) <= set(c.CudaFacts._fields)
    assert e.llama_cpp_python == PRODUCED["llama_cpp_python"]
    assert e.llama_cpp_commit == "b" * 40
    assert e.cmake_flags == ("-DGGML_BACKEND_DL=ON", "-DGGML_NATIVE=OFF")
    assert e.cpu_variants == ("x64", "haswell")
    assert (e.compiler, e.cmake, e.arch, e.glibc_min) == ("gcc 12.2.0", "3.25.1", "x86_64", "2.34")
    assert (e.server, e.lib_dir, e.backend_dir) == (
        c.ENGINE_SERVER,
        c.ENGINE_LIB_DIR,
        c.ENGINE_LIB_DIR,
    )
    assert e.server_defaults == PRODUCED["server_defaults"]
    assert e.server_flags == ()
    assert e.properties == PRODUCED


def test_cuda_facts() -> None:
    cuda = c.parse_engine(PRODUCED).cuda
    assert cuda is not None
    assert cuda.architectures == ("80", "90")
    assert (cuda.cuda_version, cuda.min_driver) == ("12.4", "525.60.13")
    assert (cuda.module, cuda.runtime_dir) == (c.CUDA_MODULE, c.CUDA_RUNTIME_DIR)
    assert cuda.runtime_libraries == ("engine/lib/cuda/libcublas.so.12",)
    assert cuda.runtime_wheels == ("nvidia-cublas-cu12==12.4.*",)
    assert cuda.runtime_wheel_files is not None
    assert cuda.runtime_wheel_files[0]["version"] == "12.4.5.8"
    assert cuda.runtime_wheel_files_note is None
    assert (cuda.nvcc, cuda.vmm) == ("12.4.131", True)
    assert cuda.properties == PRODUCED["cuda"]


def test_a_bare_engine_gets_the_launch_defaults() -> None:
    e = c.parse_engine({})
    assert (e.server, e.lib_dir, e.backend_dir) == (
        "engine/bin/llama-server",
        "engine/lib",
        "engine/lib",
    )
    assert e.cuda is None and e.arch is None and e.llama_cpp_commit is None
    assert e.cpu_variants == () and e.cmake_flags == () and e.server_flags == ()
    assert e.server_defaults == {} and e.llama_cpp_python == {}


def test_nulls_and_empty_strings_are_defaults_too() -> None:
    e = c.parse_engine(
        {"server": None, "lib_dir": "", "backend_dir": None, "cpu_variants": None, "cuda": None}
    )
    assert (e.server, e.lib_dir, e.backend_dir, e.cpu_variants) == (
        c.ENGINE_SERVER,
        c.ENGINE_LIB_DIR,
        c.ENGINE_LIB_DIR,
        (),
    )


def test_backend_and_cuda_runtime_dirs_follow_a_moved_lib_dir() -> None:
    e = c.parse_engine({"lib_dir": "x/lib", "cuda": {"architectures": [80, "90"]}})
    assert e.backend_dir == "x/lib"
    assert e.cuda is not None
    assert e.cuda.runtime_dir == "x/lib/cuda"
    assert e.cuda.architectures == ("80", "90")
    # Not recorded means not known: the module is not checked against the files then.
    assert e.cuda.module is None and e.cuda.min_driver is None
    assert e.cuda.runtime_wheel_files is None and e.cuda.runtime_libraries == ()


@pytest.mark.parametrize("cuda", [None, {}, False])
def test_no_cuda_backend(cuda: object) -> None:
    assert c.parse_engine({"cuda": cuda}).cuda is None


@pytest.mark.parametrize(
    ("props", "field"),
    [
        ({"cuda": "yes"}, "components.engine.properties.cuda"),
        ({"cpu_variants": "x64"}, "components.engine.properties.cpu_variants"),
        ({"server_defaults": [8080]}, "components.engine.properties.server_defaults"),
        ({"cuda": {"runtime_wheel_files": ["w.whl"]}}, "cuda.runtime_wheel_files[0]"),
    ],
)
def test_values_of_the_wrong_type_are_refused_by_name(props: Dict[str, Any], field: str) -> None:
    with pytest.raises(UsageError, match=field.replace("[", r"\[").replace("]", r"\]")) as e:
        c.parse_engine(props)
    assert e.value.exit_code == 2
    assert "rebuild the bundle" in (e.value.hint or "")


def test_model_facts_from_a_record() -> None:
    m = c.parse_model(dict(MISTRAL, source="hub", repo="org/m", commit="d" * 40, gated=False))
    assert (m.name, m.source, m.repo, m.commit, m.gated) == (
        "mistral-7b",
        "hub",
        "org/m",
        "d" * 40,
        False,
    )
    assert m.entrypoint == "models/mistral-7b/mistral-7b.Q4_K_M.gguf"
    assert m.files == tuple(MISTRAL["files"])
    assert m.gguf.block_count == 32 and m.gguf.head_count_kv == 8
    assert m.gguf.quantization == "Q4_K_M" and m.gguf.chat_template is None
    assert m.gguf.properties == MISTRAL["gguf"]
    assert m.license is None and m.license_files == () and m.endpoint is None


def test_model_without_gguf_facts_has_every_gguf_field_none() -> None:
    for raw in ({"name": "x"}, {"name": "x", "gguf": None}, {"name": "x", "gguf": {}}):
        g = c.parse_model(raw).gguf
        assert set(g[:-1]) == {None} and g.properties == {}


def test_gguf_zero_stays_zero_and_a_non_integer_is_refused() -> None:
    assert c.parse_gguf({"head_count": 0, "block_count": ""}).head_count == 0
    assert c.parse_gguf({"block_count": ""}).block_count is None
    with pytest.raises(UsageError, match=r"models\[0\]\.gguf\.block_count in the manifest"):
        c.models_of(manifest(variants=["x64"], models=[dict(TINY, gguf={"block_count": "many"})]))


def test_engine_of_a_manifest_without_engine_is_none() -> None:
    assert c.engine_of({"components": {}}) is None
    assert c.engine_of({"components": None}) is None
    assert c.engine_of(manifest(variants=["x64"], cuda=CUDA)) is not None


def test_require_engine_explains_what_to_pass() -> None:
    with pytest.raises(UsageError) as e:
        c.require_engine({"components": {"models": {}}})
    assert e.value.message == "the manifest has no components.engine.properties"
    assert e.value.hint == (
        "pass the bundle's airlock/manifest.json (a bundle built by airlock build)"
    )
    with pytest.raises(UsageError) as e:
        c.require_engine({"components": {"engine": {"properties": ["x"]}}})
    assert e.value.message == "components.engine.properties in the manifest is not an object"


def test_models_of_is_empty_without_models() -> None:
    assert c.models_of({}) == []
    assert c.models_of({"components": {"models": {"properties": {"models": None}}}}) == []
    assert [m.name for m in c.models_of(manifest(variants=[], models=[TINY, MISTRAL]))] == [
        "tiny",
        "mistral-7b",
    ]


def test_find_model_first_named_or_refused_with_the_choices() -> None:
    m = manifest(variants=["x64"], models=[TINY, MISTRAL])
    assert c.find_model(m, None).name == "tiny"
    assert c.find_model(m, "mistral-7b").name == "mistral-7b"
    with pytest.raises(UsageError) as e:
        c.find_model(m, "nope")
    assert e.value.message == "model 'nope' is not in the bundle"
    assert e.value.hint == "choose one of: tiny, mistral-7b"
    with pytest.raises(UsageError) as e:
        c.find_model({"components": {"models": {"properties": {"models": []}}}}, None)
    assert e.value.message == ("the manifest lists no models (components.models.properties.models)")
    assert e.value.hint == "pass the bundle's airlock/manifest.json"
