"""The one progress printer (infra/runtime/progress.py): its line, its pace, its last line."""

from __future__ import annotations

import io

from infra.runtime.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_plain_stream_gets_whole_lines_and_the_last_state_once() -> None:
    out = io.StringIO()
    bar = Progress(1000, "rebuild", out, plain_every_s=3600)
    bar.update(10, 9)
    bar.update(20, 19)  # too soon after the first: not shown
    bar.finish(1000, 990)
    bar.finish(1000, 990)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("rebuild: 10/1000 offsets (1.0%), 9 events, ")
    assert lines[-1].startswith("rebuild: 1000/1000 offsets (100.0%), 990 events, ")
    assert "events/s, elapsed 00:00, ETA 00:00" in lines[-1]


def test_a_callback_with_a_growing_total_finishes_when_done_meets_it() -> None:
    out = io.StringIO()
    bar = Progress(0, "export", out, unit="events", plain_every_s=0)
    bar.track(1, 2)
    bar.track(2, 3)  # the total grew
    bar.track(3, 3)
    bar.track(3, 3)  # a second report of the end adds nothing
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["export: 1/2 events", "export: 2/3 events", "export: 3/3 events"]
    assert "events/s" in lines[-1] and " events, " not in lines[-1]  # the units are the events


def test_a_terminal_gets_a_bar_redrawn_in_place() -> None:
    out = Terminal()
    bar = Progress(4, "verify (log offsets)", out, redraw_s=0)
    bar.update(1, 5)
    bar.finish(4, 20)
    text = out.getvalue()
    assert text.startswith("\rverify (log offsets): [" + "#" * 7 + "." * 23 + "] 1/4 offsets (25.0%)")
    assert text.count("\r") == 2 and text.endswith("\x1b[K\n")
