"""Placement by the primary, with real processes: a coordinator and two workers, mTLS, PostgreSQL.

- 20 unprefixed ``echo`` tasks submitted to the coordinator spread round-robin over the nodes
  that run ``echo``: the two workers and the coordinator (coordinators run agents by default).
  Round-robin over three nodes gives each 6 or 7 of them. The primary's ``task.run`` notice
  of each batch is accepted by the node it names (a refused one leaves the node to find its
  work at its next poll).
- ``[agents.sleep] node_affinity = ["worker-2"]``: ``sleep`` tasks run on worker-2 only.
- ``kill -9`` of a worker running tasks: once the primary's membership marks it failed, its
  tasks go back to the queue with attempt 2 and run, then finish, on another node. ``nap`` is
  a ``sleep`` agent allowed on both workers (``sleep`` itself may only run on worker-2, so its
  tasks could not go anywhere else). The time from the kill to the tasks running elsewhere is
  printed; the bound it must meet comes from the failure-detection settings below.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.certs import make_cluster_certs, tls_config
from tests.pg import PostgresServer
from tests.system.cluster import (
    MeshNode,
    fast_timings,
    query,
    wait_for,
    wait_primary,
    write_cluster,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

INTERVAL = 0.2
TIMEOUT = 0.5
THRESHOLD = 3
IPS = {"coordinator-1": "127.0.0.41", "worker-1": "127.0.0.42", "worker-2": "127.0.0.43"}
ROLES = {"coordinator-1": "coordinator", "worker-1": "worker", "worker-2": "worker"}
DB = "scheduling"
# The placer's round runs at least every second (brio.tasks.placer.POLL) and a worker claims at
# least every second too; both are woken at once in the normal case.
PLACER_POLL = 1.0
CLAIM_POLL = 1.0


@dataclass
class Cluster:
    nodes: dict[str, MeshNode]
    pg: PostgresServer

    @property
    def coordinator(self) -> MeshNode:
        return self.nodes["coordinator-1"]

    @property
    def url(self) -> str:
        assert self.coordinator.http_url is not None
        return self.coordinator.http_url


@pytest.fixture(scope="module")
def cluster(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("scheduling")
    certs = make_cluster_certs(base / "certs", {n: [ip] for n, ip in IPS.items()})
    database = postgres_server.create_database(DB)
    tables: dict[str, dict[str, Any]] = {
        **fast_timings(INTERVAL, TIMEOUT, THRESHOLD),
        "agents.sleep": {"node_affinity": ["worker-2"]},
        "agents.nap": {"kind": "sleep", "node_affinity": ["worker-1", "worker-2"]},
    }
    tls = {n: tls_config(certs, n) for n in IPS}
    nodes = write_cluster(base, IPS, ROLES, database, tls, tables)
    try:
        for node in nodes.values():
            node.start()
        c = Cluster(nodes, postgres_server)
        wait_primary([c.coordinator], 30)
        wait_for("both workers healthy", lambda: _all_healthy(c), 30, c.coordinator)
        yield c
    finally:
        for node in nodes.values():
            node.stop()
        postgres_server.drop_database(DB)


def _all_healthy(c: Cluster) -> bool:
    peers = c.coordinator.status()
    return all(peers.get(w, {}).get("status") == "healthy" for w in ("worker-1", "worker-2"))


def submit(c: Cluster, agent: str, prompt: str, input_: dict[str, Any] | None = None) -> str:
    reply = httpx.post(
        c.url + "/api/tasks",
        json={"agent": agent, "prompt": prompt, "input": input_ or {}},
        timeout=10,
    )
    assert reply.status_code == 202, reply.text
    task_id: str = reply.json()["id"]
    return task_id


def tasks(c: Cluster, ids: list[str]) -> dict[str, dict[str, Any]]:
    with httpx.Client(base_url=c.url, timeout=10) as client:
        return {i: client.get(f"/api/tasks/{i}").json() for i in ids}


def wait_finished(c: Cluster, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    def done() -> dict[str, dict[str, Any]] | None:
        found = tasks(c, ids)
        finished = ("succeeded", "failed", "cancelled")
        return found if all(t["status"] in finished for t in found.values()) else None

    result: dict[str, dict[str, Any]] = wait_for(
        f"{len(ids)} tasks finished", done, timeout, c.coordinator
    )
    return result


def test_echo_tasks_spread_round_robin_over_the_capable_nodes(cluster: Cluster) -> None:
    ids = [submit(cluster, "echo", f"echo {i}") for i in range(20)]
    found = wait_finished(cluster, ids, 30)
    assert {t["status"] for t in found.values()} == {"succeeded"}, found
    assert all(found[i]["result"] == f"echo {n}" for n, i in enumerate(ids))
    spread = Counter(t["node_id"] for t in found.values())
    print(f"\n20 echo tasks: {dict(sorted(spread.items()))}")
    # round-robin over the three nodes that run echo: each gets 20 // 3 or 20 // 3 + 1
    assert set(spread) == set(IPS), spread
    assert sorted(spread.values()) == [6, 7, 7], spread


def test_the_primary_s_placement_notices_are_accepted(cluster: Cluster) -> None:
    """The primary tells each node of its batch with a ``task.run`` call; the node claims at
    once instead of at its next poll. A refused notice is logged by the primary."""
    refused = [
        line
        for line in cluster.coordinator.log().splitlines()
        if "task.run on" in line and "MeshError" in line
    ]
    assert not refused, f"{len(refused)} task.run notice(s) refused, e.g. {refused[0]}"


def test_sleep_tasks_run_only_where_node_affinity_allows(cluster: Cluster) -> None:
    ids = [submit(cluster, "sleep", f"sleep {i}", {"ms": 20}) for i in range(9)]
    found = wait_finished(cluster, ids, 30)
    assert {t["status"] for t in found.values()} == {"succeeded"}, found
    assert {t["node_id"] for t in found.values()} == {"worker-2"}, found
    assert all(t["attempt"] == 1 for t in found.values())


def test_kill_9_of_a_worker_puts_its_tasks_back_and_they_finish_elsewhere(
    cluster: Cluster,
) -> None:
    sleep_ms = 3000
    ids = [submit(cluster, "nap", f"nap {i}", {"ms": sleep_ms}) for i in range(6)]

    def running() -> dict[str, dict[str, Any]] | None:
        found = tasks(cluster, ids)
        return found if all(t["status"] == "running" for t in found.values()) else None

    found = wait_for("every nap task running", running, 20, cluster.coordinator)
    on = Counter(t["node_id"] for t in found.values())
    assert set(on) == {"worker-1", "worker-2"}, on  # round-robin over nap's two nodes
    victims = [i for i, t in found.items() if t["node_id"] == "worker-2"]
    survivors = [i for i in ids if i not in victims]

    worker = cluster.nodes["worker-2"]
    assert worker.proc is not None
    log_before = len(cluster.coordinator.log())
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(10)
    killed = time.monotonic()

    # Failed after THRESHOLD misses: at most THRESHOLD * (interval + timeout) (a dead process
    # refuses at once, so much less in practice); then one placer round and one claim. The
    # bound doubles the detection time for a loaded machine and adds a second of slack.
    detect = THRESHOLD * (INTERVAL + TIMEOUT)
    bound = 2 * detect + PLACER_POLL + CLAIM_POLL + 1.0

    def elsewhere() -> dict[str, dict[str, Any]] | None:
        now = tasks(cluster, victims)
        moved = all(
            t["status"] in ("running", "succeeded")
            and t["attempt"] == 2
            and t["node_id"] != "worker-2"
            for t in now.values()
        )
        return now if moved else None

    moved = wait_for(
        "worker-2's tasks running elsewhere at attempt 2", elsewhere, bound, cluster.coordinator
    )
    took = time.monotonic() - killed
    print(
        f"\nkill -9 of worker-2 -> its {len(victims)} task(s) running elsewhere (attempt 2) "
        f"after {took:.2f} s (bound {bound:.2f} s)"
    )
    assert {t["node_id"] for t in moved.values()} == {"worker-1"}  # nap's only other node

    # They run again from the start there: done about sleep_ms later.
    finished = wait_finished(cluster, ids, bound + sleep_ms / 1000 + 5)
    for task_id, task in finished.items():
        assert task["status"] == "succeeded", task
        assert task["node_id"] == "worker-1", task
        assert task["result"] == {"slept_ms": float(sleep_ms)}
        assert task["attempt"] == (2 if task_id in victims else 1), task
    assert all(finished[i]["attempt"] == 1 for i in survivors)

    log = cluster.coordinator.log()[log_before:]
    assert "redistributing" in log and "worker-2" in log, log[-3000:]
    # the store has each victim succeeded once, at attempt 2, on worker-1
    rows = query(
        cluster.pg,
        DB,
        "SELECT id, status, attempt, node_id FROM tasks WHERE id IN ("
        + ", ".join(f"'{i}'" for i in victims)
        + ")",
    )
    assert sorted(r[1:] for r in rows) == [["succeeded", "2", "worker-1"]] * len(victims)
