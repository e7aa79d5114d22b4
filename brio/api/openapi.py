"""``/openapi.json``, generated from the installed routes and their pydantic models.

Nothing here names a route or a status: the paths, parameters, bodies and responses all come
from the ``Route`` declarations (``brio.api.routing``) and ``documented``, the same ones that
register the routes and police their answers, so the document cannot leave one out.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from brio.api import models
from brio.api.routing import Route, documented
from brio.config.model import BrioConfig


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": models.REF.format(model=model.__name__)}


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template=models.REF, schema_generator=models.SchemaGenerator)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without its ``null`` branch: in a URL, absent is None."""
    branches = [b for b in schema.get("anyOf", []) if b != {"type": "null"}]
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    if "anyOf" in schema and len(branches) == 1:
        rest = {**branches[0], **rest}
    elif "anyOf" in schema:
        rest["anyOf"] = branches
    if schema.get("default") is not None:
        rest["default"] = schema["default"]
    return rest


def _parameters(model: type[BaseModel], where: str, schemas: dict[str, Any]) -> list[Any]:
    schema = model.model_json_schema(
        ref_template=models.REF, schema_generator=models.SchemaGenerator
    )
    schemas.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": _without_null(prop),
        }
        for name, prop in schema["properties"].items()
    ]


def _operation(route: Route, config: BrioConfig, schemas: dict[str, Any]) -> dict[str, Any]:
    def use(model: type[BaseModel]) -> dict[str, str]:
        if model.__name__ not in schemas:
            add_schema(model, schemas)
        return _ref(model)

    op: dict[str, Any] = {"operationId": route.name, "summary": route.summary}
    params: list[Any] = []
    if route.path_params is not None:
        params += _parameters(route.path_params, "path", schemas)
    if route.query is not None:
        params += _parameters(route.query, "query", schemas)
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": route.body_required,
            "content": {"application/json": {"schema": use(route.body)}},
        }
    responses: dict[str, Any] = {}
    for status, answer in documented(route, config).items():
        responses[str(status)] = {"description": answer.description}
        if answer.model is not None:
            responses[str(status)]["content"] = {"application/json": {"schema": use(answer.model)}}
    op["responses"] = responses
    if config.server.auth_token is not None:
        op["security"] = [{"bearer": []}] if route.auth else []
    return op


def add_schema(model: type[BaseModel], schemas: dict[str, Any]) -> None:
    schema = model.model_json_schema(
        ref_template=models.REF, schema_generator=models.SchemaGenerator
    )
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema


def openapi_document(
    routes: list[Route],
    config: BrioConfig,
    version: str,
    also: tuple[type[BaseModel], ...] = (),
) -> dict[str, Any]:
    """The document for ``routes`` on a node with ``config``; ``also``: models that no route
    answers with but clients send elsewhere (WebSocket messages)."""
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, config, schemas)
    for model in also:
        add_schema(model, schemas)
    components: dict[str, Any] = {"schemas": dict(sorted(schemas.items()))}
    if config.server.auth_token is not None:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Brio node API", "version": version},
        "paths": paths,
        "components": components,
    }
