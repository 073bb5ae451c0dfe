"""Progress of a long run (a rebuild, a replay) on stderr: a bar on a terminal, plain lines otherwise.

On a TTY the bar is redrawn in place (``\\r``) at most ``redraw_s`` apart; when stderr is a file or a
pipe (CI logs, `make run`'s log), one plain line is written every ``plain_every_s`` instead, so a log
is not flooded with redraws yet still shows that the run is alive.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 30


class Progress:
    """Reports ``done`` out of ``total`` units and a count of events, with events/s and an ETA."""

    def __init__(
        self,
        total: int,
        label: str,
        stream: TextIO | None = None,
        *,
        redraw_s: float = 0.2,
        plain_every_s: float = 5.0,
    ) -> None:
        self.total = max(total, 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every = redraw_s if self.tty else plain_every_s
        self.started = time.monotonic()
        self._last_shown = float("-inf")

    def line(self, done: int, events: int) -> str:
        """The text shown for ``done`` units and ``events`` events so far."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        done = min(done, self.total)
        fraction = done / self.total if self.total else 1.0
        rate = events / elapsed
        unit_rate = done / elapsed
        remaining = (self.total - done) / unit_rate if unit_rate > 0 else None
        eta = "--:--" if remaining is None else _clock(remaining)
        filled = int(fraction * BAR_WIDTH)
        bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] " if self.tty else ""
        return (
            f"{self.label}: {bar}{fraction * 100:5.1f}% {done}/{self.total} offsets, {events} events,"
            f" {rate:,.0f} events/s, elapsed {_clock(elapsed)}, ETA {eta}"
        )

    def update(self, done: int, events: int, *, force: bool = False) -> None:
        """Show the progress if it is time to (always with ``force``)."""
        now = time.monotonic()
        if not force and now - self._last_shown < self.every:
            return
        self._last_shown = now
        if self.tty:
            self.stream.write("\r" + self.line(done, events) + "\x1b[K")
        else:
            self.stream.write(self.line(done, events) + "\n")
        self.stream.flush()

    def finish(self, done: int, events: int) -> None:
        """The last state, on its own line."""
        self.update(done, events, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"
