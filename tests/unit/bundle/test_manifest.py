"""The manifest: canonical bytes, strict parsing, path rules, and the published JSON Schema."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest

from bundler.bundle.manifest import (
    Builder,
    Component,
    FileEntry,
    Manifest,
    canonical_json,
    check_path,
    parse,
    parse_expires,
)
from bundler.errors import ArchiveFormatError, UsageError

CREATED = datetime(2026, 1, 1, tzinfo=timezone.utc)
SHA = "ab" * 32


def sample(**overrides) -> Manifest:
    fields = dict(
        name="demo",
        version="1.0.0",
        sequence=3,
        created=CREATED,
        expires=CREATED + timedelta(days=180),
        builder=Builder("0.1.0", "3.11.7", "Linux-x86_64"),
        components={
            "models": Component("model", {"models": [{"name": "tiny", "ünïcode": "ok"}]}),
            "engine": Component("runtime", {}),
        },
        files=[
            FileEntry("models/tiny/tiny.gguf", 10, SHA),
            FileEntry("SHA256SUMS", 3, SHA),
            FileEntry("engine/bin/llama-server", 5, SHA, mode="0755"),
        ],
    )
    fields.update(overrides)
    return Manifest(**fields)  # type: ignore[arg-type]


@pytest.fixture
def schema(repo_root: Path) -> dict:
    return json.loads((repo_root / "docs/manifest.schema.json").read_text())


def test_bytes_are_canonical_sorted_compact_utf8() -> None:
    data = sample().to_bytes()
    obj = json.loads(data)
    assert (
        data == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert "ünïcode".encode() in data  # UTF-8, not \\u escapes
    assert [f["path"] for f in obj["files"]] == [
        "SHA256SUMS",
        "engine/bin/llama-server",
        "models/tiny/tiny.gguf",
    ]
    assert obj["files"][0]["component"] == "bundle"
    assert obj["created"] == "2026-01-01T00:00:00Z"
    assert obj["expires"] == "2026-06-30T00:00:00Z"


def test_written_manifest_validates_against_the_json_schema(schema) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(json.loads(sample().to_bytes()), schema)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.update(schema_version=2),
        lambda m: m.update(sequence=-1),
        lambda m: m.update(extra=1),
        lambda m: m["files"][0].update(path="../evil"),
        lambda m: m["files"][0].update(path="/abs"),
        lambda m: m["files"][0].update(mode="0777"),
        lambda m: m["files"][0].update(sha256="AB" * 32),
        lambda m: m.update(created="2026-01-01T00:00:00+00:00"),
        lambda m: m.update(name="../etc"),
        lambda m: m.update(version="1.0\x1b[2J"),
        lambda m: m.update(sequence=2**63),
        lambda m: m["builder"].update(extra="x"),
        lambda m: m["builder"].update(platform="x\x9b"),
        lambda m: m["files"][0].update(path="models/" + "x" * 256),
        lambda m: m["files"][0].update(path="models/\x85"),
    ],
    ids=[
        "schema-version",
        "sequence",
        "unknown-field",
        "traversal",
        "absolute",
        "mode",
        "hex",
        "time",
        "name-traversal",
        "version-escape",
        "sequence-int64",
        "builder-extra",
        "builder-c1",
        "segment-255",
        "path-c1",
    ],
)
def test_schema_and_parser_agree_on_invalid_manifests(schema, mutate) -> None:
    obj = json.loads(sample().to_bytes())
    mutate(obj)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, schema)
    with pytest.raises(ArchiveFormatError):
        parse(canonical_json(obj))


def test_parse_returns_the_decoded_bytes_without_reserializing() -> None:
    data = sample().to_bytes()
    assert parse(data) == json.loads(data)


def test_parse_rejects_floats_duplicate_keys_and_nan() -> None:
    good = sample().to_bytes()
    for bad in (
        good.replace(b'"sequence":3', b'"sequence":3.0'),
        good.replace(b'"sequence":3', b'"sequence":3,"sequence":4'),
        good.replace(b'"sequence":3', b'"sequence":NaN'),
        good[:-1],
        b"\xff" + good,
    ):
        with pytest.raises(ArchiveFormatError):
            parse(bad)


def test_parse_reports_every_problem_at_once() -> None:
    obj = json.loads(sample().to_bytes())
    obj["files"][0]["mode"] = "0600"
    obj["files"][1]["size"] = -1
    obj["files"][2]["component"] = "engine"
    with pytest.raises(ArchiveFormatError) as exc:
        parse(canonical_json(obj))
    assert len(exc.value.problems) == 3


def test_unsorted_or_repeated_paths_are_refused() -> None:
    obj = json.loads(sample().to_bytes())
    obj["files"][1], obj["files"][2] = obj["files"][2], obj["files"][1]
    with pytest.raises(ArchiveFormatError, match="1 problems"):
        parse(canonical_json(obj))
    obj = json.loads(sample().to_bytes())
    obj["files"][2] = dict(obj["files"][1])
    with pytest.raises(ArchiveFormatError):
        parse(canonical_json(obj))


def test_floats_in_component_properties_are_refused_at_build_time() -> None:
    m = sample(components={"models": Component("model", {"temperature": 0.7})})
    with pytest.raises(UsageError, match=r"\$\.components\.models\.properties\.temperature"):
        m.to_bytes()


def test_file_without_a_described_component_is_refused() -> None:
    m = sample(files=[FileEntry("wheels/x.whl", 1, SHA)])
    with pytest.raises(UsageError) as exc:
        m.to_bytes()
    assert "component 'wheels' is not described" in "\n".join(exc.value.problems)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "a/../b",
        "a/./b",
        "a//b",
        "a/",
        "a\\b",
        "a\nb",
        "a\0b",
        "e\u0301",  # NFD: e + combining acute
        "x" * 4097,
    ],
)
def test_path_rules_refuse(path: str) -> None:
    with pytest.raises(UsageError):
        check_path(path)


def test_path_rules_accept_nfc_unicode_and_long_paths() -> None:
    check_path("models/\u00e9t\u00e9/" + "d/" * 125 + "f.gguf")  # 128 segments
    longest = "models/" + "/".join(["\u00e9" * 127] * 12) + "/fffff"  # 254-byte segments
    assert len(longest.encode()) == 3072
    check_path(longest)


def test_expires_parses_durations_and_dates() -> None:
    now = CREATED
    assert parse_expires("180d", now=now) == now + timedelta(days=180)
    assert parse_expires("2w", now=now) == now + timedelta(days=14)
    assert parse_expires("2027-05-26", now=now) == datetime(2027, 5, 26, tzinfo=timezone.utc)
    with pytest.raises(UsageError):
        parse_expires("soon", now=now)


def test_expiry_must_follow_creation() -> None:
    with pytest.raises(UsageError):
        sample(expires=CREATED).to_bytes()


def test_a_path_that_is_also_a_parent_directory_is_refused() -> None:
    obj = json.loads(sample().to_bytes())
    obj["files"].insert(1, dict(obj["files"][1], path="engine", component="bundle"))
    with pytest.raises(ArchiveFormatError) as exc:
        parse(canonical_json(obj))
    assert exc.value.problems == ("manifest: engine is both a file and a directory of other files",)
