"""The HTTP and WebSocket API (quart-trio, served by hypercorn's trio worker).

``create_app`` only assembles: the routes live one module per resource in ``brio.api.routes``,
each declared once with ``brio.api.routing``, which both registers them and generates
``/openapi.json``. The hooks here are the checks every route shares (NUL characters in the URL,
coordinator-only paths, the bearer token) and the error handlers that give every failure the
one shape ``{"error": {"code", "message", "details"}}``; no traceback reaches a client.
"""

from __future__ import annotations

import functools
import logging

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from brio import __version__
from brio.api import models
from brio.api.deps import ApiDeps, token_ok
from brio.api.errors import ApiError
from brio.api.openapi import openapi_document
from brio.api.origins import OriginPolicy
from brio.api.routes import agents, health, sessions, tasks, ws
from brio.api.routes.ws import MAX_SUBSCRIBED_IDS
from brio.api.routing import Reply, Route, Router, covered_by, install, json_response
from brio.api.server import BODY_TIMEOUT
from brio.store.base import StoreError

__all__ = ["MAX_SUBSCRIBED_IDS", "ApiDeps", "create_app", "routes_of"]

log = logging.getLogger(__name__)


def _error(exc: ApiError, headers: dict[str, str] | None = None) -> Response:
    response = json_response(exc.body(), exc.status)
    response.headers.update(headers or {})
    return response


def routes_of(deps: ApiDeps) -> list[Route]:
    """Every HTTP route this node serves, ``/openapi.json`` included, in document order."""
    resources = [health.router, tasks.router, sessions.router, agents.router]
    if deps.config.server.websocket_enabled:
        resources.append(ws.router)
    docs = Router()

    @docs.get(
        "/openapi.json",
        summary="This document",
        responses={200: ("OpenAPI 3.1", models.OpenApiDocument)},
        store=False,
    )
    async def openapi(deps: ApiDeps) -> Reply:
        return Reply(200, document())

    @functools.cache
    def document() -> models.OpenApiDocument:
        # built on first use: its JSON schemas were half of a node's start
        return models.OpenApiDocument.model_validate(
            openapi_document(routes, deps.config, __version__, also=(models.WsSubscribe,))
        )

    routes = [route for router in [*resources, docs] for route in router.routes]
    return routes


def create_app(deps: ApiDeps) -> QuartTrio:
    server = deps.config.server
    app = QuartTrio("brio")
    app.config["MAX_CONTENT_LENGTH"] = server.max_body_bytes
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        return _error(exc)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        code = {
            404: "not_found",
            405: "method_not_allowed",
            408: "request_timeout",
            413: "too_large",
        }.get(exc.code or 500, "http_error")
        message = exc.description or exc.name
        if exc.code == 413:
            message = f"the request body is larger than {server.max_body_bytes} bytes"
        if exc.code == 408:
            message = f"the request body did not arrive within {BODY_TIMEOUT:g} seconds"
        headers = {}
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:  # RFC 9110: 405 has Allow
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return _error(ApiError(exc.code or 500, code, message), headers)

    @app.errorhandler(StoreError)
    async def _store_error(exc: StoreError) -> Response:
        log.error("store error in %s %s: %s", request.method, request.path, exc)
        return _error(ApiError(503, "store_unavailable", f"the store failed: {exc}"))

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(ApiError(500, "internal", "internal error; see the node's log"))

    origins = OriginPolicy(server.allowed_origins)
    coordinator_only = tuple(deps.config.mesh.access_control.coordinator_only_endpoints)

    def _refusal() -> ApiError | None:
        """Why the request is refused before its route runs, checked in this order: NUL
        characters in the URL, a browser write from another origin, a coordinator-only path
        on a worker, a missing or wrong bearer token."""
        # request.args parses the query string: only when there is one
        if "\x00" in request.path or (
            request.query_string and any("\x00" in v for v in request.args.values())
        ):
            return ApiError(422, "invalid_request", "NUL characters are not allowed in the URL")
        # Browser writes from another origin are refused; reads are harmless (a page cannot
        # read the answer without CORS headers, which this API never sends).
        if request.method not in ("GET", "HEAD"):
            try:
                origins.check(request.headers, request.scheme)
            except ApiError as exc:
                return exc
        if deps.config.mesh.role != "coordinator":
            for prefix in coordinator_only:
                if covered_by(prefix, request.path):
                    return ApiError(
                        403,
                        "coordinator_only",
                        f"{request.path} is served only by coordinators; this node is a worker "
                        "([mesh.access_control] coordinator_only_endpoints)",
                    )
        if request.path.startswith("/api") and not token_ok(deps.token, request.headers, {}):
            return ApiError(401, "unauthorized", "missing or wrong bearer token")
        return None

    @app.before_request
    async def _checks() -> Response | None:
        # one hook, not four: Quart awaits each hook of each blueprint level per request
        refused = _refusal()
        return None if refused is None else _error(refused)

    install(app, routes_of(deps), deps)
    if server.websocket_enabled:
        ws.install_websocket(app, deps)
    return app
