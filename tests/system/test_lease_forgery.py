"""Forged lease messages against a real cluster of three coordinators (processes, PostgreSQL).

Issue 11 item 1: one forged ``Renew`` with term 2^63 sent to each voter made every voter adopt
and persist it (the next primary's fence then failed forever); 2^64 - 1 wrapped to 0; a leader
named "ghost", re-sent every 3 s, kept the cluster leaderless; with mTLS, any certificate of
the cluster's CA could name itself leader. Each test replays those forgeries and shows, by
polling every coordinator's ``/health``, that one primary holds its epoch throughout, that no
voter took the forged term, and that each forgery is refused and logged.

- ``insecure = true`` (no TLS, no secret: the forger can claim any node id): bounds on terms,
  and leaders that are not configured candidates, are refused anyway.
- ``cluster_secret``: an unsigned or wrongly signed message is refused before the handler;
  one signed with the secret is still held to the term bounds and the candidate list.
- mTLS: a valid certificate for a node that is not a candidate may not name itself leader,
  nor anyone else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from brio import aio
from brio.config.model import TLSConfig
from brio.core.lease import voters_digest
from brio.mesh import methods, pb
from brio.mesh.methods import Method
from brio.mesh.tls import client_context
from brio.mesh.transport import ChannelPool, ClusterAuth, MeshCallError, TransportStats
from tests.certs import make_cluster_certs, tls_config
from tests.pg import PostgresServer
from tests.system.cluster import MeshNode, wait_for, write_cluster

pytestmark = pytest.mark.postgres

LEASE = 2.0
ELECTION_TIMEOUT = [0.3, 0.8]
SECRET = "forgery-test-secret-0123456789abcdef"
HUGE = [2**63, 2**64 - 1]


@dataclass
class Watch:
    """Polls every coordinator's /health in a thread: who says primary, under which epoch."""

    nodes: list[MeshNode]
    samples: list[dict[str, tuple[str, int] | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=1) as client:
            while not self.stop.is_set():
                sample: dict[str, tuple[str, int] | None] = {}
                for node in self.nodes:
                    assert node.http_url is not None
                    try:
                        h = client.get(node.http_url + "/health").json()
                        sample[node.node_id] = (h["role"], int(h["epoch"]))
                    except (httpx.HTTPError, ValueError, KeyError):
                        sample[node.node_id] = None
                self.samples.append(sample)
                self.stop.wait(0.2)

    def primaries(self) -> set[tuple[str, int]]:
        return {(n, v[1]) for s in self.samples for n, v in s.items() if v and v[0] == "primary"}

    def leaderless(self) -> int:
        """Polls in which no coordinator said primary."""
        return sum(1 for s in self.samples if not any(v and v[0] == "primary" for v in s.values()))


@contextmanager
def watching(nodes: list[MeshNode]) -> Iterator[Watch]:
    watch = Watch(nodes)
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        watch.stop.set()
        thread.join(5)


def health(node: MeshNode) -> dict[str, Any]:
    assert node.http_url is not None
    body: dict[str, Any] = httpx.get(node.http_url + "/health", timeout=2).json()
    return body


def wait_primary(nodes: dict[str, MeshNode]) -> tuple[str, int]:
    def check() -> tuple[str, int] | None:
        found = []
        for n in nodes.values():
            try:
                h = health(n)
            except httpx.HTTPError:
                return None
            if h["role"] == "primary":
                found.append((n.node_id, int(h["epoch"])))
        return found[0] if len(found) == 1 else None

    result: tuple[str, int] = wait_for("one primary", check, 40)
    return result


@contextmanager
def cluster(
    base: Path, pg: PostgresServer, name: str, ips: dict[str, str], mesh: dict[str, Any], tls: Any
) -> Iterator[dict[str, MeshNode]]:
    database = pg.create_database(name)
    tables: dict[str, dict[str, Any]] = {
        "mesh.failure_detection": {
            "heartbeat_interval": 0.25,
            "heartbeat_timeout": 1.0,
            "suspicion_threshold": 3,
            "degraded_latency": 2.0,
        },
        "mesh.lease": {"lease_duration": LEASE, "election_timeout": ELECTION_TIMEOUT},
    }
    roles = dict.fromkeys(ips, "coordinator")
    nodes = write_cluster(base, ips, roles, database, tls, tables, mesh)
    try:
        for node in nodes.values():
            node.start()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()
        pg.drop_database(name)


@dataclass
class Forger:
    """Sends lease requests as whoever it likes, with brio's own client."""

    as_node: str
    auth: ClusterAuth | None = None
    tls: TLSConfig | None = None
    timings: list[float] = field(default_factory=list)
    pool: ChannelPool | None = None

    async def send(self, address: str, method: Method, request: Any) -> str:
        """The gRPC status that refused the request, or "OK: <reply>". The time it took is
        kept for requests over a connection already open (the first one opens it)."""
        fresh = self.pool is None
        if self.pool is None:
            context = client_context(self.tls) if self.tls is not None else None
            self.pool = ChannelPool(context, self.as_node, TransportStats(auth=self.auth))
        connected = address in self.pool._channels
        started = time.monotonic()
        try:
            reply = await self.pool.unary(address, method.path, request, method.reply, 5.0)
        except MeshCallError as exc:
            return f"{exc.status}: {exc.detail}"
        finally:
            if connected and not fresh:
                self.timings.append(time.monotonic() - started)
        return f"OK: {reply}"

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def renew(term: int, leader: str, voters: list[str]) -> pb.LeaseRenewRequest:
    return pb.LeaseRenewRequest(
        term=term, leader=leader, round=1, voters_digest=voters_digest(voters)
    )


def vote(term: int, candidate: str, voters: list[str]) -> pb.LeaseVoteRequest:
    return pb.LeaseVoteRequest(
        term=term, candidate=candidate, pre_vote=False, round=1, voters_digest=voters_digest(voters)
    )


def assert_held(watch: Watch, nodes: dict[str, MeshNode], primary: str, epoch: int) -> None:
    print(
        f"\n{len(watch.samples)} polls of /health: primaries seen {sorted(watch.primaries())}, "
        f"{watch.leaderless()} poll(s) without one"
    )
    assert watch.primaries() == {(primary, epoch)}, watch.primaries()
    assert watch.leaderless() == 0
    for node in nodes.values():
        assert health(node)["epoch"] == epoch, (node.node_id, health(node))


def assert_logged(nodes: dict[str, MeshNode], *needles: str) -> None:
    logs = "\n".join(n.log() for n in nodes.values())
    for needle in needles:
        assert needle in logs, f"{needle!r} not in the nodes' logs"


def print_timings(what: str, forger: Forger) -> None:
    t = sorted(forger.timings)
    print(
        f"{what}: {len(t)} forged requests refused in {t[len(t) // 2] * 1000:.1f} ms (median), "
        f"{t[-1] * 1000:.1f} ms at most"
    )


async def test_forgeries_without_credentials_on_an_insecure_mesh(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    ips = {"c1": "127.0.0.41", "c2": "127.0.0.42", "c3": "127.0.0.43"}
    voters = sorted(ips)
    tls: dict[str, dict[str, Any]] = {n: {} for n in ips}
    with cluster(
        tmp_path, postgres_server, "forgery_insecure", ips, {"insecure": True}, tls
    ) as nodes:
        primary, epoch = wait_primary(nodes)
        standby = next(n for n in voters if n != primary)
        async with aio.open_loop():
            with watching(list(nodes.values())) as watch:
                forger = Forger(standby)
                for term in HUGE:  # claiming to be a real coordinator, with an absurd term
                    for node in nodes.values():
                        answer = await forger.send(
                            node.mesh_address, methods.RENEW, renew(term, standby, voters)
                        )
                        assert answer.startswith("INVALID_ARGUMENT"), answer
                        assert "highest term" in answer
                jump = Forger(standby)
                for node in nodes.values():
                    answer = await jump.send(
                        node.mesh_address, methods.RENEW, renew(epoch + 10**6, standby, voters)
                    )
                    assert answer.startswith("INVALID_ARGUMENT"), answer
                    assert "max_term_jump" in answer
                ghost = Forger("ghost")
                for _ in range(4):  # "ghost" names itself leader, every 3 s
                    for node in nodes.values():
                        answer = await ghost.send(
                            node.mesh_address, methods.RENEW, renew(epoch + 1, "ghost", voters)
                        )
                        assert answer.startswith("PERMISSION_DENIED"), answer
                        assert "not a configured candidate" in answer
                        answer = await ghost.send(
                            node.mesh_address, methods.VOTE, vote(epoch + 1, "ghost", voters)
                        )
                        assert answer.startswith("PERMISSION_DENIED"), answer
                    await trio.sleep(3)
            for f in (forger, jump, ghost):
                f.close()
        assert_held(watch, nodes, primary, epoch)
        print_timings("insecure mesh", ghost)
    assert_logged(
        nodes, "refused a RenewRequest", "naming 'ghost'", "highest term", "INSECURE MESH"
    )


async def test_forgeries_against_a_cluster_secret(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    ips = {"c1": "127.0.0.44", "c2": "127.0.0.45", "c3": "127.0.0.46"}
    voters = sorted(ips)
    tls: dict[str, dict[str, Any]] = {n: {} for n in ips}
    mesh = {"cluster_secret": SECRET}
    with cluster(tmp_path, postgres_server, "forgery_secret", ips, mesh, tls) as nodes:
        primary, epoch = wait_primary(nodes)
        standby = next(n for n in voters if n != primary)
        async with aio.open_loop():
            with watching(list(nodes.values())) as watch:
                outsiders = [
                    Forger(standby),  # no signature
                    Forger(standby, ClusterAuth("not-the-cluster-secret-at-all")),
                ]
                for forger in outsiders:
                    for node in nodes.values():
                        for request in (
                            renew(epoch + 1, standby, voters),
                            renew(2**63, standby, voters),
                        ):
                            answer = await forger.send(node.mesh_address, methods.RENEW, request)
                            assert answer.startswith("UNAUTHENTICATED"), answer
                        answer = await forger.send(
                            node.mesh_address, methods.VOTE, vote(epoch + 1, standby, voters)
                        )
                        assert answer.startswith("UNAUTHENTICATED"), answer
                # an insider (it has the secret) is still bound by terms and candidates
                insider = Forger(standby, ClusterAuth(SECRET))
                ghost = Forger("ghost", ClusterAuth(SECRET))
                for node in nodes.values():
                    for term in HUGE:
                        answer = await insider.send(
                            node.mesh_address, methods.RENEW, renew(term, standby, voters)
                        )
                        assert answer.startswith("INVALID_ARGUMENT"), answer
                    answer = await ghost.send(
                        node.mesh_address, methods.RENEW, renew(epoch + 1, "ghost", voters)
                    )
                    assert answer.startswith("PERMISSION_DENIED"), answer
                await trio.sleep(LEASE)
            for f in (*outsiders, insider, ghost):
                f.close()
        assert_held(watch, nodes, primary, epoch)
        print_timings("cluster secret, unsigned or wrongly signed", outsiders[0])
    assert_logged(nodes, "cluster_secret", "not signed", "does not match", "naming 'ghost'")
    assert "INSECURE" not in "".join(n.log() for n in nodes.values())


async def test_a_certificate_of_the_cluster_ca_for_a_non_candidate(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    ips = {"c1": "127.0.0.47", "c2": "127.0.0.48", "c3": "127.0.0.49"}
    voters = sorted(ips)
    certs = make_cluster_certs(
        tmp_path / "certs", {**{n: [ip] for n, ip in ips.items()}, "ghost": ["127.0.0.1"]}
    )
    tls = {n: tls_config(certs, n) for n in ips}
    ghost_tls = TLSConfig.model_validate(tls_config(certs, "ghost"))
    with cluster(tmp_path, postgres_server, "forgery_mtls", ips, {}, tls) as nodes:
        primary, epoch = wait_primary(nodes)
        standby = next(n for n in voters if n != primary)
        ghost = Forger("ghost", tls=ghost_tls)
        async with aio.open_loop():
            with watching(list(nodes.values())) as watch:
                for _ in range(2):
                    for node in nodes.values():
                        for method, request in (
                            (methods.RENEW, renew(epoch + 1, "ghost", voters)),
                            (methods.VOTE, vote(epoch + 1, "ghost", voters)),
                            (methods.RENEW, renew(epoch + 1, standby, voters)),  # not its name
                            (methods.RENEW, renew(2**63, "ghost", voters)),
                        ):
                            answer = await ghost.send(node.mesh_address, method, request)
                            assert answer.startswith("PERMISSION_DENIED"), answer
                    await trio.sleep(LEASE / 2)
            ghost.close()
        assert_held(watch, nodes, primary, epoch)
        print_timings("mTLS, a certificate for 'ghost'", ghost)
    assert_logged(nodes, "naming 'ghost'", "not a configured candidate", "the certificate is for")
