"""The witness voter's rules (``brio.core.witness.decide``), and the lease with it as a voter.

The rules are those of a ``Lease`` voter that never loses its record; the last tests run real
``Lease`` cores for two coordinators with ``decide`` standing in for the third voter, and show
the point of it: with one coordinator gone for good, the other becomes primary.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from brio.config import BrioConfig, ConfigError, load_config
from brio.core.constants import WITNESS_ID
from brio.core.lease import (
    BecamePrimary,
    Lease,
    LeaseSettings,
    Persisted,
    RenewReply,
    RenewRequest,
    Role,
    Send,
    VoteReply,
    VoteRequest,
    voters_digest,
)
from brio.core.witness import OTHER_VOTERS, WitnessKnobs, WitnessRecord, decide

LEASE = 5.0
VOTERS = ("c1", "c2", WITNESS_ID)
DIGEST = voters_digest(VOTERS)


def vote(term: int, who: str, *, pre: bool = False, digest: str = DIGEST) -> VoteRequest:
    return VoteRequest(term, who, pre, 1, digest)


def test_a_vote_is_one_per_term_and_promises_a_lease() -> None:
    record, reply = decide(WitnessRecord(), vote(1, "c1"), 100.0, LEASE)
    assert isinstance(reply, VoteReply)
    assert (reply.granted, reply.term, reply.voter) == (True, 1, WITNESS_ID)
    assert record == WitnessRecord(1, "c1", "c1", 105.0, DIGEST)
    # c2 in the same term, after the promise: the vote is spent
    later, reply = decide(record, vote(1, "c2"), 106.0, LEASE)
    assert (reply.granted, reply.reason, later) == (False, "voted for c1", record)
    # c2 in a later term, during the promise: refused; after it: granted
    _, reply = decide(record, vote(2, "c2"), 104.9, LEASE)
    assert (reply.granted, reply.reason) == (False, "promised to c1")
    after, reply = decide(record, vote(2, "c2"), 105.0, LEASE)
    assert reply.granted and after == WitnessRecord(2, "c2", "c2", 110.0, DIGEST)
    # a stale term is refused with the witness's term, which the candidate adopts
    _, reply = decide(after, vote(1, "c1"), 200.0, LEASE)
    assert (reply.granted, reply.term, reply.reason) == (False, 2, "term is stale")


def test_a_pre_vote_changes_nothing() -> None:
    record = WitnessRecord(3, "c1", "c1", 105.0, DIGEST)
    same, reply = decide(record, vote(4, "c2", pre=True), 104.0, LEASE)
    assert (same, reply.granted, reply.reason) == (record, False, "promised to c1")
    same, reply = decide(record, vote(4, "c2", pre=True), 106.0, LEASE)
    assert (same, reply.granted, reply.term) == (record, True, 3)
    same, reply = decide(record, vote(3, "c2", pre=True), 106.0, LEASE)
    assert (same, reply.granted) == (record, False)


def test_renewals_move_the_promise_and_adopt_newer_terms() -> None:
    record = WitnessRecord(3, "c1", "c1", 105.0, DIGEST)
    after, reply = decide(record, RenewRequest(3, "c1", 7, DIGEST), 104.0, LEASE)
    assert isinstance(reply, RenewReply) and reply.ok and reply.round == 7
    assert after == WitnessRecord(3, "c1", "c1", 109.0, DIGEST)
    # the promise never shrinks, even when the database clock steps back
    again, _ = decide(after, RenewRequest(3, "c1", 8, DIGEST), 100.0, LEASE)
    assert again.promise_until == 109.0
    # a newer primary's renewal: its term, no vote in it, the promise to it
    newer, reply = decide(after, RenewRequest(5, "c2", 1, DIGEST), 104.5, LEASE)
    assert reply.ok and newer == WitnessRecord(5, None, "c2", 109.5, DIGEST)
    _, reply = decide(newer, RenewRequest(4, "c1", 9, DIGEST), 104.6, LEASE)
    assert (reply.ok, reply.term, reply.reason) == (False, 5, "term is stale")


def test_another_voter_set_is_refused_while_a_promise_stands() -> None:
    record = WitnessRecord(3, "c1", "c1", 105.0, DIGEST)
    _, reply = decide(record, vote(4, "x1", digest="other"), 104.0, LEASE)
    assert (reply.granted, reply.reason, reply.voters_digest) == (False, OTHER_VOTERS, DIGEST)
    _, renewed = decide(record, RenewRequest(3, "c1", 1, "other"), 104.0, LEASE)
    assert (renewed.ok, renewed.voters_digest) == (False, DIGEST)
    # once the promise has run out, the witness serves the other set (a reconfiguration)
    after, reply = decide(record, vote(4, "x1", digest="other"), 105.0, LEASE)
    assert reply.granted and after.voters_digest == "other"


def test_the_unsafe_knob_breaks_the_promise() -> None:
    record = WitnessRecord(3, "c1", "c1", 105.0, DIGEST)
    unsafe = WitnessKnobs(keep_promise=False)
    _, reply = decide(record, vote(4, "c2"), 104.0, LEASE, unsafe)
    assert reply.granted


# ---------------------------------------------------------------- the lease with a witness


class Cluster:
    """Two coordinators' ``Lease`` cores and the witness, with instant message delivery."""

    def __init__(self) -> None:
        settings = LeaseSettings(LEASE, (1.0, 2.0), 0.05)
        self.now = 0.0
        self.witness = WitnessRecord()
        self.down: set[str] = set()
        self.nodes = {
            name: Lease(
                name,
                voters=VOTERS,
                candidate=True,
                settings=settings,
                now=0.0,
                rng=random.Random(name),
                persisted=Persisted(0, None),
            )
            for name in ("c1", "c2")
        }
        self.primaries: list[tuple[str, int]] = []

    def deliver(self, sender: str, actions: Sequence[object]) -> None:
        queue = [(sender, a) for a in actions]
        while queue:
            sender, action = queue.pop(0)
            if isinstance(action, BecamePrimary):
                self.primaries.append((sender, action.epoch))
            if not isinstance(action, Send):
                continue
            message = action.message
            if action.to == WITNESS_ID:
                assert isinstance(message, VoteRequest | RenewRequest)
                self.witness, reply = decide(self.witness, message, self.now, LEASE)
                node = self.nodes[sender]
                queue += [(sender, a) for a in node.receive(self.now, WITNESS_ID, reply)]
            elif action.to not in self.down:
                node = self.nodes[action.to]
                queue += [(action.to, a) for a in node.receive(self.now, sender, message)]

    def run_until(self, end: float, step: float = 0.05) -> None:
        while self.now < end:
            self.now += step
            for name, node in self.nodes.items():
                if name not in self.down:
                    self.deliver(name, node.tick(self.now))


def test_two_coordinators_and_the_witness_survive_losing_either() -> None:
    cluster = Cluster()
    cluster.run_until(12.0)
    assert len(cluster.primaries) == 1
    first, epoch = cluster.primaries[0]
    assert cluster.nodes[first].role is Role.PRIMARY
    cluster.down.add(first)  # for good
    survivor = "c2" if first == "c1" else "c1"
    cluster.run_until(30.0)
    assert cluster.primaries[-1][0] == survivor and cluster.primaries[-1][1] > epoch
    assert cluster.nodes[survivor].role is Role.PRIMARY
    assert cluster.witness.promised_to == survivor


def test_without_the_witness_two_coordinators_cannot_lose_one() -> None:
    """The reason for it: the same cluster with the witness unreachable elects nobody new."""
    cluster = Cluster()
    cluster.run_until(12.0)
    first, _ = cluster.primaries[0]
    cluster.down.add(first)
    cluster.witness = WitnessRecord(10**6, "nobody", "nobody", 10**9, DIGEST)  # never grants
    cluster.run_until(30.0)
    survivor = "c2" if first == "c1" else "c1"
    assert all(name == first for name, _ in cluster.primaries)
    assert cluster.nodes[survivor].role is not Role.PRIMARY


# ---------------------------------------------------------------- configuration


def _config(env: dict[str, str]) -> BrioConfig:
    return load_config(None, env, search=False).config


def _problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env, search=False)
    return list(caught.value.problems)


PG = {"BRIO_DATABASE_URL": "postgresql://db/brio", "BRIO_MESH_ENABLED": "true"}


def test_auto_adds_the_store_to_an_even_voter_set() -> None:
    default = _config({**PG, "BRIO_NODE_ID": "c1", "BRIO_MESH_LEASE_VOTERS": "c1,c2"})
    assert default.mesh.lease.witness == "off"
    assert default.mesh.lease_voters() == {"c1", "c2"}
    auto = {**PG, "BRIO_MESH_LEASE_WITNESS": "auto"}
    two = _config({**auto, "BRIO_NODE_ID": "c1", "BRIO_MESH_LEASE_VOTERS": "c1,c2"})
    assert two.mesh.lease_voters() == {"c1", "c2", WITNESS_ID}
    three = _config({**auto, "BRIO_NODE_ID": "c1", "BRIO_MESH_LEASE_VOTERS": "c1,c2,w1"})
    assert three.mesh.lease_voters() == {"c1", "c2", "w1"}
    forced = {**PG, "BRIO_MESH_LEASE_VOTERS": "c1,c2,w1", "BRIO_MESH_LEASE_WITNESS": "store"}
    assert WITNESS_ID in _config(forced).mesh.lease_voters()
    off = {**PG, "BRIO_MESH_LEASE_VOTERS": "c1,c2", "BRIO_MESH_LEASE_WITNESS": "off"}
    assert _config(off).mesh.lease_voters() == {"c1", "c2"}


def test_the_witness_id_is_no_node_id() -> None:
    (line,) = _problems({**PG, "BRIO_NODE_ID": "@store"})
    assert "BRIO_NODE_ID: [mesh] node_id: got '@store'; a node id cannot start with '@'" in line
    (line,) = _problems({**PG, "BRIO_MESH_LEASE_VOTERS": "c1,@store"})
    assert "voter 2 ('@store') starts with '@'" in line and "[mesh.lease] witness" in line


def test_the_witness_needs_postgresql() -> None:
    env = {"BRIO_MESH_ENABLED": "true", "BRIO_NODE_ID": "c1", "BRIO_MESH_LEASE_WITNESS": "store"}
    (line,) = _problems(env)
    assert line.endswith(
        "[mesh.lease] witness: the store can be a lease voter only on PostgreSQL: witness = "
        "'store', but the database is SQLite, a single node's file; set witness = 'off' "
        "(BRIO_MESH_LEASE_WITNESS=off), or [database] url = 'postgresql://...'"
    )
    (bad,) = _problems({**PG, "BRIO_MESH_LEASE_WITNESS": "yes"})
    assert bad.endswith("[mesh.lease] witness: got 'yes'; expected one of 'auto', 'store', 'off'")
