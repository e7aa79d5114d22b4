"""A one-line progress bar on stderr for multi-seed runs.

Wall-clock time appears only here, in what a person watches, never in anything a seed
computes.
"""

from __future__ import annotations

import time
from typing import TextIO

WIDTH = 30


class Progress:
    def __init__(self, total: int, stream: TextIO, *, enabled: bool) -> None:
        self._total = total
        self._stream = stream
        self._enabled = enabled
        self._done = 0
        self._failed = 0
        self._started = time.perf_counter()
        self._shown = 0.0

    def advance(self, failed: bool) -> None:
        self._done += 1
        self._failed += failed
        if not self._enabled:
            return
        now = time.perf_counter()
        if now - self._shown >= 0.1 or self._done == self._total:
            self._shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        filled = WIDTH * self._done // max(self._total, 1)
        bar = "#" * filled + "-" * (WIDTH - filled)
        failed = f", {self._failed} violating" if self._failed else ""
        self._stream.write(
            f"\r[{bar}] {self._done}/{self._total} seeds{failed}, {now - self._started:.0f} s"
        )
        self._stream.flush()

    def close(self) -> None:
        if self._enabled:
            self._stream.write("\n")
            self._stream.flush()
