"""Where submitted tasks go in a mesh: the ``MeshRouting`` that ``TaskService`` asks.

The decision is ``brio.core.routing.route`` over the membership table; telling the chosen
node is a best-effort notice (the task is already committed with its pin, and that node
polls the store too).
"""

from __future__ import annotations

from brio.core.membership import Membership
from brio.core.routing import Route, route
from brio.mesh.calls import PeerCalls
from brio.store.base import TaskRecord


class MeshRouter:
    def __init__(self, node_id: str, membership: Membership, calls: PeerCalls) -> None:
        self.node_id = node_id
        self.membership = membership
        self.calls = calls

    def route(self, target: str) -> Route:
        """Where ``target`` runs; raises ``brio.core.routing.RouteError`` with the reason."""
        nodes = {k: str(v) for k, v in self.membership.known_nodes().items()}
        return route(target, self.node_id, nodes)

    def remote_agents(self, node_id: str) -> tuple[str, ...] | None:
        """The agents ``node_id`` said it runs in its last heartbeat; None if not heard yet."""
        peer = self.membership.by_node_id(node_id)
        return peer.facts.agents if peer is not None and peer.facts is not None else None

    def dispatch(self, node_id: str, task: TaskRecord) -> None:
        """Tell the node a task is pinned to that it is waiting."""
        if node_id != self.node_id:
            self.calls.tell(node_id, "task.run", task.agent, task.id)

    def cancel_remote(self, task: TaskRecord) -> None:
        """Stop the agent of a task that runs on another node (its state is already written)."""
        if task.node_id is not None and task.node_id != self.node_id:
            self.calls.tell(task.node_id, "task.cancel", task.agent, task.id)
