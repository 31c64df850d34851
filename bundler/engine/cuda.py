"""The optional CUDA backend: the toolkit that compiles it and NVIDIA's runtime libraries.

The toolkit is found (``$CUDACXX``, PATH, ``/usr/local/cuda*``) and its version read from
``nvcc --version``; the runtime libraries the module needs (``libcudart``, ``libcublas``,
``libcublasLt``) come from NVIDIA's wheels on the package index, pinned to the toolkit's
minor release, and travel in the bundle (``engine/lib/cuda``) instead of being assumed on
the host. The same wheels' headers and libraries are the compile-time cuBLAS, so the module
is linked against exactly what ships. The minimum host driver follows from the CUDA major
version.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from bundler.errors import BuildError, FetchError, UsageError
from bundler.fsio import hash_file

__all__ = [
    "RUNTIME_LIBRARY",
    "CudaOptions",
    "RuntimeWheel",
    "carried_mismatches",
    "collect_cuda_runtime",
    "cuda_options",
    "cuda_sdk_flags",
    "download_cuda_wheels",
    "extract_cuda_sdk",
    "find_nvcc",
    "min_driver",
    "parse_nvcc_version",
    "runtime_wheel",
]

# Minimum Linux driver for each CUDA major version (CUDA minor version compatibility,
# NVIDIA CUDA Toolkit release notes, table 3).
_MIN_DRIVER: Mapping[str, str] = {"11": "450.80.02", "12": "525.60.13", "13": "580.65.06"}

# the CUDA runtime libraries a bundle carries (the driver, libcuda.so.1, is the host's)
RUNTIME_LIBRARY = re.compile(r"^lib(cudart|cublas|cublasLt)\.so")


@dataclass(frozen=True)
class CudaOptions:
    """A CUDA backend module: target GPU architectures and the toolkit that compiles it.

    ``cuda_version`` is the toolkit's ``MAJOR.MINOR`` (``nvcc --version``): the runtime
    wheels carried in the bundle are pinned to the same minor release, so the module never
    meets an older ``libcudart`` than it was compiled against. :func:`cuda_options` finds
    the toolkit and fills it in.
    """

    architectures: tuple[str, ...] = ("80",)
    cuda_version: str = "12.4"
    nvcc: str | None = None
    runtime_wheels: tuple[str, ...] = ()
    # ggml's virtual-memory pool links libcuda directly, which needs the toolkit's driver
    # stub (lib64/stubs/libcuda.so) at link time; toolkits without one build the legacy pool
    vmm: bool = True

    def wheel_requirements(self) -> list[str]:
        """The NVIDIA PyPI wheels that carry the runtime libraries the module needs.

        CUDA 11 and 12 wheels carry the major version in their name
        (``nvidia-cublas-cu12``); from CUDA 13 on NVIDIA publishes them unsuffixed
        (``nvidia-cublas``, files under ``nvidia/cu13/lib``).
        """
        if self.runtime_wheels:
            return list(self.runtime_wheels)
        major, minor = _cuda_major_minor(self.cuda_version)
        suffix = f"-cu{major}" if int(major) < 13 else ""
        return [
            f"nvidia-cuda-runtime{suffix}=={major}.{minor}.*",
            f"nvidia-cublas{suffix}=={major}.{minor}.*",
        ]


def _cuda_major_minor(version: str) -> tuple[str, str]:
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)?", version.strip())
    if not m:
        raise UsageError(f"CUDA version {version!r} is not MAJOR.MINOR", hint="write it like 12.4")
    return m.group(1), m.group(2)


def min_driver(cuda_version: str) -> str:
    """The minimum NVIDIA Linux driver for a CUDA runtime version.

    Raises:
        UsageError: a CUDA major version airlock has no driver entry for.
    """
    major, _ = _cuda_major_minor(cuda_version)
    if major not in _MIN_DRIVER:
        raise UsageError(
            f"no minimum-driver entry for CUDA {cuda_version}",
            hint="use CUDA " + " or ".join(f"{k}.x" for k in _MIN_DRIVER),
        )
    return _MIN_DRIVER[major]


def find_nvcc(
    env: Mapping[str, str] | None = None, *, prefix: Path = Path("/usr/local")
) -> str | None:
    """The CUDA compiler a build would use: ``$CUDACXX``, ``nvcc`` on PATH, then
    ``/usr/local/cuda/bin/nvcc`` and the newest ``/usr/local/cuda-X.Y/bin/nvcc`` (where
    NVIDIA's packages install it, off PATH)."""
    env = os.environ if env is None else env
    if env.get("CUDACXX"):
        return env["CUDACXX"]
    on_path = shutil.which("nvcc", path=env.get("PATH", ""))
    if on_path:
        return on_path
    candidates = [prefix / "cuda" / "bin" / "nvcc"]
    candidates += sorted(
        prefix.glob("cuda-*/bin/nvcc"),
        key=lambda p: _version_key(p.parent.parent.name.removeprefix("cuda-")),
        reverse=True,
    )
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)) or (0,)


def parse_nvcc_version(output: str) -> str:
    """``13.0`` from ``nvcc --version`` (its ``release 13.0, V13.0.88`` line).

    Raises:
        BuildError: the output names no release.
    """
    m = re.search(r"release (\d+)\.(\d+)", output)
    if not m:
        raise BuildError(
            "could not read the CUDA toolkit version from nvcc --version",
            hint="check that CUDACXX points at a working nvcc",
            problems=output.splitlines()[-5:],
        )
    return f"{m.group(1)}.{m.group(2)}"


def cuda_options(architectures: Sequence[str], *, nvcc: str | None = None) -> CudaOptions:
    """CUDA options for ``architectures`` with the toolkit found on this machine.

    Raises:
        BuildError: no CUDA toolkit, or one whose version cannot be read.
        UsageError: a toolkit whose major version has no minimum-driver entry.
    """
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise BuildError(
            "the spec enables CUDA (engine.cuda.enabled) but no CUDA toolkit was found",
            hint="install NVIDIA's CUDA toolkit, or set CUDACXX=/path/to/nvcc; "
            "or set engine.cuda.enabled: false",
        )
    try:
        run = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
    except OSError as e:
        raise BuildError(f"cannot run the CUDA compiler {nvcc}: {e}") from e
    version = parse_nvcc_version(run.stdout + run.stderr)
    min_driver(version)  # refuse a toolkit we cannot state a driver floor for, before building
    return CudaOptions(
        architectures=tuple(architectures),
        cuda_version=version,
        nvcc=nvcc,
        vmm=driver_stub(nvcc) is not None,
    )


def driver_stub(nvcc: str) -> Path | None:
    """The toolkit's link-time stub of the driver library (``libcuda.so``), if it has one."""
    toolkit = Path(nvcc).resolve().parent.parent
    for stub in [toolkit / "lib64" / "stubs", *sorted(toolkit.glob("targets/*/lib/stubs"))]:
        if (stub / "libcuda.so").is_file():
            return stub / "libcuda.so"
    return None


def cuda_sdk_members(names: Iterable[str]) -> list[tuple[str, str]]:
    """The headers and libraries of NVIDIA's runtime wheels, as (member, path in the SDK).

    ``nvidia/<pkg>/include/...`` goes to ``include/...`` and ``nvidia/<pkg>/lib/<lib>.so*``
    to ``lib/<lib>.so*``: a compile-time overlay, so the module is compiled and linked
    against the very cuBLAS it ships with (and toolkits without cuBLAS can build it).
    """
    out = []
    for name in names:
        parts = name.split("/")
        if name.endswith("/") or len(parts) < 4 or parts[0] != "nvidia":
            continue
        if parts[2] == "include" and ".." not in parts:
            out.append((name, "/".join(["include", *parts[3:]])))
        elif parts[2] == "lib" and len(parts) == 4 and ".so" in parts[3]:
            out.append((name, "lib/" + parts[3]))
    return sorted(out)


def extract_cuda_sdk(wheels: Iterable[Path], dest: Path) -> Path:
    """Unpack :func:`cuda_sdk_members` of ``wheels`` under ``dest``; returns ``dest``."""
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for member, rel in cuda_sdk_members(zf.namelist()):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    return dest


def cuda_sdk_flags(sdk: Path) -> list[str]:
    """cmake cache entries that point FindCUDAToolkit's cuBLAS at the wheel overlay."""
    flags = ["-DCMAKE_CUDA_STANDARD_INCLUDE_DIRECTORIES=" + str(sdk / "include")]
    for lib in ("cublas", "cublasLt"):
        found = sorted((sdk / "lib").glob(f"lib{lib}.so.*"))
        if not found:
            raise BuildError(
                f"the CUDA runtime wheels carry no lib{lib}.so",
                hint="check engine.cuda: the wheels must include NVIDIA's cuBLAS",
            )
        flags.append(f"-DCUDA_{lib}_LIBRARY={found[0]}")
    return flags


def cuda_library_members(names: Iterable[str]) -> list[str]:
    """The runtime libraries to carry out of NVIDIA's wheels (``nvidia/*/lib/<lib>.so.N``).

    Only those the CUDA module loads (:data:`RUNTIME_LIBRARY`): the cuBLAS wheel also holds
    ``libnvblas``, a BLAS interposer nothing in the bundle uses.
    """
    keep = []
    for name in names:
        parts = name.split("/")
        if (
            len(parts) == 4
            and parts[0] == "nvidia"
            and parts[2] == "lib"
            and RUNTIME_LIBRARY.match(parts[3])
            and not name.endswith("/")
        ):
            keep.append(name)
    return sorted(keep)


def collect_cuda_runtime(wheels: Iterable[Path], dest: Path) -> list[str]:
    """Extract the CUDA runtime libraries from NVIDIA's wheels into ``dest``.

    Returns the file names written, sorted.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for member in cuda_library_members(zf.namelist()):
                name = member.rsplit("/", 1)[1]
                tmp = dest / f".{name}.tmp"
                with zf.open(member) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest / name)
                written.append(name)
    return sorted(written)


@dataclass(frozen=True)
class RuntimeWheel:
    """One NVIDIA wheel a build fetched: what PyPI publishes about it, and what it gave us.

    ``sha256`` is the wheel file's (the digest the package index lists for that file);
    ``libraries`` the runtime library file names carried out of it into ``lib/cuda``;
    ``index_url`` the index pip was told to use (None: pip's configured index).
    """

    name: str
    version: str
    file: str
    sha256: str
    size: int
    index_url: str | None
    libraries: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "index_url": self.index_url,
            "libraries": list(self.libraries),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuntimeWheel:
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            file=str(data["file"]),
            sha256=str(data["sha256"]),
            size=int(data["size"]),
            index_url=None if data.get("index_url") is None else str(data["index_url"]),
            libraries=tuple(str(x) for x in data.get("libraries", [])),
        )


def _canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_wheel(wheel: Path, *, index_url: str | None) -> RuntimeWheel:
    """The facts about one downloaded NVIDIA wheel: name and version from its metadata
    (``*.dist-info/METADATA``, falling back to the file name), the file's sha256 and size,
    and the runtime libraries :func:`collect_cuda_runtime` carries out of it.

    Raises:
        BuildError: the file is not a readable wheel.
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            meta = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            headers = (
                HeaderParser().parsestr(zf.read(meta[0]).decode("utf-8", "replace"))
                if meta
                else None
            )
    except (OSError, zipfile.BadZipFile) as e:
        raise BuildError(
            f"the CUDA runtime wheel {wheel.name} is not a readable wheel: {e}",
            hint="delete it and rebuild; check the package index serves intact files",
        ) from e
    stem = wheel.name.split("-")
    name = (headers.get("Name") if headers else None) or stem[0]
    version = (headers.get("Version") if headers else None) or (stem[1] if len(stem) > 1 else "")
    return RuntimeWheel(
        name=_canonical_name(str(name).strip()),
        version=str(version).strip(),
        file=wheel.name,
        sha256=hash_file(wheel)[1],
        size=wheel.stat().st_size,
        index_url=index_url,
        libraries=tuple(m.rsplit("/", 1)[1] for m in cuda_library_members(names)),
    )


def carried_mismatches(wheels: Iterable[Path], lib_dir: Path) -> list[str]:
    """How the runtime libraries in ``lib_dir`` differ from those inside ``wheels``.

    Empty when every carried library (:data:`RUNTIME_LIBRARY`) is byte-identical to the
    wheels' copy and the wheels carry no library missing from ``lib_dir``: then the wheels'
    facts describe the carried bytes exactly.
    """
    carried = {p.name for p in lib_dir.glob("*.so*") if RUNTIME_LIBRARY.match(p.name)}
    problems = []
    seen = set()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for member in cuda_library_members(zf.namelist()):
                name = member.rsplit("/", 1)[1]
                seen.add(name)
                if name not in carried:
                    problems.append(f"{wheel.name} has {name}, not carried")
                    continue
                h = hashlib.sha256()
                with zf.open(member) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        h.update(block)
                if h.hexdigest() != hash_file(lib_dir / name)[1]:
                    problems.append(f"{name} differs from the copy in {wheel.name}")
    problems += [f"{n} is in no fetched wheel" for n in sorted(carried - seen)]
    return problems


# NVIDIA's runtime wheels: CUDA 12 is tagged manylinux2014, cuBLAS 13 manylinux_2_27.
_CUDA_WHEEL_PLATFORMS = (
    "manylinux2014_x86_64",
    *(f"manylinux_2_{n}_x86_64" for n in range(17, 29)),
)


def download_cuda_wheels(cuda: CudaOptions, dest: Path, *, index_url: str | None) -> list[Path]:
    """pip-download the NVIDIA runtime wheels for ``cuda`` (binary, no deps)."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "pip",
        "--disable-pip-version-check",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        *(a for tag in _CUDA_WHEEL_PLATFORMS for a in ("--platform", tag)),
        "--dest",
        str(dest),
    ]
    if index_url:
        argv += ["--index-url", index_url]
    argv += cuda.wheel_requirements()
    run = subprocess.run(argv, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise FetchError(
            "could not download the CUDA runtime wheels " + " ".join(cuda.wheel_requirements()),
            hint="check the package index is reachable and the CUDA version exists on it",
            problems=(run.stdout + run.stderr).splitlines()[-20:],
        )
    return sorted(dest.glob("nvidia_*.whl"))
