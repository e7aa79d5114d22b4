"""Calls to peers: one channel per peer address, looked up by node id in the membership table.

``PeerCalls.run`` owns two things that must end with the node: the channels (closed when it
stops) and a nursery for best-effort notices (``tell``, ``nudge``) that nobody waits for.

A nudge (``task.run`` to a worker, ``task.queued`` to the primary) only says "look at the
store now", so nudges are coalesced: at most one per node and method is in flight, and those
asked for meanwhile go as one call after it. Under load that is one call per round trip
instead of one per task, and none is lost: a nudge asked for after a write has landed is
sent after that, so the node it wakes reads the write.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from brio.core.membership import Membership
from brio.mesh import methods, pb
from brio.mesh.methods import Method
from brio.mesh.transport import ChannelPool, MeshCallError

log = logging.getLogger(__name__)

#: The longest a nudge waits for its answer: the ones coalesced behind it wait for it, and the
#: polls of the supervisor and the placer (1 s) are the backstop for one that is lost.
NUDGE_TIMEOUT = 2.0
#: Task ids carried by one nudge at most (they are for the log: the node reads the store).
NUDGE_IDS = 1000


@dataclass
class _Nudges:
    """The nudges of one node and method asked for since its call in flight began."""

    with_ids: bool
    asked: bool = False
    ids: list[str] = field(default_factory=list)


class PeerCalls:
    def __init__(
        self,
        node_id: str,
        membership: Membership,
        pool: ChannelPool,
        *,
        call_timeout: float,
        heartbeat_timeout: float,
    ) -> None:
        self.node_id = node_id
        self.membership = membership
        self.pool = pool
        self.call_timeout = call_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self._nursery: trio.Nursery | None = None
        # (node id, method) -> the nudges asked for while its call is in flight
        self._nudges: dict[tuple[str, str], _Nudges] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self.pool.close()

    def address_of(self, node_id: str) -> str:
        peer = self.membership.by_node_id(node_id)
        if peer is None:
            raise LookupError(f"unknown node {node_id!r}")
        return peer.address

    async def call(
        self, node_id: str, method: Method, request: Any, timeout: float | None = None
    ) -> Any:
        """One unary call to a peer by node id; raises LookupError if it is not known."""
        address = self.address_of(node_id)
        return await self.pool.unary(
            address, method.path, request, method.reply, timeout or self.call_timeout
        )

    async def call_node(
        self, node_id: str, method: str, agent: str, payload: dict[str, Any], *, timeout: float
    ) -> pb.MeshResponse:
        """Send one ``Call`` (a JSON payload for ``method``) to a peer by node id."""
        request = pb.MeshRequest(
            target=agent,
            method=method,
            json=json.dumps(payload),
            metadata={"brio-node-id": self.node_id},
            deadline_unix_ms=int((time.time() + timeout) * 1000),
        )
        reply: pb.MeshResponse = await self.call(node_id, methods.CALL, request, timeout)
        return reply

    async def heartbeat(self, address: str, sender: pb.NodeInfo) -> pb.HeartbeatResponse:
        reply: pb.HeartbeatResponse = await self.pool.unary(
            address,
            methods.HEARTBEAT.path,
            pb.HeartbeatRequest(sender=sender),
            pb.HeartbeatResponse,
            self.heartbeat_timeout,
        )
        return reply

    def tell(self, node_id: str, method: str, agent: str, task_id: str) -> None:
        """Send a task notice in the background (best effort: the store is the channel)."""
        self.notify(node_id, method, {"task_id": task_id}, agent=agent)

    def notify(
        self, node_id: str, method: str, payload: dict[str, Any], *, agent: str = ""
    ) -> None:
        """Send a ``Call`` in the background; a failure is logged, never raised."""
        if self._nursery is not None:
            self._nursery.start_soon(self._notify, node_id, method, agent, payload)

    def nudge(self, node_id: str, method: str, task_ids: Sequence[str] | None = None) -> None:
        """Send ``method`` to ``node_id`` in the background, coalesced (module docstring).
        The payload is ``{"task_ids": [...]}`` (of every nudge the call carries) when ids
        are given, else empty."""
        if self._nursery is None:
            return
        key = (node_id, method)
        pending = self._nudges.get(key)
        if pending is None:  # none in flight: this one goes now
            self._nudges[key] = pending = _Nudges(with_ids=task_ids is not None)
            self._nursery.start_soon(self._send_nudges, key, pending)
        pending.asked = True
        if task_ids is not None:
            pending.ids += task_ids[: NUDGE_IDS - len(pending.ids)]

    async def _send_nudges(self, key: tuple[str, str], pending: _Nudges) -> None:
        node_id, method = key
        try:
            while pending.asked:
                ids, pending.ids, pending.asked = pending.ids, [], False
                payload: dict[str, Any] = {"task_ids": ids} if pending.with_ids else {}
                await self._notify(node_id, method, "", payload, timeout=NUDGE_TIMEOUT)
        finally:
            del self._nudges[key]

    async def _notify(
        self,
        node_id: str,
        method: str,
        agent: str,
        payload: dict[str, Any],
        *,
        timeout: float | None = None,
    ) -> None:
        try:
            answer = await self.call_node(
                node_id, method, agent, payload, timeout=timeout or self.call_timeout
            )
            if answer.is_set("error"):
                log.warning("%s on %s: %s", method, node_id, answer.error)
        except (MeshCallError, LookupError) as exc:
            log.info(
                "could not send %s to %s: %s; the store has the work and %s polls it",
                method,
                node_id,
                exc,
                node_id,
            )
