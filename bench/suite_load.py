"""The load generator of ``bench/suite.py``, run in its own process: ``python -m bench.suite_load
MODE JSON-ARGS``; prints one JSON object (its figures and its own CPU time) on stdout.

HTTP goes through ``bench.loadgen.RawHTTP`` (a raw keep-alive HTTP/1.1 client: httpx's pool
is itself the bottleneck at 64 connections) and events through one WebSocket subscribed to
completions only, coalesced (``"types": ["task_completed"], "coalesce": true``, docs/api.md):
these loops wait for results and nothing else, as a client that wants only results would, so
the node serialises and sends one event per task, several to a frame when they finish
together, instead of five frames per task for a watcher of everything. Modes:

- ``brio``: ``users`` closed loops, each: ``POST /api/tasks``, wait for the task's
  ``task_completed`` event on the WebSocket, then one ``GET /api/tasks/{id}`` (the result),
  then the next; for ``seconds``. Tasks per second over the window after ``warmup``, latency
  from the POST to the GET's answer.
- ``celery``: the same with a Celery client (``apply_async`` then ``AsyncResult.get``), one
  thread per user (the Celery client is synchronous).
- ``batch``: ``connections`` loops each ``POST /api/tasks:batch`` with ``batch`` tasks and
  wait for all of their ``task_completed`` events; tasks per second over the window.
- ``agents``: submit ``count`` ``sleep`` tasks over ``connections`` connections while one
  loop GETs ``/health/live`` every ``probe_gap`` seconds; the probe's latencies while
  submitting, and once every task is running.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import trio
import trio_websocket

from bench.ab import quantile
from bench.loadgen import HTTPError, RawHTTP, Waiters

RETRYABLE = (OSError, HTTPError, trio.BrokenResourceError)


def latency_summary(ms: list[float]) -> dict[str, Any]:
    return {
        "count": len(ms),
        "p50_ms": quantile(ms, 0.5),
        "p99_ms": quantile(ms, 0.99),
        "max_ms": max(ms) if ms else None,
    }


async def _read_completions(ws: trio_websocket.WebSocketConnection, waiters: Waiters) -> None:
    while True:
        message = json.loads(await ws.get_message())
        at = time.perf_counter()
        events = message["events"] if message.get("type") == "events" else [message]
        for event in events:
            if event.get("type") == "task_completed" and event.get("task_id"):
                waiters.seen(event["task_id"], "completed", at)


async def _subscribed(url: str, nursery: trio.Nursery, waiters: Waiters) -> dict[str, Any]:
    """One WebSocket for every task's ``task_completed``, coalesced, read by a task of
    ``nursery`` into ``waiters``; returns the node's confirmation of the subscription."""
    ws_url = url.replace("http://", "ws://") + "/ws"
    ws = await trio_websocket.connect_websocket_url(nursery, ws_url, max_message_size=1 << 20)
    subscribe = {"action": "subscribe", "all": True, "types": ["task_completed"], "coalesce": True}
    await ws.send_message(json.dumps(subscribe))
    while True:
        reply: dict[str, Any] = json.loads(await ws.get_message())
        if reply.get("type") == "subscribed":
            break
        if reply.get("type") == "error":
            raise RuntimeError(f"the node refused the subscription: {reply}")
    nursery.start_soon(_read_completions, ws, waiters)
    return reply


def _window(done_at: list[float], start: float, warmup: float, end: float) -> dict[str, Any]:
    begin = start + warmup
    inside = [t for t in done_at if begin <= t <= end]
    return {
        "completed": len(done_at),
        "in_window": len(inside),
        "rate": len(inside) / (end - begin),
    }


async def brio(args: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"agent": args["agent"], "prompt": args["tag"], "input": {}}).encode()
    waiters = Waiters()
    done_at: list[float] = []
    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        await _subscribed(args["url"], nursery, waiters)
        started = time.perf_counter()
        deadline = started + args["seconds"]

        async def user() -> None:
            conn = RawHTTP(args["url"])
            while time.perf_counter() < deadline:
                begin = time.perf_counter()
                try:
                    status, reply = await conn.request("POST", "/api/tasks", body)
                    if status != 202:
                        errors[str(status)] = errors.get(str(status), 0) + 1
                        await trio.sleep(0.01)
                        continue
                    task_id = json.loads(reply)["id"]
                    with trio.move_on_after(30) as scope:
                        await waiters.want(task_id, "completed").wait()
                    if scope.cancelled_caught:
                        waiters.wanted.pop(task_id, None)
                        errors["timeout"] = errors.get("timeout", 0) + 1
                        continue
                    waiters.arrived.pop(task_id, None)
                    status, reply = await conn.request("GET", f"/api/tasks/{task_id}")
                    if status != 200 or json.loads(reply).get("status") != "succeeded":
                        errors[f"get {status}"] = errors.get(f"get {status}", 0) + 1
                        continue
                except RETRYABLE as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    conn.stream = None
                    continue
                end = time.perf_counter()
                done_at.append(end)
                latencies.append((end - begin) * 1000)
            await conn.close()

        async with trio.open_nursery() as users:
            for _ in range(args["users"]):
                users.start_soon(user)
        nursery.cancel_scope.cancel()
    return {
        **_window(done_at, started, args["warmup"], deadline),
        "errors": errors,
        **latency_summary(latencies),
    }


def celery(args: dict[str, Any]) -> dict[str, Any]:
    from bench.baselines import celery_app

    app = celery_app.make_app(args["redis_url"])
    echo = app.tasks["bench.echo"]
    done_at: list[float] = []
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    started = time.perf_counter()
    deadline = started + args["seconds"]

    def user() -> None:
        while time.perf_counter() < deadline:
            begin = time.perf_counter()
            try:
                result = echo.apply_async((args["tag"],)).get(timeout=30)
            except Exception as exc:  # a Celery or Redis error, counted and reported
                with lock:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            end = time.perf_counter()
            with lock:
                if result == args["tag"]:
                    done_at.append(end)
                    latencies.append((end - begin) * 1000)
                else:
                    errors["wrong result"] = errors.get("wrong result", 0) + 1

    threads = [threading.Thread(target=user, daemon=True) for _ in range(args["users"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args["seconds"] + 60)
    return {
        **_window(done_at, started, args["warmup"], deadline),
        "errors": errors,
        **latency_summary(latencies),
    }


async def batch(args: dict[str, Any]) -> dict[str, Any]:
    task = {"agent": args["agent"], "prompt": args["tag"], "input": {}}
    waiters = Waiters()
    done_at: list[float] = []
    errors: dict[str, int] = {}
    counter = 0
    async with trio.open_nursery() as nursery:
        await _subscribed(args["url"], nursery, waiters)
        started = time.perf_counter()
        deadline = started + args["seconds"]

        async def loop(index: int) -> None:
            nonlocal counter
            conn = RawHTTP(args["url"])
            while time.perf_counter() < deadline:
                items = []
                for _ in range(args["batch"]):
                    counter += 1
                    items.append({**task, "idempotency_key": f"{args['tag']}-{index}-{counter}"})
                try:
                    status, reply = await conn.request(
                        "POST", "/api/tasks:batch", json.dumps({"tasks": items}).encode()
                    )
                except RETRYABLE as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    conn.stream = None
                    continue
                if status != 200:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                    await trio.sleep(0.05)
                    continue
                outcomes = json.loads(reply)["results"]
                ids = [o["task"]["id"] for o in outcomes if o.get("outcome") == "accepted"]
                failed = len(outcomes) - len(ids)
                if failed:
                    errors["item refused"] = errors.get("item refused", 0) + failed
                events = [waiters.want(i, "completed") for i in ids]
                with trio.move_on_after(60):
                    for event in events:
                        await event.wait()
                for task_id in ids:
                    if task_id in waiters.arrived:
                        done_at.append(waiters.arrived.pop(task_id))
                    else:
                        waiters.wanted.pop(task_id, None)
                        errors["timeout"] = errors.get("timeout", 0) + 1
            await conn.close()

        async with trio.open_nursery() as loops:
            for index in range(args["connections"]):
                loops.start_soon(loop, index)
        nursery.cancel_scope.cancel()
    return {**_window(done_at, started, args["warmup"], deadline), "errors": errors}


async def agents(args: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"agent": "sleep", "prompt": args["tag"], "input": {"ms": args["ms"]}})
    probe_ms: list[float] = []
    errors: dict[str, int] = {}
    submitted = 0
    submitting = True

    async def probe() -> None:
        conn = RawHTTP(args["url"])
        while submitting:
            begin = time.perf_counter()
            try:
                status, _ = await conn.request("GET", "/health/live")
            except RETRYABLE as exc:
                key = f"probe {type(exc).__name__}"
                errors[key] = errors.get(key, 0) + 1
                conn.stream = None
                continue
            if status == 200:
                probe_ms.append((time.perf_counter() - begin) * 1000)
            await trio.sleep(args["probe_gap"])
        await conn.close()

    async def submit(share: int) -> None:
        nonlocal submitted
        conn = RawHTTP(args["url"])
        for _ in range(share):
            try:
                status, _ = await conn.request("POST", "/api/tasks", body.encode())
            except RETRYABLE as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                conn.stream = None
                continue
            if status == 202:
                submitted += 1
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1
        await conn.close()

    async def until_running(conn: RawHTTP, limit: float) -> float | None:
        begin = time.perf_counter()
        while time.perf_counter() - begin < limit:
            status, reply = await conn.request("GET", "/health")
            if status == 200 and json.loads(reply)["agents"]["active"] >= submitted:
                return time.perf_counter() - begin
            await trio.sleep(0.05)
        return None

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        async with trio.open_nursery() as submitters:
            per = args["count"] // args["connections"]
            for i in range(args["connections"]):
                extra = args["count"] - per * args["connections"] if i == 0 else 0
                submitters.start_soon(submit, per + extra)
        submit_s = time.perf_counter() - started
        conn = RawHTTP(args["url"])
        running_after = await until_running(conn, args["ms"] / 1000 / 2)
        await conn.close()
        submitting = False
    return {
        "submitted": submitted,
        "submit_s": submit_s,
        "all_running_after_s": running_after,
        "errors": errors,
        "probe": latency_summary(probe_ms),
    }


MODES: dict[str, Any] = {"brio": brio, "batch": batch, "agents": agents}


def main() -> None:
    mode, raw = sys.argv[1], sys.argv[2]
    args = json.loads(raw)
    result = celery(args) if mode == "celery" else trio.run(MODES[mode], args)
    times = os.times()
    result["cpu_s"] = times.user + times.system
    print(json.dumps(result))


if __name__ == "__main__":
    main()
