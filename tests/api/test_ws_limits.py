"""WebSocket amplification (issue 11, item 5): bounded ids, acknowledgements that count rather
than echo, and a byte budget per connection in each direction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

import brio.api.routes.ws
from brio.api.models import MAX_ID
from tests.api.test_websocket import subscribe, ws_url
from tests.nodes import Node, node_config, running_node


async def closed_with(ws: WebSocketConnection) -> tuple[list[dict[str, object]], int | None]:
    """The messages until the server closes, and its close code."""
    seen = []
    with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
        while True:
            seen.append(json.loads(await ws.get_message()))
    reason = closed.value.reason
    return seen, reason.code if reason else None


async def test_ids_are_bounded_like_the_http_api(node: Node) -> None:
    async with open_websocket_url(ws_url(node)) as ws:
        for field in ["tasks", "sessions"]:
            message = {"action": "subscribe", field: ["ok", "x" * (MAX_ID + 1)]}
            await ws.send_message(json.dumps(message))
            err = json.loads(await ws.get_message())
            assert err["error"]["code"] == "validation_error", err
            assert err["error"]["details"][0]["field"] == f"{field}.1"
        ack = await subscribe(ws, tasks=["x" * MAX_ID], sessions=["s"])
        assert (ack["tasks"], ack["sessions"]) == (1, 1)
    long_path = "/api/tasks/" + "x" * (MAX_ID + 1)
    assert (await node.client.get(long_path)).status_code == 422
    assert (await node.client.get("/api/tasks/" + "x" * MAX_ID)).status_code == 404


async def test_replies_acknowledge_without_echoing(node: Node) -> None:
    """The issue's reproduction: 100 messages of 50 long ids each. Echoing the subscription
    made the replies grow with it (hundreds of MB for a few MB sent); counts stay tiny."""
    sent = received = 0
    async with open_websocket_url(ws_url(node)) as ws:
        for n in range(100):
            ids = [f"{n:03d}-{i:02d}-" + "x" * (MAX_ID - 7) for i in range(50)]
            text = json.dumps({"action": "subscribe", "tasks": ids})
            await ws.send_message(text)
            reply = await ws.get_message()
            sent += len(text)
            received += len(reply)
            ack = json.loads(reply)
            assert (ack["type"], ack["all"], ack["tasks"], ack["sessions"]) == (
                "subscribed",
                False,
                50 * (n + 1),
                0,
            )
        ack = await subscribe(ws, action="unsubscribe", tasks=ids)
    assert ack["tasks"] == 4950
    assert sent > 1_000_000
    assert received < 100 * 200, (sent, received)  # under 200 bytes a reply, however many ids


async def test_a_client_over_its_receive_budget_is_closed(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(brio.api.routes.ws, "BUDGET_IN_BYTES", 100_000)
    message = json.dumps({"action": "subscribe", "tasks": ["t" * 100] * 90})  # ~9.5 KB
    sent = 0
    async with open_websocket_url(ws_url(node)) as ws:
        try:
            with trio.fail_after(10):
                while True:
                    await ws.send_message(message)
                    sent += len(message)
                    reply = json.loads(await ws.get_message())
                    if reply["type"] == "error":
                        break
        except ConnectionClosed:
            pytest.fail("closed without an error message")
        assert reply["error"]["code"] == "byte_budget"
        assert "100000 bytes received per 10 s" in reply["error"]["message"]
        assert reply["error"]["details"] == {
            "direction": "received",
            "limit_bytes": 100_000,
            "window_s": 10.0,
        }
        _, code = await closed_with(ws)
    assert code == 1008
    assert 100_000 < sent <= 100_000 + len(message)
    assert (await node.client.get("/health")).status_code == 200


async def test_the_budget_is_per_window(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(brio.api.routes.ws, "BUDGET_IN_BYTES", 30_000)
    monkeypatch.setattr(brio.api.routes.ws, "BUDGET_WINDOW", 0.5)
    half = ["t" * 100] * 95  # ~10 KB a message, two a window
    async with open_websocket_url(ws_url(node)) as ws:
        for _ in range(3):
            await subscribe(ws, tasks=half)
            await subscribe(ws, tasks=half)
            await trio.sleep(0.6)


async def test_a_watcher_over_its_send_budget_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(brio.api.routes.ws, "BUDGET_OUT_BYTES", 50_000)
    async with running_node(node_config(tmp_path)) as node:
        async with open_websocket_url(ws_url(node)) as ws:
            await subscribe(ws, all=True)
            for _ in range(10):  # each echo task's events carry its 5 KB prompt three times
                await node.submit(agent="echo", prompt="p" * 5000)
            received = 0
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
                while True:
                    text = await ws.get_message()
                    received += len(text)
                    last = json.loads(text)
            reason = closed.value.reason
            assert reason is not None and reason.code == 1008
        assert last["type"] == "error" and last["error"]["code"] == "byte_budget"
        assert "50000 bytes sent per 10 s" in last["error"]["message"]
        assert received - len(text) <= 50_000
        assert (await node.client.get("/health")).status_code == 200
