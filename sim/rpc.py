"""Unary calls over the simulated network, as the real driver makes them over gRPC.

A request may be lost, delayed or duplicated on its way; the callee answers each copy that
arrives; the reply travels back on the same call and is dropped if the caller restarted since,
already has its answer, or reads its clock past the call's deadline. A caller that asked to
hear of timeouts learns of them from a timer on its own clock, which also ends the call in
order with its other events (a paused caller learns of both only when it wakes). One timer per
node serves all its open calls (``CALLS_TIMER``), due at the earliest deadline of a call that
was open when it was armed: an answered call only leaves the open set, so most calls, answered
in time, cost no event of their own (a timer per call fired for nothing for each).

A node's task statements reach the store over one connection, in order: a later statement
never overtakes an earlier one (TCP), though either may be lost. The placer's argument for
capacity needs it (a round reads the load after its previous round's write landed, or was
lost for good); a duplicated copy is answered from the store's memory of the request id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from heapq import heappop, heappush
from random import Random

from sim.loop import EventLoop
from sim.network import Network
from sim.node import STORE, SimNode
from sim.wire import LEASE_MESSAGES, TASK_STATEMENTS, TASK_TRAFFIC, Reply, Request, describe

#: Answers a request that reached ``dst`` from ``sender``: the reply, or None (no reply, or
#: nobody there to answer).
Serve = Callable[[str, str, Request], Reply | None]
Note = Callable[[str, str], None]

#: The node timer that times out the node's calls (see the module doc).
CALLS_TIMER = "calls"


@dataclass(slots=True)
class Call:
    """One call in flight; nothing changes it after construction. Not frozen: one is built
    for every message, and a frozen init's per-field ``object.__setattr__`` was a visible share
    of a seed's CPU."""

    id: int
    src: SimNode
    incarnation: int  # the caller's, when it called: a restarted caller has no such call
    dst: str
    request: Request
    deadline: float  # the caller's clock
    on_reply: Callable[[Reply], None]
    on_timeout: Callable[[], None] | None


class Calls:
    def __init__(
        self, loop: EventLoop, network: Network, serve: Serve, note: Note, task_rng: Random
    ) -> None:
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
        on_reply: Callable[[Reply], None],
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        self._last_id += 1
        call = Call(
            self._last_id,
            src,
            src.incarnation,
            dst,
            request,
            src.local() + timeout,
            on_reply,
            on_timeout,
        )
        src.open_calls.add(call.id)
        kind = type(request)
        task = kind in TASK_TRAFFIC
        copies = self._network.transit(src.name, dst, self._task_rng if task else None)
        if not copies and kind in LEASE_MESSAGES:
            self._note(src.name, f"-> {dst} {describe(request)}: lost")
        to_store = dst == STORE
        if copies and to_store and kind in TASK_STATEMENTS:
            now = self._loop.now
            arrival = max(now + copies[0], self._in_order.get(src.name, 0.0))
            self._in_order[src.name] = arrival
            copies = [arrival - now]
        if copies:
            arrive = partial(self._arrive, call)
            target = None if to_store else dst
            after = self._loop.after
            for delay in copies:
                after(delay, arrive, target)
        if on_timeout is not None:
            heappush(src.call_deadlines, (call.deadline, call.id, on_timeout))
            self._arm(src)

    def _arrive(self, call: Call) -> None:
        reply = self._serve(call.src.name, call.dst, call.request)
        if reply is None:
            return
        kind = type(reply)
        rng = self._task_rng if kind in TASK_TRAFFIC else None
        copies = self._network.transit(call.dst, call.src.name, rng)
        if not copies:
            if kind in LEASE_MESSAGES:
                self._note(call.dst, f"-> {call.src.name} {describe(reply)}: lost")
            return
        answer = partial(self._answer, call, reply)
        for delay in copies:
            self._loop.after(delay, answer, call.src.name)

    def _answer(self, call: Call, reply: Reply) -> None:
        src = call.src
        if src.incarnation != call.incarnation or call.id not in src.open_calls:
            return  # the caller restarted, or this call already ended
        if src.local() > call.deadline:
            if call.on_timeout is None:  # else its timer ends the call, in order
                src.open_calls.discard(call.id)
            if type(reply) in LEASE_MESSAGES:
                self._note(src.name, f"<- {call.dst} {describe(reply)}: after the call's timeout")
            return
        src.open_calls.discard(call.id)  # its deadline stays queued, and is skipped
        call.on_reply(reply)

    def _arm(self, src: SimNode) -> None:
        """Have ``CALLS_TIMER`` due by the earliest queued deadline (the queue not empty)."""
        deadline = src.call_deadlines[0][0]
        armed = src.timers.get(CALLS_TIMER)
        if armed is None or deadline < armed[0]:
            src.set_timer(CALLS_TIMER, deadline, partial(self._expire, src))

    def _expire(self, src: SimNode) -> None:
        """End every open call of ``src`` past its deadline, earliest first; then arm the
        timer for the earliest still open, if any (the ended ones are dropped on the way)."""
        deadlines, open_calls = src.call_deadlines, src.open_calls
        now, incarnation = src.local(), src.incarnation
        while deadlines and deadlines[0][0] <= now:
            _, call_id, on_timeout = heappop(deadlines)
            if call_id in open_calls:
                open_calls.discard(call_id)
                on_timeout()  # may call again (queued, not yet due), crash or pause the node
                if src.incarnation != incarnation:
                    return  # crashed: its calls are gone
                if src.paused:
                    break  # the rest when it wakes: the timer is held till then
        while deadlines and deadlines[0][1] not in open_calls:
            heappop(deadlines)
        if deadlines:
            self._arm(src)
