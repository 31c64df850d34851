"""Bounded structure-aware fuzzing of the bundle readers (seconds; bench/fuzz_bundle.py runs
the same cases for longer). Derandomized: every CI run tries the same cases."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from tests.fuzzkit import Base, check, mutate

CASES = 150
_counter = itertools.count()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    return Base.make(tmp_path_factory.mktemp("fuzz-base"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-cases")


@settings(
    max_examples=CASES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_bundles_are_refused_cleanly_or_match_their_signed_manifest(
    base: Base, workdir: Path, data: st.DataObject
) -> None:
    _kinds, tar = mutate(data.draw, base)
    split = data.draw if data.draw(st.integers(0, 5)) == 0 else None
    work = workdir / f"case-{next(_counter)}"
    try:
        base.stats[check(base, tar, work, split=split)] += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_the_base_bundle_is_accepted(base: Base, tmp_path: Path) -> None:
    # Without this the fuzz test could pass by refusing everything.
    assert check(base, base.tar, tmp_path / "case") == "accepted"
    # Split into parts of one block each (the smallest draw), none damaged.
    smallest = lambda strategy: find(strategy, lambda _: True)  # noqa: E731
    assert check(base, base.tar, tmp_path / "split", split=smallest) == "accepted"
