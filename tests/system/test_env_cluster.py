"""The guide's Docker Compose cluster, configured with environment variables alone, as real
processes on one PostgreSQL: one primary that stays primary, and tasks placed on the worker.
And the misconfiguration that made two coordinators take the primary from each other: each
now refuses to campaign and says why in /health."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.system.cluster import free_port
from tests.system.nodeproc import NodeProcess, start_node

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SECRET = "5e" * 32  # the guide's example has no TLS: the mesh needs a shared secret
STABLE_FOR = 60.0  # seconds the issue asks a primary to hold


def node_env(node_id: str, ip: str, mesh_port: int, http_port: int, db: str) -> dict[str, str]:
    """What the guide's compose file sets, plus the secret and the test's addresses."""
    return {
        "BRIO_NODE_ID": node_id,
        "BRIO_MESH_ENABLED": "true",
        "BRIO_MESH_LISTEN": f"{ip}:{mesh_port}",
        "BRIO_DATABASE_URL": db,
        "BRIO_MESH_CLUSTER_SECRET": SECRET,
        "BRIO_SERVER__HOST": ip,
        "BRIO_SERVER__PORT": str(http_port),
        # faster than the guide's 30 s, so that the test sees the peers within seconds
        "BRIO_MESH__FAILURE_DETECTION__HEARTBEAT_INTERVAL": "0.5",
        "BRIO_MESH__FAILURE_DETECTION__HEARTBEAT_TIMEOUT": "0.5",
    }


def start(tmp_path: Path, name: str, ip: str, env: dict[str, str]) -> NodeProcess:
    cwd = tmp_path / name
    cwd.mkdir()
    return start_node(cwd, f"http://{ip}:{env['BRIO_SERVER__PORT']}", env)


def health(node: NodeProcess) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{node.url}/health", timeout=2).json()
    return body


def wait(what: str, check: Any, timeout: float, *nodes: NodeProcess) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    logs = "\n".join(n.log()[-3000:] for n in nodes)
    raise AssertionError(f"{what} not within {timeout}s\n{logs}")


def test_the_guides_compose_cluster_from_env_alone(tmp_path: Path, postgres_url: str) -> None:
    c_ip, w_ip = "127.0.0.61", "127.0.0.62"
    c_mesh = free_port(c_ip)
    coordinator_env = node_env("coordinator-1", c_ip, c_mesh, free_port(c_ip), postgres_url)
    worker_env = node_env("worker-1", w_ip, free_port(w_ip), free_port(w_ip), postgres_url)
    worker_env |= {"BRIO_MESH_PEERS": f"{c_ip}:{c_mesh}", "BRIO_MESH_ROLE": "worker"}
    coordinator = start(tmp_path, "coordinator-1", c_ip, coordinator_env)
    worker = start(tmp_path, "worker-1", w_ip, worker_env)
    nodes = (coordinator, worker)
    try:
        wait("coordinator-1 primary", lambda: health(coordinator)["role"] == "primary", 30, *nodes)
        wait(
            "a peer each",
            lambda: all(health(n)["mesh"]["connected_peers"] == 1 for n in nodes),
            30,
            *nodes,
        )
        epoch = health(coordinator)["epoch"]
        assert health(worker)["role"] == "worker"

        # tasks without a node prefix are placed on both nodes, round-robin
        ids = []
        for i in range(6):
            resp = httpx.post(
                f"{coordinator.url}/api/tasks", json={"agent": "echo", "prompt": f"t{i}"}, timeout=5
            )
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])

        def finished() -> list[dict[str, Any]] | None:
            tasks = [httpx.get(f"{coordinator.url}/api/tasks/{i}", timeout=5).json() for i in ids]
            return tasks if all(t["status"] == "succeeded" for t in tasks) else None

        tasks = wait("the tasks to succeed", finished, 30, *nodes)
        ran_on = [t["node_id"] for t in tasks]
        assert ran_on.count("worker-1") >= 2, ran_on
        assert ran_on.count("coordinator-1") >= 2, ran_on

        # one primary, the same epoch, for a minute
        until = time.monotonic() + STABLE_FOR
        while time.monotonic() < until:
            now = health(coordinator)
            assert (now["role"], now["epoch"], now["status"]) == ("primary", epoch, "healthy")
            assert health(worker)["status"] == "healthy"
            time.sleep(1.0)
        assert "fenced out" not in coordinator.log()
    finally:
        for node in nodes:
            node.terminate()


def test_coordinators_whose_voter_sets_differ_refuse_to_campaign(
    tmp_path: Path, postgres_url: str
) -> None:
    a_ip, b_ip = "127.0.0.63", "127.0.0.64"
    a_mesh, b_mesh = free_port(a_ip), free_port(b_ip)
    a_env = node_env("c-a", a_ip, a_mesh, free_port(a_ip), postgres_url)
    b_env = node_env("c-b", b_ip, b_mesh, free_port(b_ip), postgres_url)
    # both coordinators (the default role), each naming the other by address only: each
    # one's voter set is itself alone
    a_env["BRIO_MESH_PEERS"] = f"{b_ip}:{b_mesh}"
    b_env["BRIO_MESH_PEERS"] = f"{a_ip}:{a_mesh}"
    a = start(tmp_path, "c-a", a_ip, a_env)
    b = start(tmp_path, "c-b", b_ip, b_env)
    nodes = (a, b)
    try:
        wait(
            "both degraded",
            lambda: all(health(n)["status"] == "degraded" for n in nodes),
            30,
            *nodes,
        )
        until = time.monotonic() + 10  # past the lease's restart wait and election timeout
        while time.monotonic() < until:
            for node in nodes:
                body = health(node)
                assert body["role"] == "standby", body
                assert any("not in this node's voter set" in p for p in body["problems"]), body
            time.sleep(0.5)
        assert "not campaigning" in a.log() and "BRIO_MESH_LEASE_VOTERS" in a.log()
    finally:
        for node in nodes:
            node.terminate()
    # The fix the message names: the same voter set on both, and one of them is primary.
    for name, env in (("c-a", a_env), ("c-b", b_env)):
        env["BRIO_MESH_LEASE_VOTERS"] = "c-a,c-b"
        os.rename(tmp_path / name, tmp_path / f"{name}-before")
    a = start(tmp_path, "c-a", a_ip, a_env)
    b = start(tmp_path, "c-b", b_ip, b_env)
    nodes = (a, b)
    try:
        roles = wait(
            "one primary",
            lambda: (r := sorted(health(n)["role"] for n in nodes)) == ["primary", "standby"] and r,
            40,
            *nodes,
        )
        assert roles == ["primary", "standby"]
        assert all(health(n)["problems"] == [] for n in nodes)
    finally:
        for node in nodes:
            node.terminate()
