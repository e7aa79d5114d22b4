"""A node without a mesh is a cluster of one: it is its own primary and its only candidate.

``LocalPrimary`` is the part that makes it so. It raises the fence to a new epoch at start
(nobody else places tasks on this database) and runs the same ``Placer`` a mesh primary runs,
so that there is one path for placement. If the fence moves anyway (a second node without a
mesh on the same PostgreSQL database: not a supported set-up), it says so and raises it again.
"""

from __future__ import annotations

import logging

import trio

from brio.agents.registry import RegisteredAgent
from brio.core.scheduler import Candidate
from brio.store.base import FenceLost, Store
from brio.tasks.placer import Placer
from brio.tasks.supervisor import Supervisor

log = logging.getLogger(__name__)


class SingleNodeDirectory:
    """The node itself, as the placer's only candidate."""

    def __init__(
        self, node_id: str, role: str, agents: dict[str, RegisteredAgent], supervisor: Supervisor
    ) -> None:
        self.node_id = node_id
        self.role = role
        self.agents = frozenset(agents)
        self.supervisor = supervisor

    def candidates(self) -> list[Candidate]:
        return [
            Candidate(
                node_id=self.node_id,
                agents=self.agents,
                capacity=self.supervisor.max_agents,
                load=0,
                role=self.role,
                draining=not self.supervisor.accepting,
            )
        ]

    def down(self, with_tasks: set[str]) -> list[str]:
        """Tasks left on another node id (this data dir's node had another id, or this
        database served a mesh before): nobody else will run them."""
        return sorted(with_tasks - {self.node_id})

    def notify(self, node_id: str, task_ids: list[str]) -> None:
        self.supervisor.wake()


class LocalPrimary:
    def __init__(self, node_id: str, store: Store, placer: Placer) -> None:
        self.node_id = node_id
        self.store = store
        self.placer = placer
        self.epoch: int | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            epoch = await self.store.fence_epoch() + 1
            if not await self.store.raise_fence(epoch, self.node_id):
                continue  # raised by someone else meanwhile: try the next epoch
            self.epoch = epoch
            if not started:
                task_status.started()
                started = True
            try:
                await self.placer.run(epoch)
            except FenceLost as exc:
                log.error(
                    "another node raised the fence of this database (%s): only one node "
                    "without a mesh may use a database; taking it back",
                    exc,
                )
                await trio.sleep(1.0)
