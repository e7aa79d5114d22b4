"""The same node, API and supervisor on a real PostgreSQL instead of SQLite."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import trio

from brio import aio
from brio.store import open_store
from tests.nodes import node_config, running_node

pytestmark = pytest.mark.postgres


async def test_tasks_sessions_and_cancel_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    config = node_config(tmp_path, database={"url": postgres_url}, mesh={"max_agents": 2})
    async with running_node(config) as node:
        health = (await node.client.get("/health/ready")).json()
        assert health == {"status": "ready"}
        session = (await node.client.post("/api/sessions", json={"title": "pg"})).json()
        first = await node.submit(agent="echo", prompt="one", session_id=session["id"])
        # the session's foreign key refuses an unknown one: the same 404 as on SQLite
        unknown = await node.client.post(
            "/api/tasks", json={"agent": "echo", "prompt": "x", "session_id": "missing"}
        )
        assert unknown.status_code == 404
        assert unknown.json()["error"] == {
            "code": "session_not_found",
            "message": "unknown session 'missing'",
            "details": None,
        }
        again = await node.client.post(
            "/api/tasks",
            json={"agent": "echo", "prompt": "one", "idempotency_key": "k", "priority": 5},
        )
        assert again.status_code == 202
        dup = await node.client.post(
            "/api/tasks",
            json={"agent": "echo", "prompt": "one", "idempotency_key": "k", "priority": 5},
        )
        assert dup.status_code == 200 and dup.json()["id"] == again.json()["id"]
        assert (await node.wait_for(first["id"]))["result"] == "one"
        msgs = (await node.client.get(f"/api/sessions/{session['id']}/messages")).json()
        assert [(m["role"], m["content"]) for m in msgs["messages"]] == [
            ("user", "one"),
            ("assistant", "one"),
        ]

        long = await node.submit(agent="sleep", prompt="", input={"ms": 60_000})
        await node.wait_for(long["id"], ("running",))
        resp = await node.client.post(f"/api/tasks/{long['id']}/cancel")
        assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
        with trio.fail_after(5):
            while (await node.client.get("/health")).json()["agents"]["active"]:
                await trio.sleep(0.02)

        many = [(await node.submit(agent="echo", prompt=f"n{i}"))["id"] for i in range(10)]
        for task_id in many:
            assert (await node.wait_for(task_id))["status"] == "succeeded"
        page = (await node.client.get("/api/tasks", params={"limit": 5})).json()
        assert len(page["tasks"]) == 5 and page["next_cursor"]


async def test_shutdown_requeues_running_tasks_on_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    config = node_config(tmp_path, database={"url": postgres_url}, server={"shutdown_grace": 0.2})
    async with running_node(config) as node:
        task = await node.submit(agent="sleep", prompt="", input={"ms": 60_000})
        await node.wait_for(task["id"], ("running",))
    # the node has stopped and closed its store: look with a fresh one
    async with aio.open_loop():
        fresh = await open_store(postgres_url)
        try:
            back = await fresh.get_task(task["id"])
        finally:
            await fresh.close()
    assert back is not None and back.status.value == "queued" and back.attempt == 2


async def test_values_postgresql_cannot_hold_are_422_naming_the_field(
    tmp_path: Path, postgres_url: str
) -> None:
    """Issue 11: on PostgreSQL these were 503s (the store refused them); the API refuses them
    first, as on SQLite, so a 503 means only that the store is unreachable."""
    config = node_config(tmp_path, database={"url": postgres_url})
    async with running_node(config) as node:
        seq = base64.urlsafe_b64encode(b"brio-task-seq:9223372036854775808").decode().rstrip("=")
        resp = await node.client.get("/api/tasks", params={"cursor": seq})
        assert resp.status_code == 422 and resp.json()["error"]["details"] == {"field": "cursor"}
        resp = await node.client.get("/api/sessions", params={"offset": "9223372036854775808"})
        assert resp.status_code == 422
        assert resp.json()["error"]["details"][0]["field"] == "offset"
        headers = {"Content-Type": "application/json"}
        for body, field in [
            (b'{"agent": "echo", "prompt": "", "input": {"a": 1e400}}', "input.a"),
            (b'{"agent": "echo", "prompt": "", "input": {"s": "\\ud800"}}', "input.s"),
        ]:
            resp = await node.client.post("/api/tasks", content=body, headers=headers)
            assert resp.status_code == 422, body
            assert resp.json()["error"]["details"][0]["field"] == field
