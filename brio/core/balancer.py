"""Which node takes the next task, among the nodes that could take it.

The scheduler decides who *may* take a task (the agent runs there, the node is healthy, not
draining, has room, node affinity allows it); the balancer only picks one of those. It keeps
the little state a fair pick needs across tasks and across plans: the round-robin cursor and
the smooth-weighted counters. Everything is ordered by node id, never by arrival order or by
Python's ``hash()``, so the same inputs and state give the same choice in every process.

Strategies (``[mesh.load_balancing] strategy``):

- ``round-robin`` (default): the next node id after the last one chosen, wrapping around. The
  cursor is a node id, not an index, so that when the candidate set changes (a node fills up,
  leaves or joins) the rotation goes on where it was instead of restarting at the first node.
- ``least-connections``: the fewest ``load``; equal loads go to the larger node (lower
  load/capacity), and exact ties rotate like round-robin so that an idle cluster still spreads.
- ``weighted``: nginx's smooth weighted round-robin over the configured weights. A node
  without a weight has weight 1; weight 0 means never chosen (when every candidate has weight
  0, ``eligible`` is empty and the scheduler makes the task wait). Weights apply only to this
  strategy: with the others a weight of 0 does not keep traffic away (drain the node instead).
- ``consistent-hash``: the ``key`` (a session id) is hashed onto a ``HashRing`` over the
  candidates; a task without a key is placed round-robin.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["round-robin", "least-connections", "weighted", "consistent-hash"]
STRATEGIES: tuple[Strategy, ...] = (
    "round-robin",
    "least-connections",
    "weighted",
    "consistent-hash",
)


@dataclass(frozen=True)
class Candidate:
    """One live node as the primary sees it (re-exported by ``brio.core.scheduler``)."""

    node_id: str
    agents: frozenset[str]
    capacity: int  # its max_agents
    load: int  # tasks assigned to it or running on it now
    role: str = "worker"  # "coordinator" | "worker"
    healthy: bool = True  # membership says healthy or degraded (not suspected/failed/removed)
    draining: bool = False


def _hash(text: str) -> int:
    """A stable 64-bit hash: the same in every process and on every machine."""
    data = text.encode("utf-8", "surrogatepass")  # node ids from config may be any str
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing of session ids onto node ids (virtual nodes, blake2b).

    Each node owns ``replicas`` points on a 64-bit ring, placed by hashing its id alone, and a
    key belongs to the first point at or after the key's hash. Because a node's points do not
    depend on which other nodes exist, the ring over a subset is the full ring with the other
    nodes' points taken out: removing a node moves only the keys it owned (to the next point
    clockwise), and adding one moves only keys to the new node. That is also why passing only
    the nodes with room works as "the hashed node, or the next one clockwise that has room".
    """

    _MAX_NODES = 4096  # node ids whose points are kept; beyond, the ring starts again

    def __init__(self, replicas: int = 64) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self._replicas = replicas
        # The ring over every node seen so far, sorted by (hash, node id): a subset's ring is
        # this one with the other nodes' points skipped, so it is never built per subset.
        self._nodes: set[str] = set()
        self._hashes: list[int] = []
        self._owners: list[str] = []

    def node_for(self, key: str, nodes: Collection[str]) -> str | None:
        """The node that owns ``key`` among ``nodes``; None when there are none."""
        members = nodes if isinstance(nodes, set | frozenset) else set(nodes)
        if not members:
            return None
        if not self._nodes.issuperset(members):
            self._add(members)
        hashes, owners = self._hashes, self._owners
        count = len(hashes)
        start = bisect.bisect_left(hashes, _hash(key))
        # The first point at or after the key's hash that a member owns, wrapping around.
        for i in range(start, start + count):
            owner = owners[i if i < count else i - count]
            if owner in members:
                return owner
        raise AssertionError("every member has points on the ring")

    def _add(self, members: Collection[str]) -> None:
        """Put the points of the members not on the ring yet on it."""
        points = list(zip(self._hashes, self._owners, strict=True))
        if len(self._nodes | set(members)) > self._MAX_NODES:
            self._nodes, points = set(), []
        new = [node for node in members if node not in self._nodes]
        # The replica number is the suffix after the last '#', so no two (node, replica)
        # pairs hash the same text.
        points.extend((_hash(f"{node}#{i}"), node) for node in new for i in range(self._replicas))
        # Sorting by (hash, node id) settles a 64-bit collision the same way everywhere.
        points.sort()
        self._nodes.update(new)
        self._hashes = [h for h, _ in points]
        self._owners = [n for _, n in points]


def _fullness(c: Candidate) -> tuple[int, bool, int]:
    """Orders as (load, load/capacity), exactly, with a node without capacity last among its
    equals in load: at equal load, a lower ratio is a larger capacity (and at load 0 every
    ratio is 0). Integers compare faster than the ``Fraction`` this stands for."""
    no_room = c.capacity <= 0
    return c.load, no_room, -c.capacity if c.load and not no_room else 0


class Balancer:
    """Picks one node among candidates. State: the round-robin cursor, smooth-weighted counters."""

    def __init__(
        self,
        strategy: Strategy,
        weights: Mapping[str, int],
        *,
        replicas: int = 64,
        ring: HashRing | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}"
            )
        for node_id, weight in weights.items():
            if weight < 0:
                raise ValueError(f"weight of {node_id!r} must be >= 0, got {weight}")
        self.strategy: Strategy = strategy
        self._weights = dict(weights)
        self._cursor: str | None = None  # the node id chosen last by rotation
        self._current: dict[str, int] = {}  # smooth weighted round-robin counters
        # A ring holds nothing but caches of its points: one may be shared (``ring``).
        self._ring = HashRing(replicas) if ring is None else ring

    def weight(self, node_id: str) -> int:
        return self._weights.get(node_id, 1)

    def eligible(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """The candidates this strategy may ever choose: all but weight-0 nodes when weighted."""
        if self.strategy != "weighted":
            return list(candidates)
        return [c for c in candidates if self.weight(c.node_id) > 0]

    def choose(self, candidates: Sequence[Candidate], key: str | None = None) -> str:
        """The node id for the next task; ``key`` is its session id (consistent-hash only).

        Raises ValueError when no candidate is eligible (none given, or all of weight 0).
        """
        pool = {c.node_id: c for c in self.eligible(candidates)}
        if not pool:
            raise ValueError("no eligible candidate: none given, or every one has weight 0")
        ids = sorted(pool)
        if self.strategy == "least-connections":
            fullness = {n: _fullness(pool[n]) for n in ids}
            best = min(fullness.values())
            ids = [n for n in ids if fullness[n] == best]
        elif self.strategy == "weighted":
            return self._smooth_weighted(ids)
        elif self.strategy == "consistent-hash" and key is not None:
            chosen = self._ring.node_for(key, ids)
            assert chosen is not None
            return chosen
        return self._rotate(ids)

    def forget(self, node_id: str) -> None:
        """Drop what is kept about a node that left, so that state stays bounded."""
        self._current.pop(node_id, None)

    def _rotate(self, ids: list[str]) -> str:
        """The first id after the cursor in sorted order, wrapping; ``ids`` sorted, non-empty."""
        i = 0 if self._cursor is None else bisect.bisect_right(ids, self._cursor)
        chosen = ids[i if i < len(ids) else 0]
        self._cursor = chosen
        return chosen

    def _smooth_weighted(self, ids: list[str]) -> str:
        """nginx: every candidate gains its weight, the largest is chosen and pays the total.

        Over one cycle of ``sum(weights)`` picks on a fixed set each node is chosen exactly its
        weight times, interleaved rather than in bursts. Nodes that are not candidates this
        time (full, gone) keep their counters, so they resume their share when they return.
        """
        total = 0
        best: str | None = None
        for node_id in ids:
            weight = self.weight(node_id)
            self._current[node_id] = self._current.get(node_id, 0) + weight
            total += weight
            if best is None or self._current[node_id] > self._current[best]:
                best = node_id
        assert best is not None
        self._current[best] -= total
        return best
