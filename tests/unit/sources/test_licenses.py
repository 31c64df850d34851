"""Model licenses: declared license found, files recorded, non-permissive and gated flagged."""

from __future__ import annotations

import pytest

from bundler.sources.licenses import card_license, is_license_file, is_permissive, license_facts

CARD = """---
license: apache-2.0
tags: [gguf]
---
# A model
"""


def test_card_front_matter_license() -> None:
    assert card_license(CARD) == "apache-2.0"
    assert card_license("---\nlicense: [MIT]\n---\n") == "mit"
    other = "---\nlicense: other\nlicense_name: llama3.1\n---\n"
    assert card_license(other) == "llama3.1"


@pytest.mark.parametrize(
    "text",
    ["# no front matter", "---\nlicense: [unclosed\n---\n", "---\nnot closed", "---\n- a\n---"],
)
def test_card_without_readable_front_matter_has_no_license(text: str) -> None:
    assert card_license(text) is None


@pytest.mark.parametrize(
    ("lic", "ok"),
    [
        ("apache-2.0", True),
        ("mit", True),
        ("bsd-3-clause", True),
        ("bsd-2-clause-patent", True),
        ("cc-by-4.0", True),
        ("llama3.1", False),
        ("llama2", False),
        ("gemma", False),
        ("other", False),
        ("cc-by-nc-4.0", False),
        ("cc-by-nc-sa-4.0", False),
        (None, False),
    ],
)
def test_permissive_list(lic: str, ok: bool) -> None:
    assert is_permissive(lic) is ok


def test_license_files_are_top_level_license_like_files() -> None:
    assert is_license_file("LICENSE") and is_license_file("LICENSE.txt")
    assert is_license_file("NOTICE") and is_license_file("USE_POLICY.md")
    assert not is_license_file("sub/LICENSE") and not is_license_file("README.md")


def test_facts_record_files_card_and_flags() -> None:
    facts = license_facts(
        model="tiny",
        repo_paths=["README.md", "LICENSE", "USE_POLICY.md", "tiny.gguf"],
        card_text="---\nlicense: llama3.1\n---\n",
        declared=None,
        api_license="apache-2.0",
        gated=True,
    )
    assert facts.license == "llama3.1"  # the card in the bundle wins over the API's cardData
    assert facts.permissive is False and facts.gated is True
    assert facts.license_files == ("models/tiny/LICENSE", "models/tiny/USE_POLICY.md")
    assert facts.card == "models/tiny/README.md"
    warnings = facts.warnings("tiny")
    assert any("not permissive" in w for w in warnings) and any("gated" in w for w in warnings)


def test_declared_license_wins_and_missing_license_is_flagged() -> None:
    declared = license_facts(
        model="m",
        repo_paths=["m.gguf"],
        card_text=None,
        declared="MIT",
        api_license=None,
        gated=False,
    )
    assert declared.license == "mit" and declared.permissive and declared.warnings("m") == []
    assert declared.card is None and declared.license_files == ()
    none = license_facts(
        model="m",
        repo_paths=["m.gguf"],
        card_text=None,
        declared=None,
        api_license=None,
        gated=False,
    )
    assert none.license is None and "no license declared" in none.warnings("m")[0]
