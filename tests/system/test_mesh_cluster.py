"""A real cluster: a coordinator and two workers as ``python -m brio serve`` processes.

They listen on 127.0.0.2-4 with mutual TLS (certificates made here by ``brio.certs``) and
share a real PostgreSQL. The tests run in file order against one cluster: every node sees
the others healthy; a task for ``worker-1/echo`` runs on worker-1 and its events reach a
WebSocket client of the coordinator; a client without a certificate is refused while the
mesh keeps working; ``kill -9`` of worker-2 makes it suspected, then failed, and a restart
brings it back.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from tests.certs import ClusterCerts, make_cluster_certs, tls_config
from tests.pg import PostgresServer
from tests.system.cluster import MeshNode, fast_timings, wait_for, write_cluster

pytestmark = pytest.mark.postgres

INTERVAL = 0.25
TIMEOUT = 1.0
THRESHOLD = 3
IPS = {"coordinator-1": "127.0.0.2", "worker-1": "127.0.0.3", "worker-2": "127.0.0.4"}
ROLES = {"coordinator-1": "coordinator", "worker-1": "worker", "worker-2": "worker"}


@dataclass
class Cluster:
    nodes: dict[str, MeshNode]
    certs: ClusterCerts
    pg: PostgresServer

    @property
    def coordinator(self) -> MeshNode:
        return self.nodes["coordinator-1"]


@pytest.fixture(scope="module")
def cluster(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("mesh-cluster")
    certs = make_cluster_certs(base / "certs", {n: [ip] for n, ip in IPS.items()})
    database = postgres_server.create_database("mesh_cluster")
    tables: dict[str, dict[str, Any]] = {
        **fast_timings(INTERVAL, TIMEOUT, THRESHOLD),
        "mesh.access_control": {"coordinator_only_endpoints": ["/api/admin"]},
    }
    tls = {n: tls_config(certs, n) for n in IPS}
    nodes = write_cluster(base, IPS, ROLES, database, tls, tables)
    try:
        for node in nodes.values():
            node.start()
        yield Cluster(nodes, certs, postgres_server)
    finally:
        for node in nodes.values():
            node.stop()
        postgres_server.drop_database("mesh_cluster")


def test_every_node_sees_the_others_healthy(cluster: Cluster) -> None:
    for node in cluster.nodes.values():
        others = set(IPS) - {node.node_id}

        def all_healthy(node: MeshNode = node, others: set[str] = others) -> bool:
            peers = node.status()
            return set(peers) == others and all(p["status"] == "healthy" for p in peers.values())

        wait_for(f"{node.node_id}: peers healthy", all_healthy, 20, node)
        table = node.mesh("status").stdout
        assert "Node ID" in table and "Latency" in table
        for other in others:
            line = next(row for row in table.splitlines() if row.startswith(other))
            assert f"{IPS[other]}:" in line and "healthy" in line
        peers = node.status()
        for other in others:
            assert peers[other]["role"] == ROLES[other]
            assert peers[other]["latency_ms"] > 0


def test_health_reports_connected_peers(cluster: Cluster) -> None:
    url = cluster.coordinator.http_url
    assert url is not None

    def primary() -> dict[str, Any] | None:
        health: dict[str, Any] = httpx.get(url + "/health", timeout=5).json()
        return health if health["role"] == "primary" else None

    # The only coordinator, with the two workers voting, holds the lease.
    health = wait_for("coordinator-1 primary", primary, 20, cluster.coordinator)
    assert health["epoch"] >= 1
    assert health["mesh"]["primary"] == "coordinator-1"
    assert 0 < health["mesh"]["lease_remaining"] <= 2.0
    assert health["mesh"]["connected_peers"] == 2
    assert health["mesh"]["last_heartbeat"] is not None


async def test_task_for_worker_1_runs_there_and_streams_back(cluster: Cluster) -> None:
    url = cluster.coordinator.http_url
    assert url is not None
    ws_url = url.replace("http://", "ws://") + "/ws"
    async with trio_websocket.open_websocket_url(ws_url) as ws:
        await ws.send_message(json.dumps({"action": "subscribe", "all": True}))
        assert json.loads(await ws.get_message())["type"] == "subscribed"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            reply = await client.post(
                "/api/tasks", json={"agent": "worker-1/echo", "prompt": "over the mesh"}
            )
            assert reply.status_code == 202, reply.text
            task_id = reply.json()["id"]
            events: list[dict[str, Any]] = []
            with trio.move_on_after(20):
                while not events or events[-1]["type"] != "task_completed":
                    event = json.loads(await ws.get_message())
                    if event.get("task_id") == task_id:
                        events.append(event)
            task = (await client.get(f"/api/tasks/{task_id}")).json()
            assert events and events[-1]["type"] == "task_completed", (
                f"events {events}, task {task}; worker-1 log:\n"
                + cluster.nodes["worker-1"].log()[-3000:]
                + "\ncoordinator log:\n"
                + cluster.coordinator.log()[-3000:]
            )
    assert task["status"] == "succeeded"
    assert task["node_id"] == "worker-1"
    assert task["result"] == "over the mesh"
    assert task["agent"] == "echo"
    types = [e["type"] for e in events]
    assert types[0] == "task_created"
    assert "task_update" in types  # the worker's running update, forwarded
    assert events[-1]["data"]["result"] == "over the mesh"
    assert events[-1]["data"]["node_id"] == "worker-1"

    stats = cluster.coordinator.mesh("stats", "worker-1").stdout
    assert "node_id" in stats and "worker-1" in stats
    succeeded = next(r for r in stats.splitlines() if r.startswith("tasks_succeeded"))
    assert int(succeeded.split()[-1]) >= 1


def test_routing_errors_name_the_known_nodes(cluster: Cluster) -> None:
    url = cluster.coordinator.http_url
    assert url is not None
    reply = httpx.post(url + "/api/tasks", json={"agent": "worker-9/echo", "prompt": "x"})
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert error["code"] == "node_not_found"
    assert "worker-1" in error["message"] and "worker-2" in error["message"]
    reply = httpx.post(url + "/api/tasks", json={"agent": "worker-1/nope", "prompt": "x"})
    assert reply.status_code == 404
    assert "worker-1/echo" in reply.json()["error"]["message"]


def test_ping_and_topology(cluster: Cluster) -> None:
    out = cluster.coordinator.mesh("ping", "worker-2", "-c", "3").stdout
    assert out.count("reply from worker-2") == 3
    assert "0% lost" in out
    topology = json.loads(cluster.coordinator.mesh("topology", "--json").stdout)
    assert {n["node_id"] for n in topology["nodes"]} == set(IPS)
    edges = {(e["from_node"], e["to_node"]) for e in topology["edges"]}
    for a in IPS:
        for b in IPS:
            if a != b:
                assert (a, b) in edges
    missing = cluster.coordinator.mesh("ping", "worker-9", check=False)
    assert missing.returncode == 1
    assert "unknown node 'worker-9'" in missing.stderr and "Traceback" not in missing.stderr


def test_worker_cannot_ask_for_actions_on_other_nodes(cluster: Cluster) -> None:
    done = cluster.nodes["worker-1"].mesh("drain", "worker-2", check=False)
    assert done.returncode == 1
    assert "only from coordinators" in done.stderr


def _assert_refused(address: str, ca: Path, client_cert: tuple[Path, Path] | None) -> None:
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    if client_cert is not None:
        context.load_cert_chain(*client_cert)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        # TLS 1.3: the server's refusal of the client's certificate arrives on read
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        if not tls.recv(1024):
            raise ConnectionError("closed")


def test_client_without_certificate_is_refused(cluster: Cluster) -> None:
    address = cluster.coordinator.mesh_address
    _assert_refused(address, cluster.certs.ca.cert, None)
    # ... and a certificate from another CA is refused too
    host = address.rsplit(":", 1)[0]
    other = make_cluster_certs(cluster.certs.dir.parent / "other-ca", {"intruder": [host]})
    intruder = other.node("intruder")
    _assert_refused(address, cluster.certs.ca.cert, (intruder.cert, intruder.key))
    # the mesh keeps working
    wait_for(
        "every peer healthy",
        lambda: all(p["status"] == "healthy" for p in cluster.coordinator.status().values()),
        10,
        cluster.coordinator,
    )
    assert "Traceback" not in cluster.coordinator.log()


def test_kill_9_worker_2_is_suspected_then_failed_then_back(cluster: Cluster) -> None:
    coordinator = cluster.coordinator
    worker = cluster.nodes["worker-2"]
    assert worker.proc is not None
    log_before = len(coordinator.log())
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(10)
    killed = time.time()
    # Missing THRESHOLD heartbeats takes at most THRESHOLD * (interval + timeout); the
    # bound allows the same again for a loaded machine.
    bound = 2 * THRESHOLD * (INTERVAL + TIMEOUT) + 2.0
    wait_for(
        "worker-2 failed in mesh status",
        lambda: coordinator.status()["worker-2"]["status"] == "failed",
        bound + 10,
        coordinator,
    )
    # The transitions are faster than a CLI round trip; the coordinator's log has them all.
    seen: dict[str, float] = {}
    for line in coordinator.log()[log_before:].splitlines():
        for state in ("suspected", "failed"):
            if "peer worker-2" in line and line.rstrip().endswith(")") and f"-> {state} (" in line:
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                seen.setdefault(state, stamp - killed)
    assert "suspected" in seen and "failed" in seen, coordinator.log()[log_before:]
    assert seen["suspected"] <= seen["failed"] <= bound, seen
    print(
        f"\nworker-2 suspected after {seen['suspected']:.2f}s, failed after {seen['failed']:.2f}s"
    )

    reply = httpx.post(
        str(coordinator.http_url) + "/api/tasks", json={"agent": "worker-2/echo", "prompt": "x"}
    )
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "node_unavailable"

    worker.start()
    back = wait_for(
        "worker-2 healthy again",
        lambda: coordinator.status()["worker-2"]["status"] == "healthy",
        20,
        coordinator,
    )
    assert back
    assert worker.status()["coordinator-1"]["status"] == "healthy"
