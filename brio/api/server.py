"""The http part: hypercorn's trio worker serving the API app on ``[server] host, port``.

Shutdown comes in two steps that the node's root orders around the agents' drain:
``stop_accepting`` closes the listeners (requests in flight go on), and the app's own
``stopping`` event (set by the root once the agents are done) closes the WebSockets, so that
watchers see the last events first. Hypercorn's graceful timeout is the grace plus 5 s, so it
never cuts those watchers off before that.
"""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart_trio import QuartTrio

from brio.config.model import ServerConfig
from brio.exc import leaves


def hypercorn_config(server: ServerConfig) -> HypercornConfig:
    hc = HypercornConfig()
    host = server.host
    hc.bind = [f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}"]
    hc.graceful_timeout = server.shutdown_grace + 5.0
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
                self.app,
                hypercorn_config(self.config),
                shutdown_trigger=self._stop_accepting.wait,
                task_status=task_status,
            )
        except* OSError as group:
            where = f"{self.config.host}:{self.config.port}"
            reasons = "; ".join(str(getattr(e, "strerror", None) or e) for e in leaves(group))
            raise OSError(
                f"cannot serve HTTP on {where} ([server] host, port): {reasons}"
            ) from group
        finally:
            self.finished.set()
