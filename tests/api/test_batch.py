"""``POST /api/tasks:batch`` against a real node on a loopback socket, on both backends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from brio.api.models import MAX_BATCH
from tests.nodes import Node, node_config, running_node

BATCH = "/api/tasks:batch"


@pytest.fixture
async def node(tmp_path: Path, store_url: str) -> AsyncIterator[Node]:
    async with running_node(node_config(tmp_path, database={"url": store_url})) as n:
        yield n


async def batch(node: Node, tasks: list[Any]) -> dict[str, Any]:
    resp = await node.client.post(BATCH, json={"tasks": tasks})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def task_ids(node: Node) -> list[str]:
    page = (await node.client.get("/api/tasks", params={"limit": 500})).json()
    return [t["id"] for t in page["tasks"]]


async def test_a_batch_is_committed_in_order_and_every_task_succeeds(node: Node) -> None:
    out = await batch(node, [{"agent": "echo", "prompt": f"p{i}"} for i in range(50)])
    assert (out["accepted"], out["existing"], out["failed"]) == (50, 0, 0)
    assert [r["outcome"] for r in out["results"]] == ["accepted"] * 50
    assert {r["status"] for r in out["results"]} == {202}
    tasks = [r["task"] for r in out["results"]]
    assert [t["prompt"] for t in tasks] == [f"p{i}" for i in range(50)]
    assert {t["status"] for t in tasks} == {"queued"}
    assert sorted(await task_ids(node)) == sorted(t["id"] for t in tasks)
    for t in tasks:
        done = await node.wait_for(t["id"])
        assert (done["status"], done["result"]) == ("succeeded", t["prompt"])
    # in submission order: listed newest first
    assert await task_ids(node) == [t["id"] for t in reversed(tasks)]


async def test_each_item_has_its_own_error_and_the_others_are_submitted(node: Node) -> None:
    session = (await node.client.post("/api/sessions", json={"title": "s"})).json()
    out = await batch(
        node,
        [
            {"agent": "echo", "prompt": "ok", "session_id": session["id"]},
            {"agent": "nope", "prompt": "x"},
            {"agent": "echo", "prompt": "x", "session_id": "no-such-session"},
            {"agent": "echo", "prompt": "x", "input": [1, 2]},
            {"agent": "echo", "prompt": "x", "colour": "red"},
            {"prompt": "x"},
            {"agent": "echo", "prompt": "nul\x00"},
            {"agent": "echo", "prompt": "x", "input": {"n": 10**400}},
            {"agent": "a/b/c", "prompt": "x"},
            {"agent": "echo", "prompt": "ok too", "priority": 5},
        ],
    )
    results = out["results"]
    assert (out["accepted"], out["existing"], out["failed"]) == (2, 0, 8)
    assert [r["status"] for r in results] == [202, 404, 404, 422, 422, 422, 422, 422, 404, 202]
    assert all(r["task"] is None for r in results[1:-1])
    assert all(r["error"] is None for r in (results[0], results[-1]))
    errors = [r["error"] for r in results[1:-1]]
    assert errors[0]["code"] == "agent_not_found" and "echo" in errors[0]["details"]["known"]
    assert errors[1]["code"] == "session_not_found" and "no-such-session" in errors[1]["message"]
    fields = [[d["field"] for d in e["details"]] for e in errors[2:7]]
    assert fields == [
        ["tasks[3].input"],
        ["tasks[4].colour"],
        ["tasks[5].agent"],
        ["tasks[6].prompt"],
        ["tasks[7].input.n"],
    ]
    assert {e["code"] for e in errors[2:7]} == {"validation_error"}
    assert "tasks[3].input" in errors[2]["message"]
    # without a mesh, a target with "/" is an agent name no node runs, as on POST /api/tasks
    single = await node.client.post("/api/tasks", json={"agent": "a/b/c", "prompt": "x"})
    assert errors[7] == single.json()["error"]
    accepted = [results[0]["task"], results[-1]["task"]]
    assert accepted[0]["session_id"] == session["id"] and accepted[1]["priority"] == 5
    assert sorted(await task_ids(node)) == sorted(t["id"] for t in accepted)


async def test_idempotent_replays_within_and_across_batches(node: Node) -> None:
    first = await batch(
        node,
        [
            {"agent": "echo", "prompt": "a", "idempotency_key": "k-a"},
            {"agent": "echo", "prompt": "a", "idempotency_key": "k-a"},  # the same, again
            {"agent": "echo", "prompt": "other", "idempotency_key": "k-a"},  # conflicts
            {"agent": "echo", "prompt": "b", "idempotency_key": "k-b"},
        ],
    )
    r = first["results"]
    assert [x["outcome"] for x in r] == ["accepted", "existing", "error", "accepted"]
    assert [x["status"] for x in r] == [202, 200, 409, 202]
    a_id = r[0]["task"]["id"]
    assert r[1]["task"]["id"] == a_id
    assert r[2]["error"]["code"] == "idempotency_conflict"
    assert r[2]["error"]["details"] == {"task_id": a_id, "fields": ["prompt"]}

    single = (
        await node.client.post(
            "/api/tasks", json={"agent": "echo", "prompt": "c", "idempotency_key": "k-c"}
        )
    ).json()
    second = await batch(
        node,
        [
            {"agent": "echo", "prompt": "b", "idempotency_key": "k-b"},
            {"agent": "echo", "prompt": "c", "idempotency_key": "k-c"},
            {"agent": "echo", "prompt": "a", "idempotency_key": "k-a", "priority": 3},
            {"agent": "echo", "prompt": "d", "idempotency_key": "k-d"},
        ],
    )
    r2 = second["results"]
    assert (second["accepted"], second["existing"], second["failed"]) == (1, 2, 1)
    assert [x["outcome"] for x in r2] == ["existing", "existing", "error", "accepted"]
    assert r2[0]["task"]["id"] == r[3]["task"]["id"] and r2[1]["task"]["id"] == single["id"]
    assert r2[2]["error"]["details"] == {"task_id": a_id, "fields": ["priority"]}
    # and the single endpoint sees the batch's keys
    again = await node.client.post(
        "/api/tasks", json={"agent": "echo", "prompt": "d", "idempotency_key": "k-d"}
    )
    assert again.status_code == 200 and again.json()["id"] == r2[3]["task"]["id"]
    assert len(await task_ids(node)) == 4  # a, b, c, d


async def test_the_whole_request_is_refused_for_a_bad_envelope(node: Node) -> None:
    cases: list[tuple[Any, str, str | None]] = [
        ({"tasks": []}, "validation_error", "tasks"),
        (
            {"tasks": [{"agent": "echo", "prompt": "x"}] * (MAX_BATCH + 1)},
            "validation_error",
            "tasks",
        ),
        ({"tasks": ["echo"]}, "validation_error", "tasks.0"),
        ({"tasks": {"agent": "echo"}}, "validation_error", "tasks"),
        ({}, "validation_error", "tasks"),
        ({"tasks": [], "extra": 1}, "validation_error", "extra"),
        ([{"agent": "echo", "prompt": "x"}], "invalid_body", None),
    ]
    for body, code, field in cases:
        resp = await node.client.post(BATCH, json=body)
        assert resp.status_code == 422, (body, resp.text)
        err = resp.json()["error"]
        assert err["code"] == code
        if field is not None:
            assert field in [d["field"] for d in err["details"]], err
    resp = await node.client.post(BATCH, content=b"{nope", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 415
    big = "x" * node.config.server.max_body_bytes
    resp = await node.client.post(BATCH, json={"tasks": [{"agent": "echo", "prompt": big}]})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_large"
    resp = await node.client.post(
        BATCH, json={"tasks": [{"agent": "echo", "prompt": "x"}]}, headers={"Origin": "http://evil"}
    )
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "origin_not_allowed"
    assert await task_ids(node) == []


async def test_the_limit_is_accepted_whole(node: Node) -> None:
    out = await batch(node, [{"agent": "echo", "prompt": str(i)} for i in range(MAX_BATCH)])
    assert out["accepted"] == MAX_BATCH
    assert len({r["task"]["id"] for r in out["results"]}) == MAX_BATCH


async def test_the_token_is_needed(tmp_path: Path) -> None:
    config = node_config(tmp_path, server={"auth_token": "t0ken"})
    async with running_node(config) as node:
        body = {"tasks": [{"agent": "echo", "prompt": "x"}]}
        resp = await node.client.post(BATCH, json=body)
        assert resp.status_code == 401
        resp = await node.client.post(BATCH, json=body, headers={"Authorization": "Bearer t0ken"})
        assert resp.status_code == 200 and resp.json()["accepted"] == 1


async def test_an_accepted_batch_survives_a_restart(tmp_path: Path, store_url: str) -> None:
    config = node_config(
        tmp_path,
        database={"url": store_url},
        mesh={"max_agents": 1},
        server={"shutdown_grace": 0.2},
    )
    async with running_node(config) as node:
        out = await batch(
            node,
            [{"agent": "sleep", "prompt": "", "input": {"ms": 60_000}}]
            + [{"agent": "echo", "prompt": f"e{i}", "idempotency_key": f"k{i}"} for i in range(20)],
        )
        ids = [r["task"]["id"] for r in out["results"]]
        await node.wait_for(ids[0], ("running",))
    async with running_node(config) as node:
        assert sorted(await task_ids(node)) == sorted(ids)
        assert (await node.client.post(f"/api/tasks/{ids[0]}/cancel")).status_code == 200
        for i, task_id in enumerate(ids[1:]):
            done = await node.wait_for(task_id, timeout=30)
            assert (done["status"], done["result"]) == ("succeeded", f"e{i}")
        replay = await batch(node, [{"agent": "echo", "prompt": "e3", "idempotency_key": "k3"}])
        assert replay["results"][0]["task"]["id"] == ids[4]


async def test_subscribers_see_each_task_created(node: Node) -> None:
    ws_url = node.url.replace("http://", "ws://") + "/ws"
    async with open_websocket_url(ws_url) as ws:
        await ws.send_message(json.dumps({"action": "subscribe", "all": True}))
        while json.loads(await ws.get_message())["type"] != "subscribed":
            pass
        out = await batch(node, [{"agent": "echo", "prompt": f"w{i}"} for i in range(5)])
        ids = {r["task"]["id"] for r in out["results"]}
        created: set[str] = set()
        completed: set[str] = set()
        with trio.fail_after(15):
            while completed != ids:
                event = json.loads(await ws.get_message())
                if event["type"] == "task_created":
                    created.add(event["task_id"])
                elif event["type"] == "task_completed":
                    assert event["task_id"] in created  # created came first
                    completed.add(event["task_id"])
        assert created == ids


async def test_the_document_states_the_batch_and_its_limits(tmp_path: Path) -> None:
    async with running_node(node_config(tmp_path)) as node:
        doc = (await node.client.get("/openapi.json")).json()
    op = doc["paths"]["/api/tasks:batch"]["post"]
    body = doc["components"]["schemas"]["TaskBatch"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("TaskBatch")
    tasks = body["properties"]["tasks"]
    assert (tasks["minItems"], tasks["maxItems"], tasks["items"]["type"]) == (
        1,
        MAX_BATCH,
        "object",
    )
    assert body["required"] == ["tasks"] and body["additionalProperties"] is False
    assert {"200", "403", "413", "415", "422", "503"} <= set(op["responses"])
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("BatchResult")
