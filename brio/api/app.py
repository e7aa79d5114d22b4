"""The HTTP and WebSocket API (quart-trio, served by hypercorn's trio worker).

Handlers are thin: they validate input with the pydantic models in ``brio.api.models``, call
the node's ``TaskService`` or store, and shape JSON. Every error leaves as
``{"error": {"code", "message", "details"}}`` with a 4xx/5xx status; no traceback reaches a
client.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import trio
from pydantic import BaseModel, ValidationError
from quart import Response, request, websocket
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException

from brio import __version__
from brio.agents.registry import RegisteredAgent
from brio.api import models
from brio.api.errors import ApiError, validation_error
from brio.api.openapi import openapi_document
from brio.config.model import BrioConfig
from brio.core.routing import BadTarget, NodeUnavailable, UnknownNode
from brio.core.tasks import TaskStatus
from brio.store.base import (
    MessageRecord,
    NewTask,
    SessionRecord,
    Store,
    StoreError,
    TaskFilter,
)
from brio.tasks.events import EventBus, Subscription
from brio.tasks.mesh_view import MeshView
from brio.tasks.service import (
    IdempotencyConflict,
    NotAccepting,
    TaskService,
    UnknownAgent,
    UnknownSession,
    task_json,
)
from brio.tasks.supervisor import Supervisor

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

MAX_SUBSCRIBED_IDS = 10_000


@dataclass
class ApiDeps:
    """Everything the API needs, passed in explicitly."""

    config: BrioConfig
    store: Store
    service: TaskService
    supervisor: Supervisor
    bus: EventBus
    agents: dict[str, RegisteredAgent]
    mesh: MeshView
    stopping: trio.Event  # set once running agents are done: WebSockets then close


def session_json(s: SessionRecord) -> dict[str, Any]:
    return {
        "id": s.id,
        "title": s.title,
        "metadata": s.metadata,
        "created_at": s.created_at.isoformat(),
        "updated_at": s.updated_at.isoformat(),
    }


def message_json(m: MessageRecord) -> dict[str, Any]:
    return {
        "id": m.id,
        "session_id": m.session_id,
        "role": m.role,
        "content": m.content,
        "task_id": m.task_id,
        "created_at": m.created_at.isoformat(),
    }


def agent_json(a: RegisteredAgent) -> dict[str, Any]:
    return {
        "name": a.name,
        "kind": a.kind,
        "description": a.description,
        "timeout": a.settings.timeout,
        "node_affinity": a.settings.node_affinity,
    }


def _agent_not_found(exc: UnknownAgent) -> ApiError:
    return ApiError(404, "agent_not_found", str(exc), {"known": exc.known})


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def _error(exc: ApiError) -> Response:
    return _json(exc.body(), exc.status)


def _validate(model: type[M], data: Any, where: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, where) from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _nul_path(value: Any, path: str) -> str | None:
    """Where a NUL character hides in ``value`` (PostgreSQL cannot store one), if anywhere."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                return f"{path}.{key!r}".lstrip(".")
            items.append((f"{path}.{key}".lstrip("."), item))
    elif isinstance(value, list):
        items = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    for where, item in items:
        found = _nul_path(item, where)
        if found is not None:
            return found
    return None


def parse_json_object(raw: bytes | str, where: str) -> dict[str, Any]:
    """Strict JSON (no NaN/Infinity), an object, no NUL characters; else a precise 422."""
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(422, "invalid_json", f"the {where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(422, "invalid_json", f"the {where} is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_body", f"the {where} must be a JSON object")
    bad = _nul_path(data, "")
    if bad is not None:
        raise ApiError(
            422,
            "validation_error",
            f"invalid {where}: {bad}: NUL characters are not allowed",
            [{"field": bad, "message": "NUL characters are not allowed"}],
        )
    return data


async def _body(model: type[M], *, optional: bool = False) -> M:
    raw = await request.get_data(cache=False, as_text=False)
    if optional and not raw.strip():
        return _validate(model, {}, "request body")
    if not raw:
        raise ApiError(422, "invalid_body", "the request body must be a JSON object")
    return _validate(model, parse_json_object(raw, "request body"), "request body")


def _query(model: type[M]) -> M:
    return _validate(model, dict(request.args.items()), "query parameters")


def _token_ok(expected: str | None, headers: Headers, args: Mapping[str, str]) -> bool:
    if expected is None:
        return True
    given = ""
    auth = headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    elif "token" in args:  # browsers cannot set headers on a WebSocket
        given = args["token"]
    return hmac.compare_digest(given.encode(), expected.encode())


def create_app(deps: ApiDeps) -> QuartTrio:
    server = deps.config.server
    token = server.auth_token.get_secret_value() if server.auth_token else None
    app = QuartTrio("brio")
    app.config["MAX_CONTENT_LENGTH"] = server.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        return _error(exc)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.code or 500, "http_error"
        )
        message = exc.description or exc.name
        if exc.code == 413:
            message = f"the request body is larger than {server.max_body_bytes} bytes"
        return _error(ApiError(exc.code or 500, code, message))

    @app.errorhandler(StoreError)
    async def _store_error(exc: StoreError) -> Response:
        log.error("store error in %s %s: %s", request.method, request.path, exc)
        return _error(ApiError(503, "store_unavailable", f"the store failed: {exc}"))

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(ApiError(500, "internal", "internal error; see the node's log"))

    @app.before_request
    async def _reject_nul() -> Response | None:
        if "\x00" in request.path or any("\x00" in v for v in request.args.values()):
            return _error(
                ApiError(422, "invalid_request", "NUL characters are not allowed in the URL")
            )
        return None

    coordinator_only = tuple(deps.config.mesh.access_control.coordinator_only_endpoints)

    @app.before_request
    async def _coordinator_only() -> Response | None:
        if deps.config.mesh.role == "coordinator":
            return None
        for prefix in coordinator_only:
            if request.path == prefix or request.path.startswith(prefix.rstrip("/") + "/"):
                return _error(
                    ApiError(
                        403,
                        "coordinator_only",
                        f"{request.path} is served only by coordinators; this node is a worker "
                        "([mesh.access_control] coordinator_only_endpoints)",
                    )
                )
        return None

    @app.before_request
    async def _auth() -> Response | None:
        if request.path.startswith("/api") and not _token_ok(token, request.headers, {}):
            return _error(ApiError(401, "unauthorized", "missing or wrong bearer token"))
        return None

    # --- health ---------------------------------------------------------------------------

    @app.get("/health/live")
    async def live() -> Response:
        return _json({"status": "alive"})

    @app.get("/health/ready")
    async def ready() -> Response:
        try:
            with trio.fail_after(2):
                await deps.store.ping()
        except Exception as exc:
            return _json({"status": "not_ready", "reason": f"store: {exc}"}, 503)
        return _json({"status": "ready"})

    @app.get("/health")
    async def health() -> Response:
        status: Literal["healthy", "unhealthy"] = "healthy"
        queued = 0
        try:
            with trio.fail_after(2):
                queued = await deps.store.count_tasks(TaskStatus.QUEUED)
        except Exception:
            status = "unhealthy"
        beat = deps.mesh.last_heartbeat()
        lease = deps.mesh.lease_view()
        remaining = lease.lease_remaining
        body = models.Health(
            status=status,
            node_id=deps.config.mesh.node_id,
            version=__version__,
            role=lease.role,
            epoch=lease.epoch,
            mesh=models.MeshHealth(
                connected_peers=deps.mesh.connected_peers(),
                last_heartbeat=beat.isoformat().replace("+00:00", "Z") if beat else None,
                primary=lease.primary,
                lease_remaining=round(remaining, 3) if remaining is not None else None,
            ),
            agents=models.AgentsHealth(
                active=deps.supervisor.active, queued=queued, max=deps.supervisor.max_agents
            ),
        )
        return _json(body.model_dump(), 200 if status == "healthy" else 503)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return _json(openapi_document(__version__))

    # --- tasks ----------------------------------------------------------------------------

    @app.post("/api/tasks")
    async def submit_task() -> Response:
        body = await _body(models.TaskCreate)
        new = NewTask(
            agent=body.agent,
            prompt=body.prompt,
            input=body.input,
            session_id=body.session_id,
            idempotency_key=body.idempotency_key,
            priority=body.priority,
        )
        try:
            task, created = await deps.service.submit(new)
        except UnknownAgent as exc:
            raise _agent_not_found(exc) from None
        except UnknownSession as exc:
            raise ApiError(404, "session_not_found", str(exc)) from None
        except NotAccepting as exc:
            raise ApiError(503, "shutting_down", str(exc)) from None
        except UnknownNode as exc:
            raise ApiError(404, "node_not_found", str(exc), {"known": list(exc.known)}) from None
        except NodeUnavailable as exc:
            raise ApiError(503, "node_unavailable", str(exc), {"state": exc.state}) from None
        except BadTarget as exc:
            raise ApiError(
                422,
                "validation_error",
                f"invalid task: agent: {exc}",
                [{"field": "agent", "message": str(exc)}],
            ) from None
        except IdempotencyConflict as exc:
            raise ApiError(
                409,
                "idempotency_conflict",
                str(exc),
                {"task_id": exc.task.id, "fields": exc.fields},
            ) from None
        return _json(task_json(task), 202 if created else 200)

    @app.get("/api/tasks")
    async def list_tasks() -> Response:
        q = _query(models.TaskListQuery)
        try:
            page = await deps.store.list_tasks(
                TaskFilter(status=q.status, agent=q.agent, session_id=q.session_id),
                limit=q.limit,
                cursor=q.cursor,
            )
        except ValueError as exc:
            raise ApiError(422, "invalid_cursor", str(exc), {"field": "cursor"}) from None
        return _json({"tasks": [task_json(t) for t in page.tasks], "next_cursor": page.next_cursor})

    @app.get("/api/tasks/<task_id>")
    async def get_task(task_id: str) -> Response:
        task = await deps.store.get_task(task_id)
        if task is None:
            raise ApiError(404, "task_not_found", f"unknown task {task_id!r}")
        return _json(task_json(task))

    @app.post("/api/tasks/<task_id>/cancel")
    async def cancel_task(task_id: str) -> Response:
        task = await deps.store.get_task(task_id)
        if task is None:
            raise ApiError(404, "task_not_found", f"unknown task {task_id!r}")
        cancelled = await deps.service.cancel(task_id)
        if cancelled is None:
            task = await deps.store.get_task(task_id)
            status = task.status.value if task else "unknown"
            raise ApiError(
                409, "task_finished", f"task {task_id!r} is already {status}", {"status": status}
            )
        return _json(task_json(cancelled))

    # --- sessions -------------------------------------------------------------------------

    @app.post("/api/sessions")
    async def create_session() -> Response:
        body = await _body(models.SessionCreate, optional=True)
        session = await deps.store.create_session(body.title, body.metadata)
        return _json(session_json(session), 201)

    @app.get("/api/sessions")
    async def list_sessions() -> Response:
        q = _query(models.SessionListQuery)
        sessions = await deps.store.list_sessions(limit=q.limit, offset=q.offset)
        return _json({"sessions": [session_json(s) for s in sessions]})

    @app.get("/api/sessions/<session_id>")
    async def get_session(session_id: str) -> Response:
        session = await deps.store.get_session(session_id)
        if session is None:
            raise ApiError(404, "session_not_found", f"unknown session {session_id!r}")
        return _json(session_json(session))

    @app.get("/api/sessions/<session_id>/messages")
    async def list_messages(session_id: str) -> Response:
        q = _query(models.MessageListQuery)
        if await deps.store.get_session(session_id) is None:
            raise ApiError(404, "session_not_found", f"unknown session {session_id!r}")
        messages = await deps.store.list_messages(session_id, limit=q.limit)
        return _json({"messages": [message_json(m) for m in messages]})

    # --- agents ---------------------------------------------------------------------------

    @app.get("/api/agents")
    async def list_agents() -> Response:
        return _json({"agents": [agent_json(a) for _, a in sorted(deps.agents.items())]})

    @app.get("/api/agents/<name>")
    async def get_agent(name: str) -> Response:
        agent = deps.agents.get(name)
        if agent is None:
            raise _agent_not_found(UnknownAgent(name, sorted(deps.agents)))
        return _json(agent_json(agent))

    # --- websocket ------------------------------------------------------------------------

    if server.websocket_enabled:

        @app.websocket("/ws")
        async def ws() -> Response | None:
            if not _token_ok(token, websocket.headers, websocket.args):
                return _error(ApiError(401, "unauthorized", "missing or wrong bearer token"))
            await websocket.accept()
            with deps.bus.subscribe() as sub:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_forward_events, sub, nursery.cancel_scope)
                    nursery.start_soon(_close_on_shutdown, deps.stopping, nursery.cancel_scope)
                    await _read_subscriptions(sub, server.max_ws_message_bytes)
                    nursery.cancel_scope.cancel()
            return None

    return app


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
            msg = _validate(models.WsSubscribe, parse_json_object(raw, "message"), "message")
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
