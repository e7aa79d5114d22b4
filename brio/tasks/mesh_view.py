"""What the HTTP API may ask of the mesh (``/health``): role, lease, peers, last heartbeat.

``brio.mesh.assembly.Mesh`` answers it when ``[mesh] enabled``; ``SingleNode`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class LeaseView:
    """This node's place in the coordinator lease."""

    role: str  # "primary", "standby" (a coordinator that is not primary), "worker", "standalone"
    epoch: int | None  # the term this node is in; None without a lease (a single node)
    primary: str | None  # who this node believes is primary
    lease_remaining: float | None  # seconds: ours when primary, else the promise we hold
    voter: bool
    problem: str | None = None  # why this coordinator does not campaign (a misconfiguration)
    voters: tuple[str, ...] = ()  # the lease's voter set, "@store" for the store's witness


class MeshView(Protocol):
    def lease_view(self) -> LeaseView: ...

    def connected_peers(self) -> int: ...

    def last_heartbeat(self) -> datetime | None: ...

    def problems(self) -> list[str]:
        """What is wrong with this node's place in the mesh, as sentences for /health."""

    def draining(self) -> bool:
        """Whether this node takes no new tasks (``brio mesh drain``)."""


class SingleNode:
    """The mesh view of a node running alone: no lease, it does everything itself."""

    def lease_view(self) -> LeaseView:
        return LeaseView("standalone", None, None, None, voter=False)

    def connected_peers(self) -> int:
        return 0

    def last_heartbeat(self) -> datetime | None:
        return None

    def problems(self) -> list[str]:
        return []

    def draining(self) -> bool:
        return False
