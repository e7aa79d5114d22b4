"""Coordinator failover with real processes: three coordinators and a worker, mTLS, PostgreSQL.

- One coordinator becomes primary and raises the fence in the store to its epoch.
- ``kill -9`` of the primary: a standby becomes primary under a higher epoch, and a task
  submitted to it afterwards succeeds.
- ``SIGSTOP`` of that primary past its lease: another becomes primary. After ``SIGCONT`` the
  old one steps down, and the store holds no write of it under its old epoch made after the
  fence moved. An audit trigger, added by this test, records every committed write to
  ``cluster_view`` (the primary's fenced table) with the database's clock.

The cluster runs the default lease settings, so that the printed failover times are those
of a default install. They are printed, not asserted: they are figures (``bench.suite --rows
failover`` tracks them).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from brio.config.model import LeaseConfig
from tests.certs import make_cluster_certs, tls_config
from tests.pg import PostgresServer
from tests.system.cluster import MeshNode, wait_for, write_cluster

pytestmark = pytest.mark.postgres

IPS = {
    "coord-1": "127.0.0.21",
    "coord-2": "127.0.0.22",
    "coord-3": "127.0.0.23",
    "worker-1": "127.0.0.24",
}
ROLES = {n: "worker" if n.startswith("worker") else "coordinator" for n in IPS}
COORDINATORS = [n for n in IPS if ROLES[n] == "coordinator"]
LEASE = LeaseConfig().lease_duration  # the default

AUDIT = """
CREATE TABLE cluster_view_audit (
    node_id TEXT, epoch BIGINT, holder TEXT, written_at TIMESTAMPTZ DEFAULT clock_timestamp()
);
CREATE FUNCTION audit_cluster_view() RETURNS trigger AS $$
BEGIN
    INSERT INTO cluster_view_audit (node_id, epoch, holder)
        VALUES (NEW.node_id, NEW.epoch, NEW.holder);
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER cluster_view_audit AFTER INSERT OR UPDATE ON cluster_view
    FOR EACH ROW EXECUTE FUNCTION audit_cluster_view();
"""


@dataclass
class Cluster:
    nodes: dict[str, MeshNode]
    pg: PostgresServer
    database_name: str


@pytest.fixture(scope="module")
def cluster(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("lease-cluster")
    certs = make_cluster_certs(base / "certs", {n: [ip] for n, ip in IPS.items()})
    database = postgres_server.create_database("lease_cluster")
    tables: dict[str, dict[str, Any]] = {
        "mesh.failure_detection": {
            "heartbeat_interval": 0.25,
            "heartbeat_timeout": 1.0,
            "suspicion_threshold": 3,
            "degraded_latency": 2.0,
        },
    }
    tls = {n: tls_config(certs, n) for n in IPS}
    nodes = write_cluster(base, IPS, ROLES, database, tls, tables)
    try:
        for node in nodes.values():
            node.start()
        postgres_server.sql(AUDIT, "lease_cluster")
        yield Cluster(nodes, postgres_server, "lease_cluster")
    finally:
        for node in nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                os.kill(node.proc.pid, signal.SIGCONT)
            node.stop()
        postgres_server.drop_database("lease_cluster")


def query(cluster: Cluster, sql: str) -> list[list[str]]:
    """Rows of one statement, run with psql: each row a list of column texts."""
    out = cluster.pg.sql(sql, cluster.database_name)
    return [line.split("|") for line in out.splitlines() if line]


def count(cluster: Cluster, where: str) -> int:
    return int(query(cluster, f"SELECT count(*) FROM cluster_view_audit WHERE {where}")[0][0])


def health(node: MeshNode) -> dict[str, Any] | None:
    assert node.http_url is not None
    try:
        body: dict[str, Any] = httpx.get(node.http_url + "/health", timeout=1).json()
    except httpx.HTTPError:
        return None
    return body


def primaries(cluster: Cluster, among: list[str]) -> dict[str, int]:
    """{node: epoch} of the coordinators in ``among`` that say they are primary."""
    found = {}
    for name in among:
        h = health(cluster.nodes[name])
        if h is not None and h["role"] == "primary":
            found[name] = h["epoch"]
    return found


def wait_primary(cluster: Cluster, among: list[str], above: int, timeout: float) -> tuple[str, int]:
    def check() -> tuple[str, int] | None:
        found = {n: e for n, e in primaries(cluster, among).items() if e > above}
        return next(iter(found.items())) if len(found) == 1 else None

    return wait_for(f"one primary above epoch {above} among {among}", check, timeout)  # type: ignore[no-any-return]


def fence(cluster: Cluster) -> tuple[int, str, str]:
    """(epoch, holder, updated_at as PostgreSQL prints it)."""
    epoch, holder, updated_at = query(cluster, "SELECT epoch, holder, updated_at FROM fence")[0]
    return int(epoch), holder, updated_at


def submit_and_wait(node: MeshNode, agent: str, prompt: str) -> dict[str, Any]:
    assert node.http_url is not None
    reply = httpx.post(node.http_url + "/api/tasks", json={"agent": agent, "prompt": prompt})
    assert reply.status_code == 202, reply.text
    task_id = reply.json()["id"]

    def done() -> dict[str, Any] | None:
        task: dict[str, Any] = httpx.get(f"{node.http_url}/api/tasks/{task_id}", timeout=5).json()
        return task if task["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(f"task {task_id} finished", done, 30, node)  # type: ignore[no-any-return]


def test_one_primary_raises_the_fence(cluster: Cluster) -> None:
    name, epoch = wait_primary(cluster, COORDINATORS, 0, 30)
    for other in set(COORDINATORS) - {name}:

        def follows(other: str = other) -> bool:
            h = health(cluster.nodes[other])
            return h is not None and h["role"] == "standby" and h["mesh"]["primary"] == name

        wait_for(f"{other} follows {name}", follows, 10, cluster.nodes[other])
    wait_for("the fence at the primary's epoch", lambda: fence(cluster)[:2] == (epoch, name), 10)
    status = cluster.nodes["worker-1"].mesh("status").stdout
    assert f"primary {name}" in status, status
    detail = cluster.nodes[name].mesh("status", name).stdout
    assert "lease_role" in detail and "primary" in detail

    def view() -> list[list[str]] | None:
        rows = query(cluster, "SELECT node_id, epoch, holder, state FROM cluster_view")
        return rows if {r[0] for r in rows} == set(IPS) else None

    rows = wait_for("the primary's cluster view of every node", view, 10)
    assert {(int(r[1]), r[2]) for r in rows} == {(epoch, name)}
    assert {r[3] for r in rows} == {"healthy"}


def test_kill_9_of_the_primary_fails_over(cluster: Cluster) -> None:
    old, old_epoch = wait_primary(cluster, COORDINATORS, 0, 30)
    proc = cluster.nodes[old].proc
    assert proc is not None
    killed_at = time.monotonic()
    proc.kill()
    proc.wait()
    standbys = [n for n in COORDINATORS if n != old]
    new, new_epoch = wait_primary(cluster, standbys, old_epoch, 30)
    failover = time.monotonic() - killed_at
    print(
        f"\nfailover after kill -9 of {old}: {new} primary at epoch {new_epoch} in {failover:.2f} s"
    )
    wait_for("the fence moved", lambda: fence(cluster)[:2] == (new_epoch, new), 10)
    task = submit_and_wait(cluster.nodes[new], "worker-1/echo", "after failover")
    assert task["status"] == "succeeded", task
    assert task["result"] == "after failover"
    cluster.nodes[old].start()  # back as a standby, for the next test


def test_sigstop_past_the_lease_and_the_fence_holds(cluster: Cluster) -> None:
    paused, paused_epoch = wait_primary(cluster, COORDINATORS, 0, 30)
    proc = cluster.nodes[paused].proc
    assert proc is not None
    mine = f"holder = '{paused}' AND epoch = {paused_epoch}"
    assert count(cluster, mine) > 0, "the primary made no fenced write: nothing to check"
    stopped_at = time.monotonic()
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        others = [n for n in COORDINATORS if n != paused]
        new, new_epoch = wait_primary(cluster, others, paused_epoch, 30)
        failover = time.monotonic() - stopped_at
        print(
            f"\nfailover after SIGSTOP of {paused}: {new} at epoch {new_epoch} in {failover:.2f} s"
        )
        _, holder, moved_at = wait_for(
            "the fence moved", lambda: f if (f := fence(cluster))[0] == new_epoch else None, 10
        )
        assert holder == new
        time.sleep(LEASE)  # well past the paused primary's lease
    finally:
        os.kill(proc.pid, signal.SIGCONT)

    def stepped_down() -> dict[str, Any] | None:
        h = health(cluster.nodes[paused])
        if h is not None and h["role"] == "standby" and h["epoch"] >= new_epoch:
            return h
        return None

    h = wait_for(f"{paused} steps down", stepped_down, 20, cluster.nodes[paused])
    assert h["mesh"]["primary"] in (new, None)
    assert f"stepped down from epoch {paused_epoch}" in cluster.nodes[paused].log()
    time.sleep(LEASE)  # give a confused old primary every chance to write
    late = count(cluster, f"{mine} AND written_at > '{moved_at}'::timestamptz")
    assert late == 0, (
        f"{late} write(s) of {paused} under epoch {paused_epoch} after the fence moved"
    )
    newer = count(cluster, f"epoch = {new_epoch} AND written_at > '{moved_at}'::timestamptz")
    assert newer > 0  # the new primary does write: the check above is not vacuous
    assert len(primaries(cluster, COORDINATORS)) == 1
