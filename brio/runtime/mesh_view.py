"""What the rest of the node may ask of the mesh: a seam that the mesh issue fills in.

A single node has no peers; the gRPC mesh will provide its own implementation of this view.
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
