"""What a node answers on ``Mesh`` and ``MeshAdmin``, through an in-memory HTTP/2 connection.

``MeshHandlers(mesh).services()`` are served by ``tests/mesh/channel.py`` with no socket and
no PostgreSQL; the ``Mesh`` is built by ``Mesh.build`` on a SQLite store in ``tmp_path`` and
none of its parts is started. Who calls is the test's say: a certificate's node id per
connection (``Identity``), a claimed node id per request (the ``brio-node-id`` header).

What needs real sockets, TLS or PostgreSQL (the allow-list on accept, mTLS handshakes, nodes
heartbeating each other, the lease against a real store) stays in ``test_mesh_node.py``,
``test_lease_driver.py``, ``test_tls.py`` and ``test_abuse.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from brio import aio
from brio.core.lease import voters_digest
from brio.mesh import methods, pb
from brio.mesh.assembly import Mesh
from brio.mesh.handlers import MeshHandlers
from tests.mesh.channel import Identity, InMemoryServer, attach, serve_in_memory, unary
from tests.mesh.helpers import built_mesh

Code = pb.MeshErrorCode
W1 = "127.0.0.3:50051"  # where the mesh table says w1 is; nothing listens there


@dataclass
class Served:
    mesh: Mesh
    server: InMemoryServer
    channel: Channel  # a connection without a client certificate

    async def call(
        self,
        target: str,
        method: str,
        payload: Any = None,
        *,
        node_id: str | None = "tester",
        raw: str | None = None,
        **fields: Any,
    ) -> pb.MeshResponse:
        request = pb.MeshRequest(target=target, method=method, **fields)
        if raw is not None:
            request.json = raw
        elif payload is not None:
            request.json = json.dumps(payload)
        reply: pb.MeshResponse = await unary(self.channel, methods.CALL, request, node_id=node_id)
        return reply

    async def refused(
        self,
        method: methods.Method,
        request: Any,
        *,
        node_id: str | None = None,
        identity: Identity | None = None,
    ) -> GRPCError:
        """The gRPC error the node answers ``request`` with (the test fails on a reply)."""
        channel = self.channel if identity is None else await self.server.connect(identity)
        with pytest.raises(GRPCError) as caught:
            await unary(channel, method, request, node_id=node_id)
        return caught.value


@asynccontextmanager
async def serving(tmp_path: Path, node_id: str = "c1", **mesh: Any) -> AsyncIterator[Served]:
    async with (
        aio.open_loop(),
        built_mesh(tmp_path, node_id, **mesh) as built,
        serve_in_memory(MeshHandlers(built).services(), stats=built.stats) as server,
    ):
        yield Served(built, server, await server.connect())


def with_peer(mesh: Mesh, node_id: str = "w1", address: str = W1, role: str = "worker") -> None:
    """A row in the mesh table, as discovery or a heartbeat would make it."""
    mesh.membership.add(address, trio.current_time(), node_id=node_id, role=role)


def node(node_id: str, role: str = "worker", address: str = "127.0.0.9:1") -> pb.NodeInfo:
    return pb.NodeInfo(node_id=node_id, role=role, address=address)


# --- Heartbeat -------------------------------------------------------------------------------


async def test_a_heartbeat_is_answered_with_the_node_and_learns_the_sender(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as s:
        request = pb.HeartbeatRequest(sender=node("w1", address=W1))
        reply = await unary(s.channel, methods.HEARTBEAT, request)
        assert reply.responder.node_id == "c1" and reply.responder.role == "coordinator"
        assert s.mesh.peers.heartbeats_received == 1
        peer = s.mesh.membership.by_node_id("w1")
        assert peer is not None and peer.address == W1 and peer.role == "worker"
        # its certificate may say so too
        proven = await s.server.connect(Identity(cert_node_id="w1"))
        await unary(proven, methods.HEARTBEAT, request)
        assert s.mesh.peers.heartbeats_received == 2


async def test_a_heartbeat_must_name_its_sender_and_a_role(tmp_path: Path) -> None:
    async with serving(tmp_path) as s:
        error = await s.refused(methods.HEARTBEAT, pb.HeartbeatRequest())
        assert error.status is Status.INVALID_ARGUMENT
        assert error.message == "sender.node_id: required"
        error = await s.refused(methods.HEARTBEAT, pb.HeartbeatRequest(sender=node("w1", "boss")))
        assert error.status is Status.INVALID_ARGUMENT
        assert error.message == "sender.role: expected 'coordinator' or 'worker', got 'boss'"
        assert s.mesh.peers.heartbeats_received == 0


async def test_a_heartbeat_from_another_certificate_is_refused(tmp_path: Path) -> None:
    async with serving(tmp_path) as s:
        request = pb.HeartbeatRequest(sender=node("w1"))
        error = await s.refused(
            methods.HEARTBEAT, request, node_id="w1", identity=Identity(cert_node_id="w2")
        )
        assert error.status is Status.PERMISSION_DENIED
        assert error.message == (
            "the certificate is for 'w2' but the heartbeat says it is from 'w1'"
        )
        assert s.mesh.peers.heartbeats_received == 0
        assert s.mesh.membership.by_node_id("w1") is None


# --- Call ----------------------------------------------------------------------------------


async def test_agent_invoke_runs_a_local_agent(tmp_path: Path) -> None:
    async with serving(tmp_path) as s:
        for target in ("echo", "c1/echo"):
            answer = await s.call(target, "agent.invoke", {"prompt": "hi"})
            assert answer.error is None and answer.node_id == "c1"
            assert json.loads(answer.json or "") == {"result": "hi"}


async def test_task_events_are_taken_only_from_mesh_peers(tmp_path: Path) -> None:
    events = {"events": [{"type": "task_update", "task_id": "t1", "data": {"n": 1}}]}
    async with serving(tmp_path) as s:
        answer = await s.call("", "task.events", events, node_id="stranger")
        assert answer.error is not None and answer.error.code == Code.PERMISSION_DENIED
        assert answer.error.message == "task events are taken only from mesh peers"
        answer = await s.call("", "task.events", events, node_id=None)  # nobody at all
        assert answer.error is not None and answer.error.code == Code.PERMISSION_DENIED
        with_peer(s.mesh)
        with s.mesh.forwarder.bus.subscribe() as sub:
            sub.everything = True
            answer = await s.call("", "task.events", events, node_id="w1")
            assert answer.error is None and json.loads(answer.json or "") == {"published": 1}
            event = sub.receive.receive_nowait()
        assert (event.type, event.task_id, event.origin) == ("task_update", "t1", "w1")
        # a peer's certificate counts as much as its header
        proven = await s.server.connect(Identity(cert_node_id="w1"))
        request = pb.MeshRequest(method="task.events", json=json.dumps(events))
        answer = await unary(proven, methods.CALL, request)
        assert answer.error is None
        # a malformed list names the field
        bad = {"events": [{"type": "task_update"}]}
        answer = await s.call("", "task.events", bad, node_id="w1")
        assert answer.error is not None and answer.error.code == Code.BAD_REQUEST
        assert answer.error.message.startswith("payload.events: expected a list")


async def test_an_unknown_method_is_a_bad_request(tmp_path: Path) -> None:
    async with serving(tmp_path) as s:
        answer = await s.call("echo", "agent.explode", {})
        assert answer.error is not None and answer.error.code == Code.BAD_REQUEST
        assert answer.error.message.startswith("method: unknown 'agent.explode'")
        assert answer.node_id == "c1"


@pytest.mark.parametrize(
    ("method", "payload", "raw", "field"),
    [
        ("agent.invoke", {"prompt": 5}, None, "payload.prompt: expected a string"),
        ("agent.invoke", {"input": [1]}, None, "payload.input: expected a JSON object"),
        ("agent.invoke", None, "[1, 2]", "payload: expected a JSON object, got list"),
        ("agent.invoke", None, "{not json", "payload: not valid JSON"),
        ("agent.invoke", None, None, "payload: expected a JSON object in the 'json' field"),
        ("task.run", {}, None, "payload.task_id: expected a non-empty string"),
        ("task.cancel", {"task_id": ""}, None, "payload.task_id: expected a non-empty string"),
    ],
)
async def test_a_bad_payload_is_a_bad_request_naming_the_field(
    tmp_path: Path, method: str, payload: Any, raw: str | None, field: str
) -> None:
    async with serving(tmp_path) as s:
        answer = await s.call("echo", method, payload, raw=raw)
        assert answer.error is not None and answer.error.code == Code.BAD_REQUEST
        assert answer.error.message.startswith(field), answer.error.message


async def test_task_run_and_cancel_answer_for_a_local_task(tmp_path: Path) -> None:
    async with serving(tmp_path) as s:
        answer = await s.call("echo", "task.run", {"task_id": "t1"})
        assert json.loads(answer.json or "") == {"accepted": True, "task_id": "t1"}
        answer = await s.call("echo", "task.cancel", {"task_id": "t1"})
        assert json.loads(answer.json or "") == {"stopped": False, "task_id": "t1"}


async def test_the_primary_s_batch_notice_names_no_agent(tmp_path: Path) -> None:
    """The placer tells a node of a batch of tasks, of any agents, with no target."""
    async with serving(tmp_path) as s:
        answer = await s.call("", "task.run", {"task_ids": ["t1", "t2"]})
        assert answer.error is None, answer.error
        assert json.loads(answer.json or "") == {"accepted": True, "tasks": 2}
        answer = await s.call("", "task.run", {"task_ids": ["t1", ""]})
        assert answer.error is not None and answer.error.code == Code.BAD_REQUEST
        assert answer.error.message.startswith("payload.task_ids: expected a list")
        answer = await s.call("", "task.cancel", {"task_id": "t1"})  # others still need one
        assert answer.error is not None and answer.error.code == Code.UNKNOWN_NODE


async def test_an_unknown_agent_or_node_is_a_typed_error(tmp_path: Path) -> None:
    async with serving(tmp_path) as s:
        answer = await s.call("nope", "agent.invoke", {"prompt": ""})
        assert answer.error is not None and answer.error.code == Code.UNKNOWN_AGENT
        assert answer.error.message.startswith("unknown agent 'nope' on c1; known agents: ")
        assert "echo" in answer.error.message
        answer = await s.call("w9/echo", "agent.invoke", {"prompt": ""})
        assert answer.error is not None and answer.error.code == Code.UNKNOWN_NODE
        assert "w9" in answer.error.message
        # only agent.invoke is forwarded; a task notice for another node is refused
        with_peer(s.mesh)
        s.mesh.peers.heartbeat_received(node("w1", address=W1))
        answer = await s.call("w1/echo", "task.run", {"task_id": "t1"})
        assert answer.error is not None and answer.error.code == Code.UNKNOWN_NODE
        assert answer.error.message == "target 'w1/echo' is not on this node (c1)"


async def test_a_request_past_its_deadline_is_not_run(tmp_path: Path) -> None:
    async with serving(tmp_path) as s:
        past = int((time.time() - 1) * 1000)
        answer = await s.call("echo", "agent.invoke", {"prompt": "x"}, deadline_unix_ms=past)
        assert answer.error is not None and answer.error.code == Code.DEADLINE_EXCEEDED


async def test_agent_invoke_is_forwarded_one_hop_in_memory(tmp_path: Path) -> None:
    """c1 forwards ``w1/echo`` to w1: both nodes' handlers, joined by in-memory channels."""
    async with (
        aio.open_loop(),
        built_mesh(tmp_path / "c1", "c1") as c1,
        built_mesh(tmp_path / "w1", "w1", "worker") as w1,
        serve_in_memory(MeshHandlers(c1).services(), stats=c1.stats) as c1_server,
        serve_in_memory(MeshHandlers(w1).services(), stats=w1.stats) as w1_server,
    ):
        with_peer(c1)
        attach(c1.calls.pool, W1, await w1_server.connect(Identity(("127.0.0.2", 41000))))
        channel = await c1_server.connect()
        request = pb.MeshRequest(target="w1/echo", method="agent.invoke", json='{"prompt": "hop"}')
        answer = await unary(channel, methods.CALL, request, node_id="tester")
        assert answer.error is None and answer.node_id == "w1"
        assert json.loads(answer.json or "") == {"result": "hop"}
        # w1 saw c1 as the caller, and c1 counted one call sent
        assert w1.stats.calls_received == 1 and c1.stats.calls_sent == 1
        # Status and Stats of a peer come from the peer itself
        status = await unary(channel, methods.STATUS, pb.StatusRequest(node_id="w1"))
        assert status.node.node_id == "w1" and status.node.role == "worker"
        stats = await unary(channel, methods.STATS, pb.StatsRequest(node_id="w1"))
        assert stats.node_id == "w1" and stats.calls_received == 3


# --- Vote and Renew ----------------------------------------------------------------------------


def vote(candidate: str, voters: list[str]) -> pb.LeaseVoteRequest:
    return pb.LeaseVoteRequest(
        term=1, candidate=candidate, round=1, voters_digest=voters_digest(voters)
    )


async def test_lease_messages_are_checked_before_the_lease_sees_them(tmp_path: Path) -> None:
    voters = ["c1", "c2", "c3"]
    async with serving(tmp_path, "w1", role="worker", lease={"voters": voters}) as s:
        assert s.mesh.lease is None
        error = await s.refused(methods.VOTE, vote("c1", voters))
        assert error.status is Status.FAILED_PRECONDITION
        assert error.message == "w1 takes no part in the lease (not a voter or coordinator)"
        error = await s.refused(methods.VOTE, pb.LeaseVoteRequest())
        assert error.status is Status.INVALID_ARGUMENT and error.message == "candidate: required"
        error = await s.refused(methods.RENEW, pb.LeaseRenewRequest())
        assert error.status is Status.INVALID_ARGUMENT and error.message == "leader: required"
        error = await s.refused(
            methods.VOTE, vote("c1", voters), identity=Identity(cert_node_id="c2")
        )
        assert error.status is Status.PERMISSION_DENIED
        assert error.message == "the certificate is for 'c2' but the candidate is 'c1'"


async def test_a_voter_whose_lease_is_not_running_says_so(tmp_path: Path) -> None:
    voters = ["c1", "w1"]
    async with serving(tmp_path, "w1", role="worker", lease={"voters": voters}) as s:
        assert s.mesh.lease is not None and s.mesh.lease.core is None  # built, not started
        error = await s.refused(methods.VOTE, vote("c1", voters))
        assert error.status is Status.UNAVAILABLE
        assert error.message == "the lease is not running yet"
        renew = pb.LeaseRenewRequest(term=1, leader="c1", round=1)
        reply = await unary(s.channel, methods.RENEW, renew)
        assert not reply.ok and reply.reason == "not a voter"


# --- MeshAdmin -------------------------------------------------------------------------------


async def test_status_of_this_node_and_of_an_unknown_one(tmp_path: Path) -> None:
    async with serving(tmp_path) as s:
        with_peer(s.mesh)
        everyone = await unary(s.channel, methods.STATUS, pb.StatusRequest())
        assert everyone.node.node_id == "c1"
        assert [(p.node_id, p.address, p.status) for p in everyone.peers] == [("w1", W1, "unknown")]
        assert everyone.lease is not None and everyone.lease.role == "standby"
        itself = await unary(s.channel, methods.STATUS, pb.StatusRequest(node_id="c1"))
        assert itself.node.node_id == "c1" and itself.peers == []
        error = await s.refused(methods.STATUS, pb.StatusRequest(node_id="w9"))
        assert error.status is Status.NOT_FOUND
        assert error.message == "unknown node 'w9'; known nodes: c1, w1"


async def test_stats_counts_what_this_node_served(tmp_path: Path) -> None:
    async with serving(tmp_path) as s:
        await s.call("echo", "agent.invoke", {"prompt": "x"})
        await unary(s.channel, methods.HEARTBEAT, pb.HeartbeatRequest(sender=node("w1")))
        stats = await unary(s.channel, methods.STATS, pb.StatsRequest())
        assert (stats.node_id, stats.role) == ("c1", "coordinator")
        assert stats.calls_received == 3 and stats.heartbeats_received == 1
        assert "echo" in stats.agents
        assert stats.bytes_received > 0 and stats.bytes_sent > 0
        error = await s.refused(methods.STATS, pb.StatsRequest(node_id="w9"))
        assert error.status is Status.NOT_FOUND
        assert (error.message or "").startswith("unknown node 'w9'")


async def test_ping_arguments_are_checked(tmp_path: Path) -> None:
    async with serving(tmp_path) as s:
        error = await s.refused(methods.PING, pb.PingRequest())
        assert error.status is Status.INVALID_ARGUMENT and error.message == "node_id: required"
        error = await s.refused(methods.PING, pb.PingRequest(node_id="w9"))
        assert error.status is Status.NOT_FOUND
        with_peer(s.mesh)
        error = await s.refused(methods.PING, pb.PingRequest(node_id="w1", count=101))
        assert error.status is Status.INVALID_ARGUMENT
        assert error.message == "count: at most 100, got 101"


ACTIONS = [methods.DRAIN, methods.LEAVE, methods.REMOVE]


@pytest.mark.parametrize("method", ACTIONS, ids=lambda m: m.name)
async def test_node_actions_are_accepted_only_from_coordinators(
    tmp_path: Path, method: methods.Method
) -> None:
    name = method.name.lower()
    # c2 is a coordinator by the operator's word; w2 is a worker by the operator's word,
    # whatever its heartbeats claim
    peers = [
        {"id": "c2", "address": "127.0.0.5:50051", "role": "coordinator"},
        {"id": "w2", "address": "127.0.0.6:50051", "role": "worker"},
    ]
    async with serving(tmp_path, peers=peers) as s:
        # add the configured rows (Peers.run would), and a worker known from its heartbeat
        for peer in s.mesh.config.mesh.peers:
            with_peer(s.mesh, str(peer.id), peer.address, peer.role)
        with_peer(s.mesh)
        s.mesh.peers.heartbeat_received(node("w2", "coordinator", "127.0.0.6:50051"))
        request = pb.NodeRequest(node_id="c1")
        for who in (None, "w1", "w2"):
            error = await s.refused(method, request, node_id=who)
            assert error.status is Status.PERMISSION_DENIED
            caller = who or "an unidentified caller"
            assert error.message == (
                f"{name} of 'c1' is accepted only from coordinators; {caller} is not one"
            )
        # a worker's certificate wins over the coordinator it claims to be
        error = await s.refused(method, request, node_id="c2", identity=Identity(cert_node_id="w1"))
        assert error.status is Status.PERMISSION_DENIED
        # from a coordinator, or from this node about itself, the action is authorised: it is
        # done, or refused for its own reasons (tests/mesh/test_operations.py)
        for who, target in (("c2", "c1"), ("c2", "w1"), ("c1", ""), ("c1", "c1")):
            try:
                await unary(s.channel, method, pb.NodeRequest(node_id=target), node_id=who)
            except GRPCError as error:
                refusals = (Status.PERMISSION_DENIED, Status.UNAUTHENTICATED)
                assert error.status not in refusals, (who, target, error.message)


async def test_a_worker_acts_on_itself_but_not_for_others(tmp_path: Path) -> None:
    async with serving(tmp_path, "w1", role="worker") as s:
        reply = await unary(s.channel, methods.DRAIN, pb.NodeRequest(), node_id="w1")
        assert reply.node_id == "w1" and s.mesh.local.draining
        error = await s.refused(methods.DRAIN, pb.NodeRequest(node_id="w7"), node_id="w1")
        assert error.status is Status.PERMISSION_DENIED
        assert error.message == ("drain of 'w7' is accepted only from coordinators; w1 is not one")


# --- the transport under the handlers -------------------------------------------------------


async def test_an_oversized_request_is_refused_before_it_is_read(tmp_path: Path) -> None:
    async with serving(tmp_path, max_message_bytes=1024) as s:
        big = pb.MeshRequest(target="echo", method="agent.invoke", json="x" * 2000)
        error = await s.refused(methods.CALL, big)
        assert error.status is Status.RESOURCE_EXHAUSTED
        assert "the limit is 1024" in (error.message or "")
        assert s.mesh.stats.oversized_requests == 1
