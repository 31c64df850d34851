"""airlock.lock: deterministic bytes, atomic writes, and every way it can disagree with the spec."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from bundler.errors import SpecError
from bundler.project.lock import (
    Lock,
    LockedFile,
    LockedModel,
    check_lock,
    load_lock,
    lock_problems,
    parse_lock,
    write_lock,
)
from bundler.project.spec import parse_spec

NOW = dt.datetime(2026, 11, 27, tzinfo=dt.timezone.utc)
SHA = "ab" * 32
COMMIT = "c" * 40


def _spec(tmp_path: Path, revision: str = "main", files: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    (tmp_path / "mine.gguf").write_bytes(b"GGUF")
    data = {
        "name": "demo",
        "version": "1",
        "sequence": 1,
        "models": [
            {"name": "tiny", "repo": "org/tiny", "revision": revision, "files": list(files)},
            {"name": "mine", "source": "local", "path": "mine.gguf"},
        ],
    }
    return parse_spec(data, base_dir=tmp_path, path=tmp_path / "airlock.yaml", now=NOW)


def _lock(commit: str = COMMIT, revision: str = "main", files: tuple[str, ...] = ()) -> Lock:
    return Lock(
        models=(
            LockedModel(
                name="tiny",
                source="hub",
                files=(LockedFile("tiny.gguf", 10, SHA, lfs=True, blob_id="1" * 40),),
                entrypoint="tiny.gguf",
                repo="org/tiny",
                revision=revision,
                request_files=files,
                commit=commit,
                endpoint="http://127.0.0.1:1",
            ),
            LockedModel(
                name="mine",
                source="local",
                files=(LockedFile("mine.gguf", 4, SHA),),
                entrypoint="mine.gguf",
                path="mine.gguf",
            ),
        )
    )


def test_lock_bytes_are_deterministic_and_round_trip() -> None:
    a = _lock().to_bytes()
    assert a == _lock().to_bytes()
    assert parse_lock(a).to_bytes() == a
    assert parse_lock(a).model("tiny").file("tiny.gguf").etag == SHA


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "airlock.lock"
    write_lock(path, _lock())
    loaded = load_lock(path)
    assert loaded is not None and loaded.to_bytes() == _lock().to_bytes()
    assert sorted(os.listdir(tmp_path)) == ["airlock.lock"]


def test_missing_lock_loads_as_none_and_check_refuses(tmp_path: Path) -> None:
    assert load_lock(tmp_path / "airlock.lock") is None
    with pytest.raises(SpecError, match="not pinned") as e:
        check_lock(_spec(tmp_path), None)
    assert "--update-lock" in (e.value.hint or "")


def test_matching_lock_passes(tmp_path: Path) -> None:
    assert lock_problems(_spec(tmp_path), _lock()) == []
    assert check_lock(_spec(tmp_path), _lock()) == _lock()


def test_refuses_lock_for_another_revision_or_file_list(tmp_path: Path) -> None:
    spec = _spec(tmp_path, revision="v2", files=("tiny.gguf",))
    with pytest.raises(SpecError) as e:
        check_lock(spec, _lock())
    text = "\n".join(e.value.problems)
    assert "models.tiny.revision" in text and "models.tiny.files" in text


def test_refuses_lock_whose_commit_differs_from_a_pinned_revision(tmp_path: Path) -> None:
    spec = _spec(tmp_path, revision="d" * 40)
    problems = lock_problems(spec, _lock(revision="d" * 40))
    assert any("commit" in p for p in problems)


def test_reports_models_missing_from_lock_or_spec(tmp_path: Path) -> None:
    lk = _lock()
    only_tiny = Lock(models=(lk.models[0],))
    assert lock_problems(_spec(tmp_path), only_tiny) == ["models.mine: not in the lock"]
    extra = Lock(models=(*lk.models, LockedModel("old", "local", (), "x.gguf", path="x.gguf")))
    assert lock_problems(_spec(tmp_path), extra) == ["models.old: in the lock but not in the spec"]


@pytest.mark.parametrize(
    "text",
    [
        b"not json",
        b'{"lock_version": 99, "models": {}}',
        b'{"lock_version": 1, "models": {"t": {"source": "hub", "entrypoint": "a", '
        b'"commit": "main", "files": []}}}',
        b'{"lock_version": 1, "models": {"t": {"source": "local", "entrypoint": "a", '
        b'"files": [{"path": "a", "size": 1, "sha256": "short"}]}}}',
    ],
)
def test_rejects_malformed_lock(text: bytes) -> None:
    with pytest.raises(SpecError, match="malformed"):
        parse_lock(text)


@pytest.mark.parametrize("path", ["../../etc/cron.d/x", "/etc/passwd", "a/../../b", "a\\..\\b", ""])
def test_rejects_lock_file_paths_that_escape_the_model_directory(path: str) -> None:
    doc = json.loads(_lock().to_bytes())
    doc["models"]["tiny"]["files"][0]["path"] = path
    with pytest.raises(SpecError, match="leaves the model directory"):
        parse_lock(json.dumps(doc).encode())


def test_rejects_lock_blob_id_that_is_not_hex() -> None:
    doc = json.loads(_lock().to_bytes())
    doc["models"]["tiny"]["files"][0]["blob_id"] = "../../x"
    with pytest.raises(SpecError, match="blob_id"):
        parse_lock(json.dumps(doc).encode())


def test_lock_records_the_controller_pythons_and_refuses_when_they_move(tmp_path: Path) -> None:
    import dataclasses

    spec = _spec(tmp_path)
    locked = dataclasses.replace(_lock(), controller_python=spec.controller_python)
    data = locked.to_bytes()
    assert json.loads(data)["controller_python"] == ["3.10", "3.11", "3.12", "3.13"]
    assert parse_lock(data).controller_python == ("3.10", "3.11", "3.12", "3.13")
    assert lock_problems(spec, locked) == []
    # A lock from before the field was recorded still answers the spec.
    assert lock_problems(spec, _lock()) == []
    moved = dataclasses.replace(locked, controller_python=("3.11",))
    assert lock_problems(spec, moved) == [
        "targets.controller_python: spec has ['3.10', '3.11', '3.12', '3.13'], lock has ['3.11']"
    ]
