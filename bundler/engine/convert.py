"""Safetensors to GGUF with the pinned llama.cpp's ``convert_hf_to_gguf.py``, offline and cached.

The converter is the script vendored in the engine's pinned llama-cpp-python sdist, with
its ``conversion/`` package and its own ``gguf-py``; its digests are recorded. It runs in
a build environment of its own: the vendored requirements file resolved once into wheels
whose sha256 are recorded, installed with ``--no-index --require-hashes`` into a virtual
environment kept in the build cache. The conversion runs inside a network namespace with
no interfaces (``unshare -n``), with the Hub libraries told to stay offline, bytecode
written to the environment's own prefix (never into the cached source tree) and a fixed
hash seed. Its output is cached by every input: the input
files' sha256, the converter's digests, the llama.cpp commit, the environment's locked
packages and the outtype.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler import console
from bundler.engine.buildcache import BuildCache, cache_key, copy_log

# the engine build's helpers: the same network isolation and logging for every llama.cpp tool
from bundler.engine.llamacpp import isolation_prefix, run_logged
from bundler.engine.sdist import SourceArchive, source_tree
from bundler.errors import BuildError, ConvertError
from bundler.fsio import hash_file

__all__ = [
    "TORCH_REQUIREMENT",
    "Converted",
    "Converter",
    "ConverterEnv",
    "architecture_of",
    "check_architecture",
    "convert",
    "converter",
    "converter_env",
    "converter_requirements",
    "known_architectures",
    "locked_requirements",
    "resolve_packages",
]

SCRIPT = "convert_hf_to_gguf.py"
REQUIREMENTS = "requirements/requirements-convert_hf_to_gguf.txt"
OUTPUT = "model.gguf"
PACKAGES_FILE = "packages.json"
# The vendored file pins torch 2.11.0 and names PyTorch's CPU index, which an airlock build
# machine does not use. airlock pins the release the build machines carry as a CPU wheel
# (/opt/wheels, pip's find-links). A site without that file gets torch 2.13.0 from PyPI,
# whose Linux wheel depends on NVIDIA's CUDA wheels (several GB): mirror the CPU build
# (download.pytorch.org/whl/cpu) into a find-links directory to avoid that.
TORCH_REQUIREMENT = "torch==2.13.0"
# The package the script takes from its own tree (gguf-py), not from the index.
_VENDORED = ("gguf",)
_REQ_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


# --------------------------------------------------------------------------- the script


@dataclass(frozen=True)
class Converter:
    """The pinned converter: where it is and what identifies it."""

    tree: Path  # vendor/llama.cpp of the extracted sdist
    script_sha256: str
    tree_sha256: str  # the script, conversion/ and gguf-py/ (every .py file)
    llama_cpp_commit: str
    architectures: frozenset[str]


def _tree_digest(tree: Path) -> str:
    files = [tree / SCRIPT]
    for sub in ("conversion", "gguf-py"):
        files += sorted(p for p in (tree / sub).rglob("*.py") if "__pycache__" not in p.parts)
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f"{f.relative_to(tree).as_posix()}\0{hash_file(f)[1]}\n".encode())
    return h.hexdigest()


def known_architectures(tree: Path) -> frozenset[str]:
    """The Hugging Face architectures the script converts (``TEXT_MODEL_MAP``)."""
    text = (tree / "conversion" / "__init__.py").read_text(encoding="utf-8")
    _, _, rest = text.partition("TEXT_MODEL_MAP")
    body, _, _ = rest.partition("\n}")
    return frozenset(re.findall(r'^\s+"([^"]+)":\s*"[^"]+",', body, re.MULTILINE))


def converter(source: SourceArchive, *, cache_dir: Path) -> Converter:
    """The converter in ``source``'s vendored llama.cpp.

    Raises:
        BuildError: the sdist carries no ``convert_hf_to_gguf.py``.
    """
    tree = source_tree(source, cache_dir=cache_dir) / "vendor" / "llama.cpp"
    if not (tree / SCRIPT).is_file():
        raise BuildError(
            f"llama-cpp-python {source.version} carries no vendor/llama.cpp/{SCRIPT}",
            hint="pin a llama-cpp-python release that vendors the converter",
        )
    return Converter(
        tree=tree,
        script_sha256=hash_file(tree / SCRIPT)[1],
        tree_sha256=_tree_digest(tree),
        llama_cpp_commit=source.llama_cpp_commit,
        architectures=known_architectures(tree),
    )


def architecture_of(config: Mapping[str, Any]) -> str | None:
    """The architecture the script reads from ``config.json`` (the text model's first)."""
    text = config.get("text_config")
    for where in (text if isinstance(text, Mapping) else {}, config):
        arches = where.get("architectures")
        if isinstance(arches, list) and arches and isinstance(arches[0], str):
            return arches[0]
    return None


def check_architecture(config_bytes: bytes, conv: Converter, *, model: str) -> str:
    """The model's architecture when the pinned converter knows it.

    Raises:
        ConvertError: ``config.json`` is unreadable, names no architecture, or one the
            converter does not know (named, with how to proceed).
    """
    try:
        config = json.loads(config_bytes)
    except ValueError as e:
        raise ConvertError(f"model {model}: config.json is not JSON: {e}") from e
    arch = architecture_of(config) if isinstance(config, dict) else None
    if arch is None:
        raise ConvertError(
            f"model {model}: config.json names no architecture",
            hint="the converter needs config.json's 'architectures' list",
        )
    if arch not in conv.architectures:
        close = sorted(a for a in conv.architectures if a.lower()[:5] == arch.lower()[:5])[:5]
        raise ConvertError(
            f"model {model}: the pinned convert_hf_to_gguf.py (llama.cpp "
            f"{conv.llama_cpp_commit[:12]}) does not know the architecture {arch!r}",
            hint="use a GGUF of this model, or pin a llama-cpp-python whose llama.cpp "
            "converts it" + (f" (known and similar: {', '.join(close)})" if close else ""),
        )
    return arch


# --------------------------------------------------------------------------- the environment


def converter_requirements(tree: Path) -> tuple[str, ...]:
    """The vendored requirements of the script, as airlock installs them (pure over the files).

    ``-r`` includes are followed, index options dropped (pip's own configuration decides
    where wheels come from), the vendored ``gguf`` left out and torch pinned to
    :data:`TORCH_REQUIREMENT`.
    """
    out: list[str] = []

    def read(path: Path) -> None:
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("-r"):
                read(path.parent / line[2:].strip())
                continue
            if line.startswith("-"):
                continue
            m = _REQ_NAME.match(line)
            name = m.group(1).lower() if m else ""
            if name in _VENDORED:
                continue
            out.append(TORCH_REQUIREMENT if name == "torch" else line)

    read(tree / REQUIREMENTS)
    return tuple(sorted(set(out), key=str.lower))


@dataclass(frozen=True)
class ConverterEnv:
    """The converter's virtual environment in the build cache and what it holds."""

    python: Path
    key: str
    pycache: Path  # PYTHONPYCACHEPREFIX of every run: bytecode stays out of the source trees
    requirements: tuple[str, ...]
    packages: tuple[dict[str, Any], ...]  # {name, version, file, sha256}, sorted by name
    cached: bool
    cold_seconds: float | None

    @property
    def lock_sha256(self) -> str:
        """The digest of the locked packages (part of every conversion's cache key)."""
        return cache_key({"packages": list(self.packages)})


def _wheel_name_version(filename: str) -> tuple[str, str]:
    parts = filename[: -len(".whl")].split("-")
    return parts[0].lower().replace("_", "-"), parts[1]


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    return env


_PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check")


def _python_inputs() -> dict[str, str]:
    return {"python": sys.version, "base_prefix": sys.base_prefix, "arch": platform.machine()}


def resolve_packages(
    requirements: Sequence[str], *, cache_dir: Path, log_dir: Path | None = None
) -> tuple[dict[str, Any], ...]:
    """Resolve the requirements to wheels: every one with name, version, file and sha256.

    ``airlock lock`` records the result; the build installs exactly it. Cached by the
    requirements and the interpreter (the wheels themselves are not kept).

    Raises:
        BuildError: pip could not resolve or download them (its output is in the log).
    """
    inputs = {"kind": "converter-resolve", "requirements": list(requirements), **_python_inputs()}

    def builder(out: Path, log: Path) -> None:
        wheels = out / "_wheels"
        (out / "requirements.in").write_text("\n".join(requirements) + "\n")
        run_logged(
            [
                *_PIP,
                "download",
                "--only-binary",
                ":all:",
                "-d",
                str(wheels),
                "-r",
                str(out / "requirements.in"),
            ],
            log,
            env=_pip_env(),
            what="resolving the converter's requirements",
        )
        packages = []
        for w in sorted(wheels.glob("*.whl")):
            name, version = _wheel_name_version(w.name)
            packages.append(
                {"name": name, "version": version, "file": w.name, "sha256": hash_file(w)[1]}
            )
        (out / PACKAGES_FILE).write_text(json.dumps(packages, indent=1, sort_keys=True) + "\n")
        shutil.rmtree(wheels)

    entry = BuildCache(cache_dir).build("converter-resolve", inputs, builder)
    copy_log(entry, log_dir, "converter-resolve.log")
    return tuple(json.loads((entry.path / PACKAGES_FILE).read_text()))


def locked_requirements(packages: Sequence[Mapping[str, Any]]) -> str:
    """The pip requirements file that installs exactly ``packages`` (pure)."""
    return "".join(
        f"{p['name']}=={p['version']} --hash=sha256:{p['sha256']}\n"
        for p in sorted(packages, key=lambda p: str(p["name"]))
    )


def converter_env(
    requirements: Sequence[str],
    *,
    packages: Sequence[Mapping[str, Any]] | None = None,
    cache_dir: Path,
    log_dir: Path | None = None,
) -> ConverterEnv:
    """The converter's environment with exactly ``packages`` (the lock's; resolved when None).

    The wheels are downloaded with ``--require-hashes`` and installed with ``--no-index``;
    the environment is cached by the packages and the interpreter.

    Raises:
        BuildError: a wheel could not be fetched or does not match its sha256, or the
            install failed (the pip output is in the log).
    """
    reqs = tuple(requirements)
    if packages is None:
        packages = resolve_packages(reqs, cache_dir=cache_dir, log_dir=log_dir)
    locked = locked_requirements(packages)
    inputs = {"kind": "converter-env", "packages": locked, **_python_inputs(), "recipe": 2}

    def builder(out: Path, log: Path) -> None:
        wheels = out / "_wheels"
        (out / "requirements.lock").write_text(locked)
        run_logged(
            [
                *_PIP,
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--require-hashes",
                "-d",
                str(wheels),
                "-r",
                str(out / "requirements.lock"),
            ],
            log,
            env=_pip_env(),
            what="fetching the converter's locked wheels",
        )
        run_logged(
            [sys.executable, "-m", "venv", "--without-pip", str(out / "venv")],
            log,
            what="the converter's virtual environment",
        )
        run_logged(
            [
                *_PIP,
                "--python",
                str(out / "venv" / "bin" / "python"),
                "install",
                "--no-index",
                "--no-deps",
                "--require-hashes",
                "--no-compile",
                "--find-links",
                str(wheels),
                "-r",
                str(out / "requirements.lock"),
            ],
            log,
            env=_pip_env(),
            what="installing the converter's locked packages",
        )
        rows = sorted((dict(p) for p in packages), key=lambda p: str(p["name"]))
        (out / PACKAGES_FILE).write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
        shutil.rmtree(wheels)

    entry = BuildCache(cache_dir).build("converter-env", inputs, builder)
    copy_log(entry, log_dir, "converter-env.log")
    installed: tuple[dict[str, Any], ...] = tuple(
        json.loads((entry.path / PACKAGES_FILE).read_text())
    )
    python = entry.path / "venv" / "bin" / "python"
    pycache = entry.path / "pycache"
    if not (pycache / ".warm").is_file():
        # Compile the environment's bytecode once, at its final path, into its own prefix:
        # importing torch and transformers from source costs a minute and a half.
        with tempfile.TemporaryDirectory(prefix=".warm-", dir=entry.path.parent) as t:
            env = {**_offline_env(Path(t)), "PYTHONPYCACHEPREFIX": str(pycache)}
            Path(t, "home").mkdir()
            run_logged(
                [str(python), "-c", "import numpy, sentencepiece, torch, transformers"],
                entry.path / "warm.log",
                env=env,
                what="compiling the converter environment",
            )
        (pycache / ".warm").write_text("1\n")
    if not entry.hit:
        console.info(
            f"converter environment: {len(installed)} locked packages in {entry.seconds:.0f} s"
        )
    return ConverterEnv(
        python=python,
        key=entry.key,
        pycache=pycache,
        requirements=reqs,
        packages=installed,
        cached=entry.hit,
        cold_seconds=entry.cold_seconds,
    )


# --------------------------------------------------------------------------- converting


@dataclass(frozen=True)
class Converted:
    """A converted GGUF in the cache."""

    path: Path
    size: int
    sha256: str
    outtype: str
    cached: bool
    seconds: float


def _offline_env(tmp: Path) -> dict[str, str]:
    """A small, fixed environment: offline, bytecode in a prefix of its own, a fixed hash seed.

    The math libraries keep their threads: the conversion casts element by element and the
    writer is sequential, so the bytes do not depend on them (the tests build twice)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp / "home"),
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONPYCACHEPREFIX": str(tmp / "pycache"),  # callers point it into the env
        "PYTHONNOUSERSITE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(tmp / "hf"),
        "TOKENIZERS_PARALLELISM": "false",
    }


def convert(
    conv: Converter,
    env: ConverterEnv,
    inputs: Mapping[str, tuple[Path, str]],
    *,
    repo_name: str,
    outtype: str,
    cache_dir: Path,
    log_dir: Path | None = None,
) -> Converted:
    """Convert the checkpoint ``inputs`` (repo path -> (file, sha256)) to one GGUF.

    ``repo_name`` names the input directory (the converter derives the model's name from
    it), so the same repository gives the same metadata wherever it is built.

    Raises:
        ConvertError: the converter failed (with the tail of its output).
    """
    key_inputs = {
        "kind": "convert",
        "inputs": sorted([path, sha] for path, (_, sha) in inputs.items()),
        "repo_name": repo_name,
        "script_sha256": conv.script_sha256,
        "tree_sha256": conv.tree_sha256,
        "llama_cpp_commit": conv.llama_cpp_commit,
        "environment": env.lock_sha256,
        "outtype": outtype,
        "recipe": 1,
    }

    def builder(out: Path, log: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=".convert-", dir=out.parent) as t:
            tmp = Path(t)
            src = tmp / "in" / repo_name
            for path, (file, _) in sorted(inputs.items()):
                dest = src / path
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(file.resolve(), dest)
            (tmp / "home").mkdir()
            argv = [
                *isolation_prefix(),
                str(env.python),
                str(conv.tree / SCRIPT),
                str(src),
                "--outtype",
                outtype,
                "--outfile",
                str(out / OUTPUT),
            ]
            try:
                env_vars = {**_offline_env(tmp), "PYTHONPYCACHEPREFIX": str(env.pycache)}
                run_logged(argv, log, cwd=tmp, env=env_vars, what=SCRIPT)
            except BuildError as e:
                raise ConvertError(
                    f"{SCRIPT} could not convert {repo_name}",
                    hint="the end of the converter's output is listed above",
                    problems=e.problems,
                ) from e

    entry = BuildCache(cache_dir).build("convert", key_inputs, builder)
    copy_log(entry, log_dir, f"convert-{repo_name}.log")
    path = entry.path / OUTPUT
    size, sha = hash_file(path)
    return Converted(
        path=path, size=size, sha256=sha, outtype=outtype, cached=entry.hit, seconds=entry.seconds
    )
