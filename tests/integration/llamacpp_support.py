"""The one engine build the integration tests share (cached under ``$AIRLOCK_CACHE``)."""

from __future__ import annotations

from pathlib import Path

from bundler.engine import llamacpp, sdist
from bundler.engine.buildcache import default_cache_dir
from bundler.engine.llamacpp import EngineBuild

VERSION = "0.3.36"


def engine_build(log_dir: Path | None = None) -> EngineBuild:
    """llama-server from the pinned sdist with ``default_variants()`` (what the demo builds)."""
    cache = default_cache_dir()
    source = sdist.fetch_sdist(VERSION, cache_dir=cache)
    return llamacpp.build_engine(
        source, variants=llamacpp.default_variants(), cuda=None, cache_dir=cache, log_dir=log_dir
    )
