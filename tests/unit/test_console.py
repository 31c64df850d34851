"""Console messages are shown as written: no rich markup, no re-wrapping in pipes."""

from __future__ import annotations

import pytest

from bundler import console


def test_messages_are_not_interpreted_as_markup(capsys: pytest.CaptureFixture[str]) -> None:
    console.step("TASK [airlock : unpack] ****")
    console.info("[bold]model[/] text")
    assert capsys.readouterr().err.splitlines() == [
        "==> TASK [airlock : unpack] ****",
        "    [bold]model[/] text",
    ]


def test_long_lines_are_not_wrapped_when_stderr_is_a_pipe(
    capsys: pytest.CaptureFixture[str],
) -> None:
    message = "x" * 150
    console.warn(message)
    assert capsys.readouterr().err == f"warning: {message}\n"


def test_untrusted_text_reaches_the_terminal_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    console.info("name \x1b[2Jdemo\x9b31m \u202eevil\u2066 \x07")
    console.out("line one\nline\r two")
    captured = capsys.readouterr()
    assert captured.err == "    name \\x1b[2Jdemo\\x9b31m \\u202eevil\\u2066 \\x07\n"
    assert captured.out == "line one\nline\\x0d two\n"


def test_error_renderings_escape_what_they_quote() -> None:
    from bundler.errors import ArchiveFormatError

    err = ArchiveFormatError(
        "member 'x\x1b]0;owned\x07'", problems=["p\u202e", "two\nlines"], hint="h\x9b"
    )
    assert err.render() == (
        "error: member 'x\\x1b]0;owned\\x07'\n  - p\\u202e\n  - two\nlines\nhint: h\\x9b"
    )
