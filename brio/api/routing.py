"""Routes declared once, read by Quart and by the OpenAPI generator alike.

A ``Route`` is the one place a route's path, method, models and statuses are written. Quart
gets its rules from it (``install``), ``brio.api.openapi`` its document, and ``documented``
decides which statuses the route may answer. ``install`` then refuses, at run time, any reply
that is not declared: a handler answering an undeclared status or model, or a hook or the
framework answering a status ``documented`` does not list, becomes a logged 500 (itself
documented) rather than a response the document does not describe. So a route or status missing
from ``/openapi.json`` cannot happen silently; the fuzz test turns any such 500 into a failure.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError
from quart import Response, request
from quart_trio import QuartTrio

from brio.api import models
from brio.api.errors import ApiError
from brio.api.inputs import read_body, read_path, read_query
from brio.config.model import BrioConfig

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Answer:
    """One documented status: what it means and its body's model (None: no body)."""

    description: str
    model: type[BaseModel] | None = models.ErrorBody


@dataclass(frozen=True)
class Reply:
    """What a handler returns: a declared status and a body of that status's model."""

    status: int
    body: BaseModel


Handler = Callable[..., Awaitable[Reply]]
Declared = Mapping[int, tuple[str, type[BaseModel] | None] | str]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # the OpenAPI form, /api/tasks/{task_id}
    summary: str
    handler: Handler
    responses: Mapping[int, Answer]  # what the handler itself answers, errors included
    path_params: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_required: bool = True
    store: bool = True  # reads or writes the store, so a failing store is its 503
    auth: bool = False  # needs the bearer token when one is configured

    @property
    def name(self) -> str:
        return self.handler.__name__

    @property
    def rule(self) -> str:
        """The Quart rule: ``{name}`` becomes ``<name>``."""
        return self.path.replace("{", "<").replace("}", ">")


@dataclass
class Router:
    """The routes of one resource, declared with its decorators."""

    routes: list[Route] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        responses: Declared,
        path_params: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        body: type[BaseModel] | None = None,
        body_required: bool = True,
        store: bool = True,
        auth: bool | None = None,
    ) -> Callable[[Handler], Handler]:
        """Declare a route. ``responses``: status → description (an error body) or
        (description, model). The handler gets ``deps`` and, when declared, ``path``, ``query``
        and ``body`` as validated models."""
        answers = {
            status: Answer(spec) if isinstance(spec, str) else Answer(*spec)
            for status, spec in responses.items()
        }

        def register(handler: Handler) -> Handler:
            in_path = set(re.findall(r"{(\w+)}", path))
            declared = set(path_params.model_fields) if path_params else set()
            if in_path != declared:
                raise TypeError(f"{path}: path_params declares {declared or 'nothing'}")
            self.routes.append(
                Route(
                    method=method,
                    path=path,
                    summary=summary,
                    handler=handler,
                    responses=answers,
                    path_params=path_params,
                    query=query,
                    body=body,
                    body_required=body_required,
                    store=store,
                    auth=path.startswith("/api") if auth is None else auth,
                )
            )
            return handler

        return register

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)


def covered_by(prefix: str, path: str, *, template: bool = False) -> bool:
    """Whether ``path`` is ``prefix``, under it (``prefix/...``) or one of its Google-style
    custom methods (``prefix:verb``, as ``/api/tasks:batch`` is of ``/api/tasks``).

    The one rule for ``[mesh.access_control] coordinator_only_endpoints``: the worker's hook
    in ``brio.api.app`` asks it of the concrete request path, ``documented`` of each route
    template (``template=True``: a ``{name}`` segment may be any segment), so the 403 a route
    documents is exactly the one the hook can answer.
    """
    wanted = [part for part in prefix.strip("/").split("/") if part]
    have = path.strip("/").split("/")
    if len(wanted) > len(have):
        return False
    for position, (w, h) in enumerate(zip(wanted, have, strict=False)):
        if template and "{" in h:
            continue  # some value of the parameter is w (or w:verb)
        last = position == len(wanted) - 1
        if h != w and not (last and h.startswith(w + ":")):
            return False
    return True


def _merge(answers: dict[int, Answer], status: int, answer: Answer) -> None:
    if status in answers:
        mine = answers[status]
        answers[status] = Answer(f"{mine.description}; {answer.description}", mine.model)
    else:
        answers[status] = answer


def documented(route: Route, config: BrioConfig) -> dict[int, Answer]:
    """Every status ``route`` can answer on a node with ``config``, with what each means.

    The route's own answers, then those of the input checks, the hooks in ``brio.api.app``
    and the framework, each exactly where it applies.
    """
    answers = dict(route.responses)
    if route.path_params or route.query or route.body:
        _merge(answers, 422, Answer("Invalid path, query or body (names the field)"))
    _merge(answers, 422, Answer("A NUL character in the URL (invalid_request)"))
    if route.body is not None:
        _merge(answers, 413, Answer("Body larger than [server] max_body_bytes"))
        _merge(answers, 408, Answer("The body did not arrive in time (request_timeout)"))
        _merge(answers, 415, Answer("A body whose Content-Type is not application/json"))
    if route.method != "GET" or route.path == "/ws":
        _merge(
            answers,
            403,
            Answer("A browser Origin not allowed ([server] allowed_origins; origin_not_allowed)"),
        )
    if route.auth and config.server.auth_token is not None:
        _merge(answers, 401, Answer("Missing or wrong bearer token"))
    if config.mesh.role != "coordinator" and any(
        covered_by(prefix, route.path, template=True)
        for prefix in config.mesh.access_control.coordinator_only_endpoints
    ):
        _merge(answers, 403, Answer("Served by coordinators only (coordinator_only_endpoints)"))
    if route.store:
        _merge(answers, 503, Answer("The store failed (store_unavailable)"))
    _merge(answers, 500, Answer("A bug; the traceback is in the node's log only"))
    return dict(sorted(answers.items()))


def json_response(body: BaseModel | dict[str, Any], status: int) -> Response:
    if isinstance(body, BaseModel):
        try:  # pydantic's own encoder: half the cost of model_dump then json.dumps
            return Response(body.model_dump_json(), status=status, content_type=JSON_TYPE)
        except PydanticSerializationError:  # a lone surrogate, which only json.dumps escapes
            return Response(
                json.dumps(body.model_dump(mode="json")), status=status, content_type=JSON_TYPE
            )
    return Response(json.dumps(body), status=status, content_type=JSON_TYPE)


def install(app: QuartTrio, routes: list[Route], deps: Any) -> None:
    """Register ``routes`` on ``app`` and refuse any answer they do not document."""
    by_endpoint: dict[str, tuple[Route, dict[int, Answer]]] = {}
    for route in routes:
        by_endpoint[route.name] = (route, documented(route, deps.config))
        app.add_url_rule(
            route.rule, route.name, _view(route, deps), methods=[route.method], strict_slashes=True
        )

    @app.after_request
    async def _only_documented(response: Response) -> Response:
        found = by_endpoint.get(request.endpoint or "")
        if found is None:  # no route matched (404, 405) or one registered elsewhere
            return response
        route, answers = found
        if request.method not in (route.method, "HEAD" if route.method == "GET" else ""):
            return response  # automatic OPTIONS
        if response.status_code not in answers:
            log.error(
                "%s %s answered %d, which its route does not document; sent 500 instead",
                request.method,
                request.path,
                response.status_code,
            )
            failure = ApiError(500, "internal", "internal error; see the node's log")
            return json_response(failure.body(), 500)
        return response


def _view(route: Route, deps: Any) -> Callable[..., Awaitable[Response]]:
    async def view(**view_args: Any) -> Response:
        kwargs: dict[str, Any] = {"deps": deps}
        if route.path_params is not None:
            kwargs["path"] = read_path(route.path_params, view_args)
        if route.query is not None:
            kwargs["query"] = read_query(route.query)
        if route.body is not None:
            kwargs["body"] = await read_body(route.body, required=route.body_required)
        reply = await route.handler(**kwargs)
        answer = route.responses.get(reply.status)
        if answer is None or answer.model is None or not isinstance(reply.body, answer.model):
            raise RuntimeError(
                f"{route.name} replied {reply.status} {type(reply.body).__name__}, "
                "which its route does not declare"
            )
        return json_response(reply.body, reply.status)

    view.__name__ = route.name
    return view
