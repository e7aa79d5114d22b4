"""The suite's load generator (bench/suite_load.py) against a real node in this process: its
one WebSocket takes completions only, coalesced, and every submitted task's result comes
back through it. Counts are checked, never speeds."""

from __future__ import annotations

from pathlib import Path

import trio

from bench import suite_load
from bench.loadgen import Waiters
from tests.nodes import node_config, running_node


async def test_the_subscription_is_completions_only_and_coalesced(tmp_path: Path) -> None:
    config = node_config(tmp_path, logging={"level": "warning"})
    async with running_node(config) as node, trio.open_nursery() as nursery:
        reply = await suite_load._subscribed(node.url, nursery, Waiters())
        nursery.cancel_scope.cancel()
    assert reply["types"] == ["task_completed"] and reply["coalesce"] is True
    assert reply["all"] is True


async def test_the_brio_loop_gets_every_result_through_coalesced_frames(tmp_path: Path) -> None:
    async with running_node(node_config(tmp_path, logging={"level": "warning"})) as node:
        args = {"url": node.url, "agent": "echo", "tag": "t", "users": 4, "seconds": 1.0}
        result = await suite_load.brio({**args, "warmup": 0})
    assert result["errors"] == {}
    assert result["completed"] > 0 and result["count"] == result["completed"]
