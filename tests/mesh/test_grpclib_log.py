"""A mesh request whose deadline has passed on arrival: DEADLINE_EXCEEDED, and no traceback.

grpclib's server reads ``grpc-timeout``, then starts its deadline timer; with no time left by
then it raised TimeoutError outside any handler, answered UNKNOWN "Internal Server Error" and
logged ``Timeout occurred`` at ERROR with a traceback (seen on a loaded machine, from clients
that sent their last microseconds). Each test speaks to a real node's mesh port over TCP
with grpclib's own client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpclib.const
import grpclib.utils
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.metadata import Deadline

from brio import aio
from brio.config.model import split_host_port
from brio.mesh import pb, transport
from brio.mesh.transport import TransportStats
from tests.nodes import Node, node_config, running_node

HEARTBEAT = "/brio.mesh.v1.Mesh/Heartbeat"
WAIT = 5.0  # seconds the client waits for any answer


class SentLate(Deadline):
    """A client deadline that leaves ``WAIT`` seconds to the client's own timer (grpclib's
    first ``time_remaining()``) but ``left`` in the ``grpc-timeout`` it sends (the second):
    the request of a client whose deadline ran out as it sent, without the race."""

    def __init__(self, left: float) -> None:
        super().__init__(_timestamp=time.monotonic() + WAIT)
        self.left = left
        self.calls = 0

    def time_remaining(self) -> float:
        self.calls += 1
        return WAIT if self.calls == 1 else self.left


def heartbeat() -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(
        sender=pb.NodeInfo(node_id="t", role="worker", address="127.0.0.1:1")
    )


@asynccontextmanager
async def mesh_node(tmp_path: Path) -> AsyncIterator[Node]:
    config = node_config(
        tmp_path, mesh={"enabled": True, "node_id": "n1", "listen_addr": "127.0.0.1:0"}
    )
    async with aio.open_loop(), running_node(config) as node:
        yield node


async def call(node: Node, deadline: Deadline) -> pb.HeartbeatResponse | None:
    """One Heartbeat over a fresh grpclib channel to the node's mesh port."""
    assert node.handle.mesh_address is not None
    host, port = split_host_port(node.handle.mesh_address)

    async def go() -> pb.HeartbeatResponse | None:
        channel = Channel(host, port)
        try:
            async with channel.request(
                HEARTBEAT,
                grpclib.const.Cardinality.UNARY_UNARY,
                pb.HeartbeatRequest,
                pb.HeartbeatResponse,
                deadline=deadline,
            ) as stream:
                await stream.send_message(heartbeat(), end=True)
                reply: pb.HeartbeatResponse | None = await stream.recv_message()
                return reply
        finally:
            channel.close()

    return await aio.call(go)


def stats(node: Node) -> TransportStats:
    assert node.handle.mesh is not None
    return node.handle.mesh.stats


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info
    ]


@pytest.mark.parametrize("left", [0.0, 1e-9, 0.0005])
async def test_a_request_past_its_deadline_is_deadline_exceeded_without_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, left: float
) -> None:
    caplog.set_level(logging.INFO)
    async with mesh_node(tmp_path) as node:
        before = stats(node).calls_received
        with pytest.raises(GRPCError) as refused:
            await call(node, SentLate(left))
        assert refused.value.status is Status.DEADLINE_EXCEEDED
        assert stats(node).calls_received == before  # the handler never ran
        # the node is well, and a request with time left is served
        reply = await call(node, Deadline.from_timeout(WAIT))
        assert reply is not None and reply.responder is not None
    assert not tracebacks(caplog), tracebacks(caplog)
    lines = [r for r in caplog.records if "DEADLINE_EXCEEDED" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.INFO and HEARTBEAT in lines[0].getMessage()


async def test_grpclibs_own_timeout_record_becomes_one_info_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race ``MIN_TIME_TO_SERVE`` narrows (a stall inside grpclib's request_handler), made
    certain: with the check off, grpclib's own branch runs, and its record is rewritten."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(transport, "MIN_TIME_TO_SERVE", 0.0)
    async with mesh_node(tmp_path) as node:
        with pytest.raises(GRPCError) as refused:
            await call(node, SentLate(0.0))
        assert refused.value.status is Status.UNKNOWN  # grpclib's answer in that branch
    assert not tracebacks(caplog), tracebacks(caplog)
    from_grpclib = [r for r in caplog.records if r.name == "grpclib.server"]
    assert [r.levelno for r in from_grpclib] == [logging.INFO]
    assert "deadline passed" in from_grpclib[0].getMessage()


def record_of(message: str, exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException as raised:
        return logging.LogRecord(
            "grpclib.server",
            logging.ERROR,
            __file__,
            1,
            message,
            (),
            (type(raised), raised, raised.__traceback__),
        )


def test_the_filter_leaves_grpclibs_other_errors_alone() -> None:
    keep = transport._DeadlineLogFilter()
    # a TimeoutError raised in a handler is a real error: the same message, kept whole
    handler_timeout = record_of("Timeout occurred", TimeoutError("Deadline exceeded"))
    application = record_of("Application error", ValueError("boom"))
    for record in [handler_timeout, application]:
        assert keep.filter(record)
        assert record.levelno == logging.ERROR and record.exc_info is not None


def test_the_rewritten_record_is_dropped_where_info_is_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="grpclib.server")
    # what grpclib's branch logs: the TimeoutError of the timer's start()
    no_time_left = grpclib.utils.DeadlineWrapper().start(Deadline.from_timeout(0))
    with pytest.raises(TimeoutError) as raised, no_time_left:
        pass
    exc = raised.value
    record = logging.LogRecord(
        "grpclib.server",
        logging.ERROR,
        __file__,
        1,
        "Timeout occurred",
        (),
        (type(exc), exc, exc.__traceback__),
    )
    assert not transport._DeadlineLogFilter().filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
