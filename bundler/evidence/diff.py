"""What changed between two bundles, from their manifests and signature files alone.

Pure: takes two decoded manifests and the signer fingerprints of each bundle and returns a
:class:`BundleDiff`. Nothing here reads payload bytes, so a diff of two 40 GB bundles costs
two metadata reads. A diff is informational: it does not verify signatures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from packaging.version import InvalidVersion, Version

from bundler.errors import SignatureError
from bundler.ssh import sig as sshsig
from runtime.components import CudaFacts, EngineFacts, ModelFacts, parse_engine, parse_model

__all__ = [
    "SECTIONS",
    "BundleDiff",
    "Change",
    "diff_manifests",
    "fingerprints",
    "render",
    "signer_fingerprint",
]

SECTIONS = ("bundle", "models", "runtime", "wheels", "licenses", "signers", "files")

_MARKS = {
    "added": "+",
    "removed": "-",
    "changed": "~",
    "upgraded": "^",
    "downgraded": "v",
}


@dataclass(frozen=True)
class Change:
    """One difference: ``kind`` is added, removed, changed, upgraded or downgraded."""

    section: str
    kind: str
    subject: str
    old: Optional[str] = None
    new: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "old": self.old, "new": self.new}


@dataclass(frozen=True)
class BundleDiff:
    """Both bundles' identities and every change, in section order."""

    old: Mapping[str, Any]
    new: Mapping[str, Any]
    changes: tuple[Change, ...] = field(default_factory=tuple)

    @property
    def identical(self) -> bool:
        return not self.changes

    def section(self, name: str) -> list[Change]:
        return [c for c in self.changes if c.section == name]

    def to_json(self) -> dict[str, Any]:
        return {
            "old": dict(self.old),
            "new": dict(self.new),
            "identical": self.identical,
            "changes": {s: [c.to_json() for c in self.section(s)] for s in SECTIONS},
        }


def signer_fingerprint(signature: bytes) -> Optional[str]:
    """The ``SHA256:...`` fingerprint of the key in an armored SSHSIG, or None if unreadable.

    Only the signature's public key is read; the signature is not checked, which is all a
    diff needs.
    """
    try:
        return sshsig.parse(signature).public_key.fingerprint
    except SignatureError:
        return None


def diff_manifests(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    old_signers: Iterable[str] = (),
    new_signers: Iterable[str] = (),
    old_sha256: Optional[str] = None,
    new_sha256: Optional[str] = None,
) -> BundleDiff:
    """Every difference between two decoded manifests and their signer sets.

    ``*_signers`` are key fingerprints (see :func:`fingerprints`), ``*_sha256`` the
    manifests' digests, shown to identify each side.
    """
    changes: list[Change] = []
    changes += _bundle(old, new)
    changes += _models(_models_of(old), _models_of(new))
    changes += _engine(_engine_of(old), _engine_of(new))
    changes += _wheels(old, new)
    changes += _licenses(old, new)
    changes += _sets("signers", "signer", set(old_signers), set(new_signers))
    changes += _files(old, new)
    return BundleDiff(
        old=_identity(old, old_sha256), new=_identity(new, new_sha256), changes=tuple(changes)
    )


def render(diff: BundleDiff) -> str:
    """Human-readable text, grouped by section."""
    o, n = diff.old, diff.new
    lines = [
        f"old: {o.get('name')} {o.get('version')} (sequence {o.get('sequence')}, "
        f"manifest {str(o.get('manifest_sha256') or '?')[:12]})",
        f"new: {n.get('name')} {n.get('version')} (sequence {n.get('sequence')}, "
        f"manifest {str(n.get('manifest_sha256') or '?')[:12]})",
    ]
    if diff.identical:
        lines.append("no differences")
        return "\n".join(lines) + "\n"
    for section in SECTIONS:
        entries = diff.section(section)
        if not entries:
            continue
        lines.append("")
        lines.append(f"{section} ({len(entries)})")
        for c in entries:
            text = f"  {_MARKS.get(c.kind, '?')} {_clip(c.subject)}"
            if c.kind in ("changed", "upgraded", "downgraded"):
                text += f": {_clip(c.old)} -> {_clip(c.new)}"
            elif c.kind == "added" and c.new is not None:
                text += f" ({_clip(c.new)})"
            elif c.kind == "removed" and c.old is not None:
                text += f" ({_clip(c.old)})"
            lines.append(text)
    lines.append("")
    lines.append("legend: + added, - removed, ~ changed, ^ upgraded, v downgraded")
    return "\n".join(lines) + "\n"


def _clip(value: Optional[str], limit: int = 100) -> str:
    """One line of at most ``limit`` characters (license texts can be pages long)."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- sections


def _identity(m: Mapping[str, Any], sha256: Optional[str]) -> dict[str, Any]:
    keys = ("name", "version", "sequence", "created", "expires")
    return {**{k: m.get(k) for k in keys}, "manifest_sha256": sha256}


def _s(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _changed(section: str, subject: str, old: Any, new: Any) -> list[Change]:
    if old == new:
        return []
    if old is None:
        return [Change(section, "added", subject, None, _s(new))]
    if new is None:
        return [Change(section, "removed", subject, _s(old), None)]
    return [Change(section, "changed", subject, _s(old), _s(new))]


def _sets(section: str, label: str, old: set[str], new: set[str]) -> list[Change]:
    out = [Change(section, "removed", f"{label} {v}") for v in sorted(old - new)]
    out += [Change(section, "added", f"{label} {v}") for v in sorted(new - old)]
    return out


def _bundle(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    out: list[Change] = []
    for key in ("name", "version", "sequence", "created", "expires", "schema_version"):
        out += _changed("bundle", key, old.get(key), new.get(key))
    seq_o, seq_n = old.get("sequence"), new.get("sequence")
    if isinstance(seq_o, int) and isinstance(seq_n, int) and seq_n < seq_o:
        out.append(
            Change(
                "bundle",
                "downgraded",
                "sequence goes backwards (hosts with a rollback floor will refuse it)",
                str(seq_o),
                str(seq_n),
            )
        )
    ob, nb = old.get("builder") or {}, new.get("builder") or {}
    for key in sorted(set(ob) | set(nb)):
        out += _changed("bundle", f"builder.{key}", ob.get(key), nb.get(key))
    return out


def _props(manifest: Mapping[str, Any], ctype: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for comp in (manifest.get("components") or {}).values():
        if comp.get("type") == ctype:
            merged.update(comp.get("properties") or {})
    return merged


def _models_of(manifest: Mapping[str, Any]) -> dict[str, ModelFacts]:
    models = [parse_model(m) for m in _props(manifest, "model").get("models") or []]
    return {str(m.name): m for m in models}


def _engine_of(manifest: Mapping[str, Any]) -> Optional[EngineFacts]:
    """The engine (the ``runtime`` component type), or None when the bundle has none."""
    comps = (manifest.get("components") or {}).values()
    if not any(c.get("type") == "runtime" for c in comps):
        return None
    return parse_engine(_props(manifest, "runtime"))


def _models(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    out: list[Change] = []
    for name in sorted(set(old) - set(new)):
        out.append(Change("models", "removed", f"model {name}", _model_label(old[name])))
    for name in sorted(set(new) - set(old)):
        out.append(Change("models", "added", f"model {name}", _model_label(new[name])))
    for name in sorted(set(old) & set(new)):
        o, n = old[name], new[name]
        for key in ("source", "repo", "revision", "commit", "endpoint", "entrypoint", "gated"):
            out += _changed("models", f"model {name} {key}", getattr(o, key), getattr(n, key))
        og, ng = o.gguf.properties, n.gguf.properties
        for key in sorted(set(og) | set(ng)):
            out += _changed("models", f"model {name} gguf.{key}", og.get(key), ng.get(key))
        out += _lineage(name, o, n)
        of = {f.get("hub_path") or f.get("path"): f for f in o.files}
        nf = {f.get("hub_path") or f.get("path"): f for f in n.files}
        for p in sorted(set(of) - set(nf)):
            out.append(Change("models", "removed", f"model {name} file {p}"))
        for p in sorted(set(nf) - set(of)):
            out.append(Change("models", "added", f"model {name} file {p}"))
        for p in sorted(set(of) & set(nf)):
            a, b = of[p].get("sha256"), nf[p].get("sha256")
            if a != b:
                out.append(
                    Change("models", "changed", f"model {name} file {p}", _short(a), _short(b))
                )
    return out


def _lineage_facts(m: ModelFacts) -> dict[str, Optional[str]]:
    """What a model made at build time was made from and with, flattened to labelled values."""
    d, c = m.derived_from, m.converter
    facts: dict[str, Optional[str]] = {}
    if not d and not c:
        return facts
    for key in ("repo", "commit"):
        facts[f"derived_from.{key}"] = _s(d.get(key))
    for f in d.get("files") or []:
        facts[f"derived_from file {f.get('path')}"] = _s(f.get("sha256"))
    script = c.get("script") or {}
    facts["converter.script.sha256"] = _s(script.get("sha256"))
    facts["converter.script.tree_sha256"] = _s(script.get("tree_sha256"))
    for key in ("llama_cpp_commit", "outtype", "quantize", "quantize_tool_sha256"):
        facts[f"converter.{key}"] = _s(c.get(key))
    for w in (c.get("environment") or {}).get("packages") or []:
        facts[f"converter package {w.get('name')}"] = (
            f"{w.get('version')} {_short(w.get('sha256'))}"
        )
    return facts


def _lineage(name: str, o: ModelFacts, n: ModelFacts) -> list[Change]:
    of, nf = _lineage_facts(o), _lineage_facts(n)
    out: list[Change] = []
    for key in sorted(set(of) | set(nf)):
        out += _changed("models", f"model {name} {key}", of.get(key), nf.get(key))
    return out


def _model_label(m: ModelFacts) -> str:
    if m.repo:
        return f"{m.repo}@{(m.commit or '?')[:12]}"
    return m.source or "local"


def _engine(old: Optional[EngineFacts], new: Optional[EngineFacts]) -> list[Change]:
    out: list[Change] = []

    def attr(engine: Optional[EngineFacts], key: str) -> Any:
        return getattr(engine, key) if engine is not None else None

    ol = old.llama_cpp_python if old else {}
    nl = new.llama_cpp_python if new else {}
    out += _versioned("runtime", "llama-cpp-python", ol.get("version"), nl.get("version"))
    if ol.get("version") == nl.get("version") and ol.get("sha256") != nl.get("sha256"):
        out += _changed(
            "runtime",
            "llama-cpp-python sdist sha256",
            _short(ol.get("sha256")),
            _short(nl.get("sha256")),
        )
    for key in ("llama_cpp_commit", "compiler", "cmake", "arch", "server", "lib_dir"):
        out += _changed("runtime", key, attr(old, key), attr(new, key))
    for key, label in (("cmake_flags", "cmake flag"), ("cpu_variants", "cpu variant")):
        out += _sets("runtime", label, set(attr(old, key) or ()), set(attr(new, key) or ()))
    oc, nc = attr(old, "cuda"), attr(new, "cuda")
    if oc is None and nc is not None:
        out.append(Change("runtime", "added", "cuda backend", None, _cuda_label(nc)))
    elif oc is not None and nc is None:
        out.append(Change("runtime", "removed", "cuda backend", _cuda_label(oc), None))
    elif oc and nc:
        for key in ("cuda_version", "min_driver", "module"):
            out += _changed("runtime", f"cuda {key}", getattr(oc, key), getattr(nc, key))
        out += _sets("runtime", "cuda architecture", set(oc.architectures), set(nc.architectures))
        out += _sets(
            "runtime",
            "cuda runtime library",
            set(oc.runtime_libraries),
            set(nc.runtime_libraries),
        )
        out += _cuda_wheels(oc, nc)
    osd, nsd = attr(old, "server_defaults") or {}, attr(new, "server_defaults") or {}
    for key in sorted(set(osd) | set(nsd)):
        out += _changed("runtime", f"server {key}", osd.get(key), nsd.get(key))
    return out


def _cuda_wheels(old: CudaFacts, new: CudaFacts) -> list[Change]:
    """NVIDIA runtime wheels (``cuda.runtime_wheel_files``) by name: version, then file bytes."""
    ow = {str(w["name"]): w for w in old.runtime_wheel_files or ()}
    nw = {str(w["name"]): w for w in new.runtime_wheel_files or ()}
    out: list[Change] = []
    for name in sorted(set(ow) | set(nw)):
        o, n = ow.get(name), nw.get(name)
        subject = f"cuda wheel {name}"
        if o is None or n is None:
            kind = "added" if o is None else "removed"
            out.append(
                Change(
                    "runtime", kind, subject, _s(o and o.get("version")), _s(n and n.get("version"))
                )
            )
        elif o.get("version") != n.get("version"):
            out += _versioned("runtime", subject, o.get("version"), n.get("version"))
        elif o.get("sha256") != n.get("sha256"):
            out += _changed(
                "runtime", f"{subject} sha256", _short(o.get("sha256")), _short(n.get("sha256"))
            )
    return out


def _cuda_label(c: CudaFacts) -> str:
    return f"CUDA {c.cuda_version} sm_{','.join(c.architectures) or '?'}"


def _wheel_key(component: str, w: Mapping[str, Any]) -> tuple[str, str, str]:
    base = str(w.get("file", "")).rsplit("/", 1)[-1]
    parts = base[: -len(".whl")].split("-") if base.endswith(".whl") else []
    tags = "-".join(parts[-3:]) if len(parts) >= 5 else base
    return (component, str(w.get("name", "")).lower().replace("_", "-"), tags)


def _wheels_of(manifest: Mapping[str, Any]) -> dict[tuple[str, str, str], Mapping[str, Any]]:
    out = {}
    for cname, comp in (manifest.get("components") or {}).items():
        for w in (comp.get("properties") or {}).get("wheels") or []:
            out[_wheel_key(cname, w)] = w
    return out


def _targets_of(manifest: Mapping[str, Any]) -> set[str]:
    out = set()
    for cname, comp in (manifest.get("components") or {}).items():
        for t in (comp.get("properties") or {}).get("targets") or []:
            out.add(f"{cname}: python {t.get('python')} {t.get('abi')} {t.get('platform')}")
    return out


def _wheels(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    ow, nw = _wheels_of(old), _wheels_of(new)
    out = _sets("wheels", "target", _targets_of(old), _targets_of(new))
    for key in sorted(set(ow) | set(nw)):
        subject = f"{key[1]} [{key[0]} {key[2]}]"
        o, n = ow.get(key), nw.get(key)
        if o is None and n is not None:
            out.append(Change("wheels", "added", subject, None, _s(n.get("version"))))
        elif n is None and o is not None:
            out.append(Change("wheels", "removed", subject, _s(o.get("version")), None))
        elif o is not None and n is not None:
            if o.get("version") != n.get("version"):
                out += _versioned("wheels", subject, o.get("version"), n.get("version"))
            elif o.get("sha256") != n.get("sha256"):
                out.append(
                    Change(
                        "wheels",
                        "changed",
                        f"{subject} {o.get('version')} sha256 (same version, different bytes)",
                        _short(o.get("sha256")),
                        _short(n.get("sha256")),
                    )
                )
    return out


def _versioned(section: str, subject: str, old: Any, new: Any) -> list[Change]:
    if old == new:
        return []
    if old is None or new is None:
        return _changed(section, subject, old, new)
    try:
        kind = "upgraded" if Version(str(new)) > Version(str(old)) else "downgraded"
    except InvalidVersion:
        kind = "changed"
    return [Change(section, kind, subject, str(old), str(new))]


def _license_map(manifest: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name, m in _models_of(manifest).items():
        out[f"model {name}"] = m.license or "unknown"
    for key, w in _wheels_of(manifest).items():
        out[f"wheel {key[1]}"] = str(w.get("license") or "unknown")
    return out


def _licenses(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    ol, nl = _license_map(old), _license_map(new)
    out: list[Change] = []
    for subject in sorted(set(ol) & set(nl)):
        out += _changed("licenses", subject, ol[subject], nl[subject])
    out += _sets("licenses", "license", set(ol.values()), set(nl.values()))
    for name in sorted(set(_models_of(old)) & set(_models_of(new))):
        a = _models_of(old)[name].license_permissive
        b = _models_of(new)[name].license_permissive
        out += _changed("licenses", f"model {name} permissive", a, b)
    return out


def _files(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    of = {str(f["path"]): f for f in old.get("files") or []}
    nf = {str(f["path"]): f for f in new.get("files") or []}
    out: list[Change] = []
    for path in sorted(set(of) | set(nf)):
        o, n = of.get(path), nf.get(path)
        if o is None and n is not None:
            out.append(Change("files", "added", path, None, _file_label(n)))
        elif n is None and o is not None:
            out.append(Change("files", "removed", path, _file_label(o), None))
        elif o is not None and n is not None and _file_label(o) != _file_label(n):
            out.append(Change("files", "changed", path, _file_label(o), _file_label(n)))
    return out


def _file_label(f: Mapping[str, Any]) -> str:
    return f"sha256 {_short(f.get('sha256'))} {f.get('size')} bytes mode {f.get('mode')}"


def _short(digest: Any) -> str:
    return str(digest)[:16] if digest else "?"


def fingerprints(signatures: Sequence[tuple[str, bytes]]) -> list[str]:
    """Fingerprints of every readable signature file, or ``unreadable <name>`` for the rest."""
    out = []
    for name, data in signatures:
        fp = signer_fingerprint(data)
        out.append(fp if fp is not None else f"unreadable {name}")
    return sorted(out)
