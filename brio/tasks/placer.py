"""The scheduler's driver: it moves queued tasks, live nodes and time into
``brio.core.scheduler.Scheduler`` and writes what it decides.

It runs only as primary work: inside the ``primary`` nursery of the coordinator that holds
the lease (``brio.mesh.primary``), or, on a node without a mesh, as that node's own
``LocalPrimary``. A single node is a cluster of one: the same code places its tasks on
itself. Each round:

1. the tasks of nodes that are down (failed, removed) go back to the queue with
   ``attempt + 1``, in one fenced write, and their events say so;
2. the first ``batch`` queued tasks and the load per node (two queries, sent at once) and the
   live nodes (a ``NodeDirectory``) go into ``Scheduler.plan``;
3. the plan's assignments land in one write conditional on the fence (``FenceLost`` if it
   moved: a newer primary exists), and each node is told of its batch in one notice.

A round runs when woken (``wake``: a submit here, a notice from another coordinator, a task
put back in the queue, a change of a peer's state; ``slot_freed``: a task finished, which
matters only while the last round left tasks waiting for room) and at least every ``poll``
seconds; a full batch is followed at once by the next. Wakes that come while a round runs
make one next round, so that a burst of submits is placed in a few rounds, not one each.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import trio

from brio.config.model import BrioConfig
from brio.core.scheduler import Candidate, QueuedTask, Scheduler, SchedulerSettings, Wait
from brio.store.base import Assignment, FenceLost, QueuedRecord, Store, TaskRecord
from brio.tasks.events import EventBus
from brio.tasks.supervisor import publish_update

log = logging.getLogger(__name__)

BATCH = 500
POLL = 1.0
WAIT_LOG_EVERY = 60.0


class NodeDirectory(Protocol):
    """What the placer needs to know of the nodes, and how it tells them of their work."""

    def candidates(self) -> list[Candidate]:
        """Every live node that could run tasks, with load 0 (the placer fills it in)."""

    def down(self, with_tasks: set[str]) -> list[str]:
        """Nodes whose assigned and running tasks must go to others, among ``with_tasks``
        (the nodes that have some)."""

    def notify(self, node_id: str, task_ids: list[str]) -> None:
        """Tell a node that tasks were assigned to it (best effort: it polls too)."""


def scheduler_settings(config: BrioConfig) -> SchedulerSettings:
    mesh = config.mesh
    lb = mesh.load_balancing
    return SchedulerSettings(
        strategy=lb.strategy,
        weights={w.node_id: w.weight for w in lb.weights},
        node_affinity={
            name: frozenset(agent.node_affinity)
            for name, agent in config.agents.items()
            if agent.node_affinity
        },
        session_affinity=mesh.session_affinity,
        affinity_ttl=mesh.affinity_ttl,
        coordinators_run_agents=mesh.coordinators_run_agents,
    )


class Placer:
    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        directory: NodeDirectory,
        bus: EventBus,
        *,
        batch: int = BATCH,
        poll: float = POLL,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.directory = directory
        self.bus = bus
        self.batch = batch
        self.poll = poll
        self._wake = trio.Event()
        self._waits_logged: dict[str, float] = {}
        self.placed = 0  # assignments that landed, for status and tests
        self.redistributed = 0  # tasks put back from nodes that went down
        self.waiting = 0  # queued tasks that no node could take in the last round
        self._capacity_waits = 0  # of those, the ones that wait only for room

    def wake(self) -> None:
        """Something changed (a task was queued, a node came or went): plan now."""
        self._wake.set()

    def slot_freed(self) -> None:
        """A task finished somewhere: plan now only if the last round left tasks waiting for
        room. A finish with nothing waiting would cost a round of store reads that can place
        nothing; a task queued meanwhile wakes the placer itself."""
        if self._capacity_waits:
            self._wake.set()

    async def run(self, epoch: int) -> None:
        """Place tasks under ``epoch`` until cancelled; raises ``FenceLost`` when deposed."""
        log.info("placing tasks for epoch %d", epoch)
        while True:
            # A fresh event before the round: a wake that comes while it runs (a submit
            # after its queue read) is kept for the next round, and wakes during one round
            # coalesce into one next round.
            self._wake = trio.Event()
            full = await self.round(epoch)
            if not full:
                with trio.move_on_after(self.poll):
                    await self._wake.wait()

    async def round(self, epoch: int) -> bool:
        """One round; True when the batch was full (more may wait)."""
        now = trio.current_time()
        loads, queued = await self._read()
        t_read = trio.current_time()
        down = self.directory.down(set(loads))
        if down:
            back = await self.store.requeue_nodes_tasks(epoch, down)
            if back:
                self.redistributed += len(back)
                log.warning(
                    "redistributing %d task(s) of %s: %s",
                    len(back),
                    ", ".join(sorted(down)),
                    ", ".join(t.id for t in back[:10]) + (" ..." if len(back) > 10 else ""),
                )
                for task in back:
                    publish_update(self.bus, task, reason="its node is down")
                # place them in this round: read the queue (and the loads) again
                loads, queued = await self._read()
            for node_id in down:
                self.scheduler.node_down(node_id, now)
        if not queued:
            self.waiting = self._capacity_waits = 0
            return False
        nodes = [replace(c, load=loads.get(c.node_id, 0)) for c in self.directory.candidates()]
        plan = self.scheduler.plan(
            [
                QueuedTask(
                    task_id=q.id,
                    agent=q.agent,
                    attempt=q.attempt,
                    priority=q.priority,
                    seq=q.seq,
                    session_id=q.session_id,
                    target_node=q.target_node,
                )
                for q in queued
            ],
            nodes,
            now,
        )
        self.waiting = len(plan.waits)
        self._capacity_waits = plan.capacity_waits
        self._log_waits(plan.waits, now)
        t_plan = trio.current_time()
        if plan.assignments:
            batch = [Assignment(a.task_id, a.attempt, a.node_id) for a in plan.assignments]
            landed = await self.store.assign_tasks(epoch, batch)
            if not landed:
                fence = await self.store.fence_epoch()
                if fence != epoch:
                    raise FenceLost(fence)
            self._tell(landed)
        log.debug(
            "round: %d queued, %d placed, %d wait; read %.1f ms, plan %.1f ms, assign %.1f ms",
            len(queued),
            len(plan.assignments),
            len(plan.waits),
            (t_read - now) * 1e3,
            (t_plan - t_read) * 1e3,
            (trio.current_time() - t_plan) * 1e3,
        )
        return len(queued) == self.batch and bool(plan.assignments)

    async def _read(self) -> tuple[dict[str, int], list[QueuedRecord]]:
        """The load per node and the head of the queue, read at once (two connections): a
        round waits for one store round trip, not two."""
        loads: dict[str, int] = {}
        queued: list[QueuedRecord] = []

        async def read_loads() -> None:
            nonlocal loads
            loads = await self.store.node_loads()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_loads)
                queued = await self.store.queued_tasks(self.batch)
        except BaseExceptionGroup as group:
            # the store's own error (or the cancellation), as a read one after the other
            # would raise it: callers catch StoreError and FenceLost, not groups
            raise group.exceptions[0] from None
        return loads, queued

    def _tell(self, landed: Sequence[TaskRecord]) -> None:
        self.placed += len(landed)
        by_node: dict[str, list[str]] = defaultdict(list)
        for task in landed:
            publish_update(self.bus, task)
            if task.node_id is not None:
                by_node[task.node_id].append(task.id)
        for node_id, ids in by_node.items():
            self.directory.notify(node_id, ids)

    def _log_waits(self, waits: Sequence[Wait], now: float) -> None:
        """Say once a minute per task why it waits (capacity waits are normal: not at all)."""
        for wait in waits:
            if wait.for_capacity:
                continue
            if now - self._waits_logged.get(wait.task_id, -math.inf) >= WAIT_LOG_EVERY:
                self._waits_logged[wait.task_id] = now
                log.warning("task %s waits: %s", wait.task_id, wait.reason)
        if len(self._waits_logged) > 10 * self.batch:  # bounded: forget the oldest half
            for key in list(self._waits_logged)[: len(self._waits_logged) // 2]:
                del self._waits_logged[key]
