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
