"""The task, session and agent routes against a real node on a loopback socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.nodes import Node, node_config, running_node


async def test_echo_task_is_committed_then_succeeds(node: Node) -> None:
    task = await node.submit(agent="echo", prompt="hello")
    assert task["status"] in ("queued", "assigned")  # assigned: placed as it came
    assert task["node_id"] == (None if task["status"] == "queued" else "test-node")
    assert task["attempt"] == 1
    stored = await node.handle.store.get_task(task["id"])  # type: ignore[union-attr]
    assert stored is not None  # committed before the answer
    done = await node.wait_for(task["id"])
    assert done["status"] == "succeeded"
    assert done["result"] == "hello"
    assert done["node_id"] == "test-node"
    assert done["started_at"] and done["finished_at"]


async def test_idempotency_key_returns_the_same_task(node: Node) -> None:
    first = await node.submit(agent="echo", prompt="once", idempotency_key="k-1")
    again = await node.client.post(
        "/api/tasks", json={"agent": "echo", "prompt": "once", "idempotency_key": "k-1"}
    )
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    page = (await node.client.get("/api/tasks")).json()
    assert [t["id"] for t in page["tasks"]] == [first["id"]]

    other = await node.client.post(
        "/api/tasks", json={"agent": "sleep", "prompt": "twice", "idempotency_key": "k-1"}
    )
    assert other.status_code == 409
    err = other.json()["error"]
    assert err["code"] == "idempotency_conflict"
    assert err["details"] == {"task_id": first["id"], "fields": ["agent", "prompt"]}


async def test_unknown_agent_is_404_naming_the_known_ones(node: Node) -> None:
    resp = await node.client.post("/api/tasks", json={"agent": "nope", "prompt": "x"})
    assert resp.status_code == 404
    err = resp.json()["error"]
    assert err["code"] == "agent_not_found"
    assert "'nope'" in err["message"] and "echo" in err["message"]
    assert "echo" in err["details"]["known"]


async def test_bad_bodies_are_422_naming_the_field(node: Node) -> None:
    resp = await node.client.post("/api/tasks", json={"prompt": "x"})
    assert resp.status_code == 422
    err = resp.json()["error"]
    assert err["code"] == "validation_error"
    assert err["details"][0]["field"] == "agent"
    assert "agent" in err["message"]

    resp = await node.client.post("/api/tasks", json={"agent": "echo", "prompt": 5})
    assert resp.status_code == 422
    assert resp.json()["error"]["details"][0]["field"] == "prompt"

    resp = await node.client.post(
        "/api/tasks", json={"agent": "echo", "prompt": "x", "colour": "red"}
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["details"][0]["field"] == "colour"

    resp = await node.client.post(
        "/api/tasks", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "invalid_json"

    resp = await node.client.post("/api/tasks", json=["agent", "echo"])
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "invalid_body"
    # nothing was accepted along the way
    assert (await node.client.get("/api/tasks")).json()["tasks"] == []


async def test_too_large_body_is_413(node: Node) -> None:
    big = "x" * (node.config.server.max_body_bytes + 10)
    resp = await node.client.post("/api/tasks", json={"agent": "echo", "prompt": big})
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "too_large"


async def test_unknown_routes_and_methods_answer_json(node: Node) -> None:
    resp = await node.client.get("/api/nothing-here")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
    resp = await node.client.delete("/api/tasks")
    assert resp.status_code == 405
    assert resp.json()["error"]["code"] == "method_not_allowed"


async def test_get_and_list_with_filters_and_cursor(node: Node) -> None:
    ids = []
    for i in range(5):
        ids.append((await node.submit(agent="echo", prompt=f"p{i}"))["id"])
        await node.wait_for(ids[-1])
    slow = await node.submit(agent="sleep", prompt="", input={"ms": 20})
    await node.wait_for(slow["id"])

    resp = await node.client.get(f"/api/tasks/{ids[0]}")
    assert resp.status_code == 200 and resp.json()["prompt"] == "p0"
    resp = await node.client.get("/api/tasks/does-not-exist")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "task_not_found"

    seen: list[str] = []
    cursor = None
    while True:
        params = {"agent": "echo", "limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = (await node.client.get("/api/tasks", params=params)).json()
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, every echo task exactly once

    page = (await node.client.get("/api/tasks", params={"status": "succeeded"})).json()
    assert len(page["tasks"]) == 6
    page = (await node.client.get("/api/tasks", params={"agent": "sleep"})).json()
    assert [t["id"] for t in page["tasks"]] == [slow["id"]]

    resp = await node.client.get("/api/tasks", params={"status": "sleeping"})
    assert resp.status_code == 422
    assert resp.json()["error"]["details"][0]["field"] == "status"
    resp = await node.client.get("/api/tasks", params={"limit": "0"})
    assert resp.status_code == 422
    resp = await node.client.get("/api/tasks", params={"cursor": "garbage!"})
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "invalid_cursor"


async def test_cancel_running_and_finished_tasks(node: Node) -> None:
    task = await node.submit(agent="sleep", prompt="", input={"ms": 60_000})
    await node.wait_for(task["id"], ("running",))
    resp = await node.client.post(f"/api/tasks/{task['id']}/cancel")
    assert resp.status_code == 200
    assert resp.json()["status"] == "cancelled"
    await trio.sleep(0.1)
    final = await node.wait_for(task["id"])
    assert final["status"] == "cancelled"
    health = (await node.client.get("/health")).json()
    assert health["agents"]["active"] == 0  # the agent really stopped

    resp = await node.client.post(f"/api/tasks/{task['id']}/cancel")
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "task_finished"
    resp = await node.client.post("/api/tasks/nope/cancel")
    assert resp.status_code == 404


async def test_failures_and_timeouts_mark_the_task_failed_and_the_node_lives(node: Node) -> None:
    boom = await node.submit(agent="boom", prompt="")
    slow = await node.submit(agent="slow", prompt="")
    weird = await node.submit(agent="weird", prompt="")
    bad_input = await node.submit(agent="sleep", prompt="", input={"ms": "soon"})
    exits = await node.submit(agent="exits", prompt="")
    assert (await node.wait_for(boom["id"]))["error"] == "RuntimeError: kaboom"
    slow_done = await node.wait_for(slow["id"])
    assert slow_done["status"] == "failed"
    assert slow_done["error"] == "timed out after 0.3s"
    weird_done = await node.wait_for(weird["id"])
    assert weird_done["status"] == "failed" and "JSON" in weird_done["error"]
    bad_done = await node.wait_for(bad_input["id"])
    assert bad_done["status"] == "failed" and "input.ms" in bad_done["error"]
    assert (await node.wait_for(exits["id"]))["error"] == "SystemExit: 3"
    ok = await node.submit(agent="echo", prompt="still here")
    assert (await node.wait_for(ok["id"]))["result"] == "still here"


async def test_max_agents_caps_concurrency_and_the_rest_wait_queued(tmp_path: Path) -> None:
    config = node_config(tmp_path, mesh={"max_agents": 2})
    async with running_node(config) as node:
        ids = [
            (await node.submit(agent="sleep", prompt="", input={"ms": 400}))["id"] for _ in range(4)
        ]
        with trio.fail_after(10):
            while (await node.client.get("/health")).json()["agents"]["active"] < 2:
                await trio.sleep(0.01)
        health = (await node.client.get("/health")).json()
        assert health["agents"] == {"active": 2, "queued": 2, "max": 2}
        statuses = [(await node.client.get(f"/api/tasks/{i}")).json()["status"] for i in ids]
        assert statuses.count("queued") == 2
        for i in ids:
            assert (await node.wait_for(i))["status"] == "succeeded"


async def test_cancel_a_queued_task(tmp_path: Path) -> None:
    config = node_config(tmp_path, mesh={"max_agents": 1})
    async with running_node(config) as node:
        blocker = await node.submit(agent="sleep", prompt="", input={"ms": 60_000})
        await node.wait_for(blocker["id"], ("running",))
        waiting = await node.submit(agent="echo", prompt="later")
        resp = await node.client.post(f"/api/tasks/{waiting['id']}/cancel")
        assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
        await node.client.post(f"/api/tasks/{blocker['id']}/cancel")
        await node.wait_for(blocker["id"])
        await trio.sleep(0.2)  # a free slot: the cancelled task must not run
        assert (await node.client.get(f"/api/tasks/{waiting['id']}")).json()["result"] is None


async def test_sessions_record_history_in_order(node: Node) -> None:
    resp = await node.client.post("/api/sessions", json={"title": "chat", "metadata": {"a": 1}})
    assert resp.status_code == 201
    session = resp.json()
    assert session["title"] == "chat" and session["metadata"] == {"a": 1}
    assert (await node.client.get(f"/api/sessions/{session['id']}")).json() == session
    empty = await node.client.post("/api/sessions")
    assert empty.status_code == 201

    first = await node.submit(agent="echo", prompt="one", session_id=session["id"])
    await node.wait_for(first["id"])
    second = await node.submit(agent="hist", prompt="two", session_id=session["id"])
    done = await node.wait_for(second["id"])
    assert done["result"] == ["user:one", "assistant:one"]  # the agent saw the history

    msgs = (await node.client.get(f"/api/sessions/{session['id']}/messages")).json()["messages"]
    assert [(m["role"], m["content"]) for m in msgs] == [
        ("user", "one"),
        ("assistant", "one"),
        ("user", "two"),
        ("assistant", '["user:one", "assistant:one"]'),
    ]
    assert [m["task_id"] for m in msgs] == [first["id"]] * 2 + [second["id"]] * 2
    last = (
        await node.client.get(f"/api/sessions/{session['id']}/messages", params={"limit": 1})
    ).json()["messages"]
    assert [m["role"] for m in last] == ["assistant"]

    listed = (await node.client.get("/api/sessions")).json()["sessions"]
    assert {s["id"] for s in listed} == {session["id"], empty.json()["id"]}

    resp = await node.client.post(
        "/api/tasks", json={"agent": "echo", "prompt": "x", "session_id": "missing"}
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "session_not_found"
    resp = await node.client.get("/api/sessions/missing/messages")
    assert resp.status_code == 404
    resp = await node.client.get("/api/sessions/missing")
    assert resp.status_code == 404
    resp = await node.client.post("/api/sessions", json={"title": 7})
    assert resp.status_code == 422 and resp.json()["error"]["details"][0]["field"] == "title"


async def test_agents_routes(node: Node) -> None:
    agents = (await node.client.get("/api/agents")).json()["agents"]
    by_name = {a["name"]: a for a in agents}
    assert {"echo", "sleep", "hist", "boom", "slow"} <= set(by_name)
    assert by_name["slow"]["timeout"] == 0.3
    assert by_name["hist"]["kind"] == "entrypoint"
    assert by_name["hist"]["description"] == "Return the session history it was given."
    assert (await node.client.get("/api/agents/echo")).json()["name"] == "echo"
    resp = await node.client.get("/api/agents/nope")
    assert resp.status_code == 404 and "echo" in resp.json()["error"]["details"]["known"]


async def test_json_the_store_cannot_hold_is_refused_precisely(node: Node) -> None:
    headers = {"Content-Type": "application/json"}
    resp = await node.client.post(
        "/api/tasks",
        content=b'{"agent": "echo", "prompt": "x", "input": {"v": NaN}}',
        headers=headers,
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "invalid_json"
    assert "NaN is not valid JSON" in resp.json()["error"]["message"]

    deep = b'{"agent": "echo", "prompt": "x", "input": {"v": ' + b"[" * 100_000 + b"]" * 100_000
    resp = await node.client.post("/api/tasks", content=deep + b"}}", headers=headers)
    assert resp.status_code == 422
    assert resp.json()["error"]["message"] == "the request body is nested too deeply"

    resp = await node.client.post(
        "/api/tasks", json={"agent": "echo", "prompt": "a\x00b", "input": {"k": ["ok", "\x00"]}}
    )
    assert resp.status_code == 422
    err = resp.json()["error"]
    assert err["details"][0]["field"] == "prompt"
    resp = await node.client.post(
        "/api/tasks", json={"agent": "echo", "prompt": "x", "input": {"k": ["ok", "\x00"]}}
    )
    assert resp.json()["error"]["details"][0]["field"] == "input.k[1]"

    resp = await node.client.get("/api/tasks/a%00b")
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_request"
    resp = await node.client.get("/api/tasks", params={"agent": "a\x00"})
    assert resp.status_code == 422
    assert (await node.client.get("/api/tasks")).json()["tasks"] == []


async def test_submit_checks_the_session_in_create_task_alone(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No get_session before create_task: the store refuses an unknown session itself, and
    the answer is the same 404."""
    store = node.handle.store
    assert store is not None
    session = (await node.client.post("/api/sessions")).json()
    reads: list[str] = []
    get_session = store.get_session

    async def counted(session_id: str) -> Any:
        reads.append(session_id)
        return await get_session(session_id)

    monkeypatch.setattr(store, "get_session", counted)
    task = await node.submit(agent="echo", prompt="x", session_id=session["id"])
    assert task["session_id"] == session["id"]
    resp = await node.client.post(
        "/api/tasks", json={"agent": "echo", "prompt": "x", "session_id": "missing"}
    )
    assert resp.status_code == 404
    assert resp.json() == {
        "error": {
            "code": "session_not_found",
            "message": "unknown session 'missing'",
            "details": None,
        }
    }
    assert reads == []
    # a used key replayed with an unknown session is still 404, as documented (the session
    # is checked first), and with another known session 409: only these replays read it
    first = await node.submit(agent="echo", prompt="x", idempotency_key="k")
    replay = {"agent": "echo", "prompt": "x", "idempotency_key": "k"}
    resp = await node.client.post("/api/tasks", json={**replay, "session_id": "missing"})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "session_not_found"
    resp = await node.client.post("/api/tasks", json={**replay, "session_id": session["id"]})
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "idempotency_conflict"
    assert resp.json()["error"]["details"] == {"task_id": first["id"], "fields": ["session_id"]}
    assert reads == ["missing", session["id"]]
