"""A node's clock: local = offset + rate * true time, with a rate that faults may change.

The cores only ever see local time, as a real node only sees its monotonic clock. The
simulator keeps true time to order events and to judge safety (two leases overlapping in true
time), and converts both ways here.
"""

from __future__ import annotations

import math


class Clock:
    def __init__(self, offset: float, rate: float) -> None:
        self.offset = offset
        self.rate = rate

    def local(self, true_time: float) -> float:
        return self.offset + self.rate * true_time

    def true_at(self, local_time: float) -> float:
        """The earliest true time at which this clock reads at least ``local_time``."""
        offset, rate = self.offset, self.rate
        t = (local_time - offset) / rate
        if offset + rate * t >= local_time:  # the usual case, without a call per check
            return t
        # Rounding may land a hair early; a timer firing early would tick for nothing forever.
        while self.local(t) < local_time:
            t = math.nextafter(t, math.inf)
        return t

    def set_rate(self, true_time: float, rate: float) -> None:
        """Change speed at ``true_time`` without a jump: the clock stays continuous."""
        now = self.local(true_time)
        self.rate = rate
        self.offset = now - rate * true_time
