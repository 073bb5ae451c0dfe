"""Progress of a long run (a rebuild, an audit verify or export) on stderr: one printer, one format.

The line is ``label: done/total unit (percent), events, events/s, elapsed, ETA``; on a TTY a bar goes
in front of the count and the line is redrawn in place (``\\r``) at most ``redraw_s`` apart; when
stderr is a file or a pipe (CI logs, `make run`'s log), one plain line is written every
``plain_every_s`` instead, so a log is not flooded with redraws yet still shows that the run is alive.
The last state always gets its own line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 30


class Progress:
    """Reports ``done`` out of ``total`` units (``unit``) and, if they differ, a count of events.

    ``update``/``finish`` for a caller that knows its total up front; ``track`` for a callback whose
    total may grow while it runs (it finishes the line once ``done`` reaches the total).
    """

    def __init__(
        self,
        total: int,
        label: str,
        stream: TextIO | None = None,
        *,
        unit: str = "offsets",
        redraw_s: float = 0.2,
        plain_every_s: float = 5.0,
    ) -> None:
        self.total = max(total, 0)
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every = redraw_s if self.tty else plain_every_s
        self.started = time.monotonic()
        self._last_shown = float("-inf")
        self._finished = False

    def line(self, done: int, events: int | None = None) -> str:
        """The text shown for ``done`` units and ``events`` events so far (None: the units are the events)."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        done = min(done, self.total)
        fraction = done / self.total if self.total else 1.0
        unit_rate = done / elapsed
        remaining = (self.total - done) / unit_rate if unit_rate > 0 else None
        eta = "--:--" if remaining is None else _clock(remaining)
        filled = int(fraction * BAR_WIDTH)
        bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] " if self.tty else ""
        counted = f"{events} events, {events / elapsed:,.0f} events/s" if events is not None else None
        return (
            f"{self.label}: {bar}{done}/{self.total} {self.unit} ({fraction * 100:.1f}%), "
            f"{counted or f'{unit_rate:,.0f} {self.unit}/s'}, elapsed {_clock(elapsed)}, ETA {eta}"
        )

    def update(self, done: int, events: int | None = None, *, force: bool = False) -> None:
        """Show the progress if it is time to (always with ``force``)."""
        now = time.monotonic()
        if self._finished or (not force and now - self._last_shown < self.every):
            return
        self._last_shown = now
        if self.tty:
            self.stream.write("\r" + self.line(done, events) + "\x1b[K")
        else:
            self.stream.write(self.line(done, events) + "\n")
        self.stream.flush()

    def finish(self, done: int, events: int | None = None) -> None:
        """The last state, on its own line (once)."""
        self.update(done, events, force=True)
        if self._finished:
            return
        self._finished = True
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def track(self, done: int, total: int, events: int | None = None) -> None:
        """A callback's report: ``done`` of ``total`` (which may have grown); finishes when they meet."""
        self.total = max(total, 0)
        if done >= self.total:
            self.finish(done, events)
        else:
            self.update(done, events)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"
