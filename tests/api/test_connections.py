"""HTTP connections end when they should: raw sockets against a real node (issue 11, item 3).

Each test reads the socket itself, because an HTTP client library hides exactly what is tested
here: whether the server closes the connection, and when.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import brio.api.app
import brio.api.server
from tests.nodes import Node, node_config, running_node
from tests.system.nodeproc import start_node_on_free_port

TOKEN = "s3cret"


def port_of(node: Node) -> int:
    return int(node.url.rsplit(":", 1)[1])


async def read_until_eof(stream: trio.SocketStream, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; fails if it is still open after ``limit``."""
    started = trio.current_time()
    data = b""
    with trio.fail_after(limit):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data, trio.current_time() - started


async def read_response(stream: trio.SocketStream, buffer: bytes = b"") -> tuple[bytes, bytes]:
    """One response with a Content-Length body, and what came after it."""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive_some(65536)
            assert chunk, f"connection closed mid-response: {buffer!r}"
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            chunk = await stream.receive_some(65536)
            assert chunk, "connection closed mid-body"
            rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Node]:
    config = node_config(tmp_path, server={"auth_token": TOKEN})
    async with running_node(config, token=TOKEN) as node:
        yield node


async def test_an_early_401_with_an_unread_body_then_a_second_request(guarded: Node) -> None:
    """The body is promised but not (all) sent: the 401 comes before it is read. Then the
    connection is either closed at once or answers the next request; it never just hangs."""
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(guarded))
    async with stream:
        await stream.send_all(
            b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"{" * 1000
        )
        first, rest = await read_response(stream)
        assert status_of(first) == 401
        try:
            await stream.send_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        except trio.BrokenResourceError:
            return  # closed: fine
        with trio.fail_after(1):
            more = rest + await stream.receive_some(65536)
        if more:
            second, _ = await read_response(stream, more)
            assert status_of(second) == 200


async def test_an_early_401_with_the_whole_body_keeps_the_connection(guarded: Node) -> None:
    body = b'{"agent": "echo", "prompt": "x"}'
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(guarded))
    async with stream:
        await stream.send_all(
            b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        first, rest = await read_response(stream)
        assert status_of(first) == 401
        await stream.send_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        second, _ = await read_response(stream, rest)
        assert status_of(second) == 200


@pytest.mark.parametrize(
    "request_",
    [
        b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /health/live HTTP/1.0\r\n\r\n",
        b"PUT /health HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n",  # 405, body unread
        b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n",  # 413 (or 401)
    ],
    ids=["connection-close", "http-1.0", "405-unread-body", "413-unread-body"],
)
async def test_the_connection_ends_within_a_second_of_the_answer(
    guarded: Node, request_: bytes
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(guarded))
    async with stream:
        await stream.send_all(request_)
        data, took = await read_until_eof(stream, limit=1.0)
    assert data.startswith(b"HTTP/1."), data
    assert took < 1.0


async def test_a_trickled_body_is_cut_off_after_the_body_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(brio.api.app, "BODY_TIMEOUT", 1.0)
    async with running_node(node_config(tmp_path)) as node:
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(node))
        async with stream:
            await stream.send_all(
                b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            started = trio.current_time()
            received = b""
            with trio.fail_after(5):
                while b"\r\n\r\n" not in received:
                    with trio.move_on_after(0.1):
                        received += await stream.receive_some(65536)
                    try:
                        await stream.send_all(b" ")  # a byte every 0.1 s, never all of them
                    except trio.BrokenResourceError:
                        break
            took = trio.current_time() - started
            rest, _ = await read_until_eof(stream, limit=1.0)
        response = received + rest
        assert status_of(response) == 408, response
        assert b"request_timeout" in response and b"1 seconds" in response
        assert 0.9 < took < 3
        assert (await node.client.get("/health")).status_code == 200


async def test_trickled_headers_are_cut_off_after_the_keep_alive_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(brio.api.server, "KEEP_ALIVE_TIMEOUT", 1.0)
    async with running_node(node_config(tmp_path)) as node:
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(node))
        async with stream:
            started = trio.current_time()
            with trio.fail_after(5):
                try:
                    for _ in range(100):
                        await stream.send_all(b"X-Slow: 1\r\n" if _ else b"GET / HTTP/1.1\r\n")
                        with trio.move_on_after(0.1):
                            if await stream.receive_some(65536) == b"":
                                break
                except (trio.BrokenResourceError, OSError):
                    pass
            assert 0.9 < trio.current_time() - started < 3


def _sigterm_with_hanging_clients(tmp_path: Path) -> float:
    node = start_node_on_free_port(
        tmp_path, {"BRIO_SERVER__SHUTDOWN_GRACE": "1", "BRIO_SERVER__AUTH_TOKEN": TOKEN}
    )
    port = int(node.url.rsplit(":", 1)[1])
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        # answered, then held open by the client: Connection: close, and an early 401
        clients[0].sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        clients[1].sendall(b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        # waiting for a body that never comes
        clients[2].sendall(
            b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
        )
        time.sleep(0.5)
        started = time.monotonic()
        assert node.terminate(timeout=30) == 0, node.log()
        return time.monotonic() - started
    finally:
        for client in clients:
            client.close()


async def test_sigterm_is_bounded_by_the_grace_whatever_clients_do(tmp_path: Path) -> None:
    took = await trio.to_thread.run_sync(_sigterm_with_hanging_clients, tmp_path)
    assert took < 1 + 2.0, f"SIGTERM took {took:.1f}s with shutdown_grace 1"
