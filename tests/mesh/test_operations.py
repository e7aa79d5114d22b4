"""``brio mesh drain|leave|remove`` and ``stats`` at the handlers, without sockets.

Nodes are ``Mesh.build`` on SQLite (``built_mesh``), their handlers served in memory
(``tests/mesh/channel.py``); one node's peer calls reach another's handlers through
``attach``. What needs real processes (a process that exits 0 on leave, tasks that move after
``kill -STOP``) is in ``tests/system/test_operations.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from brio import aio
from brio.mesh import methods, pb
from brio.mesh.assembly import Mesh
from brio.mesh.handlers import MeshHandlers
from brio.mesh.local import TaskMeter
from brio.tasks.events import EventBus
from tests.mesh.channel import Identity, InMemoryServer, attach, serve_in_memory, unary
from tests.mesh.helpers import built_mesh

C1 = "127.0.0.2:50051"
W1 = "127.0.0.3:50051"


@dataclass
class Node:
    mesh: Mesh
    server: InMemoryServer
    channel: Channel  # no certificate: callers name themselves per request

    async def ask(self, method: methods.Method, request: object, who: str) -> pb.ActionResponse:
        reply: pb.ActionResponse = await unary(self.channel, method, request, node_id=who)
        return reply

    async def refused(self, method: methods.Method, request: object, who: str) -> GRPCError:
        with pytest.raises(GRPCError) as caught:
            await unary(self.channel, method, request, node_id=who)
        return caught.value


@asynccontextmanager
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    """c1 (a coordinator) and w1 (a worker), each in the other's table, calling each other
    in memory; each one's caller identity is its certificate on the link from it."""
    async with (
        aio.open_loop(),
        built_mesh(tmp_path / "c1", "c1") as c1,
        built_mesh(tmp_path / "w1", "w1", "worker") as w1,
        serve_in_memory(MeshHandlers(c1).services(), stats=c1.stats) as c1_server,
        serve_in_memory(MeshHandlers(w1).services(), stats=w1.stats) as w1_server,
        trio.open_nursery() as nursery,
    ):
        now = trio.current_time()
        c1.membership.add(W1, now, node_id="w1", role="worker")
        w1.membership.add(C1, now, node_id="c1", role="coordinator")
        attach(c1.calls.pool, W1, await w1_server.connect(Identity(cert_node_id="c1")))
        attach(w1.calls.pool, C1, await c1_server.connect(Identity(cert_node_id="w1")))
        await nursery.start(c1.calls.run)
        await nursery.start(w1.calls.run)
        yield (
            Node(c1, c1_server, await c1_server.connect()),
            Node(w1, w1_server, await w1_server.connect()),
        )
        nursery.cancel_scope.cancel()


async def test_a_node_drains_itself_and_says_so_everywhere(tmp_path: Path) -> None:
    async with pair(tmp_path) as (_, w1):
        reply = await w1.ask(methods.DRAIN, pb.NodeRequest(), "w1")
        assert reply.node_id == "w1"
        assert reply.message == (
            "w1 is draining: no new tasks are placed on it; 0 running task(s) finish there"
        )
        assert w1.mesh.local.draining and w1.mesh.local.info().draining
        assert [c.draining for c in w1.mesh.directory.candidates()] == [True]
        (row,) = [n for n in await w1.mesh.store.list_nodes() if n.id == "w1"]
        assert row.status == "draining"
        again = await w1.ask(methods.DRAIN, pb.NodeRequest(node_id="w1"), "w1")
        assert again.message.startswith("w1 was already draining")


async def test_a_coordinator_drains_another_node_through_it(tmp_path: Path) -> None:
    async with pair(tmp_path) as (c1, w1):
        reply = await c1.ask(methods.DRAIN, pb.NodeRequest(node_id="w1"), "c1")
        assert reply.node_id == "w1" and reply.message.startswith("w1 is draining")
        assert w1.mesh.local.draining and not c1.mesh.local.draining
        error = await c1.refused(methods.DRAIN, pb.NodeRequest(node_id="w9"), "c1")
        assert error.status is Status.NOT_FOUND
        assert error.message == "unknown node 'w9'; known nodes: c1, w1"
        # a worker may not drain others
        error = await w1.refused(methods.DRAIN, pb.NodeRequest(node_id="c1"), "w1")
        assert error.status is Status.PERMISSION_DENIED


async def test_leave_needs_a_drain_or_force_and_acts_on_the_asked_node_only(
    tmp_path: Path,
) -> None:
    async with pair(tmp_path) as (c1, w1):
        error = await w1.refused(methods.LEAVE, pb.NodeRequest(), "w1")
        assert error.status is Status.FAILED_PRECONDITION
        assert str(error.message).startswith("w1 is not draining: run `brio mesh drain` first")
        assert "--force" in str(error.message)
        error = await c1.refused(methods.LEAVE, pb.NodeRequest(node_id="w1"), "c1")
        assert error.status is Status.INVALID_ARGUMENT
        assert "run `brio mesh leave` beside w1 (this is c1)" in str(error.message)
        assert not w1.mesh.leave_requested.is_set()


async def test_leave_says_goodbye_and_the_peer_drops_the_node_at_once(tmp_path: Path) -> None:
    async with pair(tmp_path) as (c1, w1):
        await w1.ask(methods.DRAIN, pb.NodeRequest(), "w1")
        with trio.fail_after(10):
            reply = await w1.ask(methods.LEAVE, pb.NodeRequest(), "w1")
        assert reply.message == ("w1 left the mesh; goodbye said to c1; the node stops now"), (
            reply.message
        )
        assert w1.mesh.leave_requested.is_set()
        # c1 forgot the row (it was neither configured nor discovered) and gives it no work
        assert c1.mesh.membership.by_node_id("w1") is None
        assert c1.mesh.directory.departed["w1"].how == "left"
        assert c1.mesh.directory.down({"w1"}) == ["w1"]
        # the leaving process's heartbeats do not bring it back; a new process does
        info = w1.mesh.local.info()
        info.address = W1  # (built meshes all advertise 127.0.0.2:0)
        await unary(c1.channel, methods.HEARTBEAT, pb.HeartbeatRequest(sender=info))
        assert c1.mesh.membership.by_node_id("w1") is None
        info.started_unix_ms += 1
        await unary(c1.channel, methods.HEARTBEAT, pb.HeartbeatRequest(sender=info))
        assert c1.mesh.membership.by_node_id("w1") is not None
        assert "w1" not in c1.mesh.directory.departed
        error = await w1.refused(methods.LEAVE, pb.NodeRequest(force=True), "w1")
        assert error.message == "w1 is already leaving"


async def test_a_goodbye_is_taken_only_from_peers(tmp_path: Path) -> None:
    async with pair(tmp_path) as (c1, _):
        request = pb.MeshRequest(method="node.goodbye", json=json.dumps({}))
        answer = await unary(c1.channel, methods.CALL, request, node_id="stranger")
        assert answer.error.code == pb.MeshErrorCode.PERMISSION_DENIED
        assert not c1.mesh.directory.departed


async def test_remove_needs_force_another_node_and_a_coordinator(tmp_path: Path) -> None:
    async with pair(tmp_path) as (c1, w1):
        error = await c1.refused(methods.REMOVE, pb.NodeRequest(node_id="w1"), "c1")
        assert error.status is Status.FAILED_PRECONDITION
        assert str(error.message).startswith("remove takes w1 out at once")
        assert "pass --force" in str(error.message) and "brio mesh drain w1" in str(error.message)
        error = await c1.refused(methods.REMOVE, pb.NodeRequest(force=True), "c1")
        assert error.status is Status.INVALID_ARGUMENT
        error = await c1.refused(methods.REMOVE, pb.NodeRequest(node_id="c1", force=True), "c1")
        assert str(error.message).startswith("c1 cannot remove itself")
        error = await c1.refused(methods.REMOVE, pb.NodeRequest(node_id="w9", force=True), "c1")
        assert error.status is Status.NOT_FOUND
        assert error.message == "unknown node 'w9'; known nodes: c1, w1"
        error = await w1.refused(methods.REMOVE, pb.NodeRequest(node_id="c1", force=True), "w1")
        assert error.status is Status.PERMISSION_DENIED
        assert not c1.mesh.directory.departed


async def test_remove_force_takes_the_node_out_here(tmp_path: Path) -> None:
    async with pair(tmp_path) as (c1, w1):
        w1_info = w1.mesh.local.info()
        w1_info.address = W1
        await unary(c1.channel, methods.HEARTBEAT, pb.HeartbeatRequest(sender=w1_info))
        request = pb.NodeRequest(node_id="w1", force=True)
        reply = await c1.ask(methods.REMOVE, request, "c1")
        assert reply.node_id == "w1" and reply.moved == 0
        # no lease runs here: no primary is known
        assert reply.message == (
            "w1 removed: no more tasks go to it; no primary is known: its tasks are "
            "requeued by the next primary, once it sees w1 fail"
        )
        gone = c1.mesh.directory.departed["w1"]
        assert gone.how == "removed" and gone.by == "c1"
        assert gone.process == w1_info.started_unix_ms
        assert "w1" not in {c.node_id for c in c1.mesh.directory.candidates()}
        again = await c1.ask(methods.REMOVE, request, "c1")
        assert again.message.startswith("w1 was already removed")
        (row,) = [n for n in await c1.mesh.store.list_nodes() if n.id == "w1"]
        assert row.status == "removed"
        # the same process, heartbeating again (resumed after SIGSTOP), stays out
        await unary(c1.channel, methods.HEARTBEAT, pb.HeartbeatRequest(sender=w1_info))
        assert "w1" in c1.mesh.directory.departed


async def test_status_shows_a_configured_node_that_left(tmp_path: Path) -> None:
    peers = [{"id": "w1", "address": W1, "role": "worker"}]
    async with aio.open_loop(), built_mesh(tmp_path, "c1", peers=peers) as c1:
        c1.membership.add(W1, trio.current_time(), node_id="w1", role="worker", static=True)
        async with serve_in_memory(MeshHandlers(c1).services(), stats=c1.stats) as server:
            channel = await server.connect(Identity(cert_node_id="w1"))
            goodbye = pb.MeshRequest(method="node.goodbye", json=json.dumps({}))
            answer = await unary(channel, methods.CALL, goodbye)
            assert json.loads(answer.json) == {"dropped": True}
            status = await unary(channel, methods.STATUS, pb.StatusRequest())
            assert [(p.node_id, p.status) for p in status.peers] == [("w1", "left")]


async def test_stats_count_tasks_run_and_their_mean_time(tmp_path: Path) -> None:
    meter = TaskMeter("w1", EventBus())
    meter.observe("task_update", "t1", {"status": "running", "node_id": "w1"}, 10.0)
    meter.observe("task_update", "t2", {"status": "running", "node_id": "w1"}, 10.5)
    meter.observe("task_update", "t3", {"status": "running", "node_id": "w2"}, 10.5)
    meter.observe("task_completed", "t1", {"status": "succeeded", "node_id": "w1"}, 11.0)
    meter.observe("task_update", "t2", {"status": "queued", "node_id": "w1"}, 12.0)
    meter.observe("task_completed", "t2", {"status": "cancelled", "node_id": "w1"}, 13.0)
    assert (meter.run_count, meter.ended, meter.mean_seconds) == (2, 1, 1.0)
    async with pair(tmp_path) as (c1, _):
        c1.mesh.meter.observe("task_update", "t1", {"status": "running", "node_id": "c1"}, 1.0)
        c1.mesh.meter.observe("task_completed", "t1", {"node_id": "c1"}, 1.25)
        stats = await unary(c1.channel, methods.STATS, pb.StatsRequest())
        assert (stats.tasks_run, stats.tasks_running, stats.mean_task_ms) == (1, 0, 250.0)
