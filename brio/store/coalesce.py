"""Operations that arrive while others are under way go to the database together.

Under load a node has many store operations of one kind waiting at once (64 clients
submitting: 64 inserts). Each one alone costs a trio to asyncio crossing, a pooled
connection's acquire and release, and wakes its caller on its own. ``Coalescer`` runs them in
batches instead: the caller that finds no batch running leads one with every operation queued
by then (at most ``limit``), and the operations that arrive meanwhile wait and go as the next
batch, led by the first of them. One batch is in flight at a time, as in SQLite's group
commit: a lone caller goes at once, and the busier the node the larger the batches.

A batch runs shielded from its leader's cancellation, bounded by ``timeout``, so that one
client going away never fails the others' operations. A caller cancelled while still queued
is dropped and its operation never runs; one cancelled once its batch has been taken sees
the cancellation at once, and its operation completes (or fails) with the batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import outcome
import trio

from brio.store.base import StoreError

Op = TypeVar("Op")
R = TypeVar("R")


@dataclass(eq=False, slots=True)
class _Slot(Generic[Op, R]):
    op: Op
    done: trio.Event = field(default_factory=trio.Event)
    result: outcome.Outcome[R] | None = None
    lead: bool = False  # woken to lead the next batch, not with its result


class Coalescer(Generic[Op, R]):
    """Runs ``run_batch(ops)`` for the operations queued together; it answers one outcome
    per operation, in their order (an operation's exception fails that caller only)."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[Op]], Awaitable[Sequence[outcome.Outcome[R]]]],
        *,
        limit: int = 64,
        timeout: float = 30.0,
        what: str = "operations",
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self._run_batch = run_batch
        self._limit = limit
        self._timeout = timeout
        self._what = what
        self._queue: deque[_Slot[Op, R]] = deque()
        self._busy = False
        self.batches = 0  # batches run, for tests and benchmarks

    async def __call__(self, op: Op) -> R:
        slot: _Slot[Op, R] = _Slot(op)
        self._queue.append(slot)
        if not self._busy:
            self._busy = True
            await self._lead()
        while slot.result is None:
            try:
                await slot.done.wait()
            except trio.Cancelled:
                if slot in self._queue:
                    self._queue.remove(slot)
                if slot.lead and slot.result is None:  # woken to lead: the next one will
                    slot.lead = False
                    self._hand_over()
                raise
            if slot.lead and slot.result is None:
                slot.lead = False
                await self._lead()
        return slot.result.unwrap()

    async def _lead(self) -> None:
        """Run one batch of the queue's head (this caller's own operation among it), then
        pass the lead to the first operation queued meanwhile."""
        batch = [self._queue.popleft() for _ in range(min(self._limit, len(self._queue)))]
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(self._timeout) as scope:
                results = await self._run_batch([slot.op for slot in batch])
            if scope.cancelled_caught:
                failed = StoreError(f"{len(batch)} {self._what} took over {self._timeout:g} s")
                results = [outcome.Error(failed) for _ in batch]
            elif len(results) != len(batch):
                raise AssertionError(f"{len(results)} outcomes for {len(batch)} {self._what}")
            self.batches += 1
        except BaseException as exc:  # the batch itself failed: each of its callers sees it
            results = [outcome.Error(exc) for _ in batch]
        for slot, result in zip(batch, results, strict=True):
            slot.result = result
            slot.done.set()
        self._hand_over()

    def _hand_over(self) -> None:
        if self._queue:
            head = self._queue.popleft()
            head.lead = True
            self._queue.appendleft(head)  # it stays queued: its own batch takes it
            head.done.set()
        else:
            self._busy = False
