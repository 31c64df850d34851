"""The demo's own pieces: its spec is valid, it asks the server the OpenAI way, fresh dirs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from bundler.demo.run import (
    DEMO_REPO,
    LLAMA_CPP_PYTHON,
    ask,
    default_workdir,
    demo_spec,
    prune_old_runs,
)
from bundler.paths import templates_dir
from bundler.project.init import render_spec
from bundler.project.spec import parse_spec


def test_demo_spec_from_the_example_is_valid_and_points_at_the_demo_repo(tmp_path: Path) -> None:
    example = render_spec((templates_dir() / "airlock.example.yaml").read_text(), name="demo")
    text = demo_spec(example, variants=["x64", "haswell"], python="3.11")
    spec = parse_spec(yaml.safe_load(text), base_dir=tmp_path)
    (model,) = spec.models
    assert (model.name, model.source, model.repo, model.revision) == (
        "tiny",
        "hub",
        DEMO_REPO,
        "main",
    )
    assert spec.engine is not None
    assert spec.engine.cpu_variants == ("x64", "haswell")
    assert spec.engine.llama_cpp_python == LLAMA_CPP_PYTHON
    assert not spec.engine.cuda.enabled
    assert spec.server.model == "tiny"
    assert spec.controller_python == ("3.11",)


class _FakeServer(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, *args: Any) -> None:
        del args

    def _json(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        assert self.path == "/v1/models"
        self._json({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

    def do_POST(self) -> None:
        assert self.path == "/v1/chat/completions"
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(body)
        self._json(
            {
                "model": body["model"],
                "choices": [{"message": {"role": "assistant", "content": "hello world"}}],
                "usage": {"completion_tokens": 2},
            }
        )


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FakeServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_ask_uses_the_served_model_id_and_chat_completions(server: str) -> None:
    assert ask(server, "hi?") == ("tiny", "hello world", 2)
    body = _FakeServer.seen[-1]
    assert body["model"] == "tiny"
    assert body["messages"] == [{"role": "user", "content": "hi?"}]


def test_default_workdir_is_fresh_under_airlock_demo_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRLOCK_DEMO_DIR", str(tmp_path))
    first = default_workdir()
    first.mkdir()
    second = default_workdir()
    assert first.parent == second.parent == tmp_path
    assert first != second and not second.exists()


def test_only_the_newest_runs_are_kept_and_nothing_else_is_touched(tmp_path: Path) -> None:
    for name in ("20261101T000000Z", "20261102T000000Z", "20261103T000000Z-2", "notes"):
        (tmp_path / name).mkdir()
    removed = prune_old_runs(tmp_path, keep=2)
    assert [p.name for p in removed] == ["20261101T000000Z"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "20261102T000000Z",
        "20261103T000000Z-2",
        "notes",
    ]


def test_demo_model_answers_its_sentence_and_anything_else_fails_the_demo(tmp_path: Path) -> None:
    from bundler.demo.run import ANSWER, check_answer, make_model
    from bundler.demo.tinymodel import greedy_answers
    from bundler.errors import InstallError

    files = make_model(tmp_path)
    assert ANSWER.encode() in files["README.md"]
    assert greedy_answers(tmp_path / "tiny.gguf", [10])[0]  # constructed, not random
    check_answer(ANSWER, "10.0.0.2")
    with pytest.raises(InstallError) as info:
        check_answer(">ֳ}h\x13 0 A .e 70", "10.0.0.2")
    assert "10.0.0.2" in info.value.message and ANSWER in info.value.message


def test_demo_summary_ends_with_what_to_try_next(tmp_path: Path) -> None:
    from bundler.demo.run import DemoResult

    bundle = str(tmp_path / "dist" / "demo-1.0.0.tar")
    text = DemoResult(workdir=str(tmp_path), bundle=bundle, answer="x").summary()
    tail = text.split("what to try next:", 1)[1]
    assert str(tmp_path / "report.html") in tail
    assert f"airlock inspect {bundle}" in tail and f"airlock verify {bundle}" in tail
    assert "verify.yml" in tail
    assert "repo:" in tail and "airlock lock" in tail
