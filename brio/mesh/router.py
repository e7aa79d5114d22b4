"""Where submitted tasks go in a mesh: the ``MeshRouting`` that ``TaskService`` asks.

The decision is ``brio.core.routing.route`` over the membership table. Where a task runs is
the primary's placer's choice; submitting only wakes it (a notice, best effort: the task is
committed already, and the primary polls the store too).
"""

from __future__ import annotations

from collections.abc import Callable

from brio.core.membership import Membership
from brio.core.routing import Route, route
from brio.mesh.calls import PeerCalls
from brio.mesh.local import LocalNode
from brio.store.base import TaskRecord
from brio.tasks.mesh_view import LeaseView
from brio.tasks.placer import Placer


class MeshRouter:
    def __init__(
        self,
        local: LocalNode,
        membership: Membership,
        calls: PeerCalls,
        *,
        lease_view: Callable[[], LeaseView],
        placer: Placer | None,
    ) -> None:
        self.node_id = local.node_id
        self.local = local
        self.membership = membership
        self.calls = calls
        self.lease_view = lease_view
        self.placer = placer  # this coordinator's, used while it is primary

    def route(self, target: str) -> Route:
        """Where ``target`` runs; raises ``brio.core.routing.RouteError`` with the reason."""
        nodes = {k: str(v) for k, v in self.membership.known_nodes().items()}
        return route(target, self.node_id, nodes)

    def remote_agents(self, node_id: str) -> tuple[str, ...] | None:
        """The agents ``node_id`` said it runs in its last heartbeat; None if not heard yet."""
        peer = self.membership.by_node_id(node_id)
        return peer.facts.agents if peer is not None and peer.facts is not None else None

    def cluster_agents(self) -> dict[str, tuple[str, ...]]:
        """node id -> its agents: this node's, and each peer's from its last heartbeat."""
        found = {self.node_id: tuple(sorted(self.local.agents))}
        for peer in self.membership.peers():
            if peer.node_id is not None and peer.facts is not None:
                found[peer.node_id] = peer.facts.agents
        return found

    def wake_placement(self) -> None:
        """Wake the primary's placer: ours if we are primary, else a notice to the primary
        (best effort: the primary polls the store too)."""
        view = self.lease_view()
        if view.role == "primary" and self.placer is not None:
            self.placer.wake()
        elif view.primary is not None and view.primary != self.node_id:
            self.calls.nudge(view.primary, "task.queued")

    def cancel_remote(self, task: TaskRecord) -> None:
        """Stop the agent of a task that runs on another node (its state is already written)."""
        if task.node_id is not None and task.node_id != self.node_id:
            self.calls.tell(task.node_id, "task.cancel", task.agent, task.id)
