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
client went away. Shielding the app's last send lets the close finish. A body must arrive within
``BODY_TIMEOUT`` (408), and once the node stops accepting, a request still waiting for its body
gets until the grace period ends (then 503 and the connection closes), whatever the client does.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

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


@dataclass(eq=False)
class _Request:
    """One HTTP request in flight, as ``_Guarded`` follows it."""

    scope: trio.CancelScope  # around the app; its deadline is when a missing body is cut
    body_done: bool = False
    started: bool = False


class _Guarded:
    """The API app as hypercorn sees it: final HTTP sends shielded, body waits bounded at
    shutdown.

    No task or nursery per request (they were a tenth of a small request's CPU): a request
    whose body has not arrived yet sits in ``_waiting`` with a cancel scope around the app,
    and ``stop`` gives each a deadline, the end of the grace period. A request that starts
    after the stop gets a grace period of its own, as it did when a task per request waited
    for the stop and then slept the grace."""

    def __init__(self, app: QuartTrio, grace: float) -> None:
        self.app = app
        self.grace = grace
        self._stopped = False
        self._waiting: set[_Request] = set()  # requests whose body may still be awaited

    def stop(self) -> None:
        """The node stops accepting: cut the requests still waiting for their body once the
        grace period is over."""
        self._stopped = True
        deadline = trio.current_time() + self.grace
        for request in self._waiting:
            request.scope.deadline = deadline

    def _answered(self, request: _Request) -> None:
        """Its body arrived, or its answer began: never cut it."""
        if request in self._waiting:
            self._waiting.discard(request)
            request.scope.deadline = math.inf

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = trio.current_time() + self.grace if self._stopped else math.inf
        request = _Request(trio.CancelScope(deadline=deadline))
        self._waiting.add(request)

        async def guarded_receive() -> ASGIReceiveEvent:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                request.body_done = True
                self._answered(request)
            return message

        async def shielded_send(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start":
                request.started = True
                self._answered(request)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # the last send, inside which hypercorn may close the connection
                with trio.CancelScope(shield=True):
                    await send(message)
                return
            await send(message)

        try:
            with request.scope:
                await self.app(scope, guarded_receive, shielded_send)
        finally:
            self._waiting.discard(request)
        if request.scope.cancel_called and not (request.body_done or request.started):
            await self._refuse(send)

    @staticmethod
    async def _refuse(send: ASGISendCallable) -> None:
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
        self._guarded = _Guarded(app, server.shutdown_grace)
        self.finished = trio.Event()

    def stop_accepting(self) -> None:
        self._stop_accepting.set()
        self._guarded.stop()

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until ``stop_accepting`` and the last request, or until cancelled."""
        try:
            await hypercorn_serve(
                self._guarded,
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
