"""One Brio node: the root of the nursery tree that ``brio serve`` runs.

```
run_node
└── asyncio bridge (brio.aio)   asyncpg and grpclib live there
    ├── store                   opened (migrations applied) before anything else
    ├── mesh                    gRPC server, discovery, one heartbeat task per peer
    │                           (when mesh.enabled; see brio.mesh.node)
    ├── supervisor              claims tasks, runs agents (capped by mesh.max_agents)
    └── http                    hypercorn + quart-trio (when server.enabled)
```
The lease and metrics join this tree in later issues.

Shutdown is ordered: stop taking tasks and close the HTTP listeners, let running agents
finish within ``server.shutdown_grace`` (the mesh stays up meanwhile, so their events still
reach the coordinators), cancel the rest and put them back to ``queued``, then close the
mesh (GOAWAY to every connection) and the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from brio import __version__, aio
from brio.agents.registry import RegisteredAgent, build_registry
from brio.api.app import ApiDeps, create_app
from brio.config.model import BrioConfig
from brio.exc import leaves
from brio.mesh.handlers import MeshHandlers
from brio.mesh.lease_state import load_lease_state
from brio.mesh.node import MeshNode
from brio.mesh.tls import check_files
from brio.node.data_dir import MESH_ADDRESS_FILE, locked_data_dir
from brio.node.data_dir import node_id as remembered_node_id
from brio.store import open_store
from brio.store.base import NodeRecord, Store
from brio.tasks.events import EventBus
from brio.tasks.mesh_view import SingleNode
from brio.tasks.service import TaskService
from brio.tasks.supervisor import Supervisor

log = logging.getLogger(__name__)


@dataclass
class NodeHandle:
    """What a started node tells its caller (tests use it to find the bound address)."""

    node_id: str
    http_urls: list[str] = field(default_factory=list)
    store: Store | None = None
    mesh_address: str | None = None  # the bound host:port of the mesh server
    mesh: MeshNode | None = None


def _hypercorn_config(config: BrioConfig) -> HypercornConfig:
    hc = HypercornConfig()
    host = config.server.host
    hc.bind = [f"[{host}]:{config.server.port}" if ":" in host else f"{host}:{config.server.port}"]
    # Requests and WebSockets outlive the agents' grace a little, so that watchers get the
    # last events before their sockets are closed (run_node closes them after the drain).
    hc.graceful_timeout = config.server.shutdown_grace + 5.0
    # Above our own limit the app answers with a JSON error and closes (1009); hypercorn's
    # limit only guards against far larger frames.
    hc.websocket_max_message_size = 2 * config.server.max_ws_message_bytes
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


async def _record_node(
    store: Store, config: BrioConfig, agents: list[tuple[str, str, str]], address: str | None
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
    await store.upsert_agents(config.mesh.node_id, agents)


async def run_node(
    config: BrioConfig,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[NodeHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until ``shutdown`` is set, then stop in order. Raises on a start-up failure."""
    agents = build_registry(config)
    with locked_data_dir(config.data_dir):
        node_id = remembered_node_id(config)
        config = config.model_copy(
            update={"mesh": config.mesh.model_copy(update={"node_id": node_id})}
        )
        await _run(config, agents, shutdown, task_status)


async def _run(
    config: BrioConfig,
    agents: dict[str, RegisteredAgent],
    shutdown: trio.Event,
    task_status: trio.TaskStatus[NodeHandle],
) -> None:
    node_id = config.mesh.node_id
    if config.mesh.enabled:
        check_files(config.mesh.tls)  # a bad certificate fails the start, before anything runs
        load_lease_state(config.data_dir)  # and so does a corrupt lease-state file
    async with aio.open_loop():
        store = await open_store(
            config.database_url, max_connections=config.database.max_connections
        )
        try:
            bus = EventBus()
            supervisor = Supervisor(store, agents, bus, node_id, config.mesh.max_agents)
            mesh: MeshNode | None = None
            if config.mesh.enabled:
                mesh = MeshNode(config, store=store, supervisor=supervisor, bus=bus, agents=agents)
            await _record_node(
                store,
                config,
                [(a.name, a.kind, a.description) for a in agents.values()],
                mesh.address if mesh is not None else None,
            )
            service = TaskService(store, agents, bus, supervisor, mesh=mesh)
            handle = NodeHandle(node_id=node_id, store=store, mesh=mesh)
            http_stop = trio.Event()
            ws_stop = trio.Event()
            mesh_scope = trio.CancelScope()
            async with trio.open_nursery() as nursery:
                if mesh is not None:
                    handle.mesh_address = await nursery.start(_run_mesh, mesh, mesh_scope)
                    (config.data_dir / MESH_ADDRESS_FILE).write_text(handle.mesh_address + "\n")
                if config.server.enabled:
                    app = create_app(
                        ApiDeps(
                            config,
                            store,
                            service,
                            supervisor,
                            bus,
                            agents,
                            mesh if mesh is not None else SingleNode(),
                            stopping=ws_stop,
                        )
                    )
                    try:
                        handle.http_urls = await nursery.start(
                            lambda task_status: hypercorn_serve(
                                app,
                                _hypercorn_config(config),
                                shutdown_trigger=http_stop.wait,
                                task_status=task_status,
                            )
                        )
                    except* OSError as group:
                        where = f"{config.server.host}:{config.server.port}"
                        reasons = "; ".join(
                            str(getattr(e, "strerror", None) or e) for e in leaves(group)
                        )
                        raise OSError(
                            f"cannot serve HTTP on {where} ([server] host, port): {reasons}"
                        ) from group
                # Agents start only once the node can be reached: a start that fails (the
                # port is taken, say) must not have run anything.
                await nursery.start(supervisor.run)
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
                await shutdown.wait()
                log.info("shutting down: no new tasks, %d running", supervisor.active)
                service.accepting = False
                if mesh is not None:
                    mesh.draining = True
                http_stop.set()
                await supervisor.drain(config.server.shutdown_grace)
                ws_stop.set()  # watchers have seen the last events; let them go
                if mesh is not None:
                    await mesh.flush_events(timeout=2.0)
                mesh_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await store.close()
    log.info("node %s stopped", node_id)


async def _run_mesh(
    mesh: MeshNode, scope: trio.CancelScope, *, task_status: trio.TaskStatus[str]
) -> None:
    where = mesh.config.mesh.listen_addr
    with scope:
        try:
            await mesh.run(MeshHandlers(mesh).services(), task_status=task_status)
        except* OSError as group:
            reasons = "; ".join(str(getattr(e, "strerror", None) or e) for e in leaves(group))
            raise OSError(
                f"cannot serve the mesh on {where} ([mesh] listen_addr): {reasons}"
            ) from group
