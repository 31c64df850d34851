"""The reviewer's HTML report: one self-contained page for approving a bundle's transfer.

The core (:func:`build_report`, :func:`render_html`) takes the verified manifest, the
signer findings and the SBOM summary as data and returns data; :func:`write_report` is
the edge that reads a bundle's metadata region and small members and writes the page.
Nothing here trusts a payload byte the manifest did not pin: members come through
``read_member``, which checks them against the manifest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from bundler import __version__
from bundler.errors import AirlockError
from bundler.evidence import sbom
from bundler.fsio import write_atomic
from bundler.paths import templates_dir
from bundler.ssh import sig as sshsig
from bundler.ssh import trust
from bundler.ssh.sig import ARCHIVE_NAMESPACE, MANIFEST_NAMESPACE
from runtime.bundle import read_metadata
from runtime.components import EngineFacts, ModelFacts, engine_of, models_of

TEMPLATE = "report.html.j2"


@dataclass(frozen=True)
class Signer:
    """One manifest signature as the reviewer sees it."""

    member: str
    fingerprint: str
    principals: tuple[str, ...] = ()
    status: str = "not checked"
    ok: bool | None = None
    detail: str = ""


@dataclass(frozen=True)
class FileRow:
    path: str
    size: int
    sha256: str
    mode: str


@dataclass(frozen=True)
class Component:
    name: str
    type: str
    files: tuple[FileRow, ...]
    properties: Mapping[str, Any]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class LicenseUse:
    license: str
    permissive: bool | None
    used_by: tuple[str, ...]


@dataclass(frozen=True)
class Report:
    """Everything the page shows, already decided; the template only lays it out."""

    bundle_file: str
    name: str
    version: str
    sequence: int
    created: str
    expires: str
    manifest_sha256: str
    builder: Mapping[str, Any]
    components: tuple[Component, ...]
    models: tuple[ModelFacts, ...]
    engine: EngineFacts | None
    targets: tuple[Mapping[str, Any], ...]
    licenses: tuple[LicenseUse, ...]
    signers: tuple[Signer, ...]
    trust_checked: bool
    sbom: Mapping[str, Any] | None
    commands: tuple[tuple[str, str], ...]
    flags: tuple[str, ...] = field(default=())
    generated_by: str = f"airlock {__version__}"

    @property
    def total_size(self) -> int:
        return sum(c.size for c in self.components)

    @property
    def file_count(self) -> int:
        return sum(len(c.files) for c in self.components)


def _components(manifest: Mapping[str, Any]) -> tuple[Component, ...]:
    declared: Mapping[str, Any] = manifest.get("components") or {}
    by_name: dict[str, list[FileRow]] = {}
    for f in manifest.get("files") or []:
        row = FileRow(
            path=str(f.get("path", "")),
            size=int(f.get("size", 0)),
            sha256=str(f.get("sha256", "")),
            mode=str(f.get("mode", "")),
        )
        by_name.setdefault(str(f.get("component", "bundle")), []).append(row)
    names = sorted(set(declared) | set(by_name))
    out = []
    for name in names:
        meta = declared.get(name) or {}
        out.append(
            Component(
                name=name,
                type=str(meta.get("type", "files")),
                files=tuple(by_name.get(name, [])),
                properties=meta.get("properties") or {},
            )
        )
    return tuple(out)


def _props(manifest: Mapping[str, Any], component: str) -> Mapping[str, Any]:
    comp = (manifest.get("components") or {}).get(component) or {}
    props: Mapping[str, Any] = comp.get("properties") or {}
    return props


def _licenses(manifest: Mapping[str, Any]) -> tuple[LicenseUse, ...]:
    uses: dict[str, list[str]] = {}
    permissive: dict[str, bool | None] = {}
    for model in models_of(dict(manifest)):
        lic = model.license or "unknown"
        uses.setdefault(lic, []).append(f"model {model.name or '?'}")
        flag = model.license_permissive
        permissive[lic] = bool(flag) if flag is not None else permissive.get(lic)
    for comp in ("wheels", "controller"):
        for wheel in _props(manifest, comp).get("wheels") or []:
            lic = str(wheel.get("license") or "unknown")
            uses.setdefault(lic, []).append(f"{comp}: {wheel.get('name', '?')}")
            permissive.setdefault(lic, None)
    return tuple(
        LicenseUse(license=lic, permissive=permissive.get(lic), used_by=tuple(sorted(set(users))))
        for lic, users in sorted(uses.items())
    )


def _flags(
    manifest: Mapping[str, Any],
    signers: Sequence[Signer],
    trust_checked: bool,
    now: dt.datetime,
) -> tuple[str, ...]:
    """Everything a reviewer must look at before approving, most serious first."""
    flags: list[str] = []
    for s in signers:
        if s.ok is False:
            flags.append(f"signature {s.member} ({s.fingerprint}): {s.status}")
    if not signers:
        flags.append("the bundle carries no manifest signature")
    if not trust_checked:
        flags.append(
            "signatures were not checked against a trust policy: rerun with --allowed-signers FILE"
        )
    expires = _parse_time(str(manifest.get("expires", "")))
    if expires is not None and expires <= now:
        flags.append(f"the bundle expired at {manifest.get('expires')}")
    for model in models_of(dict(manifest)):
        name = model.name or "?"
        if model.gated:
            flags.append(f"model {name} comes from a gated Hub repository")
        if model.license_permissive is False:
            flags.append(f"model {name} has a non-permissive license: {model.license}")
        if model.source == "local":
            flags.append(f"model {name} was bundled from a local path, not a pinned Hub commit")
    engine = engine_of(dict(manifest))
    if engine is not None and engine.llama_cpp_commit in (None, "", "unknown"):
        flags.append("the llama.cpp source commit is unknown (see the sdist digest instead)")
    return tuple(flags)


def _parse_time(text: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def stock_commands(
    bundle_file: str,
    signers: Sequence[Signer],
    sums_sha256: str | None,
    manifest_sha256: str = "",
) -> tuple[tuple[str, str], ...]:
    """Commands a transfer station runs with OpenSSH and coreutils only, no airlock.

    The digests on this page (manifest, SHA256SUMS) go into the commands, so a reviewer
    checks the bytes in hand against what was reviewed, not against the bundle's own claims.
    """
    principal = next((p for s in signers for p in s.principals), "PRINCIPAL")
    manifest_check = (
        f'echo "{manifest_sha256}  manifest.json" | sha256sum -c'
        if manifest_sha256
        else "sha256sum manifest.json"
    )
    cmds: list[tuple[str, str]] = [
        (
            "Whole archive signature (detached, beside the tar)",
            f"ssh-keygen -Y verify -f allowed_signers -I {principal} "
            f"-n {ARCHIVE_NAMESPACE} -s {bundle_file}.sig < {bundle_file}",
        ),
        (
            "Manifest bytes: the ones this page describes",
            f"tar -xOf {bundle_file} airlock/manifest.json > manifest.json && {manifest_check}",
        ),
    ]
    for s in signers:
        who = s.principals[0] if s.principals else principal
        cmds.append(
            (
                f"Manifest signature {s.member}",
                f"tar -xOf {bundle_file} {s.member} > manifest.sig && "
                f"ssh-keygen -Y verify -f allowed_signers -I {who} "
                f"-n {MANIFEST_NAMESPACE} -s manifest.sig < manifest.json",
            )
        )
    if sums_sha256:
        cmds.append(
            (
                "Every payload file, only after the signatures verify: extract into an empty "
                "scratch directory as an unprivileged user, check SHA256SUMS against the "
                "manifest's digest, then every file (never install from the scratch copy)",
                f"mkdir scratch && tar --no-same-owner --no-same-permissions -xf {bundle_file} "
                f'-C scratch && cd scratch && echo "{sums_sha256}  SHA256SUMS" | sha256sum -c '
                "&& sha256sum -c --strict SHA256SUMS",
            )
        )
    return tuple(cmds)


def build_report(
    manifest: Mapping[str, Any],
    *,
    manifest_sha256: str,
    bundle_file: str,
    signers: Sequence[Signer],
    trust_checked: bool,
    sbom_summary: Mapping[str, Any] | None,
    now: dt.datetime | None = None,
) -> Report:
    """Decide everything the page shows from the manifest and the signature findings."""
    now = now or dt.datetime.now(dt.timezone.utc)
    components = _components(manifest)
    sums = next((f.sha256 for c in components for f in c.files if f.path == "SHA256SUMS"), None)
    targets: list[Mapping[str, Any]] = []
    for comp in ("wheels", "controller"):
        for t in _props(manifest, comp).get("targets") or []:
            targets.append({"component": comp, **t})
    return Report(
        bundle_file=bundle_file,
        name=str(manifest.get("name", "")),
        version=str(manifest.get("version", "")),
        sequence=int(manifest.get("sequence", 0)),
        created=str(manifest.get("created", "")),
        expires=str(manifest.get("expires", "")),
        manifest_sha256=manifest_sha256,
        builder=manifest.get("builder") or {},
        components=components,
        models=tuple(models_of(dict(manifest))),
        engine=engine_of(dict(manifest)),
        targets=tuple(targets),
        licenses=_licenses(manifest),
        signers=tuple(signers),
        trust_checked=trust_checked,
        sbom=sbom_summary,
        commands=stock_commands(bundle_file, signers, sums, manifest_sha256),
        flags=_flags(manifest, signers, trust_checked, now),
    )


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def render_html(report: Report, *, directory: Path | None = None) -> str:
    """The page as one string: inline CSS, no scripts, no external resources.

    Autoescaping is on for everything: model cards, repo names and licenses come from
    the Hub and must never become markup in a reviewer's browser. Missing properties
    render empty (``Undefined``): other components' producers own their property keys.
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory or templates_dir())),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["size"] = _human_size
    return env.get_template(TEMPLATE).render(r=report)


# --- the edge: read a bundle, check its signatures, write the page -------------------------


def check_signers(
    manifest_bytes: bytes,
    signatures: Sequence[tuple[str, bytes]],
    policy: trust.TrustPolicy | None,
    *,
    now: dt.datetime,
) -> tuple[Signer, ...]:
    """Each manifest signature: its key, whether it verifies, and what the trust policy says.

    Uses the same decision as ``airlock verify`` (:func:`bundler.ssh.trust.evaluate`), one
    signature at a time, so the page shows why each signer counts or does not.
    """
    out: list[Signer] = []
    for member, blob in signatures:
        try:
            sig = sshsig.parse(blob)
        except AirlockError as e:
            out.append(Signer(member, "unreadable", (), "malformed signature", False, e.message))
            continue
        fingerprint = sig.public_key.fingerprint
        if policy is None:
            try:
                sshsig.verify(manifest_bytes, sig, namespace=MANIFEST_NAMESPACE)
            except AirlockError as e:
                out.append(Signer(member, fingerprint, (), "does not verify", False, e.message))
            else:
                out.append(Signer(member, fingerprint, (), "valid signature, trust not checked"))
            continue
        one = trust.TrustPolicy(signers=policy.signers, threshold=1, revoked=policy.revoked)
        try:
            decision = trust.evaluate(
                one, manifest_bytes, [(member, blob)], namespace=MANIFEST_NAMESPACE, now=now
            )
        except AirlockError as e:
            detail = "; ".join(e.problems) or e.message
            out.append(Signer(member, fingerprint, (), "rejected by trust policy", False, detail))
            continue
        principals = decision.accepted[0].principals if decision.accepted else ()
        out.append(Signer(member, fingerprint, principals, "verified", True))
    return tuple(out)


def write_report(
    bundle: Path,
    out: Path,
    *,
    allowed_signers: Path | None = None,
    now: dt.datetime | None = None,
) -> Report:
    """Read ``bundle``'s metadata region and SBOM, write the page to ``out`` atomically.

    Raises ArchiveFormatError/IntegrityError for a malformed bundle, TrustError for an
    unreadable allowed_signers file. Signature and policy findings go into the page.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    policy = trust.load_policy(allowed_signers) if allowed_signers is not None else None
    meta = read_metadata(bundle)
    signers = check_signers(meta.manifest_bytes, meta.signatures, policy, now=now)
    data = sbom.bundle_sbom(bundle, meta)
    sbom_summary = sbom.summarize(data) if data is not None else None
    report = build_report(
        meta.manifest,
        manifest_sha256=meta.manifest_sha256,
        bundle_file=bundle.name,
        signers=signers,
        trust_checked=policy is not None,
        sbom_summary=sbom_summary,
        now=now,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, render_html(report))
    return report
