"""Event forwarding: the task events of work run here go to every coordinator peer.

```
EventForwarder.run
└── sender per coordinator   batches of task.events calls from one bounded outbox
```

Best effort by design: the store holds the truth; a coordinator that is unreachable (or too
slow: more than ``FORWARD_BUFFER`` events behind) misses events, not results. Events that
arrive from peers are published on the local bus with their ``origin`` and never forwarded
again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from brio.core.membership import Membership
from brio.mesh.calls import PeerCalls
from brio.mesh.peers import BAD_STATES
from brio.mesh.transport import MeshCallError
from brio.tasks.events import Event, EventBus

log = logging.getLogger(__name__)

#: Event types a node forwards to the coordinators for the work it runs.
FORWARDED_EVENTS = ("task_update", "task_output", "task_completed")
FORWARD_BATCH = 200
FORWARD_BUFFER = 10_000


@dataclass
class TaskCounts:
    """Tasks finished on this node, by outcome (``brio mesh stats``)."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class EventForwarder:
    def __init__(
        self, node_id: str, bus: EventBus, membership: Membership, calls: PeerCalls
    ) -> None:
        self.node_id = node_id
        self.bus = bus
        self.membership = membership
        self.calls = calls
        self.counts = TaskCounts()
        #: (origin, task id) of each ``task_completed`` from a peer: its slot there is free
        self.on_remote_finished: Callable[[str, str], None] = lambda origin, task_id: None
        self._unsent = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        outboxes: dict[str, trio.MemorySendChannel[Event]] = {}
        async with trio.open_nursery() as nursery:
            with self.bus.subscribe(buffer=FORWARD_BUFFER, max_bytes=256 << 20) as sub:
                # what it forwards, and only what happened here (the rest costs no JSON)
                sub.everything, sub.local_only = True, True
                sub.types = frozenset(FORWARDED_EVENTS)
                task_status.started()
                async for event in sub.receive:
                    sub.delivered(event)
                    self._count(event)
                    for peer in self.membership.peers():
                        if peer.node_id is None or peer.role != "coordinator":
                            continue
                        if peer.state in BAD_STATES:
                            continue
                        box = outboxes.get(peer.node_id)
                        if box is None:
                            send, receive = trio.open_memory_channel[Event](FORWARD_BUFFER)
                            outboxes[peer.node_id] = box = send
                            nursery.start_soon(self._send, peer.node_id, receive)
                        try:
                            box.send_nowait(event)
                            self._unsent += 1
                        except trio.WouldBlock:
                            log.warning("dropping a task event for %s: it is behind", peer.node_id)
                if sub.overflowed:
                    log.error("event forwarding fell behind the bus and stopped")

    def _count(self, event: Event) -> None:
        if event.type != "task_completed":
            return
        if event.data.get("node_id") != self.node_id:
            return
        status = event.data.get("status")
        if status == "succeeded":
            self.counts.succeeded += 1
        elif status == "failed":
            self.counts.failed += 1
        elif status == "cancelled":
            self.counts.cancelled += 1

    async def _send(self, node_id: str, receive: trio.MemoryReceiveChannel[Event]) -> None:
        async for first in receive:
            batch = [first]
            while len(batch) < FORWARD_BATCH:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            payload = {
                "events": [
                    {
                        "type": e.type,
                        "task_id": e.task_id,
                        "session_id": e.session_id,
                        "data": e.data,
                    }
                    for e in batch
                ]
            }
            try:
                answer = await self.calls.call_node(
                    node_id, "task.events", "", payload, timeout=self.calls.call_timeout
                )
                if answer.is_set("error"):
                    log.warning("%s refused %d task events: %s", node_id, len(batch), answer.error)
            except (MeshCallError, LookupError) as exc:
                log.info("could not forward %d task events to %s: %s", len(batch), node_id, exc)
            finally:
                self._unsent -= len(batch)

    async def flush(self, timeout: float) -> None:
        """At shutdown: give the last task events up to ``timeout`` to reach the coordinators."""
        with trio.move_on_after(timeout):
            while self._unsent > 0:  # noqa: ASYNC110 (a counter, polled at shutdown only)
                await trio.sleep(0.02)

    def publish_remote(self, origin: str, events: list[dict[str, Any]]) -> int:
        for item in events:
            if item["type"] == "task_completed":  # a slot is free on ``origin``
                self.on_remote_finished(origin, str(item["task_id"]))
            self.bus.publish(
                str(item["type"]),
                str(item["task_id"]),
                item.get("session_id"),
                dict(item.get("data") or {}),
                origin=origin,
            )
        return len(events)
