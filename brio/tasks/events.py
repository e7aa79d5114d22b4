"""In-process publish/subscribe of task events, feeding WebSocket clients.

``publish`` never blocks and never awaits, so events of one task reach every subscriber in
the order they were published. A subscriber that falls behind by more than its buffer (a
number of events, and a number of bytes: one event may carry a large prompt or result) is cut
off (its stream ends with ``overflowed`` set) rather than slowing the node down or filling
its memory.

The bytes are the bound that matters for memory; the count is set far above what the
largest batch publishes at once (``SUBSCRIBER_MAX_EVENTS``), so that a subscriber that reads
is never cut off by one ``POST /api/tasks:batch``, only one that stops reading.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal, get_args

import trio

from brio.store.base import MAX_CREATE_BATCH

EventType = Literal["task_created", "task_update", "task_output", "task_completed"]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)

SUBSCRIBER_MAX_EVENTS = 20 * MAX_CREATE_BATCH
"""Unread events a subscriber may hold by default. One batch of ``MAX_CREATE_BATCH`` tasks
publishes its ``task_created`` events at once and, when the node has the slots, as many
``task_update`` right after; an ``echo`` task makes five events in all, so the whole batch
is 5,000. Four times that leaves room for batches back to back, while a client that stopped
reading is still cut off within seconds of a busy node's events."""

SUBSCRIBER_MAX_BYTES = 16 << 20
"""Unread bytes (of the events' JSON text) a subscriber may hold by default: the bound on
its memory. The largest batch body (``[server] max_body_bytes``, 1 MiB by default) comes back
as at most about three times its size (prompt in ``task_created``, chunk and result)."""


@dataclass(frozen=True)
class Event:
    type: str
    task_id: str
    session_id: str | None
    seq: int
    time: datetime
    data: dict[str, Any]
    origin: str | None = None  # the node that published it, when it came over the mesh

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "task_id": self.task_id,
            "session_id": self.session_id,
            "seq": self.seq,
            "time": self.time.isoformat(),
            "data": self.data,
        }

    @cached_property
    def text(self) -> str:
        """The JSON text sent to clients, made once however many subscribers there are.

        ASCII (``json.dumps`` escapes the rest), so its length is its size in bytes."""
        return json.dumps(self.to_json())


@dataclass(eq=False)
class Subscription:
    """What one client listens to: everything, or chosen task ids and session ids."""

    receive: trio.MemoryReceiveChannel[Event]
    _send: trio.MemorySendChannel[Event]
    max_bytes: int
    pending_bytes: int = 0  # published to this subscriber and not yet taken by ``delivered``
    everything: bool = False
    task_ids: set[str] = field(default_factory=set)
    session_ids: set[str] = field(default_factory=set)
    types: frozenset[str] = frozenset(EVENT_TYPES)  # of the events above, the kinds it wants
    # only the events published here, not those that came over the mesh (``Event.origin``)
    local_only: bool = False
    overflowed: bool = False

    def wants(self, event: Event) -> bool:
        """Checked before the event is serialised or queued: an event no subscriber wants
        costs no JSON, and one this subscriber does not want takes none of its buffer."""
        if self.local_only and event.origin is not None:
            return False
        return event.type in self.types and (
            self.everything
            or event.task_id in self.task_ids
            or (event.session_id is not None and event.session_id in self.session_ids)
        )

    def delivered(self, event: Event) -> None:
        """The consumer has taken ``event`` off the stream: its bytes no longer count."""
        self.pending_bytes -= len(event.text)


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._seq = itertools.count(1)

    @contextmanager
    def subscribe(
        self, buffer: int | None = None, max_bytes: int | None = None
    ) -> Iterator[Subscription]:
        """A subscription to nothing yet, held until the block ends. ``buffer`` and
        ``max_bytes`` (unread events, and their bytes) default to ``SUBSCRIBER_MAX_EVENTS``
        and ``SUBSCRIBER_MAX_BYTES`` as they are when called."""
        buffer = SUBSCRIBER_MAX_EVENTS if buffer is None else buffer
        max_bytes = SUBSCRIBER_MAX_BYTES if max_bytes is None else max_bytes
        send, receive = trio.open_memory_channel[Event](buffer)
        sub = Subscription(receive=receive, _send=send, max_bytes=max_bytes)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)
            send.close()

    def publish(
        self,
        type_: str,
        task_id: str,
        session_id: str | None,
        data: dict[str, Any],
        *,
        origin: str | None = None,
    ) -> Event:
        event = Event(type_, task_id, session_id, next(self._seq), datetime.now(UTC), data, origin)
        for sub in list(self._subscribers):
            if sub.overflowed or not sub.wants(event):
                continue
            try:
                if sub.pending_bytes + len(event.text) > sub.max_bytes:
                    raise trio.WouldBlock
                sub._send.send_nowait(event)
                sub.pending_bytes += len(event.text)
            except trio.WouldBlock:
                sub.overflowed = True
                sub._send.close()
            except trio.ClosedResourceError:
                self._subscribers.discard(sub)
        return event

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
