"""The WebSocket of task events at ``/ws``, and its plain-HTTP twin that asks for an upgrade.

The HTTP route exists so that ``GET /ws`` without an upgrade gets a documented 426 in the
API's error shape rather than the framework's bare 400.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import trio
from quart import Response, request, websocket
from quart_trio import QuartTrio

from brio.api import models
from brio.api.deps import ApiDeps, token_ok
from brio.api.errors import ApiError
from brio.api.inputs import parse_json_object, validate
from brio.api.origins import OriginPolicy
from brio.api.routing import Reply, Router, json_response
from brio.tasks.events import EVENT_TYPES, Event, Subscription

MAX_SUBSCRIBED_IDS = 10_000

TAKE_MAX_EVENTS = 1000
"""Queued events taken off the subscription at once: they are sent before the next wait, and
they keep counting towards the subscription's bytes until they are."""

FRAME_MAX_BYTES = 256 * 1024
"""Event text per frame of a ``coalesce`` connection (one larger event goes alone): under the
1 MiB a frame common clients (trio-websocket, websockets) accept by default."""

BUDGET_WINDOW = 10.0
"""Seconds of the window the per-connection byte budgets below are counted over."""

BUDGET_IN_BYTES = 4 * 1024 * 1024
"""Bytes a client may send on one WebSocket per ``BUDGET_WINDOW``: 64 messages of the default
``max_ws_message_bytes``, far more than subscribing needs; more closes it (1008)."""

BUDGET_OUT_BYTES = 64 * 1024 * 1024
"""Bytes the node sends on one WebSocket per ``BUDGET_WINDOW`` (events and replies); more
closes it (1008). Replies are small acknowledgements, so only events come near it."""

router = Router()


@router.get(
    "/ws",
    summary="WebSocket of task events (task_created, task_update, task_output, "
    "task_completed); send WsSubscribe messages to choose tasks, sessions or all. "
    "The token may also be given as ?token=",
    responses={
        101: ("Switching protocols (a WebSocket handshake)", None),
        426: "Not a WebSocket handshake (upgrade_required)",
    },
    store=False,
    auth=True,
)
async def ws_without_upgrade(deps: ApiDeps) -> Reply:
    policy = OriginPolicy(deps.config.server.allowed_origins)
    policy.check(request.headers, request.scheme)
    if not token_ok(deps.token, request.headers, request.args):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token")
    raise ApiError(426, "upgrade_required", "/ws is a WebSocket: send an upgrade request")


def install_websocket(app: QuartTrio, deps: ApiDeps) -> None:
    max_bytes = deps.config.server.max_ws_message_bytes
    origins = OriginPolicy(deps.config.server.allowed_origins)

    @app.websocket("/ws")
    async def ws() -> Response | None:
        try:  # any page may open a WebSocket to localhost: browsers send their Origin
            origins.check(websocket.headers, websocket.scheme)
        except ApiError as refused:
            return json_response(refused.body(), 403)
        if not token_ok(deps.token, websocket.headers, websocket.args):
            failure = ApiError(401, "unauthorized", "missing or wrong bearer token")
            return json_response(failure.body(), 401)
        await websocket.accept()
        conn = _Connection()
        with deps.bus.subscribe() as sub:
            async with trio.open_nursery() as nursery:
                conn.done = nursery.cancel_scope
                nursery.start_soon(_forward_events, conn, sub)
                nursery.start_soon(_close_on_shutdown, deps.stopping, nursery.cancel_scope)
                await _read_subscriptions(conn, sub, max_bytes)
                nursery.cancel_scope.cancel()
        return None


@dataclass
class _Budget:
    """Bytes one direction of one connection may carry per ``BUDGET_WINDOW`` (a fixed
    window, started by the first byte after the last one ended)."""

    direction: str
    limit: int
    used: int = 0
    since: float = field(default_factory=trio.current_time)

    def spend(self, size: int) -> bool:
        now = trio.current_time()
        if now - self.since >= BUDGET_WINDOW:
            self.since, self.used = now, 0
        self.used += size
        return self.used <= self.limit


@dataclass
class _Connection:
    received: _Budget = field(default_factory=lambda: _Budget("received", BUDGET_IN_BYTES))
    sent: _Budget = field(default_factory=lambda: _Budget("sent", BUDGET_OUT_BYTES))
    done: trio.CancelScope = field(default_factory=trio.CancelScope)
    closing: bool = False
    coalesce: bool = False  # the client asked for several events per frame

    async def send(self, text: str) -> bool:
        """Send unless that overspends the sending budget (then close); False once closed.

        ``text`` is ASCII (``json.dumps`` output), so its length is its size in bytes."""
        if self.closing:
            return False
        if not self.sent.spend(len(text)):
            await self.over_budget(self.sent)
            return False
        await websocket.send(text)
        return True

    async def over_budget(self, budget: _Budget) -> None:
        limit = f"{budget.limit} bytes {budget.direction} per {BUDGET_WINDOW:g} s"
        await self.close_with_error(
            "byte_budget",
            f"this WebSocket went over its byte budget: at most {limit} per connection",
            {"direction": budget.direction, "limit_bytes": budget.limit, "window_s": BUDGET_WINDOW},
            1008,
            "byte budget exceeded",
        )

    async def close_with_error(
        self, code: str, message: str, details: Any, close_code: int, reason: str
    ) -> None:
        if self.closing:
            return
        self.closing = True
        error = {"code": code, "message": message, "details": details}
        await websocket.send(json.dumps({"type": "error", "error": error}))
        await websocket.close(close_code, reason)
        self.done.cancel()


async def _close_on_shutdown(stopping: trio.Event, done: trio.CancelScope) -> None:
    await stopping.wait()
    await websocket.close(1001, "node shutting down")
    done.cancel()


async def _forward_events(conn: _Connection, sub: Subscription) -> None:
    """Send the subscription's events until it ends, then close if it overflowed.

    Each wait takes every event already queued (up to ``TAKE_MAX_EVENTS``) and sends them
    before waiting again, rather than one wait per event; a ``coalesce`` connection gets them
    in as few frames as ``FRAME_MAX_BYTES`` allows. The events count towards the
    subscription's bytes until they are sent."""
    while True:
        try:
            events = await _take(sub)
        except trio.EndOfChannel:
            break
        sent = await (_send_coalesced if conn.coalesce else _send_each)(conn, events)
        for event in events:
            sub.delivered(event)
        if not sent:
            return
    if sub.overflowed:
        await conn.close_with_error(
            "slow_consumer", "too many unread events", None, 1008, "slow consumer"
        )
    conn.done.cancel()


async def _take(sub: Subscription) -> list[Event]:
    """Wait for one event, then take those queued behind it; EndOfChannel once it ended."""
    events = [await sub.receive.receive()]
    while len(events) < TAKE_MAX_EVENTS:
        try:
            events.append(sub.receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):  # the end is raised by the next wait
            break
    return events


async def _send_each(conn: _Connection, events: list[Event]) -> bool:
    for event in events:
        if not await conn.send(event.text):
            return False
    return True


async def _send_coalesced(conn: _Connection, events: list[Event]) -> bool:
    """Frames of ``{"type": "events", "events": [...]}``, joined from each event's text
    (never serialised again), in order."""
    frame: list[str] = []
    size = 0
    for event in events:
        if frame and size + len(event.text) > FRAME_MAX_BYTES:
            if not await conn.send(_events_frame(frame)):
                return False
            frame, size = [], 0
        frame.append(event.text)
        size += len(event.text) + 2
    return await conn.send(_events_frame(frame))


def _events_frame(texts: list[str]) -> str:
    return '{"type": "events", "events": [' + ", ".join(texts) + "]}"


async def _read_subscriptions(conn: _Connection, sub: Subscription, max_bytes: int) -> None:
    while True:
        raw = await websocket.receive()
        size = len(raw.encode() if isinstance(raw, str) else raw)
        if not conn.received.spend(size):
            await conn.over_budget(conn.received)
            return
        if size > max_bytes:
            await conn.close_with_error(
                "too_large",
                f"messages are limited to {max_bytes} bytes",
                None,
                1009,
                "message too big",
            )
            return
        try:
            msg = validate(models.WsSubscribe, parse_json_object(raw, "message"), "message")
        except ApiError as exc:
            if not await conn.send(json.dumps({"type": "error", **exc.body()})):
                return
            continue
        reply = _apply(conn, sub, msg)
        if not await conn.send(json.dumps(reply)):
            return


def _apply(conn: _Connection, sub: Subscription, msg: models.WsSubscribe) -> dict[str, Any]:
    """Change the subscription; the reply counts what it holds (never echoes it: a reply as
    large as the subscription would let small messages ask for large answers). Its ``types``
    are at most the four event types, so those are listed."""
    if msg.action == "subscribe":
        wanted = len(sub.task_ids | set(msg.tasks)) + len(sub.session_ids | set(msg.sessions))
        if wanted > MAX_SUBSCRIBED_IDS:
            limit = f"at most {MAX_SUBSCRIBED_IDS} task and session ids per connection"
            return {
                "type": "error",
                "error": {"code": "too_many_ids", "message": limit, "details": None},
            }
        sub.everything = sub.everything or msg.all
        sub.task_ids.update(msg.tasks)
        sub.session_ids.update(msg.sessions)
        if msg.types is not None:
            sub.types = frozenset(msg.types)
    else:
        if msg.all:
            sub.everything = False
        sub.task_ids.difference_update(msg.tasks)
        sub.session_ids.difference_update(msg.sessions)
        if msg.types is not None:
            sub.types = sub.types - set(msg.types)
    if msg.coalesce is not None:
        conn.coalesce = msg.coalesce
    return {
        "type": "subscribed",
        "all": sub.everything,
        "tasks": len(sub.task_ids),
        "sessions": len(sub.session_ids),
        "types": [t for t in EVENT_TYPES if t in sub.types],
        "coalesce": conn.coalesce,
    }
