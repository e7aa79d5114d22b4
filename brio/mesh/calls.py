"""Calls to peers: one channel per peer address, looked up by node id in the membership table.

``PeerCalls.run`` owns two things that must end with the node: the channels (closed when it
stops) and a nursery for best-effort notices (``tell``) that nobody waits for.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import trio

from brio.core.membership import Membership
from brio.mesh import methods, pb
from brio.mesh.methods import Method
from brio.mesh.transport import ChannelPool, MeshCallError

log = logging.getLogger(__name__)


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

    async def _notify(self, node_id: str, method: str, agent: str, payload: dict[str, Any]) -> None:
        try:
            answer = await self.call_node(
                node_id, method, agent, payload, timeout=self.call_timeout
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
