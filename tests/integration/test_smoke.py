"""Smoke test with the real llama-server build and generated tiny GGUF models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bundler.demo.tinymodel import write_tiny_model
from bundler.engine import llamacpp
from bundler.engine.smoke import smoke_test
from bundler.errors import SmokeTestError
from tests.integration.llamacpp_support import engine_build


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("bundle") / "engine"
    llamacpp.stage_engine(engine_build(), dest)
    return dest


@pytest.mark.slow
def test_built_server_serves_a_tiny_model_offline(engine: Path, tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny.gguf")[0]
    result = smoke_test(engine, model, timeout=120)
    assert result.tokens_predicted >= 1
    assert result.offline_flag


@pytest.mark.slow
def test_ggml_loads_the_best_variant_for_this_cpu(engine: Path, tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny.gguf")[0]
    result = smoke_test(engine, model, timeout=120)
    best = llamacpp.default_variants()[-1]
    assert result.cpu_backend == f"libggml-cpu-{best}.so", result.log_tail


@pytest.mark.slow
def test_engine_still_serves_after_moving_the_tree(engine: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "releases" / "1" / "engine"
    shutil.copytree(engine, moved)
    model = write_tiny_model(tmp_path / "tiny.gguf")[0]
    assert smoke_test(moved, model, timeout=120).tokens_predicted >= 1


@pytest.mark.slow
def test_relative_engine_and_model_paths_are_served(
    engine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `airlock build --out dist` stages under a relative directory
    write_tiny_model(tmp_path / "tiny.gguf")
    moved = tmp_path / "dist" / "stage" / "engine"
    shutil.copytree(engine, moved)
    monkeypatch.chdir(tmp_path)
    result = smoke_test(Path("dist/stage/engine"), Path("tiny.gguf"), timeout=120)
    assert result.tokens_predicted >= 1


@pytest.mark.slow
def test_corrupted_model_fails_the_smoke_test(engine: Path, tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny.gguf")[0]
    data = bytearray(model.read_bytes())
    model.write_bytes(bytes(data[: len(data) // 2]))  # truncated mid-tensor data
    with pytest.raises(SmokeTestError) as info:
        smoke_test(engine, model, timeout=120)
    assert "before it was healthy" in info.value.message
    assert info.value.problems, "the server log tail must be in the error"


@pytest.mark.slow
def test_model_with_garbage_header_fails_the_smoke_test(engine: Path, tmp_path: Path) -> None:
    model = tmp_path / "garbage.gguf"
    model.write_bytes(b"NOTGGUF" + bytes(4096))
    with pytest.raises(SmokeTestError):
        smoke_test(engine, model, timeout=120)


@pytest.mark.slow
def test_demo_model_answers_its_sentence_through_the_built_server(
    engine: Path, tmp_path: Path
) -> None:
    from bundler.demo.run import ANSWER, MODEL_NAME, make_model

    make_model(tmp_path)
    result = smoke_test(engine, tmp_path / f"{MODEL_NAME}.gguf", timeout=120)
    # greedy decoding after any prompt: the sentence, then end of sequence
    assert result.content.strip() == ANSWER, result.log_tail
