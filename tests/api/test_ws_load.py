"""WebSocket events under load: a watcher of everything survives the largest batch, and a
completions-only watcher gets only completions."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

import brio.tasks.events
from brio.api.models import MAX_BATCH
from brio.tasks.events import EVENT_TYPES
from tests.api.test_websocket import subscribe, ws_url
from tests.api.test_ws_limits import closed_with
from tests.nodes import Node, node_config, running_node

ECHO_EVENTS = ["task_created", "task_update", "task_update", "task_output", "task_completed"]


async def submit_batch(node: Node, n: int) -> list[str]:
    tasks = [{"agent": "echo", "prompt": f"p{i}"} for i in range(n)]
    resp = await node.client.post("/api/tasks:batch", json={"tasks": tasks}, timeout=60)
    assert resp.status_code == 200, resp.text
    return [r["task"]["id"] for r in resp.json()["results"]]


@pytest.mark.parametrize("max_agents", [32, MAX_BATCH])  # the default; all placed at once
async def test_a_watcher_of_everything_survives_the_largest_batch(
    tmp_path: Path, max_agents: int
) -> None:
    """One batch of MAX_BATCH echo tasks publishes its task_created events at once and the
    placer's assignments right after: more than the old 1000-event buffer, so the watcher
    used to be cut off (slow_consumer) although it was reading."""
    config = node_config(tmp_path, mesh={"max_agents": max_agents})
    async with running_node(config) as node:
        await watch_a_batch(node)


async def watch_a_batch(node: Node) -> None:
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seqs: list[int] = []
    async with open_websocket_url(ws_url(node), max_message_size=1 << 20) as ws:
        await subscribe(ws, all=True)
        ids = await submit_batch(node, MAX_BATCH)
        completed = 0
        try:
            with trio.fail_after(120):
                while completed < MAX_BATCH:
                    event = json.loads(await ws.get_message())
                    assert event["type"] != "error", event
                    by_task[event["task_id"]].append(event)
                    seqs.append(event["seq"])
                    completed += event["type"] == "task_completed"
        except ConnectionClosed as closed:
            raise AssertionError(f"cut off after {len(seqs)} events: {closed.reason}") from None
    assert set(by_task) == set(ids)
    for events in by_task.values():
        assert [e["type"] for e in events] == ECHO_EVENTS
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == MAX_BATCH * len(ECHO_EVENTS)


async def test_a_completions_only_watcher_gets_only_completions(node: Node) -> None:
    async with open_websocket_url(ws_url(node)) as ws:
        ack = await subscribe(ws, all=True, types=["task_completed"])
        assert ack["types"] == ["task_completed"] and ack["all"] is True
        ids = await submit_batch(node, 50)
        with trio.fail_after(30):
            got = [json.loads(await ws.get_message()) for _ in ids]
        # every other event of these tasks was published before its completion, so it would
        # have come before the last of these
        assert {e["type"] for e in got} == {"task_completed"}
        assert sorted(e["task_id"] for e in got) == sorted(ids)
        assert {e["data"]["status"] for e in got} == {"succeeded"}
        # unsubscribing from a type stops it: none is left here
        ack = await subscribe(ws, action="unsubscribe", types=["task_completed"])
        assert ack["types"] == [] and ack["all"] is True
        ack = await subscribe(ws, types=["task_created", "task_output"])
        assert ack["types"] == ["task_created", "task_output"]
        task = await node.submit(agent="echo", prompt="two")
        with trio.fail_after(10):
            first, second = [json.loads(await ws.get_message()) for _ in range(2)]
        assert [first["type"], second["type"]] == ["task_created", "task_output"]
        assert first["task_id"] == second["task_id"] == task["id"]


async def test_unknown_event_types_are_refused_naming_the_field(node: Node) -> None:
    async with open_websocket_url(ws_url(node)) as ws:
        for types, field, says in [
            (["task_completed", "task_done"], "types.1", "'task_completed'"),
            ([], "types", "at least 1 item"),
            ("task_completed", "types", "valid list"),
        ]:
            await ws.send_message(json.dumps({"action": "subscribe", "all": True, "types": types}))
            err = json.loads(await ws.get_message())
            assert err["error"]["code"] == "validation_error", err
            assert err["error"]["details"][0]["field"] == field
            assert says in err["error"]["message"]
        ack = await subscribe(ws)  # nothing was changed by the refused messages
        assert (ack["all"], ack["types"]) == (False, list(EVENT_TYPES))


async def test_coalesced_frames_carry_every_event_in_order(node: Node) -> None:
    async with open_websocket_url(ws_url(node)) as ws:
        ack = await subscribe(ws, all=True, coalesce=True)
        assert ack["coalesce"] is True
        ids = await submit_batch(node, 200)
        frames: list[list[dict[str, Any]]] = []
        with trio.fail_after(60):
            while sum(e["type"] == "task_completed" for f in frames for e in f) < len(ids):
                frame = json.loads(await ws.get_message())
                assert frame["type"] == "events", frame
                frames.append(frame["events"])
        events = [e for f in frames for e in f]
        assert len(events) == 5 * len(ids)
        assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
        by_task: dict[str, list[str]] = defaultdict(list)
        for e in events:
            by_task[e["task_id"]].append(e["type"])
        assert set(by_task) == set(ids)
        assert all(kinds == ECHO_EVENTS for kinds in by_task.values())
        # the batch's task_created events are published at once: one frame holds them all
        assert max(len(f) for f in frames) >= len(ids)
        # back to one event per frame
        ack = await subscribe(ws, coalesce=False)
        assert ack["coalesce"] is False
        task = await node.submit(agent="echo", prompt="one")
        with trio.fail_after(10):
            event = json.loads(await ws.get_message())
        assert (event["type"], event["task_id"]) == ("task_created", task["id"])


async def test_a_watcher_that_stops_reading_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's write to a client that reads nothing blocks once the sockets' buffers are
    full; the events behind it overflow the subscription's bytes, and the client gets those
    queued before, then slow_consumer and close 1008 once it reads again."""
    monkeypatch.setattr(brio.tasks.events, "SUBSCRIBER_MAX_BYTES", 2 << 20)
    prompt = "p" * 200_000  # in task_created, task_output and task_completed
    async with (
        running_node(node_config(tmp_path)) as node,
        open_websocket_url(ws_url(node), message_queue_size=1) as ws,
    ):
        await subscribe(ws, all=True)
        tasks = [await node.submit(agent="echo", prompt=prompt) for _ in range(60)]
        for task in tasks:  # every event has been published: 36 MB, more than the buffers
            await node.wait_for(task["id"], timeout=30)
        seen, code = await closed_with(ws)
        assert (await node.client.get("/health")).status_code == 200
    assert code == 1008
    assert seen[-1] == {
        "type": "error",
        "error": {"code": "slow_consumer", "message": "too many unread events", "details": None},
    }
    assert 0 < len(seen) - 1 < 3 * len(tasks)
