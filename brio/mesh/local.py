"""This node as its peers see it: identity, agents, load and whether it drains.

Every heartbeat and every status answer carries ``LocalNode.info()``. The queue length in it
comes from ``QueueCounter``, a part of its own, so that no heartbeat waits for a query.
"""

from __future__ import annotations

import logging
import socket
import time

import trio

from brio import __version__
from brio.agents.registry import RegisteredAgent
from brio.config.model import BrioConfig, split_host_port
from brio.core.membership import NodeFacts
from brio.core.tasks import TaskStatus
from brio.mesh import pb
from brio.store.base import Store
from brio.tasks.supervisor import Supervisor

log = logging.getLogger(__name__)


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
    """What the membership core keeps of a peer's ``NodeInfo``."""
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


class LocalNode:
    """The facts about this node that the mesh tells others."""

    def __init__(
        self, config: BrioConfig, agents: dict[str, RegisteredAgent], supervisor: Supervisor
    ) -> None:
        self.node_id = config.mesh.node_id
        self.role: str = config.mesh.role
        self.address = advertise_address(config)  # made concrete once the listener is bound
        self.agents = agents
        self.supervisor = supervisor
        self.draining = False
        self.queued = 0  # kept fresh by QueueCounter
        self._started = time.monotonic()

    def info(self) -> pb.NodeInfo:
        return pb.NodeInfo(
            node_id=self.node_id,
            role=self.role,
            address=self.address,
            version=__version__,
            agents=[pb.AgentInfo(name=a.name, kind=a.kind) for a in self.agents.values()],
            workload=pb.Load(
                active=self.supervisor.active,
                queued=self.queued,
                max_agents=self.supervisor.max_agents,
            ),
            draining=self.draining,
            sent_unix_ms=int(time.time() * 1000),
        )

    def state(self) -> str:
        return "draining" if self.draining else "healthy"

    def uptime(self) -> float:
        return time.monotonic() - self._started


class QueueCounter:
    """Keeps ``LocalNode.queued`` fresh with one count per interval, not one per heartbeat."""

    def __init__(self, local: LocalNode, store: Store, heartbeat_interval: float) -> None:
        self.local = local
        self.store = store
        self.interval = max(0.2, min(5.0, heartbeat_interval))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                self.local.queued = await self.store.count_tasks(TaskStatus.QUEUED)
            except Exception as exc:
                log.debug("counting queued tasks failed: %s", exc)
            await trio.sleep(self.interval)
