"""The glibc floor audit: what every ELF file the bundle runs on a host needs from it.

Each ELF file is read with ``pyelftools`` (the structures themselves, never ``objdump``
text): its ``NEEDED`` libraries and the symbol versions it needs from them (the GNU
version-needs section, with the undefined symbols that need each version). The pure rule
(:func:`floor_problems`) holds them against the floor everything airlock ships must meet
(docs/OPERATIONS.md, "Supported hosts"): glibc 2.28, no libstdc++ and no libgcc_s from the
host. A build that needs more fails before anything is signed, naming every file and the
symbol that needs it.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection, GNUVerSymSection

from bundler.errors import BuildError

__all__ = [
    "GLIBC_FLOOR",
    "HOST_LIBRARIES",
    "ElfFacts",
    "floor_problems",
    "highest",
    "read_elf",
    "read_files",
    "read_wheel",
    "require_floor",
]

GLIBC_FLOOR = "2.28"
"""The oldest glibc every host-side ELF file must load on (RHEL 8)."""

# The libraries a glibc >= 2.28 host always has (glibc's own), and the NVIDIA driver's
# libcuda, which a CUDA host has by definition. Everything else an ELF file needs must be
# carried in the bundle (llama.cpp's own libraries, the CUDA runtime in engine/lib/cuda).
HOST_LIBRARIES = frozenset(
    {
        "libc.so.6",
        "libm.so.6",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "ld-linux-x86-64.so.2",
        "libcuda.so.1",
    }
)

_ELF_MAGIC = b"\x7fELF"
_VERSION = re.compile(r"^(GLIBC|GLIBCXX|CXXABI|GCC)_(\d+(?:\.\d+)*)$")


@dataclass(frozen=True)
class ElfFacts:
    """What one ELF file needs: ``needed`` libraries, symbol versions with their symbols."""

    path: str
    soname: str | None
    needed: tuple[str, ...]
    versions: Mapping[str, tuple[str, ...]]  # "GLIBC_2.34" -> ("__libc_start_main", ...)


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def highest(facts: Iterable[ElfFacts], family: str) -> str | None:
    """The newest ``<family>_x.y`` version any of the files needs (``None``: none needs it)."""
    found = [
        m.group(2)
        for f in facts
        for v in f.versions
        if (m := _VERSION.match(v)) is not None and m.group(1) == family
    ]
    return max(found, key=_key) if found else None


def read_elf(stream: IO[bytes], path: str) -> ElfFacts | None:
    """The facts of the ELF file in ``stream`` (``None`` when it is not an ELF file).

    Raises:
        BuildError: the file starts like an ELF file but its structures cannot be read.
    """
    stream.seek(0)
    if stream.read(4) != _ELF_MAGIC:
        return None
    stream.seek(0)
    try:
        elf = ELFFile(stream)
        needed: list[str] = []
        soname = None
        for sec in elf.iter_sections():
            if isinstance(sec, DynamicSection):
                for tag in sec.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(str(getattr(tag, "needed", "")))
                    elif tag.entry.d_tag == "DT_SONAME":
                        soname = str(getattr(tag, "soname", ""))
        versions = _needed_versions(elf)
    except (ELFError, ValueError, KeyError) as e:
        raise BuildError(f"{path}: not a readable ELF file: {e}") from e
    return ElfFacts(path=path, soname=soname, needed=tuple(needed), versions=versions)


def _needed_versions(elf: Any) -> dict[str, tuple[str, ...]]:
    """Version name -> the undefined dynamic symbols bound to it (version-needs entries)."""
    verneed = next((s for s in elf.iter_sections() if isinstance(s, GNUVerNeedSection)), None)
    if verneed is None:
        return {}
    index_to_name: dict[int, str] = {}
    for _lib, auxes in verneed.iter_versions():
        for aux in auxes:
            index_to_name[int(aux.entry.vna_other)] = str(aux.name)
    symbols: dict[str, list[str]] = {name: [] for name in index_to_name.values()}
    versym = next((s for s in elf.iter_sections() if isinstance(s, GNUVerSymSection)), None)
    dynsym = elf.get_section_by_name(".dynsym")
    if versym is not None and dynsym is not None:
        for i, sym in enumerate(dynsym.iter_symbols()):
            ndx = versym.get_symbol(i).entry.ndx
            if isinstance(ndx, int) and (name := index_to_name.get(ndx & 0x7FFF)) is not None:
                symbols[name].append(str(sym.name))
    return {name: tuple(sorted(syms)) for name, syms in sorted(symbols.items())}


def floor_problems(
    facts: Sequence[ElfFacts], *, glibc: str = GLIBC_FLOOR, carried: Iterable[str] = ()
) -> list[str]:
    """Every way the files need more than the floor, one line each (pure).

    The floor: no ``GLIBC_x.y`` above ``glibc``; nothing versioned from libstdc++ or libgcc
    (``GLIBCXX_*``, ``CXXABI_*``, ``GCC_*``); no ``NEEDED`` library that is neither glibc's,
    the NVIDIA driver's, nor ``carried`` (file names and SONAMEs the bundle itself holds).
    """
    own = set(carried) | {f.soname for f in facts if f.soname} | {Path(f.path).name for f in facts}
    problems = []
    for f in facts:
        newest: dict[str, tuple[str, tuple[str, ...]]] = {}
        for version, syms in f.versions.items():
            m = _VERSION.match(version)
            if m is not None:
                family, number = m.groups()
                if family not in newest or _key(number) > _key(newest[family][0]):
                    newest[family] = (number, syms)
        for family, (number, syms) in sorted(newest.items()):
            example = f" (needed by {', '.join(syms[:3])})" if syms else ""
            if family == "GLIBC" and _key(number) > _key(glibc):
                problems.append(f"{f.path}: needs GLIBC_{number}{example}, above the floor {glibc}")
            elif family != "GLIBC":
                problems.append(
                    f"{f.path}: needs {family}_{number}{example} from the host's libstdc++/libgcc"
                )
        for lib in f.needed:
            if lib not in HOST_LIBRARIES and lib not in own:
                problems.append(
                    f"{f.path}: needs {lib}, which glibc does not provide and the bundle "
                    "does not carry"
                )
    return problems


def require_floor(facts: Sequence[ElfFacts], what: str) -> None:
    """Refuse files that need more than the floor (:func:`floor_problems`).

    Raises:
        BuildError: naming every file and the symbol or library above the floor.
    """
    problems = floor_problems(facts)
    if problems:
        raise BuildError(
            f"{what} needs more from the host than glibc {GLIBC_FLOOR} "
            "(the floor for every host airlock supports)",
            hint="build with the portable toolchain (zig cc, target x86_64-linux-gnu."
            f"{GLIBC_FLOOR}, libc++ linked statically; bundler/engine/portable.py): "
            "a build with the system compiler links the build machine's glibc and libstdc++",
            problems=problems,
        )


def read_files(root: Path, files: Iterable[str]) -> list[ElfFacts]:
    """The facts of every ELF file among ``files`` (paths relative to ``root``)."""
    facts = []
    for rel in files:
        with open(root / rel, "rb") as fh:
            found = read_elf(fh, rel)
        if found is not None:
            facts.append(found)
    return facts


def read_wheel(wheel: Path) -> list[ElfFacts]:
    """The facts of every ELF member of a wheel (its shared libraries)."""
    facts = []
    with zipfile.ZipFile(wheel) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            with zf.open(info) as member:
                if member.read(4) != _ELF_MAGIC:
                    continue
            found = read_elf(io.BytesIO(zf.read(info)), f"{wheel.name}:{info.filename}")
            if found is not None:
                facts.append(found)
    return facts
