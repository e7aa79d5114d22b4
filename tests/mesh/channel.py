"""A node's mesh services over an in-memory HTTP/2 connection: no socket, no port, no TLS.

The shape of grpclib's ``grpclib.testing.ChannelFor``: a server protocol and a client protocol
joined by two transports that hand each other's bytes over on the next loop iteration, so
requests go through the real HTTP/2 framing, grpclib's dispatch and our ``transport.Service``
(size cap, wire-type check, trio handler, counting codec) exactly as over a socket. What it adds:

- **who the caller is.** ``transport._caller`` reads the peer address and certificate from
  the server-side transport (``peername``, ``ssl_object.getpeercert()``) and the claimed node
  id from the ``brio-node-id`` header. ``connect(Identity(...))`` sets the first two for the
  connection; ``unary(..., node_id=...)`` sends the header on one request.
- **our server.** It is ``transport.MeshServer`` (allow-list, GOAWAY on close), not grpclib's
  plain ``Server``.
- **no reconnect.** A closed in-memory channel refuses to reconnect instead of dialling
  127.0.0.1:50051, as a plain ``Channel()`` would.
- **a node's peer calls.** ``attach(pool, address, channel)`` puts a channel in a
  ``ChannelPool`` under a peer's address, so that one node's ``PeerCalls`` reach another
  node's handlers in memory (forwarding, remote Status/Stats).

It lives with the tests, not under ``brio/mesh``: production always has sockets, and this
reaches into grpclib's and ``ChannelPool``'s private attributes, as ``ChannelFor`` does.
Everything here runs inside ``aio.open_loop()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpclib.const
from grpclib.client import Channel
from grpclib.protocol import H2Protocol

from brio import aio
from brio.mesh.methods import Method
from brio.mesh.transport import (
    NODE_ID_HEADER,
    ChannelPool,
    MeshServer,
    Networks,
    Service,
    TransportStats,
)


@dataclass(frozen=True)
class Identity:
    """Who is at the other end of a connection, as the server sees it."""

    #: The peer address (``Caller.address``); TEST-NET-1 by default, never a real host.
    address: tuple[str, int] = ("192.0.2.10", 40000)
    #: The node id in the client's certificate, proven by mTLS (``Caller.cert_node_id``);
    #: None: a connection without a client certificate.
    cert_node_id: str | None = None


class _PeerCert:
    """The ``ssl_object`` that grpclib's ``Peer.cert()`` asks for the peer's certificate."""

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id

    def getpeercert(self) -> dict[str, Any]:
        return {"subject": ((("commonName", self._node_id),),)}


class _Link:
    """Both ends of one connection; closing either end closes both, once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.closed = False
        self.ends: list[H2Protocol] = []

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self._lost)

    def _lost(self) -> None:
        for protocol in self.ends:
            protocol.connection_lost(None)


class _Pipe(asyncio.Transport):
    """One direction: what one end writes is delivered to ``receiver`` on the next iteration."""

    def __init__(self, link: _Link, receiver: H2Protocol, extra: dict[str, Any]) -> None:
        super().__init__(extra)
        self._link = link
        self._receiver = receiver

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data and not self._link.closed:
            self._link.loop.call_soon(self._deliver, bytes(data))

    def _deliver(self, data: bytes) -> None:
        if not self._link.closed:
            self._receiver.data_received(data)

    def is_closing(self) -> bool:
        return self._link.closed

    def close(self) -> None:
        self._link.close()

    def abort(self) -> None:
        self._link.close()


class _NoListener(asyncio.AbstractServer):
    """Stands in for the listening socket that ``MeshServer.close`` closes."""

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass

    def get_loop(self) -> asyncio.AbstractEventLoop:
        raise NotImplementedError

    def is_serving(self) -> bool:
        return True

    async def start_serving(self) -> None:
        pass

    async def serve_forever(self) -> None:
        raise NotImplementedError


class _InMemoryChannel(Channel):
    async def _create_connection(self) -> H2Protocol:
        raise ConnectionRefusedError("the in-memory connection is closed")


class InMemoryServer:
    """A ``MeshServer`` with no socket; ``connect`` opens one in-memory connection to it."""

    def __init__(self, server: MeshServer) -> None:
        self.server = server
        self.channels: list[Channel] = []

    async def connect(self, identity: Identity | None = None) -> Channel:
        """A client channel whose requests the server sees as coming from ``identity``."""
        who = identity or Identity()

        async def make() -> Channel:
            loop = asyncio.get_running_loop()
            link = _Link(loop)
            channel = _InMemoryChannel()
            client: H2Protocol = channel._protocol_factory()
            served = self.server._protocol_factory()
            link.ends = [client, served]
            seen_by_server: dict[str, Any] = {"peername": who.address}
            if who.cert_node_id is not None:
                seen_by_server["ssl_object"] = _PeerCert(who.cert_node_id)
            client.connection_made(_Pipe(link, served, {"peername": ("in-memory", 0)}))
            served.connection_made(_Pipe(link, client, seen_by_server))
            channel._protocol = client
            return channel

        channel = await aio.call(make)
        self.channels.append(channel)
        return channel


@asynccontextmanager
async def serve_in_memory(
    services: Iterable[Service], *, stats: TransportStats, allowed: Networks = ()
) -> AsyncIterator[InMemoryServer]:
    """Serve ``services`` (``MeshHandlers(mesh).services()``) until the block ends."""

    async def start() -> MeshServer:
        server = MeshServer(services, allowed=allowed, stats=stats)
        server._server = _NoListener()
        server._server_closed_fut = asyncio.get_running_loop().create_future()
        return server

    memory = InMemoryServer(await aio.call(start))
    try:
        yield memory
    finally:

        async def stop() -> None:
            for channel in memory.channels:
                channel.close()
            memory.server.close()
            await memory.server.wait_closed()

        await aio.call(stop)


async def unary(
    channel: Channel,
    method: Method,
    request: Any,
    *,
    node_id: str | None = None,
    timeout: float = 5.0,
) -> Any:
    """Call ``method``; the reply, or the ``GRPCError`` the server answered with (raised).

    ``node_id``: the ``brio-node-id`` header, the identity a caller claims without proof.
    """
    metadata = {NODE_ID_HEADER: node_id} if node_id is not None else None

    async def once() -> Any:
        async with channel.request(
            method.path,
            grpclib.const.Cardinality.UNARY_UNARY,
            method.request,
            method.reply,
            timeout=timeout,
            metadata=metadata,
        ) as stream:
            await stream.send_message(request, end=True)
            return await stream.recv_message()

    return await aio.call(once)


def attach(pool: ChannelPool, address: str, channel: Channel) -> None:
    """Make ``pool`` use ``channel`` for ``address`` (its next calls there go in memory)."""
    pool._channels[address] = channel
