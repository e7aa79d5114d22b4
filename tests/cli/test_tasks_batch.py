"""``brio tasks submit --batch FILE``: the file's reading, a real node process, and the watch
of many tasks."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from brio.agents.base import AgentContext
from brio.api.models import MAX_BATCH, WsSubscribe
from brio.cli.errors import CliError
from brio.cli.tasks_cmd import BATCH_SIZE, SUBSCRIBE_CHUNK, _watch, read_batch
from brio.tasks.events import SUBSCRIBER_MAX_EVENTS
from tests.nodes import node_config, running_node
from tests.system.nodeproc import start_node_on_free_port


def test_the_cli_limits_are_the_nodes() -> None:
    assert BATCH_SIZE == MAX_BATCH
    assert WsSubscribe.model_json_schema()["properties"]["tasks"]["maxItems"] == SUBSCRIBE_CHUNK


def test_json_lines_with_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"agent": "echo", "prompt": "a"}\n\n  \n{"agent": "echo", "prompt": "b"}')
    assert read_batch(str(path)) == [
        {"agent": "echo", "prompt": "a"},
        {"agent": "echo", "prompt": "b"},
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"agent": "echo", "prompt": "a"}\n{oops\n', "line 2: not valid JSON"),
        ('{"agent": "echo", "prompt": "a"}\n["echo", "a"]\n', "line 2: expected a JSON object"),
        ("\n\n", "no tasks in it"),
    ],
)
def test_a_bad_file_names_its_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(text)
    with pytest.raises(CliError, match=message):
        read_batch(str(path))


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="cannot read"):
        read_batch(str(tmp_path / "nope.jsonl"))


def brio(cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIO_")}
    env["HOME"] = str(cwd)
    return subprocess.run(
        [sys.executable, "-m", "brio", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_a_real_node_takes_a_batch_file_and_every_task_succeeds(tmp_path: Path) -> None:
    """More tasks than one request carries, with replays: all run, each once."""
    count = BATCH_SIZE + 50
    lines = [
        json.dumps({"agent": "echo", "prompt": f"t{i}", "idempotency_key": f"k{i}"})
        for i in range(count)
    ]
    lines += lines[:5]  # replays of the first five
    (tmp_path / "tasks.jsonl").write_text("\n".join(lines) + "\n")
    node = start_node_on_free_port(tmp_path, {"BRIO_MESH__MAX_AGENTS": "32"})
    try:
        done = brio(
            tmp_path,
            *("tasks", "submit", "--url", node.url, "--batch", "tasks.jsonl", "--wait", "--json"),
        )
        assert done.returncode == 0, done.stderr[-3000:]
        outcomes = json.loads(done.stdout[: done.stdout.index("\n]\n") + 2])
        assert [r["outcome"] for r in outcomes] == ["accepted"] * count + ["existing"] * 5
        ids = [r["task"]["id"] for r in outcomes]
        assert ids[count:] == ids[:5]
        completed = [json.loads(line) for line in done.stdout.splitlines() if '"task_id"' in line]
        assert {e["task_id"] for e in completed if e["type"] == "task_completed"} == set(ids)

        piped = '{"agent": "echo", "prompt": "piped"}\n'
        from_stdin = brio(
            tmp_path, "tasks", "submit", "--url", node.url, "--batch", "-", stdin=piped
        )
        assert from_stdin.returncode == 0, from_stdin.stderr
        assert from_stdin.stdout.splitlines()[1].split()[:2] == ["1", "accepted"]
        (tmp_path / "mixed.jsonl").write_text(
            '{"agent": "echo", "prompt": "fine"}\n{"agent": "nope", "prompt": "x"}\n'
        )
        mixed = brio(tmp_path, "tasks", "submit", "--url", node.url, "--batch", "mixed.jsonl")
        assert mixed.returncode == 1, mixed.stderr
        rows = [line.split(None, 3) for line in mixed.stdout.splitlines()]
        assert rows[0] == ["#", "OUTCOME", "ID", "STATUS / ERROR"]
        assert [r[:2] for r in rows[1:]] == [["1", "accepted"], ["2", "error"]]
        assert "unknown agent 'nope'" in rows[2][3] and "(HTTP 404)" in rows[2][3]
        both = brio(tmp_path, "tasks", "submit", "--url", node.url, "echo", "x", "--batch", "-")
        assert both.returncode == 1 and "not AGENT PROMPT" in both.stderr
    finally:
        code = node.terminate()
    assert code == 0, node.log()
    with sqlite3.connect(tmp_path / "brio-data" / "brio.db") as db:
        statuses = dict(
            db.execute("SELECT status, count(*) FROM tasks WHERE agent = 'echo' GROUP BY status")
        )
    assert statuses == {"succeeded": count + 2}  # and "fine" and "piped"


async def chatty(ctx: AgentContext) -> str:
    """Waits for its watcher, then streams more output than a subscriber may have unread:
    ``emit`` never yields, so the node cuts every subscriber of the task off at once."""
    await trio.sleep(2)
    for i in range(BURST):
        await ctx.emit(f"{i}\n")
    return "done"


BURST = SUBSCRIBER_MAX_EVENTS + 500  # more than the node's unread events per subscriber


async def test_watch_subscribes_again_after_being_cut_off_as_a_slow_consumer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = node_config(
        tmp_path, agents={"chatty": {"entrypoint": "tests.cli.test_tasks_batch:chatty"}}
    )
    async with running_node(config) as node:
        task = await node.submit(agent="chatty", prompt="")
        with trio.fail_after(60):
            code = await _watch(node.url, None, [task["id"]], False, True)
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    chunks = [e for e in events if e["type"] == "task_output"]
    assert 0 < len(chunks) < BURST  # subscribed before the burst, then cut off within it
    assert events[-1]["type"] == "task_completed" and events[-1]["data"]["result"] == "done"
