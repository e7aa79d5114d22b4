"""Handing the lease over on a graceful stop (``Lease.transfer``, ``Release``): by example.

The old primary steps down, gives its own promise back and asks its peers for theirs; a voter
gives back only the promise it made that very leader in that very term, and only to the
leader itself; the successor campaigns at once once it can win, and the old primary never
campaigns again. The state machine in ``test_lease.py`` hands the lease over at random moments
too (its ``transfer`` rule), over its adversarial network, under the same invariants.
"""

from __future__ import annotations

import math

from brio.core.constants import WITNESS_ID
from brio.core.lease import (
    BecamePrimary,
    Lease,
    Persist,
    Release,
    RenewReply,
    RenewRequest,
    Role,
    Send,
    SteppedDown,
    VoteReply,
    VoteRequest,
    voters_digest,
)
from brio.core.witness import NO_PROMISE, WitnessRecord, decide
from tests.core.test_lease import DIGEST, D, Net, elect_a, make, sends, vote_request

FOLLOWER, CANDIDATE, PRIMARY = Role.FOLLOWER, Role.CANDIDATE, Role.PRIMARY


def three_coordinators() -> tuple[Net, float]:
    """``a``, ``b`` and ``c`` are voters and candidates; ``a`` wins epoch 1 and renews once,
    ``c`` answering after ``b`` (a perfect network delivers in the order sent)."""
    net = Net(make("a"), make("b"), make("c"))
    t0 = elect_a(net)
    t1 = t0 + SETTINGS_RENEW
    net.tick("a", t1)
    return net, t1


SETTINGS_RENEW = D / 3


def test_the_primary_hands_over_and_a_standby_is_primary_at_once() -> None:
    net, t1 = three_coordinators()
    now = t1 + 0.01
    actions = net.carry_out("a", now, net.nodes["a"].transfer(now, {"b", "c"}))
    assert actions[0] == SteppedDown(1, "handing the lease over: this node is stopping")
    [(_, first), (winner, second)] = net.became_primary()
    assert first.epoch == 1 and second.epoch == 2
    assert winner in ("b", "c")
    # Long before the promises a and its voters made would have run out.
    assert now < t1 + D
    a = net.nodes["a"]
    assert (a.role, a.retired, a.term, a.voted_for) == (FOLLOWER, True, 2, winner)


def test_the_successor_is_the_standby_that_answered_a_renewal_last() -> None:
    net = Net(make("a"), make("b"), make("c"))
    t0 = elect_a(net)
    net.cut = {"b"}
    net.tick("a", t0 + SETTINGS_RENEW)  # only c answers this round
    net.cut = set()
    now = t0 + SETTINGS_RENEW + 0.01
    actions = net.nodes["a"].transfer(now, {"b", "c"})
    told = [
        (s.to, s.message.successor)
        for s in sends(actions)
        if isinstance(s.message, Release) and s.message.successor
    ]
    assert told == [("c", "c")]
    net.carry_out("a", now, actions)
    assert net.became_primary()[-1][0] == "c"


def test_the_old_primary_never_campaigns_again() -> None:
    net, t1 = three_coordinators()
    a = net.nodes["a"]
    net.carry_out("a", t1, a.transfer(t1, {"b", "c"}))
    assert a.next_deadline() == math.inf
    assert a.tick(t1 + 100 * D) == []
    assert a.role is FOLLOWER and a.status().primary != "a"


def test_a_standby_that_stops_campaigns_no_more_and_releases_nothing() -> None:
    b = make("b")
    b.tick(b.next_deadline())  # campaigning: a pre-vote round
    assert b.role is CANDIDATE
    assert b.transfer(2 * D, {"a", "c"}) == []
    assert (b.role, b.retired, b.next_deadline()) == (FOLLOWER, True, math.inf)


def promised_voter() -> Lease:
    """``b``, a worker that promised ``a`` (primary of term 1) at time D, until 2 D."""
    b = make("b", candidate=False)
    [reply] = sends(b.receive(D, "a", RenewRequest(1, "a", 5, DIGEST)))
    assert isinstance(reply.message, RenewReply) and reply.message.ok
    return b


def test_a_voter_gives_the_promise_back_to_its_leader_and_may_vote_at_once() -> None:
    b = promised_voter()
    [reply] = sends(b.receive(D + 0.1, "a", Release(1, "a", 6, DIGEST)))
    assert reply == Send("a", RenewReply(1, "b", True, 6, DIGEST))
    assert b.status().primary is None
    granted = b.receive(D + 0.2, "c", vote_request(2, "c"))
    [vote] = sends(granted)
    assert isinstance(vote.message, VoteReply) and vote.message.granted  # before 2 D


def test_a_forged_release_is_ignored_and_the_promise_stands() -> None:
    b = promised_voter()
    # c names a as the leader, but sent it itself: silence, and nothing changes.
    assert b.receive(D + 0.1, "c", Release(1, "a", 6, DIGEST, "c")) == []
    [refusal] = sends(b.receive(D + 0.2, "c", vote_request(2, "c")))
    assert isinstance(refusal.message, VoteReply)
    assert (refusal.message.granted, refusal.message.reason) == (False, "promised to a")


def test_a_release_from_another_leader_or_term_is_refused() -> None:
    b = promised_voter()
    [other] = sends(b.receive(D + 0.1, "c", Release(1, "c", 6, DIGEST)))
    assert other.message == RenewReply(1, "b", False, 6, DIGEST, "c is not our primary")
    b.receive(D + 0.1, "a", RenewRequest(2, "a", 7, DIGEST))  # a is primary of term 2 now
    [stale] = sends(b.receive(D + 0.2, "a", Release(1, "a", 6, DIGEST)))
    assert stale.message == RenewReply(2, "b", False, 6, DIGEST, "term is stale")
    refused = sends(b.receive(D + 0.3, "c", vote_request(3, "c")))
    assert isinstance(refused[0].message, VoteReply) and not refused[0].message.granted


def test_a_release_under_another_voter_set_is_refused_loudly() -> None:
    b = promised_voter()
    release = Release(1, "a", 6, voters_digest(("a", "b")))
    actions = b.receive(D + 0.1, "a", release)
    [refusal] = sends(actions)
    assert isinstance(refusal.message, RenewReply) and not refusal.message.ok
    assert b.status().lease_until == 2 * D  # kept


def test_the_successor_is_told_only_once_enough_promises_are_back() -> None:
    # Two coordinators and three workers: a majority is three, so a (given back) and b (its
    # own vote) need one worker's promise back before b can win.
    voters = ("a", "b", "w1", "w2", "w3")
    nodes = [make(n, voters=voters, candidate=n in "ab") for n in voters]
    net = Net(*nodes)
    t0 = net.nodes["a"].next_deadline()
    net.tick("a", t0)
    assert net.nodes["a"].role is PRIMARY
    net.cut = {"w1", "w2", "w3"}
    actions = net.carry_out("a", t0 + 0.1, net.nodes["a"].transfer(t0 + 0.1, {"b"}))
    assert not [a for a in sends(actions) if isinstance(a.message, Release) and a.message.successor]
    assert net.nodes["b"].role is FOLLOWER  # a plain release: no campaign
    # A worker's answer arrives later: now b is told, and wins.
    net.cut = set()
    [to_w1] = [s.message for s in sends(actions) if s.to == "w1"]
    net.carry_out("w1", t0 + 0.2, net.nodes["w1"].receive(t0 + 0.2, "a", to_w1))
    assert [src for src, a in net.became_primary()] == ["a", "b"]


def test_a_standby_told_nothing_campaigns_after_one_election_timeout_not_a_lease() -> None:
    b = make("b")
    b.receive(D, "a", RenewRequest(1, "a", 5, DIGEST))
    assert b.next_deadline() > 2 * D  # a lease after the renewal, plus a timeout
    b.receive(D + 0.1, "a", Release(1, "a", 6, DIGEST, "c"))  # c is told, not b
    assert b.next_deadline() <= D + 0.1 + 0.5  # one election timeout at most


def test_a_lone_coordinator_steps_down_with_nobody_to_tell() -> None:
    a = make("a", voters=("a",))
    a.tick(a.next_deadline())
    assert a.role is PRIMARY
    actions = a.transfer(2 * D, set())
    assert [type(x) for x in actions] == [SteppedDown]
    assert isinstance(actions[0], SteppedDown)
    assert not any(isinstance(x, BecamePrimary) for x in a.tick(3 * D))


def test_the_witness_gives_back_only_the_promise_to_that_leader_in_its_term() -> None:
    promised = WitnessRecord(3, "c1", "c1", 20.0, "A")
    after, reply = decide(promised, Release(3, "c1", 9, "A"), 10.0, 5.0)
    assert reply == RenewReply(3, WITNESS_ID, True, 9, "A")
    assert (after.term, after.voted_for, after.promised_to, after.promise_until) == (
        3,
        "c1",
        None,
        0,
    )
    # now c2 may have the next term's vote at once, long before 20.0
    _, vote = decide(after, VoteRequest(4, "c2", False, 1, "A"), 10.1, 5.0)
    assert vote.granted
    for other in (Release(3, "c2", 9, "A"), Release(2, "c1", 9, "A"), Release(4, "c1", 9, "A")):
        kept, refused = decide(promised, other, 10.0, 5.0)
        assert kept == promised and not refused.ok and refused.reason == NO_PROMISE


def test_a_release_from_a_candidate_we_promised_nothing_is_refused() -> None:
    # b voted for a (a promise to a, nobody followed yet): c's release in its own name
    b = make("b", candidate=False)
    b.receive(D, "a", vote_request(1, "a"))
    [refusal] = sends(b.receive(D + 0.1, "c", Release(1, "c", 6, DIGEST)))
    assert refusal.message == RenewReply(1, "b", False, 6, DIGEST, "c is not our primary")
    assert b.status().primary is None and b._promised_to == "a"


def test_a_release_in_a_term_we_missed_is_adopted_and_written_even_when_refused() -> None:
    # b promised a (term 1) until 2 D; c's release names term 3, which b never saw.
    b = promised_voter()
    actions = b.receive(D + 0.1, "c", Release(3, "c", 6, DIGEST))
    assert actions[0] == Persist(3, None)  # terms only grow, on disk too
    [refusal] = sends(actions)
    assert isinstance(refusal.message, RenewReply) and not refusal.message.ok
    assert b.term == 3 and b._promised_to == "a"  # the promise to a stands


def test_a_late_answer_to_a_release_after_a_newer_term_began_sends_nothing() -> None:
    """Found by the state machine: the old primary voted in the successor's term, then an
    answer to its release arrived and it told the successor again, in the old term: a message
    with a term older than its own. The handover is over once a newer term has begun."""
    net, t1 = three_coordinators()
    a = net.nodes["a"]
    now = t1 + 0.01
    released = a.transfer(now, {"b", "c"})
    [round_id] = {s.message.round for s in sends(released) if isinstance(s.message, Release)}
    # b campaigns in term 2 and a votes for it before c's answer to the release comes back.
    [vote] = sends(a.receive(now + 0.01, "b", vote_request(2, "b")))
    assert isinstance(vote.message, VoteReply) and vote.message.granted and a.term == 2
    late = a.receive(now + 0.02, "c", RenewReply(1, "c", True, round_id, DIGEST))
    assert late == []
