"""Health routes, the OpenAPI document and the optional bearer token."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import trio
from trio_websocket import HandshakeError, open_websocket_url

from brio import __version__
from brio.api.app import ApiDeps, create_app
from tests.nodes import Node, node_config, running_node


async def test_health_has_the_guide_shape(node: Node) -> None:
    resp = await node.client.get("/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "healthy"
    assert body["node_id"] == "test-node"
    assert body["version"] == __version__
    assert body["role"] == "standalone" and body["epoch"] is None  # no lease without a mesh
    assert body["mesh"] == {
        "connected_peers": 0,
        "last_heartbeat": None,
        "primary": None,
        "lease_remaining": None,
        "voters": [],
    }
    assert body["agents"]["active"] == 0 and body["agents"]["queued"] == 0
    assert (await node.client.get("/health/live")).json() == {"status": "alive"}
    assert (await node.client.get("/health/ready")).json() == {"status": "ready"}


async def test_openapi_lists_every_route(node: Node) -> None:
    """Read off the app's own URL map, not a list kept by hand: every rule Quart serves over
    HTTP, with each of its methods, is in the document."""
    doc = (await node.client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    unused = cast(Any, None)  # building the app reads only the config
    served = create_app(ApiDeps(node.config, unused, unused, unused, unused, {}, unused, unused))
    seen = 0
    for rule in served.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        if rule.websocket:
            assert "get" in doc["paths"][path]  # its plain-HTTP twin answers 426
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            assert method.lower() in doc["paths"].get(path, {}), (method, path)
            seen += 1
    assert seen == sum(len(ops) for ops in doc["paths"].values()) >= 13
    assert doc["components"]["schemas"]["TaskCreate"]["required"] == ["agent", "prompt"]


async def test_bearer_token_guards_api_and_ws_but_not_liveness(tmp_path: Path) -> None:
    config = node_config(tmp_path, server={"auth_token": "s3cret"})
    async with running_node(config) as node:
        async with httpx.AsyncClient(base_url=node.url) as anon:
            assert (await anon.get("/health/live")).status_code == 200
            resp = await anon.get("/api/tasks")
            assert resp.status_code == 401
            assert resp.json()["error"]["code"] == "unauthorized"
            resp = await anon.post("/api/tasks", json={"agent": "echo", "prompt": "x"})
            assert resp.status_code == 401
            wrong = await anon.get("/api/agents", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            right = await anon.get("/api/agents", headers={"Authorization": "Bearer s3cret"})
            assert right.status_code == 200

        ws_url = node.url.replace("http://", "ws://") + "/ws"
        with pytest.raises(HandshakeError):
            async with open_websocket_url(ws_url):
                pass
        with trio.fail_after(5):
            async with open_websocket_url(ws_url + "?token=s3cret") as ws:
                await ws.send_message('{"action": "subscribe", "all": true}')
                assert '"subscribed"' in str(await ws.get_message())
            async with open_websocket_url(
                ws_url, extra_headers=[(b"Authorization", b"Bearer s3cret")]
            ) as ws:
                await ws.send_message('{"action": "subscribe", "all": true}')
                assert '"subscribed"' in str(await ws.get_message())


async def test_a_failing_store_is_503_not_500(tmp_path: Path) -> None:
    async with running_node(node_config(tmp_path)) as node:
        assert node.handle.store is not None
        await node.handle.store.close()  # the database goes away under the node
        resp = await node.client.get("/api/tasks/some-id")
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "store_unavailable"
        ready = await node.client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        health = await node.client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        assert (await node.client.get("/health/live")).status_code == 200
