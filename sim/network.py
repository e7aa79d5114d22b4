"""The simulated network: per-link latency, and the faults that are active right now.

Every message goes through ``transit``, which answers how long each delivered copy takes (none
when it is lost or the link is cut). Impairments (loss, duplication, reordering, long delays)
apply to the links touching a chosen set of endpoints; cuts (partitions) only ever apply
between nodes, never to the store, as the database is reached by another path.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from math import log

Link = tuple[str, str]


@dataclass(frozen=True)
class Impairment:
    """One active network fault: what it does, and which endpoints' links it touches."""

    endpoints: frozenset[str]
    loss: float = 0.0  # probability a copy is dropped
    dup: float = 0.0  # probability of a second copy
    reorder: float = 0.0  # probability of an extra delay in [0, reorder_max]
    reorder_max: float = 0.0
    delay: float = 0.0  # probability of a long delay in [delay_min, delay_max]
    delay_min: float = 0.0
    delay_max: float = 0.0


@dataclass
class _LinkState:
    base: float  # this link's usual one-way latency, seconds
    cuts: int = 0  # the partitions cutting it now: cut while any does
    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    reorder_max: float = 0.0
    delay: float = 0.0
    delay_min: float = 0.0
    delay_max: float = 0.0
    impaired: bool = False  # any of the above: most messages take a link that is not


#: Usual one-way latency range of a link, and the mean of the jitter on top of it.
BASE_LATENCY = (0.001, 0.020)
JITTER = 0.001
_JITTER_RATE = 1 / JITTER


class Network:
    def __init__(self, endpoints: list[str], rng: random.Random) -> None:
        self._rng = rng
        self._links = {
            (a, b): _LinkState(rng.uniform(*BASE_LATENCY))
            for a in endpoints
            for b in endpoints
            if a != b
        }
        self._impairments: list[Impairment] = []
        #: The same links by source, then destination: ``transit`` runs for every message,
        #: and two lookups by string cost less than building and hashing a tuple key.
        self._from: dict[str, dict[str, _LinkState]] = {a: {} for a in endpoints}
        for (a, b), link in self._links.items():
            self._from[a][b] = link

    def transit(self, src: str, dst: str, rng: random.Random | None = None) -> list[float]:
        """The delay of each copy of one message from ``src`` to ``dst`` that arrives.

        ``rng``: the stream to draw from instead of the network's own (task traffic has its
        own, so that tasks leave the lease traffic's draws as they were)."""
        link = self._from[src][dst]
        if link.cuts:
            return []
        rng = rng or self._rng
        if not link.impaired:  # the draw below, without the impairments' tests
            return [link.base + -log(1.0 - rng.random()) / _JITTER_RATE]
        if link.loss and rng.random() < link.loss:
            return []
        # rng.expovariate(1 / JITTER) written out, the same draw and arithmetic
        # (tests/sim/test_speed.py checks they agree): one call fewer per message.
        delay = link.base + -log(1.0 - rng.random()) / _JITTER_RATE
        if link.reorder and rng.random() < link.reorder:
            delay += rng.uniform(0.0, link.reorder_max)
        if link.delay and rng.random() < link.delay:
            delay += rng.uniform(link.delay_min, link.delay_max)
        if link.dup and rng.random() < link.dup:
            return [delay, delay + rng.uniform(0.0, 0.05)]
        return [delay]

    # -- partitions -------------------------------------------------------------------------

    def cut(self, links: list[Link]) -> None:
        for link in links:
            self._links[link].cuts += 1

    def mend(self, links: list[Link]) -> None:
        for link in links:
            self._links[link].cuts -= 1

    def connected(self, src: str, dst: str) -> bool:
        return not self._links[(src, dst)].cuts

    # -- impairments ------------------------------------------------------------------------

    def impair(self, impairment: Impairment) -> None:
        self._impairments.append(impairment)
        self._recompute()

    def restore(self, impairment: Impairment) -> None:
        self._impairments.remove(impairment)
        self._recompute()

    def heal(self) -> None:
        """Every fault over: no cuts, no impairments."""
        for link in self._links.values():
            link.cuts = 0
        self._impairments.clear()
        self._recompute()

    def _recompute(self) -> None:
        # Overlapping faults combine: independent losses multiply, the worst delay wins.
        for (src, dst), link in self._links.items():
            keep = 1.0
            single = 1.0
            link.reorder = link.reorder_max = link.delay = link.delay_min = link.delay_max = 0.0
            for imp in self._impairments:
                if src not in imp.endpoints and dst not in imp.endpoints:
                    continue
                keep *= 1 - imp.loss
                single *= 1 - imp.dup
                if imp.reorder > link.reorder:
                    link.reorder, link.reorder_max = imp.reorder, imp.reorder_max
                if imp.delay > link.delay:
                    link.delay, link.delay_min, link.delay_max = (
                        imp.delay,
                        imp.delay_min,
                        imp.delay_max,
                    )
            link.loss = 1 - keep
            link.dup = 1 - single
            link.impaired = bool(link.loss or link.dup or link.reorder or link.delay)
