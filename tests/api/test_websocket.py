"""WebSocket events: subscription filters, order, streamed output, limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from brio.node.root import run_node
from brio.tasks.events import EVENT_TYPES
from tests.nodes import Node, node_config, running_node


def ws_url(node: Node) -> str:
    return node.url.replace("http://", "ws://") + "/ws"


async def subscribe(ws: WebSocketConnection, **body: Any) -> dict[str, Any]:
    await ws.send_message(json.dumps({"action": "subscribe", **body}))
    ack = json.loads(await ws.get_message())
    assert ack["type"] == "subscribed", ack
    return ack  # type: ignore[no-any-return]


async def events_until_completed(ws: WebSocketConnection, task_id: str) -> list[dict[str, Any]]:
    events = []
    with trio.fail_after(15):
        while True:
            event = json.loads(await ws.get_message())
            if event.get("task_id") != task_id:
                continue
            events.append(event)
            if event["type"] == "task_completed":
                return events


async def test_all_events_of_an_echo_task_in_order(node: Node) -> None:
    async with open_websocket_url(ws_url(node)) as ws:
        await subscribe(ws, all=True)
        task = await node.submit(agent="echo", prompt="hi")
        events = await events_until_completed(ws, task["id"])
    kinds = [(e["type"], e["data"].get("status")) for e in events]
    # created as committed: queued, or assigned when the placer placed it as it came
    assert task["status"] in ("queued", "assigned")
    assert kinds == [
        ("task_created", task["status"]),
        ("task_update", "assigned"),
        ("task_update", "running"),
        ("task_output", None),
        ("task_completed", "succeeded"),
    ]
    assert events[3]["data"] == {"chunk": "hi", "index": 0}
    assert events[-1]["data"]["result"] == "hi"
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)


async def test_task_and_session_filters(node: Node) -> None:
    session = (await node.client.post("/api/sessions", json={})).json()
    async with (
        open_websocket_url(ws_url(node)) as by_session,
        open_websocket_url(ws_url(node)) as by_task,
    ):
        await subscribe(by_session, sessions=[session["id"]])
        other = await node.submit(agent="sleep", prompt="", input={"ms": 60_000})
        await node.wait_for(other["id"], ("running",))
        ack = await subscribe(by_task, tasks=[other["id"]])
        assert ack == {
            "type": "subscribed",
            "all": False,
            "tasks": 1,
            "sessions": 0,
            "types": list(EVENT_TYPES),
            "coalesce": False,
        }
        mine = await node.submit(agent="echo", prompt="mine", session_id=session["id"])
        got = await events_until_completed(by_session, mine["id"])
        assert {e["task_id"] for e in got} == {mine["id"]}  # nothing of the other task
        await node.client.post(f"/api/tasks/{other['id']}/cancel")
        # the task subscriber sees the other task's end, and nothing of the session's task
        with trio.fail_after(10):
            event = json.loads(await by_task.get_message())
        assert (event["task_id"], event["type"]) == (other["id"], "task_completed")
        assert event["data"]["status"] == "cancelled"


async def test_bad_messages_get_an_error_and_the_socket_lives(node: Node) -> None:
    async with open_websocket_url(ws_url(node)) as ws:
        await ws.send_message("not json")
        err = json.loads(await ws.get_message())
        assert err["type"] == "error" and err["error"]["code"] == "invalid_json"
        await ws.send_message(json.dumps({"action": "dance"}))
        err = json.loads(await ws.get_message())
        assert err["error"]["code"] == "validation_error"
        assert err["error"]["details"][0]["field"] == "action"
        await subscribe(ws, all=True)


async def test_oversized_message_closes_the_socket(tmp_path: Path) -> None:
    config = node_config(tmp_path, server={"max_ws_message_bytes": 1024})
    async with running_node(config) as node:
        async with open_websocket_url(ws_url(node)) as ws:
            await ws.send_message(json.dumps({"action": "subscribe", "tasks": ["x" * 1500]}))
            err = json.loads(await ws.get_message())
            assert err["error"]["code"] == "too_large"
            assert "1024 bytes" in err["error"]["message"]
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(5):
                while True:
                    await ws.get_message()
            reason = closed.value.reason
            assert reason is not None and reason.code == 1009
        # the node still serves
        assert (await node.client.get("/health")).status_code == 200


async def test_streaming_llm_task_events_arrive_in_order(tmp_path: Path) -> None:
    from tests.fakes.openai_server import open_fake_openai

    async with open_fake_openai(api_key="sk-test") as fake:
        fake.reply("Hel", "lo", ",", " wor", "ld", delay=0.02)
        config = node_config(
            tmp_path,
            agents={"assistant": {"kind": "llm", "system_prompt": "Be brief."}},
            providers={
                "fake": {
                    "base_url": fake.base_url,
                    "api_key": "sk-test",
                    "default_model": "gpt-test",
                }
            },
        )
        async with running_node(config) as node:
            session = (await node.client.post("/api/sessions", json={})).json()
            async with open_websocket_url(ws_url(node)) as ws:
                await subscribe(ws, sessions=[session["id"]])
                task = await node.submit(
                    agent="assistant", prompt="Say hello", session_id=session["id"]
                )
                events = await events_until_completed(ws, task["id"])
            msgs = (await node.client.get(f"/api/sessions/{session['id']}/messages")).json()[
                "messages"
            ]

    types = [e["type"] for e in events]
    assert types == ["task_created", "task_update", "task_update"] + ["task_output"] * 5 + [
        "task_completed"
    ]
    outputs = [e["data"] for e in events if e["type"] == "task_output"]
    assert [o["index"] for o in outputs] == [0, 1, 2, 3, 4]
    assert "".join(o["chunk"] for o in outputs) == "Hello, world"
    assert events[-1]["data"]["status"] == "succeeded"
    assert events[-1]["data"]["result"] == "Hello, world"
    sent = fake.requests[-1].json
    assert sent is not None and sent["model"] == "gpt-test" and sent["stream"] is True
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"},
    ]
    assert [(m["role"], m["content"]) for m in msgs] == [
        ("user", "Say hello"),
        ("assistant", "Hello, world"),
    ]


async def test_shutdown_sends_the_last_events_then_closes_watchers(tmp_path: Path) -> None:
    config = node_config(tmp_path, server={"shutdown_grace": 0.5, "port": 0})
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(run_node, config, shutdown)
        url = handle.http_urls[0]
        async with httpx.AsyncClient(base_url=url) as client:
            resp = await client.post(
                "/api/tasks", json={"agent": "sleep", "prompt": "", "input": {"ms": 60_000}}
            )
            task_id = resp.json()["id"]
            async with open_websocket_url(url.replace("http://", "ws://") + "/ws") as ws:
                await subscribe(ws, tasks=[task_id])
                with trio.fail_after(10):
                    while (await client.get(f"/api/tasks/{task_id}")).json()["status"] != "running":
                        await trio.sleep(0.02)
                started = trio.current_time()
                shutdown.set()
                seen = []
                with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
                    while True:
                        seen.append(json.loads(await ws.get_message()))
    assert trio.current_time() - started < 5  # not hypercorn's full graceful timeout
    reason = closed.value.reason
    assert reason is not None and reason.code == 1001
    requeued = [e for e in seen if e["type"] == "task_update"]
    assert requeued and requeued[-1]["data"]["status"] == "queued"
    assert requeued[-1]["data"]["attempt"] == 2


async def test_subscriptions_are_capped_per_connection(node: Node) -> None:
    from brio.api.app import MAX_SUBSCRIBED_IDS

    async with open_websocket_url(ws_url(node)) as ws:
        for start in range(0, MAX_SUBSCRIBED_IDS, 1000):
            await subscribe(ws, tasks=[f"t{i}" for i in range(start, start + 1000)])
        await ws.send_message(json.dumps({"action": "subscribe", "sessions": ["one-more"]}))
        err = json.loads(await ws.get_message())
        assert err["error"]["code"] == "too_many_ids"
        ack = await subscribe(ws, tasks=["t0"])  # nothing new: still fine
        assert ack["tasks"] == MAX_SUBSCRIBED_IDS and ack["sessions"] == 0
