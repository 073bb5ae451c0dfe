"""Progress on stderr for long CLI commands: a bar with a rate on a terminal, periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 30
TTY_INTERVAL_S = 0.2  # redraws of the bar
LINE_INTERVAL_S = 5.0  # lines when stderr is not a terminal (a log file, CI)


class ProgressPrinter:
    """Call with (done, total, items, seconds); ``unit`` names the items counted for the rate."""

    def __init__(self, label: str, unit: str = "events", stream: TextIO | None = None) -> None:
        self.label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = 0.0
        self._finished = False

    def __call__(self, done: int, total: int, items: int, seconds: float) -> None:
        now = time.monotonic()
        finished = done >= total
        if self._finished or (not finished and now - self._last < (TTY_INTERVAL_S if self.tty else LINE_INTERVAL_S)):
            return
        self._finished = finished
        self._last = now
        rate = items / seconds if seconds > 0 else 0.0
        fraction = done / total if total else 1.0
        eta = (seconds / fraction - seconds) if 0 < fraction < 1 else 0.0
        text = f"{self.label}: {done}/{total} ({fraction:.0%}), {items} {self.unit}, {rate:,.0f} {self.unit}/s"
        if not finished:
            text += f", ETA {eta:.0f}s"
        if self.tty:
            filled = int(BAR_WIDTH * fraction)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {text}\x1b[K" + ("\n" if finished else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
