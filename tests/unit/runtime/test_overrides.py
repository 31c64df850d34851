"""runtime.overrides: operator overrides checked all at once, bundle defaults under them."""

from __future__ import annotations

import pytest

from runtime import selection as s
from runtime.errors import UsageError
from runtime.overrides import check_overrides, fixed_value
from tests.unit.runtime.test_selection import facts, manifest


def test_invalid_overrides_are_all_reported_at_once() -> None:
    with pytest.raises(UsageError) as e:
        s.select(
            facts("build-machine"),
            manifest(variants=["x64"]),
            {"ctx_size": -1, "backend": "rocm", "colour": "blue"},
        )
    assert len(e.value.problems) == 3
    assert e.value.exit_code == 2
    # The hint names the role variable an operator actually sets.
    assert e.value.hint == "fix airlock_server_overrides (or --overrides)"


def test_auto_and_null_mean_not_overridden() -> None:
    ov = {"ctx_size": "auto", "parallel": None, "backend": "auto", "threads": "4", "gpu_layers": 0}
    assert check_overrides(ov) == {"threads": 4, "gpu_layers": 0}


def test_booleans_and_zero_counts_are_refused() -> None:
    with pytest.raises(UsageError) as e:
        check_overrides({"threads": True, "parallel": 0, "gpu_layers": -1})
    assert len(e.value.problems) == 3


def test_override_wins_over_the_bundle_default_and_auto_defaults_are_not_fixed() -> None:
    assert fixed_value({"ctx_size": 512}, {"ctx_size": 256}, "ctx_size") == 512
    assert fixed_value({}, {"ctx_size": 256}, "ctx_size") == 256
    assert fixed_value({}, {"ctx_size": "auto"}, "ctx_size") is None
    assert fixed_value({}, {"parallel": True}, "parallel") is None
