"""The schema is the code: limits the document states are the ones enforced, each finding of the
fuzzer (issue 9 item 4, issue 11 item 6) is a precise 422 naming the field, and a reply the
route does not declare cannot leave as such."""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from quart import Response
from quart_trio import QuartTrio

from brio.agents.builtin import MAX_SLEEP_MS
from brio.api import models
from brio.api.errors import ApiError
from brio.api.routing import Reply, Router, install, json_response
from brio.store._common import encode_cursor
from tests.nodes import Node, node_config

CURSOR = re.compile(models.CURSOR_PATTERN)


@given(st.integers(min_value=1, max_value=10**18 - 1))
def test_the_cursor_pattern_matches_every_cursor_the_store_hands_out(seq: int) -> None:
    assert CURSOR.fullmatch(encode_cursor(seq))


@pytest.mark.parametrize("seq", ["0", "007", str(10**18), "9223372036854775808", "", "-1", "1 "])
def test_the_cursor_pattern_refuses_what_the_store_never_hands_out(seq: str) -> None:
    raw = base64.urlsafe_b64encode(f"brio-task-seq:{seq}".encode()).decode().rstrip("=")
    assert not CURSOR.fullmatch(raw)


def _field(resp: Any) -> str:
    details = resp.json()["error"]["details"]
    return str(details["field"] if isinstance(details, dict) else details[0]["field"])


async def test_huge_offsets_and_cursors_are_422_naming_the_field(node: Node) -> None:
    resp = await node.client.get("/api/sessions", params={"offset": "9" * 34})
    assert resp.status_code == 422 and _field(resp) == "offset"
    resp = await node.client.get("/api/sessions", params={"offset": str(models.MAX_OFFSET)})
    assert resp.status_code == 200 and resp.json() == {"sessions": []}
    for raw in ("brio-task-seq:9223372036854775808", "brio-task-seq:0", ""):
        cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        resp = await node.client.get("/api/tasks", params={"cursor": cursor})
        assert resp.status_code == 422, raw
        assert resp.json()["error"]["code"] == "invalid_cursor" and _field(resp) == "cursor"


async def test_values_the_store_cannot_hold_are_422_naming_the_field(node: Node) -> None:
    headers = {"Content-Type": "application/json"}
    for body, field in [
        (b'{"agent": "echo", "prompt": "", "input": {"a": 1e400}}', "input.a"),
        (b'{"agent": "echo", "prompt": "", "input": {"a": [-1e999]}}', "input.a[0]"),
        (b'{"agent": "echo", "prompt": "", "input": {"a": 1' + b"0" * 400 + b"}}", "input.a"),
        (b'{"agent": "echo", "prompt": "", "input": {"s": "\\ud800"}}', "input.s"),
        (b'{"agent": "echo", "prompt": "\\udfff"}', "prompt"),
        (b'{"metadata": {"k\\ud800": 1}}', "metadata.'k\\ud800'"),
    ]:
        path = "/api/sessions" if b"metadata" in body else "/api/tasks"
        resp = await node.client.post(path, content=body, headers=headers)
        assert resp.status_code == 422, body
        assert resp.json()["error"]["code"] == "validation_error"
        assert _field(resp) == field, body
    assert (await node.client.get("/api/tasks")).json()["tasks"] == []


async def test_integers_are_json_integers(node: Node) -> None:
    ok = await node.client.post("/api/tasks", json={"agent": "echo", "prompt": "", "priority": 5.0})
    assert ok.status_code == 202 and ok.json()["priority"] == 5
    for bad in (True, "5", 5.5):
        resp = await node.client.post(
            "/api/tasks", json={"agent": "echo", "prompt": "", "priority": bad}
        )
        assert resp.status_code == 422 and _field(resp) == "priority", bad


async def test_a_wrong_method_gets_405_with_allow(node: Node) -> None:
    resp = await node.client.request("TRACE", "/api/tasks")
    assert resp.status_code == 405
    assert resp.headers["Allow"] == "GET, HEAD, OPTIONS, POST"
    assert resp.json()["error"]["code"] == "method_not_allowed"


async def test_plain_http_to_the_websocket_is_426(node: Node) -> None:
    resp = await node.client.get("/ws")
    assert resp.status_code == 426 and resp.json()["error"]["code"] == "upgrade_required"


async def test_the_document_states_the_limits(node: Node) -> None:
    doc = (await node.client.get("/openapi.json")).json()
    sessions = doc["paths"]["/api/sessions"]["get"]
    offset = next(p for p in sessions["parameters"] if p["name"] == "offset")
    assert offset["schema"]["maximum"] == models.MAX_OFFSET
    assert set(sessions["responses"]) == {"200", "422", "500", "503"}  # no token on this node
    tasks = doc["paths"]["/api/tasks"]["get"]["parameters"]
    cursor = next(p for p in tasks if p["name"] == "cursor")
    assert cursor["schema"]["pattern"] == models.CURSOR_PATTERN
    create = doc["components"]["schemas"]["TaskCreate"]["properties"]
    assert create["prompt"]["pattern"] == models.NO_NUL
    assert create["input"]["propertyNames"] == {"pattern": models.NO_NUL}


async def test_a_sleep_cannot_hold_a_slot_for_ever(node: Node) -> None:
    task = await node.submit(agent="sleep", prompt="", input={"ms": 1e308})
    done = await node.wait_for(task["id"])
    assert done["status"] == "failed" and "input.ms" in done["error"]
    assert str(MAX_SLEEP_MS) in done["error"]


async def test_a_reply_the_route_does_not_declare_becomes_a_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    router = Router()

    @router.get("/rogue", summary="replies what it never declared", responses={}, store=False)
    async def rogue(deps: Any) -> Reply:
        return Reply(418, models.Alive())

    @router.get("/teapot", summary="raises what it never declared", responses={}, store=False)
    async def teapot(deps: Any) -> Reply:
        raise ApiError(418, "teapot", "short and stout")

    app = QuartTrio("test")

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        return json_response(exc.body(), exc.status)

    install(app, router.routes, SimpleNamespace(config=node_config(tmp_path)))
    client = app.test_client()
    with caplog.at_level(logging.ERROR):
        assert (await client.get("/rogue")).status_code == 500
        teapot_resp = await client.get("/teapot")
    assert teapot_resp.status_code == 500
    assert (await teapot_resp.get_json())["error"]["code"] == "internal"
    assert "answered 418, which its route does not document" in caplog.text
