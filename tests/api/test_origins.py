"""Cross-site requests: browser origins and JSON content types (issue 11, item 4).

With no token (the default), any web page a user opens could otherwise drive a node on
localhost: a ``text/plain`` form POST needs no CORS preflight, and a WebSocket handshake is
not subject to the same-origin policy at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from tests.nodes import Node, node_config, running_node

EVIL = "http://evil.example"
TASK = {"agent": "echo", "prompt": "x"}


def ws_url(node: Node) -> str:
    return node.url.replace("http://", "ws://") + "/ws"


async def test_a_text_plain_post_from_another_origin_creates_nothing(node: Node) -> None:
    resp = await node.client.post(
        "/api/tasks",
        content=json.dumps(TASK).encode(),
        headers={"Content-Type": "text/plain", "Origin": EVIL},
    )
    assert resp.status_code == 403, resp.text
    error = resp.json()["error"]
    assert error["code"] == "origin_not_allowed"
    assert EVIL in error["message"] and "[server] allowed_origins" in error["message"]
    assert error["details"] == {"origin": EVIL, "config_key": "[server] allowed_origins"}
    assert (await node.client.get("/api/tasks")).json()["tasks"] == []


async def test_other_origins_are_refused_on_every_write(node: Node) -> None:
    task = await node.submit(**TASK)
    for method, path, body in [
        ("POST", "/api/tasks", TASK),
        ("POST", "/api/sessions", {}),
        ("POST", f"/api/tasks/{task['id']}/cancel", None),
    ]:
        for origin in [EVIL, "null", f"{node.url}.evil.example", node.url.replace("http", "https")]:
            resp = await node.client.request(method, path, json=body, headers={"Origin": origin})
            assert resp.status_code == 403, (method, path, origin, resp.text)
    # reads are not refused: without CORS headers the page cannot read the answer anyway
    resp = await node.client.get("/api/tasks", headers={"Origin": EVIL})
    assert resp.status_code == 200


async def test_same_origin_and_no_origin_may_write(node: Node) -> None:
    resp = await node.client.post("/api/tasks", json=TASK, headers={"Origin": node.url})
    assert resp.status_code == 202, resp.text
    resp = await node.client.post("/api/tasks", json=TASK)  # curl, the CLI
    assert resp.status_code == 202, resp.text


async def test_listed_origins_may_write_and_watch(tmp_path: Path) -> None:
    config = node_config(tmp_path, server={"allowed_origins": ["http://app.example:3000"]})
    async with running_node(config) as node:
        for origin in ["http://app.example:3000", "HTTP://App.Example:3000"]:
            resp = await node.client.post("/api/tasks", json=TASK, headers={"Origin": origin})
            assert resp.status_code == 202, resp.text
        for origin in ["http://app.example", "https://app.example:3000", EVIL]:
            resp = await node.client.post("/api/tasks", json=TASK, headers={"Origin": origin})
            assert resp.status_code == 403, origin
        headers = [(b"Origin", b"http://app.example:3000")]
        with trio.fail_after(5):
            async with open_websocket_url(ws_url(node), extra_headers=headers) as ws:
                await ws.send_message(json.dumps({"action": "subscribe", "all": True}))
                assert json.loads(await ws.get_message())["type"] == "subscribed"


async def test_a_json_body_needs_the_json_content_type(node: Node) -> None:
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]:
        resp = await node.client.post(
            "/api/tasks", content=json.dumps(TASK).encode(), headers={"Content-Type": content_type}
        )
        assert resp.status_code == 415, resp.text
        error = resp.json()["error"]
        assert error["code"] == "unsupported_media_type"
        assert "application/json" in error["message"] and content_type in error["message"]
        assert error["details"]["expected"] == "application/json"
    resp = await node.client.post("/api/sessions", content=b"{}")  # no Content-Type at all
    assert resp.status_code == 415
    assert "none was given" in resp.json()["error"]["message"]
    resp = await node.client.post(
        "/api/tasks",
        content=json.dumps(TASK).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert resp.status_code == 202
    assert (await node.client.post("/api/sessions")).status_code == 201  # no body, none needed
    assert (await node.client.get("/api/tasks")).json()["tasks"][0]["id"] == resp.json()["id"]


async def test_the_websocket_refuses_other_origins(node: Node) -> None:
    for origin in [EVIL, "null"]:
        headers = [(b"Origin", origin.encode())]
        with pytest.raises(ConnectionRejected) as rejected, trio.fail_after(5):
            async with open_websocket_url(ws_url(node), extra_headers=headers):
                pass
        assert rejected.value.status_code == 403
        body = json.loads(rejected.value.body or b"{}")
        assert body["error"]["code"] == "origin_not_allowed"
        assert origin in body["error"]["message"]
    # no Origin, or the node's own: streams as before
    for headers in [[], [(b"Origin", node.url.encode())]]:
        with trio.fail_after(5):
            async with open_websocket_url(ws_url(node), extra_headers=headers) as ws:
                await ws.send_message(json.dumps({"action": "subscribe", "all": True}))
                assert json.loads(await ws.get_message())["type"] == "subscribed"
    resp = await node.client.get("/ws", headers={"Origin": EVIL})
    assert resp.status_code == 403


async def test_the_document_lists_the_new_statuses(node: Node) -> None:
    paths = (await node.client.get("/openapi.json")).json()["paths"]
    assert {"403", "415"} <= set(paths["/api/tasks"]["post"]["responses"])
    assert {"403", "415"} <= set(paths["/api/sessions"]["post"]["responses"])
    assert "403" in paths["/api/tasks/{task_id}/cancel"]["post"]["responses"]
    assert "415" not in paths["/api/tasks/{task_id}/cancel"]["post"]["responses"]
    assert "403" in paths["/ws"]["get"]["responses"]
    assert "403" not in paths["/api/tasks"]["get"]["responses"]
