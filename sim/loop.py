"""The discrete-event loop: virtual true time and a heap of things due to happen.

Ties are broken by the order of scheduling, never by comparing the events, so the order of
everything is a function of the seed alone. An event may name the node it belongs to, so that
the world can hold it while that node is paused.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from itertools import count

Action = Callable[[], None]
Entry = tuple[float, int, str | None, Action]


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        #: The entries, a heap; ``World`` pops it directly in its event loop (as ``pop`` does).
        self.heap: list[Entry] = []
        #: The tie-breaker of each entry pushed (``next`` of it is cheaper than a counter
        #: kept in an attribute).
        self.seq = count(1)

    def at(self, time: float, action: Action, node: str | None = None) -> None:
        """Run ``action`` at true ``time`` (never in the past)."""
        now = self.now
        heappush(self.heap, (now if now > time else time, next(self.seq), node, action))

    def after(self, delay: float, action: Action, node: str | None = None) -> None:
        """``at(now + delay)``, written out: it is called for every message."""
        now = self.now
        time = now + delay
        heappush(self.heap, (now if now > time else time, next(self.seq), node, action))

    def pop(self, until: float) -> tuple[str | None, Action] | None:
        """The next event due at or before ``until``, with the clock moved to it."""
        if not self.heap or self.heap[0][0] > until:
            return None
        time, _, node, action = heappop(self.heap)
        self.now = time
        return node, action
