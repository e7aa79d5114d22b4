"""Drain, leave and force-remove against real processes: a coordinator and two workers.

``python -m brio serve`` processes on 127.0.0.2-4 with mutual TLS and one PostgreSQL, as in
``test_mesh_cluster.py``; the coordinator runs no agents (``coordinators_run_agents = false``),
so every unprefixed task goes to a worker. The tests run in file order against one cluster:

1. ``drain worker-1`` from the coordinator: worker-1 shows draining, new unprefixed tasks go
   to worker-2 only, and the task worker-1 was running finishes there;
2. ``leave`` on the drained worker-1: its process exits 0 and the coordinator shows it
   ``left`` at once, and still, where a crash would make it suspected then failed;
3. worker-1 restarts (a new process: it rejoins), worker-2 runs two long tasks, is stopped
   with SIGSTOP, and ``remove worker-2 --force`` sends its tasks to worker-1 (attempt 2)
   before failure detection would have; resumed, the removed process stays out.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.certs import make_cluster_certs, tls_config
from tests.pg import PostgresServer
from tests.system.cluster import MeshNode, fast_timings, wait_for, write_cluster

pytestmark = pytest.mark.postgres

INTERVAL = 0.25
TIMEOUT = 2.0  # a stopped process keeps its socket: each heartbeat to it waits this long
THRESHOLD = 3
IPS = {"coordinator-1": "127.0.0.2", "worker-1": "127.0.0.3", "worker-2": "127.0.0.4"}
ROLES = {"coordinator-1": "coordinator", "worker-1": "worker", "worker-2": "worker"}


@dataclass
class Cluster:
    nodes: dict[str, MeshNode]

    @property
    def coordinator(self) -> MeshNode:
        return self.nodes["coordinator-1"]

    @property
    def url(self) -> str:
        url = self.coordinator.http_url
        assert url is not None
        return url

    def submit(self, agent: str, ms: int) -> str:
        reply = httpx.post(
            self.url + "/api/tasks",
            json={"agent": agent, "prompt": "", "input": {"ms": ms}},
            timeout=10,
        )
        assert reply.status_code == 202, reply.text
        task_id: str = reply.json()["id"]
        return task_id

    def task(self, task_id: str) -> dict[str, Any]:
        task: dict[str, Any] = httpx.get(f"{self.url}/api/tasks/{task_id}", timeout=10).json()
        return task

    def wait_task(self, task_id: str, status: str, timeout: float) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            f"task {task_id} {status}",
            lambda: (t := self.task(task_id))["status"] == status and t,
            timeout,
            self.coordinator,
        )
        return found


@pytest.fixture(scope="module")
def cluster(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("operations")
    certs = make_cluster_certs(base / "certs", {n: [ip] for n, ip in IPS.items()})
    database = postgres_server.create_database("mesh_operations")
    tables: dict[str, dict[str, Any]] = {
        **fast_timings(INTERVAL, TIMEOUT, THRESHOLD),
    }
    tls = {n: tls_config(certs, n) for n in IPS}
    mesh = {"coordinators_run_agents": False}
    nodes = write_cluster(base, IPS, ROLES, database, tls, tables, mesh)
    try:
        for node in nodes.values():
            node.start()
        cluster = Cluster(nodes)

        def ready() -> bool:
            health = httpx.get(cluster.url + "/health", timeout=5).json()
            peers = cluster.coordinator.status()
            return health["role"] == "primary" and all(
                peers.get(n, {}).get("status") == "healthy" for n in ("worker-1", "worker-2")
            )

        wait_for("coordinator-1 primary, workers healthy", ready, 30, cluster.coordinator)
        yield cluster
    finally:
        for node in nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
            node.stop()
        postgres_server.drop_database("mesh_operations")


def test_drain_worker_1_places_new_tasks_on_worker_2_while_its_task_finishes(
    cluster: Cluster,
) -> None:
    coordinator = cluster.coordinator
    running = cluster.submit("worker-1/sleep", 3000)
    cluster.wait_task(running, "running", 20)

    done = coordinator.mesh("drain", "worker-1")
    assert done.stdout == (
        "worker-1 is draining: no new tasks are placed on it; 1 running task(s) finish there\n"
    )
    wait_for(
        "worker-1 draining in coordinator-1's table",
        lambda: coordinator.status()["worker-1"]["draining"],
        10,
        coordinator,
    )
    assert "draining       yes" in coordinator.mesh("status", "worker-1").stdout

    later = [cluster.submit("sleep", 100) for _ in range(6)]
    finished = [cluster.wait_task(t, "succeeded", 30) for t in later]
    assert {t["node_id"] for t in finished} == {"worker-2"}
    first = cluster.wait_task(running, "succeeded", 20)
    assert (first["node_id"], first["attempt"]) == ("worker-1", 1)

    stats = json.loads(coordinator.mesh("stats", "worker-1", "--json").stdout)
    assert stats["tasks_run"] == 1 and stats["tasks_running"] == 0
    assert stats["tasks_succeeded"] == 1
    assert 2900 <= stats["mean_task_ms"] <= 10_000, stats
    text = coordinator.mesh("stats", "worker-2").stdout
    assert re.search(r"^tasks_run\s+6$", text, re.M), text
    assert re.search(r"^mean_task_time\s+\d+ms$", text, re.M), text


def test_leave_on_the_drained_worker_1_exits_0_and_the_coordinator_drops_it(
    cluster: Cluster,
) -> None:
    coordinator = cluster.coordinator
    worker = cluster.nodes["worker-1"]
    assert worker.proc is not None
    started = time.monotonic()
    done = worker.mesh("leave")
    assert done.stdout == (
        "worker-1 left the mesh; goodbye said to coordinator-1, worker-2; the node stops now\n"
    )
    assert worker.proc.wait(30) == 0, worker.log()[-3000:]
    exited = time.monotonic() - started
    print(f"\nworker-1: leave answered and the process exited 0 within {exited:.2f}s")
    assert coordinator.status()["worker-1"]["status"] == "left"
    # A crashed node would be suspected, then failed, within THRESHOLD heartbeats; one that
    # left stays "left" on the coordinator, and gets no work.
    deadline = time.monotonic() + THRESHOLD * (INTERVAL + TIMEOUT) + 1
    while time.monotonic() < deadline:
        assert coordinator.status()["worker-1"]["status"] == "left"
        time.sleep(0.5)
    assert cluster.nodes["worker-2"].status()["worker-1"]["status"] == "left"
    assert "said goodbye" in coordinator.log()


def test_remove_force_of_a_stopped_worker_2_runs_its_tasks_elsewhere(cluster: Cluster) -> None:
    coordinator = cluster.coordinator
    worker_1, worker_2 = cluster.nodes["worker-1"], cluster.nodes["worker-2"]
    assert worker_2.proc is not None
    # two long tasks on worker-2, the only worker left
    tasks = [cluster.submit("sleep", 30_000) for _ in range(2)]
    for task_id in tasks:
        assert cluster.wait_task(task_id, "running", 20)["node_id"] == "worker-2"
    # worker-1 comes back: a new process rejoins although the old one left
    worker_1.start()
    wait_for(
        "worker-1 healthy again",
        lambda: coordinator.status()["worker-1"]["status"] == "healthy",
        20,
        coordinator,
    )

    log_before = len(coordinator.log())
    worker_2.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    done = coordinator.mesh("remove", "worker-2", "--force")
    removed = time.monotonic()
    assert done.stdout == (
        "worker-2 removed: no more tasks go to it; its 2 assigned or running task(s) go back "
        "to the queue now\n"
    )
    moved = [
        wait_for(
            f"task {t} running on worker-1",
            lambda t=t: (
                (task := cluster.task(t))["status"] == "running"
                and task["node_id"] == "worker-1"
                and task
            ),
            20,
            coordinator,
        )
        for t in tasks
    ]
    elsewhere = time.monotonic() - removed
    assert [t["attempt"] for t in moved] == [2, 2]
    print(
        f"\nremove --force answered {removed - stopped:.2f}s after SIGSTOP; "
        f"worker-2's tasks ran on worker-1 {elsewhere:.2f}s after that"
    )
    after = coordinator.log()[log_before:]
    redistributed = after.index("redistributing 2 task(s) of worker-2")
    failed = after.find("-> failed")
    assert failed == -1 or redistributed < failed, after  # before failure detection did it
    assert coordinator.status()["worker-2"]["status"] == "removed"

    # the same process, resumed, stays out; its old attempts cannot finish the tasks
    worker_2.proc.send_signal(signal.SIGCONT)
    time.sleep(1.0)
    assert coordinator.status()["worker-2"]["status"] == "removed"
    assert json.loads(coordinator.mesh("status", "--json").stdout)["node"]["node_id"] == (
        "coordinator-1"
    )
    for task_id in tasks:
        assert cluster.task(task_id)["attempt"] == 2
