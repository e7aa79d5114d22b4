"""Nodes with the mesh on, in one process, on loopback, sharing a real PostgreSQL.

The process tests (tests/system/test_mesh_cluster.py) cover the cluster as an operator runs
it; these cover the node's mesh behaviour in detail: DNS discovery end to end, cancelling a
task that runs on another node, one-hop forwarding of ``agent.invoke``, who may publish task
events, and the HTTP paths only coordinators serve.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import dnslib
import httpx
import pytest
import trio

from brio import aio
from brio.mesh import pb
from brio.mesh.transport import ChannelPool, MeshCallError, TransportStats
from brio.node.root import NodeHandle
from tests.dns import DnsServer
from tests.mesh.helpers import FAST, mesh_config, started

pytestmark = pytest.mark.postgres


@asynccontextmanager
async def coordinator_and_worker(
    tmp_path: Path, db: str
) -> AsyncIterator[tuple[NodeHandle, NodeHandle]]:
    """Coordinator c1 (127.0.0.2, HTTP on) with worker w1 (127.0.0.3) as a static peer."""
    worker_cfg = mesh_config(tmp_path, "w1", "worker", "127.0.0.3", db, server={"enabled": False})
    async with started(worker_cfg) as (worker,):
        coord_cfg = mesh_config(
            tmp_path, "c1", "coordinator", "127.0.0.2", db, peers=[{"address": worker.mesh_address}]
        )
        async with started(coord_cfg) as (coord,):
            await wait_healthy(coord, "w1")
            yield coord, worker


async def wait_healthy(handle: NodeHandle, *node_ids: str, timeout: float = 10) -> None:
    assert handle.mesh is not None
    with trio.fail_after(timeout):
        while True:
            states = handle.mesh.membership.known_nodes()
            if all(str(states.get(n)) in ("healthy", "degraded") for n in node_ids):
                return
            await trio.sleep(0.05)


async def call(
    handle: NodeHandle, address: str, target: str, method: str, payload: Any, as_node: str
) -> pb.MeshResponse:
    async with aio.open_loop():
        pool = ChannelPool(None, as_node, TransportStats())
        try:
            return await pool.unary(
                address,
                "/brio.mesh.v1.Mesh/Call",
                pb.MeshRequest(target=target, method=method, json=json.dumps(payload)),
                pb.MeshResponse,
                10,
            )
        finally:
            pool.close()


async def test_dns_discovery_finds_and_drops_peers(
    tmp_path: Path,
    postgres_url: str,
    dns_server: DnsServer,
) -> None:
    coord_cfg = mesh_config(
        tmp_path,
        "c1",
        "coordinator",
        "127.0.0.2",
        postgres_url,
        discovery={
            "method": "dns",
            "dns_name": "_mesh._tcp.brio.test",
            "dns_servers": [dns_server.address],
            "refresh_interval": 0.1,
        },
    )
    worker_cfg = mesh_config(
        tmp_path, "w1", "worker", "127.0.0.3", postgres_url, server={"enabled": False}
    )
    async with started(coord_cfg) as (coord,):
        assert coord.mesh is not None
        async with started(worker_cfg) as (worker,):
            assert worker.mesh_address is not None
            port = int(worker.mesh_address.rsplit(":", 1)[1])
            dns_server.zone.set(
                {
                    "_mesh._tcp.brio.test": [dnslib.SRV(target="w1.brio.test", port=port)],
                    "w1.brio.test": [dnslib.A("127.0.0.3")],
                }
            )
            await wait_healthy(coord, "w1")
            peer = coord.mesh.membership.by_node_id("w1")
            assert peer is not None and peer.address == f"127.0.0.3:{port}"
            assert peer.role == "worker"  # learned from its heartbeat
            assert not peer.static
        # the worker is gone and so is its record: the row is dropped at the next refresh,
        # not kept as "failed" for remove_delay (300 s by default)
        dns_server.zone.set({"_mesh._tcp.brio.test": []})
        with trio.fail_after(10):
            while coord.mesh.membership.get(peer.address) is not None:
                await trio.sleep(0.05)


async def test_cancelling_a_task_stops_its_agent_on_the_worker(
    tmp_path: Path, postgres_url: str
) -> None:
    async with coordinator_and_worker(tmp_path, postgres_url) as (coord, worker):
        assert worker.mesh is not None
        async with httpx.AsyncClient(base_url=coord.http_urls[0], timeout=10) as client:
            reply = await client.post(
                "/api/tasks",
                json={"agent": "w1/sleep", "prompt": "", "input": {"ms": 30000}},
            )
            assert reply.status_code == 202, reply.text
            task_id = reply.json()["id"]
            with trio.fail_after(10):
                while worker.mesh.supervisor.active == 0:
                    await trio.sleep(0.02)
            reply = await client.post(f"/api/tasks/{task_id}/cancel")
            assert reply.status_code == 200, reply.text
            with trio.fail_after(10):
                while worker.mesh.supervisor.active:
                    await trio.sleep(0.02)
            task = (await client.get(f"/api/tasks/{task_id}")).json()
        assert task["status"] == "cancelled"
        assert task["node_id"] == "w1"


async def test_agent_invoke_is_forwarded_one_hop(tmp_path: Path, postgres_url: str) -> None:
    async with coordinator_and_worker(tmp_path, postgres_url) as (coord, _worker):
        assert coord.mesh_address is not None
        answer = await call(
            coord, coord.mesh_address, "w1/echo", "agent.invoke", {"prompt": "hop"}, "tester"
        )
        assert answer.node_id == "w1"
        assert json.loads(answer.json or "") == {"result": "hop"}
        # a target on this node runs here
        answer = await call(
            coord, coord.mesh_address, "c1/echo", "agent.invoke", {"prompt": "x"}, "tester"
        )
        assert answer.node_id == "c1" and json.loads(answer.json or "") == {"result": "x"}
        # task events are taken only from mesh peers
        events = {"events": [{"type": "task_update", "task_id": "t", "data": {}}]}
        answer = await call(coord, coord.mesh_address, "", "task.events", events, "stranger")
        assert answer.error is not None
        assert answer.error.code == pb.MeshErrorCode.PERMISSION_DENIED
        answer = await call(coord, coord.mesh_address, "", "task.events", events, "w1")
        assert answer.error is None and json.loads(answer.json or "") == {"published": 1}
        # a bad payload is a typed error naming the field
        answer = await call(
            coord, coord.mesh_address, "echo", "agent.invoke", {"prompt": 5}, "tester"
        )
        assert answer.error is not None
        assert answer.error.code == pb.MeshErrorCode.BAD_REQUEST
        assert "payload.prompt" in answer.error.message


async def test_coordinator_only_endpoints_are_refused_on_workers(
    tmp_path: Path, postgres_url: str
) -> None:
    access = {"coordinator_only_endpoints": ["/api/tasks"]}
    worker_cfg = mesh_config(
        tmp_path, "w1", "worker", "127.0.0.3", postgres_url, access_control=access
    )
    coord_cfg = mesh_config(
        tmp_path, "c1", "coordinator", "127.0.0.2", postgres_url, access_control=access
    )
    async with (
        started(worker_cfg, coord_cfg) as (worker, coord),
        httpx.AsyncClient(timeout=10) as client,
    ):
        refused = await client.get(worker.http_urls[0] + "/api/tasks")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "coordinator_only"
        assert "/api/tasks" in refused.json()["error"]["message"]
        sub = await client.get(worker.http_urls[0] + "/api/tasks/some-id")
        assert sub.status_code == 403
        other = await client.get(worker.http_urls[0] + "/api/agents")
        assert other.status_code == 200
        served = await client.get(coord.http_urls[0] + "/api/tasks")
        assert served.status_code == 200


async def test_shutdown_is_clean_while_peers_are_talking(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping a node mid-conversation: GOAWAY to its peers, no asyncio errors, no leftovers."""
    worker_cfg = mesh_config(
        tmp_path, "w1", "worker", "127.0.0.3", postgres_url, server={"enabled": False}
    )
    async with started(worker_cfg) as (worker,):
        assert worker.mesh is not None
        coord_cfg = mesh_config(
            tmp_path,
            "c1",
            "coordinator",
            "127.0.0.2",
            postgres_url,
            peers=[{"address": worker.mesh_address}],
        )
        async with started(coord_cfg) as (coord,):
            await wait_healthy(coord, "w1")
            await wait_healthy(worker, "c1")
            # heartbeats flow both ways, and calls go through when it stops
            assert coord.mesh_address is not None
            for _ in range(3):
                answer = await call(
                    coord, coord.mesh_address, "w1/echo", "agent.invoke", {"prompt": "x"}, "t"
                )
                assert answer.error is None
        # the coordinator is gone: the worker notices at its next heartbeat
        with trio.fail_after(5):
            while str(worker.mesh.membership.known_nodes()["c1"]) not in ("suspected", "failed"):
                await trio.sleep(0.02)
        assert worker.mesh.connected_peers() == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert not any("Traceback" in r.getMessage() for r in caplog.records)


async def test_failed_peers_are_removed_after_remove_delay(
    tmp_path: Path, postgres_url: str
) -> None:
    """A node that only dialled us is forgotten once removed; a configured one stays listed
    as removed (and probed: it rejoins on its own when it answers again)."""
    detection = {**FAST, "remove_delay": 0.3, "auto_remove_failed": True}
    coord_cfg = mesh_config(
        tmp_path, "c1", "coordinator", "127.0.0.2", postgres_url, failure_detection=detection
    )
    async with started(coord_cfg) as (coord,):
        assert coord.mesh is not None
        w1_cfg = mesh_config(
            tmp_path,
            "w1",
            "worker",
            "127.0.0.3",
            postgres_url,
            server={"enabled": False},
            peers=[{"address": coord.mesh_address}],
        )
        async with started(w1_cfg) as (w1,):
            await wait_healthy(coord, "w1")  # learned from w1's heartbeats only
            w1_address = w1.mesh_address
        with trio.fail_after(10):
            while coord.mesh.membership.get(str(w1_address)) is not None:
                await trio.sleep(0.02)
        assert "w1" not in coord.mesh.membership.known_nodes()

    # a configured peer: removed, still listed, and back when it answers again
    with socket.socket() as probe:
        probe.bind(("127.0.0.4", 0))
        w2_address = f"127.0.0.4:{probe.getsockname()[1]}"
    w2_cfg = mesh_config(
        tmp_path,
        "w2",
        "worker",
        "127.0.0.4",
        postgres_url,
        server={"enabled": False},
        listen_addr=w2_address,
    )
    coord_cfg = mesh_config(
        tmp_path,
        "c1",
        "coordinator",
        "127.0.0.2",
        postgres_url,
        failure_detection=detection,
        peers=[{"address": w2_address, "id": "w2"}],
    )
    async with started(coord_cfg) as (coord,):
        assert coord.mesh is not None
        async with started(w2_cfg):
            await wait_healthy(coord, "w2")
        with trio.fail_after(10):
            while str(coord.mesh.membership.known_nodes()["w2"]) != "removed":
                await trio.sleep(0.02)
        peer = coord.mesh.membership.get(w2_address)
        assert peer is not None and peer.static
        async with started(w2_cfg):
            await wait_healthy(coord, "w2")


async def test_a_configured_role_wins_over_what_heartbeats_claim(
    tmp_path: Path, postgres_url: str
) -> None:
    """A node configured as a worker cannot get coordinator rights by claiming the role."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.3", 0))
        liar_address = f"127.0.0.3:{probe.getsockname()[1]}"
    liar_cfg = mesh_config(
        tmp_path,
        "w1",
        "coordinator",  # what its heartbeats say
        "127.0.0.3",
        postgres_url,
        server={"enabled": False},
        listen_addr=liar_address,
    )
    coord_cfg = mesh_config(
        tmp_path,
        "c1",
        "coordinator",
        "127.0.0.2",
        postgres_url,
        peers=[{"id": "w1", "address": liar_address, "role": "worker"}],  # the operator's word
    )
    async with started(liar_cfg, coord_cfg) as (_liar, coord):
        await wait_healthy(coord, "w1")
        assert coord.mesh is not None
        assert not coord.mesh.peers.is_coordinator("w1")
        assert coord.mesh.peers.is_coordinator("c1")
        async with aio.open_loop():
            pool = ChannelPool(None, "w1", TransportStats())  # claims to be w1 (no mTLS here)
            try:
                with pytest.raises(MeshCallError) as refused:
                    await pool.unary(
                        str(coord.mesh_address),
                        "/brio.mesh.v1.MeshAdmin/Drain",
                        pb.NodeRequest(node_id="c1"),
                        pb.ActionResponse,
                        5,
                    )
            finally:
                pool.close()
        assert refused.value.status == "PERMISSION_DENIED"
        assert "accepted only from coordinators" in refused.value.detail


async def test_concurrent_first_calls_share_one_channel(tmp_path: Path, postgres_url: str) -> None:
    config = mesh_config(tmp_path, "solo", "coordinator", "127.0.0.2", postgres_url)
    async with started(config) as (node,), aio.open_loop():
        pool = ChannelPool(None, "tester", TransportStats())
        try:
            request = pb.HeartbeatRequest(
                sender=pb.NodeInfo(node_id="tester", role="worker", address="127.0.0.9:1")
            )

            async def beat() -> None:
                await pool.unary(
                    str(node.mesh_address),
                    "/brio.mesh.v1.Mesh/Heartbeat",
                    request,
                    pb.HeartbeatResponse,
                    5,
                )

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(beat)
            assert len(pool._channels) == 1
            # bytes are counted once, as the codec encodes and decodes, on both ends
            size = len(bytes(request)) + 5
            assert pool.stats.bytes_sent == 10 * size
            assert pool.stats.bytes_received > 10 * 5
            assert node.mesh is not None
            assert node.mesh.stats.bytes_received >= 10 * size
            assert node.mesh.stats.bytes_sent >= pool.stats.bytes_received
        finally:
            pool.close()
