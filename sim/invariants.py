"""The safety invariants, checked as the world runs; the first violation stops the seed.

1. ``two-primaries``: never two nodes whose core says PRIMARY with leases unexpired in true time.
2. ``epoch-reused``: at most one node ever becomes primary for a given epoch.
3. ``double-vote``: a voter never grants its (non-pre-)vote to two candidates in one term, its
   restarts included: the record lives here, not in the node that forgets.
4. ``stale-write``: the store's accepted epochs (fence raises and writes) never go down.

Tasks, checked as the store changes (the only place they can go wrong):

5. ``task-lost``: a task acknowledged to its client is in the store (the API answers 202 only
   once the row is committed; the store model never deletes one).
6. ``completed-twice``: no task has two results recorded.
7. ``stale-result``: no result is recorded for an attempt other than the task's current one
   (an execution the store had already taken back: a paused or cut-off worker's).
8. ``stale-assignment``: no assignment (nor requeue) lands under an epoch older than the fence.
9. ``over-capacity``: after an assignment lands, no node holds more assigned and running
   tasks, in the store, than its slots.

A node that lost its disk (``disk-loss``) has forgotten its votes, and may give a vote again in
a term it voted in before, harmlessly when that earlier vote cannot count any more. Across a
lost disk, ``double-vote`` is a vote for another candidate in a term that the candidate of the
lost vote won: the very vote that mattered, given twice.

A seed that runs past ``max_events`` events is stopped as ``event-budget``: a livelock (events
that keep scheduling events without the clock getting anywhere) is reported like a violation,
with its replay, instead of running forever.

Liveness (``liveness-primary``, ``liveness-membership``) is judged by the world after the
faults heal, and reported the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.store import Accepted, Completion

#: The invariants judged only after the heal, on seeds that ran to the end.
LIVENESS = frozenset({"liveness-primary", "liveness-membership", "liveness-tasks"})
#: A seed stopped for running past its event budget: neither safe nor unsafe, but reported.
BUDGET = "event-budget"


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
        self._votes: dict[tuple[str, int, int], str] = {}  # (voter, disk, term) -> candidate
        self._lost: dict[tuple[str, int], list[tuple[int, str]]] = {}  # (voter, term) -> votes
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
        for (voter, term), votes in self._lost.items():
            if term == epoch:
                for disk, lost_for in votes:
                    if lost_for == node and any(d > disk and c != node for d, c in votes):
                        self._fail(
                            "double-vote",
                            now,
                            f"{node} became primary for epoch {epoch} with a vote {voter} "
                            "lost with its disk, and gave again to another",
                        )

    def voted(self, now: float, voter: str, term: int, candidate: str, disk: int = 0) -> None:
        """``voter`` granted ``candidate`` its vote in ``term``, with its ``disk``-th disk."""
        first = self._votes.setdefault((voter, disk, term), candidate)
        if first != candidate:
            self._fail(
                "double-vote",
                now,
                f"{voter} voted for {candidate} in term {term}, having voted for {first}",
            )
        votes = self._lost.setdefault((voter, term), [])
        winner = self._primary_of.get(term)
        for earlier, lost_for in votes:
            if earlier < disk and lost_for != candidate and lost_for == winner:
                self._fail(
                    "double-vote",
                    now,
                    f"{voter} voted for {candidate} in term {term} after losing its disk, "
                    f"having voted for {lost_for}, primary of that term",
                )
        if (disk, candidate) not in votes:
            votes.append((disk, candidate))

    def livelock(self, now: float, events: int, duration: float) -> None:
        self._fail(
            BUDGET,
            now,
            f"the seed used up its budget of {events} events {now:.6f} s into its {duration:g} s: "
            "a livelock? (--max-events sets the budget)",
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

    # ---------------------------------------------------------------- tasks

    def task_lost(self, now: float, detail: str) -> None:
        self._fail("task-lost", now, detail)

    def task_write(self, now: float, node: str, kind: str, epoch: int, fence: int) -> None:
        """An assignment or a requeue landed under ``epoch`` while the fence was ``fence``."""
        if epoch < fence:
            self._fail(
                "stale-assignment",
                now,
                f"the store took an {kind} by {node} under epoch {epoch}, the fence at {fence}",
            )

    def capacity(self, now: float, node: str, load: int, slots: int) -> None:
        if load > slots:
            self._fail(
                "over-capacity",
                now,
                f"{node} holds {load} assigned and running tasks in the store, with {slots} slots",
            )

    def completed(self, done: Completion, times: int) -> None:
        if times > 1:
            self._fail(
                "completed-twice",
                done.time,
                f"{done.task_id} has {times} results recorded, the last by {done.node}",
            )
        if done.attempt != done.current:
            self._fail(
                "stale-result",
                done.time,
                f"the store recorded {done.node}'s result of {done.task_id} attempt "
                f"{done.attempt}, while the task is at attempt {done.current}",
            )
