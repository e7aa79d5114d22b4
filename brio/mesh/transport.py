"""gRPC plumbing of the mesh: the one module that knows grpclib and its internals.

grpclib lives on asyncio and the node on trio; everything here is entered through
``brio.aio``. What this module adds to grpclib, and why:

- Connections from outside ``[mesh.access_control] allowed_cidrs`` are closed before a
  byte of HTTP/2 (or of a TLS handshake) is read, logged and counted.
- TLS handshakes are ours, not ``create_server(ssl=...)``'s: at most
  ``max_tls_handshakes`` in progress per listener (more are closed at accept), each with a
  timeout, and each with a 32 KiB read buffer instead of asyncio's 256 KiB (300 half-open
  handshakes held 84 MB, and glibc kept most of it after they ended).
- Requests are read with a size cap: the 5-byte gRPC frame header is checked before the
  body is buffered, so a peer cannot make the node hold a 10 MB (or 4 GB) message.
  Undecodable protobuf is ``INVALID_ARGUMENT``; nothing a client sends raises past a handler.
- ``close()`` sends GOAWAY and closes every accepted connection: grpclib 0.4.9's own close
  leaves them open, and handlers kept starting after it (STACK-NOTES).
- A request whose deadline has (all but) passed on arrival is answered DEADLINE_EXCEEDED
  without running its handler; grpclib would answer UNKNOWN and log a traceback
  (``_Handler``, ``_DeadlineLogFilter``).
- Client calls always carry a deadline; every failure (refused, timed out, TLS, a gRPC
  status, a broken stream) comes out as one exception type, ``MeshCallError``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import hashlib
import hmac
import inspect
import ipaddress
import logging
import math
import ssl
import struct
import sys
import time
import types
import typing
from asyncio import sslproto
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import betterproto2
import grpclib.const
import grpclib.exceptions
import grpclib.protocol
import grpclib.server
import grpclib.utils
import h2.events
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError
from grpclib.metadata import Deadline
from grpclib.protocol import H2Protocol
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.settings import SettingCodes

from brio import aio
from brio.config.model import split_host_port
from brio.mesh import methods
from brio.mesh.methods import Method
from brio.mesh.tls import node_id_from_cert

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=betterproto2.Message)
Resp = TypeVar("Resp", bound=betterproto2.Message)

#: Metadata key by which a caller names itself (authenticated only with mTLS; see Caller).
NODE_ID_HEADER = "brio-node-id"
#: Metadata key of a request's cluster-secret signature (``ClusterAuth``).
AUTH_HEADER = "brio-auth"
#: How far a signed request's timestamp may be from the receiver's clock, in seconds. A
#: signature is accepted once: a copy replayed within this window is refused too.
MAX_AUTH_SKEW = 30.0

#: Methods that a node with a cluster secret serves only to callers who sign with it: all of
#: ``Mesh`` (lease, heartbeats, calls) and the admin actions that change the cluster. The
#: read-only admin methods (status, ping, topology, stats) stay open to ``brio mesh``.
SIGNED_METHODS = frozenset(
    m.path
    for m in (
        methods.CALL,
        methods.HEARTBEAT,
        methods.VOTE,
        methods.RENEW,
        methods.DRAIN,
        methods.LEAVE,
        methods.REMOVE,
    )
)


class ClusterAuth:
    """HMAC-SHA256 signatures of mesh requests with the shared ``[mesh] cluster_secret``.

    A signature covers the method path, the caller's claimed node id, a timestamp (Unix ms)
    and the serialized request, so that it cannot be moved to another method, node or
    message; the timestamp must be within ``MAX_AUTH_SKEW`` of the receiver's clock and
    each signature is accepted once, so that a captured request cannot be replayed. The
    header is ``v1 <unix ms> <hex digest>``. Answers are not signed: against someone on the
    network path (not just able to reach the port) use mTLS.
    """

    def __init__(self, secret: str, *, max_skew: float = MAX_AUTH_SKEW) -> None:
        self._key = secret.encode()
        self.max_skew = max_skew
        self._seen: dict[bytes, float] = {}
        self._expiry: collections.deque[tuple[float, bytes]] = collections.deque()

    def _digest(self, path: str, node_id: str, stamp: str, body: bytes) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (b"brio-mesh-v1", path.encode(), node_id.encode(), stamp.encode()):
            mac.update(len(part).to_bytes(4, "big") + part)
        mac.update(body)
        return mac.digest()

    def sign(self, path: str, node_id: str, body: bytes, now: float | None = None) -> str:
        stamp = str(int((time.time() if now is None else now) * 1000))
        return f"v1 {stamp} {self._digest(path, node_id, stamp, body).hex()}"

    def verify(
        self, path: str, node_id: str, body: bytes, header: str | None, now: float | None = None
    ) -> str | None:
        """None when ``header`` is a fresh, valid signature of this request; else why not."""
        if not header:
            return "the request is not signed with the cluster secret"
        parts = header.split(" ")
        if len(parts) != 3 or parts[0] != "v1" or not parts[1].isdigit():
            return "the cluster-secret signature is malformed"
        _, stamp, given = parts
        try:
            digest = bytes.fromhex(given)
        except ValueError:
            return "the cluster-secret signature is malformed"
        now = time.time() if now is None else now
        skew = int(stamp) / 1000 - now
        if abs(skew) > self.max_skew:
            return (
                f"the signature's timestamp is {skew:+.0f} s from this node's clock (at most "
                f"±{self.max_skew:g} s: an old request replayed, or a clock that is off)"
            )
        if not hmac.compare_digest(digest, self._digest(path, node_id, stamp, body)):
            return "the cluster-secret signature does not match (another secret?)"
        self._forget(now)
        if digest in self._seen:
            return "this signed request was seen before (a replay)"
        forget_at = now + 2 * self.max_skew
        self._seen[digest] = forget_at
        self._expiry.append((forget_at, digest))
        return None

    def _forget(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            _, digest = self._expiry.popleft()
            self._seen.pop(digest, None)


@dataclass(frozen=True)
class ConnectionLimits:
    """What one HTTP/2 connection to the mesh port may hold (issue 11: one connection that
    opened and reset 20,000 streams froze a node for 13 s; half-open TLS handshakes were
    held for 60 s). ``[mesh]`` keys of the same names set them."""

    #: SETTINGS_MAX_CONCURRENT_STREAMS, and the handlers in flight per connection: a stream
    #: beyond it is refused (RST_STREAM REFUSED_STREAM), counted against the resets below.
    max_streams_per_connection: int = 100
    #: Stream resets (by the client, or refusals by us) a connection may cause per second,
    #: with a burst of twice that; beyond it: GOAWAY ENHANCE_YOUR_CALM and close.
    max_resets_per_second: int = 100
    #: A connection with no stream in flight and nothing received for this long is closed.
    idle_timeout: float = 300.0
    #: Connections at once from one IP address, open or in their TLS handshake; more are closed.
    max_connections_per_address: int = 32
    #: A TLS handshake that takes longer is abandoned (asyncio's default is 60 s).
    tls_handshake_timeout: float = 5.0
    #: TLS handshakes in progress at once on the listener; connections beyond it are closed
    #: at accept. A mesh has a few peers, each with one connection: 64 leaves room for a
    #: cluster restarting at once while bounding what half-open handshakes hold (~40 KB each).
    max_tls_handshakes: int = 64


@dataclass
class TransportStats:
    """Counters for ``mesh stats`` (and the metrics endpoint later), and what the node's
    server and clients share: the cluster secret's signer (``auth``), None without one."""

    auth: ClusterAuth | None = None
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    calls_received: int = 0
    calls_sent: int = 0
    call_errors: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    refused_connections: int = 0
    refused_handshakes: int = 0  # closed at accept: max_tls_handshakes were in progress
    oversized_requests: int = 0
    malformed_requests: int = 0
    unauthenticated_requests: int = 0
    refused_streams: int = 0  # REFUSED_STREAM: more streams in flight than the limit
    calmed_connections: int = 0  # GOAWAY ENHANCE_YOUR_CALM: too many stream resets
    idle_closed_connections: int = 0


@dataclass(frozen=True)
class Caller:
    """Who sent a request. ``cert_node_id`` is proven by mTLS; ``claimed_node_id`` is not,
    but with ``signed`` the caller holds the cluster secret (and signed that claim)."""

    address: tuple[str, int] | None
    cert_node_id: str | None
    claimed_node_id: str | None
    signed: bool = False

    @property
    def node_id(self) -> str | None:
        return self.cert_node_id or self.claimed_node_id


class MeshCallError(Exception):
    """A mesh call to ``address`` failed; ``kind`` says how, the message says why."""

    def __init__(
        self,
        address: str,
        method: str,
        kind: Literal["unreachable", "timeout", "rejected", "protocol"],
        detail: str,
        status: str | None = None,
    ) -> None:
        super().__init__(f"{method} to {address}: {detail}")
        self.address = address
        self.method = method
        self.kind = kind
        self.detail = detail
        self.status = status


class _CountingCodec(ProtoCodec):
    """grpclib's protobuf codec, counting bytes as it encodes and decodes (each message is
    serialised once, here, rather than again just to be measured). 5: the frame header."""

    def __init__(self, stats: TransportStats) -> None:
        self._stats = stats

    def encode(self, message: Any, message_type: Any) -> bytes:
        # bytes: a message serialized (and signed) by ChannelPool.unary, sent as it is
        data: bytes = (
            message if isinstance(message, bytes) else super().encode(message, message_type)
        )
        self._stats.bytes_sent += len(data) + 5
        return data

    def decode(self, data: bytes, message_type: Any) -> Any:
        self._stats.bytes_received += len(data) + 5
        return super().decode(data, message_type)


# --- server -------------------------------------------------------------------------------

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def address_allowed(host: str, allowed: Networks) -> bool:
    """True when ``allowed`` is empty (no list: everyone) or contains ``host``."""
    if not allowed:
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in allowed)


def _admitted(server: MeshServer, host: str, held: int, transport: asyncio.BaseTransport) -> bool:
    """Whether a connection from ``host`` may go on: it is in the allow-list and ``held``
    (its connections open, and in their TLS handshake) is under
    ``max_connections_per_address``. Otherwise it is counted, logged (the cap's warning
    rate-limited: a flood must not become a flood of log lines) and aborted."""
    if not address_allowed(host, server.allowed):
        log.warning(
            "refused a mesh connection from %s: not in [mesh.access_control] allowed_cidrs",
            host or "an unknown address",
        )
    elif held >= server.stats.limits.max_connections_per_address:
        _refusals.warn(
            (host, "per-address"),
            "refused a mesh connection from %s: it has %d open already "
            "([mesh] max_connections_per_address)",
            host,
            held,
        )
    else:
        return True
    server.stats.refused_connections += 1
    typing.cast(asyncio.Transport, transport).abort()
    return False


class _GuardedProtocol(H2Protocol):
    """grpclib's HTTP/2 protocol, refusing addresses outside the allow-list (or over the
    per-address cap) at accept, and holding each connection to ``ConnectionLimits``."""

    refused = False
    closing = False
    host = ""

    def __init__(self, server: MeshServer, *args: Any) -> None:
        super().__init__(*args)
        self._server = server
        self.limits = server.stats.limits
        self.last_activity = time.monotonic()
        rate = self.limits.max_resets_per_second
        self._reset_tokens = float(2 * rate)
        self._reset_checked = self.last_activity
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # lost

    def connection_made(self, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if peer else ""
        server = self._server
        # with TLS, _TLSAcceptor checked before the handshake (counting this one as in it)
        if not _admitted(server, host, server.by_address[host], transport):
            self.refused = True
            return
        self.host = host
        server.by_address[host] += 1
        # registered only now: a refused connection's handler would never close
        server._handlers.add(typing.cast(grpclib.server.Handler, self.handler))
        self.last_activity = time.monotonic()
        super().connection_made(transport)
        self.connection._connection.update_settings(
            {SettingCodes.MAX_CONCURRENT_STREAMS: self.limits.max_streams_per_connection}
        )
        self.connection.flush()
        server.protocols.add(self)

    def data_received(self, data: bytes) -> None:
        if self.refused or self.closing:
            return
        self.last_activity = time.monotonic()
        try:
            events = self.connection.feed(data)
        except (H2ProtocolError, grpclib.exceptions.ProtocolError):  # h2 queued a GOAWAY
            log.debug("HTTP/2 protocol error from %s", self.host, exc_info=True)
            self._close(None)
            return
        self.connection.flush()
        limit = self.limits.max_streams_per_connection
        for event in events:
            if (
                isinstance(event, h2.events.RequestReceived)
                and len(self.processor.streams) >= limit
            ):
                # handlers of reset streams may still be finishing: refuse rather than pile up
                self._server.stats.refused_streams += 1
                with contextlib.suppress(H2ProtocolError):  # already reset by the client
                    self.connection._connection.reset_stream(
                        event.stream_id, ErrorCodes.REFUSED_STREAM
                    )
                if not self._take_reset():
                    return
                continue
            reset = isinstance(event, h2.events.StreamReset) and event.remote_reset
            if reset and not self._take_reset():
                return
            self.processor.process(event)
        self.connection.flush()

    def _take_reset(self) -> bool:
        """Spend one reset from the connection's budget (a token bucket); False, and the
        connection is being closed, when it is spent: the HTTP/2 "rapid reset" attack."""
        now = time.monotonic()
        rate = self.limits.max_resets_per_second
        self._reset_tokens = min(
            2.0 * rate, self._reset_tokens + (now - self._reset_checked) * rate
        )
        self._reset_checked = now
        self._reset_tokens -= 1
        if self._reset_tokens >= 0:
            return True
        self._server.stats.calmed_connections += 1
        _refusals.warn(
            (self.host, "resets"),
            "closed a mesh connection from %s: more than %d stream resets a second "
            "(HTTP/2 rapid reset; [mesh] max_resets_per_second)",
            self.host,
            rate,
        )
        self._close(ErrorCodes.ENHANCE_YOUR_CALM)
        return False

    def _close(self, error: ErrorCodes | None) -> None:
        """GOAWAY (``error``, or whatever h2 queued), stop the handlers, close the socket."""
        self.closing = True
        connection = self.connection
        try:
            if error is not None:
                connection._connection.close_connection(error_code=error)
            connection.flush()
        except Exception:  # a connection already half gone: closing it is all that is left
            log.debug("GOAWAY failed", exc_info=True)
        self.processor.close("closed by the server")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server.protocols.discard(self)
        if not self.gone.done():
            self.gone.set_result(None)
        if self.host:
            self._server.by_address[self.host] -= 1
            if self._server.by_address[self.host] <= 0:
                del self._server.by_address[self.host]
        if not self.refused:
            super().connection_lost(exc)

    def idle(self, now: float) -> bool:
        """No stream in flight, and nothing received for ``idle_timeout``."""
        streams = getattr(self, "processor", None)
        busy = streams is not None and bool(streams.streams)
        return not busy and now - self.last_activity > self.limits.idle_timeout

    def goaway(self) -> None:
        """Tell the client we are going (GOAWAY), then close the socket."""
        connection = getattr(self, "connection", None)
        if connection is None:
            return
        try:
            connection._connection.close_connection()
            connection.flush()
        except Exception:  # a connection already half gone: closing it is all that is left
            log.debug("GOAWAY failed", exc_info=True)
        transport = getattr(connection, "_transport", None)
        if transport is not None:
            transport.close()


class _SSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol with a 32 KiB read buffer: asyncio allocates (and zeroes)
    256 KiB per connection at accept, before a byte of the handshake. A TLS record is at
    most 16 KiB, so reads of 32 KiB lose nothing."""

    max_size = 32 * 1024


class _TLSAcceptor(asyncio.Protocol):
    """The first protocol of an accepted TCP connection when TLS is on: refuses addresses
    outside the allow-list, over ``max_connections_per_address`` (open and handshaking
    together, so that one address cannot take every handshake slot) or beyond
    ``max_tls_handshakes`` before the handshake costs anything, then hands the socket to
    ``_SSLProtocol``, which makes the ``_GuardedProtocol`` its application once the
    handshake is done."""

    def __init__(self, server: MeshServer, context: ssl.SSLContext) -> None:
        self._server = server
        self._context = context

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, base)
        server = self._server
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if peer else ""
        if not _admitted(server, host, server.by_address[host] + server.handshaking[host], base):
            return
        limits = server.stats.limits
        if server.handshakes >= limits.max_tls_handshakes:
            server.stats.refused_handshakes += 1
            _refusals.warn(
                (host, "handshakes"),
                "refused a mesh connection from %s: %d TLS handshakes are in progress "
                "(max_tls_handshakes)",
                host or "an unknown address",
                server.handshakes,
            )
            transport.abort()
            return
        server.handshakes += 1
        server.handshaking[host] += 1
        loop = server._loop
        waiter = loop.create_future()
        waiter.add_done_callback(functools.partial(server._handshake_ended, host))
        tls = _SSLProtocol(
            loop,
            server._protocol_factory(),
            self._context,
            waiter,
            server_side=True,
            ssl_handshake_timeout=limits.tls_handshake_timeout,  # type: ignore[arg-type]  # seconds
        )
        transport.set_protocol(tls)
        tls.connection_made(transport)


#: Time a request must have left on arrival to be run at all: one with less (a client that
#: sent its last microseconds) could not get an answer back in time anyway.
MIN_TIME_TO_SERVE = 0.001


class _Handler(grpclib.server.Handler):
    """grpclib's per-connection handler, answering DEADLINE_EXCEEDED itself to a request that
    arrives with less than ``MIN_TIME_TO_SERVE`` left.

    grpclib's ``request_handler`` reads ``grpc-timeout``, then starts its deadline timer;
    when nothing is left by then (a ``0n``, a few ``u``, or a stall between the two), the
    timer's ``DeadlineWrapper.start`` raises TimeoutError outside any handler, which grpclib
    answers UNKNOWN "Internal Server Error" and logs at ERROR with a traceback.
    """

    def accept(
        self,
        stream: grpclib.protocol.Stream,
        headers: list[tuple[str, str]],
        release_stream: Callable[[], Any],
    ) -> None:
        try:
            deadline = Deadline.from_headers(headers)
        except ValueError:
            deadline = None  # a malformed grpc-timeout: grpclib refuses it itself
        if deadline is None or deadline.time_remaining() >= MIN_TIME_TO_SERVE:
            super().accept(stream, headers, release_stream)
            return
        self.__gc_step__()
        # tracked like grpclib's own tasks: cancel() on a client's reset, close() at stop
        self._tasks[stream] = self.loop.create_task(_expired(stream, headers, release_stream))


async def _expired(
    stream: grpclib.protocol.Stream,
    headers: list[tuple[str, str]],
    release_stream: Callable[[], Any],
) -> None:
    """Answer a request that arrived past its deadline, as grpclib answers one it refuses."""
    got = dict(headers)
    log.info(
        "answered DEADLINE_EXCEEDED to a mesh request to %s: it arrived with grpc-timeout %s",
        got.get(":path"),
        got.get("grpc-timeout"),
    )
    try:
        await stream.send_headers(
            [
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", str(Status.DEADLINE_EXCEEDED.value)),
                ("grpc-message", "Deadline exceeded"),
            ],
            end_stream=True,
        )
        if stream.closable:
            stream.reset_nowait()  # the request's body, if still coming, is not wanted
    except (H2ProtocolError, grpclib.exceptions.ProtocolError, ConnectionError) as exc:
        log.debug("could not answer an expired mesh request: %s", exc)
    finally:
        release_stream()


class _DeadlineLogFilter(logging.Filter):
    """Rewrite grpclib's ``log.exception('Timeout occurred')`` for a deadline that passed
    before its timer started (the race ``_Handler`` narrows but cannot close: the process may
    stall between grpclib's two lines) into one INFO line without a traceback.

    Only that record: grpclib logs the same message for a TimeoutError raised inside a
    handler, a real error whose traceback stays, and its other errors pass untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _deadline_passed_on_arrival(record):
            return True
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        record.msg = (
            "a mesh request's deadline passed before grpclib started its timer; "
            "grpclib answered UNKNOWN without running the handler"
        )
        record.args = ()
        record.exc_info = record.exc_text = None
        # the logger let it through as an ERROR: drop it if INFO is not wanted
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def _deadline_passed_on_arrival(record: logging.LogRecord) -> bool:
    """Whether ``record`` is grpclib's 'Timeout occurred' for ``DeadlineWrapper.start``."""
    if record.msg != "Timeout occurred" or not record.exc_info:
        return False
    exc = record.exc_info[1]
    if not isinstance(exc, TimeoutError):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code is _DEADLINE_START


#: The code that raises when no time is left (``start`` is a ``contextmanager``: unwrapped).
_DEADLINE_START = typing.cast(
    types.FunctionType, inspect.unwrap(grpclib.utils.DeadlineWrapper.start)
).__code__


#: One, stateless: adding it again (a second listener in the process) is a no-op.
_DEADLINE_LOG_FILTER = _DeadlineLogFilter()


class MeshServer(grpclib.server.Server):
    def __init__(
        self, handlers: Iterable[Any], *, allowed: Networks, stats: TransportStats
    ) -> None:
        super().__init__(list(handlers), codec=_CountingCodec(stats))
        self.allowed = allowed
        self.stats = stats
        self.protocols: set[_GuardedProtocol] = set()
        self.by_address: collections.Counter[str] = collections.Counter()
        self.handshakes = 0  # TLS handshakes in progress
        self.handshaking: collections.Counter[str] = collections.Counter()  # the same, by address
        self._handshakes_ended = 0  # since the heap was last trimmed
        self._reaper: asyncio.Task[None] | None = None

    def _protocol_factory(self) -> H2Protocol:
        self.__gc_step__()
        handler = _Handler(
            self._mapping, self._codec, self._status_details_codec, self.__dispatch__
        )
        return _GuardedProtocol(self, handler, self._config, self._h2_config)

    async def listen(
        self, host: str, port: int, *, ssl: ssl.SSLContext | None, reuse_address: bool
    ) -> None:
        """grpclib's ``start``, with our own TLS handshakes (``_TLSAcceptor``) and the idle
        reaper."""
        if self._server is not None:
            raise RuntimeError("Server is already started")
        context = ssl
        factory: Callable[[], asyncio.BaseProtocol] = (
            self._protocol_factory if context is None else (lambda: _TLSAcceptor(self, context))
        )
        self._server = await self._loop.create_server(
            factory, host, port, reuse_address=reuse_address
        )
        self._server_closed_fut = self._loop.create_future()
        self._reaper = self._loop.create_task(self._reap_idle())

    def _handshake_ended(self, host: str, waiter: asyncio.Future[None]) -> None:
        self.handshakes -= 1
        self.handshaking[host] -= 1
        if self.handshaking[host] <= 0:
            del self.handshaking[host]
        self._handshakes_ended += 1
        if not waiter.cancelled():
            waiter.exception()  # a failed handshake is the client's problem: not logged

    async def _reap_idle(self) -> None:
        every = min(1.0, self.stats.limits.idle_timeout / 4)
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            if self._handshakes_ended >= _TRIM_AFTER_HANDSHAKES and not self.handshakes:
                self._handshakes_ended = 0
                _trim_heap()
            for protocol in list(self.protocols):
                if protocol.idle(now) and not protocol.closing:
                    self.stats.idle_closed_connections += 1
                    log.debug("closing an idle mesh connection from %s", protocol.host)
                    protocol.closing = True
                    protocol.goaway()

    async def finish_requests(self, grace: float) -> None:
        """Accept no more connections, then give the requests in flight, and their clients,
        up to ``grace`` seconds in all before ``close`` cancels and says GOAWAY.

        grpclib's close cancels every running handler, and a handler's answer is written
        after it returns: the answer of ``brio mesh leave``, which lets the node stop, was cut
        off by the stop it caused. Once the handlers are done, the answers may still be
        unread: grpclib's client fails every open stream on GOAWAY, even one whose answer
        came in the same read, so a connection that had requests gets up to ``STOP_LINGER`` to
        read its answer and hang up first. Every mesh method is unary: this is short,
        and an idle pooled connection waits for nothing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._server is not None:
            self._server.close()
        # connections with requests of late (grpclib forgets finished ones every 10 requests)
        answered = [p for p in self.protocols if typing.cast(_Handler, p.handler)._tasks]
        running = [t for h in self._handlers for t in h._tasks.values() if not t.done()]
        if running:
            await asyncio.wait(running, timeout=grace)
        still_open = [p.gone for p in answered if p in self.protocols]
        linger = min(STOP_LINGER, deadline - loop.time())
        if still_open and linger > 0:
            await asyncio.wait(still_open, timeout=linger)

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        super().close()
        for protocol in list(self.protocols):
            protocol.goaway()


#: Handshakes ended (done or failed) after which, once none is in progress, the heap is trimmed.
_TRIM_AFTER_HANDSHAKES = 32


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc's ``malloc_trim``): after a burst of
    connections the freed TLS state is scattered between live objects, and glibc returns
    only the top of its heaps by itself, so RSS stayed at the burst's peak. Milliseconds,
    run only after a burst. A no-op where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # only on this rare path

    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


async def _recv_capped(stream: grpclib.server.Stream[Any, Any], max_bytes: int) -> bytes:
    """Read one request's bytes, refusing a declared size above ``max_bytes`` before reading."""
    h2_stream = stream._stream
    truncated = GRPCError(Status.INVALID_ARGUMENT, "the request message is truncated")
    try:
        # grpclib asserts (rather than returning less) when the stream ends early
        header = await h2_stream.recv_data(5)
    except AssertionError:
        raise truncated from None
    if len(header) < 5:
        raise GRPCError(Status.INVALID_ARGUMENT, "the request has no complete gRPC message")
    compressed, length = struct.unpack(">?I", header)
    if compressed:
        raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
    if length > max_bytes:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"the request is {length} bytes; the limit is {max_bytes} ([mesh] max_message_bytes)",
        )
    try:
        body = await h2_stream.recv_data(length) if length else b""
    except AssertionError:
        raise truncated from None
    if len(body) < length:
        raise truncated
    return body


def _parse(body: bytes, message_type: type[Req]) -> Req:
    try:
        message = message_type.parse(body)
        # betterproto2 does not check wire types on parse: a string field sent as a varint
        # comes back as an int, a message field as an int...
        wrong = _mistyped(message)
    except Exception as exc:
        wrong = str(exc) or type(exc).__name__
    if wrong is not None:
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"the request is not a valid {message_type.__name__}: {wrong}"
        )
    return message


#: Whether a parsed value has a field's declared type.
_Check = Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_float(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_for(hint: Any) -> _Check:
    """A check of values against the field type ``hint``, built once per field: walking the
    hint with ``typing.get_origin``/``get_args`` for every field of every request was half of
    ``_mistyped``'s cost."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is list:
        item = _check_for(args[0])
        return lambda value: isinstance(value, list) and all(map(item, value))
    if origin is dict:
        key, val = _check_for(args[0]), _check_for(args[1])
        return lambda value: (
            isinstance(value, dict) and all(key(k) and val(v) for k, v in value.items())
        )
    if origin in (typing.Union, types.UnionType):
        options = [_check_for(a) for a in args if a is not type(None)]
        if len(options) == 1 and len(args) == 2:  # X | None, the common case
            only = options[0]
            return lambda value: value is None or only(value)
        every = [_check_for(a) for a in args]
        return lambda value: any(check(value) for check in every)
    if hint is type(None):
        return lambda value: value is None
    if hint is float:
        return _is_float
    if hint is int:
        return _is_int
    if isinstance(hint, type):
        return lambda value: isinstance(value, hint)
    return lambda value: False


def _may_hold_message(hint: Any) -> bool:
    """Whether values of ``hint`` can be (or, in a list, hold) a message to check inside."""
    if isinstance(hint, type) and issubclass(hint, betterproto2.Message):
        return True
    return typing.get_origin(hint) is not dict and any(
        _may_hold_message(a) for a in typing.get_args(hint)
    )


@functools.cache
def _field_checks(cls: type[betterproto2.Message]) -> tuple[tuple[str, _Check, bool], ...]:
    """Per field of ``cls``: its name, the check of its type, and whether to look inside it
    for nested messages. Built once per message class (type hints are slow to compute)."""
    return tuple(
        (name, _check_for(hint), _may_hold_message(hint))
        for name, hint in cls._type_hints().items()
        if not name.startswith("_")
    )


def _mistyped(message: betterproto2.Message, path: str = "") -> str | None:
    """The first field whose parsed value does not have its declared type, if any."""
    for name, check, nests in _field_checks(type(message)):
        value = getattr(message, name)
        if not check(value):
            return f"field {path}{name}: wrong wire type"
        if nests:
            for item in value if isinstance(value, list) else (value,):
                if isinstance(item, betterproto2.Message):
                    inner = _mistyped(item, f"{path}{name}.")
                    if inner is not None:
                        return inner
    return None


def _header(stream: grpclib.server.Stream[Any, Any], key: str) -> str | None:
    metadata: Mapping[str, Any] = stream.metadata or {}
    value = metadata.get(key)
    return value if isinstance(value, str) and value else None


def _caller(stream: grpclib.server.Stream[Any, Any], signed: bool = False) -> Caller:
    peer = stream.peer
    addr = peer.addr()
    return Caller(
        address=(str(addr[0]), int(addr[1])) if addr else None,
        cert_node_id=node_id_from_cert(peer.cert()),
        claimed_node_id=_header(stream, NODE_ID_HEADER),
        signed=signed,
    )


def _peer_host(stream: grpclib.server.Stream[Any, Any]) -> str:
    addr = stream.peer.addr()
    return str(addr[0]) if addr else "an unknown address"


#: A handler: ``(request, caller, seconds left or None) -> response``, run as a trio task.
TrioHandler = Callable[[Any, Caller, float | None], Awaitable[Any]]


@dataclass
class Service:
    """A grpclib servable made of trio handlers, one per ``brio.mesh.methods.Method``."""

    methods: Mapping[Method, TrioHandler]
    max_bytes: int
    stats: TransportStats
    _mapping: dict[str, grpclib.const.Handler] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for method, handler in self.methods.items():
            self._mapping[method.path] = grpclib.const.Handler(
                self._wrap(method.path, handler, method.request),
                grpclib.const.Cardinality.UNARY_UNARY,
                method.request,
                method.reply,
            )

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return self._mapping

    def _wrap(
        self, path: str, handler: TrioHandler, req_type: type[Any]
    ) -> Callable[[grpclib.server.Stream[Any, Any]], Awaitable[None]]:
        signed_only = path in SIGNED_METHODS

        async def serve(stream: grpclib.server.Stream[Any, Any]) -> None:
            self.stats.calls_received += 1
            try:
                body = await _recv_capped(stream, self.max_bytes)
                signed = self._authenticate(stream, path, body, signed_only)
                request = _parse(body, req_type)
            except GRPCError as exc:
                if exc.status is Status.RESOURCE_EXHAUSTED:
                    self.stats.oversized_requests += 1
                elif exc.status is Status.UNAUTHENTICATED:
                    self.stats.unauthenticated_requests += 1
                else:
                    self.stats.malformed_requests += 1
                if exc.status is not Status.UNAUTHENTICATED:
                    log.info("refused a mesh request to %s: %s", path, exc.message)
                raise
            self.stats.bytes_received += 5 + len(body)
            timeout = stream.deadline.time_remaining() if stream.deadline else None
            response = await aio.run_trio(handler, request, _caller(stream, signed), timeout)
            await stream.send_message(response)  # counted by the codec

        return serve

    def _authenticate(
        self, stream: grpclib.server.Stream[Any, Any], path: str, body: bytes, required: bool
    ) -> bool:
        """Check the cluster-secret signature (before the request is even parsed); whether
        the request is signed. Unsigned is refused for ``SIGNED_METHODS`` when the node has a
        secret; a bad signature is refused on any method."""
        auth = self.stats.auth
        header = _header(stream, AUTH_HEADER)
        if auth is None or (header is None and not required):
            return False
        problem = auth.verify(path, _header(stream, NODE_ID_HEADER) or "", body, header)
        if problem is None:
            return True
        _refusals.warn(
            (_peer_host(stream), problem[:24]),
            "refused a mesh request to %s from %s: %s ([mesh] cluster_secret)",
            path,
            _peer_host(stream),
            problem,
        )
        raise GRPCError(Status.UNAUTHENTICATED, problem)


class RateLimitedLog:
    """Log a warning at most once per ``every`` seconds per key, with how many were hushed:
    a flood of forged requests must not become a flood of log lines."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[Any, tuple[float, int]] = {}

    def warn(self, key: Any, message: str, *args: Any) -> None:
        now = time.monotonic()
        last, hushed = self._last.get(key, (-math.inf, 0))
        if now - last < self.every:
            self._last[key] = (last, hushed + 1)
            return
        if len(self._last) > 1000:  # many keys (addresses): start over rather than grow
            self._last.clear()
        self._last[key] = (now, 0)
        if hushed:
            message += f" (and {hushed} more like it in the last {now - last:.0f} s)"
        log.warning(message, *args)


_refusals = RateLimitedLog()


async def start_server(
    services: Iterable[Service],
    listen_addr: str,
    *,
    ssl_context: ssl.SSLContext | None,
    allowed: Networks,
    stats: TransportStats,
) -> tuple[MeshServer, str]:
    """Start listening (inside ``aio.open_loop()``); return the server and its bound host:port."""
    host, port = split_host_port(listen_addr, allow_port_zero=True)
    logging.getLogger("grpclib.server").addFilter(_DEADLINE_LOG_FILTER)

    async def start() -> tuple[MeshServer, str]:
        server = MeshServer(services, allowed=allowed, stats=stats)
        await server.listen(host, port, ssl=ssl_context, reuse_address=True)
        sockets = getattr(server._server, "sockets", None) or []
        bound_port = sockets[0].getsockname()[1] if sockets else port
        bound_host = f"[{host}]" if ":" in host else host
        return server, f"{bound_host}:{bound_port}"

    return await aio.call(start)


#: Seconds that requests in flight when the mesh server stops get to finish and be answered.
STOP_GRACE = 1.0
#: Seconds a connection that had requests gets to read its answers and hang up before GOAWAY.
STOP_LINGER = 0.2


async def stop_server(server: MeshServer, grace: float = STOP_GRACE) -> None:
    async def stop() -> None:
        await server.finish_requests(grace)
        server.close()
        await server.wait_closed()

    await aio.call(stop)


# --- client -------------------------------------------------------------------------------


def bind_address(listen_addr: str) -> str | None:
    """The host outgoing mesh connections leave from: the listen address's host when it is
    one specific IP (peers' ``allowed_cidrs`` then see the address they expect), else None
    (a wildcard or a host name: the kernel picks)."""
    host, _ = split_host_port(listen_addr, allow_port_zero=True)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if ip.is_unspecified else str(ip)


#: Errors of a connect bound to a local address that mean "not from there": retried unbound.
_BIND_ERRORS = frozenset({errno.EADDRNOTAVAIL, errno.EINVAL, errno.ENETUNREACH, errno.EAFNOSUPPORT})


class _BoundChannel(Channel):
    """A grpclib channel whose connections leave from ``local_host`` (grpclib has no option
    for it: ``_create_connection`` is its one place that connects)."""

    def __init__(self, *args: Any, local_host: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._local_host = local_host

    async def _create_connection(self) -> H2Protocol:
        local = ipaddress.ip_address(self._local_host)
        try:
            remote: ipaddress.IPv4Address | ipaddress.IPv6Address | None
            remote = ipaddress.ip_address(self._host)
        except ValueError:
            remote = None  # a host name
        if remote is not None and (
            remote.version != local.version or (local.is_loopback and not remote.is_loopback)
        ):
            return await super()._create_connection()  # cannot leave from there
        server_hostname = self._config.ssl_target_name_override if self._ssl else None
        try:
            _, protocol = await self._loop.create_connection(
                self._protocol_factory,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=server_hostname,
                local_addr=(self._local_host, 0),
            )
        except OSError as exc:
            if exc.errno not in _BIND_ERRORS:
                raise
            log.debug("cannot dial %s from %s (%s): unbound", self._host, self._local_host, exc)
            return await super()._create_connection()
        return protocol


class ChannelPool:
    """One reused HTTP/2 channel per peer address, created inside the asyncio loop.

    With ``local_host`` (``bind_address`` of the node's listen address), connections leave
    from that IP, so that a peer's ``allowed_cidrs`` that lists the mesh's addresses admits
    them (issue 10: they left from 127.0.0.1 and every one was refused)."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None,
        local_node_id: str,
        stats: TransportStats,
        *,
        tls_server_name: str | None = None,
        local_host: str | None = None,
    ) -> None:
        self._ssl = ssl_context
        self._config = Configuration(ssl_target_name_override=tls_server_name)
        self._local = local_node_id
        self._local_host = local_host
        self._channels: dict[str, Channel] = {}
        self.stats = stats

    async def _channel(self, address: str) -> Channel:
        channel = self._channels.get(address)
        if channel is None:
            host, port = split_host_port(address)

            async def make() -> Channel:
                codec = _CountingCodec(self.stats)
                if self._local_host is not None:
                    return _BoundChannel(
                        host,
                        port,
                        ssl=self._ssl,
                        config=self._config,
                        codec=codec,
                        local_host=self._local_host,
                    )
                return Channel(host, port, ssl=self._ssl, config=self._config, codec=codec)

            made = await aio.call(make)
            # another caller may have made one for this address meanwhile: keep only one
            channel = self._channels.setdefault(address, made)
            if channel is not made:
                made.close()
        return channel

    async def unary(  # noqa: PLR0917
        self,
        address: str,
        path: str,
        request: betterproto2.Message,
        response_type: type[Resp],
        timeout: float,
        metadata: Mapping[str, str] | None = None,
    ) -> Resp:
        """Call ``path`` on ``address`` and return the answer, or raise ``MeshCallError``."""
        channel = await self._channel(address)
        headers = {NODE_ID_HEADER: self._local, **(metadata or {})}
        outgoing: betterproto2.Message | bytes = request
        if self.stats.auth is not None:
            outgoing = bytes(request)  # signed as sent: the codec passes these bytes on
            headers[AUTH_HEADER] = self.stats.auth.sign(path, headers[NODE_ID_HEADER], outgoing)
        self.stats.calls_sent += 1

        async def request_once() -> Resp:
            async with channel.request(
                path,
                grpclib.const.Cardinality.UNARY_UNARY,
                type(request),
                response_type,
                timeout=timeout,
                metadata=headers,
            ) as stream:
                await stream.send_message(typing.cast(Any, outgoing), end=True)
                reply = await stream.recv_message()
                if reply is None:
                    raise GRPCError(Status.UNKNOWN, "the peer sent no answer")
                return reply

        try:
            reply = await aio.call(request_once)
        except GRPCError as exc:
            self._failed()
            raise MeshCallError(
                address, path, "rejected", f"{exc.status.name}: {exc.message}", exc.status.name
            ) from exc
        except TimeoutError as exc:
            self._failed()
            raise MeshCallError(address, path, "timeout", f"no answer within {timeout:g}s") from exc
        except ssl.SSLError as exc:
            self._failed(address)
            raise MeshCallError(address, path, "unreachable", f"TLS failed: {exc}") from exc
        except (ConnectionError, OSError) as exc:
            self._failed(address)
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise MeshCallError(address, path, "unreachable", reason) from exc
        except (grpclib.exceptions.StreamTerminatedError, grpclib.exceptions.ProtocolError) as exc:
            self._failed(address)
            raise MeshCallError(address, path, "protocol", str(exc)) from exc
        except aio.AsyncioCancelled as exc:
            self._failed(address)
            raise MeshCallError(address, path, "unreachable", "the connection was closed") from exc
        return reply

    def _failed(self, address: str | None = None) -> None:
        self.stats.call_errors += 1
        if address is not None:
            self.drop(address)  # a fresh connection next time

    def drop(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        for address in list(self._channels):
            self.drop(address)
