"""The failure detector and membership table as a pure state machine.

One row per address we dial. Only our own probes move a row's state: an answer makes it
healthy (or degraded when the smoothed round trip is slow), a run of misses makes it suspected
and then failed, and a peer failed for ``remove_delay`` is removed from the pool. Inbound
heartbeats only refresh what we know about a node (and introduce nodes that dialled us first):
letting them move states too would make a peer flap under one-way packet loss.

The driver tells the table what happened, with the time as ``now`` (monotonic seconds), and
gets back the state changes to log and act on. Time never runs backwards inside the table: a
``now`` older than one already seen is taken as the latest seen, so rows never claim a future.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum


class PeerState(StrEnum):
    UNKNOWN = "unknown"  # never answered a heartbeat of ours yet
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # answering, but smoothed latency > settings.degraded_latency
    SUSPECTED = "suspected"  # missed >= 1 heartbeat, fewer than suspicion_threshold in a row
    FAILED = "failed"  # missed >= suspicion_threshold consecutive heartbeats
    REMOVED = "removed"  # failed for remove_delay seconds with auto_remove_failed


UNKNOWN, HEALTHY, DEGRADED = PeerState.UNKNOWN, PeerState.HEALTHY, PeerState.DEGRADED
SUSPECTED, FAILED, REMOVED = PeerState.SUSPECTED, PeerState.FAILED, PeerState.REMOVED

# Every state change the table makes, spelled out. An answer leads to HEALTHY or DEGRADED; a
# miss to SUSPECTED or FAILED; only time (tick) leads to REMOVED. UNKNOWN is never re-entered:
# a peer we cannot suspect is one that never lived.
_ALLOWED: dict[PeerState, frozenset[PeerState]] = {
    UNKNOWN: frozenset({HEALTHY, DEGRADED}),
    HEALTHY: frozenset({DEGRADED, SUSPECTED, FAILED}),
    DEGRADED: frozenset({HEALTHY, SUSPECTED, FAILED}),
    SUSPECTED: frozenset({HEALTHY, DEGRADED, FAILED}),
    FAILED: frozenset({HEALTHY, DEGRADED, REMOVED}),
    REMOVED: frozenset({HEALTHY, DEGRADED}),
}

_ANSWERING = frozenset({HEALTHY, DEGRADED})


def _after_answer(slow: bool) -> PeerState:
    """Any answer, whatever came before, means the peer is alive now."""
    return DEGRADED if slow else HEALTHY


def _after_miss(state: PeerState, missed: int, threshold: int) -> PeerState:
    """Misses only count against a peer that once answered; failed or removed ones stay."""
    if state in (UNKNOWN, FAILED, REMOVED):
        return state
    return FAILED if missed >= threshold else SUSPECTED


@dataclass(frozen=True)
class DetectorSettings:
    heartbeat_interval: float
    heartbeat_timeout: float
    suspicion_threshold: int
    auto_remove_failed: bool
    remove_delay: float
    degraded_latency: float
    latency_alpha: float = 0.3  # EWMA weight of the newest sample

    def __post_init__(self) -> None:
        # The config layer validates these for operators; this guards the simulator and tests.
        if self.suspicion_threshold < 1:
            raise ValueError(f"suspicion_threshold must be >= 1, got {self.suspicion_threshold}")
        if not 0.0 < self.latency_alpha <= 1.0:
            raise ValueError(f"latency_alpha must be in (0, 1], got {self.latency_alpha}")
        if self.remove_delay < 0:
            raise ValueError(f"remove_delay must be >= 0, got {self.remove_delay}")


@dataclass(frozen=True)
class NodeFacts:
    """What a heartbeat says about a node, in either direction."""

    node_id: str
    role: str  # "coordinator" | "worker"
    address: str  # host:port it is dialled at
    version: str
    agents: tuple[str, ...]
    active: int
    queued: int
    max_agents: int
    draining: bool


@dataclass(frozen=True)
class Peer:
    """An immutable snapshot of one row of the table."""

    address: str  # the key: the host:port we dial
    node_id: str | None  # None until learned from a heartbeat (or given by config)
    role: str | None
    state: PeerState
    state_since: float
    last_seen: float | None  # last time it answered us
    latency: float | None  # smoothed round trip, seconds
    missed: int  # consecutive missed heartbeats
    facts: NodeFacts | None  # latest facts from its answers or its own inbound heartbeats
    static: bool  # configured (not discovered): never forgotten by `drop`


def _with(row: Peer, **changes: object) -> Peer:
    """``dataclasses.replace(row, **changes)`` for the fields named, without replace's
    introspection or the frozen ``__init__``'s ``object.__setattr__`` per field: a row is
    rebuilt for every heartbeat, and those were most of what that cost. The copy is a ``Peer``
    like any other (equal, hashable, frozen); only the way it is filled differs."""
    new = object.__new__(Peer)
    fields = new.__dict__
    fields.update(row.__dict__)
    fields.update(changes)
    return new


@dataclass(frozen=True)
class StateChanged:
    address: str
    node_id: str | None
    old: PeerState | None  # None: the peer was just added
    new: PeerState | None  # None: the peer was forgotten
    reason: str


Change = StateChanged


def _duration(seconds: float) -> str:
    """Short human form, three significant digits: '17.5 ms', '250 ms', '2.5 s', '300 s'."""
    ms = seconds * 1000.0
    if ms < 1.0:
        return f"{ms:.3f}".rstrip("0").rstrip(".") + " ms"
    if ms < 999.5:
        return f"{ms:.3g} ms"
    if seconds < 999.5:
        return f"{seconds:.3g} s"
    return f"{seconds:.0f} s"


def _heartbeats(n: int) -> str:
    return "1 heartbeat" if n == 1 else f"{n} heartbeats"


class Membership:
    """The peers of one node and what our heartbeats say about each of them."""

    def __init__(
        self, local_id: str, settings: DetectorSettings, *, local_address: str | None = None
    ) -> None:
        self._local_id = local_id
        self._local_address = local_address
        self._settings = settings
        self._rows: dict[str, Peer] = {}
        self._by_id: dict[str, str] = {}  # node_id -> address
        # address -> state_since of the FAILED rows: next_deadline is asked after every
        # heartbeat, and scanning every row for it made a full mesh's cost grow with n^2.
        self._failed: dict[str, float] = {}
        self._clock = -math.inf

    # -- inputs ---------------------------------------------------------------------------

    def add(
        self,
        address: str,
        now: float,
        *,
        node_id: str | None = None,
        role: str | None = None,
        static: bool = False,
    ) -> list[StateChanged]:
        """A peer from configuration (static) or discovery; adding it again changes no state."""
        now = self._advance(now)
        if address == self._local_address or node_id == self._local_id:
            return []
        if node_id is not None and node_id in self._by_id and self._by_id[node_id] != address:
            # A heartbeat already placed that node elsewhere; what it answers here will decide.
            node_id = None
        row = self._rows.get(address)
        if row is not None:
            self._put(
                replace(
                    row,
                    static=row.static or static,
                    node_id=row.node_id if row.node_id is not None else node_id,
                    role=row.role if row.role is not None else role,
                )
            )
            return []
        self._put(
            Peer(
                address=address,
                node_id=node_id,
                role=role,
                state=UNKNOWN,
                state_since=now,
                last_seen=None,
                latency=None,
                missed=0,
                facts=None,
                static=static,
            )
        )
        reason = "added from the configured peer list" if static else "found by discovery"
        return [StateChanged(address, node_id, None, UNKNOWN, reason)]

    def drop(
        self, address: str, now: float, reason: str = "no longer listed by discovery"
    ) -> list[StateChanged]:
        """Forget this address (discovery no longer lists it); configured peers stay."""
        self._advance(now)
        row = self._rows.get(address)
        if row is None or row.static:
            return []
        return [self._forget(row, reason)]

    def heartbeat_answered(
        self, address: str, now: float, rtt: float, facts: NodeFacts
    ) -> list[StateChanged]:
        """Our heartbeat to ``address`` was answered after ``rtt`` seconds."""
        now = self._advance(now)
        row = self._rows.get(address)
        if row is None:
            return []
        if facts.node_id == self._local_id:
            # e.g. a DNS record that lists this node too: dialling ourselves is pointless.
            return [self._forget(row, "this is the local node")]

        changes: list[StateChanged] = []
        static = row.static
        other = self._by_id.get(facts.node_id)
        if other is not None and other != address:
            # The node moved, or is listed under two addresses: the one that answers wins.
            moved = self._rows[other]
            static = static or moved.static  # a configured node stays configured
            changes.append(
                self._forget(
                    moved,
                    f"node {facts.node_id!r} now answers at {address}; "
                    f"forgetting its old address {other}",
                )
            )

        latency = row.latency
        old_state: PeerState | None = row.state
        if row.node_id is not None and row.node_id != facts.node_id:
            # Another node took over this address (a reused pod IP): the old one is gone.
            changes.append(
                StateChanged(
                    address,
                    row.node_id,
                    row.state,
                    None,
                    f"{address} now answers as node {facts.node_id!r}; "
                    f"node {row.node_id!r} is no longer there",
                )
            )
            latency = None
            old_state = None

        settings = self._settings
        if math.isfinite(rtt):
            sample = rtt if rtt >= 0.0 else 0.0  # max(rtt, 0.0)
            alpha = settings.latency_alpha
            latency = sample if latency is None else alpha * sample + (1 - alpha) * latency
        slow = latency is not None and latency > settings.degraded_latency
        new_state = _after_answer(slow)
        state, since = row.state, row.state_since
        if old_state != new_state:
            if old_state is not None:
                _check(old_state, new_state)
            state, since = new_state, now
            reason = self._answer_reason(old_state, row.missed, new_state, latency)
            changes.append(StateChanged(address, facts.node_id, old_state, new_state, reason))
        # _with(row, ...) written out, fields set one by one: this runs for every answer.
        new = object.__new__(Peer)
        fields = new.__dict__
        fields.update(row.__dict__)
        fields["node_id"] = facts.node_id
        fields["role"] = facts.role
        fields["state"] = state
        fields["state_since"] = since
        fields["last_seen"] = now
        fields["latency"] = latency
        fields["missed"] = 0
        fields["facts"] = facts
        fields["static"] = static
        self._put(new)
        return changes

    def heartbeat_missed(self, address: str, now: float) -> list[StateChanged]:
        """Our heartbeat to ``address`` timed out or failed."""
        now = self._advance(now)
        row = self._rows.get(address)
        if row is None:
            return []
        missed = row.missed + 1
        threshold = self._settings.suspicion_threshold
        new_state = _after_miss(row.state, missed, threshold)
        if new_state == row.state:
            self._put(_with(row, missed=missed))
            return []
        _check(row.state, new_state)
        if new_state == FAILED:
            reason = (
                "missed a heartbeat" if missed == 1 else f"missed {_heartbeats(missed)} in a row"
            )
        else:
            reason = f"missed {_heartbeats(missed)}; failed after {threshold} in a row"
        self._put(_with(row, missed=missed, state=new_state, state_since=now))
        return [StateChanged(address, row.node_id, row.state, new_state, reason)]

    def heartbeat_received(self, facts: NodeFacts, now: float) -> list[StateChanged]:
        """Another node's heartbeat to us: refresh what we know, never its state."""
        now = self._advance(now)
        if facts.node_id == self._local_id:
            return []
        address = self._by_id.get(facts.node_id)
        if address is not None:
            row = self._rows[address]
            if row.role != facts.role or (row.facts is not facts and row.facts != facts):
                # else the row stays as it is
                self._put(_with(row, role=facts.role, facts=facts))
            return []
        row_at = self._rows.get(facts.address)
        if row_at is not None:
            if row_at.node_id is not None:
                # The row already names another node; a self-reported address (perhaps a
                # misconfigured advertise address) does not rename it. Our probes will.
                return []
            self._put(replace(row_at, node_id=facts.node_id, role=facts.role, facts=facts))
            return []
        if not facts.address or facts.address == self._local_address:
            return []
        self._put(
            Peer(
                address=facts.address,
                node_id=facts.node_id,
                role=facts.role,
                state=UNKNOWN,
                state_since=now,
                last_seen=None,
                latency=None,
                missed=0,
                facts=facts,
                static=False,
            )
        )
        return [
            StateChanged(
                facts.address,
                facts.node_id,
                None,
                UNKNOWN,
                f"node {facts.node_id!r} sent us a heartbeat; dialling it back",
            )
        ]

    def tick(self, now: float) -> list[StateChanged]:
        """Remove peers that stayed failed for ``remove_delay`` (the driver decides the rest)."""
        now = self._advance(now)
        if not self._settings.auto_remove_failed:
            return []
        delay = self._settings.remove_delay
        changes: list[StateChanged] = []
        if not self._failed:
            return changes
        for row in self._sorted():
            if row.state == FAILED and now >= row.state_since + delay:
                _check(FAILED, REMOVED)
                self._put(replace(row, state=REMOVED, state_since=now))
                reason = (
                    f"failed for {_duration(now - row.state_since)} "
                    f"(remove_delay {_duration(delay)}); removed from the pool"
                )
                changes.append(StateChanged(row.address, row.node_id, FAILED, REMOVED, reason))
        return changes

    # -- queries --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest ``now`` at which ``tick`` would change something."""
        if not self._settings.auto_remove_failed:
            return None
        if not self._failed:
            return None
        delay = self._settings.remove_delay
        return min(since + delay for since in self._failed.values())

    def peers(self) -> list[Peer]:
        return self._sorted()

    def get(self, address: str) -> Peer | None:
        return self._rows.get(address)

    def by_node_id(self, node_id: str) -> Peer | None:
        address = self._by_id.get(node_id)
        return None if address is None else self._rows[address]

    def known_nodes(self) -> dict[str, PeerState]:
        """node_id -> state, the shape the router takes."""
        return {r.node_id: r.state for r in self._sorted() if r.node_id is not None}

    def connected(self) -> int:
        return sum(1 for r in self._rows.values() if r.state in _ANSWERING)

    # -- internals ------------------------------------------------------------------------

    def _advance(self, now: float) -> float:
        if now > self._clock:  # noqa: PLR1730 (max(self._clock, now) without the call)
            self._clock = now
        return self._clock

    def _sorted(self) -> list[Peer]:
        return sorted(self._rows.values(), key=lambda r: (r.node_id or r.address, r.address))

    def _put(self, row: Peer) -> None:
        address, node_id, rows = row.address, row.node_id, self._rows
        old = rows.get(address)
        if old is not None and old.node_id is not None and old.node_id != node_id:
            del self._by_id[old.node_id]
        rows[address] = row
        if node_id is not None:
            self._by_id[node_id] = address
        if row.state == FAILED:
            self._failed[address] = row.state_since
        elif self._failed:  # usually empty: no lookup then
            self._failed.pop(address, None)

    def _forget(self, row: Peer, reason: str) -> StateChanged:
        del self._rows[row.address]
        self._failed.pop(row.address, None)
        if row.node_id is not None and self._by_id.get(row.node_id) == row.address:
            del self._by_id[row.node_id]
        return StateChanged(row.address, row.node_id, row.state, None, reason)

    def _answer_reason(
        self, old: PeerState | None, missed: int, new: PeerState, latency: float | None
    ) -> str:
        limit = _duration(self._settings.degraded_latency)
        shown = "unmeasured" if latency is None else _duration(latency)
        if old == HEALTHY:  # and new is DEGRADED
            return f"smoothed latency {shown} is above {limit}"
        if old == DEGRADED:  # and new is HEALTHY
            return f"smoothed latency {shown} is back within {limit}"
        if old is None or old == UNKNOWN:
            base = "answered its first heartbeat"
        elif old == SUSPECTED:
            base = f"answered again after {_heartbeats(missed)} missed"
        else:
            base = f"rejoined: answered again after being {old}"
        if new == DEGRADED:
            return f"{base}, slowly: smoothed latency {shown} is above {limit}"
        return base


def _check(old: PeerState, new: PeerState) -> None:
    """A transition outside the table is a bug in this module, never an input error."""
    if new not in _ALLOWED[old]:
        raise AssertionError(f"membership: transition {old} -> {new} is not in the table")
