"""The primary's count of the tasks on each node between two reads of the store.

The placer reads the load of every node once a round, and places tasks between rounds on
what that read said. For that to be safe, the count it keeps must never be below the real
load of a node (tasks assigned to it or running there): then no plan on it gives a node more
than its capacity. Only the primary adds load, so counting every placement it makes keeps
the count an upper bound. Finished tasks lower the real load; the count follows a finish
only when it can tell the finish was counted, which is what the task ids are for:

- a read replaces the count with the store's, and remembers the ids it counted;
- a placement the primary decides adds one at once (``reserve``: before its insert, so two
  decisions in flight cannot both take the last slot), and its id once the store has it
  (``placed``), unless a read has replaced the count since (``generation``);
- a finish (``finished``) takes one off only for an id it holds, and forgets the id: a
  finish that the last read already saw (its id is not there), a second report of the same
  one, or one naming another node changes nothing.

A read must not overlap a placement in flight (the placer's rounds wait for the inserts in
flight before they read): a read that missed a task landing just after it would count below
the real load. Whatever frees a slot without a report (a cancel, a requeue, a lost event)
leaves the count too high until the next read: safe, only slower. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


class Loads:
    def __init__(self) -> None:
        self._count: dict[str, int] = {}
        self._ids: dict[str, set[str]] = {}
        #: One more each time the count is replaced: a placement decided before that must
        #: not add its id after it (``placed``).
        self.generation = 0

    def reset(self, count: Mapping[str, int], ids: Mapping[str, Collection[str]]) -> None:
        """Count ``count`` per node, of which the tasks ``ids`` (a read of the store, with
        what the plan on it assigned; those ids come with ``placed`` as they land). A node
        missing from ``count`` has an unknown load."""
        self._count = dict(count)
        self._ids = {node_id: set(tasks) for node_id, tasks in ids.items()}
        self.generation += 1

    def clear(self) -> None:
        """Every load unknown (a new term: another primary may have placed meanwhile)."""
        self.reset({}, {})

    def get(self, node_id: str) -> int | None:
        """The count for ``node_id``; None when it is unknown."""
        return self._count.get(node_id)

    def reserve(self, node_id: str) -> None:
        """One more on ``node_id``: a placement decided, its task not yet in the store."""
        self._count[node_id] += 1

    def placed(self, node_id: str, task_id: str, generation: int) -> None:
        """The placement reserved under ``generation`` landed as ``task_id``."""
        if generation == self.generation and node_id in self._count:
            self._ids.setdefault(node_id, set()).add(task_id)

    def finished(self, node_id: str, task_id: str) -> bool:
        """``task_id`` finished on ``node_id``: one fewer there if it was counted (once)."""
        ids = self._ids.get(node_id)
        if ids is None or task_id not in ids or node_id not in self._count:
            return False
        ids.remove(task_id)
        self._count[node_id] -= 1
        return True
