"""The mesh's parts, built (not started) together because they refer to one another.

``Mesh.build`` wires them; the node's root (``brio.node.root``) starts each one as a sibling
in its own nursery, in this order, and stops them in reverse:

| part        | class                   | job                                              |
|-------------|-------------------------|--------------------------------------------------|
| mesh server | `MeshListener`          | serve `Mesh` and `MeshAdmin` on `listen_addr`    |
| peer calls  | `PeerCalls`             | channels to peers; best-effort notices           |
| peers       | `Peers`                 | one heartbeat task per peer → `Membership`       |
| discovery   | `run_discovery`         | static, DNS or Kubernetes → `Peers.found`        |
| forwarder   | `EventForwarder`        | task events of work run here → coordinators      |
| queue count | `QueueCounter`          | the queue length heartbeats report; `TaskMeter`  |
| lease       | `LeaseDriver`           | vote, campaign; the `primary` nursery (`Primary`:|
|             |                         | the cluster view and the `Placer`)               |

``Mesh`` also answers what the HTTP API asks of the mesh (``brio.tasks.mesh_view.MeshView``).
``leave_requested`` is set once ``brio mesh leave`` has said goodbye to the peers: the node's
root then stops the node as on SIGTERM, and the process exits 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

import trio

from brio.agents.registry import RegisteredAgent
from brio.config.model import BrioConfig
from brio.core.membership import DetectorSettings, Membership
from brio.core.scheduler import Scheduler
from brio.mesh.calls import PeerCalls
from brio.mesh.directory import MeshDirectory
from brio.mesh.forwarder import EventForwarder
from brio.mesh.lease import LeaseDriver, settings_from
from brio.mesh.local import LocalNode, QueueCounter, TaskMeter
from brio.mesh.peers import Peers, detector_settings
from brio.mesh.primary import Primary
from brio.mesh.router import MeshRouter
from brio.mesh.tls import client_context
from brio.mesh.transport import (
    ChannelPool,
    ClusterAuth,
    ConnectionLimits,
    TransportStats,
    bind_address,
)
from brio.store.base import Store
from brio.store.witness import Witness
from brio.tasks.events import EventBus
from brio.tasks.mesh_view import LeaseView
from brio.tasks.placer import Placer, scheduler_settings
from brio.tasks.supervisor import Supervisor

log = logging.getLogger(__name__)


@dataclass
class Mesh:
    config: BrioConfig
    local: LocalNode
    settings: DetectorSettings
    membership: Membership
    stats: TransportStats
    calls: PeerCalls
    peers: Peers
    forwarder: EventForwarder
    queue_counter: QueueCounter
    router: MeshRouter
    supervisor: Supervisor
    lease: LeaseDriver | None
    primary: Primary | None
    placer: Placer | None
    store: Store
    directory: MeshDirectory
    meter: TaskMeter
    leave_requested: trio.Event = field(default_factory=trio.Event)

    @classmethod
    def build(
        cls,
        config: BrioConfig,
        *,
        store: Store,
        supervisor: Supervisor,
        bus: EventBus,
        agents: dict[str, RegisteredAgent],
    ) -> Mesh:
        mesh = config.mesh
        local = LocalNode(config, agents, supervisor)
        settings = detector_settings(mesh)
        membership = Membership(local.node_id, settings, local_address=local.address)
        secret = mesh.cluster_secret
        limits = ConnectionLimits(
            max_streams_per_connection=mesh.max_streams_per_connection,
            max_resets_per_second=mesh.max_resets_per_second,
            idle_timeout=mesh.connection_idle_timeout,
            max_connections_per_address=mesh.max_connections_per_address,
            tls_handshake_timeout=mesh.tls_handshake_timeout,
        )
        auth = ClusterAuth(secret.get_secret_value()) if secret else None
        stats = TransportStats(auth=auth, limits=limits)
        if (insecure := mesh.insecure_warning()) is not None:
            log.warning("mesh: %s", insecure)
        pool = ChannelPool(
            client_context(mesh.tls),
            local.node_id,
            stats,
            local_host=bind_address(mesh.listen_addr),
        )
        calls = PeerCalls(
            local.node_id,
            membership,
            pool,
            call_timeout=mesh.call_timeout,
            heartbeat_timeout=settings.heartbeat_timeout,
        )
        peers = Peers(mesh, membership, settings, local, calls)
        directory = MeshDirectory(
            local,
            membership,
            calls,
            unknown_grace=settings.heartbeat_interval * (settings.suspicion_threshold + 1),
        )
        placer: Placer | None = None
        primary: Primary | None = None
        lease: LeaseDriver | None = None
        voters = mesh.lease_voters()
        candidate = local.role == "coordinator"
        if candidate or local.node_id in voters:
            lease_settings = settings_from(mesh.lease)
            if candidate:
                placer = Placer(store, Scheduler(scheduler_settings(config)), directory, bus)
                primary = Primary(
                    local.node_id, store, peers.cluster_view, lease_settings.renew_interval, placer
                )
            lease = LeaseDriver(
                local.node_id,
                config=mesh.lease,
                voters=voters,
                candidates=mesh.lease_candidates(),
                candidate=candidate,
                data_dir=config.data_dir,
                transport=calls,
                primary=primary.run if primary else None,
                warning=mesh.lease_voters_warning(),
                misconfigured=partial(
                    _coordinators_outside, membership, peers, voters, mesh.lease_candidates()
                ),
                witness=store if isinstance(store, Witness) else None,
            )
        mesh_view_lease = lease.view if lease is not None else _no_lease
        meter = TaskMeter(local.node_id, bus)
        forwarder = EventForwarder(local.node_id, bus, membership, calls)
        if placer is not None:  # a freed slot or a node's new state: the primary looks again
            supervisor.on_finished = forwarder.on_remote_finished = placer.slot_freed
            supervisor.on_queued = placer.wake
            peers.on_state_change = placer.wake
        return cls(
            config=config,
            local=local,
            settings=settings,
            membership=membership,
            stats=stats,
            calls=calls,
            peers=peers,
            forwarder=forwarder,
            queue_counter=QueueCounter(local, store, settings.heartbeat_interval, meter),
            router=MeshRouter(local, membership, calls, lease_view=mesh_view_lease, placer=placer),
            placer=placer,
            supervisor=supervisor,
            lease=lease,
            primary=primary,
            store=store,
            directory=directory,
            meter=meter,
        )

    @property
    def node_id(self) -> str:
        return self.local.node_id

    # --- MeshView (/health) -----------------------------------------------------------------

    def lease_view(self) -> LeaseView:
        if self.lease is not None:
            return self.lease.view()
        return _no_lease()

    def connected_peers(self) -> int:
        return self.peers.connected()

    def last_heartbeat(self) -> datetime | None:
        return self.peers.last_heartbeat()

    def draining(self) -> bool:
        return self.local.draining

    def problems(self) -> list[str]:
        found = []
        problem = self.lease_view().problem
        if problem is not None:
            found.append(f"lease: not campaigning: {problem}")
        if self.lease is not None and (trouble := self.lease.witness_trouble) is not None:
            found.append(f"lease: {trouble}")
        refused = self.stats.refused_connections
        if refused and self.membership.peers() and not self.membership.connected():
            found.append(
                f"mesh: {refused} incoming connection(s) refused and no peer reached: "
                "check [mesh.access_control] allowed_cidrs"
            )
        return found


def _coordinators_outside(
    membership: Membership,
    peers: Peers,
    voters: frozenset[str],
    configured: frozenset[str],
) -> str | None:
    """A coordinator heard from that is neither a voter nor a configured candidate means the
    nodes disagree about the voter set (each node's default set is itself and the peers it
    names by id): majorities of different sets can overlap in nobody."""
    outside = sorted(
        p.node_id
        for p in membership.peers()
        if p.node_id is not None
        and p.node_id not in voters
        and p.node_id not in configured
        and peers.is_coordinator(p.node_id)
    )
    if not outside:
        return None
    return (
        f"coordinator {', '.join(outside)} is not in this node's voter set "
        f"({', '.join(sorted(voters))}); every node needs the same [mesh.lease] voters "
        "(BRIO_MESH_LEASE_VOTERS)"
    )


def _no_lease() -> LeaseView:
    return LeaseView("worker", 0, None, None, voter=False)
