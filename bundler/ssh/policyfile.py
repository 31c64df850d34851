"""allowed_signers and revoked keys files, read line by line exactly as OpenSSH 9.2 reads them.

A policy file means to airlock what it means to stock ``ssh-keygen -Y verify``, byte for
byte, so this module follows OpenSSH's own code rather than its manual:

- lines: ``getline`` (only ``\\n`` ends a line; C string functions stop at a NUL byte);
- allowed signers: sshsig.c ``parse_principals_key_and_options`` (principals by misc.c
  ``strdelimw``, options by authfile.c ``sshkey_advance_past_options``, the key by
  ``sshkey_read``: bundler/ssh/keytext.py) and ``sshsigopt_parse`` (misc.c ``opt_flag``,
  ``opt_match``, ``opt_dequote``, ``parse_absolute_time`` with glibc's ``strptime``);
- patterns: match.c ``match_pattern`` and ``match_pattern_list`` (with its 1023-byte limit);
- revoked keys: authfile.c ``sshkey_check_revoked`` / ``sshkey_in_file``.

Pure: bytes in, records out. Each malformed line raises LineError with OpenSSH's reason.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

from bundler.ssh.keytext import C_SPACE, KeyText, KeyTextError, KeyTooShort, read_key

KRL_MAGIC = b"SSHKRL\n\x00"
_WHITESPACE = b" \t\r\n"  # misc.c WHITESPACE, what strdelimw splits on
_BLANK = b" \t"
_SUBPATTERN_MAX = 1023  # match_pattern_list's sub[1024]
_STAR, _QMARK, _COMMA, _BANG, _QUOTE = b'*?,!"'


class LineError(ValueError):
    """One line that OpenSSH cannot use; the message is its reason."""


@dataclass(frozen=True)
class SignerLine:
    """One allowed signers entry as OpenSSH parsed it (times are seconds; 0 is unset)."""

    number: int
    principals: bytes  # the principals field: a pattern list
    key: KeyText
    cert_authority: bool
    namespaces: Optional[bytes]  # the namespaces= pattern list, None when absent
    valid_after: int
    valid_before: int


def lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``getline``: numbered lines, each with its ``\\n`` (the last may lack one), cut at NUL."""
    pieces = data.split(b"\n")
    last = pieces.pop()
    for number, piece in enumerate([*(p + b"\n" for p in pieces), *([last] if last else [])], 1):
        yield number, piece.split(b"\0", 1)[0]


def match_pattern(s: bytes, pattern: bytes) -> bool:
    """match.c ``match_pattern``: ``*`` any run, ``?`` one byte, everything else itself."""
    si = pi = 0
    star = mark = -1
    while si < len(s):
        if pi < len(pattern) and pattern[pi] == _STAR:
            star, mark = pi, si
            pi += 1
        elif pi < len(pattern) and pattern[pi] in (_QMARK, s[si]):
            si += 1
            pi += 1
        elif star >= 0:
            mark += 1
            si, pi = mark, star + 1
        else:
            return False
    while pi < len(pattern) and pattern[pi] == _STAR:
        pi += 1
    return pi == len(pattern)


def match_pattern_list(s: bytes, patterns: bytes) -> int:
    """match.c ``match_pattern_list`` (case-sensitive): 1 match, -1 negated match, 0 none.

    As in OpenSSH, a sub-pattern of 1023 bytes or more ends the search with 0.
    """
    got_positive = 0
    i = 0
    while i < len(patterns):
        negated = patterns[i] == _BANG
        i += negated
        j = i
        while j < len(patterns) and j - i < _SUBPATTERN_MAX and patterns[j] != _COMMA:
            j += 1
        if j - i >= _SUBPATTERN_MAX:
            return 0
        sub, i = patterns[i:j], j + (j < len(patterns) and patterns[j] == _COMMA)
        if match_pattern(s, sub):
            if negated:
                return -1
            got_positive = 1
    return got_positive


def identities(principals: bytes) -> tuple[bytes, ...]:
    """Identities (``ssh-keygen -I``) the principals field accepts: its own names, checked.

    ``ssh-keygen -Y verify -I NAME`` accepts a line when ``match_pattern_list(NAME,
    principals) == 1``. Each positive pattern is tried as a name (a pattern matches its own
    text) and with its wildcards filled in; an empty result means the line can vouch for
    nobody. Negations that rule out every such name make the result empty even where some
    exotic name would pass: stricter than OpenSSH, never looser.
    """
    found: list[bytes] = []
    for sub in principals.split(b","):
        if sub.startswith(b"!"):
            continue
        for name in (sub, sub.replace(b"*", b"").replace(b"?", b"x")):
            if name not in found and match_pattern_list(name, principals) == 1:
                found.append(name)
                break
    return tuple(found)


def _strdelimw(s: bytes) -> tuple[Optional[bytes], Optional[bytes]]:
    """misc.c ``strdelimw``: (token, rest); token None on an unterminated quote, rest None
    when no delimiter follows the token."""
    at = next((i for i, c in enumerate(s) if c in _WHITESPACE or c == _QUOTE), -1)
    if at < 0:
        return s, None
    if s[at] == _QUOTE:
        s = s[:at] + s[at + 1 :]
        close = s.find(b'"', at)
        if close < 0:
            return None, None
        return s[:close], s[close + 1 :].lstrip(_WHITESPACE)
    return s[:at], s[at + 1 :].lstrip(_WHITESPACE)


def _advance_past_options(s: bytes) -> int:
    """authfile.c ``sshkey_advance_past_options``: where the options end (a blank)."""
    quoted = False
    i = 0
    while i < len(s) and (quoted or s[i] not in _BLANK):
        if s[i] == 0x5C and s[i + 1 : i + 2] == b'"':  # backslash-quote: skip both
            i += 1
        elif s[i] == _QUOTE:
            quoted = not quoted
        i += 1
    if i >= len(s) and quoted:
        raise LineError("invalid options (unterminated quote)")
    return i


def _dequote(opts: bytes, i: int) -> tuple[bytes, int]:
    """misc.c ``opt_dequote``: a double-quoted value (``\\"`` inside), and where it ends."""
    if opts[i : i + 1] != b'"':
        raise LineError("bad options: missing start quote")
    i += 1
    out = bytearray()
    while i < len(opts) and opts[i] != _QUOTE:
        if opts[i] == 0x5C and opts[i + 1 : i + 2] == b'"':
            i += 1
        out.append(opts[i])
        i += 1
    if i >= len(opts):
        raise LineError("bad options: missing end quote")
    return bytes(out), i + 1


def _number(buf: bytes, at: int, low: int, high: int, width: int) -> tuple[int, int]:
    """glibc strptime's ``get_number``: skip spaces, 1..width digits, in [low, high]."""
    while at < len(buf) and buf[at] in C_SPACE:
        at += 1
    if at >= len(buf) or not 0x30 <= buf[at] <= 0x39:
        raise ValueError("not a number")
    value = 0
    while True:
        value = value * 10 + buf[at] - 0x30
        at += 1
        width -= 1
        if not (width > 0 and value * 10 <= high and at < len(buf) and 0x30 <= buf[at] <= 0x39):
            break
    if not low <= value <= high:
        raise ValueError("out of range")
    return value, at


_TIME_FIELDS = [(b"", 0, 9999, 4), (b"-", 1, 12, 2), (b"-", 1, 31, 2)]
_TIME_FIELDS += [(b"T", 0, 23, 2), (b":", 0, 59, 2), (b":", 0, 61, 2)]


def parse_absolute_time(text: bytes) -> int:
    """misc.c ``parse_absolute_time``: YYYYMMDD[HHMM[SS]] and ``Z``/``UTC`` for UTC, else
    local time (``mktime`` with ``tm_isdst`` 0); seconds since the epoch. Raises ValueError.

    Like OpenSSH it goes through glibc ``strptime`` (spaces before a field are skipped, a
    day up to 31 is taken in any month and rolls over), so it accepts what ssh-keygen does.
    """
    length, utc = len(text), False
    if length > 1 and text[-1:].lower() == b"z":
        length, utc = length - 1, True
    elif length > 3 and text[-3:].lower() == b"utc":
        length, utc = length - 3, True
    count = {8: 3, 12: 5, 14: 6}.get(length)
    if count is None:
        raise ValueError("not YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS (+ optional Z)")
    cuts = [0, 4, 6, 8, 10, 12, 14][: count + 1]
    buf = b"".join(sep + text[a:b] for (sep, *_), a, b in zip(_TIME_FIELDS, cuts, cuts[1:]))
    values: list[int] = []
    at = 0
    for sep, low, high, width in _TIME_FIELDS[:count]:
        if buf[at : at + len(sep)] != sep:
            raise ValueError("not a date and time")
        value, at = _number(buf, at + len(sep), low, high, width)
        values.append(value)
    if at != len(buf):
        raise ValueError("not a date and time")
    year, month, day, hour, minute, second = [*values, 0, 0, 0][:6]
    try:
        if utc:
            seconds = calendar.timegm((year, month, day, hour, minute, second))
        else:
            seconds = int(time.mktime((year, month, day, hour, minute, second, 0, 0, 0)))
    except (ValueError, OverflowError) as e:
        raise ValueError(f"not a representable time: {e}") from e
    if seconds < 0:
        raise ValueError("before 1970")
    return seconds


def parse_options(opts: bytes) -> tuple[bool, Optional[bytes], int, int]:
    """sshsig.c ``sshsigopt_parse``: (cert-authority, namespaces, valid-after, valid-before)."""
    ca, namespaces, times = False, None, {b"valid-after": 0, b"valid-before": 0}
    i = 0
    while i < len(opts) and opts[i] not in _BLANK:
        name = next(
            (n for n in (b"namespaces", *times) if opts[i : i + len(n) + 1].lower() == n + b"="),
            None,
        )
        if opts[i : i + 14].lower() == b"cert-authority":
            ca, i = True, i + 14
        elif name == b"namespaces":
            if namespaces is not None:
                raise LineError('bad options: multiple "namespaces" clauses')
            namespaces, i = _dequote(opts, i + len(name) + 1)
        elif name is not None:
            if times[name]:
                raise LineError(f'bad options: multiple "{name.decode()}" clauses')
            value, i = _dequote(opts, i + len(name) + 1)
            try:
                times[name] = parse_absolute_time(value)
            except ValueError:
                times[name] = 0  # as OpenSSH: unparsable, or the epoch itself
            if not times[name]:
                raise LineError(f'bad options: invalid "{name.decode()}" time')
        if i >= len(opts) or opts[i] in _BLANK:
            break
        if opts[i] != _COMMA:
            raise LineError("bad options: unknown key option")
        i += 1
        if i >= len(opts):
            raise LineError("bad options: unexpected end-of-options")
    after, before = times[b"valid-after"], times[b"valid-before"]
    if after and before and before <= after:
        raise LineError('bad options: "valid-before" time is before "valid-after"')
    return ca, namespaces, after, before


def is_blank(line: bytes) -> bool:
    """A line with nothing to read: only blanks and line ends, or a ``#`` comment."""
    stripped = line.lstrip(_BLANK)
    return not stripped.strip(_WHITESPACE) or stripped.startswith(b"#")


def parse_signer_line(number: int, line: bytes) -> Optional[SignerLine]:
    """One allowed signers line (``parse_principals_key_and_options``); None when blank."""
    if is_blank(line):
        return None
    principals, rest = _strdelimw(line.lstrip(_BLANK))
    if principals is None or rest is None:
        raise LineError("invalid line (an unterminated quote, or nothing after the principals)")
    try:
        key, _comment = read_key(rest)
        opts = b""
    except KeyTextError:
        end = _advance_past_options(rest)
        if end >= len(rest):
            raise LineError("missing key") from None
        opts, rest = rest[:end], rest[end + 1 :].lstrip(_BLANK)
        try:
            key, _comment = read_key(rest)
        except KeyTextError as e:
            raise LineError(f"invalid key: {e}") from None
    ca, namespaces, after, before = parse_options(opts)
    return SignerLine(number, principals, key, ca, namespaces, after, before)


def parse_revoked_line(line: bytes) -> Optional[KeyText]:
    """One revoked keys line (``sshkey_in_file``); None when skipped (blank, comment, or an
    RSA key under 1024 bits, which OpenSSH skips too)."""
    text = line.lstrip(_BLANK)
    if not text or text[:1] in (b"#", b"\n"):
        return None
    try:
        return read_key(text)[0]
    except KeyTooShort:
        return None
    except KeyTextError as e:
        raise LineError(str(e)) from None
