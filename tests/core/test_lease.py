"""The coordinator lease: every rule by example, then a Hypothesis state machine.

The examples run over ``Net``, a perfect network (a message arrives at once, in the order sent,
unless one end is cut off), with every clock at true time. ``LeaseMachine`` runs three to five
voters and one to three candidates over an adversarial network that Hypothesis drives: it
delivers any message in flight in any order, drops and duplicates them, cuts links, lets true
time pass with the world paused or running (random latency and loss), ticks nodes, and crashes
and restarts them from what they persisted, possibly half-way through the actions of one event,
or with nothing at all (a lost disk, for fewer than a majority of the voters at a time).
Each node's clock runs at its own rate within the drift bound, and may change pace within it.
A few rules aim at the primary (cut it off, restart everyone else, skew the clocks against it):
without them the violations that each safety measure prevents are found too rarely.

After every event it checks: never two primaries with unexpired leases in true time, at most one
node primary per epoch, at most one candidate granted a vote per voter and term (while its disk
lasts), and terms that never go down on a node with a record. Switching off one of
``SafetyKnobs`` (``run_lease_machine(knobs)``, in a scratch run) makes it fail: each of
``persist_votes``, ``drift_margin`` and ``restart_wait``; ``amnesia_guard`` is not found here in
400 examples (it needs a partition to keep a candidate a term behind while its rival wins):
``tests/sim/test_teeth.py`` shows it.
Timings are short (a one-second lease) so that nothing here resembles production defaults.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from brio.core.lease import (
    ALL_ON,
    NO_RECORD,
    UNKNOWN_VOTE,
    Action,
    BecamePrimary,
    DigestMismatch,
    Lease,
    LeaseExtended,
    LeaseSettings,
    Message,
    Persist,
    Persisted,
    RenewReply,
    RenewRequest,
    Role,
    SafetyKnobs,
    Send,
    Status,
    SteppedDown,
    VoteReply,
    VoteRequest,
    voters_digest,
)

FOLLOWER, CANDIDATE, PRIMARY = Role.FOLLOWER, Role.CANDIDATE, Role.PRIMARY

D = 1.0  # lease duration
EPS = 0.1  # max clock drift
SETTINGS = LeaseSettings(lease_duration=D, election_timeout=(0.2, 0.5), max_clock_drift=EPS)
VOTERS = ("a", "b", "c")
DIGEST = voters_digest(VOTERS)
#: The record of a node that has never voted (a data dir set up before): the examples start
#: from it; ``persisted=None`` is a node without a record (a first start, or a lost data dir).
NEVER_VOTED = Persisted(0, None)


def make(
    node_id: str,
    *,
    now: float = 0.0,
    voters: Iterable[str] = VOTERS,
    peers: Iterable[str] = (),
    candidate: bool = True,
    lease_settings: LeaseSettings = SETTINGS,
    persisted: Persisted | None = NEVER_VOTED,
    knobs: SafetyKnobs = ALL_ON,
) -> Lease:
    return Lease(
        node_id,
        voters=voters,
        peers=peers,
        candidate=candidate,
        settings=lease_settings,
        now=now,
        rng=random.Random(node_id),
        persisted=persisted,
        knobs=knobs,
    )


def vote_request(term: int, candidate: str, *, pre_vote: bool = False, rnd: int = 1) -> VoteRequest:
    return VoteRequest(term, candidate, pre_vote, rnd, DIGEST)


def sends(actions: list[Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def only_reply(actions: list[Action]) -> VoteReply:
    [send] = sends(actions)
    assert isinstance(send.message, VoteReply)
    return send.message


class Net:
    """A perfect network over nodes that share one clock, true time; a message to a node that is
    not on it, or to or from a node that is cut off, is lost."""

    def __init__(self, *nodes: Lease) -> None:
        self.nodes = {n.node_id: n for n in nodes}
        self.cut: set[str] = set()  # nodes whose messages are lost, both ways
        self.disk: dict[str, Persisted] = {}
        self.log: list[tuple[str, Action]] = []

    def carry_out(self, node_id: str, now: float, actions: list[Action]) -> list[Action]:
        """Carry out one node's actions, and every reply they lead to; returns that node's."""
        start = len(self.log)
        queue = deque((node_id, a) for a in actions)
        while queue:
            src, action = queue.popleft()
            self.log.append((src, action))
            if isinstance(action, Persist):
                self.disk[src] = Persisted(action.term, action.voted_for)
            elif isinstance(action, Send) and action.to in self.nodes.keys() - self.cut:
                if src in self.cut:
                    continue
                replies = self.nodes[action.to].receive(now, src, action.message)
                queue.extend((action.to, a) for a in replies)
        return [a for src, a in self.log[start:] if src == node_id]

    def tick(self, node_id: str, now: float) -> list[Action]:
        return self.carry_out(node_id, now, self.nodes[node_id].tick(now))

    def run_until(self, end: float) -> float:
        """Tick every node at its deadline until ``end``; returns the time of the last tick."""
        now = -math.inf
        for _ in range(10_000):
            due = min(n.next_deadline() for n in self.nodes.values())
            if due > end:
                return now
            now = due
            for node_id in sorted(self.nodes):
                if self.nodes[node_id].next_deadline() <= now:
                    self.tick(node_id, now)
        raise AssertionError("the deadlines do not move on")

    def restart(self, node_id: str, now: float, *, wiped: bool = False) -> Lease:
        """Start ``node_id`` again from its disk (``wiped``: from nothing at all)."""
        old = self.nodes[node_id]
        if wiped:
            self.disk.pop(node_id, None)
        node = make(
            node_id,
            now=now,
            voters=old.voters,
            peers=old.peers,
            candidate=old.is_candidate,
            lease_settings=old.settings,
            persisted=None if wiped else self.disk.get(node_id, NEVER_VOTED),
            knobs=old.knobs,
        )
        self.nodes[node_id] = node
        return node

    def became_primary(self) -> list[tuple[str, BecamePrimary]]:
        return [(src, a) for src, a in self.log if isinstance(a, BecamePrimary)]

    def status(self, node_id: str) -> Status:
        return self.nodes[node_id].status()


def one_candidate(knobs: SafetyKnobs = ALL_ON) -> Net:
    """``a`` may campaign; ``b`` and ``c`` are workers that only vote."""
    return Net(
        make("a", knobs=knobs),
        make("b", candidate=False, knobs=knobs),
        make("c", candidate=False, knobs=knobs),
    )


def elect_a(net: Net) -> float:
    """Let ``a`` win epoch 1 at its first deadline; returns that time (the round's start)."""
    t0 = net.nodes["a"].next_deadline()
    assert t0 >= D  # a fresh node waits one lease before it votes, for itself too
    actions = net.tick("a", t0)
    assert actions[-1] == BecamePrimary(1, t0 + D * (1 - EPS))
    return t0


# -- election ------------------------------------------------------------------------------------


def test_three_voters_elect_exactly_one_primary_with_epoch_1() -> None:
    net = Net(make("a"), make("b"), make("c"))
    net.run_until(20 * D)
    [(winner, became)] = net.became_primary()
    assert became.epoch == 1
    assert not any(isinstance(a, SteppedDown) for _, a in net.log)
    for node_id, node in net.nodes.items():
        status = node.status()
        assert (status.epoch, status.primary, status.voter) == (1, winner, True)
        assert status.role == (PRIMARY if node_id == winner else FOLLOWER)
        assert status.lease_until is not None


def test_the_primary_lease_is_round_start_plus_the_lease_less_the_drift_margin() -> None:
    net = one_candidate()
    t0 = elect_a(net)
    status = net.status("a")
    assert (status.role, status.epoch, status.primary) == (PRIMARY, 1, "a")
    assert status.lease_until == net.nodes["a"].lease_until == t0 + D * (1 - EPS)
    # The voters promised a whole lease from when they voted (here: at once).
    assert net.status("b") == Status(FOLLOWER, 1, None, None, True)
    assert net.nodes["b"].voted_for == "a"


def test_without_the_drift_margin_the_lease_is_a_whole_lease_duration() -> None:
    net = one_candidate(SafetyKnobs(drift_margin=False))
    t0 = net.nodes["a"].next_deadline()
    assert net.tick("a", t0)[-1] == BecamePrimary(1, t0 + D)


def test_the_lease_starts_at_the_round_start_not_at_the_last_vote() -> None:
    a, b = make("a"), make("b", candidate=False)
    t0 = a.next_deadline()
    [pre, _] = sends(a.tick(t0))
    [election, _] = sends(
        a.receive(t0 + 0.1, "b", only_reply(b.receive(t0 + 0.05, "a", pre.message)))
    )
    assert isinstance(election.message, VoteRequest)
    reply = only_reply(b.receive(t0 + 0.15, "a", election.message))
    assert a.receive(t0 + 0.2, "b", reply) == [BecamePrimary(1, t0 + 0.1 + D * (1 - EPS))]


def test_votes_that_come_back_after_the_lease_they_grant_make_no_primary() -> None:
    a, b = make("a"), make("b", candidate=False)
    t0 = a.next_deadline()
    [pre, _] = sends(a.tick(t0))
    [election, _] = sends(a.receive(t0, "b", only_reply(b.receive(t0, "a", pre.message))))
    reply = only_reply(b.receive(t0, "a", election.message))
    actions = a.receive(t0 + D, "b", reply)
    assert not any(isinstance(x, BecamePrimary) for x in actions)
    # Still a candidate, with no lease: it campaigns again at its next election timeout.
    assert (a.status().role, a.status().primary, a.lease_until) == (CANDIDATE, None, None)
    assert a.next_deadline() > t0


def test_renewals_every_third_of_the_lease_extend_it() -> None:
    net = one_candidate()
    t0 = elect_a(net)
    a = net.nodes["a"]
    for k in range(1, 31):
        t = a.next_deadline()
        assert t == pytest.approx(t0 + k * D / 3)
        actions = net.tick("a", t)
        requests = [s for s in sends(actions) if isinstance(s.message, RenewRequest)]
        assert [s.to for s in requests] == ["b", "c"]
        assert actions[-1] == LeaseExtended(1, t + D * (1 - EPS))
        assert a.lease_until == t + D * (1 - EPS)
    assert [a for _, a in net.became_primary()] == [BecamePrimary(1, t0 + D * (1 - EPS))]
    # Followers name the primary and the promise they hold for it.
    t = a.next_deadline() - D / 3
    assert net.status("b") == Status(FOLLOWER, 1, "a", t + D, True)


def test_a_renewal_answered_late_extends_from_its_round_start() -> None:
    a, b = make("a"), make("b", candidate=False)
    t0 = a.next_deadline()
    [pre, _] = sends(a.tick(t0))
    [election, _] = sends(a.receive(t0, "b", only_reply(b.receive(t0, "a", pre.message))))
    a.receive(t0, "b", only_reply(b.receive(t0, "a", election.message)))
    t1 = a.next_deadline()
    [renew, _] = sends(a.tick(t1))
    [reply] = sends(b.receive(t1 + 0.2, "a", renew.message))
    assert reply.message == RenewReply(1, "b", True, renew.message.round, DIGEST)
    assert a.receive(t1 + 0.3, "b", reply.message) == [LeaseExtended(1, t1 + D * (1 - EPS))]
    # A duplicate changes nothing.
    assert a.receive(t1 + 0.3, "b", reply.message) == []


def primary_a_and_voter_b() -> tuple[Lease, Lease]:
    """``a`` primary of epoch 1 with ``b``'s vote (``c`` never answers), at its first round."""
    a, b = make("a"), make("b", candidate=False)
    t0 = a.next_deadline()
    [pre, _] = sends(a.tick(t0))
    [election, _] = sends(a.receive(t0, "b", only_reply(b.receive(t0, "a", pre.message))))
    a.receive(t0, "b", only_reply(b.receive(t0, "a", election.message)))
    assert a.role is PRIMARY
    return a, b


def renew_reply(actions: list[Action]) -> RenewReply:
    [send] = sends(actions)
    assert isinstance(send.message, RenewReply)
    return send.message


def test_an_answer_to_an_older_round_extends_the_lease_from_that_rounds_start() -> None:
    """The driver waits for a renewal's answer until its round's lease ends (not one renewal
    interval), so answers to a round come back after the next round started. Such an answer
    extends the lease from its own round's start (the voter promised at its answer time,
    after that start), and only when that ends later than the lease does now."""
    a, b = primary_a_and_voter_b()
    t1 = a.next_deadline()
    [r1, _] = sends(a.tick(t1))
    assert a.round_lease_end(r1.message.round) == t1 + D * (1 - EPS)
    t2 = a.next_deadline()
    assert t2 == pytest.approx(t1 + D / 3)
    [r2, _] = sends(a.tick(t2))
    # b answers round 1 after round 2 left: counted, from round 1's start
    late = renew_reply(b.receive(t2 + 0.1, "a", r1.message))
    assert a.receive(t2 + 0.2, "b", late) == [LeaseExtended(1, t1 + D * (1 - EPS))]
    assert a.lease_until == t1 + D * (1 - EPS)
    # round 2's answer moves it on; a later answer to round 1 (from a voter that was slower)
    # would end earlier and changes nothing
    on_time = renew_reply(b.receive(t2 + 0.25, "a", r2.message))
    assert a.receive(t2 + 0.3, "b", on_time) == [LeaseExtended(1, t2 + D * (1 - EPS))]
    c = make("c", candidate=False)
    c.receive(t2 + 0.3, "a", VoteRequest(1, "a", False, 1, DIGEST))  # c voted for a as well
    slow = renew_reply(c.receive(t2 + 0.35, "a", r1.message))
    assert a.receive(t2 + 0.4, "c", slow) == []
    assert a.lease_until == t2 + D * (1 - EPS)


def test_an_answer_that_comes_back_after_its_rounds_lease_extends_nothing() -> None:
    """A primary whose loop stalled past its lease without a tick: a round's answer that it
    takes in after the lease that round would grant has ended does not extend the lease into
    the past (nor restart the primary's work for it); the next tick steps down."""
    a, b = primary_a_and_voter_b()
    t1 = a.next_deadline()
    [r1, _] = sends(a.tick(t1))
    reply = renew_reply(b.receive(t1 + 0.1, "a", r1.message))
    end = t1 + D * (1 - EPS)
    assert a.receive(end, "b", reply) == []
    assert a.tick(end) == [SteppedDown(1, "lease expired: a majority did not answer in time")]
    assert a.round_lease_end(r1.message.round) is None  # not primary: no answer counts


def test_a_primary_whose_voters_stop_answering_steps_down_at_lease_end() -> None:
    net = one_candidate()
    t0 = elect_a(net)
    net.cut = {"b", "c"}
    a = net.nodes["a"]
    renewals = []
    for _ in range(5):  # bounded: a primary that ticks at its lease end and stays would loop
        t = a.next_deadline()
        actions = net.tick("a", t)
        renewals.append(t)
        if a.role is not PRIMARY:
            break
    assert renewals == pytest.approx([t0 + D / 3, t0 + 2 * D / 3, t0 + D * (1 - EPS)])
    assert actions == [SteppedDown(1, "lease expired: a majority did not answer in time")]
    assert a.status() == Status(FOLLOWER, 1, None, None, True)
    assert a.next_deadline() > t0 + D * (1 - EPS)


# -- votes ---------------------------------------------------------------------------------------


def test_a_granted_vote_is_persisted_before_the_reply_is_sent() -> None:
    b = make("b", candidate=False)
    actions = b.receive(2.0, "a", vote_request(1, "a", rnd=7))
    reply = Send("a", VoteReply(1, "b", True, False, 7, DIGEST))
    assert reply in actions
    assert Persist(1, "a") in actions
    assert actions.index(Persist(1, "a")) < actions.index(reply)
    assert [a for a in actions if isinstance(a, Persist)][-1] == Persist(1, "a")
    assert b.persisted() == Persisted(1, "a")


def test_a_candidate_persists_its_own_vote_before_asking_for_others() -> None:
    a, b = make("a"), make("b", candidate=False)
    t0 = a.next_deadline()
    [pre, _] = sends(a.tick(t0))
    actions = a.receive(t0, "b", only_reply(b.receive(t0, "a", pre.message)))
    assert actions == [
        Persist(1, "a"),
        Send("b", vote_request(1, "a", rnd=2)),
        Send("c", vote_request(1, "a", rnd=2)),
    ]


def test_a_voter_never_grants_two_candidates_in_one_term() -> None:
    b = make("b", candidate=False)
    assert only_reply(b.receive(2.0, "a", vote_request(1, "a"))).granted
    # Even once the promise has run out, the vote in term 1 stands.
    refusal = only_reply(b.receive(2.0 + 2 * D, "c", vote_request(1, "c")))
    assert (refusal.granted, refusal.term, refusal.reason) == (False, 1, "voted for a")
    # The same candidate may ask again (a lost reply): granted again, nothing new persisted.
    again = b.receive(2.0 + 2 * D, "a", vote_request(1, "a"))
    assert [a for a in again if isinstance(a, Persist)] == []
    assert only_reply(again).granted


def test_a_restarted_voter_remembers_its_vote() -> None:
    net = Net(make("b", candidate=False))
    net.carry_out("b", 2.0, net.nodes["b"].receive(2.0, "a", vote_request(1, "a")))
    assert net.disk["b"] == Persisted(1, "a")
    b = net.restart("b", 3.0)
    assert (b.term, b.voted_for) == (1, "a")
    refusal = only_reply(b.receive(3.0 + D, "c", vote_request(1, "c")))
    assert (refusal.granted, refusal.reason) == (False, "voted for a")


def test_without_persisted_votes_a_restarted_voter_votes_twice() -> None:
    net = Net(make("b", candidate=False, knobs=SafetyKnobs(persist_votes=False)))
    actions = net.nodes["b"].receive(2.0, "a", vote_request(1, "a"))
    assert not any(isinstance(a, Persist) for a in actions)
    assert only_reply(actions).granted
    net.carry_out("b", 2.0, actions)
    assert "b" not in net.disk
    b = net.restart("b", 3.0)
    assert (b.term, b.voted_for) == (0, None)
    assert only_reply(b.receive(3.0 + D, "c", vote_request(1, "c"))).granted


def test_a_restarted_voter_waits_one_lease_before_voting() -> None:
    b = make("b", candidate=False, now=5.0, persisted=Persisted(3, None))
    for request in (vote_request(4, "a"), vote_request(4, "a", pre_vote=True)):
        refusal = only_reply(b.receive(5.0 + D - 0.01, "a", request))
        assert (refusal.granted, refusal.term, refusal.pre_vote) == (False, 3, request.pre_vote)
        assert refusal.reason == "restarted: waiting one lease before voting"
    assert (b.term, b.voted_for) == (3, None)  # refused without adopting the term
    assert only_reply(b.receive(5.0 + D, "a", vote_request(4, "a"))).granted


def test_a_restarted_candidate_waits_one_lease_before_campaigning() -> None:
    a = make("a", now=5.0)
    assert a.next_deadline() >= 5.0 + D + SETTINGS.election_timeout[0]
    assert a.tick(5.0 + D) == []


def test_without_the_restart_wait_a_restarted_voter_votes_at_once() -> None:
    b = make("b", candidate=False, now=5.0, knobs=SafetyKnobs(restart_wait=False))
    assert only_reply(b.receive(5.0, "a", vote_request(1, "a"))).granted
    a = make("a", now=5.0, knobs=SafetyKnobs(restart_wait=False))
    assert a.next_deadline() <= 5.0 + SETTINGS.election_timeout[1]


def test_a_promise_refuses_other_candidates_without_adopting_their_term() -> None:
    b = make("b", candidate=False)
    assert only_reply(b.receive(2.0, "a", vote_request(1, "a"))).granted
    for request in (vote_request(5, "c"), vote_request(5, "c", pre_vote=True)):
        actions = b.receive(2.0 + D - 0.01, "c", request)
        assert not any(isinstance(a, Persist) for a in actions)
        refusal = only_reply(actions)
        assert (refusal.granted, refusal.term, refusal.reason) == (False, 1, "promised to a")
    assert (b.term, b.voted_for) == (1, "a")
    # The promise runs out by the voter's own clock, one lease after the vote.
    assert only_reply(b.receive(2.0 + D, "c", vote_request(5, "c"))).granted
    assert (b.term, b.voted_for) == (5, "c")


def test_a_renewal_renews_the_promise() -> None:
    b = make("b", candidate=False)
    b.receive(2.0, "a", vote_request(1, "a"))
    [ok] = sends(b.receive(2.5, "a", RenewRequest(1, "a", 2, DIGEST)))
    assert ok.message == RenewReply(1, "b", True, 2, DIGEST)
    assert b.status() == Status(FOLLOWER, 1, "a", 2.5 + D, True)
    refusal = only_reply(b.receive(2.0 + D, "c", vote_request(2, "c")))
    assert refusal.reason == "promised to a"
    assert only_reply(b.receive(2.5 + D, "c", vote_request(2, "c"))).granted


def test_a_stale_renewal_is_refused_with_our_term() -> None:
    b = make("b", candidate=False, persisted=Persisted(4, None))
    [no] = sends(b.receive(2.0, "a", RenewRequest(3, "a", 9, DIGEST)))
    assert no.message == RenewReply(4, "b", False, 9, DIGEST, "term is stale")
    assert b.status() == Status(FOLLOWER, 4, None, None, True)


def test_a_stale_vote_request_is_refused() -> None:
    b = make("b", candidate=False, persisted=Persisted(4, None))
    refusal = only_reply(b.receive(2.0, "a", vote_request(3, "a")))
    assert (refusal.granted, refusal.term, refusal.reason) == (False, 4, "term is stale")
    refusal = only_reply(b.receive(2.0, "a", vote_request(4, "a", pre_vote=True)))
    assert (refusal.granted, refusal.term, refusal.reason) == (False, 4, "term is stale")


def test_a_candidate_that_hears_a_newer_term_gives_up() -> None:
    a = make("a")
    t0 = a.next_deadline()
    a.tick(t0)
    assert a.role is CANDIDATE
    refusal = VoteReply(6, "b", False, True, 1, DIGEST, "term is stale")
    assert a.receive(t0, "b", refusal) == [Persist(6, None)]
    assert a.status() == Status(FOLLOWER, 6, None, None, True)


def test_pre_vote_bumps_no_term() -> None:
    net = Net(make("a"), make("b", candidate=False), make("c", candidate=False))
    net.cut = {"c"}
    a, b = net.nodes["a"], net.nodes["b"]
    t0 = a.next_deadline()
    b_pre = b.receive(t0, "a", vote_request(1, "a", pre_vote=True))
    assert b_pre == [Send("a", VoteReply(0, "b", True, True, 1, DIGEST))]
    assert (b.term, b.voted_for) == (0, None)
    # A pre-vote round that fails moves no term either: b restarted (it refuses), c is cut off.
    b = net.restart("b", t0)
    actions = net.tick("a", t0)
    assert a.role is CANDIDATE
    assert [type(x) for x in actions] == [Send, Send]
    assert (a.term, b.term, net.nodes["c"].term) == (0, 0, 0)
    assert net.disk == {}


def test_a_pre_vote_majority_starts_the_real_election() -> None:
    a, b = make("a"), make("b", candidate=False)
    t0 = a.next_deadline()
    pre = a.tick(t0)
    assert pre == [
        Send("b", vote_request(1, "a", pre_vote=True, rnd=1)),
        Send("c", vote_request(1, "a", pre_vote=True, rnd=1)),
    ]
    assert (a.term, a.role) == (0, CANDIDATE)
    actions = a.receive(
        t0, "b", only_reply(b.receive(t0, "a", vote_request(1, "a", pre_vote=True)))
    )
    assert actions == [
        Persist(1, "a"),
        Send("b", vote_request(1, "a", rnd=2)),
        Send("c", vote_request(1, "a", rnd=2)),
    ]
    # A pre-vote answer from an earlier round counts for nothing.
    late = VoteReply(1, "c", True, False, 1, DIGEST)
    assert a.receive(t0, "c", late) == []
    assert a.role is CANDIDATE


def test_a_single_voter_elects_itself() -> None:
    a = make("a", voters=["a"])
    t0 = a.next_deadline()
    assert a.tick(t0) == [Persist(1, "a"), BecamePrimary(1, t0 + D * (1 - EPS))]
    assert a.tick(t0 + D / 3) == [LeaseExtended(1, t0 + D / 3 + D * (1 - EPS))]


# -- the promise of a vote granted while campaigning -----------------------------------------------

FIVE = ("a", "b", "c", "d", "e")


def test_a_candidate_that_votes_for_another_does_not_then_vote_for_itself() -> None:
    """Five voters restart from what an earlier history left on their disks: ``d`` campaigned for
    term 2 and lost (its requests were lost), and ``b``, asking ``d`` for a pre-vote, learnt of
    term 2 from the refusal; ``a``, ``c`` and ``e`` are still at term 1.

    ``b`` asks for pre-votes for term 3 and counts its own. ``a`` wins term 2 with the votes of
    ``a``, ``b`` and ``c``: ``b``'s vote promises ``a`` a whole lease. Then ``d`` and ``e``, which
    promised nobody, grant ``b``'s pre-votes and real votes for term 3: with a vote of its own
    ``b`` would be a second primary while ``a``'s lease runs.
    """
    disks = {"a": (1, None), "b": (2, None), "c": (1, None), "d": (2, "d"), "e": (1, None)}
    nodes = {
        n: make(n, voters=FIVE, candidate=n in "ab", persisted=Persisted(*disk))
        for n, disk in disks.items()
    }
    a, b = nodes["a"], nodes["b"]
    t = 10.0  # past everyone's restart wait

    def ask(candidate: str, voter: str, request: Message) -> list[Action]:
        reply = only_reply(nodes[voter].receive(t, candidate, request))
        return nodes[candidate].receive(t, voter, reply)

    b_pre = {s.to: s.message for s in sends(b.tick(t))}
    assert b_pre["e"] == VoteRequest(3, "b", True, 1, voters_digest(FIVE))
    a_pre = {s.to: s.message for s in sends(a.tick(t))}
    ask("a", "c", a_pre["c"])
    a_election = {s.to: s.message for s in sends(ask("a", "e", a_pre["e"]))}
    assert a_election["b"] == VoteRequest(2, "a", False, 2, voters_digest(FIVE))
    ask("a", "b", a_election["b"])
    assert ask("a", "c", a_election["c"]) == [BecamePrimary(2, t + D * (1 - EPS))]
    assert b.voted_for == "a"
    ask("b", "d", b_pre["d"])
    b_election = ask("b", "e", b_pre["e"])
    for send in sends(b_election):
        if send.to in "de":
            ask("b", send.to, send.message)
    assert a.role is PRIMARY
    assert a.lease_until == t + D * (1 - EPS)
    assert b.role is not PRIMARY, (
        f"two primaries at {t}: a in epoch {a.term} and b in epoch {b.term}; b broke the "
        f"promise its vote gave a: {b_election}"
    )
    assert [n.status().role for n in nodes.values()].count(PRIMARY) == 1


def test_a_voter_that_grants_a_vote_waits_for_its_promise_before_campaigning() -> None:
    b = make("b")
    actions = b.receive(2.0, "a", vote_request(1, "a"))
    assert only_reply(actions).granted
    assert b.next_deadline() >= 2.0 + D


# -- a lost vote record (issue 11, item 7) -------------------------------------------------------


def granted_votes(net: Net) -> list[tuple[str, int, str]]:
    """(voter, term, candidate) of every real vote granted, in order."""
    return [
        (src, a.message.term, a.to)
        for src, a in net.log
        if isinstance(a, Send)
        and isinstance(a.message, VoteReply)
        and a.message.granted
        and not a.message.pre_vote
    ]


def lose_b_after_it_elected_a(knobs: SafetyKnobs = ALL_ON) -> tuple[Net, float, int]:
    """``b`` votes ``a`` primary of epoch 1 while ``c`` is cut off (and stays at term 0), then
    loses its data dir and restarts with nothing, and ``a`` goes away. Returns the net, when
    ``a`` won, and where ``b``'s new life starts in the log."""
    net = Net(
        make("a", knobs=knobs), make("b", candidate=False, knobs=knobs), make("c", knobs=knobs)
    )
    net.cut = {"c"}
    t0 = net.run_until(net.nodes["a"].next_deadline())
    assert [(n, p.epoch) for n, p in net.became_primary()] == [("a", 1)]
    assert net.disk["b"] == Persisted(1, "a")
    net.restart("b", t0 + 0.1, wiped=True)  # lease-state.json is gone
    net.cut = {"a"}
    return net, t0, len(net.log)


def test_a_voter_that_lost_its_vote_record_does_not_elect_a_second_primary_in_a_term() -> None:
    """The issue's finding: before the fix, ``b`` granted ``c`` term 1 once its restart wait was
    over, and ``a`` and ``c`` were both primary for epoch 1."""
    net, t0, wiped = lose_b_after_it_elected_a()
    net.run_until(t0 + 20 * D)
    votes, epochs = granted_votes(net), [(n, p.epoch) for n, p in net.became_primary()]
    assert ("b", 1, "c") not in votes, f"b voted twice in term 1: {votes}; primaries {epochs}"
    # Without a, b cannot hear from a record of every other voter: it takes no part, so that
    # nobody can be elected (c and b alone might be re-electing epoch 1).
    assert epochs == [("a", 1)]
    b = net.nodes["b"]
    assert b.amnesiac and (b.term, b.voted_for) == (0, None) and "b" not in net.disk
    refusal = only_reply(b.receive(t0 + 20 * D, "c", vote_request(1, "c")))
    assert (refusal.granted, refusal.term, refusal.reason) == (False, 0, NO_RECORD)
    assert b.term == 0  # the refusal adopted nothing
    # a comes back: b hears term 1 from a record of a majority without it, takes term 1 with
    # its vote in it unknown, and votes only in later terms. The next primary has epoch 2.
    net.cut = set()
    net.run_until(t0 + 40 * D)
    assert not b.amnesiac
    assert net.disk["b"].term >= 1
    b_wrote = [a for src, a in net.log[wiped:] if src == "b" and isinstance(a, Persist)]
    assert b_wrote[0] == Persist(1, UNKNOWN_VOTE)
    epochs = [(n, p.epoch) for n, p in net.became_primary()]
    assert epochs[0] == ("a", 1) and [e for _, e in epochs[1:]] == list(range(2, len(epochs) + 1))
    assert all(term > 1 for voter, term, _ in granted_votes(net)[1:] if voter == "b")


def test_without_the_amnesia_guard_a_wiped_voter_votes_twice_in_a_term() -> None:
    net, t0, _ = lose_b_after_it_elected_a(SafetyKnobs(amnesia_guard=False))
    net.run_until(t0 + 20 * D)
    assert ("b", 1, "c") in granted_votes(net)
    assert [(n, p.epoch) for n, p in net.became_primary()] == [("a", 1), ("c", 1)]


def test_a_node_without_a_record_needs_records_from_a_majority_without_it() -> None:
    five = ("a", "b", "c", "d", "e")
    digest = voters_digest(five)
    v = make("a", voters=five, candidate=False, persisted=None, now=0.0)
    assert v.records_needed == 3 and v.amnesiac
    assert v.next_deadline() == D  # the restart wait first, then the question
    assert v.tick(D - 0.01) == []
    query = sends(v.tick(D))
    assert [s.to for s in query] == ["b", "c", "d", "e"]
    assert {s.message for s in query} == {VoteRequest(1, "a", True, 1, digest)}

    def answer(voter: str, term: int, reason: str = "term is stale") -> list[Action]:
        return v.receive(D + 0.01, voter, VoteReply(term, voter, False, True, 1, digest, reason))

    assert answer("b", 4) == []
    assert answer("c", 2, NO_RECORD) == []  # another node without a record: its term only
    assert answer("d", 3) == []
    assert v.amnesiac and v.term == 4  # terms are adopted as always, but not written
    # A third record: the highest term heard, with the vote in it unknown.
    assert answer("e", 1) == [Persist(4, UNKNOWN_VOTE)]
    assert not v.amnesiac
    refusal = only_reply(v.receive(D + 0.02, "b", VoteRequest(4, "b", False, 1, digest)))
    assert refusal.reason == f"voted for {UNKNOWN_VOTE}"
    assert only_reply(v.receive(D + 0.02, "b", VoteRequest(5, "b", False, 1, digest))).granted


def test_answers_to_a_question_asked_during_the_restart_wait_do_not_count() -> None:
    v = make("a", candidate=False, persisted=None)
    assert v.receive(D, "b", VoteReply(0, "b", True, True, 0, DIGEST)) == []
    assert v.receive(D, "c", VoteReply(0, "c", True, True, 0, DIGEST)) == []
    assert v.amnesiac


def test_a_first_start_learns_term_0_when_everyone_answers() -> None:
    """A new cluster: nobody has a record. Once enough have answered and every term is 0,
    nobody can have voted: they take part as usual (elections from term 1)."""
    net = Net(*(make(n, persisted=None) for n in VOTERS))
    net.run_until(20 * D)
    assert not any(n.amnesiac for n in net.nodes.values())
    [(_, became)] = net.became_primary()
    assert became.epoch == 1
    assert all(p.term >= 1 for p in net.disk.values())
    # One node short of that, with 3 voters: a node that cannot hear every other one waits.
    net = Net(*(make(n, persisted=None) for n in VOTERS))
    net.cut = {"c"}
    net.run_until(20 * D)
    assert net.became_primary() == []
    assert all(n.amnesiac for n in net.nodes.values())


def test_a_wiped_primary_learns_its_epoch_and_campaigns_past_it() -> None:
    net = one_candidate()
    t0 = elect_a(net)
    a = net.restart("a", t0 + 0.1, wiped=True)
    assert a.amnesiac and a.term == 0
    assert not any(isinstance(x, Send) for x in a.tick(t0 + 0.5))  # no campaign, no question
    net.run_until(t0 + 20 * D)
    became = [p.epoch for _, p in net.became_primary()]
    assert became[0] == 1 and became[1:] and min(became[1:]) >= 2


def test_a_lone_voter_without_a_record_has_nobody_to_ask() -> None:
    a = make("a", voters=["a"], persisted=None)
    assert a.tick(D) == [Persist(0, None)]  # after the restart wait
    assert not a.amnesiac
    t = a.next_deadline()
    assert a.tick(t) == [Persist(1, "a"), BecamePrimary(1, t + D * (1 - EPS))]


# -- voter sets ----------------------------------------------------------------------------------


def test_a_mismatched_voter_set_is_refused_loudly() -> None:
    b = make("b", candidate=False, persisted=Persisted(2, None))
    theirs = voters_digest(["a", "b", "c", "d"])
    request = VoteRequest(3, "d", False, 4, theirs)
    assert b.receive(2.0, "d", request) == [
        DigestMismatch("d", theirs, DIGEST),
        Send("d", VoteReply(2, "b", False, False, 4, DIGEST, "voter sets differ")),
    ]
    pre = VoteRequest(3, "d", True, 5, theirs)
    assert b.receive(2.0, "d", pre)[1] == Send(
        "d", VoteReply(2, "b", False, True, 5, DIGEST, "voter sets differ")
    )
    renew = RenewRequest(3, "d", 6, theirs)
    assert b.receive(2.0, "d", renew) == [
        DigestMismatch("d", theirs, DIGEST),
        Send("d", RenewReply(2, "b", False, 6, DIGEST, "voter sets differ")),
    ]
    for reply in (
        VoteReply(9, "d", True, False, 1, theirs),
        RenewReply(9, "d", True, 1, theirs),
    ):
        assert b.receive(2.0, "d", reply) == [DigestMismatch("d", theirs, DIGEST)]
    assert (b.term, b.voted_for, b.status().primary) == (2, None, None)


def test_two_clusters_with_different_voter_sets_do_not_elect_across() -> None:
    a = make("a", voters=["a", "b", "c", "d"])
    b = make("b", candidate=False)
    t0 = a.next_deadline()
    actions = a.tick(t0)
    to_b = next(s for s in sends(actions) if s.to == "b")
    replies = b.receive(t0, "a", to_b.message)
    assert isinstance(replies[0], DigestMismatch)
    assert a.receive(t0, "b", only_reply(replies)) == [
        DigestMismatch("b", DIGEST, voters_digest(["a", "b", "c", "d"]))
    ]
    assert a.role is CANDIDATE


def test_voters_digest_is_order_independent() -> None:
    assert voters_digest(["a", "b", "c"]) == voters_digest(("c", "a", "b"))
    assert voters_digest(["a", "b", "c"]) == voters_digest(["b", "c", "a", "b"])
    assert voters_digest({"c", "b", "a"}) == DIGEST
    assert voters_digest(["a", "b"]) != DIGEST
    assert voters_digest(["a", "b", "cd"]) != voters_digest(["a", "bc", "d"])
    assert len(DIGEST) == 16
    assert make("a", voters=["c", "b", "a"]).digest == make("b").digest == DIGEST


# -- holds ---------------------------------------------------------------------------------------


def test_a_hold_steps_a_primary_down_and_it_campaigns_again_only_once_lifted() -> None:
    net = one_candidate()
    t0 = elect_a(net)
    a = net.nodes["a"]
    reason = "a peer reports another voter set"
    held = a.hold(t0 + 0.1, reason)
    assert held == [SteppedDown(1, f"held: {reason}")]
    assert (a.role, a.held, a.status().primary) == (FOLLOWER, reason, None)
    # Held, it sends nothing however long it waits: no renewal, no pre-vote.
    end = t0 + 20 * D
    net.run_until(end)
    assert [x for _, x in net.became_primary()] == [BecamePrimary(1, t0 + D * (1 - EPS))]
    assert not sends(net.carry_out("a", end, a.tick(end)))
    # Lifting acts on nothing itself; the next election timeout campaigns again.
    assert a.hold(end, None) == []
    assert a.held is None and a.role is FOLLOWER
    net.run_until(end + 5 * D)
    assert [x.epoch for _, x in net.became_primary()] == [1, 2]
    assert a.role is PRIMARY


def test_a_hold_ends_a_campaign_so_the_answers_it_gets_elect_nobody() -> None:
    a, b = make("a"), make("b", candidate=False)
    t0 = a.next_deadline()
    [pre, _] = sends(a.tick(t0))
    pre_reply = only_reply(b.receive(t0, "a", pre.message))
    assert a.hold(t0, "held in the pre-vote") == []
    assert a.role is FOLLOWER
    assert a.receive(t0, "b", pre_reply) == []  # no election begins
    # Held once the election has begun: the vote it then gets makes no primary.
    a.hold(t0, None)
    t1 = a.next_deadline()
    [pre, _] = sends(a.tick(t1))
    [election, _] = sends(a.receive(t1, "b", only_reply(b.receive(t1, "a", pre.message))))
    vote = only_reply(b.receive(t1, "a", election.message))
    assert vote.granted
    assert a.hold(t1, "held in the election") == []
    assert (a.role, a.receive(t1, "b", vote)) == (FOLLOWER, [])
    assert a.status().primary is None and a.lease_until is None


def test_lifting_a_hold_that_was_never_set_leaves_a_primary_primary() -> None:
    net = one_candidate()
    t0 = elect_a(net)
    a = net.nodes["a"]
    assert a.hold(t0 + 0.1, None) == []
    assert (a.role, a.status().primary) == (PRIMARY, "a")
    t = a.next_deadline()
    assert net.tick("a", t)[-1] == LeaseExtended(1, t + D * (1 - EPS))


# -- who campaigns -------------------------------------------------------------------------------


def test_a_coordinator_that_is_not_a_voter_becomes_primary_with_the_voters_votes() -> None:
    x = make("x", peers=["y"])
    workers = [make(n, candidate=False, peers=["x", "y"]) for n in VOTERS]
    y = make("y", peers=["x"], now=100.0)  # a standby that starts late: it only listens
    net = Net(x, y, *workers)
    assert x.peers == frozenset({"a", "b", "c", "y"})
    t0 = x.next_deadline()
    actions = net.tick("x", t0)
    assert [p for p in actions if isinstance(p, Persist)] == [Persist(1, None)]  # no own vote
    assert actions[-1] == BecamePrimary(1, t0 + D * (1 - EPS))
    assert x.status() == Status(PRIMARY, 1, "x", t0 + D * (1 - EPS), False)
    t1 = x.next_deadline()
    renewals = sends(net.tick("x", t1))
    assert [s.to for s in renewals] == ["a", "b", "c", "y"]  # the standby hears them too
    assert y.status() == Status(FOLLOWER, 1, "x", None, False)
    assert y.next_deadline() > t1 + D
    # A non-voter refuses to vote, and its refusal does not count.
    refusal = only_reply(y.receive(t1, "x", vote_request(2, "x")))
    assert (refusal.granted, refusal.reason) == (False, "not a voter")
    net.run_until(t1 + 10 * D)
    assert [a for _, a in net.became_primary()] == [BecamePrimary(1, t0 + D * (1 - EPS))]


def test_a_worker_never_campaigns() -> None:
    b = make("b", candidate=False)
    assert b.next_deadline() == math.inf
    assert b.tick(1000.0) == []
    assert b.status() == Status(FOLLOWER, 0, None, None, True)
    net = Net(*(make(n, candidate=False) for n in VOTERS))
    net.run_until(1000.0)
    assert net.log == []


# -- the fence and the clock ---------------------------------------------------------------------


def test_a_lost_fence_steps_the_primary_down_and_adopts_the_fence_epoch() -> None:
    net = one_candidate()
    t0 = elect_a(net)
    a = net.nodes["a"]
    assert a.lost_fence(t0 + 0.1, 4) == [
        Persist(4, None),
        SteppedDown(1, "the fence refused epoch 1 (it holds 4)"),
    ]
    assert a.status() == Status(FOLLOWER, 4, None, None, True)
    assert a.persisted() == Persisted(4, None)
    assert a.lost_fence(t0 + 0.2, 9) == []  # not primary: nothing to stop
    assert a.term == 4


def test_a_lost_fence_at_our_own_epoch_steps_down_without_a_new_term() -> None:
    net = one_candidate()
    t0 = elect_a(net)
    a = net.nodes["a"]
    assert a.lost_fence(t0, 1) == [SteppedDown(1, "the fence refused epoch 1 (it holds 1)")]
    assert a.term == 1


def test_time_passed_backwards_is_taken_as_the_latest_seen() -> None:
    b = make("b", candidate=False)
    assert b.tick(2.0) == []
    # 0.5 is inside the restart wait, but 2.0 has been seen already.
    assert only_reply(b.receive(0.5, "a", vote_request(1, "a"))).granted
    # The promise runs from 2.0, not from 0.5.
    assert only_reply(b.receive(0.5 + D, "c", vote_request(2, "c"))).reason == "promised to a"
    assert only_reply(b.receive(2.0 + D, "c", vote_request(2, "c"))).granted

    net = one_candidate()
    t0 = elect_a(net)
    a = net.nodes["a"]
    net.tick("a", t0 + 5 * D)  # the lease ran out
    assert a.role is FOLLOWER
    assert a.tick(t0) == []  # an earlier time does not bring it back


def test_settings_derive_the_renew_interval() -> None:
    assert LeaseSettings(3.0, (1.0, 1.0), 0.0).renew_interval == 1.0


@pytest.mark.parametrize(
    ("duration", "timeout", "drift", "field"),
    [
        (0.0, (1.0, 2.0), 0.1, "lease_duration"),
        (-1.0, (1.0, 2.0), 0.1, "lease_duration"),
        (math.nan, (1.0, 2.0), 0.1, "lease_duration"),
        (1.0, (0.0, 2.0), 0.1, "election_timeout"),
        (1.0, (2.0, 1.0), 0.1, "election_timeout"),
        (1.0, (-1.0, 1.0), 0.1, "election_timeout"),
        (1.0, (1.0, 2.0), -0.01, "max_clock_drift"),
        (1.0, (1.0, 2.0), 0.5, "max_clock_drift"),
        (1.0, (1.0, 2.0), math.nan, "max_clock_drift"),
    ],
)
def test_settings_are_checked(
    duration: float, timeout: tuple[float, float], drift: float, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        LeaseSettings(duration, timeout, drift)


def test_an_empty_voter_set_is_refused() -> None:
    with pytest.raises(ValueError, match="voter set is empty"):
        make("a", voters=[])


# -- the state machine ---------------------------------------------------------------------------

VOTER_IDS = ("v1", "v2", "v3", "v4", "v5")
STANDBY_IDS = ("s1", "s2")
OFFSETS = (0.0, 7.25, 1000.0)  # clocks need not agree on what time it is, only on its pace
TOLERANCE = 1e-9  # true seconds by which two leases may overlap through rounding alone
# Steps of true time: the lease, its thirds and the timeouts, and anything else below two leases.
DT = st.one_of(
    st.sampled_from((0.01, 0.1, D / 3, D / 2, D * 0.9, D, 2 * D)),
    st.floats(0.0, 2 * D),
)
LATENCY = st.sampled_from((0.0, 0.0, 0.05, 0.1, 0.3))  # the most a message takes
LOSS = st.sampled_from((0.0, 0.0, 0.2))
# Rules name nodes and messages in flight by number, modulo how many there are.
NODE = st.integers(0, len(VOTER_IDS) + len(STANDBY_IDS) - 1)
MESSAGE = st.integers(0, 63)
# Mostly the receiver carries out everything.
CRASH_AFTER = st.sampled_from((None, None, None, None, None, 0, 1, 2, 3))


@dataclass
class Clock:
    """A node's clock: at true time ``since`` it read ``reading``, and it runs at ``rate``
    since then (a rate may change, as NTP slews a clock, but stays within the bound)."""

    rate: float
    since: float = 0.0
    reading: float = 0.0

    def local(self, true_time: float) -> float:
        return self.reading + self.rate * (true_time - self.since)

    def true(self, local_time: float) -> float:
        """When the clock reads ``local_time`` (an earlier reading: some time before now)."""
        return self.since + (local_time - self.reading) / self.rate

    def set_rate(self, now: float, rate: float) -> None:
        self.reading, self.since, self.rate = self.local(now), now, rate


@dataclass(frozen=True)
class Flight:
    src: str
    dst: str
    message: Message
    due: float  # true time it arrives when the network runs on its own (see ``run``)


class LeaseMachine(RuleBasedStateMachine):
    knobs: SafetyKnobs = ALL_ON  # a scratch run may switch one off to see the violation found

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0  # true time
        self.settings = SETTINGS
        self.voters: tuple[str, ...] = ()
        self.candidates: frozenset[str] = frozenset()
        self.clocks: dict[str, Clock] = {}
        self.nodes: dict[str, Lease] = {}
        self.disk: dict[str, Persisted | None] = {}
        self.in_flight: list[Flight] = []
        self.down: set[frozenset[str]] = set()  # links that lose every message
        self.delta = 0.0  # clock rates stay within [1 - delta, 1 + delta]
        self.latency = 0.0  # the most a message takes when the network runs on its own
        self.net = random.Random(0)  # which latency each message gets, and which are lost
        # What happened, across restarts.
        self.primary_of: dict[int, str] = {}  # epoch -> the node that became primary in it
        # (voter, disk, term) -> candidates granted; ``disk`` counts the voter's lost disks.
        self.votes: dict[tuple[str, int, int], set[str]] = {}
        self.disks: dict[str, int] = {}
        self.highest_term: dict[str, int] = {}

    @initialize(
        n_voters=st.integers(3, 5),
        drift=st.sampled_from((0.05, 0.25, 0.4)),
        timeout=st.sampled_from(((0.1, 0.4), (0.02, 0.1))),
        net_seed=st.integers(0, 2**16),
        data=st.data(),
    )
    def setup(
        self,
        n_voters: int,
        drift: float,
        timeout: tuple[float, float],
        net_seed: int,
        data: st.DataObject,
    ) -> None:
        self.settings = LeaseSettings(D, timeout, drift)
        self.net = random.Random(net_seed)
        self.voters = VOTER_IDS[:n_voters]
        n_candidates = data.draw(st.integers(1, 3), label="how many candidates")
        candidates = data.draw(
            st.lists(
                st.sampled_from((*self.voters, *STANDBY_IDS)),
                min_size=n_candidates,
                max_size=n_candidates,
                unique=True,
            ),
            label="candidates",
        )
        self.candidates = frozenset(candidates)
        # Rates within [1 - δ, 1 + δ] with δ = ε / (2 - ε): the fastest clock runs at most
        # 1 / (1 - ε) times as fast as the slowest, the bound the drift margin allows for.
        delta = self.delta = drift / (2 - drift)
        rates = st.sampled_from((1 - delta, 1 + delta)) | st.floats(1 - delta, 1 + delta)
        for node_id in sorted({*self.voters, *self.candidates}):
            rate = data.draw(rates, label=f"rate of {node_id}")
            offset = data.draw(st.sampled_from(OFFSETS), label=f"offset of {node_id}")
            self.clocks[node_id] = Clock(rate, reading=offset)
            # Every start is a restart: some nodes come back from earlier terms.
            term = data.draw(st.integers(0, 2), label=f"term of {node_id}")
            self.disk[node_id] = Persisted(term, None)
            # Started a while ago and heard nothing yet: its restart wait may be over already.
            ago = data.draw(st.sampled_from((0.0, D / 2, D)), label=f"{node_id} started ago")
            seed = data.draw(st.integers(0, 2**16), label=f"seed of {node_id}")
            self.start(node_id, seed, since=self.now - ago)
        event(f"{n_voters} voters, {len(self.candidates)} candidates")

    # -- the world

    def local(self, node_id: str) -> float:
        return self.clocks[node_id].local(self.now)

    def pick(self, node: int) -> str:
        return sorted(self.nodes)[node % len(self.nodes)]

    def start(self, node_id: str, seed: int, since: float | None = None) -> None:
        started = self.now if since is None else since
        self.nodes[node_id] = Lease(
            node_id,
            voters=self.voters,
            peers=self.candidates,
            candidate=node_id in self.candidates,
            settings=self.settings,
            now=self.clocks[node_id].local(started),
            rng=random.Random(seed),
            persisted=self.disk[node_id],
            knobs=self.knobs,
        )
        self.observe(node_id)

    def restart(self, node_id: str, seed: int) -> None:
        event("restart")
        self.start(node_id, seed)

    def carry_out(self, node_id: str, actions: list[Action], *, complete: bool = True) -> None:
        """Carry out a node's actions; ``complete=False``: it crashes before the rest."""
        for action in actions:
            match action:
                case Persist():
                    self.disk[node_id] = Persisted(action.term, action.voted_for)
                    self.saw_term(node_id, action.term)
                    if action.voted_for is not None:
                        self.voted(node_id, action.term, action.voted_for)
                case Send():
                    msg = action.message
                    if isinstance(msg, VoteReply) and msg.granted and not msg.pre_vote:
                        self.voted(node_id, msg.term, action.to)
                    if not (isinstance(msg, VoteRequest) and msg.pre_vote):
                        self.saw_term(node_id, msg.term)
                    if frozenset((node_id, action.to)) not in self.down:
                        due = self.now + self.net.uniform(0, self.latency)
                        self.in_flight.append(Flight(node_id, action.to, msg, due))
                case BecamePrimary():
                    event("became primary")
                    first = self.primary_of.setdefault(action.epoch, node_id)
                    assert first == node_id, (
                        f"{first} and {node_id} both became primary in epoch {action.epoch}"
                    )
                    assert action.until > self.local(node_id)
                case SteppedDown():
                    event(f"stepped down: {action.reason}")
                case LeaseExtended() | DigestMismatch():
                    pass
        if complete:
            self.check()

    def voted(self, voter: str, term: int, candidate: str) -> None:
        """At most one candidate per voter and term, while its disk lasts (a vote lost with the
        disk may be given again, but never so that two candidates win one term: see check)."""
        if candidate == UNKNOWN_VOTE:
            return
        granted = self.votes.setdefault((voter, self.disks.get(voter, 0), term), set())
        granted.add(candidate)
        assert len(granted) == 1, f"{voter} voted for {sorted(granted)} in term {term}"

    def saw_term(self, node_id: str, term: int) -> None:
        """A term the world has seen a node in: it must never find that node in an older one
        (a node without a record keeps its terms in memory only, and starts again from 0)."""
        if self.nodes[node_id].amnesiac:
            return
        previous = self.highest_term.get(node_id, 0)
        if self.knobs.persist_votes:
            assert term >= previous, f"{node_id} went from term {previous} back to {term}"
        self.highest_term[node_id] = max(previous, term)

    def observe(self, node_id: str) -> None:
        """After an event carried out in full (what a crash half-way through loses, nobody saw):
        the vote a voter holds counts, and so does its term."""
        node = self.nodes[node_id]
        if node.is_voter and node.voted_for is not None:
            self.voted(node_id, node.term, node.voted_for)
        self.saw_term(node_id, node.term)

    def deliver_message(self, index: int, crash_after: int | None = None) -> None:
        flight = self.in_flight.pop(index)
        dst = flight.dst
        actions = self.nodes[dst].receive(self.local(dst), flight.src, flight.message)
        if crash_after is None:
            self.carry_out(dst, actions)
        else:
            self.carry_out(dst, actions[:crash_after], complete=False)
            self.restart(dst, seed=crash_after)
            self.check()

    def tick_node(self, node_id: str) -> None:
        self.carry_out(node_id, self.nodes[node_id].tick(self.local(node_id)))

    def next_deadline(self) -> tuple[float, str] | None:
        """The earliest deadline of any node, in true time."""
        due = [
            (self.clocks[n].true(node.next_deadline()), n)
            for n, node in sorted(self.nodes.items())
            if node.next_deadline() < math.inf
        ]
        return min(due) if due else None

    def run_to(self, node_id: str, true_time: float) -> None:
        """Let true time run to ``true_time`` (made exact: the node's deadline), then tick it."""
        deadline = self.nodes[node_id].next_deadline()
        clock = self.clocks[node_id]
        when = max(self.now, true_time)
        while clock.local(when) < deadline:
            when = math.nextafter(when, math.inf)
        self.now = when
        self.tick_node(node_id)

    # -- rules

    @rule(dt=DT)
    def pause(self, dt: float) -> None:
        """True time passes while the whole world stands still: nobody acts, nothing arrives."""
        self.now += dt

    @rule(dt=DT, latency=LATENCY, loss=LOSS)
    def run(self, dt: float, latency: float, loss: float) -> None:
        """True time passes while life goes on over the links that are up: each message arrives
        after a random delay up to ``latency`` unless lost, each node acts at its deadlines."""
        self.run_network(self.now + dt, latency, loss)

    @rule(dt=DT)
    def run_perfectly(self, dt: float) -> None:
        """Like ``run`` over a perfect network: every message arrives at once."""
        self.run_network(self.now + dt, 0.0, 0.0)

    @rule(latency=LATENCY, loss=LOSS)
    def run_until_primary(self, latency: float, loss: float) -> None:
        """Like ``run``, until some node becomes primary in a new epoch (or five leases went by)."""
        self.run_network(self.now + 5 * D, latency, loss, until_primary=True)

    def run_network(
        self, end: float, latency: float, loss: float, *, until_primary: bool = False
    ) -> None:
        self.latency = latency
        epochs = len(self.primary_of)
        for _ in range(1000):
            if until_primary and len(self.primary_of) > epochs:
                return
            arrival = min(
                ((f.due, i) for i, f in enumerate(self.in_flight)), default=(math.inf, -1)
            )
            deadline = self.next_deadline()
            if deadline is not None and deadline[0] < arrival[0]:
                if deadline[0] > end:
                    break
                self.run_to(deadline[1], deadline[0])
            elif arrival[0] <= end:
                self.now = max(self.now, arrival[0])
                if self.net.random() < loss:
                    self.in_flight.pop(arrival[1])
                else:
                    self.deliver_message(arrival[1])
            else:
                break
        self.now = max(self.now, end)

    @rule(node=NODE, fast=st.booleans())
    def set_rate(self, node: int, fast: bool) -> None:
        """A clock changes pace, to either end of what the drift bound allows."""
        rate = 1 + self.delta if fast else 1 - self.delta
        self.clocks[self.pick(node)].set_rate(self.now, rate)

    @precondition(lambda self: any(n.role is PRIMARY for n in self.nodes.values()))
    @rule()
    def skew_against_primary(self) -> None:
        """The worst the drift bound allows: the primary's clock slowest, all others fastest."""
        for node_id, lease in self.nodes.items():
            fast = lease.role is not PRIMARY
            self.clocks[node_id].set_rate(self.now, 1 + self.delta if fast else 1 - self.delta)

    @rule(node=NODE)
    def tick(self, node: int) -> None:
        self.tick_node(self.pick(node))

    @rule(node=NODE)
    def tick_at_deadline(self, node: int) -> None:
        """Let true time run to some node's next deadline (a candidate's, or the primary's)."""
        due = sorted(n for n, lease in self.nodes.items() if lease.next_deadline() < math.inf)
        if due:
            node_id = due[node % len(due)]
            self.run_to(node_id, self.clocks[node_id].true(self.nodes[node_id].next_deadline()))

    @rule(node=NODE, seed=st.integers(0, 2**16))
    def wipe(self, node: int, seed: int) -> None:
        """A node loses its data dir and restarts with no record at all."""
        node_id = self.pick(node)
        lost = sum(1 for n in self.voters if self.nodes[n].amnesiac)
        if node_id in self.voters and lost + 1 >= len(self.voters) // 2 + 1:
            return  # a majority without records at once: nothing could be safe (docs/lease.md)
        event("wipe")
        self.disk[node_id] = None
        self.disks[node_id] = self.disks.get(node_id, 0) + 1
        self.highest_term.pop(node_id, None)
        self.start(node_id, seed)

    @rule(nodes=st.sets(NODE, min_size=1, max_size=3), seed=st.integers(0, 2**16))
    def crash(self, nodes: set[int], seed: int) -> None:
        """Some nodes restart at once (a rack loses power), with what they persisted."""
        for node_id in sorted({self.pick(n) for n in nodes}):
            self.restart(node_id, seed)

    @precondition(lambda self: bool(self.in_flight))
    @rule(message=MESSAGE, crash_after=CRASH_AFTER)
    def deliver(self, message: int, crash_after: int | None) -> None:
        """Any message in flight arrives now; the receiver may die after carrying out only the
        first ``crash_after`` of the actions it returns."""
        self.deliver_message(message % len(self.in_flight), crash_after)

    @precondition(lambda self: bool(self.in_flight))
    @rule(message=MESSAGE, copy=st.booleans())
    def drop_or_duplicate(self, message: int, copy: bool) -> None:
        index = message % len(self.in_flight)
        if copy:
            self.in_flight.append(self.in_flight[index])
        else:
            self.in_flight.pop(index)

    @rule(side=st.sets(NODE, min_size=1), others=st.none() | st.sets(NODE, min_size=1))
    def partition(self, side: set[int], others: set[int] | None) -> None:
        """Cut the links between two groups of nodes (both ways), losing what is in flight on
        them: one node from one other, or from everyone (``others=None``), or any split."""
        cut = {self.pick(n) for n in side}
        far = set(self.nodes) if others is None else {self.pick(n) for n in others}
        self.down |= {frozenset((a, b)) for a in cut for b in far - cut}
        self.in_flight = [f for f in self.in_flight if frozenset((f.src, f.dst)) not in self.down]

    @rule(node=NODE)
    def isolate(self, node: int) -> None:
        self.partition({node}, None)

    @precondition(lambda self: any(n.role is PRIMARY for n in self.nodes.values()))
    @rule(seed=st.integers(0, 2**16))
    def crash_all_but_primary(self, seed: int) -> None:
        """Everyone else restarts at once, forgetting the promises they made the primary."""
        for node_id, lease in sorted(self.nodes.items()):
            if lease.role is not PRIMARY:
                self.restart(node_id, seed)

    @precondition(lambda self: any(n.role is PRIMARY for n in self.nodes.values()))
    @rule()
    def isolate_primary(self) -> None:
        """The fault that matters most: the primary loses the network, and lives on."""
        nodes = sorted(self.nodes)
        primary = next(n for n in nodes if self.nodes[n].role is PRIMARY)
        self.partition({nodes.index(primary)}, None)

    @rule(node=NODE)
    def transfer(self, node: int) -> None:
        """A node is stopped gracefully: it hands the lease over (``Lease.transfer``)."""
        node_id = self.pick(node)
        self.handover(node_id)

    @precondition(lambda self: any(n.role is PRIMARY for n in self.nodes.values()))
    @rule()
    def transfer_primary(self) -> None:
        """The primary is stopped gracefully: every voter may give its promise back at once."""
        self.handover(next(n for n, x in sorted(self.nodes.items()) if x.role is PRIMARY))

    def handover(self, node_id: str) -> None:
        event("transfer")
        successors = self.candidates - {node_id}
        self.carry_out(node_id, self.nodes[node_id].transfer(self.local(node_id), successors))

    @precondition(lambda self: bool(self.down))
    @rule()
    def heal(self) -> None:
        self.down.clear()

    # -- invariants

    @invariant()
    def check(self) -> None:
        holding = []
        for node_id, node in sorted(self.nodes.items()):
            self.observe(node_id)
            if node.role is PRIMARY:
                assert self.primary_of.get(node.term) == node_id
                assert node.lease_until is not None
                until = self.clocks[node_id].true(node.lease_until)
                if until > self.now + TOLERANCE:
                    holding.append((node_id, node.term, until))
        assert len(holding) <= 1, (
            f"two primaries at true time {self.now} (node, epoch, lease end): {holding}"
        )


def run_lease_machine(
    knobs: SafetyKnobs = ALL_ON, max_examples: int = 400, steps: int = 50
) -> None:
    machine = type("LeaseMachine", (LeaseMachine,), {"knobs": knobs})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.timeout(900)  # a failure shrinks for a minute or two: let it print the example
def test_lease_state_machine() -> None:
    run_lease_machine()


def test_a_vote_in_a_newer_term_is_one_write_to_disk() -> None:
    # Adopting the term and recording the vote would be two fsyncs; only the last one counts.
    b = make("b", persisted=Persisted(3, "c"))
    request = VoteRequest(5, "a", False, 1, voters_digest(VOTERS))
    actions = b.receive(2 * D, "a", request)
    persists = [x for x in actions if isinstance(x, Persist)]
    assert persists == [Persist(5, "a")]
    assert actions.index(persists[0]) < actions.index(sends(actions)[0])
    assert only_reply(actions).granted
