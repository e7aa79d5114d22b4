"""The store's typed interface, shared by the SQLite and PostgreSQL backends.

Everything the node keeps durably goes through this protocol: tasks, sessions and their
messages, nodes, agents, the fence (the epoch of the latest primary coordinator, which stops a
deposed primary from writing), the primary's cluster view, and configuration. Methods are
trio-native coroutines; the PostgreSQL backend reaches asyncpg through the single trio-asyncio
adapter (``brio.aio``).

Updates that move a task are conditional (``WHERE status IN (...) AND attempt = ...``) and
return ``None`` when the condition no longer holds, so racing writers cannot both win.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from brio.core.tasks import TaskStatus

JSON = Any

# The most tasks one create_tasks call inserts (one transaction); callers cap below it.
MAX_CREATE_BATCH = 1000


class StoreError(Exception):
    """A store operation failed in a way the caller should report, not crash on."""


class FenceLost(Exception):
    """The store's fence moved past our epoch: a newer primary exists."""

    def __init__(self, fence_epoch: int) -> None:
        super().__init__(f"the fence is at epoch {fence_epoch}")
        self.fence_epoch = fence_epoch


class NotFound(StoreError):
    """The named row does not exist."""


@dataclass(frozen=True, slots=True)
class NewTask:
    agent: str
    prompt: str
    input: JSON = field(default_factory=dict)
    session_id: str | None = None
    idempotency_key: str | None = None
    priority: int = 0
    node_id: str | None = None  # the node a "node/agent" target names; None: any node


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: str
    seq: int
    agent: str
    prompt: str
    input: JSON
    session_id: str | None
    idempotency_key: str | None
    priority: int
    status: TaskStatus
    node_id: str | None  # the node it is assigned to or ran on
    attempt: int
    result: JSON | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class QueuedRecord:
    """What the scheduler needs of a queued task."""

    id: str
    agent: str
    attempt: int
    priority: int
    seq: int
    session_id: str | None
    target_node: str | None  # the pin of a "node/agent" target


@dataclass(frozen=True, slots=True)
class Assignment:
    """One task placed on one node, for this attempt."""

    task_id: str
    attempt: int
    node_id: str


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the primary placed a task as it was submitted, under its ``epoch``."""

    epoch: int
    node_id: str


@dataclass(frozen=True, slots=True)
class TaskFilter:
    status: TaskStatus | None = None
    agent: str | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class TaskPage:
    tasks: list[TaskRecord]
    next_cursor: str | None  # opaque; pass back as ``cursor`` for the next page


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    title: str | None
    metadata: JSON
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: int
    session_id: str
    role: str  # "user" | "assistant" | "system"
    content: str
    task_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NodeRecord:
    id: str
    role: str
    address: str | None
    version: str
    status: str
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class AgentRecord:
    name: str
    kind: str
    description: str
    node_id: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class FenceRecord:
    epoch: int  # 0 until a primary raised it
    holder: str | None  # the node that raised it last
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class NodeStateRecord:
    """One row of the cluster view: a node's state as the primary coordinator saw it."""

    node_id: str
    state: str
    epoch: int  # the epoch of the primary that wrote the row
    holder: str  # that primary's node id
    updated_at: datetime


class Store(Protocol):
    """What every backend provides. All times are UTC."""

    backend: str  # "sqlite" | "postgresql"

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreError unless the database answers a trivial query."""

    async def schema_version(self) -> int: ...

    # tasks
    async def create_task(
        self, new: NewTask, placement: Placement | None = None
    ) -> tuple[TaskRecord, bool]:
        """Insert a queued task; with an idempotency key already used, return that task
        and False. With ``placement``, the task is inserted already assigned to its node if
        the fence still holds its epoch (in the same statement or transaction), else queued."""

    async def create_tasks(
        self, batch: Sequence[NewTask]
    ) -> list[tuple[TaskRecord, bool] | NotFound]:
        """Insert every task of ``batch`` in one transaction (one commit), each as
        ``create_task`` would: an idempotency key already used (in the store, or by an earlier
        item of the batch) gives that task and False; an item naming an unknown session gives
        a NotFound in its place while the others are still inserted. One outcome per item, in
        the batch's order. ValueError for more than ``MAX_CREATE_BATCH`` items."""

    async def get_task(self, task_id: str) -> TaskRecord | None: ...

    async def list_tasks(
        self, filt: TaskFilter, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        """Newest first. Raise ValueError for a cursor this store did not hand out."""

    async def claim_task(self, node_id: str, agents: list[str]) -> TaskRecord | None:
        """Move the best queued task (priority, then age) that runs one of ``agents`` and is
        pinned to ``node_id`` or to no node into ``assigned`` on ``node_id``; None if none."""

    async def mark_running(self, task_id: str, attempt: int) -> TaskRecord | None:
        """assigned -> running for this attempt; None if the task moved on meanwhile."""

    async def finish_task(
        self,
        task_id: str,
        attempt: int,
        status: TaskStatus,
        *,
        result: JSON | None = None,
        error: str | None = None,
        messages: list[tuple[str, str]] | None = None,
    ) -> TaskRecord | None:
        """Record a terminal status for this attempt and, in the same transaction, append
        ``messages`` ((role, content) pairs) to the task's session. None if the attempt is
        stale or the task is already terminal."""

    async def cancel_task(self, task_id: str) -> TaskRecord | None:
        """Any non-terminal state -> cancelled; None if already terminal (or unknown)."""

    async def requeue_task(self, task_id: str, attempt: int) -> TaskRecord | None:
        """assigned/running -> queued with attempt + 1 and no node; None if stale."""

    async def requeue_node_tasks(self, node_id: str) -> list[TaskRecord]:
        """Requeue every assigned or running task of ``node_id`` (attempt + 1)."""

    async def count_tasks(self, status: TaskStatus) -> int: ...

    # the scheduler (the primary) and the workers it assigns to
    async def queued_tasks(self, limit: int) -> list[QueuedRecord]:
        """The first ``limit`` queued tasks, priority first, then age."""

    async def queued_tasks_after(
        self, after: tuple[int, int], limit: int, agents: Sequence[str], nodes: Sequence[str]
    ) -> list[QueuedRecord]:
        """The next ``limit`` queued tasks in the same order after ``after`` (the ``(priority,
        seq)`` of the last task of a page read before), of those that are not pinned and run
        one of ``agents``, or are pinned to one of ``nodes``: the next page of what nodes with
        room might take."""

    async def node_tasks(self) -> dict[str, list[str]]:
        """The ids of the tasks assigned to or running on each node (its load)."""

    async def assign_tasks(self, epoch: int, batch: list[Assignment]) -> list[TaskRecord]:
        """queued -> assigned on each assignment's node, for that attempt, in one write that
        lands only while the fence is at ``epoch``. The tasks that moved (a task cancelled
        or requeued meanwhile is skipped); none at all if the fence moved."""

    async def requeue_nodes_tasks(self, epoch: int, node_ids: list[str]) -> list[TaskRecord]:
        """Every assigned or running task of these nodes -> queued with attempt + 1, while
        the fence is at ``epoch`` (the primary redistributing a failed node's work)."""

    async def running_on_node(self, node_id: str) -> list[TaskRecord]:
        """The tasks the store has ``running`` on ``node_id``, oldest first."""

    async def claim_assigned(self, node_id: str, agents: list[str], limit: int) -> list[TaskRecord]:
        """Up to ``limit`` tasks assigned to ``node_id`` -> running, priority then age."""

    # sessions and conversation history
    async def create_session(
        self, title: str | None = None, metadata: JSON = None
    ) -> SessionRecord: ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def list_sessions(self, limit: int = 50, offset: int = 0) -> list[SessionRecord]: ...

    async def append_messages(
        self, session_id: str, messages: list[tuple[str, str]], task_id: str | None = None
    ) -> list[MessageRecord]:
        """Append in order; raise NotFound for an unknown session."""

    async def list_messages(self, session_id: str, limit: int | None = None) -> list[MessageRecord]:
        """Oldest first; with ``limit``, the newest ``limit`` messages, still oldest first."""

    # nodes and agents
    async def upsert_node(self, node: NodeRecord) -> None: ...

    async def list_nodes(self) -> list[NodeRecord]: ...

    async def upsert_agents(self, node_id: str, agents: list[tuple[str, str, str]]) -> None:
        """Replace this node's agents with (name, kind, description) triples."""

    async def list_agents(self) -> list[AgentRecord]: ...

    # the fence and the cluster view: what the primary coordinator writes
    async def fence_epoch(self) -> int: ...

    async def fence(self) -> FenceRecord: ...

    async def raise_fence(self, epoch: int, holder: str) -> bool:
        """Set the fence to ``epoch`` if it is higher than the current one; True on success.

        A new primary raises it to its epoch before it writes anything, which from then on
        refuses the writes of every earlier primary (see ``record_cluster_view``).
        """

    async def record_cluster_view(
        self, epoch: int, holder: str, states: list[tuple[str, str]]
    ) -> bool:
        """Upsert each (node_id, state) under ``epoch`` and ``holder``, in one transaction,
        only if the fence is still at ``epoch``; False, with nothing written, if it is not.

        Every write of a primary is conditional on the fence still holding its epoch: a
        deposed primary that has not noticed yet (a long pause, a partition) is refused as
        soon as its successor raised the fence, and a primary that never raised the fence to
        its epoch cannot write at all. The check and the writes serialise with
        ``raise_fence``, so no write lands after a raise that it did not see. ValueError for
        an epoch below 1 (the fence's value before any primary) or a node listed twice.
        """

    async def cluster_view(self) -> list[NodeStateRecord]:
        """Every row of the cluster view, by node id."""

    # configuration
    async def put_config(self, key: str, value: JSON) -> None: ...

    async def get_config(self, key: str) -> JSON | None: ...
