"""Wheelhouse: hash-pinned requirements per target and the offline closure check."""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from bundler.errors import BuildError, ClosureError
from bundler.sources import wheelhouse as wh_mod
from bundler.sources.wheelhouse import (
    Target,
    WheelInfo,
    check_closure,
    download_argv,
    missing_packages,
    requirements_text,
    wheel_info,
    wheel_license,
)

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def make_wheel(
    directory: Path,
    name: str,
    version: str,
    *,
    requires: tuple[str, ...] = (),
    license_expr: str | None = "MIT",
) -> Path:
    """A minimal, installable pure-Python wheel."""
    dist = f"{name}-{version}.dist-info"
    meta = ["Metadata-Version: 2.4", f"Name: {name}", f"Version: {version}"]
    if license_expr:
        meta.append(f"License-Expression: {license_expr}")
    meta += [f"Requires-Dist: {r}" for r in requires]
    files = {
        f"{name}/__init__.py": b"VALUE = 1\n",
        f"{dist}/METADATA": ("\n".join(meta) + "\n").encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, data in files.items():
            zf.writestr(p, data)
    return path


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    wh = tmp_path / "wheels"
    wh.mkdir()
    make_wheel(wh, "alpha", "1.0", requires=("beta>=2",))
    make_wheel(wh, "beta", "2.1", license_expr="Apache-2.0")
    return wh


def _pin(wh: Path, targets: list[Target]) -> None:
    infos = [wheel_info(p) for p in sorted(wh.glob("*.whl"))]
    for t in targets:
        (wh / t.requirements_name()).write_text(requirements_text(infos))


def test_target_names() -> None:
    t = Target("3.11", "manylinux_2_28_x86_64")
    assert t.abi == "cp311"
    assert t.requirements_name() == "requirements-cp311-manylinux_2_28_x86_64.txt"


def test_requirements_pin_every_wheel_by_hash(wheelhouse: Path) -> None:
    infos = [wheel_info(p) for p in sorted(wheelhouse.glob("*.whl"))]
    text = requirements_text(infos)
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines == [
        f"alpha==1.0 --hash=sha256:{infos[0].sha256}",
        f"beta==2.1 --hash=sha256:{infos[1].sha256}",
    ]
    assert infos[1].license == "Apache-2.0"


def test_two_versions_of_one_package_for_one_target_are_refused() -> None:
    a = WheelInfo("x-1-py3-none-any.whl", "x", "1", "a" * 64, None)
    b = WheelInfo("x-2-py3-none-any.whl", "x", "2", "b" * 64, None)
    with pytest.raises(BuildError, match="two versions of x"):
        requirements_text([a, b])


def test_download_is_binary_only_for_the_target_tags(tmp_path: Path) -> None:
    argv = download_argv(
        Target("3.9", "manylinux2014_x86_64"),
        ["numpy"],
        tmp_path,
        index_url="https://mirror.example/simple",
    )
    assert "--only-binary=:all:" in argv
    i = argv.index("--python-version")
    assert argv[i + 1] == "3.9"
    assert ["--abi", "cp39"] == argv[argv.index("--abi") : argv.index("--abi") + 2]
    assert "manylinux2014_x86_64" in argv and "linux_x86_64" in argv
    assert argv[argv.index("--index-url") + 1] == "https://mirror.example/simple"
    assert argv[-1] == "numpy"
    other = download_argv(Target("3.9", "manylinux2014_aarch64"), ["numpy"], tmp_path)
    assert "linux_x86_64" not in other


def test_missing_packages_from_pip_output() -> None:
    out = (
        "ERROR: Could not find a version that satisfies the requirement beta==2.1 "
        "(from versions: none)\n"
        "ERROR: No matching distribution found for beta==2.1\n"
    )
    assert missing_packages(out) == ["beta"]


def test_wheel_license_falls_back_to_classifiers(tmp_path: Path) -> None:
    p = make_wheel(tmp_path, "gamma", "1.0", license_expr=None)
    assert wheel_license(p) is None


def test_closure_passes_when_every_wheel_is_there(wheelhouse: Path) -> None:
    targets = [Target(HERE, "manylinux_2_28_x86_64"), Target("3.9", "manylinux2014_aarch64")]
    _pin(wheelhouse, targets)
    check_closure(wheelhouse, targets)


def test_closure_fails_naming_package_and_every_target_when_a_wheel_is_removed(
    wheelhouse: Path,
) -> None:
    targets = [Target(HERE, "manylinux_2_28_x86_64"), Target("3.9", "manylinux2014_aarch64")]
    _pin(wheelhouse, targets)
    (wheelhouse / "beta-2.1-py3-none-any.whl").unlink()
    with pytest.raises(ClosureError) as info:
        check_closure(wheelhouse, targets)
    problems = info.value.problems
    assert len(problems) == 2
    assert "missing wheel for beta" in problems[0] and f"Python {HERE}" in problems[0]
    assert "fresh venv" in problems[0]
    assert "missing wheel for beta" in problems[1] and "Python 3.9" in problems[1]
    assert "dry run" in problems[1]


def test_closure_fails_when_a_wheel_was_swapped(wheelhouse: Path, tmp_path: Path) -> None:
    targets = [Target("3.9", "manylinux2014_aarch64")]
    _pin(wheelhouse, targets)
    (wheelhouse / "beta-2.1-py3-none-any.whl").unlink()
    make_wheel(wheelhouse, "beta", "2.1", license_expr="GPL-3.0-only")  # other bytes
    with pytest.raises(ClosureError, match="cannot install offline"):
        check_closure(wheelhouse, targets)


def test_closure_proof_is_reused_only_for_identical_wheels(
    wheelhouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bundler.sources.wheelhouse as wh

    targets = [Target("3.9", "manylinux2014_aarch64")]
    _pin(wheelhouse, targets)
    cache = tmp_path / "cache"
    runs = []
    real = wh._dry_run

    def counting(*args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(wh, "_dry_run", counting)
    check_closure(wheelhouse, targets, cache_dir=cache)
    check_closure(wheelhouse, targets, cache_dir=cache)
    assert len(runs) == 1  # the second, identical check reused the proof
    (wheelhouse / "beta-2.1-py3-none-any.whl").unlink()
    make_wheel(wheelhouse, "beta", "2.1", license_expr="GPL-3.0-only")  # same name, other bytes
    with pytest.raises(ClosureError, match="cannot install offline"):
        check_closure(wheelhouse, targets, cache_dir=cache)
    assert len(runs) == 2


def test_closure_fails_without_a_requirements_file(wheelhouse: Path) -> None:
    with pytest.raises(ClosureError) as info:
        check_closure(wheelhouse, [Target("3.12", "manylinux_2_28_x86_64")])
    assert "no requirements file" in info.value.problems[0]


def test_manylinux_target_accepts_older_manylinux_wheels() -> None:
    from bundler.sources.wheelhouse import compatible_platforms

    tags = compatible_platforms("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64"
    assert "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_31_x86_64" not in tags
    assert compatible_platforms("manylinux2014_x86_64")[:2] == [
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
    ]
    assert compatible_platforms("linux_x86_64") == ["linux_x86_64"]


def test_closure_ignores_wheels_that_pip_config_would_find_elsewhere(
    wheelhouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = [Target(HERE, "manylinux_2_28_x86_64")]
    _pin(wheelhouse, targets)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (wheelhouse / "beta-2.1-py3-none-any.whl").rename(elsewhere / "beta-2.1-py3-none-any.whl")
    # a user-level pip.conf (as on a build machine with a local wheel mirror)
    conf = tmp_path / "xdg" / "pip" / "pip.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(f"[global]\nfind-links = {elsewhere}\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PIP_FIND_LINKS", str(elsewhere))
    with pytest.raises(ClosureError, match="cannot install offline"):
        check_closure(wheelhouse, targets)


def test_each_controller_python_gets_the_newest_ansible_core_series_for_it() -> None:
    # ansible-core 2.18 and 2.19 need Python 3.11 on the controller (requires-python
    # >=3.11 on PyPI); 2.17 is the last series for 3.10.
    assert wh_mod.CONTROLLER_PYTHONS == ("3.10", "3.11", "3.12", "3.13")
    assert wh_mod.controller_requirements("3.10") == ["ansible-core==2.17.*", "pip"]
    for v in ("3.11", "3.12", "3.13"):
        assert wh_mod.controller_requirements(v) == ["ansible-core==2.19.*", "pip"]
    with pytest.raises(BuildError, match=r"Python 3\.9 cannot run the controller"):
        wh_mod.controller_requirements("3.9")


def test_target_requirements_reach_only_their_target(tmp_path: Path, monkeypatch) -> None:
    seen: dict[str, list[str]] = {}

    def fake_run(argv: list[str], **_: Any) -> Any:
        py = argv[argv.index("--python-version") + 1]
        seen[py] = [a for a in argv if a.startswith(("ansible-core", "x=="))]
        return type("R", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    monkeypatch.setattr(wh_mod.subprocess, "run", fake_run)
    old, new = Target("3.10", "manylinux_2_28_x86_64"), Target("3.12", "manylinux_2_28_x86_64")
    wh_mod.build_wheelhouse(
        [old, new],
        ["x==1"],
        target_requirements={old: ["ansible-core==2.17.*"], new: ["ansible-core==2.19.*"]},
        extra_wheels=[],
        dest=tmp_path / "w",
        cache_dir=tmp_path / "c",
        check=False,
    )
    assert seen == {
        "3.10": ["x==1", "ansible-core==2.17.*"],
        "3.12": ["x==1", "ansible-core==2.19.*"],
    }


def test_wheel_requires_evaluates_markers_for_the_target_python(tmp_path: Path) -> None:
    whl = make_wheel(
        tmp_path,
        "app",
        "1.0",
        requires=(
            "base>=1",
            "newer>=2; python_version >= '3.11'",
            "backport; python_version < '3.11'",
            "extra-only; extra == 'dev'",
        ),
    )
    assert [str(r) for r in wh_mod.wheel_requires(whl, "3.10")] == ["base>=1", "backport"]
    assert [str(r) for r in wh_mod.wheel_requires(whl, "3.12")] == ["base>=1", "newer>=2"]


def test_dry_run_proof_for_another_python_names_a_dependency_its_markers_need(
    tmp_path: Path,
) -> None:
    # The closure for 3.10 lacks the backport that only 3.10 needs: pip's own dry run would
    # evaluate the marker for this interpreter and miss it (or demand "newer" instead).
    wh = tmp_path / "w"
    wh.mkdir()
    infos = [
        wheel_info(make_wheel(wh, "app", "1.0", requires=("backport; python_version < '3.11'",)))
    ]
    target = Target("3.10", "manylinux_2_28_x86_64")
    req = wh / target.requirements_name()
    req.write_text(requirements_text(infos))
    assert wh_mod._missing_dependencies(target, wh, req) == [
        "No matching distribution found for backport (for app)"
    ]
    infos.append(wheel_info(make_wheel(wh, "backport", "1.0")))
    req.write_text(requirements_text(infos))
    assert wh_mod._missing_dependencies(target, wh, req) == []
