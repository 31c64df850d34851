"""Build cache: keyed by inputs, finished entries only, failed builds explain themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundler.engine.buildcache import BuildCache, cache_key, copy_log, log_tail
from bundler.errors import BuildError


def _counting_builder(calls: list[Path]):  # type: ignore[no-untyped-def]
    def builder(out: Path, log: Path) -> None:
        calls.append(out)
        (out / "artifact").write_text("built")
        with open(log, "a") as fh:
            fh.write("compiling...\n")

    return builder


def test_unchanged_inputs_reuse_the_entry_without_rebuilding(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)
    calls: list[Path] = []
    inputs = {"source_sha256": "ab" * 32, "flags": ["-DX=1"], "compiler": "gcc 12.2.0"}
    first = cache.build("engine", inputs, _counting_builder(calls))
    second = cache.build("engine", dict(inputs), _counting_builder(calls))
    assert len(calls) == 1
    assert not first.hit and second.hit
    assert first.path == second.path
    assert (second.path / "artifact").read_text() == "built"
    assert "compiling" in second.log.read_text()


@pytest.mark.parametrize(
    "change",
    [
        {"source_sha256": "cd" * 32},
        {"flags": ["-DX=2"]},
        {"compiler": "gcc 13.1.0"},
        {"variants": ["x64", "zen4"]},
    ],
)
def test_any_changed_input_rebuilds(tmp_path: Path, change: dict[str, object]) -> None:
    cache = BuildCache(tmp_path)
    calls: list[Path] = []
    base = {
        "source_sha256": "ab" * 32,
        "flags": ["-DX=1"],
        "compiler": "gcc 12.2.0",
        "variants": ["x64", "haswell"],
    }
    cache.build("engine", base, _counting_builder(calls))
    cache.build("engine", {**base, **change}, _counting_builder(calls))
    assert len(calls) == 2
    assert cache_key(base) != cache_key({**base, **change})


def test_key_ignores_dict_order_but_not_list_order() -> None:
    assert cache_key({"a": 1, "b": 2}) == cache_key({"b": 2, "a": 1})
    assert cache_key({"v": ["x64", "haswell"]}) != cache_key({"v": ["haswell", "x64"]})


def test_failed_build_leaves_no_entry_and_reports_log_tail(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)

    def builder(out: Path, log: Path) -> None:
        (out / "half-written.o").write_text("x")
        with open(log, "a") as fh:
            for i in range(100):
                fh.write(f"line {i}\n")
            fh.write("error: expected ';' before '}' token\n")
        raise RuntimeError("compiler exited 1")

    inputs = {"k": 1}
    with pytest.raises(BuildError) as info:
        cache.build("engine", inputs, builder)
    err = info.value
    assert "compiler exited 1" in err.message
    assert err.problems[-1] == "error: expected ';' before '}' token"
    assert len(err.problems) == 40
    assert err.hint and "failed-" in err.hint
    kept = tmp_path / "engine" / f"failed-{cache_key(inputs)}.log"
    assert "expected ';'" in kept.read_text()
    assert cache.lookup("engine", inputs) is None
    assert not [p for p in (tmp_path / "engine").iterdir() if p.name.startswith(".work-")]


def test_build_error_from_builder_keeps_its_message_and_gains_log_path(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)

    def builder(out: Path, log: Path) -> None:
        raise BuildError("cmake configure failed (exit 1)", problems=["CMake Error at x"])

    with pytest.raises(BuildError) as info:
        cache.build("wheel", {"k": 2}, builder)
    assert info.value.message == "cmake configure failed (exit 1)"
    assert info.value.problems[0] == "CMake Error at x"
    assert info.value.problems[-1].startswith("build log: ")


def test_log_is_copied_to_the_build_output(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "cache")
    entry = cache.build("engine", {"k": 3}, _counting_builder([]))
    copied = copy_log(entry, tmp_path / "out" / "logs", "engine-build.log")
    assert copied is not None and copied.read_text() == "compiling...\n"


def test_log_tail_of_missing_file_is_empty(tmp_path: Path) -> None:
    assert log_tail(tmp_path / "nope.log") == ""
