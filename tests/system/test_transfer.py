"""A graceful stop hands the lease over: three coordinators and a worker, mTLS, PostgreSQL.

Issue 12, target 4: a primary stopped with SIGTERM hands the lease to a standby at once
(``docs/lease.md``, *Handing over on a graceful stop*), instead of the standbys waiting out
the promises (the production defaults here: a 5 s lease, election timeout 1-2.5 s).

- A forged release is refused: a certificate of the cluster's CA for a node that is not a
  candidate may not send one, a standby may not send one naming the primary, and one a
  standby sends in its own name gives back nothing (it is nobody's primary); one primary
  holds its epoch throughout.
- SIGTERM of the primary while a client keeps submitting tasks to the standbys: the old
  primary logs that a standby campaigned for the next epoch within its wait (one second, so
  well before any promise to it could have run out), a standby is primary under epoch + 1,
  the old process exits 0, every submission was accepted (202), and every task succeeds on
  the worker, placed by the new primary. The time from the signal to a standby saying it is
  primary is printed, not asserted (a figure, not a bound of the test).
- ``brio mesh drain`` of the (new) primary: its answer says it handed the lease over, another
  coordinator is primary under the next epoch, and the drained one campaigns no more.
- Two coordinators with the store's witness: SIGTERM of the primary, the other is primary
  under the next epoch, and the witness's row promises it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio

from brio import aio
from brio.config.model import TLSConfig
from brio.core.lease import voters_digest
from brio.mesh import methods, pb
from tests.certs import ClusterCerts, make_cluster_certs, tls_config
from tests.pg import PostgresServer
from tests.system.cluster import (
    MeshNode,
    fast_timings,
    health,
    query,
    wait_for,
    wait_primary,
    write_cluster,
)
from tests.system.test_lease_forgery import Forger, watching

pytestmark = pytest.mark.postgres

IPS = {
    "coord-1": "127.0.0.81",
    "coord-2": "127.0.0.82",
    "coord-3": "127.0.0.83",
    "worker-1": "127.0.0.84",
}
ROLES = {n: "worker" if n.startswith("worker") else "coordinator" for n in IPS}
COORDINATORS = [n for n in IPS if ROLES[n] == "coordinator"]
VOTERS = sorted(IPS)
DB = "transfer"


@dataclass
class Cluster:
    nodes: dict[str, MeshNode]
    certs: ClusterCerts


@pytest.fixture(scope="module")
def cluster(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("transfer")
    names = {**{n: [ip] for n, ip in IPS.items()}, "ghost": ["127.0.0.1"]}
    certs = make_cluster_certs(base / "certs", names)
    database = postgres_server.create_database(DB)
    tables: dict[str, dict[str, Any]] = fast_timings(0.25, 1.0, 3)
    # The production lease: without the handover a standby would wait out its promise.
    tables["mesh.lease"] = {"lease_duration": 5.0, "election_timeout": [1.0, 2.5]}
    tls = {n: tls_config(certs, n) for n in IPS}
    nodes = write_cluster(
        base, IPS, ROLES, database, tls, tables, mesh={"coordinators_run_agents": False}
    )
    try:
        for node in nodes.values():
            node.start()
        yield Cluster(nodes, certs)
    finally:
        for node in nodes.values():
            node.stop()
        postgres_server.drop_database(DB)


def coordinators(cluster: Cluster) -> list[MeshNode]:
    return [cluster.nodes[n] for n in COORDINATORS]


def release(term: int, leader: str, successor: str = "") -> pb.LeaseRenewRequest:
    return pb.LeaseRenewRequest(
        term=term,
        leader=leader,
        round=1,
        voters_digest=voters_digest(VOTERS),
        release=True,
        successor=successor,
    )


async def test_a_forged_release_is_refused_and_the_primary_holds(cluster: Cluster) -> None:
    primary = wait_primary(coordinators(cluster), 40)
    epoch = (health(primary) or {})["epoch"]
    standby = next(n for n in COORDINATORS if n != primary.node_id)
    as_tls = {
        who: TLSConfig.model_validate(tls_config(cluster.certs, who)) for who in ("ghost", standby)
    }
    ghost, impostor = Forger("ghost", tls=as_tls["ghost"]), Forger(standby, tls=as_tls[standby])
    async with aio.open_loop():
        with watching(coordinators(cluster)) as watch:
            for attempt in range(2):
                for node in cluster.nodes.values():
                    if node.node_id == standby:
                        continue
                    for forger, request in (
                        (ghost, release(epoch, "ghost", "ghost")),
                        (ghost, release(epoch, primary.node_id, "ghost")),
                        (impostor, release(epoch, primary.node_id, standby)),  # not its name
                    ):
                        answer = await forger.send(node.mesh_address, methods.RENEW, request)
                        assert answer.startswith("PERMISSION_DENIED"), answer
                    # In its own name: a candidate may send it, but nobody follows it. (Just
                    # after the election, a voter that has heard no renewal yet gives back
                    # nothing and says so with ok; by the second pass every one has.)
                    own = release(epoch, standby, standby)
                    answer = await impostor.send(node.mesh_address, methods.RENEW, own)
                    assert answer.startswith("OK"), answer
                    if attempt:
                        assert "ok=True" not in answer, answer
                await trio.sleep(2.5)  # a renewal in between, and half a lease in all
        ghost.close()
        impostor.close()
    assert watch.primaries() == {(primary.node_id, epoch)}, watch.primaries()
    assert watch.leaderless() == 0
    logs = "".join(n.log() for n in cluster.nodes.values())
    assert "handed over" not in logs and "released epoch" not in logs


@dataclass
class Client:
    """Submits an echo task every 0.1 s, to each standby in turn, in a thread."""

    urls: list[str]
    answers: list[tuple[int, str]] = field(default_factory=list)  # (status, task id or body)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            for i in range(600):  # a minute at most
                if self.stop.is_set():
                    return
                body = {"agent": "echo", "prompt": f"during the handover {i}", "input": {}}
                reply = client.post(self.urls[i % len(self.urls)] + "/api/tasks", json=body)
                ok = reply.status_code == 202
                self.answers.append((reply.status_code, reply.json()["id"] if ok else reply.text))
                self.stop.wait(0.1)


def test_sigterm_of_the_primary_hands_the_lease_to_a_standby(cluster: Cluster) -> None:
    old = wait_primary(coordinators(cluster), 40)
    epoch = (health(old) or {})["epoch"]
    standbys = [n for n in coordinators(cluster) if n is not old]

    def followed() -> bool:
        return all(
            (health(n) or {}).get("mesh", {}).get("primary") == old.node_id for n in standbys
        )

    wait_for("the standbys following the primary", followed, 10, old)
    client = Client([n.http_url for n in standbys if n.http_url is not None])
    thread = threading.Thread(target=client.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # some tasks in flight before the signal
        assert old.proc is not None
        old.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        new = wait_primary(standbys, 15, above=epoch)
        took = time.monotonic() - signalled
        time.sleep(1.0)  # and some after
    finally:
        client.stop.set()
        thread.join(10)
    assert old.proc.wait(30) == 0, old.log()[-4000:]
    new_epoch = (health(new) or {})["epoch"]
    print(
        f"\nhandover: SIGTERM of {old.node_id} (epoch {epoch}) -> {new.node_id} primary "
        f"(epoch {new_epoch}) after {took:.3f} s, by polling /health (lease 5.0 s); "
        f"{len(client.answers)} submissions meanwhile"
    )
    assert new_epoch == epoch + 1
    # Within the old node's one-second wait, a standby campaigned in the next term: no
    # promise to the old primary (5 s from its last renewal) had to run out first.
    assert f"lease: handed over epoch {epoch}; a standby campaigns for epoch {epoch + 1}" in (
        old.log()
    ), old.log()[-4000:]

    refused = [a for a in client.answers if a[0] != 202]
    assert not refused, refused
    assert len(client.answers) >= 10
    assert new.http_url is not None

    def finished() -> list[dict[str, Any]] | None:
        tasks = [
            httpx.get(f"{new.http_url}/api/tasks/{task_id}", timeout=5).json()
            for _, task_id in client.answers
        ]
        done = all(t["status"] in ("succeeded", "failed", "cancelled") for t in tasks)
        return tasks if done else None

    tasks = wait_for("every task submitted around the handover", finished, 60, new)
    assert all(t["status"] == "succeeded" and t["node_id"] == "worker-1" for t in tasks), [
        (t["id"], t["status"], t["node_id"]) for t in tasks if t["status"] != "succeeded"
    ]


def test_a_drained_primary_hands_the_lease_over(cluster: Cluster) -> None:
    running = [n for n in coordinators(cluster) if n.proc is not None and n.proc.poll() is None]
    old = wait_primary(running, 40)
    epoch = (health(old) or {})["epoch"]
    drained = time.monotonic()
    done = old.mesh("drain")
    new = wait_primary([n for n in running if n is not old], 15, above=epoch)
    took = time.monotonic() - drained
    print(
        f"\ndrain: {old.node_id} (epoch {epoch}) -> {new.node_id} primary after {took:.3f} s "
        f"(the CLI included): {done.stdout.strip()}"
    )
    assert f"the coordinator lease: handed over epoch {epoch}" in done.stdout, done.stdout
    assert (health(new) or {})["epoch"] == epoch + 1
    time.sleep(2.0)  # a drained coordinator campaigns no more: it stays a standby
    assert (health(old) or {})["role"] == "standby"


WITNESS_IPS = {"coord-1": "127.0.0.85", "coord-2": "127.0.0.86", "worker-1": "127.0.0.87"}


def test_with_the_store_as_witness_sigterm_hands_the_lease_to_the_other_coordinator(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two coordinators and ``@store``: the release reaches the store's witness too (its
    ``RELEASE`` statement), and the other coordinator is primary under the next epoch."""
    base = tmp_path_factory.mktemp("transfer-witness")
    certs = make_cluster_certs(base / "certs", {n: [ip] for n, ip in WITNESS_IPS.items()})
    database = postgres_server.create_database("transfer_witness")
    tables: dict[str, dict[str, Any]] = fast_timings(0.25, 1.0, 3)
    tables["mesh.lease"] = {
        "lease_duration": 5.0,
        "election_timeout": [1.0, 2.5],
        "voters": ["coord-1", "coord-2"],
        "witness": "store",
    }
    roles = {n: "worker" if n.startswith("worker") else "coordinator" for n in WITNESS_IPS}
    tls = {n: tls_config(certs, n) for n in WITNESS_IPS}
    nodes = write_cluster(
        base, WITNESS_IPS, roles, database, tls, tables, mesh={"coordinators_run_agents": False}
    )
    try:
        for node in nodes.values():
            node.start()
        pair = [nodes["coord-1"], nodes["coord-2"]]
        old = wait_primary(pair, 40)
        epoch = (health(old) or {})["epoch"]
        other = next(n for n in pair if n is not old)
        assert old.proc is not None
        old.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        new = wait_primary([other], 15, above=epoch)
        took = time.monotonic() - signalled
        assert old.proc.wait(30) == 0, old.log()[-4000:]
        print(f"\nwitness handover: {old.node_id} -> {new.node_id} after {took:.3f} s")
        assert (health(new) or {})["epoch"] == epoch + 1
        assert f"lease: handed over epoch {epoch}; a standby campaigns" in old.log()

        def witness_follows() -> list[list[str]] | None:
            sql = "SELECT term, voted_for, promised_to FROM lease_witness"
            rows = query(postgres_server, "transfer_witness", sql)
            return rows if rows and rows[0][2] == new.node_id else None

        rows = wait_for("the witness's promise to the new primary", witness_follows, 10, new)
        # Its vote, not only its renewal: granted well inside the promise it had made the old
        # primary (5 s from a renewal at most 1.7 s before the signal), so given back first.
        assert rows[0][:2] == [str(epoch + 1), new.node_id], rows
    finally:
        for node in nodes.values():
            node.stop()
        postgres_server.drop_database("transfer_witness")
