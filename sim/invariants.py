"""The safety invariants, checked as the world runs; the first violation stops the seed.

1. ``two-primaries``: never two nodes whose core says PRIMARY with leases unexpired in true time.
2. ``epoch-reused``: at most one node ever becomes primary for a given epoch.
3. ``double-vote``: a voter never grants its (non-pre-)vote to two candidates in one term, its
   restarts included: the record lives here, not in the node that forgets.
4. ``stale-write``: the store's accepted epochs (fence raises and writes) never go down.

Liveness (``liveness-primary``, ``liveness-membership``) is judged by the world after the
faults heal, and reported the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.store import Accepted

#: The invariants judged only after the heal, on seeds that ran to the end.
LIVENESS = frozenset({"liveness-primary", "liveness-membership"})


@dataclass(frozen=True)
class Violation:
    invariant: str
    time: float  # true time
    detail: str


@dataclass(frozen=True)
class Holder:
    """A node that believes it is primary, and its lease converted to true time."""

    node: str
    epoch: int
    until: float


class Checker:
    def __init__(self) -> None:
        self.violation: Violation | None = None
        self._primary_of: dict[int, str] = {}
        self._votes: dict[tuple[str, int], str] = {}
        self._store_epoch = 0

    def _fail(self, invariant: str, time: float, detail: str) -> None:
        if self.violation is None:
            self.violation = Violation(invariant, time, detail)

    def primaries(self, now: float, holders: list[Holder]) -> None:
        valid = [h for h in holders if h.until > now]
        if len(valid) >= 2:
            a, b = sorted(valid, key=lambda h: (h.epoch, h.node))[:2]
            self._fail(
                "two-primaries",
                now,
                f"{a.node} (epoch {a.epoch}, lease until {a.until:.6f}) and "
                f"{b.node} (epoch {b.epoch}, lease until {b.until:.6f}) both hold the lease",
            )

    def became_primary(self, now: float, node: str, epoch: int) -> None:
        first = self._primary_of.setdefault(epoch, node)
        if first != node:
            self._fail(
                "epoch-reused",
                now,
                f"{node} became primary for epoch {epoch}, which {first} already held",
            )

    def voted(self, now: float, voter: str, term: int, candidate: str) -> None:
        first = self._votes.setdefault((voter, term), candidate)
        if first != candidate:
            self._fail(
                "double-vote",
                now,
                f"{voter} voted for {candidate} in term {term}, having voted for {first}",
            )

    def store_accepted(self, entry: Accepted) -> None:
        if entry.epoch < self._store_epoch:
            self._fail(
                "stale-write",
                entry.time,
                f"the store accepted a {entry.kind} by {entry.node} under epoch {entry.epoch} "
                f"after accepting epoch {self._store_epoch}",
            )
        self._store_epoch = max(self._store_epoch, entry.epoch)

    def liveness(self, now: float, invariant: str, detail: str) -> None:
        self._fail(invariant, now, detail)
