"""The readable event trace: one line per thing that happened, in true-time order.

Lines are plain text built only from simulated values (fixed precision, sorted collections),
so a seed's trace is the same bytes in every process. Without ``--trace`` only the last lines
are kept, enough to show how a violation came about.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

#: How many lines a violation shows when the whole trace was not asked for.
TAIL = 200

#: A line's text, or what writes it when it is shown (from values that never change: frozen
#: messages, strings, numbers), for the lines written often and seldom read.
Text = str | Callable[[], str]


class Trace:
    """The lines are kept as their parts and formatted only when asked for: most seeds never
    show theirs, and formatting every line cost more than keeping it."""

    def __init__(self, keep_all: bool) -> None:
        self._lines: deque[tuple[float, str, Text]] = deque(maxlen=None if keep_all else TAIL)
        #: Keeps one line, ``(time, who, text)``: the world calls it straight for each line
        #: (a call fewer than ``add`` for every message traced).
        self.append = self._lines.append

    def add(self, time: float, who: str, text: Text) -> None:
        self._lines.append((time, who, text))

    def lines(self) -> list[str]:
        return [
            f"{time:11.6f}  {who:<5}  {text if isinstance(text, str) else text()}"
            for time, who, text in self._lines
        ]
