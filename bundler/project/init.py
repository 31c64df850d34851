"""``airlock init``: a new project with a commented spec, a signing key and a trust file."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import jinja2

from bundler.errors import SpecError, UsageError
from bundler.paths import templates_dir
from bundler.ssh import keys as sshkeys
from bundler.ssh.sig import ARCHIVE_NAMESPACE, MANIFEST_NAMESPACE

SPEC_TEMPLATE = "airlock.example.yaml"
SPEC_NAME = "airlock.yaml"
KEY_NAME = "keys/signing"
ALLOWED_SIGNERS_NAME = "allowed_signers"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Project:
    """What ``airlock init`` wrote."""

    directory: Path
    spec: Path
    key: Path
    public_key: Path
    allowed_signers: Path
    fingerprint: str
    principal: str


def project_name(directory: Path) -> str:
    """The bundle name derived from the directory name, as the spec requires it."""
    name = re.sub(r"[^a-z0-9._-]+", "-", directory.resolve().name.lower()).strip("-._")
    return name[:64] or "bundle"


def render_spec(template: str, *, name: str) -> str:
    """The example spec with this project's name; comments are kept as written."""
    # YAML, not HTML: escaping would corrupt quotes in the spec.
    env = jinja2.Environment(autoescape=False, keep_trailing_newline=True)  # noqa: S701
    text = env.from_string(template).render(name=name)
    # The example may carry a literal example name rather than a placeholder; keep the
    # line's comment.
    return re.sub(r"(?m)^name:([ \t]*)[^\s#]+", lambda m: f"name:{m.group(1)}{name}", text, count=1)


def allowed_signers_line(principal: str, pub: sshkeys.PublicKey) -> str:
    """One OpenSSH ``allowed_signers`` line trusting ``pub`` for airlock's two namespaces."""
    namespaces = f"{MANIFEST_NAMESPACE},{ARCHIVE_NAMESPACE}"
    return f'{principal} namespaces="{namespaces}" {pub.key_type} {pub.openssh().split()[1]}'


def init_project(
    directory: Path,
    *,
    name: Optional[str] = None,
    principal: Optional[str] = None,
    passphrase: Optional[bytes],
    template_dir: Optional[Path] = None,
) -> Project:
    """Write ``airlock.yaml``, ``keys/signing{,.pub}`` and ``allowed_signers`` into ``directory``.

    Refuses (UsageError) when any of them exists already, before writing anything.
    """
    name = name or project_name(directory)
    if not _NAME_RE.match(name):
        raise UsageError(
            f"{name!r} is not a valid bundle name",
            hint="use lower-case letters, digits, '.', '_' or '-' (at most 64), e.g. --name demo",
        )
    principal = principal or f"{name}-release"
    spec = directory / SPEC_NAME
    key = directory / KEY_NAME
    pub = Path(str(key) + ".pub")
    allowed = directory / ALLOWED_SIGNERS_NAME
    existing = [str(p) for p in (spec, key, pub, allowed) if os.path.lexists(p)]
    if existing:
        raise UsageError(
            f"{directory} already holds an airlock project; nothing was changed",
            problems=[f"{p} exists" for p in existing],
            hint="choose an empty or new directory; airlock init never overwrites",
        )
    source = (template_dir or templates_dir()) / SPEC_TEMPLATE
    try:
        template = source.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(
            f"cannot read the example spec {source}: {e.strerror or e}",
            hint="reinstall airlock; the templates/ directory ships with it",
        ) from e
    text = render_spec(template, name=name)

    key.parent.mkdir(parents=True, exist_ok=True)
    public = sshkeys.generate_keypair(key, comment=principal, passphrase=passphrase)
    _write_new(allowed, allowed_signers_line(principal, public) + "\n")
    _write_new(spec, text)
    return Project(
        directory=directory,
        spec=spec,
        key=key,
        public_key=pub,
        allowed_signers=allowed,
        fingerprint=public.fingerprint,
        principal=principal,
    )


def _write_new(path: Path, text: str) -> None:
    """Create ``path`` whole or not at all; never replaces a file that appeared meanwhile."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.link(tmp, path)  # link() is atomic and fails when the name exists
    except FileExistsError as e:
        raise UsageError(f"{path} appeared while airlock init ran; it was kept") from e
    finally:
        os.unlink(tmp)
