"""``python -m brio serve`` as a real process: quick start and orderly shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from brio.core.tasks import TaskStatus
from brio.store import TaskRecord, open_store
from tests.system.nodeproc import start_node, start_node_on_free_port


async def read_tasks(db: Path, ids: list[str]) -> dict[str, TaskRecord | None]:
    store = await open_store(f"sqlite:///{db}")
    try:
        return {i: await store.get_task(i) for i in ids}
    finally:
        await store.close()


def wait_status(url: str, task_id: str, statuses: set[str], timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = httpx.get(f"{url}/api/tasks/{task_id}", timeout=5).json()
        if task["status"] in statuses:
            return task  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never reached {statuses}")


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIO_")}
    env["HOME"] = str(cwd)
    return subprocess.run(
        [sys.executable, "-m", "brio", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def check_cli(cwd: Path, echo_id: str) -> None:
    """The `brio tasks` client against the running node (found through the default config)."""
    got = cli(cwd, "tasks", "get", echo_id)
    assert got.returncode == 0, got.stderr
    assert "status    succeeded" in got.stdout and "result    hello brio" in got.stdout

    sub = cli(cwd, "tasks", "submit", "echo", "via cli", "--wait", "--json")
    assert sub.returncode == 0, sub.stderr
    final = json.loads(sub.stdout[sub.stdout.index("\n{") :])  # the task after the events
    assert final["status"] == "succeeded" and final["result"] == "via cli"

    slow = cli(cwd, "tasks", "submit", "sleep", "", "--input", '{"ms": 300}', "--json")
    slow_id = json.loads(slow.stdout)["id"]
    watched = cli(cwd, "tasks", "watch", slow_id)
    assert watched.returncode == 0, watched.stderr
    assert f"[{slow_id}] succeeded" in watched.stdout

    listed = cli(cwd, "tasks", "list", "--json", "--agent", "echo")
    assert [t["result"] for t in json.loads(listed.stdout)["tasks"]] == ["via cli", "hello brio"]
    table = cli(cwd, "tasks", "list")
    assert table.stdout.splitlines()[0].split() == ["ID", "AGENT", "STATUS", "NODE", "CREATED"]

    bad = cli(cwd, "tasks", "submit", "nope", "x")
    assert bad.returncode == 1
    assert "unknown agent 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    bad_input = cli(cwd, "tasks", "submit", "echo", "x", "--input", "{oops")
    assert bad_input.returncode == 1 and "--input: not valid JSON" in bad_input.stderr
    missing = cli(cwd, "tasks", "get", "no-such-task")
    assert missing.returncode == 1 and "unknown task" in missing.stderr


@pytest.mark.slow
def test_quick_start_with_no_config(tmp_path: Path) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8080)) == 0:
            pytest.fail("127.0.0.1:8080 is taken; the no-config quick start needs it")
    node = start_node(tmp_path, "http://127.0.0.1:8080")
    try:
        resp = httpx.post(
            f"{node.url}/api/tasks", json={"agent": "echo", "prompt": "hello brio"}, timeout=5
        )
        assert resp.status_code == 202
        task = wait_status(node.url, resp.json()["id"], {"succeeded", "failed"})
        assert task["status"] == "succeeded"
        assert task["result"] == "hello brio"
        check_cli(tmp_path, task["id"])
    finally:
        code = node.terminate()
    assert code == 0, node.log()
    assert (tmp_path / "brio-data" / "brio.db").exists()
    assert "Traceback" not in node.log()


@pytest.mark.slow
def test_sigterm_requeues_unfinished_tasks(tmp_path: Path) -> None:
    node = start_node_on_free_port(
        tmp_path,
        {
            "BRIO_SERVER__SHUTDOWN_GRACE": "3",
            "BRIO_MESH__MAX_AGENTS": "4",
            "BRIO_NODE_ID": "sigterm-node",
        },
    )
    try:

        def submit(ms: int) -> str:
            resp = httpx.post(
                f"{node.url}/api/tasks",
                json={"agent": "sleep", "prompt": "", "input": {"ms": ms}},
                timeout=5,
            )
            assert resp.status_code == 202, resp.text
            return str(resp.json()["id"])

        short = [submit(1000), submit(1000)]  # finish within the grace period
        long = [submit(60_000), submit(60_000)]
        for task_id in short + long:
            wait_status(node.url, task_id, {"running", "succeeded"})
        waiting = [submit(10), submit(10)]  # no slot free: these stay queued
        time.sleep(0.1)
        started = time.monotonic()
    finally:
        code = node.terminate()
    took = time.monotonic() - started
    assert code == 0, node.log()
    assert took < 15, f"shutdown took {took:.1f}s"
    assert "Traceback" not in node.log()

    tasks = trio.run(read_tasks, tmp_path / "brio-data" / "brio.db", short + long + waiting)
    for task_id in short:
        assert tasks[task_id].status is TaskStatus.SUCCEEDED  # type: ignore[union-attr]
    for task_id in long:
        t = tasks[task_id]
        assert t is not None and t.status is TaskStatus.QUEUED
        assert t.attempt == 2 and t.node_id is None
    for task_id in waiting:
        t = tasks[task_id]
        assert t is not None and t.status is TaskStatus.QUEUED and t.attempt == 1


@pytest.mark.slow
def test_sigint_stops_cleanly_and_a_second_signal_cuts_the_grace_short(tmp_path: Path) -> None:
    node = start_node_on_free_port(tmp_path, {"BRIO_SERVER__SHUTDOWN_GRACE": "60"})
    try:
        resp = httpx.post(
            f"{node.url}/api/tasks",
            json={"agent": "sleep", "prompt": "", "input": {"ms": 120_000}},
            timeout=5,
        )
        task_id = resp.json()["id"]
        wait_status(node.url, task_id, {"running"})
        node.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert node.proc.poll() is None  # waiting for the agent, within its grace
        started = time.monotonic()
    finally:
        code = node.terminate(sig=signal.SIGINT)
    assert code == 0, node.log()
    assert time.monotonic() - started < 10
    assert "second signal" in node.log()
    task = trio.run(read_tasks, tmp_path / "brio-data" / "brio.db", [task_id])[task_id]
    assert task is not None and task.status is TaskStatus.QUEUED and task.attempt == 2


@pytest.mark.slow
def test_a_client_that_stops_reading_cannot_hang_the_shutdown(tmp_path: Path) -> None:
    """A WebSocket watcher that never reads fills the TCP buffers; SIGTERM still ends it all."""
    node = start_node_on_free_port(tmp_path, {"BRIO_SERVER__SHUTDOWN_GRACE": "1"})
    url = node.url.replace("http://", "ws://") + "/ws"

    async def stall() -> None:
        from trio_websocket import open_websocket_url

        async with open_websocket_url(url, message_queue_size=0) as ws:
            await ws.send_message(json.dumps({"action": "subscribe", "all": True}))
            prompt = "x" * 900_000
            async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
                for _ in range(25):  # ~45 MB of events nobody reads
                    resp = await client.post("/api/tasks", json={"agent": "echo", "prompt": prompt})
                    assert resp.status_code == 202
            await trio.sleep(1)
            started = time.monotonic()
            node.proc.send_signal(signal.SIGTERM)
            while node.proc.poll() is None and time.monotonic() - started < 60:
                await trio.sleep(0.1)

    try:
        trio.run(stall)
    finally:
        if node.proc.poll() is None:
            node.proc.kill()
            pytest.fail(f"node still running 60s after SIGTERM; log:\n{node.log()}")
    assert node.proc.returncode in (0, 1), node.log()
    if node.proc.returncode == 1:
        assert "forcing exit" in node.log()
