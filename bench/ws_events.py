"""Server CPU per task of WebSocket events (issue 12: coalesced events and a completions-only
subscription), before and after, in one run.

Run: ``nice .venv/bin/python -m bench.ws_events [--tasks 2000] [--batch 200] [--reps 3]``
from the repository root. Prints a table, then the report as JSON. Asserts nothing.

What runs: two ``brio serve`` processes on SQLite (``max_agents = 32``, no mesh), alike but
for one thing: ``baseline`` sends events as the node did before (``_baseline_forward`` below,
patched in: one wait on the subscription and one frame per event, every event of a watcher
of everything); ``current`` runs the code as it is. This process is the client: it posts
``--batch`` ``echo`` tasks (``POST /api/tasks:batch``), waits until all have finished, and
posts the next, until ``--tasks`` have run. A phase is one such run, with one WebSocket:

- ``none``: no WebSocket; finished tasks are seen by polling the node's SQLite file
  (read-only, from this process, so none of it is the node's CPU). The floor: what the tasks
  cost without events.
- ``all``: subscribed to everything, one event per frame (five per task: created, assigned,
  running, output, completed); the client counts the completions.
- ``completions``: ``current`` only, ``"types": ["task_completed"]``. The baseline of this
  client is ``all`` on ``baseline``: the old node had no filter, so a client that wanted
  completions got everything and dropped the rest.
- ``all-coalesced``: ``current`` only, everything with ``"coalesce": true``.

Figures: the node's CPU (``/proc/PID/stat``) over the phase per task, and that minus the
same node's ``none`` phase of the same repetition: what the WebSocket costs per task. Phases
alternate between the nodes within each repetition; medians over ``--reps``. The machine is
shared: ``other`` (CPU of other processes during the phases) is printed too.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import open_websocket_url

from bench.cpu import Meter, machine
from bench.rows.common import clean_env, free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
data_dir = "{data}"
[server]
host = "127.0.0.1"
port = {port}
[mesh]
node_id = "bench-ws"
max_agents = 32
[logging]
level = "warning"
"""
PHASES = {
    "baseline": ["none", "all"],
    "current": ["none", "all", "completions", "all-coalesced"],
}
SUBSCRIBE: dict[str, dict[str, Any]] = {
    "all": {"all": True},
    "completions": {"all": True, "types": ["task_completed"]},
    "all-coalesced": {"all": True, "coalesce": True},
}


async def _baseline_forward(conn: Any, sub: Any) -> None:
    """``brio.api.routes.ws._forward_events`` as it was before (commit 6d7e289), with the
    ``_Connection.send`` of then inlined: one wait per event, one frame per event."""
    from quart import websocket

    async for event in sub.receive:
        sub.delivered(event)
        text = event.text
        if conn.closing:
            return
        if not conn.sent.spend(len(text.encode())):
            await conn.over_budget(conn.sent)
            return
        await websocket.send(text)
    if sub.overflowed:
        await conn.close_with_error(
            "slow_consumer", "too many unread events", None, 1008, "slow consumer"
        )
    conn.done.cancel()


def serve(baseline: bool) -> int:
    """The node process: ``brio serve``, with the old forwarder when ``baseline``."""
    if baseline:
        import brio.api.routes.ws

        brio.api.routes.ws._forward_events = _baseline_forward
    from brio.cli.main import main

    return main(["serve"])


def start_node(base: Path, baseline: bool) -> tuple[subprocess.Popen[bytes], str]:
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = base / "brio.toml"
    config.write_text(CONFIG.format(data=base / "data", port=port))
    env = clean_env({"HOME": str(base), "BRIO_CONFIG": str(config)})
    argv = [sys.executable, "-m", "bench.ws_events", "--serve"] + (["--baseline"] * baseline)
    log_path = base / "node.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/health/ready", proc, 30, log_path)
    except RuntimeError:
        proc.kill()
        raise
    return proc, url


async def _post(client: httpx.AsyncClient, size: int) -> list[str]:
    body = {"tasks": [{"agent": "echo", "prompt": "x"}] * size}
    resp = await client.post("/api/tasks:batch", json=body, timeout=60)
    resp.raise_for_status()
    return [r["task"]["id"] for r in resp.json()["results"] if r["outcome"] == "accepted"]


class Done:
    """Tasks seen finished, by the WebSocket's completions or by polling the SQLite file."""

    def __init__(self) -> None:
        self.finished: set[str] = set()
        self.waiting: dict[str, trio.Event] = {}
        self.frames = self.events = 0

    def saw(self, task_id: str) -> None:
        self.finished.add(task_id)
        if task_id in self.waiting:
            self.waiting.pop(task_id).set()

    async def wait(self, ids: list[str]) -> None:
        """Until every one of ``ids`` has finished (all waited for at once: the poller looks
        for all of them in each round)."""
        events = [self.waiting.setdefault(i, trio.Event()) for i in ids if i not in self.finished]
        with trio.fail_after(120):
            for event in events:
                await event.wait()
        self.finished.difference_update(ids)

    async def read(self, ws: Any, mode: str) -> None:
        while True:
            frame = json.loads(await ws.get_message())
            if frame["type"] == "error":
                raise RuntimeError(f"{mode}: {frame}")
            events = frame["events"] if frame["type"] == "events" else [frame]
            self.frames += 1
            self.events += len(events)
            for event in events:
                if event["type"] == "task_completed":
                    self.saw(event["task_id"])

    async def poll(self, db: str) -> None:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            while True:
                ids = list(self.waiting)
                for at in range(0, len(ids), 500):
                    chunk = ids[at : at + 500]
                    marks = ",".join("?" * len(chunk))
                    rows = conn.execute(
                        f"SELECT id FROM tasks WHERE id IN ({marks}) AND status = 'succeeded'",
                        chunk,
                    ).fetchall()
                    for (task_id,) in rows:
                        self.saw(task_id)
                await trio.sleep(0.005)
        finally:
            conn.close()


async def phase(url: str, db: str, mode: str, args: dict[str, int]) -> dict[str, int]:
    """Run ``tasks`` echo tasks: ``batch`` a POST, or (``users`` > 0) single POSTs from that
    many users in a closed loop; the frames and events received."""
    done = Done()
    limits = httpx.Limits(max_connections=max(args["users"], 1))
    async with (
        httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client,
        trio.open_nursery() as nursery,
    ):
        if mode == "none":
            nursery.start_soon(done.poll, db)
        else:
            ws_url = url.replace("http://", "ws://") + "/ws"
            ws = await nursery.start(_open_ws, ws_url)
            await ws.send_message(json.dumps({"action": "subscribe", **SUBSCRIBE[mode]}))
            assert json.loads(await ws.get_message())["type"] == "subscribed"
            nursery.start_soon(done.read, ws, mode)
        if args["users"]:
            left = [args["tasks"]]

            async def user() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    body = {"agent": "echo", "prompt": "x"}
                    resp = await client.post("/api/tasks", json=body)
                    resp.raise_for_status()
                    await done.wait([resp.json()["id"]])

            async with trio.open_nursery() as users:
                for _ in range(args["users"]):
                    users.start_soon(user)
        else:
            for start in range(0, args["tasks"], args["batch"]):
                await done.wait(await _post(client, min(args["batch"], args["tasks"] - start)))
        nursery.cancel_scope.cancel()
    return {"frames": done.frames, "events": done.events}


async def _open_ws(url: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with open_websocket_url(url, max_message_size=16 << 20) as ws:
        task_status.started(ws)
        await trio.sleep_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per phase")
    parser.add_argument("--batch", type=int, default=200, help="tasks per POST")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--users", type=int, default=0, help="single POSTs from this many users, not batches"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        raise SystemExit(serve(args.baseline))

    report: dict[str, Any] = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("serve", "baseline")},
        "load_before": Path("/proc/loadavg").read_text().split()[:3],
    }
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        nodes = {name: start_node(Path(tmp) / name, name == "baseline") for name in PHASES}
        try:
            for name, (_, url) in nodes.items():  # warm up: imports, caches, the first pages
                warm = {"tasks": 200, "batch": 200, "users": 0}
                trio.run(phase, url, str(Path(tmp) / name / "data" / "brio.db"), "all", warm)
            for rep in range(args.reps):
                for name, (proc, url) in nodes.items():
                    db = str(Path(tmp) / name / "data" / "brio.db")
                    for mode in PHASES[name]:
                        meter = Meter({"node": partial(list, [proc.pid])})
                        meter.start()
                        load = {"tasks": args.tasks, "batch": args.batch, "users": args.users}
                        try:
                            counts = trio.run(phase, url, db, mode, load)
                        except BaseException:
                            log = (Path(tmp) / name / "node.log").read_text()[-3000:]
                            print(f"{name} {mode} failed; the node's log ends:\n{log}")
                            raise
                        cpu = meter.stop()
                        ms = 1000 * cpu["node"] / args.tasks
                        runs.append(
                            {"rep": rep, "node": name, "mode": mode, "ms_per_task": ms}
                            | counts
                            | {"other_s": cpu["other"], "wall_s": cpu["wall"]}
                        )
                        print(
                            f"rep {rep + 1} {name:8} {mode:13} {ms:6.3f} ms/task", file=sys.stderr
                        )
        finally:
            for proc, _ in nodes.values():
                proc.terminate()
                proc.wait(30)
    report["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    report["runs"] = runs
    summary = []
    for name, modes in PHASES.items():
        for mode in modes:
            mine = [r for r in runs if r["node"] == name and r["mode"] == mode]
            floors = {
                r["rep"]: r["ms_per_task"] for r in runs if (r["node"], r["mode"]) == (name, "none")
            }
            summary.append(
                {
                    "node": name,
                    "mode": mode,
                    "ms_per_task": statistics.median(r["ms_per_task"] for r in mine),
                    "ws_ms_per_task": statistics.median(
                        r["ms_per_task"] - floors[r["rep"]] for r in mine
                    ),
                    "frames_per_task": statistics.median(r["frames"] for r in mine) / args.tasks,
                    "events_per_task": statistics.median(r["events"] for r in mine) / args.tasks,
                }
            )
    report["summary"] = summary
    print(f"{'node':9} {'mode':14} {'ms/task':>8} {'ws ms/task':>11} {'frames/task':>12}", end="")
    print(f" {'events/task':>12}")
    for row in summary:
        print(f"{row['node']:9} {row['mode']:14} {row['ms_per_task']:8.3f}", end="")
        print(f" {row['ws_ms_per_task']:11.3f} {row['frames_per_task']:12.2f}", end="")
        print(f" {row['events_per_task']:12.2f}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
