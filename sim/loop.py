"""The discrete-event loop: virtual true time and a heap of things due to happen.

Ties are broken by the order of scheduling, never by comparing the events, so the order of
everything is a function of the seed alone. An event may name the node it belongs to, so that
the world can hold it while that node is paused.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

Action = Callable[[], None]
Entry = tuple[float, int, str | None, Action]


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[Entry] = []
        self._seq = 0

    def at(self, time: float, action: Action, node: str | None = None) -> None:
        """Run ``action`` at true ``time`` (never in the past)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(time, self.now), self._seq, node, action))

    def after(self, delay: float, action: Action, node: str | None = None) -> None:
        self.at(self.now + delay, action, node)

    def pop(self, until: float) -> tuple[str | None, Action] | None:
        """The next event due at or before ``until``, with the clock moved to it."""
        if not self._heap or self._heap[0][0] > until:
            return None
        time, _, node, action = heapq.heappop(self._heap)
        self.now = time
        return node, action
