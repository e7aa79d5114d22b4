"""Three ``LeaseDriver``s in virtual time, wired to each other in memory.

Each driver's transport calls the peer driver's ``handle(...)`` directly (the driver's side of
the Vote and Renew handlers; their checks of the sender are ``test_handlers.py``'s), with the
wire conversion of ``brio.mesh.lease`` and a small one-way delay; a link can be cut. Time is
trio's ``MockClock`` (``autojump_clock``), so elections and lease expiries that take seconds
run in milliseconds.
The vote files are real, in ``tmp_path``; the transport reads a voter's file the moment its
granted vote is returned, before the candidate sees it.

The same driver over gRPC, with real nodes and PostgreSQL, is ``test_lease_driver.py``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

from brio.config.model import LeaseConfig
from brio.core import lease as core
from brio.core.constants import WITNESS_ID
from brio.core.witness import Request, WitnessRecord, decide
from brio.mesh import methods, pb
from brio.mesh.lease import (
    LeaseDriver,
    renew_reply_pb,
    renew_request_from,
    vote_reply_pb,
    vote_request_from,
)
from brio.mesh.lease_state import load_lease_state
from brio.mesh.methods import Method
from brio.mesh.transport import MeshCallError
from brio.store.witness import WitnessAnswer


class TimerLoopSpins(Exception):
    """The driver ticked over and over without time passing: its timer loop never blocks."""


NODES = ("c1", "c2", "c3")
CONFIG = LeaseConfig()  # the defaults: a 1.2 s lease, election timeout [0.1, 0.3] s
DELAY = 0.002  # one way, per message
#: A fresh cluster elects within: the restart wait (no vote for one lease after start), the
#: longest election timeout twice (one split vote: the candidates' timers fell within a round
#: trip of each other), and a renewal interval for the rounds in between (pre-vote, vote; a
#: voter without a record first asks the others' terms), messages taking ms.
ELECTION_BOUND = CONFIG.lease_duration + 2 * CONFIG.election_timeout[1] + CONFIG.lease_duration / 3


@dataclass
class Work:
    """One run of a primary callback: who, which epoch, from when to when (virtual time)."""

    node: str
    epoch: int
    started: float
    stopped: float | None = None
    cancelled: bool = False


@dataclass
class Net:
    drivers: dict[str, LeaseDriver] = field(default_factory=dict)
    cut: set[frozenset[str]] = field(default_factory=set)
    work: list[Work] = field(default_factory=list)
    #: extra one-way delay of a node's answers to renewals (a stalled loop, a slow link)
    slow_renew: dict[str, float] = field(default_factory=dict)
    in_flight: dict[tuple[str, str], int] = field(default_factory=dict)  # (from, to) -> calls
    most_in_flight: int = 0
    timed_out: int = 0
    votes_checked: int = 0
    #: what the test fails on: a granted vote whose file did not say so when it was returned
    #: (raising in the transport would only look like silence to the driver)
    unsaved_votes: list[str] = field(default_factory=list)

    def reachable(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self.cut

    def isolate(self, node: str) -> None:
        self.cut |= {frozenset((node, other)) for other in NODES if other != node}

    def heal(self) -> None:
        self.cut.clear()

    def primaries(self) -> list[str]:
        return [n for n, d in self.drivers.items() if d.view().role == "primary"]

    def running(self) -> list[Work]:
        return [w for w in self.work if w.stopped is None]


class InMemoryLeaseTransport:
    """``LeaseTransport`` for ``sender``: Vote and Renew delivered to the peer's driver."""

    def __init__(self, net: Net, sender: str) -> None:
        self.net = net
        self.sender = sender

    def _unreachable(self, to: str, method: Method) -> MeshCallError:
        return MeshCallError(to, method.path, "unreachable", "the link is cut")

    async def call(
        self, node_id: str, method: Method, request: Any, timeout: float | None = None
    ) -> Any:
        """One call, given up after ``timeout`` as the real channel does."""
        assert timeout is not None and timeout > 0
        link = (self.sender, node_id)
        self.net.in_flight[link] = self.net.in_flight.get(link, 0) + 1
        self.net.most_in_flight = max(self.net.most_in_flight, self.net.in_flight[link])
        try:
            with trio.move_on_after(timeout):
                return await self._call(node_id, method, request)
            self.net.timed_out += 1
            raise MeshCallError(node_id, method.path, "timeout", "timed out", "DEADLINE_EXCEEDED")
        finally:
            self.net.in_flight[link] -= 1

    async def _call(self, node_id: str, method: Method, request: Any) -> Any:
        if not self.net.reachable(self.sender, node_id):
            raise self._unreachable(node_id, method)
        await trio.sleep(DELAY)
        peer = self.net.drivers[node_id]
        if method == methods.VOTE:
            message = vote_request_from(request)
            reply = peer.handle(self.sender, message)
            if reply is None:
                raise MeshCallError(node_id, method.path, "rejected", "not running", "UNAVAILABLE")
            assert isinstance(reply, core.VoteReply)
            if reply.granted and not reply.pre_vote:
                self._check_saved(peer, reply.term, message.candidate)
            answer: Any = vote_reply_pb(reply)
        elif method == methods.RENEW:
            renew = peer.handle(self.sender, renew_request_from(request))
            if renew is None:
                answer = pb.LeaseRenewReply(term=request.term, ok=False, reason="not a voter")
            else:
                assert isinstance(renew, core.RenewReply)
                answer = renew_reply_pb(renew)
            await trio.sleep(self.net.slow_renew.get(node_id, 0.0))
        else:
            raise AssertionError(f"the lease sent {method.path}")
        await trio.sleep(DELAY)
        if not self.net.reachable(self.sender, node_id):  # cut while the answer travelled
            raise self._unreachable(node_id, method)
        return answer

    def _check_saved(self, voter: LeaseDriver, term: int, candidate: str) -> None:
        self.net.votes_checked += 1
        saved = load_lease_state(voter.data_dir)
        if saved is None or (saved.term, saved.voted_for) != (term, candidate):
            self.net.unsaved_votes.append(
                f"{voter.node_id} granted term {term} to {candidate}; its file says {saved}"
            )


#: Ticks of one driver at one virtual instant beyond which its timer loop is spinning. A
#: timer loop that sleeps until the core's next deadline ticks once or twice per instant;
#: one that never blocks keeps trio busy, so ``autojump_clock`` never moves and the test
#: would hang until pytest-timeout instead of failing here at once.
SPIN_LIMIT = 1000


def fail_if_spinning(driver: LeaseDriver) -> None:
    lease = driver.core
    assert lease is not None
    tick = lease.tick
    last = [math.nan, 0]  # the instant of the last tick, ticks at it

    def counted(now: float) -> list[core.Action]:
        last[:] = [now, last[1] + 1] if now == last[0] else [now, 1]
        if last[1] > SPIN_LIMIT:
            raise TimerLoopSpins(
                f"{driver.node_id} ticked {SPIN_LIMIT} times at t={now:g} without time passing"
            )
        return tick(now)

    lease.tick = counted  # type: ignore[method-assign]


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Net]:
    net = Net()
    voters = frozenset(NODES)
    for node in NODES:

        async def primary(epoch: int, node: str = node) -> None:
            run = Work(node, epoch, trio.current_time())
            net.work.append(run)
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                run.cancelled = True
                raise
            finally:
                run.stopped = trio.current_time()

        data_dir = tmp_path / node
        data_dir.mkdir()
        net.drivers[node] = LeaseDriver(
            node,
            config=CONFIG,
            voters=voters,
            candidates=voters,
            candidate=True,
            data_dir=data_dir,
            transport=InMemoryLeaseTransport(net, node),
            primary=primary,
        )
    async with trio.open_nursery() as nursery:
        for driver in net.drivers.values():
            await nursery.start(driver.run)
            fail_if_spinning(driver)
        yield net
        nursery.cancel_scope.cancel()


async def until_primary(net: Net, within: float, not_: str | None = None) -> str:
    """The one primary (other than ``not_``), waiting at most ``within`` virtual seconds."""
    with trio.fail_after(within):
        while True:
            found = [n for n in net.primaries() if n != not_]
            if found:
                return found[0]
            await trio.sleep(0.01)


def no_overlap(work: list[Work]) -> None:
    """Primary work never ran on two nodes at once."""
    runs = sorted(work, key=lambda w: w.started)
    for before, after in itertools.pairwise(runs):
        assert before.stopped is not None and before.stopped <= after.started, (before, after)


async def test_one_of_three_becomes_primary_within_the_election_bound(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as net:
        t0 = trio.current_time()
        winner = await until_primary(net, ELECTION_BOUND)
        elected_after = trio.current_time() - t0
        assert elected_after >= CONFIG.lease_duration  # nobody votes within one lease of start
        await trio.sleep(3 * CONFIG.lease_duration)  # renewals keep it, and it alone
        assert net.primaries() == [winner]
        view = net.drivers[winner].view()
        assert view.epoch is not None and view.epoch >= 1
        for driver in net.drivers.values():
            assert driver.view().primary == winner and driver.view().epoch == view.epoch
        # its callback runs, once, for that epoch
        assert [(w.node, w.epoch) for w in net.running()] == [(winner, view.epoch)]
        assert net.drivers[winner].elections_won == 1


async def test_votes_are_on_disk_before_the_candidate_hears_them(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as net:
        winner = await until_primary(net, ELECTION_BOUND)
        epoch = net.drivers[winner].view().epoch
    assert net.votes_checked >= 1 and net.unsaved_votes == []
    saved = {n: load_lease_state(tmp_path / n) for n in NODES}
    # the winner voted for itself, and at least one other voter for it, in its epoch
    votes = [n for n, s in saved.items() if s is not None and s == (epoch, winner)]
    assert winner in votes and len(votes) >= 2, saved


async def test_a_primary_cut_off_from_the_majority_stops_its_work_and_another_takes_over(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as net:
        old = await until_primary(net, ELECTION_BOUND)
        old_epoch = net.drivers[old].view().epoch
        assert old_epoch is not None
        await trio.sleep(CONFIG.lease_duration)
        remaining = net.drivers[old].view().lease_remaining
        assert remaining is not None and remaining > 0
        lease_end = trio.current_time() + remaining

        net.isolate(old)
        # no renewal is acknowledged: the work is cancelled before the lease it holds ends,
        # and the node steps down
        with trio.fail_after(CONFIG.lease_duration):
            while net.running():
                await trio.sleep(0.01)
        (first,) = net.work
        assert first.cancelled and first.stopped is not None and first.stopped <= lease_end
        with trio.fail_after(CONFIG.lease_duration):
            while net.drivers[old].view().role == "primary":
                await trio.sleep(0.01)
        assert net.drivers[old].step_downs == 1

        # the other two elect one of them, under a later epoch, once their promises to the
        # old primary ran out (one lease after their last acknowledgement)
        new = await until_primary(net, CONFIG.lease_duration + ELECTION_BOUND, not_=old)
        new_epoch = net.drivers[new].view().epoch
        assert new != old and new_epoch is not None and new_epoch > old_epoch
        await trio.sleep(0.1)
        assert [(w.node, w.epoch) for w in net.running()] == [(new, new_epoch)]
        no_overlap(net.work)

        # back on the network, the old primary follows the new one and starts no work
        net.heal()
        await trio.sleep(2 * CONFIG.lease_duration)
        assert net.primaries() == [new]
        assert net.drivers[old].view().primary == new
        assert [(w.node, w.epoch) for w in net.running()] == [(new, new_epoch)]
        no_overlap(net.work)
    assert net.unsaved_votes == []


async def test_the_timer_loop_sleeps_until_the_next_deadline(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A lone candidate that nobody answers: a handful of ticks a minute, not thousands."""
    async with cluster(tmp_path) as net:
        net.isolate("c1")
        net.isolate("c2")
        ticks = 0
        lease = net.drivers["c1"].core
        assert lease is not None
        tick = lease.tick

        def counted(now: float) -> list[core.Action]:
            nonlocal ticks
            ticks += 1
            return tick(now)

        lease.tick = counted  # type: ignore[method-assign]
        await trio.sleep(60)
        # one election timeout (>= 1 s) at the least between campaigns
        assert 0 < ticks <= 60 / CONFIG.election_timeout[0] + 5


#: Later than one renewal interval (D/3), earlier than the end of the lease the round would
#: grant less the primary's margin (0.95 D - D/3 - 0.05 D = 0.57 D after the next round).
LATE = 0.45 * CONFIG.lease_duration


async def test_renewal_answers_later_than_a_renewal_interval_keep_the_lease(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Every voter's answer to a renewal comes back 0.45 D late (a stalled loop): the call
    waits until the round's lease would end, so the primary keeps its lease and its work,
    with at most three renewals in flight per peer."""
    async with cluster(tmp_path) as net:
        winner = await until_primary(net, ELECTION_BOUND)
        epoch = net.drivers[winner].view().epoch
        net.slow_renew = {n: LATE for n in NODES if n != winner}
        await trio.sleep(10 * CONFIG.lease_duration)
        assert net.primaries() == [winner]
        assert net.drivers[winner].view().epoch == epoch
        assert net.drivers[winner].step_downs == 0
        assert [(w.node, w.epoch) for w in net.work] == [(winner, epoch)]  # never restarted
        remaining = net.drivers[winner].view().lease_remaining
        assert remaining is not None and remaining > 0
        assert net.timed_out == 0
        assert 2 <= net.most_in_flight <= 3


async def test_renewal_answers_after_the_rounds_lease_do_not_keep_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Answers later than the lease they would extend: the calls give up, the primary steps
    down, and (answers still that late) no primary lasts."""
    async with cluster(tmp_path) as net:
        winner = await until_primary(net, ELECTION_BOUND)
        net.slow_renew = {n: CONFIG.lease_duration for n in NODES}
        with trio.fail_after(CONFIG.lease_duration):
            while net.drivers[winner].view().role == "primary":
                await trio.sleep(0.01)
        assert net.drivers[winner].step_downs == 1
        await trio.sleep(CONFIG.lease_duration)  # the last round's calls end with its lease
        assert net.timed_out >= 2
        assert net.most_in_flight <= 3


class SlowWitness:
    """The store's witness voter in memory (``brio.core.witness.decide``, virtual time as
    the database clock); its answers to renewals take ``renew_delay``."""

    def __init__(self) -> None:
        self.record = WitnessRecord()
        self.renew_delay = 0.0
        self.renewals = 0

    async def ask_witness(self, request: Request, lease_duration: float) -> WitnessAnswer:
        await trio.sleep(DELAY)
        now = trio.current_time()
        self.record, reply = decide(self.record, request, now, lease_duration)
        if isinstance(request, core.RenewRequest):
            self.renewals += 1
            await trio.sleep(self.renew_delay)
        await trio.sleep(DELAY)
        return WitnessAnswer(reply, self.record, now)


async def test_late_witness_answers_to_renewals_keep_the_lease(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """One coordinator and the store's witness (a majority of two is both): the witness
    answers each renewal 0.45 D late, later than a renewal interval; the lease holds."""
    witness = SlowWitness()
    work: list[Work] = []

    async def primary(epoch: int) -> None:
        work.append(Work("c1", epoch, trio.current_time()))
        await trio.sleep_forever()

    driver = LeaseDriver(
        "c1",
        config=CONFIG,
        voters=frozenset({"c1", WITNESS_ID}),
        candidates=frozenset({"c1"}),
        candidate=True,
        data_dir=tmp_path,
        transport=InMemoryLeaseTransport(Net(), "c1"),  # nobody else: never called
        primary=primary,
        witness=witness,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        with trio.fail_after(ELECTION_BOUND + CONFIG.lease_duration):
            while driver.view().role != "primary":
                await trio.sleep(0.01)
        witness.renew_delay = LATE
        renewals = witness.renewals
        await trio.sleep(10 * CONFIG.lease_duration)
        assert witness.renewals - renewals >= 29  # one every D/3
        assert driver.view().role == "primary" and driver.step_downs == 0
        assert len(work) == 1 and driver.witness_failures == 0 == driver.witness_errors
        nursery.cancel_scope.cancel()
