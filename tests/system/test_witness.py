"""Two coordinators keep a primary when one dies: the store as the third voter, real processes.

Two coordinators (the voters ``coord-1`` and ``coord-2``, plus the store's witness with
``[mesh.lease] witness = "store"``) and a worker, mTLS, a real PostgreSQL. Without the witness
a majority of two voters is both, and losing either leaves no primary (``docs/lease.md``).

- One coordinator becomes primary; the witness row holds its promise; ``brio mesh status``
  lists the store among the voters.
- ``kill -9`` of the primary: the survivor, with the witness's vote, becomes primary under a
  higher epoch and places a new task on the worker (coordinators run no agents here). The
  failover time is printed, not asserted (a figure, not a bound of the test).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.certs import make_cluster_certs, tls_config
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

pytestmark = pytest.mark.postgres

IPS = {"coord-1": "127.0.0.71", "coord-2": "127.0.0.72", "worker-1": "127.0.0.73"}
ROLES = {"coord-1": "coordinator", "coord-2": "coordinator", "worker-1": "worker"}
DB = "witness"


@pytest.fixture
def cluster(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, MeshNode]]:
    base = tmp_path_factory.mktemp("witness")
    certs = make_cluster_certs(base / "certs", {n: [ip] for n, ip in IPS.items()})
    database = postgres_server.create_database(DB)
    tables: dict[str, dict[str, Any]] = fast_timings(0.2, 0.5, 3)
    tables["mesh.lease"] = {
        **tables["mesh.lease"],
        "voters": ["coord-1", "coord-2"],
        "witness": "store",
    }
    tls = {n: tls_config(certs, n) for n in IPS}
    nodes = write_cluster(
        base, IPS, ROLES, database, tls, tables, mesh={"coordinators_run_agents": False}
    )
    try:
        for node in nodes.values():
            node.start()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()
        postgres_server.drop_database(DB)


def test_the_survivor_of_two_coordinators_becomes_primary(
    cluster: dict[str, MeshNode], postgres_server: PostgresServer
) -> None:
    coordinators = [cluster["coord-1"], cluster["coord-2"]]
    first = wait_primary(coordinators, 30)
    first_health = health(first)
    assert first_health is not None
    epoch = first_health["epoch"]
    survivor = next(n for n in coordinators if n is not first)

    def witness_promised() -> list[list[str]] | None:
        rows = query(postgres_server, DB, "SELECT term, promised_to FROM lease_witness")
        return rows if rows and rows[0][1] == first.node_id else None

    rows = wait_for("the witness's promise to the primary", witness_promised, 10, first)
    assert int(rows[0][0]) == epoch
    status = survivor.mesh("status").stdout
    assert "voters: coord-1, coord-2, @store (the store)" in status, status

    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    killed = time.monotonic()
    second = wait_primary([survivor], 30, above=epoch)
    failover = time.monotonic() - killed
    second_health = health(second)
    assert second_health is not None and second_health["epoch"] > epoch
    print(
        f"\nwitness failover: kill -9 of {first.node_id} (epoch {epoch}) -> {second.node_id} "
        f"primary (epoch {second_health['epoch']}) in {failover:.2f} s (lease 2.0 s)"
    )

    assert second.http_url is not None
    reply = httpx.post(
        second.http_url + "/api/tasks",
        json={"agent": "echo", "prompt": "after the failover", "input": {}},
        timeout=10,
    )
    assert reply.status_code == 202, reply.text
    task_id = reply.json()["id"]

    def finished() -> dict[str, Any] | None:
        task: dict[str, Any] = httpx.get(f"{second.http_url}/api/tasks/{task_id}", timeout=5).json()
        return task if task["status"] in ("succeeded", "failed", "cancelled") else None

    task = wait_for("the task placed after the failover", finished, 30, second)
    assert task["status"] == "succeeded", task
    assert task["node_id"] == "worker-1", task
    assert task["result"] == "after the failover"
