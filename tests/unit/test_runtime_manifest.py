"""Manifest parsing: only bytes the writer could have produced, only values the code can use."""

from __future__ import annotations

import json

import pytest

from runtime.errors import ArchiveFormatError
from runtime.manifest import manifest_problems, parse_manifest, path_problem
from tests.bundlekit import canonical, manifest_of

GOOD = manifest_of({"README.md": b"hi\n", "models/m.bin": b"w"})


def test_the_writers_bytes_parse() -> None:
    assert parse_manifest(canonical(GOOD)) == GOOD


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps(GOOD, sort_keys=True).encode(),  # spaces
        json.dumps(GOOD, separators=(",", ":")).encode(),  # key order
        canonical(GOOD).replace(b'"name":"demo"', b'"name":"d\\u0065mo"'),  # needless escape
        canonical(GOOD) + b"\n",
        b"\xef\xbb\xbf" + canonical(GOOD),  # BOM
    ],
    ids=["spaces", "unsorted", "escape", "newline", "bom"],
)
def test_only_canonical_bytes_parse(raw: bytes) -> None:
    with pytest.raises(ArchiveFormatError):
        parse_manifest(raw)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"name": "a b"}, "manifest: name must be"),
        ({"version": ".hidden"}, "manifest: version must be"),
        ({"version": "v" * 129}, "manifest: version must be"),
        ({"builder": {"airlock": "1", "python": "3", "platform": "x", "extra": ""}}, "builder"),
        ({"components": {"a/b": {"type": "files", "properties": {}}}}, "not a path segment"),
        ({"components": {"airlock": {"type": "files", "properties": {}}}}, "not a path segment"),
        ({"sequence": 2**63}, "sequence must be an integer from 0"),
        ({"expires": "2026-01-01T00:00:00Z"}, "expires must be after created"),
    ],
)
def test_values_the_rest_of_the_code_cannot_use(change: dict, problem: str) -> None:
    assert any(problem in p for p in manifest_problems({**GOOD, **change}))


def test_integers_are_bounded_before_they_are_converted() -> None:
    raw = canonical(GOOD).replace(b'"sequence":1', b'"sequence":' + b"9" * 5000)
    with pytest.raises(ArchiveFormatError, match="more than 19 digits"):
        parse_manifest(raw)


def test_path_rules_bound_segments_length_and_depth() -> None:
    assert path_problem("a/" + "x" * 255) is None
    assert path_problem("a/" + "x" * 256) == "path segment longer than 255 bytes"
    assert path_problem("/".join(["d"] * 128)) is None
    assert path_problem("/".join(["d"] * 129)) == "path deeper than 128 segments"
    assert path_problem("a/\x85b") == "path control character U+0085"


@pytest.mark.parametrize(
    ("component", "problem"),
    [
        (
            {"engine": {"type": "runtime", "properties": {"cpu_variants": "x64"}}},
            "cpu_variants in the manifest is not a list",
        ),
        (
            {"llm": {"type": "runtime", "properties": {"cuda": ["80"]}}},
            "cuda in the manifest is not an object",
        ),
        (
            {"models": {"type": "model", "properties": {"models": [{"files": {"a": 1}}]}}},
            "files in the manifest is not a list",
        ),
        (
            {"weights": {"type": "model", "properties": {"models": {"name": "x"}}}},
            "models is not a list",
        ),
        (
            {
                "models": {
                    "type": "model",
                    "properties": {"models": [{"gguf": {"block_count": "x"}}]},
                }
            },
            "block_count in the manifest is not an integer",
        ),
    ],
)
def test_engine_and_model_records_no_reader_can_use_are_refused(
    component: dict, problem: str
) -> None:
    manifest = {**GOOD, "components": {**GOOD["components"], **component}}
    assert any(problem in p for p in manifest_problems(manifest)), manifest_problems(manifest)
