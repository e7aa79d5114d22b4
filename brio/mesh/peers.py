"""Peer health: one heartbeat task per peer feeding ``brio.core.membership.Membership``.

```
Peers.run
├── ticker           Membership.tick (failed -> removed after remove_delay)
└── probe per peer   heartbeat every heartbeat_interval -> Membership
```

The decisions are the core's; this part moves heartbeats and time into it and keeps one
probe per row of the table. Time given to the core is ``trio.current_time()``; wall-clock
times are made only for display.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

import trio

from brio.config.model import MeshConfig
from brio.core.membership import DetectorSettings, Membership, PeerState, StateChanged
from brio.mesh import pb
from brio.mesh.calls import PeerCalls
from brio.mesh.discovery import FoundPeer
from brio.mesh.local import LocalNode, facts_from
from brio.mesh.transport import MeshCallError

log = logging.getLogger(__name__)

#: States in which a peer gets no work and no forwarded events.
BAD_STATES = (PeerState.FAILED, PeerState.REMOVED)


def detector_settings(mesh: MeshConfig) -> DetectorSettings:
    fd = mesh.failure_detection
    return DetectorSettings(
        heartbeat_interval=fd.heartbeat_interval,
        heartbeat_timeout=fd.heartbeat_timeout,
        suspicion_threshold=fd.suspicion_threshold,
        auto_remove_failed=fd.auto_remove_failed,
        remove_delay=fd.remove_delay,
        degraded_latency=fd.degraded_latency,
    )


class Peers:
    """Owns the probes; answers who is known, healthy and a coordinator."""

    def __init__(
        self,
        mesh: MeshConfig,
        membership: Membership,
        settings: DetectorSettings,
        local: LocalNode,
        calls: PeerCalls,
    ) -> None:
        self.config = mesh
        self.membership = membership
        self.settings = settings
        self.local = local
        self.calls = calls
        self.heartbeats_received = 0
        self.on_state_change: Callable[[], None] = lambda: None
        self._probes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._last_heartbeat: float | None = None  # wall clock, for /health
        self._discovered: frozenset[FoundPeer] = frozenset()
        self._changed = trio.Event()
        self._configured_roles = {
            p.id: p.role for p in mesh.peers if p.id and "role" in p.model_fields_set
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                now = trio.current_time()
                for peer in self.config.peers:
                    # a role not written in the config is learned from the first heartbeat
                    role = peer.role if "role" in peer.model_fields_set else None
                    self._apply(
                        self.membership.add(
                            peer.address, now, node_id=peer.id, role=role, static=True
                        )
                    )
                nursery.start_soon(self._tick)
                task_status.started()
        finally:
            self._nursery = None

    # --- what the rest of the node asks ---------------------------------------------------

    def connected(self) -> int:
        return self.membership.connected()

    def last_heartbeat(self) -> datetime | None:
        if self._last_heartbeat is None:
            return None
        return datetime.fromtimestamp(self._last_heartbeat, UTC)

    def cluster_view(self) -> list[tuple[str, str]]:
        """(node id, state) of this node and every peer it knows by id: the primary records it."""
        rows = [(self.local.node_id, self.local.state())]
        rows += [(p.node_id, str(p.state)) for p in self.membership.peers() if p.node_id]
        return sorted(set(rows))

    def is_coordinator(self, node_id: str | None) -> bool:
        """Whether ``node_id`` is this node as a coordinator, or a peer known as one.

        A role written in ``[[mesh.peers]]`` (with the peer's id) is the operator's word and
        wins over what the peer's heartbeats claim: mTLS proves who a node is, not its role.
        """
        if node_id is None:
            return False
        if node_id == self.local.node_id:
            return self.local.role == "coordinator"
        configured = self._configured_roles.get(node_id)
        if configured is not None:
            return configured == "coordinator"
        peer = self.membership.by_node_id(node_id)
        return peer is not None and peer.role == "coordinator"

    def known_ids(self) -> list[str]:
        return sorted(
            [self.local.node_id] + [p.node_id for p in self.membership.peers() if p.node_id]
        )

    # --- inbound ----------------------------------------------------------------------------

    def heartbeat_received(self, info: pb.NodeInfo) -> None:
        self.heartbeats_received += 1
        self._last_heartbeat = time.time()
        self._apply(self.membership.heartbeat_received(facts_from(info), trio.current_time()))

    def found(self, peers: frozenset[FoundPeer]) -> None:
        """Discovery's answer: add the new peers, drop the ones no longer found."""
        now = trio.current_time()
        static = {p.address for p in self.config.peers}
        for gone in self._discovered - peers:
            if gone.address not in static and gone.address not in {p.address for p in peers}:
                self._apply(self.membership.drop(gone.address, now))
        for new in peers - self._discovered:
            self._apply(
                self.membership.add(
                    new.address,
                    now,
                    node_id=new.node_id,
                    role=new.role,
                    static=new.address in static,
                )
            )
        self._discovered = peers

    async def ping(self, node_id: str, count: int) -> tuple[str, list[float], int]:
        address = self.calls.address_of(node_id)
        rtts: list[float] = []
        lost = 0
        for i in range(count):
            if i:
                await trio.sleep(0.2)
            started = trio.current_time()
            try:
                await self.calls.heartbeat(address, self.local.info())
            except MeshCallError:
                lost += 1
            else:
                rtts.append((trio.current_time() - started) * 1000)
        return address, rtts, lost

    # --- timers and probes ------------------------------------------------------------------

    async def _tick(self) -> None:
        """Run the table's timers (failed -> removed) when they are due or the table changed."""
        while True:
            self._changed = trio.Event()
            changes = self.membership.tick(trio.current_time())
            if changes:
                self._apply(changes)
                continue
            deadline = self.membership.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._changed.wait()

    def _apply(self, changes: list[StateChanged]) -> None:
        """Log what changed and start or stop probes so that every row has one."""
        for change in changes:
            _log_change(change)
        self._changed.set()
        if any(c.new is not c.old for c in changes):
            self.on_state_change()  # a node came, went or failed: the placer looks again
        # A removed peer that neither the config nor discovery names is forgotten: nobody
        # dials it any more, and it comes back by itself, as any new node does, with its
        # next heartbeat to us. A configured or discovered one stays and keeps being probed.
        listed = {p.address for p in self._discovered}
        forget = [
            c.address
            for c in changes
            if c.new is PeerState.REMOVED
            and c.address not in listed
            and (peer := self.membership.get(c.address)) is not None
            and not peer.static
        ]
        if forget:
            now = trio.current_time()
            why = "removed, and neither configured nor discovered"
            self._apply([c for a in forget for c in self.membership.drop(a, now, why)])
            return
        if self._nursery is None:
            return
        rows = {p.address for p in self.membership.peers()}
        for address in list(self._probes):
            if address not in rows:
                self._probes.pop(address).cancel()
        for address in rows - set(self._probes):
            scope = trio.CancelScope()
            self._probes[address] = scope
            self._nursery.start_soon(self._probe, address, scope)

    async def _probe(self, address: str, scope: trio.CancelScope) -> None:
        """Heartbeat one peer every ``heartbeat_interval`` for as long as it is in the table."""
        with scope:
            while self.membership.get(address) is not None:
                started = trio.current_time()
                try:
                    reply = await self.calls.heartbeat(address, self.local.info())
                except MeshCallError as exc:
                    log.debug("heartbeat to %s failed: %s", address, exc)
                    self._apply(self.membership.heartbeat_missed(address, trio.current_time()))
                else:
                    now = trio.current_time()
                    self._last_heartbeat = time.time()
                    facts = facts_from(reply.responder or pb.NodeInfo())
                    self._apply(
                        self.membership.heartbeat_answered(address, now, now - started, facts)
                    )
                await trio.sleep_until(started + self.settings.heartbeat_interval)
        if self._probes.get(address) is scope:
            del self._probes[address]
        if self.membership.get(address) is None and address not in self._probes:
            self.calls.pool.drop(address)  # the connection of a forgotten peer is closed too


def _log_change(change: StateChanged) -> None:
    name = change.node_id or change.address
    if change.old is None:
        log.info("peer %s (%s) added: %s", name, change.address, change.reason)
    elif change.new is None:
        log.info("peer %s (%s) forgotten: %s", name, change.address, change.reason)
    else:
        level = logging.WARNING if change.new in BAD_STATES else logging.INFO
        log.log(
            level,
            "peer %s (%s): %s -> %s (%s)",
            name,
            change.address,
            change.old,
            change.new,
            change.reason,
        )
