"""The bundle's top-level README.md: what the person holding the tarball reads first."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from bundler.paths import templates_dir
from bundler.ssh.sig import ARCHIVE_NAMESPACE, MANIFEST_NAMESPACE

TEMPLATE = "README.bundle.md.j2"
_UNSAFE = re.compile(r"[^A-Za-z0-9 ._:/@+-]")


def plain(value: Any) -> str:
    """``value`` as text with every character outside a safe set replaced by ``?``."""
    return _UNSAFE.sub("?", str(value))


def render_bundle_readme(
    *,
    name: str,
    version: str,
    sequence: int,
    expires: str,
    models: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Markdown naming the bundle, its models, and the stock-tool, bootstrap and install steps.

    ``models`` are the manifest's ``components.models.properties.models`` entries. The text
    holds no digests: it is a payload file, written before the manifest exists.
    """
    # Markdown, not HTML, so no HTML escaping; Hub-supplied text goes through ``plain``
    # instead, so a license or repo name can never inject markup or break a code span.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=False,  # noqa: S701
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["plain"] = plain
    return env.get_template(TEMPLATE).render(
        name=name,
        version=version,
        sequence=sequence,
        expires=expires,
        models=list(models),
        bundle_file=f"{name}-{version}.tar",
        manifest_namespace=MANIFEST_NAMESPACE,
        archive_namespace=ARCHIVE_NAMESPACE,
    )
