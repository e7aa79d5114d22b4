"""What one seed's run measured, and the failover clock behind its headline figure.

Failover time is true time from the loss of the primary (it crashed, froze, or was cut off
from a majority) to the next node becoming primary. A loss the primary rides out (a short
pause or partition, after which it simply renews its lease) is not a failover and is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.invariants import Violation


@dataclass(frozen=True)
class _Loss:
    time: float  # true time of the loss
    node: str
    epoch: int
    local: float  # the lost primary's clock then


class Failovers:
    def __init__(self) -> None:
        self.samples: list[float] = []
        self._pending: _Loss | None = None

    def lost(self, now: float, node: str, epoch: int, local: float) -> None:
        if self._pending is None:  # overlapping faults: the first loss starts the clock
            self._pending = _Loss(now, node, epoch, local)

    def became_primary(self, now: float) -> None:
        if self._pending is not None:
            self.samples.append(now - self._pending.time)
            self._pending = None

    def renewed(self, node: str, epoch: int, round_start: float) -> None:
        """The lost primary renewed with a round it began after the loss: it rode it out."""
        loss = self._pending
        if loss and (loss.node, loss.epoch) == (node, epoch) and round_start > loss.local:
            self._pending = None


class Transfers:
    """Handovers (``stop``): true time from the primary's ``transfer`` to the next node
    becoming primary, whoever it is and however long it takes."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._since: float | None = None

    def started(self, now: float) -> None:
        if self._since is None:
            self._since = now

    def became_primary(self, now: float) -> None:
        if self._since is not None:
            self.samples.append(now - self._since)
            self._since = None


@dataclass(frozen=True)
class SeedResult:
    seed: int
    violation: Violation | None
    faults: dict[str, int]  # episodes started, per kind
    elections: int  # times any node became primary
    failovers: tuple[float, ...]
    writes: int  # writes the store accepted
    events: int
    simulated: float  # true seconds simulated (short of the duration if a violation stopped it)
    primary_after_heal: float | None  # seconds from the heal to a fenced primary
    members_after_heal: float | None  # seconds from the heal to everyone seeing everyone healthy
    trace: tuple[str, ...]  # all of it with --trace; the tail when a violation stopped it
    tasks_submitted: int = 0  # client submissions (acknowledged or not)
    tasks_acked: int = 0  # acknowledged: the store held them
    tasks_completed: int = 0  # results recorded
    executions: int = 0  # claims into running: a task run more than once counts each time
    redistributed: int = 0  # tasks the primary put back from nodes that were down
    restart_requeued: int = 0  # tasks a worker put back at its start, from its previous life
    placement: tuple[float, ...] = ()  # queued -> assigned, true seconds
    tasks_after_heal: float | None = None  # seconds from the heal to every task finished
    transfers: tuple[float, ...] = ()  # handovers of a stopped primary, true seconds
