"""Model licenses: the declared license, LICENSE files, model card, permissive or not (pure)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import yaml

# SPDX-style ids as the Hub spells them (lowercase). Anything else, including the model
# families' own licenses (llama*, gemma, other) and non-commercial ones, needs a human.
PERMISSIVE = frozenset(
    {
        "apache-2.0",
        "mit",
        "bsd",
        "bsd-2-clause",
        "bsd-3-clause",
        "bsd-3-clause-clear",
        "isc",
        "zlib",
        "unlicense",
        "cc0-1.0",
        "cc-by-2.0",
        "cc-by-2.5",
        "cc-by-3.0",
        "cc-by-4.0",
        "bsl-1.0",
        "postgresql",
        "ncsa",
        "wtfpl",
        "pddl",
        "odc-by",
        "afl-3.0",
        "ecl-2.0",
        "upl-1.0",
    }
)
LICENSE_FILE_PATTERNS = ("LICENSE*", "LICENCE*", "NOTICE*", "USE_POLICY*", "COPYING*")
CARD_NAME = "README.md"


@dataclass(frozen=True)
class LicenseFacts:
    """What the bundle records about one model's license."""

    license: Optional[str]
    permissive: bool
    gated: bool
    license_files: tuple[str, ...]  # bundle paths
    card: Optional[str]  # bundle path

    def warnings(self, model: str) -> list[str]:
        """Lines a reviewer must read before shipping (empty when nothing stands out)."""
        out = []
        if self.license is None:
            out.append(f"model {model}: no license declared; check the terms before shipping")
        elif not self.permissive:
            out.append(f"model {model}: license '{self.license}' is not permissive; review it")
        if self.gated:
            out.append(f"model {model}: the repository is gated (terms accepted on the Hub)")
        return out


def normalise(value: Any) -> Optional[str]:
    """A license value from card data (text or list) as one lowercase id, or None."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    text = str(value).strip().lower()
    return text or None


def card_license(card_text: str) -> Optional[str]:
    """``license:`` from a model card's YAML front matter (``license_name`` when it is 'other')."""
    lines = card_text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    try:
        end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
    except StopIteration:
        return None
    try:
        meta = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError:
        return None
    if not isinstance(meta, dict):
        return None
    lic = normalise(meta.get("license"))
    if lic == "other" and meta.get("license_name"):
        return normalise(meta.get("license_name"))
    return lic


def is_permissive(license_id: Optional[str]) -> bool:
    if license_id is None:
        return False
    return license_id in PERMISSIVE or license_id.startswith("bsd-")


def is_license_file(path: str) -> bool:
    """Top-level LICENSE/NOTICE/USE_POLICY-like files of a repo."""
    return "/" not in path and any(fnmatch.fnmatchcase(path, p) for p in LICENSE_FILE_PATTERNS)


def license_facts(
    *,
    model: str,
    repo_paths: Sequence[str],
    card_text: Optional[str],
    declared: Optional[str],
    api_license: Optional[str],
    gated: bool,
) -> LicenseFacts:
    """Decide a model's license record.

    ``declared`` (from the spec) wins over the card's front matter, which wins over the
    Hub API's cardData; ``repo_paths`` are the model's files as staged under
    ``models/<model>/``.
    """
    lic = normalise(declared) or (card_license(card_text) if card_text else None) or api_license
    prefix = f"models/{model}/"
    files = tuple(sorted(prefix + p for p in repo_paths if is_license_file(p)))
    card = prefix + CARD_NAME if CARD_NAME in repo_paths else None
    return LicenseFacts(
        license=lic,
        permissive=is_permissive(lic),
        gated=gated,
        license_files=files,
        card=card,
    )
