"""Helpers that several mesh test modules use: node configs, nodes started in process, and
a node's ``Mesh`` built without starting anything (for the socketless handler tests).

Fixtures shared by the modules are in ``tests/mesh/conftest.py``; the in-memory HTTP/2
connection to a node's mesh services is ``tests/mesh/channel.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from brio.agents.registry import build_registry
from brio.config.model import BrioConfig
from brio.mesh.assembly import Mesh
from brio.node.root import NodeHandle, run_node
from brio.store import open_store, sqlite_url
from brio.tasks.events import EventBus
from brio.tasks.supervisor import Supervisor

FAST = {
    "heartbeat_interval": 0.1,
    "heartbeat_timeout": 2.0,
    "suspicion_threshold": 2,
    "degraded_latency": 2.0,
}


def mesh_config(
    tmp_path: Path, node_id: str, role: str, ip: str, db: str, **mesh: Any
) -> BrioConfig:
    server = mesh.pop("server", {"host": ip, "port": 0})
    return BrioConfig.model_validate(
        {
            "data_dir": str(tmp_path / node_id),
            "server": {"shutdown_grace": 1, **server},
            "mesh": {
                "enabled": True,
                "node_id": node_id,
                "role": role,
                "listen_addr": f"{ip}:0",
                "failure_detection": FAST,
                "insecure": True,  # plaintext peers without a cluster secret (issue 11)
                **mesh,
            },
            "database": {"url": db},
            "logging": {"level": "debug"},
        }
    )


@asynccontextmanager
async def started(*configs: BrioConfig) -> AsyncIterator[list[NodeHandle]]:
    """Start nodes in order (each may name the ones before as peers); stop them all after."""
    stops = [trio.Event() for _ in configs]
    async with trio.open_nursery() as nursery:
        handles = [await nursery.start(run_node, c, s) for c, s in zip(configs, stops, strict=True)]
        try:
            yield handles
        finally:
            for stop in reversed(stops):
                stop.set()


@asynccontextmanager
async def built_mesh(
    tmp_path: Path, node_id: str = "c1", role: str = "coordinator", **mesh: Any
) -> AsyncIterator[Mesh]:
    """A node's mesh as ``Mesh.build`` wires it, on a SQLite store in ``tmp_path``: no part is
    started, no socket opened, no PostgreSQL. ``mesh`` items go to the ``[mesh]`` section."""
    # A mesh with peers must name PostgreSQL in its config, so the config does; ``Mesh.build``
    # reads no URL, and gets the SQLite store it uses as an argument.
    unused = "postgresql://brio@unused.invalid/brio"
    off = {"enabled": False}
    config = mesh_config(tmp_path, node_id, role, "127.0.0.2", unused, server=off, **mesh)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    agents = build_registry(config)
    store = await open_store(sqlite_url(tmp_path / f"{node_id}.db"))
    try:
        bus = EventBus()
        supervisor = Supervisor(store, agents, bus, node_id, config.mesh.max_agents)
        yield Mesh.build(config, store=store, supervisor=supervisor, bus=bus, agents=agents)
    finally:
        await store.close()
