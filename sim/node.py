"""One simulated node: the driver around the real ``Lease`` and ``Membership`` cores.

It does what the production driver does, with the world standing in for gRPC, trio and the
database: it feeds the cores its *local* time, carries out the lease's actions in the order
given (``Persist`` before any later ``Send``), answers and sends heartbeats, and, while
primary, raises the fence and then writes under its epoch. It also knows how to crash (all
in-memory state gone, the last persisted vote kept) and how to be paused (events for it are
held by the world while time goes on).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from functools import partial
from heapq import heappush
from typing import Protocol

from brio.core.balancer import HashRing
from brio.core.constants import WITNESS_ID
from brio.core.lease import (
    UNKNOWN_VOTE,
    Action,
    BecamePrimary,
    DigestMismatch,
    Lease,
    LeaseExtended,
    Message,
    Persist,
    Persisted,
    Release,
    RenewReply,
    RenewRequest,
    Role,
    Send,
    SteppedDown,
    VoteReply,
    VoteRequest,
)
from brio.core.membership import Membership, NodeFacts, StateChanged
from brio.core.scheduler import SchedulerSettings
from sim.clock import Clock
from sim.config import SimConfig
from sim.loop import Entry, EventLoop
from sim.store import Answer
from sim.trace import Text
from sim.wire import (
    STORE,
    Ack,
    FencedWrite,
    Heartbeat,
    HeartbeatReply,
    RaiseFence,
    Reply,
    Request,
    Submit,
    TaskQueued,
    TaskRun,
    passing,
)
from sim.work import Work

#: ``Role.PRIMARY`` read once: an enum member read through its class costs ten times a
#: global's read, and every lease event asks whether the node is primary.
PRIMARY = Role.PRIMARY
#: A stopping node waits this long (local clock) for a newer term, then exits: the driver's
#: ``TRANSFER_WAIT`` (brio.mesh.lease).
TRANSFER_WAIT = 1.0
#: Time between a primary deciding to write and the write leaving: a pause may fall in it.
WRITE_PREP = (0.0001, 0.002)


#: The answer to a notice (frozen and empty: one does for all).
ACK = Ack()


def _seen(change: StateChanged) -> str:
    return f"sees {change.node_id} {change.old} -> {change.new} ({change.reason})"


def address(node: str) -> str:
    return f"{node}:50051"


def agents_of(config: SimConfig, node: str) -> tuple[str, ...]:
    """Every node runs ``echo``; every other one (c1, c3, ..., then the workers) ``code`` too,
    so that the scheduler's per-agent balancers and "which nodes run it" both matter."""
    if not config.tasks:
        return ()
    index = config.node_ids.index(node)
    return ("code", "echo") if index % 2 == 0 else ("echo",)


class Host(Protocol):
    """What a node needs from the world around it."""

    loop: EventLoop
    config: SimConfig
    task_settings: SchedulerSettings
    ring: HashRing  # the schedulers' consistent-hash ring, shared: it only caches points

    def note(self, who: str, text: Text) -> None: ...

    def call(
        self,
        src: SimNode,
        dst: str,
        request: Request,
        *,
        timeout: float,
        on_reply: Callable[[Reply], None] | None,
        on_timeout: Callable[[], None] | None = None,
    ) -> None: ...

    def probe(
        self,
        src: SimNode,
        dst: str,
        request: Heartbeat,
        *,
        timeout: float,
        on_reply: Callable[[Reply], None],
        on_timeout: Callable[[], None],
    ) -> None: ...

    def lease_changed(self, node: SimNode) -> None: ...

    def voted(self, voter: str, term: int, candidate: str) -> None: ...

    def became_primary(self, node: SimNode, epoch: int) -> None: ...

    def extended(self, node: SimNode, epoch: int, until: float) -> None: ...

    def pause(self, node: SimNode, duration: float) -> None: ...

    def task_acked(self, node: SimNode, task_id: str) -> None: ...

    def task_unacked(self, node: SimNode, task_id: str) -> None: ...

    def has_assigned(self, node: SimNode) -> bool: ...

    def has_placing(self, node: SimNode) -> bool: ...

    def crash_now(self, node: SimNode, why: str) -> None: ...

    def transfer_started(self, node: SimNode, epoch: int) -> None: ...


class SimNode:
    def __init__(
        self, host: Host, name: str, *, coordinator: bool, clock: Clock, seed: int
    ) -> None:
        self.host = host
        self._loop = host.loop
        self._detector = host.config.detector
        # The config's derived figures, computed once (its properties compute them per read;
        # write_interval builds the lease settings each time).
        self._rpc_timeout = host.config.rpc_timeout
        self._write_interval = host.config.write_interval
        self._write_margin = host.config.write_margin
        self.name = name
        self.coordinator = coordinator
        self.clock = clock
        self._seed = seed
        self.facts = NodeFacts(
            node_id=name,
            role="coordinator" if coordinator else "worker",
            address=address(name),
            version="sim",
            agents=agents_of(host.config, name),
            active=0,
            queued=0,
            max_agents=host.config.task_capacity,
            draining=False,
        )
        # What survives a crash.
        self.persisted: Persisted | None = None
        self.disks = 0  # disks lost so far: a vote lost with one may be given again
        self.incarnation = 0
        self._token = 0
        # What a crash wipes (set by start).
        self.up = False
        self.paused = False
        self.pause_token = 0  # tells a pause's own wake-up from an older one's
        self.held: list[Callable[[], None]] = []
        self.pause_armed: float | None = None  # pause for this long at the next write decision
        self.pause_at_batch = False  # ... at the next batch of assignments, not a write
        self.crash_armed = False  # crash right after the next batch of assignments leaves
        self.work: Work | None = None  # the tasks: placer, supervisor, API
        #: key -> (deadline, token, fire).
        self.timers: dict[str, tuple[float, int, Callable[[], None]]] = {}
        self.open_calls: set[int] = set()  # ids of the calls made and not ended
        #: A heap of (deadline, call id, on_timeout) of calls that asked to hear of their
        #: timeout, ended ones included until they come up (``sim.rpc``).
        self.call_deadlines: list[tuple[float, int, Callable[[], None]]] = []
        self.lease: Lease | None = None
        self.membership: Membership | None = None
        self.work_epoch: int | None = None  # the epoch of the primary work running, if any
        self.fenced = False  # that work raised the fence
        self._writes = 0
        self._vote_seen: tuple[int, str | None] = (0, None)
        self._rng = random.Random()
        self._on_exit: Callable[[], None] | None = None  # stopping: what its exit does
        self._stopping_epoch = 0  # the term it stopped in
        # Built once, not per heartbeat (the facts never change; the messages are frozen):
        # a probe per peer per second is most of what a seed does.
        self._heartbeat = Heartbeat(self.facts)
        self._heartbeat_reply = HeartbeatReply(self.facts)
        peers = [p for p in host.config.node_ids if p != name]
        self._addresses = {p: address(p) for p in peers}
        self._probe_keys = {p: f"probe {p}" for p in peers}
        self._probers = {p: partial(self._probe, p) for p in peers}
        self._missers = {p: partial(self._missed, p) for p in peers}
        self._fire_bound = self._fire  # bound once: set_timer runs for most events

    # ---------------------------------------------------------------- time and timers

    def local(self) -> float:
        clock = self.clock  # Clock.local written out: this runs several times per event
        return clock.offset + clock.rate * self._loop.now

    def set_timer(self, key: str, deadline: float, fire: Callable[[], None]) -> None:
        """Call ``fire`` once this node's clock reads ``deadline``; replaces ``key``'s timer."""
        self._token = token = self._token + 1
        self.timers[key] = (deadline, token, fire)
        # EventLoop.at and the usual case of Clock.true_at written out: this runs for most
        # events.
        loop, clock = self._loop, self.clock
        offset, rate = clock.offset, clock.rate
        due = (deadline - offset) / rate
        if offset + rate * due < deadline:
            due = clock.true_at(deadline)  # rounding landed a hair early
        now = loop.now
        entry: Entry = (
            due if due > now else now,
            next(loop.seq),
            self.name,
            partial(self._fire_bound, key, token),
        )
        heappush(loop.heap, entry)

    def cancel_timer(self, key: str) -> None:
        self.timers.pop(key, None)

    def retime(self) -> None:
        """The clock's rate changed: every timer is due at another true time."""
        for key, (deadline, _, fire) in list(self.timers.items()):
            self.set_timer(key, deadline, fire)

    def _fire(self, key: str, token: int) -> None:
        entry = self.timers.get(key)
        if entry is None or entry[1] != token:
            return  # cancelled, replaced, or from before a crash
        del self.timers[key]
        entry[2]()

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Boot (again): fresh cores, the persisted vote handed back to the lease."""
        config = self.host.config
        now = self.local()
        self.up = True
        tag = f"{self._seed}/{self.name}/{self.incarnation}"
        self._rng = random.Random(f"{tag}/driver")
        self.lease = Lease(
            self.name,
            voters=config.voters,
            candidate=self.coordinator,
            settings=config.lease,
            now=now,
            rng=random.Random(f"{tag}/lease"),
            persisted=self.persisted,
            knobs=config.knobs,
        )
        self._vote_seen = (self.lease.term, self.lease.voted_for)
        self.membership = Membership(self.name, config.detector, local_address=address(self.name))
        for peer in config.node_ids:
            if peer != self.name:
                role = "coordinator" if peer.startswith("c") else "worker"
                self.membership.add(address(peer), now, node_id=peer, role=role, static=True)
                phase = self._rng.uniform(0.0, config.detector.heartbeat_interval)
                self.set_timer(self._probe_keys[peer], now + phase, self._probers[peer])
        self._arm_lease()
        self.host.lease_changed(self)
        if config.tasks:
            self.work = Work(self, random.Random(f"{tag}/tasks"))
            self.work.start()

    def crash(self) -> None:
        """Everything in memory is gone; only ``persisted`` (and the clock) remain."""
        self.up = False
        self.paused = False
        self.pause_armed = None
        self.crash_armed = False
        self.work = None
        self.incarnation += 1
        self.held.clear()
        self.timers.clear()
        self.open_calls.clear()
        self.call_deadlines.clear()
        self.lease = None
        self.membership = None
        self.work_epoch = None
        self.fenced = False
        self._on_exit = None
        self.host.lease_changed(self)

    def stop_gracefully(self, on_exit: Callable[[], None]) -> None:
        """SIGTERM: hand the lease over (``Lease.transfer``), then exit (``on_exit``) once a
        newer term shows, or after ``TRANSFER_WAIT``, as the driver does. The primary work
        stops with the ``SteppedDown`` that comes before any release leaves."""
        assert self.lease is not None
        lease, now = self.lease, self.local()
        self._on_exit = on_exit
        self._stopping_epoch = lease.term
        self.host.note(self.name, "SIGTERM: hands the lease over, then stops")
        if lease.role is PRIMARY:
            self.host.transfer_started(self, lease.term)
        successors = [n for n in self.host.config.node_ids[: self.host.config.coordinators]]
        self._carry_out(lease.transfer(now, [n for n in successors if n != self.name]), None)
        self.set_timer("exit", now + TRANSFER_WAIT, self._exit)

    def _exit(self) -> None:
        on_exit, self._on_exit = self._on_exit, None
        if on_exit is not None:
            on_exit()

    def lose_disk(self) -> None:
        """The data dir is gone (down already): the next start has no record at all."""
        assert not self.up
        self.persisted = None
        self.disks += 1

    # ---------------------------------------------------------------- inbound calls

    def handle(self, sender: str, request: Request) -> Reply | None:
        """Answer one call; the world delivers the reply back on the same call."""
        match request:
            case Heartbeat():
                return self.heartbeat(request)
            case TaskRun():
                if self.work is not None:
                    self.work.poke()
                return ACK
            case TaskQueued():
                if self.work is not None:
                    self.work.wake()
                return ACK
            case VoteRequest() | VoteReply() | RenewRequest() | RenewReply() | Release():
                assert self.lease is not None
                self.host.note(self.name, partial(passing, "<-", sender, request))
                actions = self.lease.receive(self.local(), sender, request)
                return self._carry_out(actions, reply_to=sender)
            case _:
                raise AssertionError(f"store requests go to the store: {request!r}")

    def heartbeat(self, request: Heartbeat) -> HeartbeatReply:
        """Answer another node's heartbeat (the calls layer asks it straight: ``probe``)."""
        assert self.membership is not None
        clock = self.clock  # self.local() written out
        now = clock.offset + clock.rate * self._loop.now
        changes = self.membership.heartbeat_received(request.facts, now)
        if changes:  # it never moves a state, so the members timer stays as it is
            self._members(changes)
        return self._heartbeat_reply

    # ---------------------------------------------------------------- the lease

    def _lease_tick(self) -> None:
        assert self.lease is not None
        self._carry_out(self.lease.tick(self.local()), reply_to=None)

    def _on_lease_reply(self, sender: str, reply: Reply) -> None:
        assert self.lease is not None
        assert isinstance(reply, VoteReply | RenewReply)
        self.host.note(self.name, partial(passing, "<-", sender, reply))
        self._carry_out(self.lease.receive(self.local(), sender, reply), reply_to=None)

    def _carry_out(self, actions: list[Action], reply_to: str | None) -> Message | None:
        """Do the lease's actions in order; a reply to the caller is returned, not sent."""
        assert self.lease is not None
        reply: Message | None = None
        for action in actions:
            if isinstance(action, Send):
                # Most actions: taken first, without the match below (its class patterns
                # cost several times an isinstance for each Send).
                to, message = action.to, action.message
                if to == reply_to and isinstance(message, VoteReply | RenewReply):
                    reply = message
                    if isinstance(message, VoteReply) and message.granted and not message.pre_vote:
                        self.host.voted(self.name, message.term, to)
                else:
                    on_reply = partial(self._on_lease_reply, to)
                    timeout = self._rpc_timeout
                    # The witness lives in the store: its requests take the store's path.
                    dst = STORE if to == WITNESS_ID else to
                    self.host.call(self, dst, message, timeout=timeout, on_reply=on_reply)
                continue
            match action:
                case Persist():
                    self.persisted = Persisted(action.term, action.voted_for)
                    self.host.note(self.name, f"persist term {action.term} vote {action.voted_for}")
                case BecamePrimary():
                    self.host.note(
                        self.name,
                        f"became primary: epoch {action.epoch}, lease to {action.until:.6f} "
                        f"local (true {self.clock.true_at(action.until):.6f})",
                    )
                    self.host.became_primary(self, action.epoch)
                    self._start_work(action.epoch)
                case LeaseExtended():
                    self.host.extended(self, action.epoch, action.until)
                case SteppedDown():
                    self.host.note(
                        self.name, f"stepped down from epoch {action.epoch}: {action.reason}"
                    )
                    self._stop_work()
                case DigestMismatch():
                    self.host.note(self.name, f"voter set digest mismatch with {action.peer}")
        seen = (self.lease.term, self.lease.voted_for)
        if seen != self._vote_seen:
            self._vote_seen = seen
            if seen[1] not in (None, UNKNOWN_VOTE):  # its own vote as a candidate included
                self.host.voted(self.name, seen[0], seen[1])
        self._arm_lease()
        self.host.lease_changed(self)
        if self._on_exit is not None and self.lease.term > self._stopping_epoch:
            self.set_timer("exit", self.local(), self._exit)  # a standby campaigns: go now
        return reply

    def _arm_lease(self) -> None:
        # Lazily: a timer that fires early only ticks for nothing and is armed again.
        assert self.lease is not None
        deadline = self.lease.next_deadline()
        if not math.isfinite(deadline):
            return
        current = self.timers.get("lease")
        if current is None or deadline < current[0]:
            self.set_timer("lease", deadline, self._lease_tick)

    # ---------------------------------------------------------------- heartbeats

    def _probe(self, peer: str) -> None:
        """One heartbeat, and the next one an interval after this one started."""
        detector = self._detector
        clock = self.clock
        started = clock.offset + clock.rate * self._loop.now  # self.local() written out
        self.set_timer(
            self._probe_keys[peer], started + detector.heartbeat_interval, self._probers[peer]
        )
        self.host.probe(
            self,
            peer,
            self._heartbeat,
            timeout=detector.heartbeat_timeout,
            on_reply=partial(self._answered, peer, started),
            on_timeout=self._missers[peer],
        )

    def _answered(self, peer: str, started: float, reply: Reply) -> None:
        assert self.membership is not None and isinstance(reply, HeartbeatReply)
        clock = self.clock
        now = clock.offset + clock.rate * self._loop.now  # self.local() written out
        address = self._addresses[peer]
        changes = self.membership.heartbeat_answered(address, now, now - started, reply.facts)
        if changes:  # no state moved: the members timer is due as it was
            self._members(changes)

    def _missed(self, peer: str) -> None:
        assert self.membership is not None
        changes = self.membership.heartbeat_missed(self._addresses[peer], self.local())
        if changes:
            self._members(changes)

    def _members_tick(self) -> None:
        assert self.membership is not None
        self._members(self.membership.tick(self.local()))

    def _members(self, changes: list[StateChanged]) -> None:
        assert self.membership is not None
        for change in changes:
            if change.old is not None and change.new is not None:
                self.host.note(self.name, partial(_seen, change))
        deadline = self.membership.next_deadline()
        current = self.timers.get("members")
        if deadline is not None and (current is None or deadline < current[0]):
            self.set_timer("members", deadline, self._members_tick)

    # ---------------------------------------------------------------- the primary's work

    def working(self, epoch: int) -> bool:
        """Is the work of ``epoch`` still running (the driver's ``primary`` nursery)?"""
        lease = self.lease
        return (
            lease is not None
            and lease.role is PRIMARY
            and lease.term == epoch
            and self.work_epoch == epoch
        )

    def _start_work(self, epoch: int) -> None:
        self.work_epoch = epoch
        self.fenced = False
        self.cancel_timer("write")
        if self.work is not None:
            self.work.stop()
        self._raise(epoch)

    def _stop_work(self) -> None:
        self.work_epoch = None
        self.fenced = False
        self.cancel_timer("write")
        if self.work is not None:
            self.work.stop()

    def submit(self, request: Submit) -> None:
        """A client's task submission reaches this coordinator's API."""
        if self.work is not None:
            self.work.submit(request)

    def _raise(self, epoch: int) -> None:
        self.host.call(
            self,
            STORE,
            RaiseFence(epoch),
            timeout=self._rpc_timeout,
            on_reply=partial(self._raised, epoch),
            on_timeout=partial(self._raise_timed_out, epoch),
        )

    def _raise_timed_out(self, epoch: int) -> None:
        if self.working(epoch):
            self.host.note(self.name, f"fence raise to {epoch} timed out; again")
            self._raise(epoch)

    def _raised(self, epoch: int, reply: Reply) -> None:
        assert isinstance(reply, Answer)
        if not self.working(epoch):
            return
        if not reply.ok:
            self._lost_fence(reply.fence_epoch)
            return
        self.fenced = True
        self.host.note(self.name, f"fence raised to {epoch}; writing")
        self._write_tick(epoch)
        if self.work is not None and self.working(epoch):
            self.work.place(epoch)

    def _write_tick(self, epoch: int) -> None:
        """Decide whether to write now; the write itself leaves a moment later."""
        if not self.working(epoch):
            return
        assert self.lease is not None
        now = self.local()
        self.set_timer("write", now + self._write_interval, partial(self._write_tick, epoch))
        until = self.lease.lease_until
        if until is None or now >= until - self._write_margin:
            return  # past the primary nursery's deadline: no work until the lease is extended
        self._writes += 1
        seq = self._writes
        if self.pause_armed is not None and not self.pause_at_batch:
            # Stopped between deciding and sending: it will send on stale beliefs.
            duration, self.pause_armed = self.pause_armed, None
            self.host.note(self.name, f"decided write #{seq} (epoch {epoch}) and froze")
            self.host.pause(self, duration)
        delay = self._rng.uniform(*WRITE_PREP)
        send = partial(self._send_write, epoch, seq, self.incarnation)
        self.host.loop.after(delay, send, self.name)

    def _send_write(self, epoch: int, seq: int, incarnation: int) -> None:
        if incarnation != self.incarnation:
            return  # the process that decided it is gone
        self.host.call(
            self,
            STORE,
            FencedWrite(epoch, seq),
            timeout=self._rpc_timeout,
            on_reply=partial(self._written, epoch),
        )

    def _written(self, epoch: int, reply: Reply) -> None:
        assert isinstance(reply, Answer)
        if not reply.ok and self.working(epoch):
            self._lost_fence(reply.fence_epoch)

    def lost_fence(self, fence_epoch: int) -> None:
        """A fenced write was refused: the fence is at ``fence_epoch``, past ours."""
        self._lost_fence(fence_epoch)

    def _lost_fence(self, fence_epoch: int) -> None:
        assert self.lease is not None
        self.host.note(self.name, f"the store refused: fence at {fence_epoch}")
        self._carry_out(self.lease.lost_fence(self.local(), fence_epoch), reply_to=None)
