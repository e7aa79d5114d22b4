"""Properties of the lease core that the mutation run (``just mutate``, docs/simulator.md)
showed no other test pinned down: each test here kills mutants of ``brio/core/lease.py`` that
survived ``tests/core/test_lease.py`` and CI's simulator seeds.

``test_the_state_machine_in_brief`` is ``tests/core/test_lease.py``'s state machine with fewer
examples: the mutation run deselects the long one and runs this one per mutant.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brio.core.constants import MAX_TERM
from brio.core.lease import (
    Action,
    BecamePrimary,
    LeaseExtended,
    LeaseSettings,
    Message,
    Persist,
    Persisted,
    RenewReply,
    RenewRequest,
    SteppedDown,
    VoteReply,
    VoteRequest,
)
from tests.core.test_lease import (
    CANDIDATE,
    DIGEST,
    EPS,
    FOLLOWER,
    PRIMARY,
    SETTINGS,
    D,
    elect_a,
    make,
    one_candidate,
    only_reply,
    run_lease_machine,
    sends,
    vote_request,
)


def test_the_state_machine_in_brief() -> None:
    run_lease_machine(max_examples=80)


# -- the lease's length -----------------------------------------------------------------------


@given(
    duration=st.floats(0.1, 60.0),
    drift=st.floats(0.0, 0.45),
    start=st.floats(0.0, 1e6),
)
def test_the_lease_is_the_round_start_plus_the_lease_less_the_drift_margin(
    duration: float, drift: float, start: float
) -> None:
    # Every lease duration, not only the examples' 1.0, where D * (1 - eps) == 1 - eps.
    settings = LeaseSettings(duration, (0.1, 0.2), drift)
    a = make("a", voters=["a"], lease_settings=settings, now=start)
    t0 = a.next_deadline()
    assert a.tick(t0) == [Persist(1, "a"), BecamePrimary(1, t0 + duration * (1 - drift))]


def test_votes_that_come_back_exactly_when_their_lease_ends_make_no_primary() -> None:
    a, b = make("a"), make("b", candidate=False)
    t0 = a.next_deadline()
    [pre, _] = sends(a.tick(t0))
    [election, _] = sends(a.receive(t0, "b", only_reply(b.receive(t0, "a", pre.message))))
    reply = only_reply(b.receive(t0, "a", election.message))
    assert a.receive(t0 + D * (1 - EPS), "b", reply) == []
    assert a.role is CANDIDATE


# -- rounds -------------------------------------------------------------------------------------


def test_an_answer_to_an_earlier_renewal_extends_from_that_round_only() -> None:
    net = one_candidate()
    t0 = elect_a(net)
    a, b = net.nodes["a"], net.nodes["b"]
    t1 = a.next_deadline()
    net.cut = {"b", "c"}
    [r1, _] = [s for s in sends(a.tick(t1)) if isinstance(s.message, RenewRequest)]
    t2 = a.next_deadline()
    assert t2 == pytest.approx(t1 + D / 3)
    a.tick(t2)  # the next round, whose requests are lost
    late = sends(b.receive(t2, "a", r1.message))
    assert a.receive(t2, "b", late[0].message) == [LeaseExtended(1, t1 + D * (1 - EPS))]
    assert a.lease_until == t1 + D * (1 - EPS)
    assert t0 < t1


def test_every_renewal_is_due_after_the_one_before() -> None:
    net = one_candidate()
    elect_a(net)
    a = net.nodes["a"]
    for _ in range(5):
        t = a.next_deadline()
        net.tick("a", t)
        assert a.next_deadline() == pytest.approx(t + D / 3)


def test_a_pre_vote_grant_from_an_earlier_campaign_does_not_count() -> None:
    a, b = make("a"), make("b", candidate=False)
    t0 = a.next_deadline()
    [first, _] = sends(a.tick(t0))  # nobody answers in time
    t1 = a.next_deadline()
    [second, _] = sends(a.tick(t1))
    assert isinstance(first.message, VoteRequest) and isinstance(second.message, VoteRequest)
    assert second.message.round != first.message.round
    stale = only_reply(b.receive(t1, "a", first.message))
    assert a.receive(t1, "b", stale) == []
    assert a.term == 0


def test_a_coordinator_that_is_not_a_voter_needs_a_majority_of_the_voters() -> None:
    s = make("s", peers=["s"])  # a standby coordinator: not in the voter set
    b = make("b", candidate=False)
    t0 = s.next_deadline()
    requests = {x.to: x.message for x in sends(s.tick(t0))}
    assert sorted(requests) == ["a", "b", "c"]
    assert s.receive(t0, "b", only_reply(b.receive(t0, "s", requests["b"]))) == []
    assert s.term == 0


# -- terms --------------------------------------------------------------------------------------


def test_a_term_jump_up_to_the_bound_is_taken_and_one_beyond_it_is_not() -> None:
    jump = SETTINGS.max_term_jump
    b = make("b", candidate=False, persisted=Persisted(5, None))
    assert b.receive(2.0, "a", RenewRequest(5 + jump + 1, "a", 1, DIGEST)) == []
    assert b.term == 5
    actions = b.receive(2.0, "a", RenewRequest(5 + jump, "a", 1, DIGEST))
    assert Persist(5 + jump, None) in actions and b.term == 5 + jump


def test_the_largest_term_is_taken_and_never_campaigned_past() -> None:
    b = make("b", persisted=Persisted(MAX_TERM - 1, None))
    actions = b.receive(2.0, "a", RenewRequest(MAX_TERM, "a", 1, DIGEST))
    assert Persist(MAX_TERM, None) in actions and b.term == MAX_TERM
    # Its promise to a over, it would campaign, but no term lies beyond.
    t = b.next_deadline()
    assert b.tick(t) == []
    assert (b.term, b.role) == (MAX_TERM, FOLLOWER)


def test_a_renewal_in_our_term_keeps_the_vote_we_gave_in_it() -> None:
    b = make("b", candidate=False)
    assert only_reply(b.receive(2.0, "a", vote_request(1, "a"))).granted
    actions = b.receive(2.1, "a", RenewRequest(1, "a", 3, DIGEST))
    assert not any(isinstance(x, Persist) for x in actions)
    assert b.persisted() == Persisted(1, "a")
    # Once the promise is over, the vote in term 1 still stands.
    refusal = only_reply(b.receive(2.1 + 2 * D, "c", vote_request(1, "c")))
    assert not refusal.granted


# -- stepping down ------------------------------------------------------------------------------


def stepped_down(actions: list[Action]) -> list[SteppedDown]:
    return [x for x in actions if isinstance(x, SteppedDown)]


@pytest.mark.parametrize(
    "message",
    [
        RenewRequest(2, "c", 1, DIGEST),
        VoteReply(2, "b", False, False, 1, DIGEST, "term is stale"),
        RenewReply(2, "b", False, 1, DIGEST, "term is stale"),
    ],
    ids=["renewal", "vote-refusal", "renewal-refusal"],
)
def test_a_primary_that_hears_a_newer_term_steps_down_once(message: Message) -> None:
    net = one_candidate()
    t0 = elect_a(net)
    a = net.nodes["a"]
    actions = a.receive(t0 + 0.1, "b" if not isinstance(message, RenewRequest) else "c", message)
    assert stepped_down(actions) == [SteppedDown(1, "saw the newer term 2")]
    assert (a.role, a.term, a.lease_until) == (FOLLOWER, 2, None)


def test_a_primary_whose_lease_ran_out_grants_a_newer_vote_and_says_it_stepped_down() -> None:
    net = one_candidate()
    t0 = elect_a(net)
    a = net.nodes["a"]
    # Its voters stopped answering; before its own tick, a candidate asks for term 2.
    late = t0 + 2 * D
    actions = a.receive(late, "c", vote_request(2, "c"))
    assert stepped_down(actions) == [SteppedDown(1, "saw the newer term 2")]
    assert Persist(2, "c") in actions and only_reply(actions).granted
    assert actions.index(Persist(2, "c")) < actions.index(sends(actions)[0])


def test_a_primary_that_hears_another_leader_in_its_term_steps_down() -> None:
    net = one_candidate()
    t0 = elect_a(net)
    a = net.nodes["a"]
    actions = a.receive(t0 + 0.1, "c", RenewRequest(1, "c", 9, DIGEST))
    assert stepped_down(actions) == [SteppedDown(1, "c renews as primary in our term 1")]
    assert (a.role, a.primary) == (FOLLOWER, "c")


# -- timers -------------------------------------------------------------------------------------


def test_a_candidate_in_its_pre_vote_follows_the_primary_it_hears_again() -> None:
    net = one_candidate()
    elect_a(net)
    b = make("b")  # a coordinator that follows a, then misses renewals
    b.receive(D * 1.1, "a", RenewRequest(1, "a", 3, DIGEST))
    assert b.primary == "a"
    t = b.next_deadline()
    assert sends(b.tick(t)) and b.role is CANDIDATE
    b.receive(t + 0.01, "a", RenewRequest(1, "a", 9, DIGEST))
    assert (b.role, b.primary) == (FOLLOWER, "a")
    assert b.next_deadline() >= t + 0.01 + D


def test_a_renewal_holds_a_standby_candidate_back_for_a_whole_lease() -> None:
    b = make("b")
    for t in (2.0, 2.3, 3.0):
        b.receive(t, "a", RenewRequest(1, "a", 3, DIGEST))
        assert b.next_deadline() >= t + D + SETTINGS.election_timeout[0]


def test_a_held_candidate_checks_again_later_not_at_once() -> None:
    a = make("a")
    a.hold(0.0, "a coordinator outside the voter set")
    t = a.next_deadline()
    assert a.tick(t) == []
    assert a.next_deadline() >= t + SETTINGS.election_timeout[0]


def test_a_stray_refusal_during_the_restart_wait_does_not_end_it() -> None:
    a = make("a", now=10.0)  # restarted at 10: no vote, no campaign before 10 + D
    a.receive(10.1, "b", VoteReply(3, "b", False, False, 1, DIGEST, "term is stale"))
    assert a.term == 3
    assert a.next_deadline() >= 10.0 + D


# -- late answers (the driver waits for a renewal's answer until its round's lease ends) -------


@given(
    delays=st.lists(st.floats(0.0, 1.3 * D), min_size=1, max_size=12),
    stalls=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_late_renewal_answers_extend_the_lease_to_the_latest_answered_rounds_end(
    delays: list[float], stalls: list[bool]
) -> None:
    """``b``'s answer to round k comes back ``delays[k]`` after the round left (half way it
    reaches ``b``, which promises then); ``c`` never answers. Ticks and answers are taken in
    time order, except that with ``stalls[k]`` the answer is taken before a tick that was due
    earlier (a loop that stalled past its deadline). The lease is always the end of the latest
    round answered while that end lay ahead, never later than ``b``'s promise: an extension
    never ends in the past."""
    net = one_candidate()
    elect_a(net)
    a, b = net.nodes["a"], net.nodes["b"]
    net.cut = {"b", "c"}  # the Net delivers nothing: the answers are carried by hand below
    rounds: list[tuple[float, RenewRequest]] = []  # (start, request)
    arrivals: list[tuple[float, int]] = []  # (when a hears b's answer, round index)
    expected = a.lease_until
    assert expected is not None
    now = 0.0  # the core's time never runs backwards: a tick after a stall is late
    while a.role is PRIMARY:
        tick_at = a.next_deadline()
        pending = sorted(x for x in arrivals if x[0] < tick_at or stalls[x[1]])
        if pending:
            at, k = pending[0]
            arrivals.remove((at, k))
            start, request = rounds[k]
            heard = start + delays[k] / 2
            [answer] = sends(b.receive(heard, "a", request))
            now = max(now, at)
            actions = a.receive(now, "b", answer.message)
            end = start + D * (1 - EPS)
            if end > expected and end > now:
                assert actions == [LeaseExtended(1, end)]
                expected = end
            else:
                assert actions == []
        else:
            now = max(now, tick_at)
            actions = a.tick(now)
            requests = [s.message for s in sends(actions) if isinstance(s.message, RenewRequest)]
            if requests and len(rounds) < len(delays):
                rounds.append((now, requests[0]))
                arrivals.append((now + delays[len(rounds) - 1], len(rounds) - 1))
            elif a.role is PRIMARY and not arrivals and len(rounds) == len(delays):
                break  # every answer is in: the lease runs out on its own
        if a.role is PRIMARY:
            assert a.lease_until == expected
            promise = b.status().lease_until  # one clock; None until b heard a renewal
            assert promise is None or expected <= promise
