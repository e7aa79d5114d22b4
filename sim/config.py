"""What one simulation run is made of: the cluster, the protocol settings and the faults.

A ``SimConfig`` is everything that, together with a seed, decides a run: two runs with equal
configs and seeds replay the same trace. The CLI builds it from flags and turns it back into
flags for the replay command, so every field here has a flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from brio.core.constants import WITNESS_ID
from brio.core.lease import LeaseSettings, SafetyKnobs
from brio.core.membership import DetectorSettings
from brio.core.witness import WitnessKnobs


class Fault(StrEnum):
    LOSS = "loss"  # messages dropped on some links
    DUP = "dup"  # messages delivered twice (a retried call)
    REORDER = "reorder"  # extra random delay, so later messages overtake earlier ones
    DELAY = "delay"  # long delays, often past the caller's RPC timeout
    PARTITION = "partition"  # the nodes split in two groups, both directions cut
    ONEWAY = "oneway"  # links from one group to the other cut, the way back open
    ISOLATE = "isolate"  # the current primary cut off from every other node
    DRIFT = "drift"  # clock rates at the very edges of the max_clock_drift bound
    DRIFT_BEYOND = "drift-beyond"  # clock rates further apart than the bound allows
    CRASH = "crash"  # a node dies (memory lost, persisted vote kept) and restarts later
    DISK_LOSS = "disk-loss"  # a crash that loses the persisted vote too (a wiped data dir)
    PAUSE = "pause"  # a node stops (GC, SIGSTOP) while time goes on, then acts on stale beliefs
    STOP = "stop"  # a graceful stop (SIGTERM) of the primary: it hands the lease over, exits


#: ``drift-beyond`` breaks the protocol's stated assumption, so it is only run when asked;
#: ``stop`` (a graceful stop, not a fault) only when asked too, so that the default mix's
#: seeds replay as before it existed (CI runs it in shapes of its own: tests/sim/test_ci.py).
DEFAULT_FAULTS: tuple[Fault, ...] = tuple(
    f for f in Fault if f not in (Fault.DRIFT_BEYOND, Fault.STOP)
)


class Unsafe(StrEnum):
    """The test-only switches of ``brio.core.lease.SafetyKnobs``, as the CLI names them, and
    the simulator's own two for tasks (the rules live in the store's SQL, here in
    ``sim.store.Tasks``)."""

    NO_VOTE_PERSISTENCE = "no-vote-persistence"
    NO_DRIFT_MARGIN = "no-drift-margin"
    NO_RESTART_WAIT = "no-restart-wait"
    NO_FENCE_CHECK = "no-fence-check"
    NO_AMNESIA_GUARD = "no-amnesia-guard"
    #: a result is recorded without ``AND attempt = $2``: a stale execution's result lands
    NO_ATTEMPT_CHECK = "no-attempt-check"
    #: a batch of assignments lands whatever the fence holds (the requeue stays fenced)
    NO_ASSIGN_FENCE = "no-assign-fence"
    #: the store's witness votes while it promised another (``WitnessKnobs.keep_promise``)
    WITNESS_BREAKS_PROMISE = "witness-breaks-promise"


def knobs_for(unsafe: frozenset[Unsafe]) -> SafetyKnobs:
    return SafetyKnobs(
        persist_votes=Unsafe.NO_VOTE_PERSISTENCE not in unsafe,
        drift_margin=Unsafe.NO_DRIFT_MARGIN not in unsafe,
        restart_wait=Unsafe.NO_RESTART_WAIT not in unsafe,
        fence_check=Unsafe.NO_FENCE_CHECK not in unsafe,
        amnesia_guard=Unsafe.NO_AMNESIA_GUARD not in unsafe,
    )


# Production's failure detector runs every 30 s; the simulator runs it 30 times faster so that
# a two-minute run sees peers fail and come back many times. The degraded threshold is a
# network property, not a timing, so it stays as in production.
DETECTOR = DetectorSettings(
    heartbeat_interval=1.0,
    heartbeat_timeout=0.4,
    suspicion_threshold=3,
    auto_remove_failed=True,
    remove_delay=10.0,
    degraded_latency=0.25,
)


#: The default event budget, per node and simulated second.
EVENTS_PER_NODE_SECOND = 1000

# Tasks. The placer and the supervisor poll as in production (1 s); a run takes a seeded
# 0.1-1.5 s of the worker's clock; the placer reads 8 queued tasks per round, so that a
# backlog takes several rounds, each right after the last (a full batch), as in ``Placer``.
PLACER_POLL = 1.0
WORKER_POLL = 1.0
TASK_RUN = (0.1, 1.5)
TASK_BATCH = 8


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 5
    coordinators: int = 3
    duration: float = 120.0  # simulated seconds, the fault-free heal window included
    faults: tuple[Fault, ...] = DEFAULT_FAULTS
    #: Production's defaults ([mesh.lease] in brio.config.model; test_production_timings.py checks
    #: that they agree), so that the default shape runs the timings that ship.
    lease_duration: float = 1.2
    election_timeout: tuple[float, float] = (0.1, 0.3)
    max_clock_drift: float = 0.05
    unsafe: frozenset[Unsafe] = field(default_factory=frozenset)
    #: Events one seed may take before it is stopped as a livelock (``event-budget``);
    #: None: ``EVENTS_PER_NODE_SECOND`` per node and simulated second (see ``event_budget``).
    max_events: int | None = None
    #: Tasks submitted per simulated second over the faulty part of the run (0: no tasks).
    task_rate: float = 2.0
    #: Agent slots per node (its ``max_agents``), the scheduler's capacity.
    task_capacity: int = 2
    #: The store votes too (``brio.core.witness``): the voters are the nodes and ``@store``.
    #: With faults, the run then also cuts one coordinator at a time off from the store
    #: (``store-cut``, on a schedule of its own: ``sim.world``).
    witness: bool = False

    @property
    def event_budget(self) -> int:
        """A normal seed takes about 26 events per node and simulated second (about 15,800
        for seed 0 of the default 5 nodes over 120 s with tasks, at the 1.2 s lease, as of
        2026-12-04; 12,300 at the 3 s one); the default budget is about 38 times that."""
        if self.max_events is not None:
            return self.max_events
        return math.ceil(EVENTS_PER_NODE_SECOND * self.nodes * self.duration)

    @property
    def lease(self) -> LeaseSettings:
        return LeaseSettings(self.lease_duration, self.election_timeout, self.max_clock_drift)

    @property
    def knobs(self) -> SafetyKnobs:
        return knobs_for(self.unsafe)

    @property
    def witness_knobs(self) -> WitnessKnobs:
        return WitnessKnobs(keep_promise=Unsafe.WITNESS_BREAKS_PROMISE not in self.unsafe)

    @property
    def voters(self) -> tuple[str, ...]:
        """Every node, and the store's witness with ``witness``."""
        return (*self.node_ids, WITNESS_ID) if self.witness else self.node_ids

    @property
    def detector(self) -> DetectorSettings:
        return DETECTOR

    @property
    def node_ids(self) -> tuple[str, ...]:
        """``c1..cK`` are the candidates (coordinators), ``w1..`` the other voters."""
        coordinators = [f"c{i}" for i in range(1, self.coordinators + 1)]
        workers = [f"w{i}" for i in range(1, self.nodes - self.coordinators + 1)]
        return (*coordinators, *workers)

    @property
    def rpc_timeout(self) -> float:
        """The lease driver's unary call timeout: a reply after it is dropped."""
        return self.lease_duration / 3

    @property
    def write_interval(self) -> float:
        """How often the primary's work writes to the store."""
        return self.lease.renew_interval / 2

    @property
    def write_margin(self) -> float:
        """The primary stops writing this long (local clock) before its lease ends, as the
        driver's ``primary`` nursery has its cancel deadline before the lease runs out
        (``brio.mesh.lease``: 5 % of the lease, at most half a second)."""
        return min(0.05 * self.lease_duration, 0.5)

    @property
    def rate_spread(self) -> float:
        """δ such that clock rates in [1-δ, 1+δ] keep max/min rate within 1/(1-ε)."""
        eps = self.max_clock_drift
        return eps / (2 - eps)

    @property
    def primary_bound(self) -> float:
        """After the faults heal, a primary must have raised the fence within this long.

        Stale promises and restarted voters' waits take up to one lease, a candidate's timer
        can stand a lease plus a timeout further out, and split votes or an unlucky pre-vote
        cost a few more timeouts; all by local clocks, which may run slow by δ.
        """
        high = self.election_timeout[1]
        local = 2 * self.lease_duration + 3 * high
        return local / (1 - self.rate_spread) + 1.0

    @property
    def membership_bound(self) -> float:
        """After the faults heal, every node must see every other healthy within this long:
        one probe round plus a few answers to pull a smoothed latency back under the limit."""
        return 5 * DETECTOR.heartbeat_interval / (1 - self.rate_spread) + 1.0

    @property
    def tasks(self) -> bool:
        return self.task_rate > 0

    @property
    def attempt_check(self) -> bool:
        return Unsafe.NO_ATTEMPT_CHECK not in self.unsafe

    @property
    def assign_fence(self) -> bool:
        return Unsafe.NO_ASSIGN_FENCE not in self.unsafe

    @property
    def in_flight(self) -> int:
        """The clients keep at most this many tasks unfinished (half the cluster's slots): a
        backlog, and so the time to drain it after the heal, stays bounded."""
        return max(1, self.nodes * self.task_capacity // 2)

    @property
    def task_bound(self) -> float:
        """After the faults heal, every task must have finished within this long.

        A fenced primary and everyone healthy come first (their own bounds, in parallel); then
        the backlog (at most ``in_flight`` tasks) drains in waves of a placement round (poll),
        a notice, a run and the result: as many waves as one node's slots take to run all of
        it (pins and sticky sessions may send every task to one node), plus one for the tasks
        requeued from nodes that were down.
        """
        wave = (PLACER_POLL + TASK_RUN[1]) / (1 - self.rate_spread) + 4 * 0.05
        waves = math.ceil(self.in_flight / self.task_capacity) + 1
        return max(self.primary_bound, self.membership_bound) + waves * wave + 1.0

    @property
    def heal_window(self) -> float:
        """The fault-free, fully connected tail of every run, where liveness is checked."""
        bounds = [self.primary_bound, self.membership_bound]
        if self.tasks:
            bounds.append(self.task_bound)
        return math.ceil(max(bounds) + 2.0)

    @property
    def fault_end(self) -> float:
        return self.duration - self.heal_window
