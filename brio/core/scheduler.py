"""Where each queued task goes: the primary's placement decision, as a pure function plus a
little state (the balancers' cursors and counters, and which node each session is stuck to).

``plan`` walks the queue highest priority first, oldest (``seq``) first among equals, and for
each task narrows the live nodes down to its candidates: the pinned node only (a
``node/agent`` target), the nodes that run the agent, those ``node_affinity`` allows, workers
only when coordinators do not run agents, healthy and not draining, and with room
(``load`` plus what this plan already gave it, below ``capacity``). The balancer picks among
what is left; each agent has its own, so that every agent's tasks spread over its nodes.

A task with no candidate gets a ``Wait`` whose reason names the first filter that left
nothing, so the operator sees why; nothing is dropped: every queued task comes back exactly
once, assigned or waiting. The walk is greedy: capacity only shrinks during a plan, so a task
waiting for room is never overtaken by a later task (of any agent) on a node it could have
used; it may be by tasks that go to nodes it cannot use. The same holds across the plans of
consecutive pages of the queue when each page's plan gets the loads that the pages before it
left (what the driver does): it is the same walk, cut in pieces. Greedy is not an optimal
matching: a high-priority task may take the one node a later task could use while another
node would have done for it. Fairness first; a better packing is not worth a harder rule to
explain.

Choices:

- A pin and ``node_affinity`` both hold: a task pinned outside the agent's affinity waits with
  a reason rather than running where the deployment said the agent must not. Pins skip the
  balancer, so weight 0 does not block a pinned task (the caller chose the node, not us), and
  pinned tasks neither follow nor change session stickiness.
- Session affinity sticks ``(session, agent)`` to a node for ``affinity_ttl`` seconds after the
  session's last placement there. A new (or expired, or moved) session is hashed with the
  ``HashRing`` over the candidates with room: the hashed node, or the next one clockwise with
  room. While the stuck node is a candidate but full, the task *waits* instead of moving: the
  session's history and warm state are there, the node frees up as its tasks finish, and
  moving under load would scatter busy sessions exactly when the cluster is busiest. When the
  stuck node stops being a candidate at all (failed, suspected, draining, gone, no longer runs
  the agent) the session moves and sticks to its new node. ``node_down`` forgets the sessions
  of a failed node at once, and only those.
- The key is (session, agent) and not the session alone, so that one session using two
  agents that run on different nodes does not flip its stickiness back and forth; the ring
  still hashes the session id, so both agents land on the same node when they can.
- With ``consistent-hash`` and no session affinity, a task's session id is its hash key among
  the candidates, without stickiness; a task without a session is placed round-robin.
- Time never runs backwards here: a ``now`` older than one seen is taken as the latest seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from brio.core.balancer import STRATEGIES, Balancer, Candidate, HashRing, Strategy

__all__ = [
    "Assign",
    "Candidate",
    "Openings",
    "Plan",
    "QueuedTask",
    "Scheduler",
    "SchedulerSettings",
    "Strategy",
    "Wait",
]


@dataclass(frozen=True)
class QueuedTask:
    task_id: str
    agent: str
    attempt: int
    priority: int = 0  # higher first
    seq: int = 0  # submission order (older first among equal priority)
    session_id: str | None = None
    target_node: str | None = None  # pinned by a "node/agent" target: only that node


@dataclass(frozen=True)
class Assign:
    task_id: str
    node_id: str
    attempt: int


@dataclass(frozen=True)
class Wait:
    task_id: str
    reason: str  # a sentence for the operator
    # True when the task waits only for room on a node it may use: it will be placed once
    # load drops. False when something else must change first (health, drain, config).
    for_capacity: bool = False


@dataclass(frozen=True)
class SchedulerSettings:
    strategy: Strategy = "round-robin"
    weights: Mapping[str, int] = field(default_factory=dict)
    node_affinity: Mapping[str, frozenset[str]] = field(default_factory=dict)  # agent -> nodes
    session_affinity: bool = False
    affinity_ttl: float = 3600.0
    coordinators_run_agents: bool = True

    def __post_init__(self) -> None:
        # The config layer validates these for operators; this guards the simulator and tests.
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}")
        if math.isnan(self.affinity_ttl) or self.affinity_ttl < 0:
            raise ValueError(f"affinity_ttl must be >= 0, got {self.affinity_ttl}")
        for node_id, weight in self.weights.items():
            if weight < 0:
                raise ValueError(f"weight of {node_id!r} must be >= 0, got {weight}")


@dataclass
class Plan:
    assignments: list[Assign]
    waits: list[Wait]

    @property
    def capacity_waits(self) -> int:
        """Tasks that wait only for room: a task finishing on a node they may use is worth
        another plan; nothing else is (the driver's cue to plan again when a slot frees)."""
        return sum(1 for wait in self.waits if wait.for_capacity)


@dataclass(frozen=True)
class Openings:
    """See ``Scheduler.openings``."""

    agents: frozenset[str]  # an unpinned task of one of these may be placed
    nodes: frozenset[str]  # a task pinned to one of these may be placed


@dataclass(frozen=True)
class _Stuck:
    node_id: str
    placed: float  # the session's last placement on that node


_Check = Callable[[Candidate], bool]
_Show = Callable[[Candidate], str]

_MAX_NAMED = 5  # nodes named in one reason; a big cluster gets "and N more"


def _names(nodes: Iterable[str]) -> str:
    listed = list(nodes)
    if len(listed) <= _MAX_NAMED:
        return ", ".join(listed)
    return ", ".join(listed[:_MAX_NAMED]) + f" and {len(listed) - _MAX_NAMED} more"


def _are(nodes: Sequence[Candidate], what: str) -> str:
    verb = "is" if len(nodes) == 1 else "are"
    return f"{_names(n.node_id for n in nodes)} {verb} {what}"


class Scheduler:
    """Places queued tasks on live nodes; see the module docstring for the rules."""

    def __init__(self, settings: SchedulerSettings, *, ring: HashRing | None = None) -> None:
        """``ring``: one to share with other schedulers (it holds only caches of the points
        it hashed, which a new scheduler would hash again)."""
        self._settings = settings
        # One balancer per agent: with a single rotation, alternating 'a' and 'b' tasks over
        # two nodes would put every 'a' on one node and every 'b' on the other. Agents get a
        # balancer only once some live node runs them, so this stays as small as the fleet.
        self._balancers: dict[str, Balancer] = {}
        self._ring = HashRing() if ring is None else ring
        # Insertion order is placement order (a refresh re-inserts), and time never runs
        # backwards, so the expired entries are always at the front.
        self._sticky: dict[tuple[str, str], _Stuck] = {}
        self._clock = -math.inf

    # -- inputs ---------------------------------------------------------------------------

    def plan(self, queued: Sequence[QueuedTask], nodes: Sequence[Candidate], now: float) -> Plan:
        """Place as many queued tasks as capacity allows, priority first then age (seq)."""
        now = self._advance(now)
        self._expire(now)
        by_id: dict[str, Candidate] = {}
        for node in sorted(nodes, key=lambda n: n.node_id):
            if node.node_id in by_id:
                raise ValueError(f"node {node.node_id!r} is listed twice")
            by_id[node.node_id] = node
        seen: set[str] = set()
        for task in queued:
            if task.task_id in seen:
                raise ValueError(f"task {task.task_id!r} is queued twice")
            seen.add(task.task_id)

        result = Plan(assignments=[], waits=[])
        added: dict[str, int] = dict.fromkeys(by_id, 0)  # tasks this plan gave each node
        for task in sorted(queued, key=lambda t: (-t.priority, t.seq, t.task_id)):
            decision = self._place(task, by_id, added, now)
            if isinstance(decision, Wait):
                result.waits.append(decision)
            else:
                added[decision] += 1
                result.assignments.append(Assign(task.task_id, decision, task.attempt))
        return result

    def room(self, nodes: Iterable[Candidate]) -> int:
        """Free slots summed over the nodes that take tasks at all: healthy, not draining,
        and not a coordinator when coordinators do not run agents. An upper bound on what
        one plan can place on ``nodes`` (the driver reads no more of the queue than this and
        a margin); weight 0 still counts, since a pinned task skips the balancer."""
        return sum(n.capacity - n.load for n in self._open(nodes))

    def openings(self, nodes: Iterable[Candidate]) -> Openings:
        """What a plan on ``nodes`` could place at all: the agents some node with room may
        run an unpinned task of (its agents, as ``node_affinity`` allows, weight above 0
        when weighted), and the nodes with room a pinned task may name. A superset: a
        queued task outside both would wait in the plan however far down the queue it is,
        and leaving it out of a plan changes nothing else in it (a wait moves no cursor and
        sticks no session), so the driver need not read it while these nodes are the ones
        with room."""
        s = self._settings
        agents: set[str] = set()
        open_nodes: set[str] = set()
        for n in self._open(nodes):
            open_nodes.add(n.node_id)
            if s.strategy == "weighted" and s.weights.get(n.node_id, 1) == 0:
                continue  # pinned tasks only
            for agent in n.agents:
                allowed = s.node_affinity.get(agent)
                if allowed is None or n.node_id in allowed:
                    agents.add(agent)
        return Openings(frozenset(agents), frozenset(open_nodes))

    def _open(self, nodes: Iterable[Candidate]) -> list[Candidate]:
        """The nodes with room that take tasks at all (healthy, undrained, role allowed)."""
        skip_coordinators = not self._settings.coordinators_run_agents
        return [
            n
            for n in nodes
            if n.load < n.capacity
            and n.healthy
            and not n.draining
            and not (skip_coordinators and n.role == "coordinator")
        ]

    def node_down(self, node_id: str, now: float) -> None:
        """Forget session stickiness to a node that failed or left (its sessions move)."""
        self._advance(now)
        for key in [k for k, s in self._sticky.items() if s.node_id == node_id]:
            del self._sticky[key]
        for balancer in self._balancers.values():
            balancer.forget(node_id)

    # -- queries --------------------------------------------------------------------------

    def stuck_to(self, session_id: str, agent: str) -> str | None:
        """The node a session's tasks for ``agent`` stick to now, if any."""
        stuck = self._sticky.get((session_id, agent))
        if stuck is None or self._clock >= stuck.placed + self._settings.affinity_ttl:
            return None
        return stuck.node_id

    def sticky_sessions(self) -> int:
        """How many (session, agent) entries are kept (bounded by the ttl)."""
        return len(self._sticky)

    # -- internals ------------------------------------------------------------------------

    def _advance(self, now: float) -> float:
        self._clock = max(self._clock, now)
        return self._clock

    def _balancer(self, agent: str) -> Balancer:
        balancer = self._balancers.get(agent)
        if balancer is None:
            balancer = Balancer(self._settings.strategy, self._settings.weights, ring=self._ring)
            self._balancers[agent] = balancer
        return balancer

    def _expire(self, now: float) -> None:
        ttl = self._settings.affinity_ttl
        while self._sticky:
            key, stuck = next(iter(self._sticky.items()))
            if now < stuck.placed + ttl:
                break
            del self._sticky[key]

    def _stick(self, task: QueuedTask, node_id: str, now: float) -> None:
        assert task.session_id is not None
        key = (task.session_id, task.agent)
        self._sticky.pop(key, None)
        self._sticky[key] = _Stuck(node_id, now)

    def _place(
        self, task: QueuedTask, by_id: Mapping[str, Candidate], added: Mapping[str, int], now: float
    ) -> str | Wait:
        """A node id for ``task``, or why it waits."""

        def room(n: Candidate) -> bool:
            return n.load + added[n.node_id] < n.capacity

        def usage(n: Candidate) -> str:
            return f"{n.load + added[n.node_id]}/{n.capacity}"

        s = self._settings
        agent = task.agent
        allowed = s.node_affinity.get(agent)
        if task.target_node is not None:
            return self._place_pinned(task, by_id.get(task.target_node), allowed, room, usage)

        runs = [n for n in by_id.values() if agent in n.agents]
        if not runs:
            return Wait(task.task_id, f"no node runs agent {agent!r}")
        if allowed is not None:
            runs = [n for n in runs if n.node_id in allowed]
            if not runs:
                return Wait(
                    task.task_id,
                    f"node_affinity limits agent {agent!r} to {_names(sorted(allowed))}, "
                    "and no live node among them runs it",
                )
        if not s.coordinators_run_agents:
            workers = [n for n in runs if n.role != "coordinator"]
            if not workers:
                return Wait(
                    task.task_id,
                    f"only coordinators run agent {agent!r} "
                    f"({_names(n.node_id for n in runs)}), and coordinators_run_agents is false",
                )
            runs = workers
        up = [n for n in runs if n.healthy and not n.draining]
        if not up:
            return Wait(task.task_id, _unavailable(agent, runs))
        balancer = self._balancer(agent)
        pool = balancer.eligible(up)
        if not pool:
            return Wait(
                task.task_id,
                f"every node that runs agent {agent!r} has weight 0 "
                f"({_names(n.node_id for n in up)})",
            )

        session = task.session_id if s.session_affinity else None
        if session is not None:
            stuck = self._sticky.get((session, agent))
            if stuck is not None and now < stuck.placed + s.affinity_ttl:
                node = next((n for n in pool if n.node_id == stuck.node_id), None)
                if node is not None and room(node):
                    self._stick(task, node.node_id, now)
                    return node.node_id
                if node is not None:
                    return Wait(
                        task.task_id,
                        f"session {session!r} is stuck to {node.node_id}, which is at capacity "
                        f"({usage(node)}); it waits there rather than leave its history",
                        for_capacity=True,
                    )
        free = [n for n in pool if room(n)]
        if not free:
            return Wait(
                task.task_id,
                f"every node that runs agent {agent!r} is at capacity "
                f"({_names(f'{n.node_id} {usage(n)}' for n in pool)})"
                + "".join(f"; {part}" for part in _set_aside(runs, pool)),
                for_capacity=True,
            )
        if session is not None:
            chosen = self._ring.node_for(session, [n.node_id for n in free])
            assert chosen is not None
            self._stick(task, chosen, now)
            return chosen
        key = task.session_id if s.strategy == "consistent-hash" else None
        # A candidate's load counts what this plan gave it (most got nothing: no copy).
        loaded = [
            n if not added[n.node_id] else replace(n, load=n.load + added[n.node_id]) for n in free
        ]
        return balancer.choose(loaded, key=key)

    def _place_pinned(
        self,
        task: QueuedTask,
        node: Candidate | None,
        allowed: frozenset[str] | None,
        room: _Check,
        usage: _Show,
    ) -> str | Wait:
        target = task.target_node
        agent = task.agent

        def wait(why: str, for_capacity: bool = False) -> Wait:
            return Wait(task.task_id, f"pinned to {target}, {why}", for_capacity)

        if node is None:
            return wait("which is not a live node")
        if agent not in node.agents:
            return wait(f"which does not run agent {agent!r}")
        if allowed is not None and node.node_id not in allowed:
            return wait(
                f"which the node_affinity of agent {agent!r} does not allow "
                f"(it allows {_names(sorted(allowed))})"
            )
        if node.role == "coordinator" and not self._settings.coordinators_run_agents:
            return wait("a coordinator, and coordinators_run_agents is false")
        if not node.healthy:
            return wait("which is not healthy")
        if node.draining:
            return wait("which is draining")
        if not room(node):
            return wait(f"which is at capacity ({usage(node)})", for_capacity=True)
        return node.node_id


def _set_aside(runs: Sequence[Candidate], pool: Sequence[Candidate]) -> list[str]:
    """Why the nodes in ``runs`` but not in ``pool`` were left out: draining, sick, weight 0."""
    kept = {n.node_id for n in pool}
    rest = [n for n in runs if n.node_id not in kept]
    sick = [n for n in rest if not n.healthy]
    draining = [n for n in rest if n.healthy and n.draining]
    zero = [n for n in rest if n.healthy and not n.draining]
    parts = []
    if draining:
        parts.append(_are(draining, "draining"))
    if sick:
        parts.append(_are(sick, "not healthy"))
    if zero:
        verb = "has" if len(zero) == 1 else "have"
        parts.append(f"{_names(n.node_id for n in zero)} {verb} weight 0")
    return parts


def _unavailable(agent: str, nodes: Sequence[Candidate]) -> str:
    """Why none of ``nodes`` (which run ``agent``) takes tasks: unhealthy or draining."""
    sick = [n for n in nodes if not n.healthy]
    draining = [n for n in nodes if n.healthy and n.draining]
    if not draining:
        return f"no healthy node runs agent {agent!r} ({_are(sick, 'not healthy')})"
    if not sick:
        names = _names(n.node_id for n in draining)
        return f"every node that runs agent {agent!r} is draining ({names})"
    return (
        f"no node that runs agent {agent!r} takes new tasks: "
        f"{_are(draining, 'draining')}; {_are(sick, 'not healthy')}"
    )
