"""The node's parts as siblings of one nursery: started in order, stopped in reverse.

Each part is an ``async def run(*, task_status)`` that reports ready with
``task_status.started(value)`` and then runs until cancelled, cleaning up in ``finally``.
Like celery's bootsteps, a later part may rely on every earlier one for as long as it runs:
the store outlives the mesh, the mesh outlives the supervisor, and so on. Each part runs in
a shielded scope of its own, so that a cancellation from outside (a second Ctrl-C) does not
reach all parts at once; the tree turns it into the same reverse-order stop as a clean exit.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

log = logging.getLogger(__name__)

Run = Callable[..., Awaitable[Any]]  # called as run(task_status=...)


@dataclass
class _Started:
    name: str
    scope: trio.CancelScope
    done: trio.Event


class PartTree:
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._parts: list[_Started] = []

    async def start(self, name: str, run: Run) -> Any:
        """Start ``run`` and wait until it is ready; return what it reported."""
        started = _Started(name, trio.CancelScope(shield=True), trio.Event())

        async def part(task_status: trio.TaskStatus[Any]) -> None:
            try:
                with started.scope:
                    await run(task_status=task_status)
            finally:
                started.done.set()

        value = await self._nursery.start(part)
        self._parts.append(started)
        log.debug("started %s", name)
        return value

    async def stop(self) -> None:
        """Cancel the parts from the last started to the first, each after the one above."""
        while self._parts:
            part = self._parts.pop()
            part.scope.cancel()
            await part.done.wait()
            log.debug("stopped %s", part.name)


@asynccontextmanager
async def part_tree() -> AsyncIterator[PartTree]:
    """A ``PartTree`` whose parts are all stopped, in reverse order, when the block exits."""
    async with trio.open_nursery() as nursery:
        tree = PartTree(nursery)
        try:
            yield tree
        finally:
            with trio.CancelScope(shield=True):
                await tree.stop()
