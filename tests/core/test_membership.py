"""The failure detector: every transition and reason by example, then a Hypothesis state machine.

``MembershipMachine`` adds and drops peers, answers and misses heartbeats, receives inbound
heartbeats and ticks with time that only moves forward, on two tables at once (determinism: the
same inputs must give the same answers and snapshots). After every step it checks that each
returned change matches the before/after snapshots, and the table's invariants: the states
agree with the miss counter and latency, no node appears twice, the local node never appears.
Timings are milliseconds so that nothing here resembles production defaults by accident.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

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

from brio.core.membership import (
    Change,
    DetectorSettings,
    Membership,
    NodeFacts,
    Peer,
    PeerState,
    StateChanged,
)

UNKNOWN, HEALTHY, DEGRADED = PeerState.UNKNOWN, PeerState.HEALTHY, PeerState.DEGRADED
SUSPECTED, FAILED, REMOVED = PeerState.SUSPECTED, PeerState.FAILED, PeerState.REMOVED

LOCAL = "me"
LOCAL_ADDR = "me:50051"
A, B, C = "a:50051", "b:50051", "c:50051"

SETTINGS = DetectorSettings(
    heartbeat_interval=0.010,
    heartbeat_timeout=0.005,
    suspicion_threshold=3,
    auto_remove_failed=True,
    remove_delay=0.050,
    degraded_latency=0.020,
    latency_alpha=0.5,
)


def facts(node_id: str, address: str = "", role: str = "worker", **kw: object) -> NodeFacts:
    base = NodeFacts(
        node_id=node_id,
        role=role,
        address=address,
        version="0.1.0",
        agents=("echo",),
        active=0,
        queued=0,
        max_agents=4,
        draining=False,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def table(**overrides: object) -> Membership:
    return Membership(LOCAL, replace(SETTINGS, **overrides), local_address=LOCAL_ADDR)  # type: ignore[arg-type]


def peer(m: Membership, address: str) -> Peer:
    row = m.get(address)
    assert row is not None
    return row


def healthy(m: Membership, address: str, node_id: str, now: float = 0.0) -> None:
    m.add(address, now)
    m.heartbeat_answered(address, now, 0.001, facts(node_id, address))
    assert peer(m, address).state == HEALTHY


def failed(m: Membership, address: str, node_id: str, now: float = 0.0) -> None:
    healthy(m, address, node_id, now)
    for _ in range(SETTINGS.suspicion_threshold):
        m.heartbeat_missed(address, now)
    assert peer(m, address).state == FAILED


# -- add / drop -----------------------------------------------------------------------------


def test_add_configured_peer() -> None:
    m = table()
    assert m.add(A, 1.0, node_id="w1", role="worker", static=True) == [
        StateChanged(A, "w1", None, UNKNOWN, "added from the configured peer list")
    ]
    row = peer(m, A)
    assert row == Peer(
        address=A,
        node_id="w1",
        role="worker",
        state=UNKNOWN,
        state_since=1.0,
        last_seen=None,
        latency=None,
        missed=0,
        facts=None,
        static=True,
    )
    assert m.by_node_id("w1") == row
    assert m.known_nodes() == {"w1": UNKNOWN}


def test_add_discovered_peer() -> None:
    m = table()
    assert m.add(A, 0.0) == [StateChanged(A, None, None, UNKNOWN, "found by discovery")]
    assert not peer(m, A).static
    assert m.known_nodes() == {}


def test_add_is_idempotent_and_may_upgrade() -> None:
    m = table()
    m.add(A, 0.0)
    assert m.add(A, 0.005) == []
    assert peer(m, A).state_since == 0.0
    assert m.add(A, 0.006, node_id="w1", role="coordinator", static=True) == []
    row = peer(m, A)
    assert (row.node_id, row.role, row.static) == ("w1", "coordinator", True)
    # Known values are not overwritten, and static never goes back to False.
    assert m.add(A, 0.007, node_id="w2", role="worker", static=False) == []
    row = peer(m, A)
    assert (row.node_id, row.role, row.static) == ("w1", "coordinator", True)


def test_add_ignores_the_local_node() -> None:
    m = table()
    assert m.add(LOCAL_ADDR, 0.0) == []
    assert m.add(A, 0.0, node_id=LOCAL) == []
    assert m.peers() == []


def test_add_does_not_claim_a_node_id_another_row_has() -> None:
    m = table()
    healthy(m, A, "w1")
    assert m.add(B, 0.001, node_id="w1") == [
        StateChanged(B, None, None, UNKNOWN, "found by discovery")
    ]
    assert peer(m, B).node_id is None
    assert peer(m, A).node_id == "w1"


def test_drop_forgets_a_discovered_peer() -> None:
    m = table()
    healthy(m, A, "w1")
    assert m.drop(A, 0.002) == [
        StateChanged(A, "w1", HEALTHY, None, "no longer listed by discovery")
    ]
    assert m.get(A) is None
    assert m.by_node_id("w1") is None
    assert m.drop(A, 0.003) == []


def test_drop_keeps_a_static_peer() -> None:
    m = table()
    m.add(A, 0.0, static=True)
    assert m.drop(A, 0.001) == []
    assert m.get(A) is not None


# -- answered ---------------------------------------------------------------------------------


def test_first_answer_makes_healthy() -> None:
    m = table()
    m.add(A, 0.0)
    f = facts("w1", A, role="coordinator")
    assert m.heartbeat_answered(A, 0.010, 0.002, f) == [
        StateChanged(A, "w1", UNKNOWN, HEALTHY, "answered its first heartbeat")
    ]
    row = peer(m, A)
    assert (row.node_id, row.role, row.facts) == ("w1", "coordinator", f)
    assert (row.state_since, row.last_seen, row.latency, row.missed) == (0.010, 0.010, 0.002, 0)
    assert m.connected() == 1


def test_slow_first_answer_makes_degraded() -> None:
    m = table()
    m.add(A, 0.0)
    assert m.heartbeat_answered(A, 0.010, 0.030, facts("w1", A)) == [
        StateChanged(
            A,
            "w1",
            UNKNOWN,
            DEGRADED,
            "answered its first heartbeat, slowly: smoothed latency 30 ms is above 20 ms",
        )
    ]
    assert m.connected() == 1


def test_latency_is_an_ewma_and_drives_degraded() -> None:
    m = table()  # alpha 0.5, limit 20 ms
    m.add(A, 0.0)
    m.heartbeat_answered(A, 0.0, 0.010, facts("w1", A))
    assert m.heartbeat_answered(A, 0.01, 0.050, facts("w1", A)) == [
        StateChanged(A, "w1", HEALTHY, DEGRADED, "smoothed latency 30 ms is above 20 ms")
    ]
    assert peer(m, A).latency == pytest.approx(0.030)
    assert m.heartbeat_answered(A, 0.02, 0.020, facts("w1", A)) == []  # 25 ms: still slow
    assert m.heartbeat_answered(A, 0.03, 0.010, facts("w1", A)) == [
        StateChanged(A, "w1", DEGRADED, HEALTHY, "smoothed latency 17.5 ms is back within 20 ms")
    ]
    assert peer(m, A).latency == pytest.approx(0.0175)
    assert peer(m, A).state_since == 0.03


def test_latency_exactly_at_the_limit_is_healthy() -> None:
    m = table()
    m.add(A, 0.0)
    m.heartbeat_answered(A, 0.0, 0.020, facts("w1", A))
    assert peer(m, A).state == HEALTHY


def test_bad_rtt_samples() -> None:
    m = table()
    m.add(A, 0.0)
    m.heartbeat_answered(A, 0.0, -0.5, facts("w1", A))
    assert peer(m, A).latency == 0.0
    m.heartbeat_answered(A, 0.0, math.nan, facts("w1", A))
    m.heartbeat_answered(A, 0.0, math.inf, facts("w1", A))
    assert peer(m, A).latency == 0.0
    m.add(B, 0.0)
    m.heartbeat_answered(B, 0.0, math.nan, facts("w2", B))
    assert (peer(m, B).state, peer(m, B).latency) == (HEALTHY, None)


def test_answer_after_misses_clears_suspicion() -> None:
    m = table()
    healthy(m, A, "w1")
    m.heartbeat_missed(A, 0.01)
    m.heartbeat_missed(A, 0.02)
    assert m.heartbeat_answered(A, 0.03, 0.001, facts("w1", A)) == [
        StateChanged(A, "w1", SUSPECTED, HEALTHY, "answered again after 2 heartbeats missed")
    ]
    assert peer(m, A).missed == 0


def test_failed_peer_rejoins() -> None:
    m = table()
    failed(m, A, "w1")
    assert m.heartbeat_answered(A, 0.01, 0.001, facts("w1", A)) == [
        StateChanged(A, "w1", FAILED, HEALTHY, "rejoined: answered again after being failed")
    ]


def test_removed_peer_rejoins_slowly() -> None:
    m = table()
    failed(m, A, "w1")
    m.tick(1.0)
    assert peer(m, A).state == REMOVED
    assert m.heartbeat_answered(A, 1.5, 0.100, facts("w1", A)) == [
        StateChanged(
            A,
            "w1",
            REMOVED,
            DEGRADED,
            "rejoined: answered again after being removed, slowly: "
            "smoothed latency 50.5 ms is above 20 ms",
        )
    ]


def test_answer_from_ourselves_forgets_the_row() -> None:
    m = table()
    m.add(A, 0.0, static=True)
    assert m.heartbeat_answered(A, 0.01, 0.001, facts(LOCAL, A)) == [
        StateChanged(A, None, UNKNOWN, None, "this is the local node")
    ]
    assert m.peers() == []
    assert m.known_nodes() == {}


def test_node_answering_at_a_new_address_forgets_the_old_one() -> None:
    m = table()
    m.add(A, 0.0, node_id="w1", static=True)
    m.add(B, 0.0)
    assert m.heartbeat_answered(B, 0.01, 0.001, facts("w1", B)) == [
        StateChanged(
            A, "w1", UNKNOWN, None, f"node 'w1' now answers at {B}; forgetting its old address {A}"
        ),
        StateChanged(B, "w1", UNKNOWN, HEALTHY, "answered its first heartbeat"),
    ]
    assert m.get(A) is None
    assert m.by_node_id("w1") == peer(m, B)
    assert peer(m, B).static  # a configured node stays configured at its new address


def test_new_node_at_a_known_address() -> None:
    m = table()
    healthy(m, A, "w1")
    m.heartbeat_missed(A, 0.01)
    assert m.heartbeat_answered(A, 0.02, 0.030, facts("w2", A)) == [
        StateChanged(
            A, "w1", SUSPECTED, None, f"{A} now answers as node 'w2'; node 'w1' is no longer there"
        ),
        StateChanged(
            A,
            "w2",
            None,
            DEGRADED,
            "answered its first heartbeat, slowly: smoothed latency 30 ms is above 20 ms",
        ),
    ]
    assert m.known_nodes() == {"w2": DEGRADED}
    assert peer(m, A).latency == 0.030  # the old node's latency is not carried over


def test_answer_from_an_unknown_address_is_ignored() -> None:
    m = table()
    assert m.heartbeat_answered(A, 0.0, 0.001, facts("w1", A)) == []
    assert m.peers() == []


# -- missed -----------------------------------------------------------------------------------


def test_misses_suspect_then_fail() -> None:
    m = table()
    healthy(m, A, "w1")
    assert m.heartbeat_missed(A, 0.01) == [
        StateChanged(A, "w1", HEALTHY, SUSPECTED, "missed 1 heartbeat; failed after 3 in a row")
    ]
    assert m.heartbeat_missed(A, 0.02) == []
    assert (peer(m, A).missed, peer(m, A).state_since) == (2, 0.01)
    assert m.heartbeat_missed(A, 0.03) == [
        StateChanged(A, "w1", SUSPECTED, FAILED, "missed 3 heartbeats in a row")
    ]
    assert m.heartbeat_missed(A, 0.04) == []
    row = peer(m, A)
    assert (row.state, row.missed, row.state_since, row.last_seen) == (FAILED, 4, 0.03, 0.0)
    assert m.connected() == 0


def test_degraded_peer_is_suspected_too() -> None:
    m = table()
    m.add(A, 0.0)
    m.heartbeat_answered(A, 0.0, 0.5, facts("w1", A))
    assert m.heartbeat_missed(A, 0.01) == [
        StateChanged(A, "w1", DEGRADED, SUSPECTED, "missed 1 heartbeat; failed after 3 in a row")
    ]


def test_threshold_one_fails_straight_away() -> None:
    m = table(suspicion_threshold=1)
    healthy(m, A, "w1")
    assert m.heartbeat_missed(A, 0.01) == [
        StateChanged(A, "w1", HEALTHY, FAILED, "missed a heartbeat")
    ]


def test_threshold_two_from_suspected() -> None:
    m = table(suspicion_threshold=2)
    healthy(m, A, "w1")
    m.heartbeat_missed(A, 0.01)
    assert m.heartbeat_missed(A, 0.02) == [
        StateChanged(A, "w1", SUSPECTED, FAILED, "missed 2 heartbeats in a row")
    ]


def test_never_answered_peer_stays_unknown() -> None:
    m = table()
    m.add(A, 0.0)
    for i in range(5):
        assert m.heartbeat_missed(A, i * 0.01) == []
    assert (peer(m, A).state, peer(m, A).missed) == (UNKNOWN, 5)
    assert m.heartbeat_missed(B, 0.1) == []


# -- received ---------------------------------------------------------------------------------


def test_inbound_heartbeat_from_a_new_node_adds_it() -> None:
    m = table()
    f = facts("w1", A, role="coordinator")
    assert m.heartbeat_received(f, 0.5) == [
        StateChanged(A, "w1", None, UNKNOWN, "node 'w1' sent us a heartbeat; dialling it back")
    ]
    row = peer(m, A)
    assert (row.node_id, row.role, row.facts, row.static, row.last_seen) == (
        "w1",
        "coordinator",
        f,
        False,
        None,
    )


def test_inbound_heartbeat_updates_facts_not_state() -> None:
    m = table()
    failed(m, A, "w1")
    f = facts("w1", B, active=3, draining=True)
    assert m.heartbeat_received(f, 0.02) == []
    row = peer(m, A)
    assert (row.state, row.facts, row.address) == (FAILED, f, A)
    assert m.get(B) is None


def test_inbound_heartbeat_names_a_row_by_address() -> None:
    m = table()
    m.add(A, 0.0, static=True)
    assert m.heartbeat_received(facts("w1", A), 0.01) == []
    row = peer(m, A)
    assert (row.node_id, row.state, row.facts) == ("w1", UNKNOWN, facts("w1", A))


def test_inbound_heartbeat_does_not_rename_a_probed_row() -> None:
    m = table()
    healthy(m, A, "w1")
    assert m.heartbeat_received(facts("w2", A), 0.01) == []
    assert peer(m, A).node_id == "w1"
    assert m.by_node_id("w2") is None


def test_inbound_heartbeat_from_ourselves_or_nowhere_is_ignored() -> None:
    m = table()
    assert m.heartbeat_received(facts(LOCAL, A), 0.0) == []
    assert m.heartbeat_received(facts("w1", ""), 0.0) == []
    assert m.heartbeat_received(facts("w1", LOCAL_ADDR), 0.0) == []
    assert m.peers() == []


def test_removed_node_coming_back_after_being_dropped() -> None:
    m = table()
    failed(m, A, "w1")
    m.tick(1.0)
    m.drop(A, 1.0)
    assert m.heartbeat_received(facts("w1", A), 2.0) == [
        StateChanged(A, "w1", None, UNKNOWN, "node 'w1' sent us a heartbeat; dialling it back")
    ]


# -- tick -------------------------------------------------------------------------------------


def test_failed_peer_is_removed_after_the_delay() -> None:
    m = table()
    assert m.next_deadline() is None
    failed(m, A, "w1", now=0.010)
    assert m.next_deadline() == pytest.approx(0.060)
    assert m.tick(0.059) == []
    assert m.tick(0.0605) == [
        StateChanged(
            A,
            "w1",
            FAILED,
            REMOVED,
            "failed for 50.5 ms (remove_delay 50 ms); removed from the pool",
        )
    ]
    row = peer(m, A)
    assert (row.state, row.state_since) == (REMOVED, 0.0605)
    assert m.next_deadline() is None
    assert m.tick(10.0) == []
    assert m.known_nodes() == {"w1": REMOVED}


def test_long_delays_read_in_seconds() -> None:
    m = table(remove_delay=300.0)
    failed(m, A, "w1")
    assert m.tick(312.4)[0].reason == (
        "failed for 312 s (remove_delay 300 s); removed from the pool"
    )


def test_zero_delay_removes_at_the_next_tick() -> None:
    m = table(remove_delay=0.0)
    failed(m, A, "w1", now=0.5)
    assert m.next_deadline() == 0.5
    assert [c.new for c in m.tick(0.5)] == [REMOVED]


def test_no_removal_without_auto_remove() -> None:
    m = table(auto_remove_failed=False)
    failed(m, A, "w1")
    assert m.next_deadline() is None
    assert m.tick(1000.0) == []
    assert peer(m, A).state == FAILED


def test_next_deadline_is_the_earliest() -> None:
    m = table()
    failed(m, B, "w2", now=0.010)
    failed(m, A, "w1", now=0.030)
    healthy(m, C, "w3", now=0.040)
    assert m.next_deadline() == pytest.approx(0.060)
    assert [c.address for c in m.tick(0.065)] == [B]
    assert m.next_deadline() == pytest.approx(0.080)


# -- queries and odds ---------------------------------------------------------------------------


def test_peers_sort_by_node_id_or_address() -> None:
    m = table()
    m.add("z:1", 0.0)
    m.add("y:1", 0.0, node_id="b")
    m.add("x:1", 0.0, node_id="c")
    m.add("a:1", 0.0)
    assert [p.address for p in m.peers()] == ["a:1", "y:1", "x:1", "z:1"]
    assert list(m.known_nodes()) == ["b", "c"]


def test_time_never_runs_backwards() -> None:
    m = table()
    m.add(A, 1.0)
    m.heartbeat_answered(A, 0.5, 0.001, facts("w1", A))
    row = peer(m, A)
    assert (row.state_since, row.last_seen) == (1.0, 1.0)


def test_change_is_an_alias() -> None:
    assert Change is StateChanged


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("suspicion_threshold", 0),
        ("latency_alpha", 0.0),
        ("latency_alpha", 1.5),
        ("remove_delay", -1.0),
    ],
)
def test_settings_are_checked(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        replace(SETTINGS, **{field: value})  # type: ignore[arg-type]


# -- the state machine --------------------------------------------------------------------------

ADDRESSES = (A, B, C, "d:50051", LOCAL_ADDR)
NODE_IDS = ("n1", "n2", "n3", LOCAL)
ROLES = ("coordinator", "worker")

addresses = st.sampled_from(ADDRESSES)
node_ids = st.sampled_from(NODE_IDS)
facts_st = st.builds(
    facts,
    node_id=node_ids,
    address=st.sampled_from((*ADDRESSES, "")),
    role=st.sampled_from(ROLES),
    active=st.integers(0, 3),
    draining=st.booleans(),
)
# RTTs around the 20 ms degraded limit, a few of them exactly on it.
rtts = st.one_of(st.floats(0.0, 0.060), st.just(0.020))


class MembershipMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.settings = SETTINGS
        self.m = Membership(LOCAL, SETTINGS)
        self.twin = Membership(LOCAL, SETTINGS)

    @initialize(
        threshold=st.integers(1, 4),
        auto_remove=st.booleans(),
        remove_delay=st.sampled_from((0.0, 0.005, 0.030)),
        alpha=st.sampled_from((0.3, 1.0)),
        local_address=st.sampled_from((None, LOCAL_ADDR)),
    )
    def setup(
        self,
        threshold: int,
        auto_remove: bool,
        remove_delay: float,
        alpha: float,
        local_address: str | None,
    ) -> None:
        self.settings = replace(
            SETTINGS,
            suspicion_threshold=threshold,
            auto_remove_failed=auto_remove,
            remove_delay=remove_delay,
            latency_alpha=alpha,
        )
        self.local_address = local_address
        self.m = Membership(LOCAL, self.settings, local_address=local_address)
        self.twin = Membership(LOCAL, self.settings, local_address=local_address)

    def apply(self, name: str, *args: object, **kwargs: object) -> list[StateChanged]:
        """Run one input on both tables and check the changes against the snapshots."""
        before = {p.address: p for p in self.m.peers()}
        changes: list[StateChanged] = getattr(self.m, name)(*args, **kwargs)
        twin_changes: list[StateChanged] = getattr(self.twin, name)(*args, **kwargs)
        assert changes == twin_changes
        assert self.m.peers() == self.twin.peers()
        after = {p.address: p for p in self.m.peers()}
        self.check_changes(before, after, changes)
        return changes

    def check_changes(
        self, before: dict[str, Peer], after: dict[str, Peer], changes: list[StateChanged]
    ) -> None:
        by_address: dict[str, list[StateChanged]] = {}
        for change in changes:
            event(f"{change.old} -> {change.new}")  # see --hypothesis-show-statistics
            assert change.old != change.new
            assert change.reason
            by_address.setdefault(change.address, []).append(change)
        for address in before.keys() | after.keys():
            was, now = before.get(address), after.get(address)
            chain = by_address.get(address, [])
            if not chain:
                # Nothing appears, disappears or changes state silently.
                assert (was is None) == (now is None)
                if was is not None and now is not None:
                    assert (was.state, was.state_since) == (now.state, now.state_since)
                continue
            assert chain[0].old == (was.state if was else None)
            for first, second in itertools.pairwise(chain):
                assert first.new == second.old
            assert chain[-1].new == (now.state if now else None)
            if now is not None:
                assert chain[-1].node_id == now.node_id
                assert now.state_since == self.now
            if was is not None and chain[0].node_id is not None and was.node_id is not None:
                assert chain[0].node_id == was.node_id
            for change in chain:
                if change.new == REMOVED:
                    assert change.old == FAILED
                    assert was is not None
                    assert self.settings.auto_remove_failed
                    assert self.now >= was.state_since + self.settings.remove_delay
        assert not (by_address.keys() - before.keys() - after.keys())

    @rule(dt=st.sampled_from((0.0, 0.001, 0.005, 0.010, 0.040)))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(
        address=addresses,
        node_id=st.none() | node_ids,
        role=st.none() | st.sampled_from(ROLES),
        static=st.booleans(),
    )
    def add(self, address: str, node_id: str | None, role: str | None, static: bool) -> None:
        had = self.m.get(address)
        self.apply("add", address, self.now, node_id=node_id, role=role, static=static)
        row = self.m.get(address)
        if address == self.local_address or node_id == LOCAL:
            assert row == had
        else:
            assert row is not None
            assert row.static == (static or (had is not None and had.static))

    @rule(address=addresses)
    def drop(self, address: str) -> None:
        had = self.m.get(address)
        self.apply("drop", address, self.now)
        if had is not None and had.static:
            assert self.m.get(address) is not None
        else:
            assert self.m.get(address) is None

    @rule(address=addresses, rtt=rtts, f=facts_st)
    def answered(self, address: str, rtt: float, f: NodeFacts) -> None:
        had = self.m.get(address)
        self.apply("heartbeat_answered", address, self.now, rtt, f)
        row = self.m.get(address)
        if had is None or f.node_id == LOCAL:
            assert row is None
        else:
            assert row is not None
            assert (row.missed, row.last_seen, row.facts, row.node_id) == (
                0,
                self.now,
                f,
                f.node_id,
            )
            assert row.state in (HEALTHY, DEGRADED)

    @rule(address=addresses)
    def missed(self, address: str) -> None:
        had = self.m.get(address)
        self.apply("heartbeat_missed", address, self.now)
        row = self.m.get(address)
        if had is None:
            assert row is None
        else:
            assert row is not None
            assert row.missed == had.missed + 1

    # The rules above pick addresses and node ids blindly, which mostly churns identities. These
    # follow the rows that exist, so that long runs of misses, failures, removals and rejoins
    # happen often.

    @precondition(lambda self: bool(self.m.peers()))
    @rule(data=st.data(), rtt=rtts)
    def answered_as_itself(self, data: st.DataObject, rtt: float) -> None:
        row = data.draw(st.sampled_from(self.m.peers()))
        node_id = row.node_id or data.draw(node_ids.filter(lambda n: n != LOCAL))
        self.apply("heartbeat_answered", row.address, self.now, rtt, facts(node_id, row.address))
        after = self.m.by_node_id(node_id)
        assert after is not None
        assert after.address == row.address

    @precondition(lambda self: bool(self.m.peers()))
    @rule(data=st.data(), times=st.integers(1, 5))
    def missed_in_a_row(self, data: st.DataObject, times: int) -> None:
        row = data.draw(st.sampled_from(self.m.peers()))
        for _ in range(times):
            self.apply("heartbeat_missed", row.address, self.now)
            self.now += 0.001
            self.rows_are_consistent()

    @rule(f=facts_st)
    def received(self, f: NodeFacts) -> None:
        before = self.m.peers()
        self.apply("heartbeat_received", f, self.now)
        after = self.m.peers()
        # Never a state change, never a row lost; at most one new row.
        states = {p.address: p.state for p in after}
        assert all(states[p.address] == p.state for p in before)
        assert len(after) - len(before) in (0, 1)

    @rule()
    def tick(self) -> None:
        self.apply("tick", self.now)
        deadline = self.m.next_deadline()
        assert deadline is None or deadline > self.now

    @precondition(lambda self: self.m.next_deadline() is not None)
    @rule()
    def tick_at_deadline(self) -> None:
        deadline = self.m.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline)
        assert any(c.new == REMOVED for c in self.apply("tick", self.now))

    @invariant()
    def rows_are_consistent(self) -> None:
        s = self.settings
        peers = self.m.peers()
        keys = [(p.node_id or p.address, p.address) for p in peers]
        assert keys == sorted(keys)
        ids = [p.node_id for p in peers if p.node_id is not None]
        assert len(ids) == len(set(ids))
        assert LOCAL not in ids
        assert self.local_address is None or self.m.get(self.local_address) is None
        assert self.m.known_nodes() == {p.node_id: p.state for p in peers if p.node_id}
        assert self.m.connected() == sum(p.state in (HEALTHY, DEGRADED) for p in peers)
        failed_due = [p.state_since + s.remove_delay for p in peers if p.state == FAILED]
        expected = min(failed_due) if failed_due and s.auto_remove_failed else None
        assert self.m.next_deadline() == expected
        for p in peers:
            assert self.m.get(p.address) == p
            if p.node_id is not None:
                assert self.m.by_node_id(p.node_id) == p
            assert p.state_since <= self.now
            assert p.last_seen is None or p.last_seen <= self.now
            assert p.latency is None or p.latency >= 0
            assert p.missed >= 0
            if p.state in (HEALTHY, DEGRADED):
                assert p.missed == 0
                assert p.last_seen is not None
                slow = p.latency is not None and p.latency > s.degraded_latency
                assert (p.state == DEGRADED) == slow
            elif p.state == SUSPECTED:
                assert 1 <= p.missed < s.suspicion_threshold
            elif p.state == FAILED:
                assert p.missed >= s.suspicion_threshold
            elif p.state == REMOVED:
                assert s.auto_remove_failed
                assert p.missed >= s.suspicion_threshold
            else:
                assert p.state == UNKNOWN
                assert p.last_seen is None
                assert p.latency is None


def test_membership_state_machine() -> None:
    run_state_machine_as_test(
        MembershipMachine,
        settings=settings(
            max_examples=500,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
