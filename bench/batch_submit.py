"""Batch submits (issue 12, target 2): ``POST /api/tasks:batch`` of no-op ``echo`` tasks, end
to end, on one SQLite node (``synchronous = FULL``), against Ray's ~1,257 no-op tasks/s on this
machine kind (the issue's figure; ``bench/rows/batch.py`` runs Ray in the same run).

Run: ``.venv/bin/python -m bench.batch_submit [--batch 100] [--connections 4] [--seconds 10]
[--reps 3]`` from the repository root. Prints a table, then the report as JSON. Asserts nothing.

What runs: one ``python -m brio serve`` process (no mesh: it places its own tasks), and the load
generator in a process of its own (this file with ``--loadgen``): ``bench.loadgen.RawHTTP``
keep-alive connections, and a poller of the node's SQLite file (read-only, every 5 ms) that
sees tasks finish. Not a WebSocket subscribed to everything: with 4 connections of 100 tasks,
such a subscriber falls 1000 events behind on this busy machine and is cut off as a slow
consumer. Phases, ``--reps`` times each, alternating:

- ``closed``: each connection posts a batch of ``--batch`` tasks, then waits until the store
  says every one has finished before it posts the next. Tasks completed per second
  after ``--warmup`` seconds: the end-to-end figure, comparable to Ray's ``ray.get`` of a
  batch of ``.remote()`` calls.
- ``submit``: the connections post batches back to back without waiting, until
  ``--submit-tasks`` are accepted (or ``--seconds`` pass): tasks accepted per second, the
  ceiling of the HTTP and store path with the node running the tasks meanwhile; the queue is
  then left to drain (its time and CPU count in the phase's CPU, not in its rate) before the
  next phase.
- ``accept``: the same, to a second node (``max_agents = 1``) with ``sleep`` tasks of an hour
  that stay queued: tasks accepted per second and node CPU per task of the submit path alone
  (HTTP, validation, one transaction per batch, events), nothing running beside it.

CPU: the node's own (``/proc/PID/stat``), the load generator's, and ``other`` (the machine's
busy time neither accounts for: other people's work), per phase; the node's per task. The load
average before and after is printed too: figures taken on a busy machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.cpu import Meter, machine
from bench.loadgen import HTTPError, RawHTTP
from bench.rows.common import clean_env, free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
RAY_TASKS_PER_S = 1257  # issue 12, measured on this machine kind
POLL_S = 0.005
CONFIG = """
data_dir = "{data}"
[server]
host = "127.0.0.1"
port = {port}
[mesh]
node_id = "bench-batch"
max_agents = {agents}
[logging]
level = "warning"
"""


def _body(size: int, tag: str, held: bool = False) -> bytes:
    """A batch of ``echo`` tasks, or (``held``) of ``sleep`` tasks that stay queued."""
    task = {"agent": "sleep", "prompt": tag, "input": {"ms": 3_600_000}} if held else None
    return json.dumps({"tasks": [task or {"agent": "echo", "prompt": tag}] * size}).encode()


async def _post_batch(conn: RawHTTP, body: bytes) -> list[str]:
    """The ids of the batch's accepted tasks; raises on any other answer."""
    status, reply = await conn.request("POST", "/api/tasks:batch", body)
    if status != 200:
        raise HTTPError(f"POST /api/tasks:batch: {status} {reply[:300]!r}")
    return [r["task"]["id"] for r in json.loads(reply)["results"] if r["outcome"] == "accepted"]


@dataclass
class Finished:
    """Task ids the connections wait for, and when each was first seen finished in the store
    (polled every ``POLL_S``: the node's database file, read-only, from this process)."""

    db: str
    wanted: dict[str, trio.Event] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)

    def want(self, ids: list[str]) -> list[trio.Event]:
        events = [trio.Event() for _ in ids]
        self.wanted.update(zip(ids, events, strict=True))
        return events

    async def poll(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            while True:
                ids = list(self.wanted)
                for at in range(0, len(ids), 500):
                    chunk = ids[at : at + 500]
                    marks = ",".join("?" * len(chunk))
                    rows = conn.execute(
                        f"SELECT id FROM tasks WHERE id IN ({marks}) AND status IN "
                        "('succeeded', 'failed', 'cancelled')",
                        chunk,
                    ).fetchall()
                    now = time.perf_counter()
                    for (task_id,) in rows:
                        self.seen[task_id] = now
                        self.wanted.pop(task_id).set()
                await trio.sleep(POLL_S)
        finally:
            conn.close()


async def closed(args: dict[str, Any]) -> dict[str, Any]:
    body = _body(args["batch"], "closed")
    finished = Finished(args["db"])
    done_at: list[float] = []
    batch_ms: list[float] = []
    post_ms: list[float] = []
    timeouts = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(finished.poll)
        started = time.perf_counter()
        deadline = started + args["seconds"]

        async def connection() -> None:
            nonlocal timeouts
            conn = RawHTTP(args["url"])
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                ids = await _post_batch(conn, body)
                post_ms.append((time.perf_counter() - start) * 1000)
                with trio.move_on_after(60) as scope:
                    for event in finished.want(ids):
                        await event.wait()
                if scope.cancelled_caught:
                    timeouts += 1
                    for task_id in ids:
                        finished.wanted.pop(task_id, None)
                    continue
                done_at.extend(finished.seen.pop(task_id) for task_id in ids)
                batch_ms.append((time.perf_counter() - start) * 1000)
            await conn.close()

        async with trio.open_nursery() as conns:
            for _ in range(args["connections"]):
                conns.start_soon(connection)
        nursery.cancel_scope.cancel()
    window_start = started + args["warmup"]
    in_window = [t for t in done_at if window_start <= t <= deadline]
    window = deadline - window_start
    return {
        "completed": len(done_at),
        "rate": len(in_window) / window,
        "timeouts": timeouts,
        "post_p50_ms": statistics.median(post_ms) if post_ms else None,
        "batch_p50_ms": statistics.median(batch_ms) if batch_ms else None,
    }


async def submit(args: dict[str, Any]) -> dict[str, Any]:
    body = _body(args["batch"], "submit", held=args.get("held", False))
    accepted = 0
    post_ms: list[float] = []
    deadline = time.perf_counter() + args["seconds"]

    async def connection() -> None:
        nonlocal accepted
        conn = RawHTTP(args["url"])
        while time.perf_counter() < deadline and accepted < args["submit_tasks"]:
            start = time.perf_counter()
            accepted += len(await _post_batch(conn, body))
            post_ms.append((time.perf_counter() - start) * 1000)
        await conn.close()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(args["connections"]):
            nursery.start_soon(connection)
    elapsed = time.perf_counter() - started
    return {
        "completed": accepted,
        "rate": accepted / elapsed,
        "post_p50_ms": statistics.median(post_ms) if post_ms else None,
    }


MODES = {"closed": closed, "submit": submit}


def run_loadgen(mode: str, args: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.batch_submit", "--loadgen", mode, json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=args["seconds"] + 120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator {mode} failed: {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def start_node(base: Path, agents: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = base / "brio.toml"
    config.write_text(CONFIG.format(data=base / "data", port=port, agents=agents))
    env = clean_env({"HOME": str(base), "BRIO_CONFIG": str(config)})
    log_path = base / "node.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "brio", "serve"], cwd=base, env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/health/ready", proc, 30, log_path)
    except RuntimeError:
        proc.kill()
        raise
    return proc, url


def wait_idle(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agents = httpx.get(url + "/health", timeout=5).json()["agents"]
        if agents["queued"] == 0 and agents["active"] == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the queue did not drain within {timeout:g} s")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--submit-tasks", type=int, default=4000)
    parser.add_argument("--agents", type=int, default=64, help="the node's max_agents")
    parser.add_argument("--loadgen", nargs=2, metavar=("MODE", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        mode, raw = args.loadgen
        result = trio.run(MODES[mode], json.loads(raw))
        times = os.times()
        result["cpu_s"] = times.user + times.system
        print(json.dumps(result))
        return

    report: dict[str, Any] = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "loadgen"},
        "load_before": load_average(),
    }
    runs: dict[str, list[dict[str, Any]]] = {"closed": [], "submit": [], "accept": []}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "held").mkdir()
        proc, url = start_node(Path(tmp), args.agents)
        held, held_url = start_node(Path(tmp) / "held", 1)
        try:
            meter = Meter(
                {
                    "node": lambda: [proc.pid] if proc.poll() is None else [],
                    "held": lambda: [held.pid] if held.poll() is None else [],
                }
            )
            common = {
                "url": url,
                "db": str(Path(tmp) / "data" / "brio.db"),
                "batch": args.batch,
                "connections": args.connections,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "submit_tasks": args.submit_tasks,
            }
            run_loadgen("closed", {**common, "seconds": 2.0, "warmup": 0.0})  # warm the node
            wait_idle(url)
            for rep in range(args.reps):
                for mode in ("closed", "submit", "accept"):
                    meter.start()
                    if mode == "accept":
                        result = run_loadgen("submit", {**common, "url": held_url, "held": True})
                    else:
                        result = run_loadgen(mode, common)
                    if mode == "submit":  # its node CPU includes running the tasks
                        wait_idle(url, timeout=300)
                    result["cpu"] = meter.stop()
                    node_cpu = result["cpu"]["held" if mode == "accept" else "node"]
                    result["node_cpu_ms_per_task"] = 1000 * node_cpu / max(1, result["completed"])
                    runs[mode].append(result)
                    print(f"rep {rep + 1} {mode}: {result['rate']:.0f} tasks/s", file=sys.stderr)
        finally:
            for p in (proc, held):
                p.terminate()
                p.wait(30)
    report["load_after"] = load_average()
    report["runs"] = runs
    report["summary"] = {
        mode: {
            "tasks_per_s": spread([r["rate"] for r in rs]),
            "node_cpu_ms_per_task": spread([r["node_cpu_ms_per_task"] for r in rs]),
            "other_cpu_s": spread([r["cpu"]["other"] for r in rs]),
            "post_p50_ms": spread([r["post_p50_ms"] for r in rs if r["post_p50_ms"] is not None]),
        }
        for mode, rs in runs.items()
    }
    print(render(report))
    print(json.dumps(report, indent=2))


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    m = report["machine"]
    lines = [
        f"batch submits: batches of {s['batch']} echo tasks, {s['connections']} connections, "
        f"{s['seconds']:g} s x {s['reps']} reps, one SQLite node (synchronous = FULL)",
        f"machine: {m['cores']} cores, {m['cpu_model']}; load average before "
        f"{report['load_before']}, after {report['load_after']}",
        f"{'phase':<8} {'tasks/s':>8} {'range':>11} {'x Ray':>6} {'node CPU ms/task':>17} "
        f"{'POST p50 ms':>12} {'other CPU s':>12}",
    ]
    for mode, row in report["summary"].items():
        rate = row["tasks_per_s"]
        span = f"{rate['min']:.0f}-{rate['max']:.0f}"
        lines.append(
            f"{mode:<8} {rate['median']:>8.0f} {span:>11} "
            f"{rate['median'] / RAY_TASKS_PER_S:>6.2f} "
            f"{row['node_cpu_ms_per_task']['median']:>17.2f} "
            f"{row['post_p50_ms']['median']:>12.1f} {row['other_cpu_s']['median']:>12.1f}"
        )
    lines.append(f"Ray (issue 12, same machine kind): {RAY_TASKS_PER_S} no-op tasks/s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
