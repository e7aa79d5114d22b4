"""Stopping the mesh server lets the requests in flight finish and be answered.

grpclib's ``Server.close`` cancels every running handler, and a unary handler's answer is
written after it returns. ``brio mesh leave`` is such a request: its handler lets the node
stop, and the stop it caused cut off its own answer (the CLI saw GOAWAY and exited 1, a CI
failure). A real server on a loopback port, a real grpclib client.
"""

from __future__ import annotations

import time

import grpclib.const
import trio
from grpclib.client import Channel

from brio import aio
from brio.config.model import split_host_port
from brio.mesh import pb
from brio.mesh.methods import HEARTBEAT
from brio.mesh.transport import Caller, Service, TransportStats, start_server, stop_server

SLOW = 0.3  # seconds the handler takes


async def slow_heartbeat(
    request: pb.HeartbeatRequest, caller: Caller, timeout: float | None
) -> pb.HeartbeatResponse:
    await trio.sleep(SLOW)
    return pb.HeartbeatResponse(responder=pb.NodeInfo(node_id="slow", role="worker"))


async def call(address: str) -> pb.HeartbeatResponse | None:
    host, port = split_host_port(address)

    async def go() -> pb.HeartbeatResponse | None:
        channel = Channel(host, port)
        try:
            async with channel.request(
                HEARTBEAT.path,
                grpclib.const.Cardinality.UNARY_UNARY,
                pb.HeartbeatRequest,
                pb.HeartbeatResponse,
                timeout=10,
            ) as stream:
                await stream.send_message(pb.HeartbeatRequest(), end=True)
                reply: pb.HeartbeatResponse | None = await stream.recv_message()
                return reply
        finally:
            channel.close()

    return await aio.call(go)


async def test_a_request_in_flight_at_stop_is_answered() -> None:
    stats = TransportStats()
    service = Service({HEARTBEAT: slow_heartbeat}, max_bytes=1 << 20, stats=stats)
    replies: list[pb.HeartbeatResponse | None] = []
    async with aio.open_loop():
        server, address = await start_server(
            [service], "127.0.0.1:0", ssl_context=None, allowed=(), stats=stats
        )

        async def client() -> None:
            replies.append(await call(address))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            with trio.fail_after(5):
                while not stats.calls_received:  # the request is being handled
                    await trio.sleep(0.01)
            started = time.monotonic()
            await stop_server(server, grace=5.0)
            stopped_after = time.monotonic() - started
    assert len(replies) == 1 and replies[0] is not None
    assert replies[0].responder is not None and replies[0].responder.node_id == "slow"
    assert stopped_after < 5.0  # it waited for the request, not for the whole grace
