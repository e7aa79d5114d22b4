"""What the HTTP API may ask of the mesh (``/health``): role, peers, last heartbeat.

``brio.mesh.node.MeshNode`` answers it when ``[mesh] enabled``; ``SingleNode`` otherwise.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class MeshView(Protocol):
    role: str

    def connected_peers(self) -> int: ...

    def last_heartbeat(self) -> datetime | None: ...


class SingleNode:
    """The mesh view of a node running alone."""

    def __init__(self, role: str = "coordinator") -> None:
        self.role = role

    def connected_peers(self) -> int:
        return 0

    def last_heartbeat(self) -> datetime | None:
        return None
