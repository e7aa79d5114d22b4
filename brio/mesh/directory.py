"""The mesh as the placer sees it: live nodes with their agents and capacity, the nodes that
are down, and a notice to a node that work was assigned to it.

A peer is a candidate while its state is healthy or degraded (from this node's own
heartbeats; ``brio.core.membership``); it is down once failed or removed. A node that has
tasks but that this node does not know at all (removed and forgotten, or never heard of by a
newly elected primary) counts as down only after ``unknown_grace`` seconds of this node's
uptime, so that a fresh primary first hears from the peers it knows.

A node that said goodbye (``brio mesh leave``) or that an operator removed
(``brio mesh remove NODE --force``) is in ``departed``: no candidate, and down at once, so
that its tasks go back to the queue in the next round. It stays there until another process
of it heartbeats this node (``readmit``): the process that left, or that was removed while
paused, does not come back by answering again; a restarted one does. A process is told by
its start time (``NodeInfo.started_unix_ms``, as the node's own heartbeats last said), else
by a start after the departure.
"""

from __future__ import annotations

from dataclasses import dataclass

from brio.core.membership import Membership, PeerState
from brio.core.scheduler import Candidate
from brio.mesh.calls import PeerCalls
from brio.mesh.local import LocalNode

LIVE = (PeerState.HEALTHY, PeerState.DEGRADED)
DOWN = (PeerState.FAILED, PeerState.REMOVED)


@dataclass(frozen=True)
class Departure:
    how: str  # "left" (it said goodbye) or "removed" (an operator's remove --force)
    at_unix_ms: int  # wall clock: a process started later is a new one
    by: str  # who said so: the node itself, or the coordinator that removed it
    process: int | None  # the departed process's start (Unix ms), when its heartbeats said


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
        self.departed: dict[str, Departure] = {}
        self.processes: dict[str, int] = {}  # node id -> start of the process heard last

    def depart(self, node_id: str, how: str, by: str, at_unix_ms: int) -> Departure:
        gone = Departure(how, at_unix_ms, by, self.processes.get(node_id))
        self.departed[node_id] = gone
        return gone

    def readmit(self, node_id: str, started_unix_ms: int) -> bool:
        """A heartbeat from ``node_id``'s process started at ``started_unix_ms``: whether it
        takes part (it has not departed, or it is another process: the departure is over)."""
        gone = self.departed.get(node_id)
        if gone is not None:
            if gone.process is not None:
                again = started_unix_ms != gone.process
            else:
                again = started_unix_ms > gone.at_unix_ms
            if not again:
                return False
            del self.departed[node_id]
        if started_unix_ms:
            self.processes[node_id] = started_unix_ms
        return True

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
            if peer.node_id in self.departed:
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
        gone |= set(self.departed)
        if self.local.uptime() >= self.unknown_grace:
            gone |= with_tasks - set(known) - {self.local.node_id}
        gone.discard(self.local.node_id)
        return sorted(gone & with_tasks)

    def notify(self, node_id: str, task_ids: list[str]) -> None:
        if node_id == self.local.node_id:
            self.local.supervisor.wake()
        else:
            self.calls.nudge(node_id, "task.run", task_ids)
