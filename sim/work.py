"""The tasks side of one node: the placer while it is the fenced primary, the supervisor that
every node runs, and the API that takes submissions on coordinators.

The placer does what ``brio.tasks.placer.Placer`` does, one round at a time: read the load
per node and the first queued tasks (one ``Snapshot``), requeue the tasks of nodes its
membership calls down with attempt + 1 (fenced), ask the real ``Scheduler.plan`` where each
queued task goes, write the batch's assignments in one fenced ``Assign``, and tell each node
of its batch. A round runs when woken (a submission, a standby's notice) and every
``PLACER_POLL`` seconds; a full batch is followed at once by the next. A refused fenced write
calls ``lease.lost_fence``, as the primary's other writes do.

The supervisor requeues what the store says it had at its start (``requeue_node_tasks``), then
claims its assigned tasks straight into running when told or every ``WORKER_POLL`` seconds, as
many as it has free slots, runs each for a seeded time by its own clock, and records the
result for the attempt it ran. A crash loses its runs; a pause delays them.

A statement whose answer does not come back in time is asked again under the same request id,
and the store answers from its memory of that id (the read-back the lease driver does for the
fence). ``brio.tasks.supervisor`` recovers a lost claim another way, by a sweep of the rows the
store says run on it (``Supervisor._reconcile``), which this model does not repeat;
``READ_BACK_CLAIMS = False`` shows what having neither costs (``tests/sim/test_core_findings.py``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from random import Random
from typing import TYPE_CHECKING

from brio.core.membership import NodeFacts, PeerState
from brio.core.scheduler import Candidate, QueuedTask, Scheduler
from sim.config import PLACER_POLL, TASK_BATCH, TASK_RUN, WORKER_POLL
from sim.wire import (
    STORE,
    Assign,
    Claim,
    Finish,
    Reply,
    Requeue,
    RequeueMine,
    Snapshot,
    Submit,
    TaskAnswer,
    TaskQueued,
    TaskRun,
)

if TYPE_CHECKING:
    from sim.node import SimNode

LIVE = (PeerState.HEALTHY, PeerState.DEGRADED)
DOWN = (PeerState.FAILED, PeerState.REMOVED)

#: A claim whose answer was lost is asked again under its request id (see the module doc).
READ_BACK_CLAIMS = True


class Work:
    """One life of one node's task work (a crash makes a new one)."""

    def __init__(self, node: SimNode, rng: Random) -> None:
        self.node = node
        self.host = node.host
        self._rng = rng
        self.scheduler = Scheduler(node.host.task_settings, ring=node.host.ring)
        self.running: dict[tuple[str, int], None] = {}  # (task, attempt) being run here
        self.ready = False  # the start requeue is done: claims may begin
        self.claiming = False
        self.round: int | None = None  # the epoch of the placement round in flight
        self.again = False  # woken while a round was in flight: another follows
        self.started = node.local()
        self._poll_at = self.started  # the next claim poll's time, timed or not (``_poll``)
        self._rids = 0
        self._timeout = node.host.config.rpc_timeout  # a property computed per read
        #: (node, load, role, healthy) -> (the facts it was built from, the candidate).
        self._seen: dict[tuple[str, int, str, bool], tuple[NodeFacts, Candidate]] = {}

    def _rid(self) -> str:
        self._rids += 1
        return f"{self.node.name}/{self.node.incarnation}/{self._rids}"

    def _store(
        self,
        request: Submit | Snapshot | Requeue | Assign | RequeueMine | Claim | Finish,
        on_reply: Callable[[TaskAnswer], None],
        on_timeout: Callable[[], None] | None,
    ) -> None:
        def answered(reply: Reply) -> None:
            assert isinstance(reply, TaskAnswer)
            on_reply(reply)

        self.host.call(
            self.node,
            STORE,
            request,
            timeout=self._timeout,
            on_reply=answered,
            on_timeout=on_timeout,
        )

    # ---------------------------------------------------------------- the API (coordinators)

    def submit(self, request: Submit) -> None:
        """A client's submission: acknowledged once the store holds it (its answer came)."""
        self._store(
            request,
            partial(self._submitted, request.task_id),
            partial(self._unacked, request.task_id),
        )

    def _unacked(self, task_id: str) -> None:
        self.host.task_unacked(self.node, task_id)

    def _submitted(self, task_id: str, reply: TaskAnswer) -> None:
        node = self.node
        self.host.task_acked(node, task_id)
        lease = node.lease
        if node.work_epoch is not None and node.fenced:
            self.wake()
        elif lease is not None and lease.primary not in (None, node.name):
            assert lease.primary is not None
            self.host.call(
                node, lease.primary, TaskQueued(), timeout=0.5, on_reply=None, on_timeout=None
            )

    # ---------------------------------------------------------------- the supervisor

    def start(self) -> None:
        self._requeue_mine(self._rid())
        self._poll()

    def _requeue_mine(self, rid: str) -> None:
        self._store(RequeueMine(rid), partial(self._ready), partial(self._requeue_mine, rid))

    def _ready(self, reply: TaskAnswer) -> None:
        self.ready = True
        self.poke()

    def _poll(self) -> None:
        # A poll that would claim nothing is not sent (``poke``), and the polls after it are
        # not timed either until the store assigns this node a task (``assigned``): only an
        # assignment makes one find something (speed).
        node = self.node
        self._poll_at = node.local() + WORKER_POLL
        if self.host.has_assigned(node):
            node.set_timer("claim poll", self._poll_at, self._poll)
            self.poke()

    def assigned(self) -> None:
        """The store assigned this node a task: the polls go on, at the times they would
        have come at had they been timed all along."""
        node = self.node
        if "claim poll" in node.timers:
            return
        at, now = self._poll_at, node.local()
        if at < now:
            at += math.ceil((now - at) / WORKER_POLL) * WORKER_POLL
        node.set_timer("claim poll", at, self._poll)

    def poke(self) -> None:
        """Claim now if there is room (a notice, a poll, a slot freed). A claim that would
        come back empty changes nothing: it is not sent (speed), as an empty poll is not."""
        if not self.ready or self.claiming:
            return
        free = self.host.config.task_capacity - len(self.running)
        if free > 0 and self.host.has_assigned(self.node):
            self.claiming = True
            self._claim(self._rid(), free)

    def _claim(self, rid: str, limit: int) -> None:
        self._store(
            Claim(rid, limit), partial(self._claimed, limit), partial(self._claim_lost, rid, limit)
        )

    def _claim_lost(self, rid: str, limit: int) -> None:
        if READ_BACK_CLAIMS:
            self._claim(rid, limit)
        else:
            self.claiming = False  # the supervisor logs "claiming tasks failed; retrying"

    def _claimed(self, limit: int, reply: TaskAnswer) -> None:
        self.claiming = False
        node = self.node
        for task_id, attempt in reply.tasks:
            self.running[(task_id, attempt)] = None
            ran = partial(self._ran, task_id, attempt)
            node.set_timer(
                f"run {task_id}#{attempt}", node.local() + self._rng.uniform(*TASK_RUN), ran
            )
        if len(reply.tasks) == limit:
            self.poke()

    def _ran(self, task_id: str, attempt: int) -> None:
        self._finish(self._rid(), task_id, attempt)

    def _finish(self, rid: str, task_id: str, attempt: int) -> None:
        self._store(
            Finish(rid, task_id, attempt),
            partial(self._finished, task_id, attempt),
            partial(self._finish, rid, task_id, attempt),
        )

    def _finished(self, task_id: str, attempt: int, reply: TaskAnswer) -> None:
        self.running.pop((task_id, attempt), None)
        self.poke()

    # ---------------------------------------------------------------- the placer

    def place(self, epoch: int) -> None:
        """The fence is raised for ``epoch``: place tasks until the work stops."""
        self.round, self.again = None, False
        self._place_poll(epoch)

    def stop(self) -> None:
        self.round, self.again = None, False
        self.node.cancel_timer("place")

    def _mine(self, epoch: int) -> bool:
        return self.round == epoch and self.node.fenced and self.node.working(epoch)

    def _place_poll(self, epoch: int) -> None:
        node = self.node
        if not node.working(epoch):
            return
        node.set_timer("place", node.local() + PLACER_POLL, partial(self._place_poll, epoch))
        if self.host.has_placing(node):  # a round with nothing to do is not sent (speed)
            self.wake()

    def wake(self) -> None:
        node = self.node
        epoch = node.work_epoch
        if epoch is None or not node.fenced or not node.working(epoch) or node.paused:
            return
        if self.round == epoch:
            self.again = True
            return
        self.round, self.again = epoch, False
        self._snapshot(epoch, requeued=False)

    def _round_over(self, epoch: int) -> None:
        if self.round != epoch:
            return
        self.round = None
        if self.again:
            self.wake()

    def _snapshot(self, epoch: int, *, requeued: bool) -> None:
        self._store(
            Snapshot(self._rid(), TASK_BATCH),
            partial(self._read, epoch, requeued),
            partial(self._round_over, epoch),
        )

    def _read(self, epoch: int, requeued: bool, reply: TaskAnswer) -> None:
        if not self._mine(epoch):
            return
        loads = dict(reply.loads)
        down = self._down(set(loads))
        if down and not requeued:
            self._store(
                Requeue(self._rid(), epoch, tuple(down)),
                partial(self._requeued, epoch, down),
                partial(self._round_over, epoch),
            )
            return
        self._plan(epoch, loads, reply.queued)

    def _requeued(self, epoch: int, down: list[str], reply: TaskAnswer) -> None:
        if not self._mine(epoch):
            return
        if not reply.ok:
            self.round = None
            self.node.lost_fence(reply.fence_epoch)
            return
        now = self.node.local()
        for node_id in down:
            self.scheduler.node_down(node_id, now)
        self._snapshot(epoch, requeued=True)

    def down_with(self, with_tasks: set[str]) -> list[str]:
        return self._down(with_tasks)

    def _down(self, with_tasks: set[str]) -> list[str]:
        """``brio.mesh.directory.MeshDirectory.down``: failed or removed, or unknown once this
        node has been up for ``unknown_grace``."""
        node = self.node
        assert node.membership is not None
        known = node.membership.known_nodes()
        gone = {n for n, state in known.items() if state in DOWN}
        detector = self.host.config.detector
        grace = detector.heartbeat_interval * (detector.suspicion_threshold + 1)
        if node.local() - self.started >= grace:
            gone |= with_tasks - set(known) - {node.name}
        return sorted(gone & with_tasks)

    def _candidates(self, loads: dict[str, int]) -> list[Candidate]:
        """``MeshDirectory.candidates``: this node, and each peer it has facts of."""
        node = self.node
        assert node.membership is not None
        facts = node.facts
        nodes = [self._candidate(node.name, facts, loads.get(node.name, 0), facts.role, True)]
        for peer in node.membership.peers():
            seen = peer.facts
            if peer.node_id is None or seen is None or peer.node_id == node.name:
                continue
            load = loads.get(peer.node_id, 0)
            role = peer.role or seen.role
            nodes.append(self._candidate(peer.node_id, seen, load, role, peer.state in LIVE))
        return nodes

    def _candidate(
        self, node_id: str, facts: NodeFacts, load: int, role: str, healthy: bool
    ) -> Candidate:
        """The candidate for these values, the one built before when it had them all (a
        frozen value: sharing it is safe). A node's facts never change in the simulator and
        its load and health seldom do, so a round mostly finds every candidate here: building
        them anew each round was a visible share of the placement rounds."""
        key = (node_id, load, role, healthy)
        kept = self._seen.get(key)
        if kept is not None and kept[0] is facts:
            return kept[1]
        candidate = Candidate(
            node_id=node_id,
            agents=frozenset(facts.agents),
            capacity=facts.max_agents,
            load=load,
            role=role,
            healthy=healthy,
            draining=facts.draining,
        )
        self._seen[key] = (facts, candidate)
        return candidate

    def _plan(self, epoch: int, loads: dict[str, int], queued: Sequence[QueuedTask]) -> None:
        node = self.node
        if not queued:
            self._round_over(epoch)
            return
        plan = self.scheduler.plan(queued, self._candidates(loads), node.local())
        if not plan.assignments:
            self._round_over(epoch)
            return
        batch = tuple((a.task_id, a.attempt, a.node_id) for a in plan.assignments)
        full = len(queued) == TASK_BATCH
        send = partial(self._send_batch, epoch, batch, full, node.incarnation)
        if node.pause_armed is not None and node.pause_at_batch:
            # Stopped between planning and writing: the batch goes out on stale beliefs.
            duration, node.pause_armed = node.pause_armed, None
            self.host.note(
                node.name, f"planned {len(batch)} assignment(s) (epoch {epoch}) and froze"
            )
            self.host.pause(node, duration)
            self.host.loop.after(0.0001, send, node.name)
            return
        send()

    def _send_batch(
        self, epoch: int, batch: tuple[tuple[str, int, str], ...], full: bool, incarnation: int
    ) -> None:
        node = self.node
        if incarnation != node.incarnation:
            return
        nodes = {task_id: node_id for task_id, _, node_id in batch}
        self._store(
            Assign(self._rid(), epoch, batch),
            partial(self._assigned, epoch, nodes, full),
            partial(self._round_over, epoch),
        )
        if node.crash_armed:
            self.host.crash_now(node, "crashes mid-batch: its assignments left, no notice will")

    def _assigned(self, epoch: int, nodes: dict[str, str], full: bool, reply: TaskAnswer) -> None:
        node = self.node
        if not self._mine(epoch):
            return
        if not reply.ok:
            self.round = None
            node.lost_fence(reply.fence_epoch)
            return
        by_node: dict[str, list[str]] = defaultdict(list)
        for task_id, _ in reply.tasks:
            by_node[nodes[task_id]].append(task_id)
        for node_id, ids in sorted(by_node.items()):
            if node_id == node.name:
                self.poke()
            else:
                self.host.call(
                    node,
                    node_id,
                    TaskRun(tuple(ids)),
                    timeout=self.host.config.rpc_timeout,
                    on_reply=None,  # a notice
                )
        self.round = None
        if full or self.again:
            self.wake()
