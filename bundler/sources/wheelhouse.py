"""Hash-pinned wheelhouses per target, their offline closure check, the controller wheelhouse.

For every target (Python version x platform tag) pip resolves the requirements to binary
wheels only; each wheel is recorded with its sha256 and one ``--require-hashes``
requirements file is written per target. Before signing, the closure check proves every
target installs offline from the wheelhouse alone: a real install into a fresh venv where
the target's interpreter exists on this machine, a resolver dry run elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from bundler.errors import BuildError, ClosureError, FetchError
from bundler.fsio import hash_file, write_atomic
from bundler.paths import repo_root

__all__ = [
    "ANSIBLE_CORE_SERIES",
    "CONTROLLER_PLATFORM",
    "CONTROLLER_PYTHONS",
    "CONTROLLER_PYTHON_WHY",
    "Target",
    "WheelInfo",
    "WheelhouseResult",
    "build_controller_wheelhouse",
    "build_wheelhouse",
    "check_closure",
    "controller_requirements",
    "download_argv",
    "requirements_text",
]

CONTROLLER_PLATFORM = "manylinux_2_28_x86_64"
# Per controller Python, the newest ansible-core release series that supports it on the
# controller (PyPI's requires-python and ansible-core's support matrix): 2.17 is the last
# series for 3.10 (it supports 3.10-3.12), 2.19 supports 3.11-3.13 and is the one the
# playbooks are tested with; the playbooks are syntax-checked with 2.17 too
# (tests/integration/test_controller_bootstrap.py). pip is in every closure, so the
# bootstrap runs the closure's own pinned pip wheel (no python3-venv, no ensurepip, no
# network: runtime/controller.py). airlock's own wheel needs 3.10 (pyproject.toml).
ANSIBLE_CORE_SERIES: Mapping[str, str] = {
    "3.10": "2.17",
    "3.11": "2.19",
    "3.12": "2.19",
    "3.13": "2.19",
}
CONTROLLER_PYTHONS = tuple(ANSIBLE_CORE_SERIES)
CONTROLLER_PYTHON_WHY = (
    "the bundle's controller runs on Python 3.10 (ansible-core 2.17, the newest series that "
    "supports it) and 3.11-3.13 (ansible-core 2.19); ansible-core 2.16 and newer need 3.10 "
    "or newer on the controller, and so does airlock's own wheel"
)


def controller_requirements(python: str) -> list[str]:
    """The controller closure's top-level requirements for one controller Python.

    Raises:
        BuildError: ``python`` is not one of :data:`CONTROLLER_PYTHONS` (the spec refuses
            it before a build gets here).
    """
    series = ANSIBLE_CORE_SERIES.get(python)
    if series is None:
        raise BuildError(f"Python {python} cannot run the controller: {CONTROLLER_PYTHON_WHY}")
    return [f"ansible-core=={series}.*", "pip"]


# Locally built wheels (llama-cpp-python) carry the honest, unversioned linux tag; every
# target on that architecture accepts them besides its manylinux tag.
_LOCAL_PLATFORMS = {"x86_64": "linux_x86_64", "aarch64": "linux_aarch64"}
_MISSING_RE = re.compile(
    r"(?:No matching distribution found for|"
    r"Could not find a version that satisfies the requirement) ([A-Za-z0-9._-]+)"
)


@dataclass(frozen=True)
class Target:
    """One install target: a CPython version and a platform tag."""

    python: str
    platform: str

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    @property
    def slug(self) -> str:
        return f"{self.abi}-{self.platform}"

    def requirements_name(self) -> str:
        return f"requirements-{self.slug}.txt"


@dataclass(frozen=True)
class WheelInfo:
    file: str
    name: str
    version: str
    sha256: str
    license: str | None

    def to_json(self, prefix: str) -> dict[str, Any]:
        return {
            "file": f"{prefix}/{self.file}",
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "license": self.license,
        }


@dataclass(frozen=True)
class WheelhouseResult:
    """A finished wheelhouse: its directory, requirements files, wheels, properties."""

    dest: Path
    properties: dict[str, Any]
    requirements: Mapping[Target, Path]
    wheels: tuple[WheelInfo, ...] = field(default=())


# --------------------------------------------------------------------------- pure parts


def download_argv(
    target: Target,
    requirements: Sequence[str],
    dest: Path,
    *,
    find_links: Sequence[Path] = (),
    index_url: str | None = None,
    machine: str = "x86_64",
) -> list[str]:
    """The ``pip download`` command line for one target: binary wheels only."""
    argv = [
        *_pip(),
        "download",
        "--only-binary=:all:",
        *_target_args(target, machine),
        "--dest",
        str(dest),
    ]
    for link in find_links:
        argv += ["--find-links", str(link)]
    if index_url:
        argv += ["--index-url", index_url]
    return [*argv, *requirements]


_LEGACY_MANYLINUX = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}


def compatible_platforms(platform_tag: str) -> list[str]:
    """Every platform tag a host of ``platform_tag`` accepts, newest first (pure).

    pip's ``--platform`` takes tags literally, so ``manylinux_2_28_x86_64`` would skip the
    many wheels published as ``manylinux_2_17`` (manylinux2014); a glibc 2.28 host installs
    those fine, so the older manylinux tags are added explicitly.
    """
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform_tag)
    legacy = re.fullmatch(r"(manylinux2014|manylinux2010|manylinux1)_(\w+)", platform_tag)
    if m:
        minor, arch = int(m.group(1)), m.group(2)
    elif legacy:
        minor, arch = _LEGACY_MANYLINUX[legacy.group(1)], legacy.group(2)
    else:
        return [platform_tag]
    tags = []
    for y in range(minor, 4, -1):
        tags.append(f"manylinux_2_{y}_{arch}")
        tags += [f"{name}_{arch}" for name, v in _LEGACY_MANYLINUX.items() if v == y]
    return tags


def _target_args(target: Target, machine: str) -> list[str]:
    """pip's options that make it resolve for ``target`` rather than for this interpreter."""
    abis = [target.abi, "abi3", "none"]
    return [
        "--implementation",
        "cp",
        "--python-version",
        target.python,
        *(a for abi in abis for a in ("--abi", abi)),
        *_platform_args(target, machine),
    ]


def _platform_args(target: Target, machine: str) -> list[str]:
    args = []
    for tag in compatible_platforms(target.platform):
        args += ["--platform", tag]
    return args + _local_platform(target, machine)


def _local_platform(target: Target, machine: str) -> list[str]:
    """``--platform linux_<arch>`` for a target of this machine's architecture."""
    local = _LOCAL_PLATFORMS.get(machine)
    if local and local != target.platform and target.platform.endswith(machine):
        return ["--platform", local]
    return []


def requirements_text(wheels: Iterable[WheelInfo]) -> str:
    """A ``--require-hashes`` requirements file pinning exactly these wheels (sorted)."""
    by_name: dict[str, list[WheelInfo]] = {}
    for w in wheels:
        by_name.setdefault(canonicalize_name(w.name), []).append(w)
    lines = ["# generated by airlock: install with --no-index --require-hashes"]
    for name in sorted(by_name):
        group = sorted(by_name[name], key=lambda w: w.file)
        versions = {w.version for w in group}
        if len(versions) != 1:
            raise BuildError(
                f"two versions of {name} resolved for one target: {', '.join(sorted(versions))}",
                hint="pin the package in the spec's requirements",
            )
        hashes = " ".join(f"--hash=sha256:{w.sha256}" for w in group)
        lines.append(f"{name}=={group[0].version} {hashes}")
    return "\n".join(lines) + "\n"


def missing_packages(pip_output: str) -> list[str]:
    """Package names pip could not find in the wheelhouse (from its error output)."""
    seen: list[str] = []
    for m in _MISSING_RE.finditer(pip_output):
        name = m.group(1).split("==")[0]
        if name not in seen:
            seen.append(name)
    return seen


def wheel_license(path: Path) -> str | None:
    """The license a wheel declares (License-Expression, License, or classifiers)."""
    try:
        with zipfile.ZipFile(path) as zf:
            meta = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
            if meta is None:
                return None
            headers = HeaderParser().parsestr(zf.read(meta).decode("utf-8", errors="replace"))
    except (OSError, zipfile.BadZipFile):
        return None
    expr = headers.get("License-Expression")
    if expr:
        return str(expr).strip()
    lic = headers.get("License")
    if lic and len(str(lic)) < 80 and "\n" not in str(lic).strip():
        return str(lic).strip()
    classifiers = [
        str(c).split("::")[-1].strip()
        for c in headers.get_all("Classifier") or []
        if str(c).startswith("License ::")
    ]
    return "; ".join(classifiers) if classifiers else None


def marker_environment(python: str) -> dict[str, str]:
    """The environment-marker values of a target Python (pip's ``--python-version`` does
    not change them: pip evaluates markers for the interpreter that runs it)."""
    env = {k: str(v) for k, v in default_environment().items()}
    env.update(
        python_version=python,
        python_full_version=f"{python}.0",
        implementation_version=f"{python}.0",
    )
    return env


def wheel_requires(path: Path, python: str) -> list[Requirement]:
    """The wheel's ``Requires-Dist`` that apply on ``python`` (no extras), markers dropped."""
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        headers = HeaderParser().parsestr(zf.read(meta).decode("utf-8", errors="replace"))
    env = marker_environment(python)
    out = []
    for line in headers.get_all("Requires-Dist") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
            req.marker = None
            out.append(req)
    return out


def wheel_info(path: Path) -> WheelInfo:
    try:
        name, version, _, _ = parse_wheel_filename(path.name)
    except InvalidWheelFilename as e:
        raise BuildError(f"not a wheel file name: {path.name}") from e
    return WheelInfo(
        file=path.name,
        name=str(name),
        version=str(version),
        sha256=hash_file(path)[1],
        license=wheel_license(path),
    )


# --------------------------------------------------------------------------- adapters


def build_wheelhouse(
    targets: Sequence[Target],
    requirements: Sequence[str],
    *,
    extra_wheels: Sequence[Path],
    dest: Path,
    cache_dir: Path,
    index_url: str | None = None,
    check: bool = True,
    target_requirements: Mapping[Target, Sequence[str]] | None = None,
    nodeps_wheels: Sequence[Path] = (),
) -> WheelhouseResult:
    """Download binary wheels for every target into ``dest`` and pin them per target.

    With ``check`` (the default) the result is proven installable offline for every
    target (:func:`check_closure`) before it is returned, so the pipeline never signs a
    wheelhouse that cannot install.

    ``extra_wheels`` are local wheels (the llama-cpp-python wheel the pipeline built with
    :func:`bundler.engine.llamacpp.build_llama_cpp_python_wheel`); their dependencies come from
    the index. ``target_requirements`` adds requirements for single targets (the controller's
    ansible-core series per Python). ``nodeps_wheels`` join every target as they are; pip
    does not resolve them (their dependencies, evaluated for each target, come in through
    ``target_requirements``). Downloads go through pip's cache in ``cache_dir/pip``.

    Raises:
        FetchError: pip cannot resolve a target (the message names the target and pip's
            reason).
        ClosureError: a target cannot install offline from the result.
    """
    dest.mkdir(parents=True, exist_ok=True)
    prefix = dest.name
    extra = target_requirements or {}
    per_target: dict[Target, list[WheelInfo]] = {}
    all_wheels: dict[str, WheelInfo] = {}
    env = _pip_env(cache_dir)
    machine = os.uname().machine
    with tempfile.TemporaryDirectory(prefix="airlock-wheels-") as tmp:
        for target in targets:
            tdir = Path(tmp) / target.slug
            tdir.mkdir()
            for whl in nodeps_wheels:
                shutil.copy2(whl, tdir / whl.name)
            reqs = [*requirements, *extra.get(target, ()), *(str(p) for p in extra_wheels)]
            argv = download_argv(target, reqs, tdir, index_url=index_url, machine=machine)
            run = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            if run.returncode != 0:
                out = run.stdout + run.stderr
                missing = missing_packages(out)
                raise FetchError(
                    f"cannot collect binary wheels for Python {target.python} on "
                    f"{target.platform}"
                    + (f": no wheel for {', '.join(missing)}" if missing else ""),
                    hint="pin a version that publishes wheels for this target, or drop the "
                    "target from the spec's matrix",
                    problems=out.splitlines()[-20:],
                )
            infos = []
            for whl in sorted(tdir.glob("*.whl")):
                info = all_wheels.get(whl.name) or wheel_info(whl)
                if whl.name in all_wheels and all_wheels[whl.name].sha256 != info.sha256:
                    raise BuildError(f"{whl.name}: two different files with one name")
                all_wheels[whl.name] = info
                infos.append(info)
                _atomic_copy(whl, dest / whl.name)
            per_target[target] = infos
    req_files = {}
    for target, infos in per_target.items():
        path = dest / target.requirements_name()
        write_atomic(path, requirements_text(infos))
        req_files[target] = path
    if check:
        check_closure(dest, targets, cache_dir=cache_dir)
    wheels = tuple(sorted(all_wheels.values(), key=lambda w: w.file))
    properties = {
        "targets": [
            {
                "python": t.python,
                "platform": t.platform,
                "abi": t.abi,
                "requirements": f"{prefix}/{t.requirements_name()}",
            }
            for t in targets
        ],
        "wheels": [w.to_json(prefix) for w in wheels],
    }
    return WheelhouseResult(dest, properties, req_files, wheels)


def _interpreter(python: str) -> str | None:
    """A working ``python<X.Y>`` on this machine (PATH, /usr/bin, pyenv), or None."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python == here:
        return sys.executable
    candidates = [shutil.which(f"python{python}"), f"/usr/bin/python{python}"]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += [str(p) for p in sorted(pyenv.glob(f"{python}.*/bin/python{python}"))]
    for cand in candidates:
        if not cand or not os.access(cand, os.X_OK):
            continue
        try:
            out = subprocess.run(
                [cand, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == python:
            return cand
    return None


def check_closure(dest: Path, targets: Sequence[Target], *, cache_dir: Path | None = None) -> None:
    """Prove every target installs offline from ``dest`` alone; report all, raise once.

    With ``cache_dir``, a target whose proof already passed for byte-identical inputs
    (the interpreter, the hash-pinned requirements file and the sha256 of every wheel in
    ``dest``) is not installed again: the same inputs give the same answer, and an
    unchanged rebuild stays fast. A failure is never cached.

    Raises:
        ClosureError: one problem per target that cannot install, naming the missing
            package(s) and the target.
    """
    problems: list[str] = []
    for target in targets:
        req = dest / target.requirements_name()
        if not req.is_file():
            problems.append(f"{target.slug}: no requirements file {req.name}")
            continue
        interp = _interpreter(target.python)
        installs = bool(interp and _platform_runs_here(target.platform))
        how = "offline install in a fresh venv" if installs else "offline resolver dry run"
        proof = None
        if cache_dir is not None:
            proof = cache_dir / "closure" / _closure_key(target, interp, how, req, dest)
            if proof.is_file():
                continue
        with tempfile.TemporaryDirectory(prefix="airlock-closure-") as tmp:
            if installs and interp:
                ok, out = _install_in_venv(interp, dest, req, Path(tmp))
            else:
                ok, out = _dry_run(target, dest, req, Path(tmp))
        if ok and proof is not None:
            proof.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(proof, f"{target.slug}: {how} passed\n")
        if not ok:
            missing = missing_packages(out)
            what = (
                "missing wheel for " + ", ".join(missing)
                if missing
                else "pip failed: " + " | ".join(out.strip().splitlines()[-3:])
            )
            problems.append(f"Python {target.python} on {target.platform} ({how}): {what}")
    if problems:
        raise ClosureError(
            "the wheelhouse cannot install offline for every target",
            hint="add the missing wheels (rebuild the wheelhouse) or drop the target",
            problems=problems,
        )


def _closure_key(target: Target, interp: str | None, how: str, req: Path, dest: Path) -> str:
    """Digest of everything a closure proof depends on."""
    h = hashlib.sha256(b"airlock-closure-v1\0")
    h.update(f"{target.slug}\0{how}\0{interp}\0".encode())
    if interp:
        st = os.stat(interp)
        h.update(f"{os.path.realpath(interp)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    h.update(req.read_bytes())
    for whl in sorted(dest.glob("*.whl")):
        h.update(f"\0{whl.name}\0{hash_file(whl)[1]}".encode())
    return h.hexdigest()


def _platform_runs_here(platform_tag: str) -> bool:
    machine = os.uname().machine
    return sys.platform.startswith("linux") and platform_tag.endswith(machine)


def _install_in_venv(interp: str, dest: Path, req: Path, tmp: Path) -> tuple[bool, str]:
    """The documented offline install, into a fresh venv of the target's interpreter.

    Our own pip drives a bare venv of our interpreter (fast); another interpreter's venv
    uses the pip it bundles (ours may not support that Python).
    """
    venv = tmp / "venv"
    ours = interp == sys.executable
    made = subprocess.run(
        [interp, "-m", "venv", *(["--without-pip"] if ours else []), str(venv)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        return False, made.stdout + made.stderr
    pip = (
        [*_pip(), "--python", str(venv / "bin" / "python")]
        if ours
        else [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "--disable-pip-version-check",
        ]
    )
    run = subprocess.run(
        [
            *pip,
            "install",
            "--no-index",
            "--find-links",
            str(dest),
            "--require-hashes",
            "--only-binary=:all:",
            "-r",
            str(req),
        ],
        capture_output=True,
        text=True,
        env=_offline_env(),
        check=False,
    )
    return run.returncode == 0, run.stdout + run.stderr


def _dry_run(target: Target, dest: Path, req: Path, tmp: Path) -> tuple[bool, str]:
    """pip's resolver over the pinned closure for ``target``; for another Python than this
    one with ``--no-deps`` plus :func:`_missing_dependencies` (pip would evaluate the wheels'
    markers for this interpreter, not the target's)."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    argv = [
        *_pip(),
        "install",
        "--dry-run",
        "--ignore-installed",
        "--target",
        str(tmp / "t"),
        *_target_args(target, os.uname().machine),
    ]
    if target.python != here:
        argv.append("--no-deps")
    argv += [
        "--only-binary=:all:",
        "--no-index",
        "--find-links",
        str(dest),
        "--require-hashes",
        "-r",
        str(req),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, env=_offline_env(), check=False)
    if run.returncode != 0 or target.python == here:
        return run.returncode == 0, run.stdout + run.stderr
    missing = _missing_dependencies(target, dest, req)
    return not missing, "\n".join(missing)


def _missing_dependencies(target: Target, dest: Path, req: Path) -> list[str]:
    """Every dependency of a pinned wheel (markers evaluated for ``target``) that the
    requirements file does not pin at a version it accepts, as ``No matching distribution
    found for NAME`` lines."""
    pins: dict[str, str] = {}
    for line in req.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==(\S+) ", line)
        if m:
            pins[str(canonicalize_name(m.group(1)))] = m.group(2)
    files = {str(canonicalize_name(parse_wheel_filename(w.name)[0])): w for w in dest.glob("*.whl")}
    missing = []
    for name in sorted(pins):
        wheel = next(
            (w for w in dest.glob("*.whl") if _wheel_pin(w) == (name, pins[name])),
            files.get(name),
        )
        if wheel is None:
            continue  # pip's --require-hashes run above already failed for it
        for dep in wheel_requires(wheel, target.python):
            have = pins.get(str(canonicalize_name(dep.name)))
            if have is None or not dep.specifier.contains(have, prereleases=True):
                missing.append(f"No matching distribution found for {dep.name} (for {name})")
    return missing


def _wheel_pin(path: Path) -> tuple[str, str]:
    name, version, _, _ = parse_wheel_filename(path.name)
    return str(canonicalize_name(name)), str(version)


def build_airlock_wheel(out_dir: Path, *, cache_dir: Path) -> Path:
    """``pip wheel --no-deps`` of airlock itself from the repository.

    Raises:
        BuildError: the repository cannot be built into a wheel.
    """
    root = repo_root()
    if not (root / "pyproject.toml").is_file():
        raise BuildError(
            f"no pyproject.toml in {root}: airlock runs from an installed copy",
            hint="run airlock build from a source checkout (pip install -e .)",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # Keyed by every file that goes into the wheel, and built with a fixed zip timestamp, so
    # an unchanged checkout gives the same wheel bytes (and a cached closure proof) every time.
    cached = cache_dir / "selfwheel" / _source_key(root)
    hits = sorted(cached.glob("airlock-*.whl")) if cached.is_dir() else []
    if len(hits) == 1:
        final = out_dir / hits[0].name
        _atomic_copy(hits[0], final)
        return final
    with tempfile.TemporaryDirectory(prefix="airlock-selfwheel-") as tmp:
        env = _pip_env(cache_dir)
        env["SOURCE_DATE_EPOCH"] = str(_WHEEL_EPOCH)
        run = subprocess.run(
            [*_pip(), "wheel", "--no-deps", "--wheel-dir", tmp, str(root)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if run.returncode != 0:
            raise BuildError(
                "could not build airlock's own wheel",
                hint="check the repository builds with: pip wheel --no-deps .",
                problems=(run.stdout + run.stderr).splitlines()[-40:],
            )
        built = sorted(Path(tmp).glob("airlock-*.whl"))
        if len(built) != 1:
            raise BuildError(f"pip wheel produced {len(built)} airlock wheels, expected 1")
        final = out_dir / built[0].name
        _atomic_copy(built[0], final)
        cached.mkdir(parents=True, exist_ok=True)
        _atomic_copy(built[0], cached / built[0].name)
    return final


_WHEEL_EPOCH = 315532800  # 1980-01-01, the earliest time a zip member can carry


def _source_key(root: Path) -> str:
    """Digest of the files setuptools puts into airlock's wheel (and the pip doing it)."""
    h = hashlib.sha256(b"airlock-selfwheel-v1\0")
    h.update(subprocess.run([*_pip(), "--version"], capture_output=True, check=False).stdout)
    files = [root / n for n in ("pyproject.toml", "VERSION", "README.md")]
    for pkg in ("bundler", "runtime"):
        files += [p for p in (root / pkg).rglob("*.py") if "__pycache__" not in p.parts]
    for f in sorted(files):
        if f.is_file():
            h.update(f"\0{f.relative_to(root).as_posix()}\0{hash_file(f)[1]}".encode())
    return h.hexdigest()


CONTROLLER_BOOTSTRAP = "python3 -m runtime.controller /opt/airlock-controller"


def build_controller_wheelhouse(
    dest: Path,
    *,
    cache_dir: Path,
    pythons: Sequence[str] = CONTROLLER_PYTHONS,
    platform: str = CONTROLLER_PLATFORM,
    index_url: str | None = None,
) -> WheelhouseResult:
    """The far-side Ansible controller's wheelhouse: ansible-core, pip, airlock, dependencies.

    One hash-pinned closure per controller Python (``requirements-cp<XY>-<platform>.txt``),
    each resolved for that Python (``pip download --python-version``) and proven to install
    offline. Bootstraps offline, with or without python3-venv, from the directory that holds
    the bundle's ``controller/`` and ``runtime/`` (docs/OPERATIONS.md)::

        python3 -m runtime.controller /opt/airlock-controller

    ``requirements.txt`` is a copy of the build machine's Python's file (else the first).

    Raises:
        BuildError: a closure lacks ansible-core or pip (see :func:`controller_pins`).
        FetchError, ClosureError: as :func:`build_wheelhouse`.
    """
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    versions = list(dict.fromkeys(pythons or [here]))
    targets = [Target(v, platform) for v in versions]
    with tempfile.TemporaryDirectory(prefix="airlock-ctl-") as tmp:
        own = build_airlock_wheel(Path(tmp), cache_dir=cache_dir)
        result = build_wheelhouse(
            targets,
            [],
            # airlock's own dependencies carry python_version markers (its build-only 3.11+
            # ones): evaluated here for each controller Python, as pip would not.
            target_requirements={
                t: [*controller_requirements(t.python), *map(str, wheel_requires(own, t.python))]
                for t in targets
            },
            nodeps_wheels=[own],
            extra_wheels=[],
            dest=dest,
            cache_dir=cache_dir,
            index_url=index_url,
        )
    main_target = next((t for t in targets if t.python == here), targets[0])
    main_req = dest / "requirements.txt"
    _atomic_copy(result.requirements[main_target], main_req)
    props = dict(result.properties)
    props["requirements"] = f"{dest.name}/requirements.txt"
    props["pythons"] = versions
    props["ansible_core"] = {
        t.python: controller_pins(result.requirements[t].read_text())["ansible-core"]
        for t in targets
    }
    props["bootstrap"] = CONTROLLER_BOOTSTRAP
    return WheelhouseResult(dest, props, result.requirements, result.wheels)


def controller_pins(requirements: str) -> dict[str, str]:
    """``{name: version}`` of a controller requirements file; it must pin ansible-core and pip.

    Raises:
        BuildError: one of the two is not in the closure.
    """
    pins = {}
    for line in requirements.splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==(\S+) ", line)
        if m:
            pins[str(canonicalize_name(m.group(1)))] = m.group(2)
    missing = [n for n in ("ansible-core", "pip") if n not in pins]
    if missing:
        raise BuildError(f"the controller closure has no {' and no '.join(missing)}")
    return pins


def _pip() -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def _pip_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PIP_CACHE_DIR"] = str(cache_dir / "pip")
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    return env


def _offline_env() -> dict[str, str]:
    """pip sees the wheelhouse and nothing else: no PIP_* settings, no pip.conf (a
    configured find-links or extra index would let a missing wheel slip through)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_NO_INDEX"] = "1"
    env["PIP_NO_CACHE_DIR"] = "1"
    return env


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)
