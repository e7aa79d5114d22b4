"""The node's task operations, shared by the HTTP API and (later) the mesh.

Submitting commits the task to the store before anyone is told about it, then wakes the
supervisor. Cancelling writes the terminal state first; the running agent, if it is here,
is then stopped and its late result is refused by the store's attempt check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from brio.agents.registry import RegisteredAgent
from brio.runtime.events import EventBus
from brio.runtime.supervisor import Supervisor, publish_completed
from brio.store.base import NewTask, Store, TaskRecord


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


@dataclass
class TaskService:
    store: Store
    agents: dict[str, RegisteredAgent]
    bus: EventBus
    supervisor: Supervisor
    accepting: bool = True

    async def submit(self, new: NewTask) -> tuple[TaskRecord, bool]:
        """Commit a task; return it and whether it is new (False: idempotency key reused)."""
        if not self.accepting:
            raise NotAccepting("the node is shutting down")
        if new.agent not in self.agents:
            raise UnknownAgent(new.agent, sorted(self.agents))
        if new.session_id is not None and await self.store.get_session(new.session_id) is None:
            raise UnknownSession(new.session_id)
        task, created = await self.store.create_task(new)
        if not created:
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
            if differs:
                raise IdempotencyConflict(task, differs)
        if created:
            self.bus.publish("task_created", task.id, task.session_id, task_json(task))
            self.supervisor.wake()
        return task, created

    async def cancel(self, task_id: str) -> TaskRecord | None:
        """Cancel a task in any non-terminal state; None when it was already finished."""
        # Shielded: once the store says cancelled, the agent must be stopped too, even if the
        # client that asked has gone away meanwhile.
        with trio.CancelScope(shield=True):
            task = await self.store.cancel_task(task_id)
            if task is not None:
                self.supervisor.cancel_local(task_id)
                publish_completed(self.bus, task)
        return task
