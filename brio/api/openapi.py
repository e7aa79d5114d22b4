"""``/openapi.json``: an OpenAPI 3.1 description built from the API's pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from brio.api import models

_REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json_response(description: str, model: type[BaseModel]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _error(description: str) -> dict[str, Any]:
    return _json_response(description, models.ErrorBody)


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF)
    return [
        {"name": name, "in": "query", "required": False, "schema": prop}
        for name, prop in schema["properties"].items()
    ]


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


_AUTH_ERRORS = {"401": _error("Missing or wrong bearer token (when server.auth_token is set)")}


def openapi_document(version: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in (
        models.TaskCreate,
        models.TaskOut,
        models.TaskList,
        models.SessionCreate,
        models.SessionOut,
        models.SessionList,
        models.MessageOut,
        models.MessageList,
        models.AgentOut,
        models.AgentList,
        models.Health,
        models.ErrorBody,
        models.WsSubscribe,
    ):
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema

    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "Node health in the deployment guide's shape",
                "responses": {
                    "200": _json_response("Healthy", models.Health),
                    "503": _json_response("Unhealthy (the store does not answer)", models.Health),
                },
            }
        },
        "/health/live": {
            "get": {
                "summary": "Liveness; never needs a token",
                "responses": {"200": {"description": "Alive"}},
            }
        },
        "/health/ready": {
            "get": {
                "summary": "Readiness: the store answers",
                "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}},
            }
        },
        "/api/tasks": {
            "post": {
                "summary": "Submit a task (committed before the answer)",
                "requestBody": _body(models.TaskCreate),
                "responses": {
                    "202": _json_response("Accepted: a new task", models.TaskOut),
                    "200": _json_response(
                        "The task already made with this idempotency key", models.TaskOut
                    ),
                    "403": _error("Served by coordinators only (coordinator_only_endpoints)"),
                    "404": _error("Unknown agent, session, or node in a node-id/agent target"),
                    "409": _error("Idempotency key reused with a different request"),
                    "413": _error("Body too large"),
                    "422": _error("Invalid body or target"),
                    "503": _error("The target node is failed or removed, or the node stops"),
                    **_AUTH_ERRORS,
                },
            },
            "get": {
                "summary": "List tasks, newest first",
                "parameters": _query_params(models.TaskListQuery),
                "responses": {
                    "200": _json_response("A page of tasks", models.TaskList),
                    "422": _error("Invalid query"),
                    **_AUTH_ERRORS,
                },
            },
        },
        "/api/tasks/{task_id}": {
            "get": {
                "summary": "One task",
                "parameters": [_path_param("task_id")],
                "responses": {
                    "200": _json_response("The task", models.TaskOut),
                    "404": _error("Unknown task"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/api/tasks/{task_id}/cancel": {
            "post": {
                "summary": "Cancel a queued or running task",
                "parameters": [_path_param("task_id")],
                "responses": {
                    "200": _json_response("Cancelled", models.TaskOut),
                    "404": _error("Unknown task"),
                    "409": _error("Already finished"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/api/sessions": {
            "post": {
                "summary": "Create a session (conversation)",
                "requestBody": {**_body(models.SessionCreate), "required": False},
                "responses": {
                    "201": _json_response("Created", models.SessionOut),
                    "422": _error("Invalid body"),
                    **_AUTH_ERRORS,
                },
            },
            "get": {
                "summary": "List sessions, newest first",
                "parameters": _query_params(models.SessionListQuery),
                "responses": {
                    "200": _json_response("Sessions", models.SessionList),
                    **_AUTH_ERRORS,
                },
            },
        },
        "/api/sessions/{session_id}": {
            "get": {
                "summary": "One session",
                "parameters": [_path_param("session_id")],
                "responses": {
                    "200": _json_response("The session", models.SessionOut),
                    "404": _error("Unknown session"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/api/sessions/{session_id}/messages": {
            "get": {
                "summary": "The session's conversation history, oldest first",
                "parameters": [_path_param("session_id"), *_query_params(models.MessageListQuery)],
                "responses": {
                    "200": _json_response("Messages", models.MessageList),
                    "404": _error("Unknown session"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/api/agents": {
            "get": {
                "summary": "Agents this node runs",
                "responses": {"200": _json_response("Agents", models.AgentList), **_AUTH_ERRORS},
            }
        },
        "/api/agents/{name}": {
            "get": {
                "summary": "One agent",
                "parameters": [_path_param("name")],
                "responses": {
                    "200": _json_response("The agent", models.AgentOut),
                    "404": _error("Unknown agent"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/ws": {
            "get": {
                "summary": "WebSocket of task events (task_created, task_update, task_output, "
                "task_completed); send WsSubscribe messages to choose tasks, sessions or all",
                "responses": {"101": {"description": "Switching protocols"}, **_AUTH_ERRORS},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Brio node API", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }
