"""One Brio node: the composition root that ``brio serve`` runs.

```
run_node
└── asyncio bridge (brio.aio)   asyncpg and grpclib live there
    └── part tree               siblings, started top to bottom, stopped bottom to top
        ├── store               StorePart: opened and migrated before anything else
        ├── mesh server         MeshListener            ┐
        ├── peer calls          PeerCalls               │
        ├── peers               Peers: one heartbeat    │ when mesh.enabled
        │                       task per peer           │ (brio.mesh.assembly
        ├── discovery           run_discovery           │  builds them)
        ├── event forwarder     EventForwarder          │
        ├── queue counter       QueueCounter            │
        ├── lease               LeaseDriver             │
        │   └── primary         Primary (brio.mesh.primary): cluster view, Placer
        ├── placement           LocalPrimary: without a mesh, the node is its own primary
        ├── http                HttpServer (when server.enabled)
        ├── supervisor          Supervisor: claims tasks, runs agents (max_agents)
        └── metrics             (joins here)
```

The supervisor starts after http, not before as in DESIGN.md's picture: a start that fails
(the HTTP port is taken, say) must not have run any agent.

Shutdown (on a signal, or once ``brio mesh leave`` has said goodbye to the peers: the mesh's
``leave_requested``) is ordered: stop taking tasks and close the HTTP listeners, hand the lease
to a standby if this node is primary (``LeaseDriver.transfer``), let running agents
finish within ``server.shutdown_grace`` (the mesh stays up meanwhile, so their events still
reach the coordinators), close the WebSockets, flush the last forwarded events, then stop
every part in reverse order: the supervisor, http, the lease, ..., the mesh server (GOAWAY
to every connection) and the store last.

A single node on SQLite imports only what it runs: the mesh (grpclib, protobuf, DNS,
cryptography), the asyncio bridge (trio-asyncio) and asyncpg are imported when the config
enables the mesh or names PostgreSQL (issue 12: ``brio serve`` started in 0.90 s, almost all
imports; see docs/architecture.md, "Start-up and memory").
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

import trio

from brio import __version__
from brio.agents.registry import RegisteredAgent, build_registry
from brio.api.app import ApiDeps, create_app
from brio.api.server import HttpServer
from brio.config.model import BrioConfig
from brio.core.scheduler import Scheduler
from brio.node.data_dir import MESH_ADDRESS_FILE, locked_data_dir
from brio.node.data_dir import node_id as remembered_node_id
from brio.node.store import StorePart
from brio.node.tree import part_tree
from brio.store.base import NodeRecord, Store
from brio.tasks.events import EventBus
from brio.tasks.mesh_view import SingleNode
from brio.tasks.placer import Placer, scheduler_settings
from brio.tasks.service import TaskService
from brio.tasks.single import LocalPrimary, SingleNodeDirectory
from brio.tasks.supervisor import Supervisor

if TYPE_CHECKING:
    from brio.mesh.assembly import Mesh

log = logging.getLogger(__name__)


@dataclass
class NodeHandle:
    """What a started node tells its caller (tests use it to find the bound address)."""

    node_id: str
    http_urls: list[str] = field(default_factory=list)
    store: Store | None = None
    mesh_address: str | None = None  # the bound host:port of the mesh server
    mesh: Mesh | None = None
    supervisor: Supervisor | None = None


async def run_node(
    config: BrioConfig,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[NodeHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until ``shutdown`` is set (or the node leaves the mesh: ``brio mesh leave``), then
    stop in order. Raises on a start-up failure."""
    agents = build_registry(config)
    with locked_data_dir(config.data_dir):
        node_id = remembered_node_id(config)
        config = config.model_copy(
            update={"mesh": config.mesh.model_copy(update={"node_id": node_id})}
        )
        if config.mesh.enabled:
            from brio.mesh.lease_state import load_lease_state
            from brio.mesh.tls import check_files

            check_files(config.mesh.tls)  # a bad certificate fails the start, before anything runs
            load_lease_state(config.data_dir)  # and so does a corrupt lease-state file
        async with _asyncio_if_needed(config):
            await _run(config, agents, shutdown, task_status)
    log.info("node %s stopped", node_id)


@asynccontextmanager
async def _asyncio_if_needed(config: BrioConfig) -> AsyncIterator[None]:
    """The asyncio bridge (``brio.aio``) around the node when something lives on asyncio:
    grpclib (the mesh) or asyncpg (PostgreSQL). Without either, neither trio-asyncio nor
    asyncio's event loop is imported (agents run on trio: docs/agents.md)."""
    if not (config.mesh.enabled or config.database_backend == "postgresql"):
        yield
        return
    from brio import aio

    async with aio.open_loop():
        yield


async def _run(
    config: BrioConfig,
    agents: dict[str, RegisteredAgent],
    shutdown: trio.Event,
    task_status: trio.TaskStatus[NodeHandle],
) -> None:
    node_id = config.mesh.node_id
    async with part_tree() as tree:
        store: Store = await tree.start(
            "store", StorePart(config.database_url, config.database.max_connections).run
        )
        bus = EventBus()
        supervisor = Supervisor(store, agents, bus, node_id, config.mesh.max_agents)
        handle = NodeHandle(node_id=node_id, store=store, supervisor=supervisor)

        mesh: Mesh | None = None
        if config.mesh.enabled:
            from brio.mesh.assembly import Mesh
            from brio.mesh.discovery import run_discovery
            from brio.mesh.handlers import MeshHandlers
            from brio.mesh.listener import MeshListener

            mesh = Mesh.build(config, store=store, supervisor=supervisor, bus=bus, agents=agents)
            listener = MeshListener(
                config.mesh, MeshHandlers(mesh).services(), mesh.stats, mesh.local
            )
            handle.mesh = mesh
            handle.mesh_address = await tree.start("mesh server", listener.run)
            (config.data_dir / MESH_ADDRESS_FILE).write_text(f"{handle.mesh_address}\n")
            await tree.start("peer calls", mesh.calls.run)
            await tree.start("peers", mesh.peers.run)
            await tree.start("discovery", partial(run_discovery, config.mesh, mesh.peers.found))
            await tree.start("event forwarder", mesh.forwarder.run)
            await tree.start("queue counter", mesh.queue_counter.run)
            if mesh.lease is not None:
                await tree.start("lease", mesh.lease.run)  # └── primary, while we hold it
        await _record_node(store, config, agents, mesh.local.address if mesh else None)

        service = TaskService(
            store,
            agents,
            bus,
            supervisor,
            mesh=mesh.router if mesh else None,
            placement=mesh.placer if mesh else None,
        )
        if mesh is None:  # a cluster of one: its own primary, placing on itself
            directory = SingleNodeDirectory(node_id, config.mesh.role, agents, supervisor)
            placer = Placer(store, Scheduler(scheduler_settings(config)), directory, bus)
            service.placement = placer
            service.wake_local = supervisor.on_queued = placer.wake
            supervisor.on_finished = placer.slot_freed
            await tree.start("placement", LocalPrimary(node_id, store, placer).run)
        http: HttpServer | None = None
        websockets_closing = trio.Event()
        if config.server.enabled:
            deps = ApiDeps(
                config,
                store,
                service,
                supervisor,
                bus,
                agents,
                mesh if mesh is not None else SingleNode(),
                stopping=websockets_closing,
            )
            http = HttpServer(config.server, create_app(deps))
            handle.http_urls = await tree.start("http", http.run)
        # Agents start only once the node can be reached: a start that fails (the port is
        # taken, say) must not have run anything.
        await tree.start("supervisor", supervisor.run)
        # metrics join the tree here
        log.info(
            "brio %s node %s (%s) up: http %s, mesh %s, store %s, agents %s",
            __version__,
            node_id,
            config.mesh.role,
            ", ".join(handle.http_urls) or "off",
            handle.mesh_address or "off",
            store.backend,
            ", ".join(sorted(agents)),
        )
        task_status.started(handle)

        await _stop_requested(shutdown, mesh.leave_requested if mesh is not None else None)
        log.info("shutting down: no new tasks, %d running", supervisor.active)
        service.accepting = False
        if mesh is not None:
            mesh.local.draining = True
        if http is not None:
            http.stop_accepting()
        if mesh is not None and mesh.lease is not None:
            # A primary hands the lease to a standby now (at most a second), rather than
            # leave it to wait out the lease once this node is gone (docs/lease.md).
            await mesh.lease.transfer()
        await supervisor.drain(config.server.shutdown_grace)
        websockets_closing.set()  # watchers have seen the last events; let them go
        if mesh is not None:
            await mesh.forwarder.flush(timeout=2.0)
        if http is not None:
            # the last requests get hypercorn's graceful timeout; the mesh is still up
            with trio.move_on_after(5.0):
                await http.finished.wait()
    # leaving the tree stops the parts in reverse order: supervisor ... mesh server, store


async def _stop_requested(shutdown: trio.Event, leave: trio.Event | None) -> None:
    """Wait for a signal (``shutdown``) or for ``brio mesh leave`` (the mesh's ``leave``)."""
    if leave is None:
        await shutdown.wait()
        return
    async with trio.open_nursery() as nursery:
        for event in (shutdown, leave):
            nursery.start_soon(_cancel_when_set, event, nursery.cancel_scope)


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _record_node(
    store: Store, config: BrioConfig, agents: dict[str, RegisteredAgent], address: str | None
) -> None:
    await store.upsert_node(
        NodeRecord(
            id=config.mesh.node_id,
            role=config.mesh.role,
            address=address,
            version=__version__,
            status="healthy",
            last_seen=datetime.now(UTC),
        )
    )
    await store.upsert_agents(
        config.mesh.node_id, [(a.name, a.kind, a.description) for a in agents.values()]
    )
