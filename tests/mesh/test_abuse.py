"""The mesh port under bad input: hand-made bytes and HTTP/2 frames against a running node.

Each test speaks to a real in-process node over a raw TCP socket (frames made with ``h2``,
the library grpclib itself uses), checks what the node answers, and ends with a real
Heartbeat to show the node is still well.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.events
import pytest
import trio
from h2.config import H2Configuration
from h2.connection import H2Connection

from brio import aio
from brio.config.model import split_host_port
from brio.mesh import pb
from brio.mesh.transport import (
    AUTH_HEADER,
    NODE_ID_HEADER,
    ChannelPool,
    ClusterAuth,
    MeshCallError,
    TransportStats,
)
from tests.nodes import Node, node_config, running_node

NODE_ID = "abused"
CALL = "/brio.mesh.v1.Mesh/Call"
HEARTBEAT = "/brio.mesh.v1.Mesh/Heartbeat"
# grpc-status codes
OK, UNKNOWN, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAUTHENTICATED = 0, 2, 3, 8, 16
WAIT = 5.0  # seconds for any one answer from the node


def grpc_frame(message: bytes, declared: int | None = None) -> bytes:
    """The 5-byte gRPC message header (uncompressed, length) and the message."""
    return struct.pack(">?I", False, len(message) if declared is None else declared) + message


@dataclass
class Reply:
    """What came back on one HTTP/2 stream."""

    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    ended: bool = False
    reset: int | None = None

    @property
    def grpc_status(self) -> int | None:
        # a "trailers-only" answer carries grpc-status in its one header block
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if value is None else int(value)

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))

    def message(self) -> bytes:
        """The one gRPC message of a unary answer."""
        compressed, length = struct.unpack(">?I", self.data[:5])
        assert not compressed
        assert len(self.data) == 5 + length, self.data
        return self.data[5:]


class RawH2:
    """A client HTTP/2 connection made by hand: whatever frames a test wants, in any order."""

    def __init__(self, stream: trio.SocketStream, authority: str) -> None:
        self.stream = stream
        self.authority = authority
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.replies: dict[int, Reply] = {}
        self.closed = False

    @classmethod
    @asynccontextmanager
    async def open(cls, address: str, local_address: str | None = None) -> AsyncIterator[RawH2]:
        host, port = split_host_port(address)
        stream = await trio.open_tcp_stream(host, port, local_address=local_address)
        async with stream:
            client = cls(stream, address)
            client.conn.initiate_connection()
            await client.flush()
            yield client

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def start(self, path: str, metadata: Iterable[tuple[str, str]] = ()) -> int:
        """Open a stream with the request headers of a gRPC call to ``path``."""
        stream_id: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", self.authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *metadata,
            ],
        )
        self.replies[stream_id] = Reply()
        await self.flush()
        return stream_id

    async def send(self, stream_id: int, data: bytes, *, end: bool) -> None:
        size = self.conn.max_outbound_frame_size
        assert len(data) <= self.conn.local_flow_control_window(stream_id)
        for at in range(0, len(data), size):
            self.conn.send_data(stream_id, data[at : at + size])
        if end:
            self.conn.end_stream(stream_id)
        await self.flush()

    async def call(self, path: str, body: bytes, metadata: Iterable[tuple[str, str]] = ()) -> Reply:
        """One whole unary request (headers, body, end of stream); the full answer."""
        stream_id = await self.start(path, metadata)
        await self.send(stream_id, body, end=True)
        return await self.reply(stream_id)

    async def reply(self, stream_id: int) -> Reply:
        """Read until ``stream_id`` is answered in full (ended or reset) or the socket closes."""
        reply = self.replies[stream_id]
        with trio.fail_after(WAIT):
            while not (reply.ended or reply.reset is not None or self.closed):
                await self.receive()
        return reply

    async def receive(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # reset by the peer
            data = b""
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            self._event(event)
        await self.flush()

    def _event(self, event: Any) -> None:
        reply = self.replies.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and reply is not None:
            reply.headers.update(_text(event.headers))
        elif isinstance(event, h2.events.TrailersReceived) and reply is not None:
            reply.trailers.update(_text(event.headers))
        elif isinstance(event, h2.events.DataReceived) and reply is not None:
            reply.data += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and reply is not None:
            reply.ended = True
        elif isinstance(event, h2.events.StreamReset) and reply is not None:
            reply.reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True


def _text(headers: Iterable[tuple[str | bytes, str | bytes]]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in headers
    }


def heartbeat_request(node_id: str = "t") -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(
        sender=pb.NodeInfo(node_id=node_id, role="worker", address="127.0.0.1:1")
    )


@dataclass
class Target:
    node: Node
    address: str
    pool: ChannelPool  # brio's own client, for the real Heartbeat at the end

    @property
    def stats(self) -> TransportStats:
        assert self.node.handle.mesh is not None
        return self.node.handle.mesh.stats

    async def assert_healthy(self) -> None:
        reply = await self.pool.unary(
            self.address, HEARTBEAT, heartbeat_request(), pb.HeartbeatResponse, WAIT
        )
        assert reply.responder is not None
        assert reply.responder.node_id == NODE_ID


@asynccontextmanager
async def abused_node(tmp_path: Path, **mesh: Any) -> AsyncIterator[Target]:
    config = node_config(
        tmp_path,
        mesh={"enabled": True, "node_id": NODE_ID, "listen_addr": "127.0.0.1:0", **mesh},
    )
    # The node opens its own asyncio loop in its own task; brio's client, used from this
    # task, needs one here too (grpclib objects are made inside ``aio.open_loop()``).
    async with aio.open_loop(), running_node(config) as node:
        assert aio.loop_is_open()
        address = node.handle.mesh_address
        assert address is not None
        secret = config.mesh.cluster_secret
        auth = ClusterAuth(secret.get_secret_value()) if secret else None
        pool = ChannelPool(None, "tester", TransportStats(auth=auth))
        try:
            yield Target(node, address, pool)
        finally:
            pool.close()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing a client sent made the node log an error or a traceback."""
    bad = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR or (r.exc_info and r.levelno >= logging.WARNING)
    ]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


async def test_garbage_instead_of_http2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with abused_node(tmp_path) as target:
        await target.assert_healthy()
        host, port = split_host_port(target.address)
        for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 4):
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(garbage)
                with trio.fail_after(WAIT):
                    closed = False
                    while not closed:
                        try:
                            closed = not await stream.receive_some(65536)
                        except trio.BrokenResourceError:
                            closed = True
        await target.assert_healthy()
    no_tracebacks(caplog)


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        pytest.param(b"", "no complete gRPC message", id="no-data"),
        pytest.param(b"\x00\x00\x00", "truncated", id="header-cut"),
        # the header says 100 bytes; the stream ends after 10
        pytest.param(
            grpc_frame(b"\x0a\x03abc" + b"\x00" * 5, declared=100),
            "truncated",
            id="body-cut",
        ),
    ],
)
async def test_truncated_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, body: bytes, complaint: str
) -> None:
    async with abused_node(tmp_path) as target:
        async with RawH2.open(target.address) as h2c:
            reply = await h2c.call(CALL, body)
            # the same connection still serves a good request
            good = await h2c.call(HEARTBEAT, grpc_frame(bytes(heartbeat_request())))
            assert good.grpc_status == OK, good
            responder = pb.HeartbeatResponse.parse(good.message()).responder
            assert responder is not None
            assert responder.node_id == NODE_ID
        await target.assert_healthy()
        assert reply.grpc_status == INVALID_ARGUMENT, reply
        assert complaint in reply.grpc_message
        assert target.stats.malformed_requests == 1
    no_tracebacks(caplog)


@pytest.mark.parametrize("declared", [10_000_000, 0xFFFFFFFF], ids=["10MB", "4GB"])
async def test_oversized_message_refused_before_the_body(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, declared: int
) -> None:
    async with abused_node(tmp_path) as target:
        before = target.stats.oversized_requests
        async with RawH2.open(target.address) as h2c:
            stream_id = await h2c.start(CALL)
            # the header and 16 KB of the "10 MB" body; the stream stays open on our side
            await h2c.send(stream_id, grpc_frame(b"\x00" * 16384, declared=declared), end=False)
            reply = await h2c.reply(stream_id)
            assert reply.grpc_status == RESOURCE_EXHAUSTED, reply
            assert str(declared) in reply.grpc_message
            assert "max_message_bytes" in reply.grpc_message
            assert not h2c.closed
            # the connection is still good for another call
            reply = await h2c.call(HEARTBEAT, grpc_frame(bytes(heartbeat_request())))
            assert reply.grpc_status == OK, reply
        assert target.stats.oversized_requests == before + 1
        await target.assert_healthy()
    no_tracebacks(caplog)


def request_of_size(size: int) -> bytes:
    """An agent.invoke of echo whose encoding is exactly ``size`` bytes."""
    for n in range(size, -1, -1):
        body = bytes(
            pb.MeshRequest(target="echo", method="agent.invoke", json=f'{{"prompt": "{"a" * n}"}}')
        )
        if len(body) == size:
            return body
    raise AssertionError(f"no request of {size} bytes")


async def test_size_cap_is_the_configured_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with abused_node(tmp_path, max_message_bytes=1024) as target:
        async with RawH2.open(target.address) as h2c:
            reply = await h2c.call(CALL, grpc_frame(request_of_size(1024)))
            assert reply.grpc_status == OK, reply
            answer = pb.MeshResponse.parse(reply.message())
            assert answer.is_set("json"), answer
            reply = await h2c.call(CALL, grpc_frame(request_of_size(1025)))
            assert reply.grpc_status == RESOURCE_EXHAUSTED, reply
            assert "1025" in reply.grpc_message
            assert "1024" in reply.grpc_message
        assert target.stats.oversized_requests == 1
        await target.assert_healthy()
    no_tracebacks(caplog)


#: Bodies that are not a valid message of the method's type (protobuf wire format).
BAD_PROTOBUF = {
    "truncated-varint": (CALL, b"\x08\xff"),
    "invalid-utf8": (CALL, b"\x0a\x02\xff\xfe"),
    "truncated-submessage": (HEARTBEAT, b"\x0a\x03\x08\x01\x02"),
    "garbage": (CALL, b"\xff" * 12),
    # a field sent with the wrong wire type: a varint where a string or message belongs
    "target-as-varint": (CALL, b"\x08\x01\x12\x0cagent.invoke\x1a\x02{}"),
    "json-as-varint": (CALL, b"\x12\x0cagent.invoke\x0a\x04echo\x18\x05"),
    "deadline-as-bytes": (CALL, b"\x0a\x04echo\x12\x0cagent.invoke\x1a\x02{}\x32\x03abc"),
    "sender-as-varint": (HEARTBEAT, b"\x08\x05"),
    "role-as-varint": (HEARTBEAT, b"\x0a\x05\x0a\x01x\x10\x01"),
}


#: betterproto2 parses a field of the wrong wire type into a value of the wrong Python type
#: (``MeshRequest(target=1)``); the transport re-serialises to refuse such a message.
@pytest.mark.parametrize("case", sorted(BAD_PROTOBUF))
async def test_invalid_protobuf(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    path, body = BAD_PROTOBUF[case]
    async with abused_node(tmp_path) as target:
        async with RawH2.open(target.address) as h2c:
            reply = await h2c.call(path, grpc_frame(body))
        assert reply.grpc_status in (OK, INVALID_ARGUMENT), reply
        if reply.grpc_status == OK:
            # only a Call may answer a bad request in its own words: a MeshResponse error
            assert path == CALL
            answer = pb.MeshResponse.parse(reply.message())
            assert answer.is_set("error"), answer
            assert answer.error is not None
            assert answer.error.code == pb.MeshErrorCode.BAD_REQUEST, answer
        await target.assert_healthy()
    no_tracebacks(caplog)


async def test_addresses_outside_the_allow_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with abused_node(tmp_path, access_control={"allowed_cidrs": ["127.0.0.2/32"]}) as target:
        host, port = split_host_port(target.address)
        # from 127.0.0.1: closed at once, before a byte of HTTP/2
        for _ in range(2):
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                with trio.fail_after(WAIT):
                    try:
                        received = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        received = b""
                assert received == b""
        assert target.stats.refused_connections == 2
        assert any("allowed_cidrs" in r.getMessage() for r in caplog.records)

        # brio's own client (it cannot pick its source address) is refused too, and says so
        with pytest.raises(MeshCallError) as refused:
            await target.assert_healthy()
        assert refused.value.kind in ("unreachable", "protocol")
        assert target.stats.refused_connections == 3

        # from 127.0.0.2: served, a real Heartbeat over hand-made HTTP/2
        async with RawH2.open(target.address, local_address="127.0.0.2") as h2c:
            for _ in range(2):
                reply = await h2c.call(HEARTBEAT, grpc_frame(bytes(heartbeat_request())))
                assert reply.grpc_status == OK, reply
                answer = pb.HeartbeatResponse.parse(reply.message())
                assert answer.responder is not None
                assert answer.responder.node_id == NODE_ID
        assert target.stats.refused_connections == 3
    no_tracebacks(caplog)


async def test_with_a_cluster_secret_unsigned_and_replayed_requests_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "abuse-test-cluster-secret"
    async with abused_node(tmp_path, cluster_secret=secret) as target:
        await target.assert_healthy()  # brio's own client signs with the secret
        body = bytes(heartbeat_request("t"))
        async with RawH2.open(target.address) as h2c:
            unsigned = await h2c.call(HEARTBEAT, grpc_frame(body), [(NODE_ID_HEADER, "t")])
            assert unsigned.grpc_status == UNAUTHENTICATED, unsigned
            assert "not signed" in unsigned.grpc_message
            signed = [
                (NODE_ID_HEADER, "t"),
                (AUTH_HEADER, ClusterAuth(secret).sign(HEARTBEAT, "t", body)),
            ]
            first = await h2c.call(HEARTBEAT, grpc_frame(body), signed)
            assert first.grpc_status == OK, first
            replayed = await h2c.call(HEARTBEAT, grpc_frame(body), signed)
            assert replayed.grpc_status == UNAUTHENTICATED, replayed
            assert "replay" in replayed.grpc_message
            wrong = [
                (NODE_ID_HEADER, "t"),
                (AUTH_HEADER, ClusterAuth("x").sign(HEARTBEAT, "t", body)),
            ]
            other = await h2c.call(HEARTBEAT, grpc_frame(body), wrong)
            assert other.grpc_status == UNAUTHENTICATED, other
            # a read-only admin call stays open to `brio mesh` without the secret
            status = await h2c.call("/brio.mesh.v1.MeshAdmin/Status", grpc_frame(b""))
            assert status.grpc_status == OK, status
        assert target.stats.unauthenticated_requests == 3
        await target.assert_healthy()
    assert any("cluster_secret" in r.getMessage() for r in caplog.records)
    no_tracebacks(caplog)
