"""What building the simulator found in the lease core, kept as regression tests.

Each test drives ``brio.core.lease.Lease`` objects by hand through an interleaving that the
simulator's reasoning turned up, every safety measure on. Random runs rarely reach these
(two campaigns must interleave within one round trip), so they are pinned here by hand.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

import sim.work
from brio.core.lease import (
    Lease,
    LeaseSettings,
    Persisted,
    Role,
    Send,
    VoteReply,
    VoteRequest,
)
from sim.config import Fault, SimConfig
from sim.world import run_seed

SETTINGS = LeaseSettings(lease_duration=5.0, election_timeout=(1.0, 2.5), max_clock_drift=0.05)
VOTERS = ("c1", "c2", "c3", "w1", "w2")


def lease(node: str, term: int) -> Lease:
    return Lease(
        node,
        voters=VOTERS,
        candidate=node.startswith("c"),
        settings=SETTINGS,
        now=0.0,
        rng=random.Random(node),
        persisted=Persisted(term, None),
    )


def only_send(actions: Sequence[object]) -> Send:
    sends = [a for a in actions if isinstance(a, Send)]
    assert len(sends) == 1, actions
    return sends[0]


def test_a_candidate_keeps_the_promise_of_a_vote_it_granted() -> None:
    # Found by the simulator's author: a candidate in its pre-vote granted a same-term vote
    # (and so a promise), then counted its own vote for the next term, breaking the promise.
    # Fixed: granting a vote ends our campaign, and a self-vote must pass the promise check.
    # c1 and c3 know term 4 (say c1 adopted it from a refusal, and no vote was cast in it);
    # c2, w1, w2 are still at 3. Long after start, so no restart wait and no promises.
    leases = {n: lease(n, 4 if n in ("c1", "c3") else 3) for n in VOTERS}
    t = 20.0
    c1_pre = {s.to: s for s in leases["c1"].tick(t) if isinstance(s, Send)}  # asks for 5
    c2_pre = {s.to: s for s in leases["c2"].tick(t) if isinstance(s, Send)}  # asks for 4

    # w1 and w2 answer c1's pre-vote first, then c2's; c2 then asks for votes in term 4.
    c1_grants = [
        only_send(leases[w].receive(t + 0.001, "c1", c1_pre[w].message)) for w in ("w1", "w2")
    ]
    c2_votes: dict[str, Send] = {}
    for w in ("w1", "w2"):
        reply = only_send(leases[w].receive(t + 0.002, "c2", c2_pre[w].message))
        actions = leases["c2"].receive(t + 0.003, w, reply.message)
        c2_votes |= {s.to: s for s in actions if isinstance(s, Send)}

    # c1 (still a candidate in its pre-vote) and c3 grant c2 term 4: c2 is primary,
    # with c1's promise part of its lease.
    for voter in ("c1", "c3"):
        reply = only_send(leases[voter].receive(t + 0.004, "c2", c2_votes[voter].message))
        assert isinstance(reply.message, VoteReply) and reply.message.granted
        leases["c2"].receive(t + 0.005, voter, reply.message)
    assert leases["c2"].role is Role.PRIMARY

    # c1's pre-vote grants arrive late; having voted, it no longer campaigns (and even if it
    # did, it could not count its own vote: it is promised to c2).
    c1_votes: dict[str, Send] = {}
    for grant in c1_grants:
        assert isinstance(grant.message, VoteReply) and grant.message.granted
        actions = leases["c1"].receive(t + 0.006, grant.message.voter, grant.message)
        c1_votes |= {s.to: s for s in actions if isinstance(s, Send)}
    for w in ("w1", "w2"):
        request = c1_votes.get(w)
        if request is None:
            continue
        assert isinstance(request.message, VoteRequest)
        reply = only_send(leases[w].receive(t + 0.007, "c1", request.message))
        leases["c1"].receive(t + 0.008, w, reply.message)

    # Two primaries with overlapping leases on equal clocks (c2 until ~24.75, c1 likewise).
    both = [n for n in ("c1", "c2") if leases[n].role is Role.PRIMARY]
    assert both == ["c2"], {n: leases[n].status() for n in ("c1", "c2")}
    assert leases["c1"].role is Role.FOLLOWER


def test_a_lost_claim_answer_needs_a_recovery_and_the_simulator_sees_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the task simulation, in ``brio.tasks.supervisor`` (not a core): when the
    answer to ``claim_assigned`` is lost after the statement committed (a dropped connection),
    the tasks it moved to running on this node are run by nobody, and nothing takes them back
    while the node stays healthy. The supervisor now recovers them with a sweep
    (``Supervisor._reconcile``: rows running here that no agent here runs, seen twice in a
    row, are requeued; ``tests/tasks/test_supervisor.py``). The simulator's worker recovers
    them by reading the claim back under its request id (``sim.work.READ_BACK_CLAIMS``), the
    same outcome by another route; this test shows that without any recovery the simulator
    reports it: loss on the store's links then leaves tasks unfinished after the heal (37 of
    the first 40 seeds of ``--faults loss``, seed 0 first)."""
    monkeypatch.setattr(sim.work, "READ_BACK_CLAIMS", False)
    result = run_seed(SimConfig(faults=(Fault.LOSS,)), 0)
    assert result.violation is not None
    assert result.violation.invariant == "liveness-tasks", result.violation
