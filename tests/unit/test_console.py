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


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _FakeClock:
    fake = _FakeClock()
    monkeypatch.setattr(console, "_clock", fake)
    monkeypatch.setattr(console, "_last_output", [fake.now])
    return fake


def test_plain_byte_progress_prints_a_line_only_after_the_interval(
    clock: _FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    with console.byte_progress("pack", 3_000_000) as advance:
        advance(1_000_000)
        clock.now += console.PLAIN_INTERVAL - 1
        advance(500_000)
        assert capsys.readouterr().err == ""  # not yet: quiet for less than the interval
        clock.now += 1
        advance(500_000)
        assert capsys.readouterr().err == "    pack: 2.0 MB of 3.0 MB (66%), 10 s\n"
        advance(1_000_000)
        clock.now += 65
    assert capsys.readouterr().err == "    pack: 3.0 MB of 3.0 MB (100%), done in 1 min 15 s\n"


def test_quick_plain_progress_stays_quiet(
    clock: _FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    with console.byte_progress("verify", 10) as advance:
        advance(10)
    with console.count_progress("compiling", "steps") as update:
        update(3, 3)
    assert capsys.readouterr().err == ""


def test_plain_count_progress_shows_done_of_total(
    clock: _FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    with console.count_progress("compiling llama.cpp", "steps") as update:
        clock.now += console.PLAIN_INTERVAL
        update(45, 231)
    assert capsys.readouterr().err.splitlines() == [
        "    compiling llama.cpp: 45/231 steps (19%), 10 s",
        "    compiling llama.cpp: 45/231 steps (19%), done in 10 s",
    ]


def test_still_working_line_names_the_last_step_after_the_interval_of_silence(
    clock: _FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    console.tick()  # outside any working block: nothing
    with console.working():
        console.step("wheelhouse for the targets")
        clock.now += console.PLAIN_INTERVAL - 0.5
        console.tick()
        assert capsys.readouterr().err == "==> wheelhouse for the targets\n"
        clock.now += 0.5
        console.tick()
        console.tick()  # that line was output: the next is an interval later
        assert capsys.readouterr().err == (
            "    ... wheelhouse for the targets: still working (10 s)\n"
        )
        with console.working("compiling llama.cpp"):
            clock.now += 60
            console.tick()
        late = "    ... compiling llama.cpp: still working (1 min 00 s)\n"
        assert capsys.readouterr().err == late
    clock.now += 60
    console.tick()
    assert capsys.readouterr().err == ""


def test_no_still_working_line_while_a_bar_is_live(
    clock: _FakeClock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "_live_bars", [1])
    with console.working("x"):
        clock.now += 100
        console.tick()
    assert capsys.readouterr().err == ""


def test_the_watcher_prints_the_running_progress_rather_than_still_working(
    clock: _FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    # the build's own poll and the watcher race for the same due line: whichever prints,
    # it is the progress, never a "still working" that hides it
    with console.working("llama.cpp build"), console.count_progress("llama.cpp build", "steps"):
        clock.now += console.PLAIN_INTERVAL
        console.tick()  # no step seen yet: still working
        assert "still working (10 s)" in capsys.readouterr().err
    with console.working("llama.cpp build"):
        with console.count_progress("llama.cpp build", "steps") as update:
            update(40, 231)
            clock.now += console.PLAIN_INTERVAL
            console.tick()
            assert capsys.readouterr().err == "    llama.cpp build: 40/231 steps (17%), 10 s\n"
