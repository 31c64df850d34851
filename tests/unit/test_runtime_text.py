"""The one character rule for manifest text, and escaping for terminals."""

from __future__ import annotations

import pytest

from runtime.text import MAX_TEXT_BYTES, printable, text_problem


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("plain text, caf\u00e9, \u6a21\u578b", None),
        ("tab\there", "control character U+0009"),
        ("esc\x1b[2J", "control character U+001B"),
        ("del\x7f", "control character U+007F"),
        ("csi\x9b", "control character U+009B"),
        ("nbsp\xa0ok", None),
        ("lone \ud800", "not valid UTF-8 (a lone surrogate)"),
        ("x" * (MAX_TEXT_BYTES + 1), f"longer than {MAX_TEXT_BYTES} bytes"),
        ("\u00e9" * (MAX_TEXT_BYTES // 2), None),
        ("\u00e9" * (MAX_TEXT_BYTES // 2 + 1), f"longer than {MAX_TEXT_BYTES} bytes"),
    ],
)
def test_text_rule(value: str, why: str | None) -> None:
    assert text_problem(value) == why


def test_printable_escapes_controls_bidi_and_invisible_characters() -> None:
    assert printable("a\x1b[1mb\x9bc\x7f") == "a\\x1b[1mb\\x9bc\\x7f"
    assert printable("\u202eabc\u2066\u200b\ufeff") == "\\u202eabc\\u2066\\u200b\\ufeff"
    assert printable("\U000e0041 tag") == "\\U000e0041 tag"
    assert printable("x\u2028y") == "x\\u2028y"
    assert printable("one\ntwo") == "one\\x0atwo"
    assert printable("one\ntwo", keep_newlines=True) == "one\ntwo"


def test_printable_leaves_ordinary_text_alone() -> None:
    text = "caf\u00e9 \u6a21\u578b \u0645\u0631\u062d\u0628\u0627 \U0001f600 [bold] \\x1b"
    assert printable(text) == text
