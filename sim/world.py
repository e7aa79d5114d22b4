"""One seed's world: nodes, network, store and faults on one event loop, and its judge.

Everything random comes from streams derived from the seed by name (``f"{seed}/network"``,
``f"{seed}/c1/0/lease"``, ...; string seeds are hashed with SHA-512 by ``random``, never with
the per-process ``hash``), so the same seed replays the same trace byte for byte; and since
each concern has its own stream, a safety knob that changes the traffic leaves the seed's fault
schedule as it was.
"""

from __future__ import annotations

import gc
import random
from functools import partial
from heapq import heappop
from typing import cast

from brio.core.balancer import STRATEGIES, HashRing
from brio.core.constants import WITNESS_ID
from brio.core.lease import Release, RenewRequest, Role, VoteReply, VoteRequest
from brio.core.membership import HEALTHY, PeerState
from brio.core.scheduler import QueuedTask, SchedulerSettings
from brio.core.witness import WitnessRecord, accepted, decide
from sim.chaos import Chaos
from sim.clock import Clock
from sim.config import SimConfig
from sim.faults import plan
from sim.invariants import Checker, Holder
from sim.loop import EventLoop
from sim.network import Network
from sim.node import SimNode, address
from sim.rpc import Calls
from sim.stats import Failovers, SeedResult, Transfers
from sim.store import Answer, Store, TaskRow, Tasks
from sim.trace import Text, Trace
from sim.wire import (
    LEASE_MESSAGES,
    STORE,
    TASK_STATEMENTS,
    Assign,
    Claim,
    FencedWrite,
    Finish,
    Heartbeat,
    RaiseFence,
    Reply,
    Request,
    Requeue,
    RequeueMine,
    Snapshot,
    Submit,
    TaskAnswer,
    describe,
)

#: ``Role.PRIMARY`` read once: an enum member read through its class costs ten times a
#: global's read, and every lease event asks whether the node is primary.
PRIMARY = Role.PRIMARY
#: A task statement: the requests in ``TASK_STATEMENTS``.
Statement = Submit | Snapshot | Requeue | Assign | RequeueMine | Claim | Finish
#: The lease's requests that the store's witness answers.
WITNESS_REQUESTS: frozenset[type] = frozenset({VoteRequest, RenewRequest, Release})
#: The store's answer that says only "done" (frozen: one does for all).
_DONE = TaskAnswer(True)
#: Clock offsets: nodes booted at different times, so their monotonic clocks read differently.
OFFSETS = (0.0, 10_000.0)
#: With the witness, a coordinator is cut off from the store about once every this many lease
#: durations (a Poisson process), for this long (a range, in lease durations).
STORE_CUT_GAP = 3.0
STORE_CUT_LENGTH = (0.4, 3.0)


class World:
    def __init__(self, config: SimConfig, seed: int, *, keep_trace: bool = False) -> None:
        self.config = config
        self.seed = seed
        self.loop = EventLoop()
        self.checker = Checker()
        self.store = Store(config.knobs)
        self.failovers = Failovers()
        self.transfers = Transfers()
        self._trace = Trace(keep_trace)
        self._append_line = self._trace.append
        self._keep_trace = keep_trace
        self.network = Network([*config.node_ids, STORE], self._stream("network"))
        clocks = self._stream("clocks")
        spread = config.rate_spread
        self.base_rates: dict[str, float] = {}
        self.nodes: dict[str, SimNode] = {}
        coordinators = set(config.node_ids[: config.coordinators])
        for name in config.node_ids:
            rate = clocks.uniform(1 - spread, 1 + spread)
            clock = Clock(clocks.uniform(*OFFSETS), rate)
            self.base_rates[name] = rate
            self.nodes[name] = SimNode(
                self, name, coordinator=name in coordinators, clock=clock, seed=seed
            )
        # The store's witness voter: its record, and the database's clock (a stream of its
        # own, so that the nodes' clocks are drawn as without it).
        self.witness = WitnessRecord()
        witness_clock = self._stream("witness/clock")
        self.witness_clock = Clock(
            witness_clock.uniform(*OFFSETS), witness_clock.uniform(1 - spread, 1 + spread)
        )
        self.primaries: set[str] = set()  # nodes whose core says PRIMARY
        self.elections = 0
        self.events = 0
        self.healed_at: float | None = None
        self._watching = False  # healed, and some liveness condition not seen yet
        # (node, peer's address) for every pair, and (node, None) for the node itself being
        # up; and where the last look found a node not seeing a peer healthy.
        self._pairs: list[tuple[SimNode, str | None]] = []
        self._blind_at = 0
        self._primary_ok: float | None = None
        self._members_ok: float | None = None
        self._pauses = 0
        self.chaos = Chaos(self, self._stream("faults"))
        self._calls = Calls(
            self.loop,
            self.network,
            self._serve,
            self.note,
            self._stream("tasks/network"),
            sending=self.chaos.sending,
            serve_heartbeat=self._serve_heartbeat,
        )
        #: The node's calls go straight to ``Calls.call`` (a layer fewer for every message).
        self.call = self._calls.call
        self.probe = self._calls.probe
        # Tasks: the table, the scheduler's settings for this seed, and what was measured.
        self.tasks = Tasks(
            self.store.fence, assign_fence=config.assign_fence, attempt_check=config.attempt_check
        )
        self.task_settings = self._scheduler_settings(self._stream("tasks/settings"))
        self.ring = HashRing()  # every node life's scheduler hashes the same points
        self._clients = self._stream("tasks/clients")
        # The config's derived figures, computed once (its properties compute them per read,
        # and submissions read them for every task).
        self._node_ids = config.node_ids
        #: The nodes that run each agent, in node order (their facts never change).
        self._runs = {
            agent: [n for n in self._node_ids if agent in self.nodes[n].facts.agents]
            for agent in ("code", "echo")
        }
        self._fault_end = config.fault_end
        self._in_flight = config.in_flight
        # A lease's length by its holder's clock, as it counts it (knobs builds SafetyKnobs).
        self._lease_length = config.lease_duration
        if config.knobs.drift_margin:
            self._lease_length *= 1 - config.max_clock_drift
        self._answers: dict[str, TaskAnswer] = {}  # request id -> the store's answer
        self._queued_as: dict[str, QueuedTask] = {}  # task -> what reads said of it last
        self._pending: dict[str, str] = {}  # submissions on their way: task -> coordinator
        self._unfinished = 0  # rows in the store without a result
        self._acked: set[str] = set()
        self._submitted = 0
        self.executions = 0
        self.redistributed = 0  # by the primary, from nodes that were down
        self.restart_requeued = 0  # by a worker's start, from its previous life
        self.placement: list[float] = []  # queued -> assigned, true seconds
        self._tasks_ok: float | None = None

    def _stream(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}/{name}")

    # ---------------------------------------------------------------- running

    def run(self) -> SeedResult:
        config = self.config
        for node in self.nodes.values():
            node.start()
        episodes = plan(
            self._stream("schedule"), config.faults, config.fault_end, config.lease_duration
        )
        self.loop.at(config.fault_end, self._heal)
        self.chaos.schedule(episodes)
        if config.witness and config.faults:
            self._schedule_store_cuts()
        if config.tasks:
            self.note("tasks", self._describe_settings())
            self._next_submission()
        # The cyclic collector finds next to nothing to free while a seed runs (what it
        # builds lives until the seed ends, or is freed by reference counts), yet its passes
        # over the young objects cost about 4 % of a seed's CPU: it is off while the events
        # run, and as it was afterwards.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._run_events(config.event_budget)
        finally:
            if collecting:
                gc.enable()
        violation = self.checker.violation
        shown = self._keep_trace or violation is not None
        trace = tuple(self._trace.lines()) if shown else ()
        return SeedResult(
            seed=self.seed,
            violation=violation,
            faults=dict(sorted(self.chaos.counts.items())),
            elections=self.elections,
            failovers=tuple(self.failovers.samples),
            writes=sum(1 for entry in self.store.log if entry.kind == "write"),
            events=self.events,
            simulated=self.loop.now if violation is not None else config.duration,
            primary_after_heal=self._primary_ok,
            members_after_heal=self._members_ok,
            trace=trace,
            tasks_submitted=self._submitted,
            tasks_acked=len(self._acked),
            tasks_completed=len(self.tasks.completions),
            executions=self.executions,
            redistributed=self.redistributed,
            restart_requeued=self.restart_requeued,
            placement=tuple(self.placement),
            tasks_after_heal=self._tasks_ok,
            transfers=tuple(self.transfers.samples),
        )

    def _run_events(self, budget: int) -> None:
        """Run events until the end, a violation or the budget (``EventLoop.pop`` inlined:
        this loop runs once per event, so what it reads is bound to locals once)."""
        loop, checker, nodes, primaries = self.loop, self.checker, self.nodes, self.primaries
        heap, duration, events = loop.heap, self.config.duration, self.events
        after_event = self._after_event
        while checker.violation is None:
            if not heap or heap[0][0] > duration:
                break
            time, _, target, action = heappop(heap)
            loop.now = time
            if events >= budget:
                checker.livelock(time, events, duration)
                break
            if target is not None and nodes[target].paused:
                nodes[target].held.append(action)
                continue
            action()
            events += 1
            if len(primaries) >= 2 or self._watching:
                after_event()
        self.events = events

    def _after_event(self) -> None:
        if len(self.primaries) >= 2:
            self.checker.primaries(self.loop.now, self._holders())
        if self._watching:
            self._watch_liveness()
            self._watching = (
                self._primary_ok is None
                or self._members_ok is None
                or (self.config.tasks and self._tasks_ok is None)
            )

    def _holders(self) -> list[Holder]:
        holders = []
        for name in sorted(self.primaries):
            node = self.nodes[name]
            assert node.lease is not None
            until = node.lease.lease_until
            assert until is not None
            holders.append(Holder(name, node.lease.term, node.clock.true_at(until)))
        return holders

    def current_primary(self) -> SimNode | None:
        """The node with the newest unexpired lease, by its own clock."""
        now = self.loop.now
        valid = [h for h in self._holders() if h.until > now]
        if not valid:
            return None
        return self.nodes[max(valid, key=lambda h: (h.epoch, h.node)).node]

    # ---------------------------------------------------------------- liveness

    def _heal(self) -> None:
        self.healed_at = self.loop.now
        self._watching = True
        self.chaos.heal()
        self.loop.after(self.config.primary_bound, self._judge_primary)
        self.loop.after(self.config.membership_bound, self._judge_members)
        if self.config.tasks:
            self.loop.after(self.config.task_bound, self._judge_tasks)

    def _watch_liveness(self) -> None:
        assert self.healed_at is not None
        since = self.loop.now - self.healed_at
        # Only a node whose core is PRIMARY can be working, and ``primaries`` holds exactly
        # those (``lease_changed`` follows every lease call): no walk over every node.
        if self._primary_ok is None and any(
            n.fenced and n.work_epoch is not None and n.working(n.work_epoch)
            for n in (self.nodes[name] for name in sorted(self.primaries))
        ):
            self._primary_ok = since
        if self._members_ok is None and self._everyone_sees_everyone():
            self._members_ok = since
        if self._tasks_ok is None and not self._unfinished and not self._pending:
            self._tasks_ok = since

    def _everyone_sees_everyone(self) -> bool:
        """Every node up, and every peer healthy in its table: ``_sees_all`` of every node.

        Asked after every event of the heal window until it holds, so it must not walk all
        n² pairs each time (at 200 nodes that was nearly all of a run's CPU): the walk starts
        at the pair found blind last time, which is usually still blind, and only says yes
        after a full round of the pairs found each one healthy."""
        pairs = self._pairs
        if not pairs:
            self._pairs = pairs = [
                (node, None if peer is None else address(peer))
                for node in self.nodes.values()
                for peer in (None, *self.config.node_ids)
                if peer != node.name
            ]
        count, start = len(pairs), self._blind_at
        for i in range(count):
            at = start + i if start + i < count else start + i - count
            node, peer = pairs[at]
            table = node.membership
            if table is None:
                blind = True
            elif peer is None:
                blind = False
            else:
                row = table.get(peer)
                blind = row is None or row.state is not HEALTHY
            if blind:
                self._blind_at = at
                return False
        return True

    def _sees_all(self, node: SimNode) -> bool:
        table = node.membership
        if table is None:
            return False
        for peer in self.config.node_ids:
            if peer != node.name:
                row = table.get(address(peer))
                if row is None or row.state is not PeerState.HEALTHY:
                    return False
        return True

    def _judge_primary(self) -> None:
        if self._primary_ok is None:
            roles = ", ".join(
                f"{n.name} {n.lease.role} t{n.lease.term}" if n.lease else f"{n.name} down"
                for n in self.nodes.values()
            )
            self.checker.liveness(
                self.loop.now,
                "liveness-primary",
                f"no primary had raised the fence {self.config.primary_bound:.1f} s after the "
                f"faults healed ({roles})",
            )

    def _judge_members(self) -> None:
        if self._members_ok is None:
            blind = [n.name for n in self.nodes.values() if not self._sees_all(n)]
            self.checker.liveness(
                self.loop.now,
                "liveness-membership",
                f"{', '.join(blind)} did not see every other node healthy "
                f"{self.config.membership_bound:.1f} s after the faults healed",
            )

    def _judge_tasks(self) -> None:
        if self._tasks_ok is None:
            left = [r for r in self.tasks.rows.values() if not r.status.terminal]
            shown = ", ".join(
                f"{r.task_id} {r.status}" + (f" on {r.node}" if r.node else "") + f" #{r.attempt}"
                for r in left[:8]
            )
            more = f" and {len(left) - 8} more" if len(left) > 8 else ""
            pending = f"; {len(self._pending)} submission(s) still on their way" * bool(
                self._pending
            )
            self.checker.liveness(
                self.loop.now,
                "liveness-tasks",
                f"{len(left)} task(s) unfinished {self.config.task_bound:.1f} s after the faults "
                f"healed: {shown}{more}{pending}",
            )

    # ---------------------------------------------------------------- tasks

    @staticmethod
    def _scheduler_settings(rng: random.Random) -> SchedulerSettings:
        """A strategy and session affinity per seed, so that runs cover the core's rules."""
        return SchedulerSettings(
            strategy=rng.choice(STRATEGIES),
            session_affinity=rng.random() < 0.5,
            affinity_ttl=rng.choice((2.0, 30.0, 3600.0)),
        )

    def _describe_settings(self) -> str:
        s = self.task_settings
        sessions = f"session affinity (ttl {s.affinity_ttl:g} s)" if s.session_affinity else ""
        return (
            f"scheduler: {s.strategy}{', ' + sessions if sessions else ''}; "
            f"{self.config.task_rate:g} tasks/s, at most {self.config.in_flight} unfinished"
        )

    def _next_submission(self) -> None:
        rng = self._clients
        at = self.loop.now + rng.expovariate(self.config.task_rate)
        if at < self._fault_end:
            self.loop.at(at, self._submission)

    def _submission(self) -> None:
        """A client submits a task to a coordinator, unless it has enough unfinished."""
        rng, config = self._clients, self.config
        self._next_submission()
        agent = "code" if rng.random() < 0.3 else "echo"
        session = f"s{rng.randrange(6)}" if rng.random() < 0.5 else None
        runs = self._runs[agent]
        pin = rng.choice(runs) if rng.random() < 0.1 else None
        coordinator = self.nodes[rng.choice(self._node_ids[: config.coordinators])]
        if self._unfinished + len(self._pending) >= self._in_flight:
            return
        self._submitted += 1
        task_id = f"t{self._submitted}"
        if not coordinator.up:
            self.note(coordinator.name, f"submission of {task_id}: refused, down")
            return
        request = Submit(f"client/{task_id}", task_id, self._submitted, agent, session, pin)
        self._pending[task_id] = coordinator.name
        submit = partial(coordinator.submit, request)
        if coordinator.paused:
            coordinator.held.append(submit)  # as the event loop holds a paused node's events
        else:
            submit()  # now, not as an event of its own

    def task_acked(self, node: SimNode, task_id: str) -> None:
        self._acked.add(task_id)
        self.note(node.name, f"acknowledged {task_id}")
        if task_id not in self.tasks.rows:
            self.checker.task_lost(
                self.loop.now,
                f"{task_id} was acknowledged by {node.name} but the store does not hold it",
            )

    def has_assigned(self, node: SimNode) -> bool:
        """Would a claim by ``node`` find anything? A poll that would not is skipped."""
        return self.tasks.has_assigned(node.name)

    def has_placing(self, node: SimNode) -> bool:
        """Would a placement round find anything to do (queued tasks, or tasks on nodes
        that ``node`` may call down)? A poll that would not is skipped."""
        if self.tasks.has_queued():
            return True
        work = node.work
        return work is not None and bool(work.down_with(set(self.tasks.loads())))

    def task_unacked(self, node: SimNode, task_id: str) -> None:
        self._pending.pop(task_id, None)

    def forget_pending(self, node: SimNode) -> None:
        """A coordinator crashed: the submissions it held are gone with it."""
        for task_id in [t for t, c in self._pending.items() if c == node.name]:
            del self._pending[task_id]

    def _task_statement(self, sender: str, request: Statement) -> TaskAnswer:
        answer = self._answers.get(request.rid)
        if answer is None:
            answer = self._execute(sender, request)
            self._answers[request.rid] = answer
        return answer

    def _execute(self, sender: str, request: Statement) -> TaskAnswer:
        now, tasks, checker = self.loop.now, self.tasks, self.checker
        fence = self.store.fence.epoch
        match request:
            case Submit():
                self._pending.pop(request.task_id, None)
                if request.task_id not in tasks.rows:
                    self._unfinished += 1
                row = TaskRow(
                    request.task_id,
                    request.seq,
                    request.agent,
                    request.session_id,
                    request.target_node,
                    queued_at=now,
                )
                tasks.submit(now, row)
                pin = f", pinned to {row.target_node}" if row.target_node else ""
                session = f", session {row.session_id}" if row.session_id else ""
                self.note("store", f"{row.task_id} ({row.agent}{session}{pin}) queued by {sender}")
                return _DONE
            case Snapshot():
                queued = tuple(self._queued_task(r) for r in tasks.queued(request.limit))
                return TaskAnswer(True, fence, loads=tuple(tasks.loads().items()), queued=queued)
            case Requeue():
                back = tasks.requeue_nodes(now, request.epoch, request.nodes)
                if back is None:
                    self.note(
                        "store", f"{describe(request)} by {sender}: refused (fence at {fence})"
                    )
                    return TaskAnswer(False, fence)
                self.redistributed += len(back)
                shown = ", ".join(f"{r.task_id}#{r.attempt}" for r in back) or "none"
                self.note("store", f"{describe(request)} by {sender}: back to the queue: {shown}")
                if back:
                    checker.task_write(now, sender, "requeue", request.epoch, fence)
                return TaskAnswer(True, fence)
            case Assign():
                landed = tasks.assign(request.epoch, request.batch)
                if landed is None:
                    self.note(
                        "store", f"{describe(request)} by {sender}: refused (fence at {fence})"
                    )
                    return TaskAnswer(False, fence)
                pairs = tuple((r.task_id, r.node) for r in landed)
                self.note("store", partial(_landed, request, sender, pairs))
                if landed:
                    checker.task_write(now, sender, "assignment", request.epoch, fence)
                    self.placement.extend(now - r.queued_at for r in landed)
                    loads = tasks.loads()
                    for node in sorted({r.node for r in landed if r.node is not None}):
                        checker.capacity(now, node, loads[node], self.config.task_capacity)
                        work = self.nodes[node].work
                        if work is not None:
                            work.assigned()  # its claim polls find something again
                return TaskAnswer(True, fence, tasks=tuple((r.task_id, r.attempt) for r in landed))
            case RequeueMine():
                back = tasks.requeue_mine(now, sender)
                self.restart_requeued += len(back)
                if back:
                    shown = ", ".join(f"{r.task_id}#{r.attempt}" for r in back)
                    self.note("store", f"{sender} starts: its tasks back to the queue: {shown}")
                return _DONE
            case Claim():
                claimed = tasks.claim(sender, request.limit)
                self.executions += len(claimed)
                if claimed:
                    shown = ", ".join(f"{r.task_id}#{r.attempt}" for r in claimed)
                    self.note("store", f"{sender} claims {shown}: running")
                return TaskAnswer(True, tasks=tuple((r.task_id, r.attempt) for r in claimed))
            case Finish(task_id=task_id, attempt=attempt):
                done = tasks.finish(now, sender, task_id, attempt)
                if done is None:
                    found = tasks.rows.get(task_id)
                    state = "unknown" if found is None else f"{found.status} #{found.attempt}"
                    self.note(
                        "store", f"result of {task_id}#{attempt} by {sender}: refused ({state})"
                    )
                    return TaskAnswer(False)
                self._unfinished -= 1
                self.note("store", f"result of {task_id}#{attempt} by {sender}: recorded")
                checker.completed(done, tasks.results[task_id])
                return _DONE

    def _queued_task(self, row: TaskRow) -> QueuedTask:
        """What a read says of a queued row: the one said last time unless its attempt
        moved (the only field of it that changes). A queued task is read by every round
        until placed, and building the frozen value each time was a visible share of them."""
        said = self._queued_as.get(row.task_id)
        if said is None or said.attempt != row.attempt:
            said = QueuedTask(
                row.task_id,
                row.agent,
                row.attempt,
                seq=row.seq,
                session_id=row.session_id,
                target_node=row.target_node,
            )
            self._queued_as[row.task_id] = said
        return said

    # ---------------------------------------------------------------- calls

    def crash_now(self, node: SimNode, why: str) -> None:
        """``node`` dies right now (the chaos armed it; its episode's end restarts it)."""
        self.lose_primary(node)
        node.crash()
        self.forget_pending(node)
        self.note(node.name, why)

    def _serve(self, sender: str, dst: str, request: Request) -> Reply | None:
        # The nodes first, the kinds tested by a set lookup: this runs for every request.
        node = self.nodes.get(dst)
        if node is not None:
            if node.up:
                return node.handle(sender, request)
            if type(request) in LEASE_MESSAGES:
                self.note(dst, f"<- {sender} {describe(request)}: down")
            return None
        assert dst == STORE
        kind = type(request)
        if kind in TASK_STATEMENTS:
            # Its kind was just looked up: a cast, not an isinstance against the seven kinds
            # (whose union was built anew for each statement).
            return self._task_statement(sender, cast(Statement, request))
        if kind in WITNESS_REQUESTS:
            assert isinstance(request, VoteRequest | RenewRequest | Release)
            return self._witness_answer(sender, request)
        return self._store(sender, request)

    def _serve_heartbeat(self, dst: str, request: Heartbeat) -> Reply | None:
        """``_serve`` for a heartbeat, which only ever goes to a node."""
        node = self.nodes[dst]
        return node.heartbeat(request) if node.up else None

    def _store(self, sender: str, request: Request) -> Answer:
        now = self.loop.now
        logged = len(self.store.log)
        match request:
            case RaiseFence(epoch=epoch):
                answer = self.store.raise_fence(now, sender, epoch)
            case FencedWrite(epoch=epoch):
                answer = self.store.write(now, sender, epoch)
            case _:
                raise AssertionError(f"the store got {request!r}")
        self.note(STORE, partial(_stored, request, sender, answer))
        for entry in self.store.log[logged:]:
            self.checker.store_accepted(entry)
        return answer

    # ---------------------------------------------------------------- the witness

    def _witness_answer(
        self, sender: str, request: VoteRequest | RenewRequest | Release
    ) -> Reply | None:
        """The store's witness decides by its own clock, one request at a time (the row lock)."""
        if not self.config.witness:
            return None
        now = self.witness_clock.local(self.loop.now)
        lease = self.config.lease_duration
        self.witness, reply = decide(self.witness, request, now, lease, self.config.witness_knobs)
        self.note(WITNESS_ID, f"<- {sender} {describe(request)}: {describe(reply)}")
        if isinstance(reply, VoteReply) and not reply.pre_vote and accepted(reply):
            self.checker.voted(self.loop.now, WITNESS_ID, reply.term, sender)
        return reply

    def _schedule_store_cuts(self) -> None:
        """``store-cut`` episodes: one coordinator (the primary half the time) cannot reach
        the store, the witness with it, for a while. Their own stream: the other faults are
        drawn as without them."""
        rng = self._stream("witness/cuts")
        gap = STORE_CUT_GAP * self.config.lease_duration
        start = rng.expovariate(1 / gap)
        while start < self.config.fault_end:
            low, high = STORE_CUT_LENGTH
            end = min(
                start + rng.uniform(low, high) * self.config.lease_duration, self.config.fault_end
            )
            self.loop.at(start, partial(self._store_cut, random.Random(rng.random()), end))
            start += rng.expovariate(1 / gap)

    def _store_cut(self, rng: random.Random, end: float) -> None:
        if self.healed_at is not None:
            return
        primary = self.current_primary()
        coordinators = self.config.node_ids[: self.config.coordinators]
        victim = (
            primary.name if primary is not None and rng.random() < 0.5 else rng.choice(coordinators)
        )
        links = [(victim, STORE), (STORE, victim)]
        self.chaos.counts["store-cut"] += 1
        self.note("chaos", f"store-cut: {victim} cut off from the store")
        self.network.cut(links)

        def mend() -> None:
            if self.healed_at is None:  # the heal mended every link already
                self.network.mend(links)
                self.note("chaos", f"store-cut: {victim} reaches the store again")

        self.loop.at(end, mend)

    # ---------------------------------------------------------------- the node's host

    def note(self, who: str, text: Text) -> None:
        self._append_line((self.loop.now, who, text))  # Trace.add written out

    def lease_changed(self, node: SimNode) -> None:
        if node.lease is not None and node.lease.role is PRIMARY:
            self.primaries.add(node.name)
        else:
            self.primaries.discard(node.name)

    def voted(self, voter: str, term: int, candidate: str) -> None:
        self.checker.voted(self.loop.now, voter, term, candidate, disk=self.nodes[voter].disks)

    def became_primary(self, node: SimNode, epoch: int) -> None:
        self.elections += 1
        self.checker.became_primary(self.loop.now, node.name, epoch)
        self.failovers.became_primary(self.loop.now)
        self.transfers.became_primary(self.loop.now)

    def extended(self, node: SimNode, epoch: int, until: float) -> None:
        self.failovers.renewed(node.name, epoch, until - self._lease_length)

    def transfer_started(self, node: SimNode, epoch: int) -> None:
        """``node``, primary of ``epoch``, hands the lease over (a graceful stop)."""
        self.note(node.name, f"hands epoch {epoch} over")
        self.transfers.started(self.loop.now)

    def lose_primary(self, node: SimNode) -> None:
        """A fault just took ``node`` away; if it held the lease, the failover clock starts."""
        lease = node.lease
        if node.name in self.primaries and lease is not None:
            until = lease.lease_until
            if until is not None and node.local() < until:
                self.failovers.lost(self.loop.now, node.name, lease.term, node.local())

    def pause(self, node: SimNode, duration: float) -> None:
        if not node.up or node.paused:
            return
        self.lose_primary(node)
        self._pauses += 1
        node.paused = True
        node.pause_token = self._pauses
        self.note(node.name, f"paused for {duration:.3f} s")
        self.loop.after(duration, partial(self.wake, node, node.pause_token))

    def wake(self, node: SimNode, token: int | None = None) -> None:
        """End ``node``'s pause (the one ``token`` started, or any); held events run now."""
        if not node.paused or token not in (None, node.pause_token):
            return
        node.paused = False
        held, node.held = node.held, []
        self.note(node.name, f"wakes up, {len(held)} events held")
        for action in held:
            self.loop.at(self.loop.now, action, node.name)


def _landed(request: Assign, sender: str, pairs: tuple[tuple[str, str | None], ...]) -> str:
    shown = ", ".join(f"{task_id}->{node}" for task_id, node in pairs) or "none"
    return f"{describe(request)} by {sender}: landed {shown}"


def _stored(request: RaiseFence | FencedWrite, sender: str, answer: Answer) -> str:
    if isinstance(request, RaiseFence):
        what = f"raise to {request.epoch} by {sender}"
    else:
        what = f"write #{request.seq} by {sender} under epoch {request.epoch}"
    verdict = "accepted" if answer.ok else f"refused (fence at {answer.fence_epoch})"
    return f"{what}: {verdict}"


def run_seed(config: SimConfig, seed: int, keep_trace: bool = False) -> SeedResult:
    """One seed, start to finish (a top-level function, so worker processes can run it)."""
    return World(config, seed, keep_trace=keep_trace).run()
