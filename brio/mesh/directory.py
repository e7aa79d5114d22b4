"""The mesh as the placer sees it: live nodes with their agents and capacity, the nodes that
are down, and a notice to a node that work was assigned to it.

A peer is a candidate while its state is healthy or degraded (from this node's own
heartbeats; ``brio.core.membership``); it is down once failed or removed. A node that has
tasks but that this node does not know at all (removed and forgotten, or never heard of by a
newly elected primary) counts as down only after ``unknown_grace`` seconds of this node's
uptime, so that a fresh primary first hears from the peers it knows.
"""

from __future__ import annotations

from brio.core.membership import Membership, PeerState
from brio.core.scheduler import Candidate
from brio.mesh.calls import PeerCalls
from brio.mesh.local import LocalNode

LIVE = (PeerState.HEALTHY, PeerState.DEGRADED)
DOWN = (PeerState.FAILED, PeerState.REMOVED)


class MeshDirectory:
    def __init__(
        self,
        local: LocalNode,
        membership: Membership,
        calls: PeerCalls,
        *,
        unknown_grace: float,
    ) -> None:
        self.local = local
        self.membership = membership
        self.calls = calls
        self.unknown_grace = unknown_grace

    def candidates(self) -> list[Candidate]:
        local = self.local
        nodes = [
            Candidate(
                node_id=local.node_id,
                agents=frozenset(local.agents),
                capacity=local.supervisor.max_agents,
                load=0,
                role=local.role,
                draining=local.draining or not local.supervisor.accepting,
            )
        ]
        for peer in self.membership.peers():
            facts = peer.facts
            if peer.node_id is None or facts is None or peer.node_id == local.node_id:
                continue
            nodes.append(
                Candidate(
                    node_id=peer.node_id,
                    agents=frozenset(facts.agents),
                    capacity=facts.max_agents,
                    load=0,
                    role=peer.role or facts.role,
                    healthy=peer.state in LIVE,
                    draining=facts.draining,
                )
            )
        return nodes

    def down(self, with_tasks: set[str]) -> list[str]:
        known = self.membership.known_nodes()
        gone = {node for node, state in known.items() if state in DOWN}
        if self.local.uptime() >= self.unknown_grace:
            gone |= with_tasks - set(known) - {self.local.node_id}
        return sorted(gone & with_tasks)

    def notify(self, node_id: str, task_ids: list[str]) -> None:
        if node_id == self.local.node_id:
            self.local.supervisor.wake()
        else:
            self.calls.notify(node_id, "task.run", {"task_ids": task_ids})
