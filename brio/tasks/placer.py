"""The scheduler's driver: it moves queued tasks, live nodes and time into
``brio.core.scheduler.Scheduler`` and writes what it decides.

It runs only as primary work: inside the ``primary`` nursery of the coordinator that holds
the lease (``brio.mesh.primary``), or, on a node without a mesh, as that node's own
``LocalPrimary``. A single node is a cluster of one: the same code places its tasks on
itself. Each round:

1. the tasks of nodes that are down (failed, removed) go back to the queue with
   ``attempt + 1``, in one fenced write, and their events say so;
2. the head of the queue and the load per node (two queries, sent at once) and the live
   nodes (a ``NodeDirectory``) go into ``Scheduler.plan``; the head is only about as long
   as what could be placed (see below);
3. the plan's assignments land in one write conditional on the fence (``FenceLost`` if it
   moved: a newer primary exists), and each node is told of its batch in one notice.

How much of the queue a round reads: with a long queue and full nodes, each finished task
wakes a round that can place one task, so reading (and planning) ``batch`` tasks each time
would be almost all waste. The first page is the free room the nodes had when the last round
ended (its read loads plus its assignments; a node not seen then counts as empty), plus one
slot per ``slot_freed`` since, plus ``margin`` for tasks that wait for something other than
room. The loads come with that page, so the room is then known: while the page was full and
a node still has room, the next page (after the last one's key) is read, of only the tasks
that the nodes with room may take (``Scheduler.openings``: unpinned tasks of the agents they
run, tasks pinned to them), and planned with the loads that the pages before it left. That
is the same greedy walk as one plan of the whole queue, since a task left out would have
waited anyway and its wait changes nothing else: the scheduler's fairness holds, and a head
of tasks that wait for a node that is not there (or for full nodes while another has room)
does not starve the tasks behind it, however long. A round stops at the end of the queue,
when no node has room, or after ``batch`` tasks read.

A node whose room a round found nothing queued to use (it read to the end of what such
nodes may take) is idle: later rounds count its room neither in the first page nor as a
reason to read on, until a ``wake`` (a submit, a node's change) or a poll (what only time
changes: a session's stickiness expiring) says that may have changed. Without it, a node
kept free by ``node_affinity`` would make every round look through the queue again.

A round runs when woken (``wake``: a submit here, a notice from another coordinator, a task
put back in the queue, a change of a peer's state; ``slot_freed``: a task finished, which
matters only while the last round left tasks waiting for room, or some unread) and at least
every ``poll`` seconds; a round that read ``batch`` tasks, placed some and still had room is
followed at once by the next. Wakes that come while a round runs make one next round, so
that a burst of submits is placed in a few rounds, not one each.

A task submitted on the primary while the queue is known to be empty is placed as it comes
(``create_task``): the last round read the whole queue and placed all of it, and nothing has
woken the placer since, so a round now would read just this task. The scheduler plans it alone
on the loads that round left (see *The loads between rounds*), and the store inserts it
already assigned, in the same statement or transaction as the insert and conditional on the
fence; then its node is told. That is three
store round trips fewer between submit and start (the wake, the reads, the assignment) for the
same decision. Such inserts run concurrently (so that SQLite's group commit still takes many
in one fsync), but never beside a round: a round waits for those in flight before it reads,
and submits while it runs take the queue, so that no round's read of the loads misses a
placement. A task the plan cannot place now, a fence that moved, or a node the
last round did not see makes the insert a plain queued one and wakes a round, as any submit.

The loads between rounds (``brio.core.loads.Loads``): a round reads the ids of the tasks on
each node (assigned or running: one row per busy slot, at most the cluster's slots), and
the count it plans on stays an upper bound of the real loads until the next read: every
placement adds one, and a completion (``slot_freed``: a node's forwarded ``task_completed``,
or this node's own supervisor) takes one off only for a task the count holds, once. So under
a steady load, where every submit follows a completion (a closed loop), the submit finds the
room that completion left and is placed as it comes, instead of finding every node full and
waiting for a round.

No round is skipped on the estimate alone, even when it says every node is full: a cancel,
a requeue, or a finish whose forwarded event was lost frees a slot with no notice at all, so
the room the loads show is no upper bound (a freed slot they do not count adds one to the
first page); the loads are read in the same round trip as the first page anyway, and that
page is then ``margin`` tasks or so.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import trio

from brio.config.model import BrioConfig
from brio.core.loads import Loads
from brio.core.scheduler import (
    Assign,
    Candidate,
    QueuedTask,
    Scheduler,
    SchedulerSettings,
    Wait,
)
from brio.core.tasks import TaskStatus
from brio.store.base import (
    Assignment,
    FenceLost,
    NewTask,
    Placement,
    QueuedRecord,
    Store,
    TaskRecord,
)
from brio.tasks.events import EventBus
from brio.tasks.supervisor import publish_update

log = logging.getLogger(__name__)

BATCH = 500  # at most this many queued tasks read and planned in one round
MARGIN = 16  # read beyond the free room: tasks that wait for something else than room
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
        margin: int = MARGIN,
        poll: float = POLL,
    ) -> None:
        if batch < 1 or margin < 1:
            raise ValueError(f"batch and margin must be >= 1, got {batch} and {margin}")
        self.store = store
        self.scheduler = scheduler
        self.directory = directory
        self.bus = bus
        self.batch = batch
        self.margin = margin
        self.poll = poll
        self._wake = trio.Event()
        self._waits_logged: dict[str, float] = {}
        self.placed = 0  # assignments that landed, for status and tests
        self.redistributed = 0  # tasks put back from nodes that went down
        self.waiting = 0  # queued tasks that no node could take in the last round (of those read)
        self.read = 0  # queued tasks read, over all rounds (for tests and status)
        self._capacity_waits = 0  # of those waiting, the ones that wait only for room
        self._unread = False  # the last round stopped before the end of the queue
        # for the size of the next round's first page:
        self._loads = Loads()  # per node, as the last round left them (brio.core.loads)
        self._freed = 0  # slot_freed calls since the last round's reads began
        self._idle: set[str] = set()  # nodes whose room no queued task could use
        self._wakes = 0  # wake calls, to tell whether one came during a round
        self._epoch: int | None = None  # while ``run`` places tasks
        self._rounding = False  # a round runs (or waits for the placed inserts in flight)
        self._in_flight = 0  # inserts of tasks placed as they came, not yet answered
        self._settled = trio.Event()  # set when the last of them is answered
        self._empty = False  # the queue is known empty: submits here may be placed at once

    @property
    def places_submits(self) -> bool:
        """Whether a submit here now is placed as it comes (``create_task``)."""
        return self._epoch is not None and self._empty and not self._rounding

    def wake(self) -> None:
        """Something changed (a task was queued, a node came or went): plan now."""
        self._idle = set()  # a new task may use the room that none could
        self._empty = False
        self._wakes += 1
        self._wake.set()

    async def create_task(self, new: NewTask) -> tuple[TaskRecord, bool]:
        """Commit a submitted task (``Store.create_task``), already placed when the queue is
        known empty (see the module docstring). The caller announces it: ``tell`` for a task
        that comes back assigned, a ``wake`` for one that is queued."""
        placement = self._place_new(new) if self.places_submits else None
        if placement is None:
            return await self.store.create_task(new)
        generation = self._loads.generation
        self._in_flight += 1
        try:
            task, created = await self.store.create_task(new, placement)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._settled.set()
        if created and task.status is not TaskStatus.ASSIGNED:
            self._empty = False  # the fence moved: it waits in the queue for a round
        elif created and task.node_id == placement.node_id:
            self._loads.placed(placement.node_id, task.id, generation)
        return task, created

    def _place_new(self, new: NewTask) -> Placement | None:
        """Where a round would place ``new`` now, or None (and the path off until a round
        finds the queue empty again: the task waits in the queue) when this cannot be told
        here. Synchronous: the loads it counts on cannot change while it decides."""
        epoch = self._epoch
        assert epoch is not None
        self._empty = False  # until it is placed: back on below
        nodes: list[Candidate] = []
        for candidate in self.directory.candidates():
            load = self._loads.get(candidate.node_id)
            if load is None:  # a node the last round did not see: its load is unknown
                return None
            nodes.append(replace(candidate, load=load))
        task = QueuedTask(
            task_id="",  # not yet known; a plan of one task does not need it
            agent=new.agent,
            attempt=1,
            priority=new.priority,
            session_id=new.session_id,
            target_node=new.node_id,
        )
        plan = self.scheduler.plan([task], nodes, trio.current_time())
        if not plan.assignments:
            return None
        node_id = plan.assignments[0].node_id
        self._loads.reserve(node_id)  # a task replayed by its key leaves this too high: safe
        self._empty = True
        return Placement(epoch, node_id)

    def slot_freed(self, node_id: str, task_id: str) -> None:
        """``task_id`` finished on ``node_id``: its slot comes off the loads if they count it
        (module docstring). Plan now only if the last round left tasks waiting for room, or
        stopped reading the queue for want of room. A finish with nothing waiting would cost
        a round of store reads that can place nothing; a task queued meanwhile wakes the
        placer itself."""
        if not self._loads.finished(node_id, task_id):
            self._freed += 1  # room the loads do not show: for the next round's first page
        if self._capacity_waits or self._unread:
            self._wake.set()

    async def run(self, epoch: int) -> None:
        """Place tasks under ``epoch`` until cancelled; raises ``FenceLost`` when deposed."""
        log.info("placing tasks for epoch %d", epoch)
        self._idle = set()
        self._loads.clear()  # another primary may have placed meanwhile
        self._empty = False
        self._epoch = epoch
        try:
            while True:
                # A fresh event before the round: a wake that comes while it runs (a submit
                # after its queue read) is kept for the next round, and wakes during one round
                # coalesce into one next round.
                self._wake = trio.Event()
                self._rounding = True  # submits from now on take the queue
                try:
                    while self._in_flight:  # placed before the round: its reads must see them
                        self._settled = trio.Event()
                        await self._settled.wait()
                    full = await self.round(epoch)
                finally:
                    self._rounding = False
                if not full:
                    with trio.move_on_after(self.poll) as poll:
                        await self._wake.wait()
                    if poll.cancelled_caught:
                        # a poll: the backstop for lost notices, and what only time changes (a
                        # session's stickiness expiring) may open idle room too
                        self._idle = set()
        finally:
            self._epoch = None
            self._empty = False

    async def round(self, epoch: int) -> bool:
        """One round; True when it read ``batch`` tasks, placed some and room is left (more
        may be placeable at once)."""
        now = trio.current_time()
        freed, self._freed = self._freed, 0
        wakes = self._wakes
        limit = self._first_page(freed)
        on_nodes, page = await self._read(limit)
        t_read = trio.current_time()
        down = self.directory.down(set(on_nodes))
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
                # place them in this round: read the queue (and the loads) again; they may
                # be for the room of idle nodes
                self._idle = set()
                on_nodes, page = await self._read(limit)
            for node_id in down:
                self.scheduler.node_down(node_id, now)
        nodes = [
            replace(c, load=len(on_nodes.get(c.node_id, ()))) for c in self.directory.candidates()
        ]
        assignments: list[Assign] = []
        waits: list[Wait] = []
        read = pages = 0
        first_full = len(page) == limit  # more may be queued than this round has read
        while True:
            read += len(page)
            pages += 1
            if page:
                plan = self.scheduler.plan([_queued(q) for q in page], nodes, now)
                assignments += plan.assignments
                waits += plan.waits
                nodes = _with_added(nodes, plan.assignments)
            # room on idle nodes is no reason to read on: nothing queued could use it
            useful = [n for n in nodes if n.node_id not in self._idle]
            room = self.scheduler.room(useful)
            if len(page) < limit or room == 0 or read >= self.batch:
                break
            # the next page holds only what the nodes still with room may take
            limit = min(self.batch - read, room + self.margin)
            last, open_ = page[-1], self.scheduler.openings(useful)
            page = await self.store.queued_tasks_after(
                (last.priority, last.seq), limit, sorted(open_.agents), sorted(open_.nodes)
            )
        self.read += read
        self.waiting = len(waits)
        self._capacity_waits = sum(1 for wait in waits if wait.for_capacity)
        # tasks were left unread (or skipped by a later page: they wait for full or idle nodes)
        self._unread = first_full
        self._loads.reset({n.node_id: n.load for n in nodes}, on_nodes)
        generation = self._loads.generation
        # Nodes with room that nothing queued could use: the next rounds leave their room
        # out of the first page and read no further for it, until a wake (a submit, a node's
        # change) or a poll says that may have changed. They are those with room when the
        # round read to the end of what such nodes may take; else those that were idle.
        free = {n.node_id for n in nodes if n.load < n.capacity}
        if wakes != self._wakes:
            self._idle = set()
        elif len(page) < limit:
            self._idle = free
        else:
            self._idle &= free
        self._log_waits(waits, now)
        t_plan = trio.current_time()
        if assignments:
            batch = [Assignment(a.task_id, a.attempt, a.node_id) for a in assignments]
            landed = await self.store.assign_tasks(epoch, batch)
            if not landed:
                fence = await self.store.fence_epoch()
                if fence != epoch:
                    raise FenceLost(fence)
            for task in landed:
                if task.node_id is not None:
                    self._loads.placed(task.node_id, task.id, generation)
            self.tell(landed)
        # The whole queue was read and placed, and nothing was queued meanwhile: until a wake,
        # a submit here may be placed as it comes (create_task).
        self._empty = not first_full and not waits and wakes == self._wakes
        log.debug(
            "round: %d queued read in %d page(s), %d placed, %d wait; "
            "read %.1f ms, plan %.1f ms, assign %.1f ms",
            read,
            pages,
            len(assignments),
            len(waits),
            (t_read - now) * 1e3,
            (t_plan - t_read) * 1e3,
            (trio.current_time() - t_plan) * 1e3,
        )
        return read >= self.batch and room > 0 and bool(assignments)

    def _first_page(self, freed: int) -> int:
        """How many queued tasks the round reads with the loads: the room the last round
        left (a node it did not see counts as empty; one whose room no queued task could use
        then, not at all), ``freed`` slots, and the margin; never more than ``batch``."""
        known = [
            replace(c, load=self._loads.get(c.node_id) or 0)
            for c in self.directory.candidates()
            if c.node_id not in self._idle
        ]
        return min(self.batch, self.scheduler.room(known) + freed + self.margin)

    async def _read(self, limit: int) -> tuple[dict[str, list[str]], list[QueuedRecord]]:
        """The tasks on each node and the first ``limit`` queued tasks, read at once (two
        connections): a round waits for one store round trip, not two."""
        on_nodes: dict[str, list[str]] = {}
        queued: list[QueuedRecord] = []

        async def read_loads() -> None:
            nonlocal on_nodes
            on_nodes = await self.store.node_tasks()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_loads)
                queued = await self.store.queued_tasks(limit)
        except BaseExceptionGroup as group:
            # the store's own error (or the cancellation), as a read one after the other
            # would raise it: callers catch StoreError and FenceLost, not groups
            raise group.exceptions[0] from None
        return on_nodes, queued

    def tell(self, landed: Sequence[TaskRecord]) -> None:
        """Announce tasks placed (by a round, or by ``create_task``): their update, and one
        notice to each node of its tasks."""
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


def _queued(q: QueuedRecord) -> QueuedTask:
    return QueuedTask(
        task_id=q.id,
        agent=q.agent,
        attempt=q.attempt,
        priority=q.priority,
        seq=q.seq,
        session_id=q.session_id,
        target_node=q.target_node,
    )


def _with_added(nodes: list[Candidate], assignments: Sequence[Assign]) -> list[Candidate]:
    """``nodes`` with the load of ``assignments`` added: what the next page is planned on."""
    added = Counter(a.node_id for a in assignments)
    return [replace(n, load=n.load + added[n.node_id]) if n.node_id in added else n for n in nodes]
