"""The mesh server part: grpclib's ``Server`` on ``mesh.listen_addr``, with TLS and the allow-list.

It starts first among the mesh parts, so that the bound address (``listen_addr`` may name
port 0) is known before any heartbeat advertises it, and it stops last: a server closed
before the clients would break their last calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from brio.config.model import MeshConfig
from brio.exc import leaves
from brio.mesh.local import LocalNode
from brio.mesh.tls import server_context
from brio.mesh.transport import Service, TransportStats, start_server, stop_server


class MeshListener:
    def __init__(
        self,
        mesh: MeshConfig,
        services: Sequence[Service],
        stats: TransportStats,
        local: LocalNode,
    ) -> None:
        self.config = mesh
        self.services = services
        self.stats = stats
        self.local = local
        self.bound_address: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status`` gets the bound host:port."""
        access = self.config.access_control
        try:
            mesh_server, bound = await start_server(
                self.services,
                self.config.listen_addr,
                ssl_context=server_context(self.config.tls),
                allowed=tuple(access.allowed_cidrs),
                stats=self.stats,
            )
        except* OSError as group:
            reasons = "; ".join(str(getattr(e, "strerror", None) or e) for e in leaves(group))
            raise OSError(
                f"cannot serve the mesh on {self.config.listen_addr} ([mesh] listen_addr): "
                f"{reasons}"
            ) from group
        self.bound_address = bound
        if not self.config.advertise_addr and self.local.address.endswith(":0"):
            self.local.address = bound
        try:
            task_status.started(bound)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await stop_server(mesh_server)
