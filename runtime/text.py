"""Untrusted text: the one character rule for manifest strings and paths, and console escaping.

Every string a bundle carries (paths, the name and version, builder and component property
strings, object keys) is held to :func:`text_problem` when the manifest is parsed, so no
control character or terminal escape sequence ever leaves the reader. Output built from
untrusted input goes through :func:`printable` as well, which also neutralises what the
rule lets through but a terminal may still misrender (bidirectional overrides, zero-width
and line-separator characters): a second line of defence, and the only one for text that
never passed through a manifest (file names on the command line, member names of an archive
being refused). Standard library only, Python 3.8+.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Optional

MAX_TEXT_BYTES = 64 * 1024

# C0 controls, DEL and C1 controls: ESC and CSI start terminal escape sequences; CR, BS and
# friends rewrite what is already on the line. Never in a manifest, always escaped.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Unicode categories a terminal renders invisibly or reorders: format characters (bidi
# overrides U+202A-U+202E and isolates U+2066-U+2069, zero-width U+200B-U+200F, BOM),
# line and paragraph separators, surrogates (never valid text), private use, unassigned.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def control_character(text: str) -> Optional[str]:
    """The first C0/C1 control character (or DEL) in ``text``, or None."""
    found = _CONTROL.search(text)
    return None if found is None else found.group()


def text_problem(value: str, *, limit: int = MAX_TEXT_BYTES) -> Optional[str]:
    """Why ``value`` may not appear in a manifest, or None when it may.

    The rule (docs/FORMAT.md, "Manifest"): valid UTF-8 (no lone surrogates), at most
    ``limit`` bytes, no C0 or C1 control character and no DEL.
    """
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid UTF-8 (a lone surrogate)"
    if size > limit:
        return f"longer than {limit} bytes"
    bad = control_character(value)
    if bad is not None:
        return f"control character U+{ord(bad):04X}"
    return None


def _hidden(c: str) -> bool:
    return _CONTROL.match(c) is not None or unicodedata.category(c) in _HIDDEN_CATEGORIES


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` safe for a terminal: every control, format, separator or unassigned
    character becomes a visible escape (``\\x1b``, ``\\u202e``, ``\\U000e0001``), as
    ``repr`` writes them. With ``keep_newlines`` a ``\\n`` stays a line break (multi-line
    messages); every other such character is still escaped.
    """
    out = []
    for c in text:
        if c == "\n" and keep_newlines:
            out.append(c)
        elif _hidden(c):
            code = ord(c)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
        else:
            out.append(c)
    return "".join(out)
