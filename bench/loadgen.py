"""The load generator of ``bench/cluster.py``, run in its own process: ``python -m bench.loadgen
MODE JSON-ARGS``; prints one JSON object (its figures and its own CPU time) on stdout.

HTTP goes through ``RawHTTP``, a minimal keep-alive HTTP/1.1 client on trio sockets (no pool,
no parsing beyond status, ``Content-Length`` and ``Connection: close``): httpx's pool is itself
the bottleneck at 64 connections on this machine (STACK-NOTES.md). Each connection is reopened
after ``MAX_REQUESTS`` requests, which is where hypercorn closes a keep-alive connection.

Modes:

- ``submit``: ``concurrency`` connections each POST ``/api/tasks`` back to back for
  ``seconds``; the 202s per second and their latency.
- ``closed``: ``users`` loops each submit a task and wait for its ``task_completed`` event (a
  WebSocket subscribed to everything on the same node) before submitting the next, for
  ``seconds``; completions per second after ``warmup``.
- ``latency``: one task at a time, ``count`` of them ``gap`` seconds apart; for each, the time
  from its 202 to the first ``task_update`` with status ``running`` on the WebSocket.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import trio
import trio_websocket

MAX_REQUESTS = 1000  # hypercorn's keep_alive_max_requests


class HTTPError(Exception):
    pass


class RawHTTP:
    """One keep-alive HTTP/1.1 connection, reopened after ``MAX_REQUESTS`` or a close."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.stream: trio.SocketStream | None = None
        self.buf = bytearray()
        self.used = 0
        self.reconnects = 0
        self.sock: trio.socket.SocketType | None = None

    async def _open(self) -> trio.SocketStream:
        if self.stream is not None:
            await self.stream.aclose()
        self.stream = await trio.open_tcp_stream(self.host, self.port)
        self.sock = self.stream.socket
        self.buf = bytearray()
        self.used = 0
        self.reconnects += 1
        return self.stream

    async def _receive(self, stream: trio.SocketStream) -> bytes:
        chunk = await stream.receive_some(65536)
        # Acknowledge at once: hypercorn writes a response's head and body separately, and a
        # delayed ACK here would hold the body back ~40 ms (Nagle on the server side).
        if self.sock is not None:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return bytes(chunk)

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        stream = self.stream
        if stream is None or self.used >= MAX_REQUESTS:
            stream = await self._open()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.used += 1
        await stream.send_all(head.encode() + body)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            chunk = await self._receive(stream)
            if not chunk:
                self.stream = None
                raise HTTPError("connection closed before the response")
            self.buf += chunk
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            chunk = await self._receive(stream)
            if not chunk:
                self.stream = None
                raise HTTPError("connection closed inside the response body")
            self.buf += chunk
        payload = bytes(self.buf[:length])
        del self.buf[:length]
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, payload


def _quantile(values: list[float], q: int) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _summary(latencies_ms: list[float]) -> dict[str, Any]:
    return {
        "p50_ms": _quantile(latencies_ms, 50),
        "p99_ms": _quantile(latencies_ms, 99),
        "max_ms": max(latencies_ms) if latencies_ms else None,
    }


def _task_body(args: dict[str, Any]) -> bytes:
    return json.dumps(
        {"agent": args["agent"], "prompt": args["tag"], "input": args.get("input", {})}
    ).encode()


async def submit(args: dict[str, Any]) -> dict[str, Any]:
    body = _task_body(args)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    conns = [RawHTTP(args["url"]) for _ in range(args["concurrency"])]
    deadline = time.perf_counter() + args["seconds"]

    async def one(conn: RawHTTP) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                status, _ = await conn.request("POST", "/api/tasks", body)
            except (OSError, HTTPError, trio.BrokenResourceError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                conn.stream = None
                continue
            if status == 202:
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for conn in conns:
            nursery.start_soon(one, conn)
    elapsed = time.perf_counter() - started
    for conn in conns:
        await conn.close()
    return {
        "accepted": len(latencies),
        "elapsed": elapsed,
        "rps": len(latencies) / elapsed,
        "errors": errors,
        "reconnects": sum(c.reconnects for c in conns),
        "started_unix": time.time() - elapsed,
        **_summary(latencies),
    }


@dataclass
class Waiters:
    """task id -> the event its submitter waits on, fed by one WebSocket reader."""

    wanted: dict[str, tuple[str, trio.Event]] = field(default_factory=dict)
    arrived: dict[str, float] = field(default_factory=dict)
    early: dict[tuple[str, str], float] = field(default_factory=dict)  # before it was wanted

    def want(self, task_id: str, what: str) -> trio.Event:
        event = trio.Event()
        if (task_id, what) in self.early:
            self.arrived[task_id] = self.early.pop((task_id, what))
            event.set()
        else:
            self.wanted[task_id] = (what, event)
        return event

    def seen(self, task_id: str, what: str, at: float) -> None:
        entry = self.wanted.get(task_id)
        if entry is not None and entry[0] == what:
            del self.wanted[task_id]
            self.arrived[task_id] = at
            entry[1].set()
        elif entry is None and len(self.early) < 100_000:
            self.early[(task_id, what)] = at


async def _read_events(ws: trio_websocket.WebSocketConnection, waiters: Waiters) -> None:
    while True:
        message = await ws.get_message()
        at = time.perf_counter()
        event = json.loads(message)
        kind = event.get("type")
        task_id = event.get("task_id")
        if not task_id:
            continue
        if kind == "task_completed":
            waiters.seen(task_id, "completed", at)
        elif kind == "task_update" and event.get("data", {}).get("status") == "running":
            waiters.seen(task_id, "running", at)


async def _subscribed(url: str, nursery: trio.Nursery, waiters: Waiters) -> None:
    ws_url = url.replace("http://", "ws://") + "/ws"
    ws = await trio_websocket.connect_websocket_url(nursery, ws_url, max_message_size=1 << 20)
    await ws.send_message(json.dumps({"action": "subscribe", "all": True}))
    while json.loads(await ws.get_message()).get("type") != "subscribed":
        pass
    nursery.start_soon(_read_events, ws, waiters)


async def closed(args: dict[str, Any]) -> dict[str, Any]:
    body = _task_body(args)
    waiters = Waiters()
    done_at: list[float] = []
    latencies: list[float] = []
    errors: dict[str, int] = {}
    timeouts = 0
    async with trio.open_nursery() as nursery:
        await _subscribed(args["url"], nursery, waiters)
        started = time.perf_counter()
        deadline = started + args["seconds"]

        async def user() -> None:
            nonlocal timeouts
            conn = RawHTTP(args["url"])
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    status, reply = await conn.request("POST", "/api/tasks", body)
                except (OSError, HTTPError, trio.BrokenResourceError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    conn.stream = None
                    continue
                if status != 202:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                    await trio.sleep(0.01)
                    continue
                task_id = json.loads(reply)["id"]
                with trio.move_on_after(30) as scope:
                    await waiters.want(task_id, "completed").wait()
                if scope.cancelled_caught:
                    timeouts += 1
                    waiters.wanted.pop(task_id, None)
                    continue
                end = waiters.arrived.pop(task_id)
                done_at.append(end)
                latencies.append((end - start) * 1000)
            await conn.close()

        async with trio.open_nursery() as users:
            for _ in range(args["users"]):
                users.start_soon(user)
        nursery.cancel_scope.cancel()
    window_start = started + args["warmup"]
    in_window = [t for t in done_at if window_start <= t <= deadline]
    window = deadline - window_start
    return {
        "completed": len(done_at),
        "in_window": len(in_window),
        "window": window,
        "rate": len(in_window) / window,
        "errors": errors,
        "timeouts": timeouts,
        **_summary(latencies),
    }


async def latency(args: dict[str, Any]) -> dict[str, Any]:
    body = _task_body(args)
    waiters = Waiters()
    deltas: list[float] = []
    ids: list[str] = []
    missing = 0
    async with trio.open_nursery() as nursery:
        await _subscribed(args["url"], nursery, waiters)
        conn = RawHTTP(args["url"])
        for _ in range(args["count"]):
            status, reply = await conn.request("POST", "/api/tasks", body)
            t_202 = time.perf_counter()
            if status != 202:
                raise HTTPError(f"POST /api/tasks: {status} {reply[:200]!r}")
            task_id = json.loads(reply)["id"]
            with trio.move_on_after(10) as scope:
                await waiters.want(task_id, "running").wait()
            if scope.cancelled_caught:
                missing += 1
                waiters.wanted.pop(task_id, None)
            else:
                deltas.append((waiters.arrived.pop(task_id) - t_202) * 1000)
                ids.append(task_id)
            await trio.sleep(args["gap"])
        await conn.close()
        nursery.cancel_scope.cancel()
    return {"ms": deltas, "ids": ids, "missing": missing, **_summary(deltas)}


MODES = {"submit": submit, "closed": closed, "latency": latency}


def main() -> None:
    mode, raw = sys.argv[1], sys.argv[2]
    result = trio.run(MODES[mode], json.loads(raw))
    times = os.times()
    result["cpu_s"] = times.user + times.system
    print(json.dumps(result))


if __name__ == "__main__":
    main()
