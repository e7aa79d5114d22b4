"""Unary calls over the simulated network, as the real driver makes them over gRPC.

A request may be lost, delayed or duplicated on its way; the callee answers each copy that
arrives; the reply travels back on the same call and is dropped if the caller restarted since,
already has its answer, or reads its clock past the call's deadline. A caller that asked to
hear of timeouts learns of them from a timer on its own clock, which also ends the call in
order with its other events (a paused caller learns of both only when it wakes). One timer per
node serves all its open calls (``CALLS_TIMER``), due at the earliest deadline of a call that
was open when it was armed: an answered call only leaves the open set, so calls answered in
time cost no event of their own (a timer per call fired for nothing for each), and one firing
for an answered call covers the calls made since (it arms again for the first still open).

A node's task statements reach the store over one connection, in order: a later statement
never overtakes an earlier one (TCP), though either may be lost. The placer's argument for
capacity needs it (a round reads the load after its previous round's write landed, or was
lost for good); a duplicated copy is answered from the store's memory of the request id.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from heapq import heappop, heappush
from random import Random

from brio.core.lease import RenewRequest, VoteRequest
from sim.loop import Entry, EventLoop
from sim.network import Network
from sim.node import SimNode
from sim.trace import Text
from sim.wire import (
    LEASE_MESSAGES,
    STORE,
    TASK_STATEMENTS,
    TASK_TRAFFIC,
    Heartbeat,
    Reply,
    Request,
    passing,
)

#: Answers a request that reached ``dst`` from ``sender``: the reply, or None (no reply, or
#: nobody there to answer).
Serve = Callable[[str, str, Request], Reply | None]
Note = Callable[[str, Text], None]
#: ``Serve`` for a heartbeat to ``dst`` (the sender is not needed to answer one).
ServeHeartbeat = Callable[[str, Heartbeat], Reply | None]

#: The node timer that times out the node's calls (see the module doc).
CALLS_TIMER = "calls"


#: One call in flight, nothing changes it: (caller, the caller's incarnation when it called (a
#: restarted caller has no such call), call id, callee, request, deadline by the caller's
#: clock, on_reply (None: a notice, whose answer no one awaits), on_timeout). A tuple: it is
#: built for every message, and a dataclass's ``__init__`` cost a visible share of a seed.
Call = tuple[
    SimNode,
    int,
    int,
    str,
    Request,
    float,
    Callable[[Reply], None] | None,
    Callable[[], None] | None,
]

#: The requests an aimed fault may strike (``Chaos.sending`` ignores every other kind).
AIMED_AT: frozenset[type] = frozenset({RenewRequest, VoteRequest})


class Calls:
    def __init__(
        self,
        loop: EventLoop,
        network: Network,
        serve: Serve,
        note: Note,
        task_rng: Random,
        *,
        sending: Callable[[SimNode, Request], None],
        serve_heartbeat: ServeHeartbeat,
    ) -> None:
        """``sending`` is told of each call of a kind in ``AIMED_AT`` as it leaves (the
        chaos's aimed faults strike at the moment a round leaves); ``serve_heartbeat``
        answers a heartbeat as ``serve`` would (``probe``)."""
        self._sending = sending
        self._serve_heartbeat = serve_heartbeat
        self._loop = loop
        self._network = network
        self._task_rng = task_rng
        self._serve = serve
        self._note = note
        self._last_id = 0
        self._in_order: dict[str, float] = {}  # node -> arrival of its last task statement

    def call(
        self,
        src: SimNode,
        dst: str,
        request: Request,
        *,
        timeout: float,
        on_reply: Callable[[Reply], None] | None,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        """``on_reply`` None: a notice; the callee answers it, but nothing waits for the
        answer, so it is not carried back (nor is the call kept open).

        A call in flight is a plain tuple (``Call``), not an object of its own: one is made
        for every message, and a dataclass's ``__init__`` for each was a visible share of a
        seed's CPU."""
        kind = type(request)
        if kind in AIMED_AT:
            self._sending(src, request)
        self._last_id = call_id = self._last_id + 1
        loop = self._loop
        now = loop.now
        clock = src.clock
        deadline = clock.offset + clock.rate * now + timeout  # src.local() written out
        if on_reply is not None:
            src.open_calls.add(call_id)
        rng = self._task_rng if kind in TASK_TRAFFIC else None
        copies = self._network.transit(src.name, dst, rng)
        if not copies:
            if kind in LEASE_MESSAGES:
                self._note(src.name, partial(passing, "->", dst, request, ": lost"))
        else:
            call: Call = (
                src,
                src.incarnation,
                call_id,
                dst,
                request,
                deadline,
                on_reply,
                on_timeout,
            )
            arrive = partial(self._arrive, call)
            node: str | None = dst
            if dst == STORE:
                node = None
                if kind in TASK_STATEMENTS:
                    arrival = max(now + copies[0], self._in_order.get(src.name, 0.0))
                    self._in_order[src.name] = arrival
                    copies = [arrival - now]
            # EventLoop.after for each copy, written out (delays are never negative): it
            # runs for every message.
            heap, seq = loop.heap, loop.seq
            for delay in copies:
                entry: Entry = (now + delay, next(seq), node, arrive)
                heappush(heap, entry)
        if on_timeout is not None:
            heappush(src.call_deadlines, (deadline, call_id, on_timeout))
            self._arm(src, deadline)

    def probe(
        self,
        src: SimNode,
        dst: str,
        request: Heartbeat,
        *,
        timeout: float,
        on_reply: Callable[[Reply], None],
        on_timeout: Callable[[], None],
    ) -> None:
        """``call`` for a heartbeat, whose kind is known: no test of the kinds that aim,
        draw from the task stream, trace their loss or go to the store, and the callee's
        answer asked of ``serve_heartbeat`` straight. Heartbeats are most of the messages;
        what happens to them is what ``call`` would do, draw for draw."""
        self._last_id = call_id = self._last_id + 1
        loop = self._loop
        now = loop.now
        clock = src.clock
        deadline = clock.offset + clock.rate * now + timeout  # src.local() written out
        src.open_calls.add(call_id)
        copies = self._network.transit(src.name, dst)
        if copies:
            call: Call = (
                src,
                src.incarnation,
                call_id,
                dst,
                request,
                deadline,
                on_reply,
                on_timeout,
            )
            arrive = partial(self._probed, call)
            heap, seq = loop.heap, loop.seq
            for delay in copies:
                entry: Entry = (now + delay, next(seq), dst, arrive)
                heappush(heap, entry)
        heappush(src.call_deadlines, (deadline, call_id, on_timeout))
        self._arm(src, deadline)

    def _probed(self, call: Call) -> None:
        """``_arrive`` for a heartbeat (``probe``)."""
        src, _, _, dst, request, _, _, _ = call
        assert isinstance(request, Heartbeat)
        reply = self._serve_heartbeat(dst, request)
        if reply is None:
            return
        name = src.name
        copies = self._network.transit(dst, name)
        if copies:
            answer = partial(self._answer, call, reply)
            loop = self._loop
            heap, seq, now = loop.heap, loop.seq, loop.now
            for delay in copies:
                entry: Entry = (now + delay, next(seq), name, answer)
                heappush(heap, entry)

    def _arrive(self, call: Call) -> None:
        src, _, _, dst, request, _, on_reply, _ = call
        reply = self._serve(src.name, dst, request)
        if reply is None or on_reply is None:
            return
        kind = type(reply)
        name = src.name
        copies = self._network.transit(dst, name, self._task_rng if kind in TASK_TRAFFIC else None)
        if copies:
            answer = partial(self._answer, call, reply)
            loop = self._loop
            heap, seq, now = loop.heap, loop.seq, loop.now
            for delay in copies:
                entry: Entry = (now + delay, next(seq), name, answer)
                heappush(heap, entry)
        elif kind in LEASE_MESSAGES:
            self._note(dst, partial(passing, "->", name, reply, ": lost"))

    def _answer(self, call: Call, reply: Reply) -> None:
        src, incarnation, call_id, dst, _, deadline, on_reply, on_timeout = call
        if src.incarnation != incarnation or call_id not in src.open_calls:
            return  # the caller restarted, or this call already ended
        clock = src.clock
        if clock.offset + clock.rate * self._loop.now > deadline:  # src.local() written out
            if on_timeout is None:  # else its timer ends the call, in order
                src.open_calls.discard(call_id)
            if type(reply) in LEASE_MESSAGES:
                after = ": after the call's timeout"
                self._note(src.name, partial(passing, "<-", dst, reply, after))
            return
        src.open_calls.discard(call_id)  # its deadline stays queued, and is skipped
        assert on_reply is not None  # a notice's answer is not carried back
        on_reply(reply)

    def _rearm(self, src: SimNode) -> None:
        """Have ``CALLS_TIMER`` due by the earliest deadline of an open call, if any (the
        ended calls at the front of the queue are dropped)."""
        deadlines, open_calls = src.call_deadlines, src.open_calls
        while deadlines and deadlines[0][1] not in open_calls:
            heappop(deadlines)
        if deadlines:
            self._arm(src, deadlines[0][0])

    def _arm(self, src: SimNode, deadline: float) -> None:
        """Have ``CALLS_TIMER`` due by ``deadline`` at the latest (one timer per node)."""
        armed = src.timers.get(CALLS_TIMER)
        if armed is None or deadline < armed[0]:
            src.set_timer(CALLS_TIMER, deadline, partial(self._expire, src))

    def _expire(self, src: SimNode) -> None:
        """End every open call of ``src`` past its deadline, earliest first; then arm the
        timer for the earliest still open, if any."""
        deadlines, open_calls = src.call_deadlines, src.open_calls
        clock, incarnation = src.clock, src.incarnation
        now = clock.offset + clock.rate * self._loop.now  # src.local() written out
        while deadlines and deadlines[0][0] <= now:
            _, call_id, on_timeout = heappop(deadlines)
            if call_id in open_calls:
                open_calls.discard(call_id)
                on_timeout()  # may call again (queued, not yet due), crash or pause the node
                if src.incarnation != incarnation:
                    return  # crashed: its calls are gone
                if src.paused:
                    break  # the rest when it wakes: the timer is held till then
        self._rearm(src)
