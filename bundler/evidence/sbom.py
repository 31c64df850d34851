"""The bundle's CycloneDX 1.6 SBOM (``evidence/sbom.cdx.json``), deterministic, and its summary.

Pure: takes the manifest's ``components`` and ``files`` and returns bytes. The document is
generated with ``cyclonedx-python-lib``; only the ``modelCard`` objects, which the library
cannot express yet, are added to its JSON output afterwards, and the result is checked
against the official 1.6 schema shipped inside that library before it is returned.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model import (
    AttachedText,
    ExternalReference,
    ExternalReferenceType,
    HashAlgorithm,
    HashType,
    Property,
    XsUri,
)
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType, Pedigree
from cyclonedx.model.license import DisjunctiveLicense
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

from bundler import __version__
from bundler.errors import AirlockError, ArchiveFormatError, BuildError
from runtime.bundle import BundleMetadata, read_member
from runtime.components import ModelFacts, parse_engine, parse_model

__all__ = [
    "SBOM_PATH",
    "build_sbom",
    "bundle_sbom",
    "bundle_sbom_summary",
    "serial_number",
    "summarize",
    "validate_sbom",
]

SBOM_PATH = "evidence/sbom.cdx.json"

# Fixed namespace for the SBOM serial number: uuid5(namespace, digest of the inputs).
_SERIAL_NAMESPACE = uuid.UUID("5d3c1f0e-6a0b-5b1e-9a8e-2f4f7c0a1b6d")
_P = "airlock:"  # property name prefix (CycloneDX property taxonomy: vendor namespace)
_CODE_TYPES = {"code"}
_SOURCE_REF = "source:llama-cpp-python"
_CUDA_REF = "runtime:cuda"
_GGUF_CARD_KEYS = (
    "parameters",
    "quantization",
    "context_length",
    "embedding_length",
    "block_count",
    "head_count",
    "head_count_kv",
    "chat_template",
    "tensor_count",
    "split_count",
    "file_size",
)


def serial_number(
    *, name: str, version: str, files: Sequence[Mapping[str, Any]], seed: bytes
) -> str:
    """The SBOM's ``urn:uuid:`` serial: uuid5 over name, version, seed and every file digest."""
    h = hashlib.sha256()
    for part in (name.encode(), version.encode(), seed):
        h.update(len(part).to_bytes(8, "big") + part)
    for f in sorted(files, key=lambda f: str(f["path"])):
        h.update(f"{f['path']}\0{f['sha256']}\n".encode())
    return uuid.uuid5(_SERIAL_NAMESPACE, h.hexdigest()).urn


def build_sbom(
    *,
    name: str,
    version: str,
    created: str,
    components: Mapping[str, Mapping[str, Any]],
    files: Sequence[Mapping[str, Any]],
    serial_seed: bytes,
) -> bytes:
    """Return the CycloneDX 1.6 JSON SBOM of a bundle.

    ``components`` is the manifest's ``components`` object, ``files`` its payload entries
    (``path``, ``size``, ``sha256``, ``component``). ``evidence/sbom.cdx.json`` itself is
    left out (a document cannot hold its own digest). The same inputs give the same bytes.

    Raises :class:`BuildError` when a component's properties lack a key the SBOM needs or
    the result does not validate against the CycloneDX 1.6 schema.
    """
    try:
        timestamp = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError as e:
        raise BuildError(
            f"cannot write the SBOM: created time {created!r} is not an ISO 8601 timestamp",
            hint="pass the manifest's 'created' value, e.g. 2026-11-27T00:00:00Z",
        ) from e
    payload = [f for f in files if f["path"] != SBOM_PATH]
    try:
        builder = _Builder(name=name, version=version, components=components, files=payload)
        bom, model_cards = builder.build()
    except (KeyError, TypeError, ValueError) as e:
        raise BuildError(
            f"cannot write the SBOM: component properties are incomplete ({type(e).__name__}: {e})",
            hint="the producer of that component must write the agreed property keys "
            "(docs/FORMAT.md, 'Component properties')",
        ) from e
    bom.serial_number = uuid.UUID(
        serial_number(name=name, version=version, files=payload, seed=serial_seed)
    )
    bom.metadata.timestamp = timestamp
    doc = json.loads(JsonV1Dot6(bom).output_as_string())
    for comp in _walk(doc.get("components", [])):
        card = model_cards.get(comp.get("bom-ref", ""))
        if card is not None:
            comp["modelCard"] = card
    data = (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    problems = validate_sbom(data)
    if problems:
        raise BuildError(
            "the generated SBOM does not validate against CycloneDX 1.6",
            problems=problems,
            hint="this is a bug in airlock's SBOM writer; report it with the build log",
        )
    return data


def validate_sbom(data: bytes) -> list[str]:
    """Every CycloneDX 1.6 schema violation in ``data`` (empty when valid)."""
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(
        data.decode("utf-8"), all_errors=True
    )
    return [str(e) for e in errors] if errors else []


def bundle_sbom(bundle: Path, meta: BundleMetadata) -> Optional[bytes]:
    """The SBOM bytes of a whole bundle ``.tar``, hash-checked against its manifest; None
    when the manifest lists no SBOM. Raises IntegrityError / ArchiveFormatError."""
    if not any(f.get("path") == SBOM_PATH for f in meta.manifest.get("files") or []):
        return None
    return read_member(
        bundle, SBOM_PATH, manifest=meta.manifest, payload_offset=meta.payload_offset
    )


def bundle_sbom_summary(bundle: Path, meta: BundleMetadata) -> Optional[dict[str, Any]]:
    """``airlock inspect``'s SBOM line: the summary, None without an SBOM (or for a split
    bundle's index, whose payload is not read), ``{"error": ...}`` when it cannot be read."""
    if bundle.name.endswith(".parts"):
        return None
    try:
        data = bundle_sbom(bundle, meta)
        return None if data is None else summarize(data)
    except AirlockError as e:
        return {"error": e.message}


def summarize(sbom: bytes) -> dict[str, Any]:
    """Counts by component type, model purls and licenses of an SBOM, for ``airlock inspect``.

    Raises :class:`ArchiveFormatError` when ``sbom`` is not a CycloneDX JSON document.
    """
    try:
        doc = json.loads(sbom)
        if doc.get("bomFormat") != "CycloneDX":
            raise ValueError("bomFormat is not CycloneDX")
        comps = list(_walk(doc.get("components", [])))
    except (ValueError, AttributeError, TypeError) as e:
        raise ArchiveFormatError(
            f"the SBOM is not a CycloneDX JSON document: {e}",
            hint="rebuild the bundle; evidence/sbom.cdx.json is written by airlock build",
        ) from e
    by_type: dict[str, int] = {}
    licenses: set[str] = set()
    models: list[str] = []
    for c in comps:
        by_type[c.get("type", "?")] = by_type.get(c.get("type", "?"), 0) + 1
        for lic in c.get("licenses", []):
            if "expression" in lic:
                licenses.add(lic["expression"])
            else:
                inner = lic.get("license", {})
                licenses.add(inner.get("id") or inner.get("name") or "?")
        if c.get("type") == "machine-learning-model":
            models.append(c.get("purl") or c.get("name", "?"))
    meta = doc.get("metadata", {}).get("component", {})
    return {
        "spec_version": doc.get("specVersion"),
        "serial_number": doc.get("serialNumber"),
        "bundle": {"name": meta.get("name"), "version": meta.get("version")},
        "components": dict(sorted(by_type.items())),
        "total": len(comps),
        "models": sorted(models),
        "licenses": sorted(licenses),
        "dependencies": len(doc.get("dependencies", [])),
    }


def _walk(comps: Sequence[dict[str, Any]]) -> Any:
    for c in comps:
        yield c
        yield from _walk(c.get("components", []))


def _sha256(digest: str) -> HashType:
    return HashType(alg=HashAlgorithm.SHA_256, content=digest)


def _props(pairs: Sequence[tuple[str, Any]]) -> list[Property]:
    out = []
    for key, value in pairs:
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        out.append(Property(name=_P + key, value=str(value)))
    return out


def _licenses(value: Optional[str]) -> list[Any]:
    if not value:
        return []
    text = str(value).strip()
    if "\n" in text or len(text) > 120:
        # Some wheels put the whole license text in their metadata: keep it as text.
        first = text.splitlines()[0][:80] if text else "license"
        return [DisjunctiveLicense(name=first, text=AttachedText(content=text))]
    return [LicenseFactory().make_from_string(text)]


class _Builder:
    """Turns manifest components and files into one :class:`Bom` (bom-refs all explicit)."""

    def __init__(
        self,
        *,
        name: str,
        version: str,
        components: Mapping[str, Mapping[str, Any]],
        files: Sequence[Mapping[str, Any]],
    ) -> None:
        self.name = name
        self.version = version
        self.components = components
        self.files = sorted(files, key=lambda f: str(f["path"]))
        self.claimed: set[str] = set()
        self.model_cards: dict[str, dict[str, Any]] = {}

    def build(self) -> tuple[Bom, dict[str, dict[str, Any]]]:
        root = Component(
            type=ComponentType.APPLICATION,
            name=self.name,
            version=self.version,
            bom_ref="bundle",
            description="airlock offline LLM appliance bundle",
            properties=_props([("bundle.files", len(self.files))]),
        )
        tool = Component(
            type=ComponentType.APPLICATION,
            name="airlock",
            version=__version__,
            bom_ref="tool:airlock",
        )
        bom = Bom(
            metadata=BomMetaData(component=root, tools=ToolRepository(components=[tool])),
        )
        top: list[Component] = []
        for cname in sorted(self.components):
            comp = self.components[cname]
            ctype = comp.get("type")
            props = comp.get("properties") or {}
            if ctype == "model":
                top.extend(self._models(props))
            elif ctype == "runtime":
                engine, used = self._engine(cname, props)
                top.append(engine)
                top.extend(used)
                bom.register_dependency(engine, used)
            elif ctype == "wheelhouse" or (ctype != "evidence" and "wheels" in props):
                top.extend(self._wheels(cname, props))
            elif ctype in _CODE_TYPES:
                top.append(self._code(cname, props))
        top.extend(self._unclaimed())
        for c in top:
            bom.components.add(c)
        # The bundle contains everything at the top level except the llama-cpp-python
        # source, which is not shipped: the runtime was built from it.
        bom.register_dependency(root, [c for c in top if c.bom_ref.value != _SOURCE_REF])
        for c in top:
            if not any(d.ref == c.bom_ref for d in bom.dependencies):
                bom.register_dependency(c, [])
        return bom, self.model_cards

    def _file(self, f: Mapping[str, Any]) -> Component:
        self.claimed.add(str(f["path"]))
        return Component(
            type=ComponentType.FILE,
            name=str(f["path"]),
            bom_ref="file:" + str(f["path"]),
            hashes=[_sha256(str(f["sha256"]))],
            properties=_props([("size", int(f["size"])), ("component", f.get("component"))]),
        )

    def _files_under(self, prefix: str, component: Optional[str] = None) -> list[Component]:
        return [
            self._file(f)
            for f in self.files
            if str(f["path"]) not in self.claimed
            and str(f["path"]).startswith(prefix)
            and (component is None or f.get("component") == component)
        ]

    def _models(self, props: Mapping[str, Any]) -> list[Component]:
        out = []
        models = [parse_model(m) for m in props.get("models") or []]
        for m in sorted(models, key=lambda m: str(m.name)):
            ref = f"model:{m.name}"
            repo, commit = m.repo, m.commit
            purl = None
            ext = []
            group = None
            name = str(m.name)
            derived = m.derived_from
            conv = m.converter
            pedigree = None
            if repo and (m.source or "hub") == "hub":
                group, _, name = str(repo).rpartition("/")
                purl = PackageURL(
                    type="huggingface", namespace=group or None, name=name, version=commit
                )
                endpoint = (m.endpoint or "https://huggingface.co").rstrip("/")
                ext.append(
                    ExternalReference(
                        type=ExternalReferenceType.DISTRIBUTION,
                        url=XsUri(f"{endpoint}/{repo}/tree/{commit}"),
                        comment="the Hub repository at the pinned commit",
                    )
                )
                ext.append(
                    ExternalReference(
                        type=ExternalReferenceType.VCS, url=XsUri(f"{endpoint}/{repo}")
                    )
                )
            if derived and purl is not None:
                # The GGUF is made here: the publisher's repository is its ancestor, not it.
                pedigree = Pedigree(
                    ancestors=[
                        Component(
                            type=ComponentType.MACHINE_LEARNING_MODEL,
                            name=name,
                            group=group or None,
                            version=commit or None,
                            bom_ref=f"{ref}:source",
                            purl=purl,
                            hashes=[],
                            components=[
                                Component(
                                    type=ComponentType.FILE,
                                    name=str(f["path"]),
                                    bom_ref=f"{ref}:source:{f['path']}",
                                    hashes=[_sha256(str(f["sha256"]))],
                                )
                                for f in derived.get("files") or []
                            ],
                        )
                    ],
                    notes=_lineage(m),
                )
                purl = None
            children = self._files_under(f"models/{m.name}/", "models")
            for f in m.files:
                for child in children:
                    if child.name == f.get("path") and f.get("hub_path"):
                        child.properties.add(Property(name=_P + "hub_path", value=f["hub_path"]))
            out.append(
                Component(
                    type=ComponentType.MACHINE_LEARNING_MODEL,
                    name=name,
                    group=group or None,
                    version=commit or None,
                    bom_ref=ref,
                    purl=purl,
                    licenses=_licenses(m.license),
                    external_references=ext,
                    components=children,
                    pedigree=pedigree,
                    properties=_props(
                        [
                            ("model.name", m.name),
                            ("model.source", m.source),
                            ("model.repo", repo),
                            ("model.revision", m.revision),
                            ("model.commit", commit),
                            ("model.entrypoint", m.entrypoint),
                            ("model.card", m.card),
                            ("model.gated", m.gated),
                            ("license.permissive", m.license_permissive),
                            (
                                "model.converter.script_sha256",
                                (conv.get("script") or {}).get("sha256"),
                            ),
                            ("model.converter.llama_cpp_commit", conv.get("llama_cpp_commit")),
                            ("model.converter.outtype", conv.get("outtype")),
                            ("model.converter.quantize", conv.get("quantize")),
                        ]
                        + [("license.file", p) for p in m.license_files]
                    ),
                )
            )
            self.model_cards[ref] = _model_card(m.gguf.properties)
        return out

    def _engine(self, cname: str, props: Mapping[str, Any]) -> tuple[Component, list[Component]]:
        """llama.cpp, and what it was built from or links: the sdist, the CUDA runtime."""
        eng = parse_engine(dict(props))
        commit = eng.llama_cpp_commit
        known = bool(commit) and commit != "unknown"
        cuda = eng.cuda
        used: list[Component] = []
        if cuda is not None and cuda.runtime_libraries:
            # NVIDIA's redistributable libraries are not llama.cpp and not MIT: own component,
            # with the exact NVIDIA wheels they were carried out of nested in it.
            wheels = [self._cuda_wheel(w) for w in cuda.runtime_wheel_files or ()]
            used.append(
                Component(
                    type=ComponentType.LIBRARY,
                    name="cuda-runtime",
                    version=cuda.cuda_version or None,
                    bom_ref=_CUDA_REF,
                    licenses=_licenses("LicenseRef-NVIDIA-CUDA-EULA"),
                    description="NVIDIA CUDA runtime libraries shipped for the CUDA backend",
                    components=[
                        *wheels,
                        *self._files_under(cuda.runtime_dir.rstrip("/") + "/"),
                    ],
                    properties=_props(
                        [("cuda.runtime_dir", cuda.runtime_dir)]
                        + [("cuda.runtime_wheel", r) for r in cuda.runtime_wheels]
                        + [("cuda.runtime_wheel_files_note", cuda.runtime_wheel_files_note)]
                    ),
                )
            )
        engine = Component(
            type=ComponentType.APPLICATION,
            name="llama.cpp",
            version=commit if known else None,
            bom_ref="runtime:llama.cpp",
            purl=PackageURL(type="github", namespace="ggml-org", name="llama.cpp", version=commit)
            if known
            else None,
            licenses=_licenses("MIT"),
            description="llama-server and ggml backends built from the pinned source",
            components=self._files_under(cname + "/", cname),
            properties=_props(
                [
                    ("llama_cpp.commit", commit),
                    ("build.compiler", eng.compiler),
                    ("build.cmake", eng.cmake),
                    ("build.arch", eng.arch),
                    ("runtime.server", eng.server),
                    ("runtime.lib_dir", eng.lib_dir),
                    ("cuda.version", cuda.cuda_version if cuda else None),
                    ("cuda.min_driver", cuda.min_driver if cuda else None),
                    ("cuda.module", cuda.module if cuda else None),
                ]
                + [("build.cmake_flag", f) for f in eng.cmake_flags]
                + [("cpu.variant", v) for v in eng.cpu_variants]
                + [("cuda.architecture", a) for a in (cuda.architectures if cuda else ())]
            ),
        )
        src = eng.llama_cpp_python
        if not src:
            return engine, used
        ext = []
        if src.get("url"):
            ext.append(
                ExternalReference(
                    type=ExternalReferenceType.SOURCE_DISTRIBUTION, url=XsUri(str(src["url"]))
                )
            )
        source = Component(
            type=ComponentType.LIBRARY,
            name="llama-cpp-python",
            version=str(src["version"]),
            bom_ref=_SOURCE_REF,
            purl=PackageURL(
                type="pypi",
                name="llama-cpp-python",
                version=str(src["version"]),
                qualifiers={"file_name": str(src["sdist"])},
            ),
            hashes=[_sha256(str(src["sha256"]))],
            licenses=_licenses("MIT"),
            external_references=ext,
            description="the pinned source distribution whose vendored llama.cpp was built",
        )
        return engine, [source, *used]

    def _cuda_wheel(self, w: Mapping[str, Any]) -> Component:
        """One NVIDIA wheel the CUDA libraries came from: exact version, the wheel file's
        sha256 (as the package index lists it; the wheel itself is not shipped), and the
        carried libraries taken out of it as nested files."""
        name = str(w["name"]).lower().replace("_", "-")
        libs = {str(p) for p in w.get("libraries", [])}
        files = [self._file(f) for f in self.files if str(f["path"]) in libs - self.claimed]
        return Component(
            type=ComponentType.LIBRARY,
            name=name,
            version=str(w["version"]),
            bom_ref=f"{_CUDA_REF}:{name}",
            purl=PackageURL(
                type="pypi",
                name=name,
                version=str(w["version"]),
                qualifiers={"file_name": str(w["file"])},
            ),
            hashes=[_sha256(str(w["sha256"]))],
            licenses=_licenses("LicenseRef-NVIDIA-CUDA-EULA"),
            description="NVIDIA wheel the runtime libraries below were extracted from",
            components=files,
            properties=_props(
                [("cuda.wheel_file", w["file"]), ("cuda.wheel_index", w.get("index_url"))]
            ),
        )

    def _wheels(self, cname: str, props: Mapping[str, Any]) -> list[Component]:
        out = []
        by_path = {str(f["path"]): f for f in self.files}
        for w in sorted(props.get("wheels", []), key=lambda w: str(w["file"])):
            path = str(w["file"])
            basename = path.rsplit("/", 1)[-1]
            self.claimed.add(path)
            f = by_path.get(path)
            out.append(
                Component(
                    type=ComponentType.LIBRARY,
                    name=str(w["name"]),
                    version=str(w["version"]),
                    bom_ref="wheel:" + path,
                    purl=PackageURL(
                        type="pypi",
                        name=str(w["name"]).lower().replace("_", "-"),
                        version=str(w["version"]),
                        qualifiers={"file_name": basename},
                    ),
                    hashes=[_sha256(str(w["sha256"]))],
                    licenses=_licenses(w.get("license")),
                    properties=_props(
                        [
                            ("wheelhouse", cname),
                            ("path", path),
                            ("size", int(f["size"]) if f else None),
                        ]
                    ),
                )
            )
        return out

    def _code(self, cname: str, props: Mapping[str, Any]) -> Component:
        source = str(props.get("source") or f"airlock {__version__}")
        return Component(
            type=ComponentType.APPLICATION,
            name="airlock-" + cname,
            version=source.rpartition(" ")[2] or None,
            bom_ref="code:" + cname,
            description=f"far-side {cname} shipped in the bundle ({source})",
            licenses=_licenses("Apache-2.0"),
            components=self._files_under(cname + "/", cname),
            properties=_props([("source", source)]),
        )

    def _unclaimed(self) -> list[Component]:
        return [self._file(f) for f in self.files if str(f["path"]) not in self.claimed]


def _lineage(m: ModelFacts) -> str:
    conv = m.converter
    parts = [m.lineage or ""]
    script = conv.get("script") or {}
    if script:
        parts.append(f"convert_hf_to_gguf.py sha256 {script.get('sha256')}")
        parts.append(f"outtype {conv.get('outtype')}")
    if conv.get("quantize"):
        parts.append(
            f"llama-quantize {conv['quantize']} (tool sha256 {conv.get('quantize_tool_sha256')})"
        )
    return "; ".join(parts)


def _model_card(gguf: Mapping[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {
        "task": "text-generation",
        "architectureFamily": "transformer",
        "inputs": [{"format": "text"}],
        "outputs": [{"format": "text"}],
    }
    if gguf.get("architecture"):
        params["modelArchitecture"] = str(gguf["architecture"])
    props = [
        {"name": _P + "gguf." + k, "value": _str(gguf[k])}
        for k in _GGUF_CARD_KEYS
        if gguf.get(k) is not None
    ]
    card: dict[str, Any] = {"modelParameters": params}
    if props:
        card["properties"] = props
    return card


def _str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
