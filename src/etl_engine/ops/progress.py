"""Progress of a long command on stderr: a redrawn bar on a terminal, plain lines elsewhere.

On a terminal: one line redrawn in place (``\\r`` + erase to end of line) at most ten
times a second, with the count, the rate and the time left. In a pipe, a log file or CI:
no ``\\r`` and no escapes, one ordinary line every ``interval`` seconds and one at the end,
so a log holds a readable history instead of a single line of overprinted bars.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_REDRAW_S = 0.1
_BAR = 24


def eta(seconds: float | None) -> str:
    """``1:05`` / ``1:02:05``; ``-`` while unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """``label`` done/total with rate and ETA. ``tty``: None asks the stream."""

    def __init__(self, label: str, total: int, *, unit: str = "files",
                 stream: TextIO | None = None, tty: bool | None = None,
                 interval: float = 5.0, clock: object = None) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval
        self._clock = clock if callable(clock) else time.monotonic
        self.done = 0
        self.bytes = 0
        self.started = self._clock()
        # when the last line was written: a plain line comes first after one interval
        self._shown = float("-inf") if self.tty else self.started
        self._final = False  # the line saying all is done was written
        self._closed = False

    # --- figures ----------------------------------------------------------------------------
    def rate(self) -> float | None:
        elapsed = self._clock() - self.started
        return self.done / elapsed if elapsed > 0 and self.done else None

    def remaining_s(self) -> float | None:
        rate = self.rate()
        return (self.total - self.done) / rate if rate else None

    def line(self) -> str:
        rate = self.rate()
        pct = 100 * self.done / self.total if self.total else 100.0
        speed = f"{rate:.1f} {self.unit}/s" if rate else f"- {self.unit}/s"
        if self.bytes and rate:
            elapsed = self._clock() - self.started
            speed += f", {self.bytes / elapsed / 1e6:.1f} MB/s"
        left = "done" if self.done >= self.total else f"ETA {eta(self.remaining_s())}"
        head = f"{self.label:>10}"
        if self.tty:
            filled = int(_BAR * self.done / self.total) if self.total else _BAR
            head += f" [{'#' * filled}{'-' * (_BAR - filled)}]"
        return f"{head} {self.done}/{self.total} ({pct:.0f}%)  {speed}  {left}"

    # --- updates ----------------------------------------------------------------------------
    def advance(self, n: int = 1, nbytes: int = 0) -> None:
        self.update(self.done + n, self.bytes + nbytes)

    def update(self, done: int, nbytes: int | None = None) -> None:
        self.done = min(done, self.total) if self.total else done
        if nbytes is not None:
            self.bytes = nbytes
        now = self._clock()
        due = _REDRAW_S if self.tty else self.interval
        if self.done >= self.total:
            if not self._final:
                self._final = True
                self._show(now)
        elif now - self._shown >= due:
            self._show(now)

    def _show(self, now: float) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._shown = now

    def close(self) -> None:
        """The final state, and on a terminal the line ended."""
        if self._closed:
            return
        self._closed = True
        if self.tty:
            self._show(self._clock())
            self.stream.write("\n")
            self.stream.flush()
        elif not self._final:
            self._show(self._clock())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
