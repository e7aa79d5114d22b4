"""``Peers`` in virtual time: heartbeats every interval, suspected -> failed -> removed.

The probes run on trio's ``MockClock`` (pytest-trio's ``autojump_clock``: time jumps to the
next deadline whenever every task is blocked), so minutes of heartbeats take milliseconds.
The peers are a fake ``PeerCalls`` whose ``heartbeat`` answers, times out (after
``heartbeat_timeout``, as the real call does) or is refused, as the test says. The rest is
the node's own wiring (``Mesh.build``): its config, ``Membership``, settings and ``LocalNode``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import pytest
import trio
import trio.testing

from brio.core.membership import PeerState
from brio.mesh import methods, pb
from brio.mesh.calls import PeerCalls
from brio.mesh.peers import Peers
from brio.mesh.transport import MeshCallError
from tests.mesh.helpers import built_mesh

W1 = "127.0.0.3:50051"
W2 = "127.0.0.4:50051"
# the defaults of [mesh.failure_detection], written out: the times below follow from them
DETECTION = {
    "heartbeat_interval": 30.0,
    "heartbeat_timeout": 10.0,
    "suspicion_threshold": 3,
    "auto_remove_failed": True,
    "remove_delay": 300.0,
    "degraded_latency": 0.25,
}

Mode = Literal["up", "timeout", "refused"]


@dataclass
class FakePool:
    dropped: list[str] = field(default_factory=list)

    def drop(self, address: str) -> None:
        self.dropped.append(address)


class FakeCalls:
    """What ``Peers`` asks of ``PeerCalls``: ``heartbeat``, ``address_of`` and ``pool.drop``."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.mode: dict[str, Mode] = {}
        self.rtt: dict[str, float] = {}
        self.node_ids: dict[str, str] = {}
        self.beats: list[tuple[float, str]] = []  # (virtual time sent, address)
        self.pool = FakePool()

    def peer(self, address: str, node_id: str, mode: Mode = "up", rtt: float = 0.005) -> None:
        self.node_ids[address] = node_id
        self.mode[address] = mode
        self.rtt[address] = rtt

    def address_of(self, node_id: str) -> str:
        return next(a for a, n in self.node_ids.items() if n == node_id)

    async def heartbeat(self, address: str, sender: pb.NodeInfo) -> pb.HeartbeatResponse:
        self.beats.append((trio.current_time(), address))
        mode = self.mode.get(address, "refused")
        path = methods.HEARTBEAT.path
        if mode == "refused":
            raise MeshCallError(address, path, "unreachable", "Connection refused")
        if mode == "timeout":
            await trio.sleep(self.timeout)
            raise MeshCallError(address, path, "timeout", f"no answer within {self.timeout:g}s")
        await trio.sleep(self.rtt[address])
        info = pb.NodeInfo(node_id=self.node_ids[address], role="worker", address=address)
        return pb.HeartbeatResponse(responder=info)


@dataclass
class Running:
    peers: Peers
    calls: FakeCalls
    t0: float

    def state(self, address: str) -> PeerState | None:
        peer = self.peers.membership.get(address)
        return None if peer is None else peer.state

    async def at(self, seconds: float) -> None:
        """Sleep until ``seconds`` after the start (virtual time)."""
        await trio.sleep_until(self.t0 + seconds)

    def beats_to(self, address: str) -> list[float]:
        return [round(t - self.t0, 6) for t, a in self.calls.beats if a == address]


@asynccontextmanager
async def running_peers(
    tmp_path: Path, answering: dict[str, str], rtt: float = 0.005, **mesh: Any
) -> AsyncIterator[Running]:
    """``Peers.run`` with the fake calls, where ``answering`` (address: node id) answer."""
    detection = {**DETECTION, **mesh.pop("failure_detection", {})}
    async with built_mesh(tmp_path, failure_detection=detection, **mesh) as built:
        calls = FakeCalls(built.settings.heartbeat_timeout)
        for address, node_id in answering.items():
            calls.peer(address, node_id, rtt=rtt)
        peers = Peers(
            built.config.mesh, built.membership, built.settings, built.local, cast(PeerCalls, calls)
        )
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            await nursery.start(peers.run)
            yield Running(peers, calls, t0)
            nursery.cancel_scope.cancel()


async def test_a_peer_is_heartbeaten_every_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running_peers(tmp_path, {W1: "w1"}, peers=[{"address": W1, "id": "w1"}]) as run:
        await run.at(125)
        assert run.beats_to(W1) == [0, 30, 60, 90, 120]
        assert run.state(W1) is PeerState.HEALTHY
        peer = run.peers.membership.get(W1)
        assert peer is not None and peer.latency == pytest.approx(0.005)
        assert run.peers.connected() == 1


async def test_a_peer_that_stops_answering_is_suspected_failed_then_removed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running_peers(tmp_path, {W1: "w1"}, peers=[{"address": W1, "id": "w1"}]) as run:
        await run.at(45)
        assert run.state(W1) is PeerState.HEALTHY
        run.calls.mode[W1] = "timeout"  # from the heartbeat at 60 on, no answer in 10 s
        await run.at(69)
        assert run.state(W1) is PeerState.HEALTHY
        await run.at(71)
        assert run.state(W1) is PeerState.SUSPECTED  # the first miss
        await run.at(129)
        assert run.state(W1) is PeerState.SUSPECTED  # the second
        await run.at(131)
        assert run.state(W1) is PeerState.FAILED  # the third: suspicion_threshold
        assert run.peers.connected() == 0
        await run.at(429)
        assert run.state(W1) is PeerState.FAILED
        await run.at(431)
        assert run.state(W1) is PeerState.REMOVED  # failed at 130, remove_delay 300
        # configured, so it stays listed and probed, one heartbeat per interval throughout
        assert run.beats_to(W1) == [30.0 * i for i in range(15)]
        run.calls.mode[W1] = "up"
        await run.at(451)
        assert run.state(W1) is PeerState.HEALTHY  # it rejoins with its next answer
        assert run.calls.pool.dropped == []


async def test_a_peer_known_only_from_its_heartbeat_is_forgotten_once_removed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    detection = {"remove_delay": 60.0}
    async with running_peers(tmp_path, {W2: "w2"}, failure_detection=detection) as run:
        run.peers.heartbeat_received(pb.NodeInfo(node_id="w2", role="worker", address=W2))
        await run.at(1)
        assert run.state(W2) is PeerState.HEALTHY  # dialled back at once
        run.calls.mode[W2] = "refused"  # gone: every heartbeat fails at once
        await run.at(89)
        assert run.state(W2) is PeerState.SUSPECTED  # missed at 30 and 60
        await run.at(91)
        assert run.state(W2) is PeerState.FAILED  # and at 90: three in a row
        # failed at 90 (the third miss), removed 60 s later, and forgotten: no row, no
        # probe, its connection closed
        await run.at(151)
        assert run.state(W2) is None
        assert "w2" not in run.peers.known_ids()
        assert run.calls.pool.dropped == [W2]
        beats = len(run.beats_to(W2))
        await run.at(400)
        assert len(run.beats_to(W2)) == beats


async def test_a_slow_peer_is_degraded_and_ping_measures_in_virtual_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    configured = [{"address": W1, "id": "w1"}]
    async with running_peers(tmp_path, {W1: "w1"}, rtt=0.5, peers=configured) as run:
        # 0.5 s is above degraded_latency
        await run.at(1)
        assert run.state(W1) is PeerState.DEGRADED
        run.calls.rtt[W1] = 0.004
        address, rtts, lost = await run.peers.ping("w1", 3)
        assert (address, lost) == (W1, 0)
        assert rtts == pytest.approx([4.0, 4.0, 4.0])
        run.calls.mode[W1] = "refused"
        _, rtts, lost = await run.peers.ping("w1", 2)
        assert (rtts, lost) == ([], 2)
