"""The node's task operations, shared by the HTTP API and (later) the mesh.

Submitting commits the task to the store before anyone is told about it, then wakes the
supervisor. Cancelling writes the terminal state first; the running agent, if it is here,
is then stopped and its late result is refused by the store's attempt check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import trio

from brio.agents.registry import RegisteredAgent
from brio.core.routing import Local, Route, RouteError
from brio.core.tasks import TaskStatus
from brio.store.base import NewTask, NotFound, Store, TaskRecord
from brio.tasks.events import EventBus
from brio.tasks.supervisor import Supervisor, publish_completed


class UnknownAgent(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown agent {name!r}; known agents: {', '.join(known) or 'none'}")
        self.name = name
        self.known = known


class UnknownSession(LookupError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"unknown session {session_id!r}")
        self.session_id = session_id


class IdempotencyConflict(ValueError):
    """An idempotency key came back with a different request than the one it first named."""

    def __init__(self, task: TaskRecord, fields: list[str]) -> None:
        super().__init__(
            f"idempotency key {task.idempotency_key!r} was first used for task {task.id} with "
            f"a different {', '.join(fields)}"
        )
        self.task = task
        self.fields = fields


class NotAccepting(RuntimeError):
    """The node is shutting down and takes no new tasks."""


# Why one task of a batch was not submitted (what ``submit`` would have raised for it alone).
Refusal = UnknownAgent | UnknownSession | IdempotencyConflict | RouteError
# One task of a batch: the task and whether it is new, or why it was refused.
Submitted = tuple[TaskRecord, bool] | Refusal


def _conflict(new: NewTask, task: TaskRecord) -> IdempotencyConflict | None:
    """``task`` was found by ``new``'s idempotency key: the fields in which they differ."""
    differs = [
        name
        for name, mine, theirs in (
            ("agent", new.agent, task.agent),
            ("prompt", new.prompt, task.prompt),
            ("input", new.input, task.input),
            ("session_id", new.session_id, task.session_id),
            ("priority", new.priority, task.priority),
        )
        if mine != theirs
    ]
    return IdempotencyConflict(task, differs) if differs else None


def task_json(task: TaskRecord) -> dict[str, Any]:
    """The public JSON shape of a task (HTTP responses and ``task_created`` events)."""
    return {
        "id": task.id,
        "agent": task.agent,
        "prompt": task.prompt,
        "input": task.input,
        "session_id": task.session_id,
        "idempotency_key": task.idempotency_key,
        "priority": task.priority,
        "status": task.status.value,
        "node_id": task.node_id,
        "attempt": task.attempt,
        "result": task.result,
        "error": task.error,
        "created_at": task.created_at.isoformat(),
        "updated_at": task.updated_at.isoformat(),
        "started_at": task.started_at.isoformat() if task.started_at else None,
        "finished_at": task.finished_at.isoformat() if task.finished_at else None,
    }


class MeshRouting(Protocol):
    """What task submission needs of the mesh (``brio.mesh.router.MeshRouter`` provides it)."""

    node_id: str

    def route(self, target: str) -> Route: ...

    def remote_agents(self, node_id: str) -> tuple[str, ...] | None: ...

    def cluster_agents(self) -> dict[str, tuple[str, ...]]:
        """node id -> the agents it runs, for every node heard from (this one included)."""

    def wake_placement(self) -> None:
        """A task was queued: wake the primary's placer, here or on another coordinator."""

    def cancel_remote(self, task: TaskRecord) -> None: ...


class SubmitPlacement(Protocol):
    """The primary's placer, where it runs here (``brio.tasks.placer.Placer``): it commits a
    submitted task, already placed when it can tell where a round would put it."""

    async def create_task(self, new: NewTask) -> tuple[TaskRecord, bool]: ...

    def tell(self, placed: Sequence[TaskRecord]) -> None:
        """Announce the tasks ``create_task`` placed (their node is told)."""


@dataclass
class TaskService:
    store: Store
    agents: dict[str, RegisteredAgent]
    bus: EventBus
    supervisor: Supervisor
    accepting: bool = True
    mesh: MeshRouting | None = None
    wake_local: Callable[[], None] | None = None  # the placer of a node without a mesh
    placement: SubmitPlacement | None = None  # the placer, on a node that may be primary

    def resolve(self, target: str) -> tuple[str, str | None]:
        """The agent name and the node a target is pinned to (None: the scheduler places it).

        Raises ``UnknownAgent`` (naming what the cluster runs), or
        ``brio.core.routing.RouteError`` for a bad or unknown node.
        """
        if self.mesh is None:
            if target not in self.agents:
                raise UnknownAgent(target, sorted(self.agents))
            return target, None
        where = self.mesh.route(target)
        if "/" not in target:  # no node named: any node that runs the agent will do
            assert isinstance(where, Local)
            everywhere = self.mesh.cluster_agents()
            if not any(where.agent in agents for agents in everywhere.values()):
                named = [f"{n}/{a}" for n, agents in sorted(everywhere.items()) for a in agents]
                raise UnknownAgent(where.agent, named)
            return where.agent, None
        if isinstance(where, Local):
            if where.agent not in self.agents:
                raise UnknownAgent(where.agent, sorted(self.agents))
            return where.agent, self.mesh.node_id
        known = self.mesh.remote_agents(where.node_id)
        if known is not None and where.agent not in known:
            raise UnknownAgent(target, [f"{where.node_id}/{a}" for a in sorted(known)])
        return where.agent, where.node_id

    async def submit(self, new: NewTask) -> tuple[TaskRecord, bool]:
        """Commit a task; return it and whether it is new (False: idempotency key reused)."""
        if not self.accepting:
            raise NotAccepting("the node is shutting down")
        agent, node_id = self.resolve(new.agent)
        new = replace(new, agent=agent, node_id=node_id)
        # No get_session first: create_task checks the session in its own statement
        # (SQLite in its transaction, PostgreSQL by the foreign key), one round trip less.
        try:
            with trio.CancelScope(shield=True):  # committed: it must be announced (_announce)
                if self.placement is not None:
                    task, created = await self.placement.create_task(new)
                else:
                    task, created = await self.store.create_task(new)
        except NotFound:
            assert new.session_id is not None  # the only row a task names
            raise UnknownSession(new.session_id) from None
        if not created and (conflict := _conflict(new, task)) is not None:
            # the store answers a used key before the session; the API checks the session
            # first (docs/api.md), so a replay naming another session reads it, and only then
            if (
                "session_id" in conflict.fields
                and new.session_id is not None
                and await self.store.get_session(new.session_id) is None
            ):
                raise UnknownSession(new.session_id)
            raise conflict
        if created:
            self._announce([task])
        return task, created

    async def submit_many(self, batch: Sequence[NewTask]) -> list[Submitted]:
        """Commit many tasks in one store call; one outcome per task, in order.

        Each task is checked as ``submit`` checks it, but a refusal is that task's outcome
        rather than an exception, and the others are still committed. Raises only what refuses
        the whole batch: ``NotAccepting``, or the store's failure (then nothing was committed).
        An idempotency key an earlier task of the same batch used makes this one a replay of it.
        """
        if not self.accepting:
            raise NotAccepting("the node is shutting down")
        outcomes: dict[int, Submitted] = {}
        resolved: list[tuple[int, NewTask]] = []
        for i, new in enumerate(batch):
            try:
                agent, node_id = self.resolve(new.agent)
            except (UnknownAgent, RouteError) as exc:
                outcomes[i] = exc
                continue
            resolved.append((i, replace(new, agent=agent, node_id=node_id)))
        with trio.CancelScope(shield=True):  # committed: they must be announced (_announce)
            stored = await self.store.create_tasks([n for _, n in resolved]) if resolved else []
        created: list[TaskRecord] = []
        for (i, new), result in zip(resolved, stored, strict=True):
            if isinstance(result, NotFound):
                assert new.session_id is not None  # the only row an item names
                outcomes[i] = UnknownSession(new.session_id)
                continue
            task, is_new = result
            if is_new:
                created.append(task)
            outcomes[i] = result if is_new else (_conflict(new, task) or result)
        self._announce(created)
        return [outcomes[i] for i in range(len(batch))]

    def _announce(self, created: list[TaskRecord]) -> None:
        """Tell the subscribers of each new task, then wake the placer once.

        The store calls before it are shielded: a client that goes away while its tasks are
        being committed must not leave them committed but unannounced (unplaced until the
        placer's next poll, and missing their ``task_created``)."""
        if not created:
            return
        for task in created:
            self.bus.publish("task_created", task.id, task.session_id, task_json(task))
        placed = [task for task in created if task.status is TaskStatus.ASSIGNED]
        if placed and self.placement is not None:
            self.placement.tell(placed)
        if len(placed) == len(created):  # all placed as they came: nothing waits for a round
            return
        if self.mesh is not None:
            self.mesh.wake_placement()
        elif self.wake_local is not None:
            self.wake_local()

    async def get_task(self, task_id: str) -> TaskRecord | None:
        """The task, from the supervisor's ``recent`` when it just ended here (a finished task
        never changes, so that record is the store's), else read from the store."""
        recent = self.supervisor.recent.get(task_id)
        return recent if recent is not None else await self.store.get_task(task_id)

    async def cancel(self, task_id: str) -> TaskRecord | None:
        """Cancel a task in any non-terminal state; None when it was already finished."""
        # Shielded: once the store says cancelled, the agent must be stopped too, even if the
        # client that asked has gone away meanwhile.
        with trio.CancelScope(shield=True):
            task = await self.store.cancel_task(task_id)
            if task is not None:
                self.supervisor.recent.add(task)
                if not self.supervisor.cancel_local(task_id) and self.mesh is not None:
                    self.mesh.cancel_remote(task)
                publish_completed(self.bus, task)
        return task
