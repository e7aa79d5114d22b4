"""The simulated database: one actor holding the fence, and the log of what it accepted.

It uses the very ``brio.core.fence.Fence`` whose rule the real stores implement in SQL, so the
``no-fence-check`` knob switches off the same check here as in the rule's one home. ``Tasks``
is the tasks table behind the same fence, with the scheduler's and the workers' statements.
"""

from __future__ import annotations

from dataclasses import dataclass

from brio.core.fence import Fence
from brio.core.lease import SafetyKnobs
from brio.core.tasks import TaskStatus, predecessors


@dataclass(frozen=True)
class Accepted:
    """One entry of the store's log, in the order the store accepted them."""

    time: float  # true time
    node: str
    epoch: int
    kind: str  # "raise" or "write"


@dataclass(frozen=True)
class Answer:
    ok: bool
    fence_epoch: int  # the fence after the request: what a refused primary learns


class Store:
    def __init__(self, knobs: SafetyKnobs) -> None:
        self.fence = Fence(knobs)
        self.log: list[Accepted] = []

    def raise_fence(self, now: float, node: str, epoch: int) -> Answer:
        """Raise the fence to ``epoch`` for ``node``.

        A retried raise whose first attempt landed (its reply lost) finds the fence already at
        its epoch: the real driver reads the fence back and sees itself as the holder, so this
        answers yes without logging a second raise.
        """
        if self.fence.raise_to(epoch, node):
            self.log.append(Accepted(now, node, epoch, "raise"))
            return Answer(True, epoch)
        mine = self.fence.epoch == epoch and self.fence.holder == node
        return Answer(mine, self.fence.epoch)

    def write(self, now: float, node: str, epoch: int) -> Answer:
        """A primary's fenced write: it lands only while the fence holds its epoch."""
        if not self.fence.admits(epoch):
            return Answer(False, self.fence.epoch)
        self.log.append(Accepted(now, node, epoch, "write"))
        return Answer(True, self.fence.epoch)


# ---------------------------------------------------------------- tasks


@dataclass
class TaskRow:
    """One row of the store's tasks table."""

    task_id: str
    seq: int
    agent: str
    session_id: str | None
    target_node: str | None
    queued_at: float  # true time it last became queued: placement latency starts here
    attempt: int = 1
    status: TaskStatus = TaskStatus.QUEUED
    node: str | None = None
    result: tuple[str, int] | None = None  # who recorded it, for which attempt


@dataclass(frozen=True)
class Completion:
    """A result the store accepted."""

    time: float
    task_id: str
    node: str
    attempt: int  # the attempt that the worker ran
    current: int  # the task's attempt in the store when it landed


#: The statuses as module constants: an enum member read through its class
#: (``TaskStatus.QUEUED``) costs ten times a global's read, and the statements read them for
#: every row they touch.
QUEUED, ASSIGNED, RUNNING = TaskStatus.QUEUED, TaskStatus.ASSIGNED, TaskStatus.RUNNING
SUCCEEDED = TaskStatus.SUCCEEDED
#: The statuses that count as a node's load and that a requeue takes back (the SQL's
#: ``predecessors(QUEUED)``).
_HELD = predecessors(QUEUED) - {QUEUED}
#: The statuses a result may land on (computed once: ``predecessors`` builds its set anew).
_FINISHABLE = predecessors(SUCCEEDED)


class Tasks:
    """The tasks table and the statements of ``brio.store`` that touch it, as the scheduler
    and the supervisor use them: each a function of the table, the fence and its arguments.

    Assignments and the primary's requeue are conditional on the fence (``Fence.admits``, so
    the lease's ``no-fence-check`` switches them off too); ``assign_fence=False`` switches off
    the assignments' alone. A result lands only for a running task at the attempt given
    (``attempt_check=False``: at any attempt, as long as it is running). The indexes (queued
    rows, load and assigned rows per node) stand for the real tables' indexes.
    """

    def __init__(self, fence: Fence, *, assign_fence: bool, attempt_check: bool) -> None:
        self.fence = fence
        self.rows: dict[str, TaskRow] = {}
        self.completions: list[Completion] = []
        self.results: dict[str, int] = {}  # task -> results recorded
        self._assign_fence = assign_fence
        self._attempt_check = attempt_check
        self._queued: dict[str, TaskRow] = {}
        self._held: dict[str, dict[str, TaskRow]] = {}  # node -> its assigned and running rows
        self._assigned: dict[str, int] = {}  # node -> how many of them are assigned

    def _move(self, row: TaskRow, status: TaskStatus, node: str | None) -> None:
        if row.status is QUEUED:
            del self._queued[row.task_id]
        elif row.status in _HELD and row.node is not None:
            del self._held[row.node][row.task_id]
            if row.status is ASSIGNED:
                self._assigned[row.node] -= 1
        row.status, row.node = status, node
        if status is QUEUED:
            self._queued[row.task_id] = row
        elif status in _HELD and node is not None:
            self._held.setdefault(node, {})[row.task_id] = row
            if status is ASSIGNED:
                self._assigned[node] = self._assigned.get(node, 0) + 1

    def submit(self, now: float, row: TaskRow) -> None:
        if row.task_id not in self.rows:
            self.rows[row.task_id] = row
            self._queued[row.task_id] = row

    def loads(self) -> dict[str, int]:
        return {node: len(rows) for node, rows in sorted(self._held.items()) if rows}

    def has_queued(self) -> bool:
        return bool(self._queued)

    def has_assigned(self, node: str) -> bool:
        return self._assigned.get(node, 0) > 0

    def queued(self, limit: int) -> list[TaskRow]:
        return sorted(self._queued.values(), key=lambda r: r.seq)[:limit]

    def assign(self, epoch: int, batch: tuple[tuple[str, int, str], ...]) -> list[TaskRow] | None:
        """None when the fence refused the batch; else the rows that landed."""
        if self._assign_fence and not self.fence.admits(epoch):
            return None
        landed = []
        for task_id, attempt, node in batch:
            row = self.rows.get(task_id)
            if row is not None and row.attempt == attempt and row.status is QUEUED:
                self._move(row, ASSIGNED, node)
                landed.append(row)
        return landed

    def requeue_nodes(self, now: float, epoch: int, nodes: tuple[str, ...]) -> list[TaskRow] | None:
        if not self.fence.admits(epoch):
            return None
        return self._requeue(now, nodes)

    def requeue_mine(self, now: float, node: str) -> list[TaskRow]:
        return self._requeue(now, (node,))

    def _requeue(self, now: float, nodes: tuple[str, ...]) -> list[TaskRow]:
        back = sorted(
            (row for node in nodes for row in self._held.get(node, {}).values()),
            key=lambda r: r.seq,
        )
        for row in back:
            self._move(row, QUEUED, None)
            row.queued_at = now
            row.attempt += 1
        return back

    def claim(self, node: str, limit: int) -> list[TaskRow]:
        if not self.has_assigned(node):
            return []
        mine = [r for r in self._held[node].values() if r.status is ASSIGNED]
        claimed = sorted(mine, key=lambda r: r.seq)[:limit]
        for row in claimed:
            self._move(row, RUNNING, node)
        return claimed

    def finish(self, now: float, node: str, task_id: str, attempt: int) -> Completion | None:
        row = self.rows.get(task_id)
        if row is None or row.status not in _FINISHABLE:
            return None
        if self._attempt_check and row.attempt != attempt:
            return None
        self._move(row, SUCCEEDED, row.node)
        row.result = (node, attempt)
        done = Completion(now, task_id, node, attempt, row.attempt)
        self.completions.append(done)
        self.results[task_id] = self.results.get(task_id, 0) + 1
        return done
