"""``deploy/rolling-update.sh`` against a local cluster of real processes, under load.

Two coordinators and two workers (mTLS, PostgreSQL) run as ``brio serve`` processes started
the way the script restarts them: a shell command per node (``serve_command``), detached, its
pid in a file. The script gets command templates instead of its ssh/systemd defaults:
``brio mesh`` with the node's own config, a stop that sends SIGTERM to the node's pid and
waits for it to exit, and that same start. While it runs, a background submitter sends
``sleep`` tasks to both coordinators (retrying on the other one, with the same idempotency
key, while one is down). At the end:

- the script exited 0 and its log shows the guide's order: both workers, then the standby
  coordinator, then the primary last;
- every node was restarted (a new pid) and the mesh has a primary again;
- no task lost, none failed: every submitted task (and every task in the store) succeeded.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.certs import make_cluster_certs, tls_config
from tests.pg import PostgresServer
from tests.system.cluster import (
    MeshNode,
    alive,
    health,
    query,
    serve_command,
    serve_pid,
    wait_for,
    wait_primary,
    write_cluster,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(600)]

IPS = {
    "coordinator-1": "127.0.0.61",
    "coordinator-2": "127.0.0.62",
    "worker-1": "127.0.0.63",
    "worker-2": "127.0.0.64",
}
ROLES = {n: "coordinator" if n.startswith("coord") else "worker" for n in IPS}
COORDINATORS = [n for n in IPS if ROLES[n] == "coordinator"]
WORKERS = [n for n in IPS if ROLES[n] == "worker"]
DB = "rolling_update"
SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "rolling-update.sh"
SCRIPT_TIMEOUT = 540.0

# Stop: SIGTERM to the pid serve_command wrote, then wait (bounded) until the process is gone
# or a zombie (nobody may reap it: the shell that started it has exited).
STOP = """pid=$(cat {dir}/{{node}}/serve.pid) && kill -TERM "$pid" && i=0 &&
while [ -e /proc/$pid ] && [ "$(cut -d')' -f2 /proc/$pid/stat | cut -d' ' -f2)" != Z ]; do
  i=$((i + 1)); [ $i -lt 600 ] || exit 1; sleep 0.1
done"""


@dataclass
class Cluster:
    nodes: dict[str, MeshNode]
    pg: PostgresServer
    base: Path

    def coordinators(self) -> list[MeshNode]:
        return [self.nodes[n] for n in COORDINATORS]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BRIO_") and k != "CI"}


def _start(node: MeshNode) -> None:
    subprocess.run(["sh", "-c", serve_command(node)], env=_env(), check=True, timeout=10)


def _up(node: MeshNode) -> bool:
    pid = serve_pid(node)
    if pid is None or not alive(pid):
        raise AssertionError(f"{node.node_id} is not running; log:\n{node.log()[-4000:]}")
    return (node.dir / "data" / "mesh-address").exists()


@pytest.fixture
def cluster(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("rolling")
    certs = make_cluster_certs(base / "certs", {n: [ip] for n, ip in IPS.items()})
    database = postgres_server.create_database(DB)
    tables: dict[str, dict[str, Any]] = {
        "mesh.failure_detection": {
            "heartbeat_interval": 0.3,
            "heartbeat_timeout": 1.0,
            "suspicion_threshold": 3,
            "degraded_latency": 2.0,
        },
        "mesh.lease": {"lease_duration": 3.0, "election_timeout": [0.5, 1.2]},
    }
    tls = {n: tls_config(certs, n) for n in IPS}
    nodes = write_cluster(base, IPS, ROLES, database, tls, tables)
    try:
        for node in nodes.values():
            _start(node)
        wait_for("every node up", lambda: all(_up(n) for n in nodes.values()), 60)
        yield Cluster(nodes, postgres_server, base)
    finally:
        for node in nodes.values():
            pid = serve_pid(node)
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGTERM)
        for node in nodes.values():
            pid = serve_pid(node)
            deadline = time.monotonic() + 20
            while pid is not None and alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)
        postgres_server.drop_database(DB)


@dataclass
class Submitter:
    """Sends a sleep task every ``every`` seconds, alternating coordinators, until stopped;
    a refused or failed request is retried (same idempotency key) on the other coordinator."""

    urls: list[str]
    every: float = 0.1
    ids: dict[str, str] = field(default_factory=dict)  # idempotency key -> task id
    lost: list[str] = field(default_factory=list)  # keys never accepted within 60 s
    retries: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        clients = [httpx.Client(base_url=u, timeout=5) for u in self.urls]
        try:
            i = 0
            while not self.stop.is_set():
                self._one(clients, i)
                i += 1
                self.stop.wait(self.every)
        finally:
            for c in clients:
                c.close()

    def _one(self, clients: list[httpx.Client], i: int) -> None:
        key = f"rolling-{i}"
        body = {"agent": "sleep", "prompt": key, "input": {"ms": 300}, "idempotency_key": key}
        deadline = time.monotonic() + 60
        turn = i
        while time.monotonic() < deadline:
            try:
                reply = clients[turn % len(clients)].post("/api/tasks", json=body)
                if reply.status_code in (200, 202):
                    self.ids[key] = reply.json()["id"]
                    return
            except httpx.HTTPError:
                pass
            self.retries += 1
            turn += 1
            time.sleep(0.1)
        self.lost.append(key)


def test_rolling_update_restarts_every_node_in_order_and_loses_no_task(
    cluster: Cluster,
) -> None:
    primary = wait_primary(cluster.coordinators(), 30)
    python = shlex.quote(sys.executable)
    base = shlex.quote(str(cluster.base))
    env = {
        **_env(),
        "ROLLING_MESH": f"BRIO_CONFIG={base}/{{node}}/brio.toml HOME={base}/{{node}} "
        f"{python} -m brio mesh",
        "ROLLING_STOP": STOP.format(dir=base),
        "ROLLING_START": _start_template(cluster),
        "ROLLING_UP_TIMEOUT": "60",
        "ROLLING_DRAIN_TIMEOUT": "60",
        "ROLLING_SETTLE": "1",
    }

    def everyone_healthy() -> bool:
        peers = cluster.nodes[primary.node_id].status()
        return all(p["status"] == "healthy" and not p["draining"] for p in peers.values())

    wait_for("every node healthy, none draining", everyone_healthy, 30, primary)
    old_pids = {n: serve_pid(node) for n, node in cluster.nodes.items()}

    submitter = Submitter([str(n.http_url) for n in cluster.coordinators()])
    thread = threading.Thread(target=submitter.run, daemon=True)
    thread.start()
    time.sleep(2)  # some tasks in flight before the first drain
    began = time.monotonic()
    try:
        done = subprocess.run(
            [str(SCRIPT), *IPS],  # any order: the script sorts them
            env=env,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
            check=False,
        )
    finally:
        took = time.monotonic() - began
        time.sleep(2)
        submitter.stop.set()
        thread.join(90)
    out = done.stderr
    assert done.returncode == 0, f"rolling-update.sh failed ({done.returncode}):\n{out}"

    updated = re.findall(r"rolling-update: updating (\S+)", out)
    standby = next(n for n in COORDINATORS if n != primary.node_id)
    assert updated[:2] == WORKERS or sorted(updated[:2]) == sorted(WORKERS), out
    assert updated[2:] == [standby, primary.node_id], out
    new_pids = {n: serve_pid(node) for n, node in cluster.nodes.items()}
    assert all(new_pids[n] != old_pids[n] for n in IPS), (old_pids, new_pids)
    now = wait_primary(cluster.coordinators(), 30)

    assert not submitter.lost, f"tasks never accepted: {submitter.lost[:10]}"
    ids = set(submitter.ids.values())
    assert len(ids) == len(submitter.ids) > 20

    def settled() -> list[list[str]] | None:
        rows = query(cluster.pg, DB, "SELECT id, status, node_id, attempt FROM tasks")
        return rows if all(r[1] in ("succeeded", "failed", "cancelled") for r in rows) else None

    rows = wait_for("every task finished", settled, 60)
    assert {r[0] for r in rows} == ids, "the store and the submitter disagree on the tasks"
    bad = [r for r in rows if r[1] != "succeeded"]
    assert not bad, f"tasks not succeeded: {bad[:10]}\n{out}"
    attempts = sum(1 for r in rows if int(r[3]) > 1)
    print(
        f"\nrolling update of {len(IPS)} nodes in {took:.1f} s ({' -> '.join(updated)}); "
        f"{len(ids)} tasks submitted meanwhile, all succeeded ({attempts} on a second attempt, "
        f"{submitter.retries} submit retries); primary now {now.node_id}"
    )
    for line in out.splitlines():
        if "updated" in line or "stop " in line:
            print("  " + line)
    assert health(now) is not None


def _start_template(cluster: Cluster) -> str:
    """``serve_command`` of a node with its id replaced by ``{node}``."""
    sample = cluster.nodes["worker-1"]
    return serve_command(sample).replace("worker-1", "{node}")
