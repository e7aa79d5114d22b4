"""This node as its peers see it: identity, agents, load and whether it drains.

Every heartbeat and every status answer carries ``LocalNode.info()``. The queue length in it
comes from ``QueueCounter``, a part of its own, so that no heartbeat waits for a query; the
same part runs the ``TaskMeter`` behind ``brio mesh stats`` (tasks run here, their run time).

``draining`` is set by ``brio mesh drain`` (and at shutdown): the primary places nothing more
here, and what runs or was already assigned finishes. It lasts until the process ends.
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
from brio.tasks.events import EventBus
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
        self.started_unix_ms = int(time.time() * 1000)

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
            started_unix_ms=self.started_unix_ms,
        )

    def state(self) -> str:
        return "draining" if self.draining else "healthy"

    def uptime(self) -> float:
        return time.monotonic() - self._started


class TaskMeter:
    """Tasks run on this node since it started, and their mean run time (``mesh stats``).

    It watches this node's own task events on the bus: a ``running`` update starts a clock, a
    ``task_completed`` stops it. A task that goes back to the queue instead (shutdown, its
    node declared down) is forgotten, not averaged.
    """

    def __init__(self, node_id: str, bus: EventBus) -> None:
        self.node_id = node_id
        self.bus = bus
        self.run_count = 0  # tasks started here
        self.ended = 0  # tasks that ended here with a measured run time
        self._total = 0.0
        self._started: dict[str, float] = {}

    @property
    def mean_seconds(self) -> float:
        return self._total / self.ended if self.ended else 0.0

    def observe(self, type_: str, task_id: str, data: dict[str, object], now: float) -> None:
        if data.get("node_id") != self.node_id:
            return
        status = data.get("status")
        if type_ == "task_update":
            if status == "running" and task_id not in self._started:
                self.run_count += 1
                self._started[task_id] = now
                if len(self._started) > 10_000:  # tasks moved away without an end seen here
                    for stale in list(self._started)[:5_000]:
                        del self._started[stale]
            elif status in ("queued", "assigned"):
                self._started.pop(task_id, None)
        elif type_ == "task_completed":
            began = self._started.pop(task_id, None)
            if began is not None:
                self.ended += 1
                self._total += now - began

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.bus.subscribe(buffer=10_000, max_bytes=64 << 20) as sub:
            # this node's own updates and ends: no JSON for the rest (Subscription.wants)
            sub.everything, sub.local_only = True, True
            sub.types = frozenset({"task_update", "task_completed"})
            task_status.started()
            async for event in sub.receive:
                sub.delivered(event)
                self.observe(event.type, event.task_id, event.data, trio.current_time())


class QueueCounter:
    """Keeps ``LocalNode.queued`` fresh with one count per interval, not one per heartbeat;
    runs the ``TaskMeter`` beside it."""

    def __init__(
        self,
        local: LocalNode,
        store: Store,
        heartbeat_interval: float,
        meter: TaskMeter | None = None,
    ) -> None:
        self.local = local
        self.store = store
        self.interval = max(0.2, min(5.0, heartbeat_interval))
        self.meter = meter

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.meter is not None:
                await nursery.start(self.meter.watch)
            task_status.started()
            await self._count()

    async def _count(self) -> None:
        while True:
            try:
                self.local.queued = await self.store.count_tasks(TaskStatus.QUEUED)
            except Exception as exc:
                log.debug("counting queued tasks failed: %s", exc)
            await trio.sleep(self.interval)
