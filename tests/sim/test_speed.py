"""The simulator's speed-ups compute what the code they replaced computed.

Each hot spot written out for speed keeps a slower, obvious twin here: the jitter draw is
``random.expovariate``'s, a link without impairments draws what the impairments' tests draw at
0, the membership table's index of failed rows gives the deadline a scan of every row gives, its
rows rebuilt without ``dataclasses.replace`` are the rows replace builds, and the lazily
formatted trace reads as the eagerly formatted one did.
"""

from __future__ import annotations

import math
import random
from dataclasses import FrozenInstanceError, replace
from functools import partial

import pytest

from brio.core.lease import RenewRequest
from brio.core.membership import DetectorSettings, Membership, NodeFacts, Peer, PeerState, _with
from sim.clock import Clock
from sim.network import BASE_LATENCY, JITTER, Network
from sim.trace import Trace
from sim.wire import describe, passing


def test_the_jitter_draw_is_expovariates() -> None:
    network = Network(["a", "b"], random.Random("links"))
    twin = random.Random("links")
    base = twin.uniform(*BASE_LATENCY)  # the links are drawn in the order built: a->b first
    twin.uniform(*BASE_LATENCY)
    draws = random.Random("draws")
    mirror = random.Random("draws")
    for _ in range(1000):
        (delay,) = network.transit("a", "b", draws)
        assert delay == base + mirror.expovariate(1 / JITTER)


def _true_at_as_it_was(clock: Clock, local_time: float) -> float:
    t = (local_time - clock.offset) / clock.rate
    while clock.local(t) < local_time:
        t = math.nextafter(t, math.inf)
    return t


def test_true_at_is_what_it_was() -> None:
    rng = random.Random("clocks")
    for _ in range(5000):
        clock = Clock(rng.uniform(0, 10_000), rng.uniform(0.95, 1.05))
        local = rng.uniform(0, 20_000)
        assert clock.true_at(local) == _true_at_as_it_was(clock, local)
        assert clock.local(clock.true_at(local)) >= local


def _facts(node: str) -> NodeFacts:
    return NodeFacts(node, "worker", f"{node}:1", "v", ("echo",), 0, 0, 2, False)


def _scanned_deadline(table: Membership, delay: float) -> float | None:
    due = [p.state_since + delay for p in table.peers() if p.state is PeerState.FAILED]
    return min(due) if due else None


def test_next_deadline_agrees_with_a_scan_of_every_row() -> None:
    settings = DetectorSettings(
        heartbeat_interval=1.0,
        heartbeat_timeout=0.4,
        suspicion_threshold=2,
        auto_remove_failed=True,
        remove_delay=3.0,
        degraded_latency=0.25,
    )
    rng = random.Random("membership")
    peers = [f"n{i}" for i in range(6)]
    for _ in range(20):
        table = Membership("me", settings, local_address="me:1")
        now = 0.0
        for peer in peers[:4]:
            table.add(f"{peer}:1", now, node_id=peer, static=rng.random() < 0.5)
        for _ in range(300):
            now += rng.uniform(0.0, 0.7)
            peer = rng.choice(peers)
            move = rng.random()
            if move < 0.35:
                table.heartbeat_missed(f"{peer}:1", now)
            elif move < 0.65:
                table.heartbeat_answered(f"{peer}:1", now, rng.uniform(0, 0.4), _facts(peer))
            elif move < 0.8:
                table.heartbeat_received(_facts(peer), now)
            elif move < 0.9:
                table.tick(now)
            else:
                table.drop(f"{peer}:1", now)
            assert table.next_deadline() == _scanned_deadline(table, settings.remove_delay)


def test_heartbeat_received_with_the_same_facts_keeps_the_row() -> None:
    settings = DetectorSettings(1.0, 0.4, 3, True, 10.0, 0.25)
    table = Membership("me", settings)
    table.add("a:1", 0.0, node_id="a", role="worker", static=True)
    table.heartbeat_received(_facts("a"), 1.0)
    row = table.get("a:1")
    table.heartbeat_received(_facts("a"), 2.0)  # equal facts, another object
    assert table.get("a:1") is row
    changed = NodeFacts("a", "worker", "a:1", "v2", ("echo",), 1, 0, 2, False)
    table.heartbeat_received(changed, 3.0)
    after = table.get("a:1")
    assert after is not None and after.facts == changed


def test_the_trace_reads_as_it_was_formatted() -> None:
    trace = Trace(keep_all=False)
    for i in range(300):
        trace.add(i * 0.001234567, f"c{i % 3}", f"event {i}")
    lines = trace.lines()
    assert len(lines) == 200
    assert lines[0] == f"{100 * 0.001234567:11.6f}  c1     event 100"
    assert lines[-1] == f"{299 * 0.001234567:11.6f}  c2     event 299"
    request = RenewRequest(term=3, leader="c1", round=7, voters_digest="d")
    trace.add(1.5, "w1", partial(passing, "<-", "c1", request, ": lost"))
    assert trace.lines()[-1] == f"{1.5:11.6f}  w1     <- c1 {describe(request)}: lost"


def test_a_row_rebuilt_by_with_is_the_row_replace_builds() -> None:
    row = Peer("a:1", "a", "worker", PeerState.HEALTHY, 1.0, 2.0, 0.1, 0, _facts("a"), True)
    changes: list[dict[str, object]] = [
        {"missed": 2},
        {"missed": 3, "state": PeerState.FAILED, "state_since": 5.0},
        {"role": "coordinator", "facts": _facts("b")},
        {"node_id": "b", "last_seen": 7.0, "latency": None, "missed": 0, "static": False},
    ]
    for change in changes:
        rebuilt = _with(row, **change)
        assert rebuilt == replace(row, **change)  # type: ignore[arg-type]
        assert type(rebuilt) is Peer and hash(rebuilt) == hash(replace(row, **change))  # type: ignore[arg-type]
        with pytest.raises(FrozenInstanceError):
            rebuilt.missed = 9  # type: ignore[misc]


def test_a_link_without_impairments_skips_only_their_tests() -> None:
    fast = Network(["a", "b"], random.Random("links"))
    slow = Network(["a", "b"], random.Random("links"))
    slow._links[("a", "b")].impaired = True  # every impairment at 0, tested one by one
    draws, mirror = random.Random("draws"), random.Random("draws")
    for _ in range(1000):
        assert fast.transit("a", "b", draws) == slow.transit("a", "b", mirror)
