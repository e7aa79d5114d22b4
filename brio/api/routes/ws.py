"""The WebSocket of task events at ``/ws``, and its plain-HTTP twin that asks for an upgrade.

The HTTP route exists so that ``GET /ws`` without an upgrade gets a documented 426 in the
API's error shape rather than the framework's bare 400.
"""

from __future__ import annotations

import json
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
from brio.tasks.events import Subscription

MAX_SUBSCRIBED_IDS = 10_000

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
        with deps.bus.subscribe() as sub:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_forward_events, sub, nursery.cancel_scope)
                nursery.start_soon(_close_on_shutdown, deps.stopping, nursery.cancel_scope)
                await _read_subscriptions(sub, max_bytes)
                nursery.cancel_scope.cancel()
        return None


async def _send_ws(body: dict[str, Any]) -> None:
    await websocket.send(json.dumps(body))


async def _close_on_shutdown(stopping: trio.Event, done: trio.CancelScope) -> None:
    await stopping.wait()
    await websocket.close(1001, "node shutting down")
    done.cancel()


async def _forward_events(sub: Subscription, done: trio.CancelScope) -> None:
    async for event in sub.receive:
        sub.delivered(event)
        await websocket.send(event.text)
    if sub.overflowed:
        await _send_ws(
            {
                "type": "error",
                "error": {"code": "slow_consumer", "message": "too many unread events"},
            }
        )
        await websocket.close(1008, "slow consumer")
    done.cancel()


async def _read_subscriptions(sub: Subscription, max_bytes: int) -> None:
    while True:
        raw = await websocket.receive()
        size = len(raw.encode() if isinstance(raw, str) else raw)
        if size > max_bytes:
            await _send_ws(
                {
                    "type": "error",
                    "error": {
                        "code": "too_large",
                        "message": f"messages are limited to {max_bytes} bytes",
                    },
                }
            )
            await websocket.close(1009, "message too big")
            return
        try:
            msg = validate(models.WsSubscribe, parse_json_object(raw, "message"), "message")
        except ApiError as exc:
            await _send_ws({"type": "error", **exc.body()})
            continue
        if msg.action == "subscribe":
            wanted = len(sub.task_ids | set(msg.tasks)) + len(sub.session_ids | set(msg.sessions))
            if wanted > MAX_SUBSCRIBED_IDS:
                limit = f"at most {MAX_SUBSCRIBED_IDS} task and session ids per connection"
                await _send_ws(
                    {"type": "error", "error": {"code": "too_many_ids", "message": limit}}
                )
                continue
            sub.everything = sub.everything or msg.all
            sub.task_ids.update(msg.tasks)
            sub.session_ids.update(msg.sessions)
        else:
            if msg.all:
                sub.everything = False
            sub.task_ids.difference_update(msg.tasks)
            sub.session_ids.difference_update(msg.sessions)
        await _send_ws(
            {
                "type": "subscribed",
                "all": sub.everything,
                "tasks": sorted(sub.task_ids),
                "sessions": sorted(sub.session_ids),
            }
        )
