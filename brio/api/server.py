"""The http part: hypercorn's trio worker serving the API app on ``[server] host, port``.

Shutdown comes in two steps that the node's root orders around the agents' drain:
``stop_accepting`` closes the listeners (requests in flight go on), and the app's own
``stopping`` event (set by the root once the agents are done) closes the WebSockets, so that
watchers see the last events first. Hypercorn's graceful timeout is the grace plus 5 s, so it
never cuts those watchers off before that.

Connections never outlive their answer (``_Guarded``): hypercorn 0.18 closes a connection (after
``Connection: close``, an HTTP/1.0 request, or an answer given before the body was read) from
inside the app's last ``send``, and quart-trio cancels that send as soon as it sees the
``http.disconnect`` the close itself queues, so the socket was left open, unanswered, until the
client went away. Shielding the app's sends lets the close finish. A body must arrive within
``BODY_TIMEOUT`` (408), and once the node stops accepting, a request still waiting for its body
gets until the grace period ends (then 503 and the connection closes), whatever the client does.
"""

from __future__ import annotations

import json
import logging

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from quart_trio import QuartTrio

from brio.config.model import ServerConfig
from brio.exc import leaves

BODY_TIMEOUT = 10.0
"""Seconds a request's body may take to arrive once its handler asks for it (Quart's
``BODY_TIMEOUT``): a body of up to ``[server] max_body_bytes`` that takes longer is a client
holding a connection open, answered 408 and closed."""

KEEP_ALIVE_TIMEOUT = 5.0
"""Seconds an idle keep-alive connection, or one still sending its request line and headers, is
kept open (hypercorn's ``keep_alive_timeout``)."""


class _Guarded:
    """The API app as hypercorn sees it: HTTP sends shielded, body waits bounded at shutdown."""

    def __init__(self, app: QuartTrio, grace: float, stopping: trio.Event) -> None:
        self.app = app
        self.grace = grace
        self.stopping = stopping

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"body_done": False, "started": False}

        async def guarded_receive() -> ASGIReceiveEvent:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def shielded_send(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            with trio.CancelScope(shield=True):
                await send(message)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._cut_at_grace, state, nursery.cancel_scope, send)
            await self.app(scope, guarded_receive, shielded_send)
            nursery.cancel_scope.cancel()

    async def _cut_at_grace(
        self, state: dict[str, bool], app_scope: trio.CancelScope, send: ASGISendCallable
    ) -> None:
        await self.stopping.wait()
        await trio.sleep(self.grace)
        if state["body_done"] or state["started"]:
            return  # its answer is on the way; hypercorn's graceful timeout bounds it
        app_scope.cancel()
        body = {
            "error": {
                "code": "shutting_down",
                "message": "this node is stopping and the request's body did not arrive "
                "within [server] shutdown_grace",
                "details": None,
            }
        }
        data = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            (b"connection", b"close"),
        ]
        with trio.CancelScope(shield=True):
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": data, "more_body": False})


def hypercorn_config(server: ServerConfig) -> HypercornConfig:
    hc = HypercornConfig()
    host = server.host
    hc.bind = [f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}"]
    hc.graceful_timeout = server.shutdown_grace + 5.0
    hc.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    # Above our own limit the app answers with a JSON error and closes (1009); hypercorn's
    # limit only guards against far larger frames.
    hc.websocket_max_message_size = 2 * server.max_ws_message_bytes
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


class HttpServer:
    def __init__(self, server: ServerConfig, app: QuartTrio) -> None:
        self.config = server
        self.app = app
        self._stop_accepting = trio.Event()
        self.finished = trio.Event()

    def stop_accepting(self) -> None:
        self._stop_accepting.set()

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until ``stop_accepting`` and the last request, or until cancelled."""
        try:
            await hypercorn_serve(
                _Guarded(self.app, self.config.shutdown_grace, self._stop_accepting),
                hypercorn_config(self.config),
                shutdown_trigger=self._stop_accepting.wait,
                task_status=task_status,
                mode="asgi",
            )
        except* OSError as group:
            where = f"{self.config.host}:{self.config.port}"
            reasons = "; ".join(str(getattr(e, "strerror", None) or e) for e in leaves(group))
            raise OSError(
                f"cannot serve HTTP on {where} ([server] host, port): {reasons}"
            ) from group
        finally:
            self.finished.set()
