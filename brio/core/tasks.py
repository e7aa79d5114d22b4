"""The task lifecycle as a pure transition table.

``queued -> assigned -> running -> succeeded | failed | cancelled``; a task may also go back to
``queued`` from ``assigned`` or ``running`` when its node stops or fails (the attempt counter
then grows). Every store update is conditional on the transition being allowed here, so that
two writers racing on one task cannot both win.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[TaskStatus] = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED}
)

_ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.QUEUED: frozenset({TaskStatus.ASSIGNED, TaskStatus.CANCELLED}),
    TaskStatus.ASSIGNED: frozenset(
        {TaskStatus.RUNNING, TaskStatus.QUEUED, TaskStatus.CANCELLED, TaskStatus.FAILED}
    ),
    TaskStatus.RUNNING: frozenset(
        {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.QUEUED}
    ),
    TaskStatus.SUCCEEDED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


def can_transition(current: TaskStatus, new: TaskStatus) -> bool:
    """True when a task in ``current`` may move to ``new``."""
    return new in _ALLOWED[current]


def predecessors(new: TaskStatus) -> frozenset[TaskStatus]:
    """The states from which ``new`` may be entered (used to build conditional updates)."""
    return frozenset(s for s, nexts in _ALLOWED.items() if new in nexts)
