"""The mesh side of one node: peers, heartbeats, routing, and calls between nodes.

```
MeshNode.run
├── grpc server          Mesh (Call, Heartbeat) and MeshAdmin on mesh.listen_addr
├── discovery            static | dns | kubernetes -> Membership.add / drop
├── probe per peer       one heartbeat task per peer address -> Membership
├── ticker               Membership.tick (failed -> removed after remove_delay)
├── lease                voters answer, coordinators campaign (brio.mesh.lease)
│   └── primary          only while this node holds the lease (brio.mesh.primary)
└── event forwarder      task events of work run here -> every coordinator peer
```

The decisions live in the sans-io cores (``brio.core.membership``, ``brio.core.routing``);
this module only moves messages and time into them and acts on what they say. Time given
to the cores is ``trio.current_time()``; wall-clock times are only made for display.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import trio

from brio import __version__
from brio.agents.registry import RegisteredAgent
from brio.config.model import BrioConfig, split_host_port
from brio.core.membership import (
    DetectorSettings,
    Membership,
    NodeFacts,
    Peer,
    PeerState,
    StateChanged,
)
from brio.core.routing import Route, route
from brio.core.tasks import TaskStatus
from brio.mesh import pb
from brio.mesh.discovery import FoundPeer, run_discovery
from brio.mesh.lease import LeaseDriver, settings_from
from brio.mesh.primary import Primary
from brio.mesh.tls import client_context, server_context
from brio.mesh.transport import (
    ChannelPool,
    MeshCallError,
    MeshServer,
    Service,
    TransportStats,
    start_server,
    stop_server,
)
from brio.store.base import Store, TaskRecord
from brio.tasks.events import Event, EventBus
from brio.tasks.mesh_view import LeaseView
from brio.tasks.supervisor import Supervisor

log = logging.getLogger(__name__)

CALL = "/brio.mesh.v1.Mesh/Call"
HEARTBEAT = "/brio.mesh.v1.Mesh/Heartbeat"
ADMIN = "/brio.mesh.v1.MeshAdmin/"

#: Event types a node forwards to the coordinators for the work it runs.
FORWARDED_EVENTS = ("task_update", "task_output", "task_completed")
FORWARD_BATCH = 200
FORWARD_BUFFER = 10_000


def advertise_address(config: BrioConfig) -> str:
    """The host:port other nodes dial: ``advertise_addr``, else ``listen_addr`` made dialable."""
    mesh = config.mesh
    if mesh.advertise_addr:
        return mesh.advertise_addr
    host, port = split_host_port(mesh.listen_addr, allow_port_zero=True)
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def facts_from(info: pb.NodeInfo) -> NodeFacts:
    load = info.workload or pb.Load()
    return NodeFacts(
        node_id=info.node_id,
        role=info.role,
        address=info.address,
        version=info.version,
        agents=tuple(a.name for a in info.agents),
        active=load.active,
        queued=load.queued,
        max_agents=load.max_agents,
        draining=info.draining,
    )


@dataclass
class Counters:
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    tasks_cancelled: int = 0
    heartbeats_received: int = 0


class MeshNode:
    """Owns the membership table and the gRPC edges; answers the node's mesh questions."""

    def __init__(
        self,
        config: BrioConfig,
        *,
        store: Store,
        supervisor: Supervisor,
        bus: EventBus,
        agents: dict[str, RegisteredAgent],
    ) -> None:
        self.config = config
        self.node_id = config.mesh.node_id
        self.role: str = config.mesh.role
        self.store = store
        self.supervisor = supervisor
        self.bus = bus
        self.agents = agents
        fd = config.mesh.failure_detection
        self.settings = DetectorSettings(
            heartbeat_interval=fd.heartbeat_interval,
            heartbeat_timeout=fd.heartbeat_timeout,
            suspicion_threshold=fd.suspicion_threshold,
            auto_remove_failed=fd.auto_remove_failed,
            remove_delay=fd.remove_delay,
            degraded_latency=fd.degraded_latency,
        )
        self.stats = TransportStats()
        self.counters = Counters()
        self.address = advertise_address(config)
        self.membership = Membership(self.node_id, self.settings, local_address=self.address)
        self.bound_address: str | None = None
        self.draining = False
        self._pool = ChannelPool(client_context(config.mesh.tls), self.node_id, self.stats)
        self._server_ssl = server_context(config.mesh.tls)
        self._probes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._last_heartbeat: float | None = None  # wall clock, for /health
        self._started = time.monotonic()
        self._discovered: frozenset[FoundPeer] = frozenset()
        self._changed = trio.Event()
        self._queued = 0
        self._configured_roles = {
            p.id: p.role for p in config.mesh.peers if p.id and "role" in p.model_fields_set
        }
        self._unsent_events = 0
        self.primary: Primary | None = None
        self.lease: LeaseDriver | None = None
        voters = config.mesh.lease_voters()
        candidate = self.role == "coordinator"
        if candidate or self.node_id in voters:
            settings = settings_from(config.mesh.lease)
            if candidate:
                self.primary = Primary(
                    self.node_id, store, self.cluster_view, settings.renew_interval
                )
            self.lease = LeaseDriver(
                self.node_id,
                config=config.mesh.lease,
                voters=voters,
                candidates=config.mesh.lease_candidates(),
                candidate=candidate,
                data_dir=config.data_dir,
                transport=self,
                primary=self.primary.run if self.primary else None,
                warning=config.mesh.lease_voters_warning(),
            )

    # --- what the rest of the node asks (MeshView and routing) ----------------------------

    def connected_peers(self) -> int:
        return self.membership.connected()

    def last_heartbeat(self) -> datetime | None:
        if self._last_heartbeat is None:
            return None
        return datetime.fromtimestamp(self._last_heartbeat, UTC)

    def lease_view(self) -> LeaseView:
        if self.lease is not None:
            return self.lease.view()
        return LeaseView("worker", 0, None, None, voter=False)

    def cluster_view(self) -> list[tuple[str, str]]:
        """(node id, state) of this node and every peer it knows by id: the primary records it."""
        rows = [(self.node_id, "draining" if self.draining else "healthy")]
        rows += [(p.node_id, str(p.state)) for p in self.membership.peers() if p.node_id]
        return sorted(set(rows))

    async def call_peer(
        self, node_id: str, path: str, request: Any, reply_type: type[Any], timeout: float
    ) -> Any:
        """One unary call to a peer by node id; raises LookupError if it is not known."""
        return await self._pool.unary(self._address_of(node_id), path, request, reply_type, timeout)

    def route(self, target: str) -> Route:
        """Where ``target`` runs; raises ``brio.core.routing.RouteError`` with the reason."""
        nodes = {k: str(v) for k, v in self.membership.known_nodes().items()}
        return route(target, self.node_id, nodes)

    def remote_agents(self, node_id: str) -> tuple[str, ...] | None:
        """The agents ``node_id`` said it runs in its last heartbeat; None if not heard yet."""
        peer = self.membership.by_node_id(node_id)
        return peer.facts.agents if peer is not None and peer.facts is not None else None

    def dispatch(self, node_id: str, task: TaskRecord) -> None:
        """Tell the node a task is pinned to that it is waiting (best effort: it polls too)."""
        if node_id == self.node_id or self._nursery is None:
            return
        self._nursery.start_soon(self._tell, node_id, "task.run", task.agent, task.id)

    def cancel_remote(self, task: TaskRecord) -> None:
        """Stop the agent of a task that runs on another node (its state is already written)."""
        if task.node_id is None or task.node_id == self.node_id or self._nursery is None:
            return
        self._nursery.start_soon(self._tell, task.node_id, "task.cancel", task.agent, task.id)

    async def _tell(self, node_id: str, method: str, agent: str, task_id: str) -> None:
        try:
            answer = await self.call_node(
                node_id, method, agent, {"task_id": task_id}, timeout=self._call_timeout()
            )
            if answer.is_set("error"):
                log.warning("%s of task %s on %s: %s", method, task_id, node_id, answer.error)
        except (MeshCallError, LookupError) as exc:
            log.warning(
                "could not tell %s about task %s (%s): %s; it stays pinned there and "
                "runs when that node polls",
                node_id,
                task_id,
                method,
                exc,
            )

    def _call_timeout(self) -> float:
        return self.config.mesh.call_timeout

    async def call_node(
        self,
        node_id: str,
        method: str,
        agent: str,
        payload: dict[str, Any],
        *,
        timeout: float,
    ) -> pb.MeshResponse:
        """Send one ``Call`` to a peer by node id; raises LookupError if it is not known."""
        address = self._address_of(node_id)
        deadline_ms = int((time.time() + timeout) * 1000)
        request = pb.MeshRequest(
            target=agent,
            method=method,
            json=json.dumps(payload),
            metadata={"brio-node-id": self.node_id},
            deadline_unix_ms=deadline_ms,
        )
        return await self._pool.unary(address, CALL, request, pb.MeshResponse, timeout)

    def _address_of(self, node_id: str) -> str:
        peer = self.membership.by_node_id(node_id)
        if peer is None:
            raise LookupError(f"unknown node {node_id!r}")
        return peer.address

    async def _heartbeat(self, address: str) -> pb.HeartbeatResponse:
        return await self._pool.unary(
            address,
            HEARTBEAT,
            pb.HeartbeatRequest(sender=self.node_info()),
            pb.HeartbeatResponse,
            self.settings.heartbeat_timeout,
        )

    # --- identity and load ----------------------------------------------------------------

    def node_info(self) -> pb.NodeInfo:
        return pb.NodeInfo(
            node_id=self.node_id,
            role=self.role,
            address=self.address,
            version=__version__,
            agents=[pb.AgentInfo(name=a.name, kind=a.kind) for a in self.agents.values()],
            workload=pb.Load(
                active=self.supervisor.active,
                queued=self._queued,
                max_agents=self.supervisor.max_agents,
            ),
            draining=self.draining,
            sent_unix_ms=int(time.time() * 1000),
        )

    def peer_status(self, peer: Peer) -> pb.PeerStatus:
        now = trio.current_time()
        facts = peer.facts
        last_seen = 0
        if peer.last_seen is not None:
            last_seen = int((time.time() - (now - peer.last_seen)) * 1000)
        return pb.PeerStatus(
            node_id=peer.node_id or "",
            address=peer.address,
            role=peer.role or "",
            status=str(peer.state),
            last_seen_unix_ms=last_seen,
            latency_ms=(peer.latency or 0.0) * 1000,
            missed_heartbeats=peer.missed,
            workload=pb.Load(active=facts.active, queued=facts.queued, max_agents=facts.max_agents)
            if facts
            else None,
            draining=facts.draining if facts else False,
            version=facts.version if facts else "",
            agents=list(facts.agents) if facts else [],
        )

    # --- running ----------------------------------------------------------------------------

    async def run(self, services: Sequence[Service], *, task_status: trio.TaskStatus[str]) -> None:
        """Serve and heartbeat until cancelled; ``task_status`` gets the bound mesh address."""
        server: MeshServer | None = None
        access = self.config.mesh.access_control
        try:
            server, bound = await start_server(
                services,
                self.config.mesh.listen_addr,
                ssl_context=self._server_ssl,
                allowed=tuple(access.allowed_cidrs),
                stats=self.stats,
            )
            self.bound_address = bound
            if not self.config.mesh.advertise_addr and self.address.endswith(":0"):
                self.address = bound
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                now = trio.current_time()
                for peer in self.config.mesh.peers:
                    # a role not written in the config is learned from the first heartbeat
                    role = peer.role if "role" in peer.model_fields_set else None
                    self._apply(
                        self.membership.add(
                            peer.address, now, node_id=peer.id, role=role, static=True
                        )
                    )
                await nursery.start(self._discover)
                nursery.start_soon(self._tick)
                nursery.start_soon(self._forward_events)
                nursery.start_soon(self._count_queued)
                if self.lease is not None:
                    await nursery.start(self.lease.run)
                task_status.started(bound)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                self._pool.close()
                if server is not None:
                    with trio.move_on_after(5):
                        await stop_server(server)

    async def _discover(self, *, task_status: trio.TaskStatus[None]) -> None:
        def found(peers: frozenset[FoundPeer]) -> None:
            now = trio.current_time()
            static = {p.address for p in self.config.mesh.peers}
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

        await run_discovery(self.config.mesh, found, task_status=task_status)

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

    async def _count_queued(self) -> None:
        """Keep the queue length heartbeats report fresh without a query per heartbeat."""
        interval = max(0.2, min(5.0, self.settings.heartbeat_interval))
        while True:
            try:
                self._queued = await self.store.count_tasks(TaskStatus.QUEUED)
            except Exception as exc:
                log.debug("counting queued tasks failed: %s", exc)
            await trio.sleep(interval)

    def _apply(self, changes: list[StateChanged]) -> None:
        """Log what changed and start or stop probes so that every row has one."""
        for change in changes:
            name = change.node_id or change.address
            if change.old is None:
                log.info("peer %s (%s) added: %s", name, change.address, change.reason)
            elif change.new is None:
                log.info("peer %s (%s) forgotten: %s", name, change.address, change.reason)
            else:
                level = logging.WARNING if change.new in _BAD else logging.INFO
                log.log(
                    level,
                    "peer %s (%s): %s -> %s (%s)",
                    name,
                    change.address,
                    change.old,
                    change.new,
                    change.reason,
                )
        self._changed.set()
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
                    reply = await self._heartbeat(address)
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
            self._pool.drop(address)  # the connection of a forgotten peer is closed too

    # --- inbound ----------------------------------------------------------------------------

    def heartbeat_received(self, info: pb.NodeInfo) -> None:
        self.counters.heartbeats_received += 1
        self._last_heartbeat = time.time()
        self._apply(self.membership.heartbeat_received(facts_from(info), trio.current_time()))

    def is_coordinator(self, node_id: str | None) -> bool:
        """Whether ``node_id`` is this node as a coordinator, or a peer known as one.

        A role written in ``[[mesh.peers]]`` (with the peer's id) is the operator's word and
        wins over what the peer's heartbeats claim: mTLS proves who a node is, not its role.
        """
        if node_id is None:
            return False
        if node_id == self.node_id:
            return self.role == "coordinator"
        configured = self._configured_roles.get(node_id)
        if configured is not None:
            return configured == "coordinator"
        peer = self.membership.by_node_id(node_id)
        return peer is not None and peer.role == "coordinator"

    def peer_by_id(self, node_id: str) -> Peer | None:
        return self.membership.by_node_id(node_id)

    async def admin_call(
        self, node_id: str, method: str, request: Any, response_type: type[Any]
    ) -> Any:
        return await self.call_peer(
            node_id, ADMIN + method, request, response_type, self._call_timeout()
        )

    async def ping(self, node_id: str, count: int) -> tuple[str, list[float], int]:
        address = self._address_of(node_id)
        rtts: list[float] = []
        lost = 0
        for i in range(count):
            if i:
                await trio.sleep(0.2)
            started = trio.current_time()
            try:
                await self._heartbeat(address)
            except MeshCallError:
                lost += 1
            else:
                rtts.append((trio.current_time() - started) * 1000)
        return address, rtts, lost

    def uptime(self) -> float:
        return time.monotonic() - self._started

    # --- event forwarding -------------------------------------------------------------------

    async def _forward_events(self) -> None:
        """Send the events of work run here to every coordinator, so clients anywhere see them.

        Best effort by design: the store holds the truth; a coordinator that is unreachable
        (or too slow: more than ``FORWARD_BUFFER`` events behind) misses events, not results.
        """
        outboxes: dict[str, trio.MemorySendChannel[Event]] = {}
        async with trio.open_nursery() as nursery:
            with self.bus.subscribe(buffer=FORWARD_BUFFER, max_bytes=256 << 20) as sub:
                sub.everything = True
                async for event in sub.receive:
                    sub.delivered(event)
                    self._count(event)
                    if event.origin is not None or event.type not in FORWARDED_EVENTS:
                        continue
                    for peer in self.membership.peers():
                        if peer.node_id is None or peer.role != "coordinator":
                            continue
                        if peer.state in _BAD:
                            continue
                        box = outboxes.get(peer.node_id)
                        if box is None:
                            send, receive = trio.open_memory_channel[Event](FORWARD_BUFFER)
                            outboxes[peer.node_id] = box = send
                            nursery.start_soon(self._send_events, peer.node_id, receive)
                        try:
                            box.send_nowait(event)
                            self._unsent_events += 1
                        except trio.WouldBlock:
                            log.warning("dropping a task event for %s: it is behind", peer.node_id)
                if sub.overflowed:
                    log.error("event forwarding fell behind the bus and stopped")

    def _count(self, event: Event) -> None:
        if event.type != "task_completed" or event.origin is not None:
            return
        if event.data.get("node_id") != self.node_id:
            return
        status = event.data.get("status")
        if status == "succeeded":
            self.counters.tasks_succeeded += 1
        elif status == "failed":
            self.counters.tasks_failed += 1
        elif status == "cancelled":
            self.counters.tasks_cancelled += 1

    async def _send_events(self, node_id: str, receive: trio.MemoryReceiveChannel[Event]) -> None:
        async for first in receive:
            batch = [first]
            while len(batch) < FORWARD_BATCH:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            payload = {
                "events": [
                    {
                        "type": e.type,
                        "task_id": e.task_id,
                        "session_id": e.session_id,
                        "data": e.data,
                    }
                    for e in batch
                ]
            }
            try:
                answer = await self.call_node(
                    node_id, "task.events", "", payload, timeout=self._call_timeout()
                )
                if answer.is_set("error"):
                    log.warning("%s refused %d task events: %s", node_id, len(batch), answer.error)
            except (MeshCallError, LookupError) as exc:
                log.info("could not forward %d task events to %s: %s", len(batch), node_id, exc)
            finally:
                self._unsent_events -= len(batch)

    async def flush_events(self, timeout: float) -> None:
        """At shutdown: give the last task events up to ``timeout`` to reach the coordinators."""
        with trio.move_on_after(timeout):
            while self._unsent_events > 0:  # noqa: ASYNC110 (a counter, polled at shutdown only)
                await trio.sleep(0.02)

    def publish_remote(self, origin: str, events: list[dict[str, Any]]) -> int:
        for item in events:
            self.bus.publish(
                str(item["type"]),
                str(item["task_id"]),
                item.get("session_id"),
                dict(item.get("data") or {}),
                origin=origin,
            )
        return len(events)


_BAD = (PeerState.FAILED, PeerState.REMOVED)
