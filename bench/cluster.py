"""Cluster benchmark: scale-out, cluster against single-node throughput, placement latency, and
the time from ``kill -9`` of a worker to its tasks running elsewhere.

Run: ``.venv/bin/python -m bench.cluster [--quick] [--json-only]`` from the repository root
(``just bench-cluster``). Needs the PostgreSQL server binaries (initdb, pg_ctl) like the
PostgreSQL tests. Prints a table, then the whole report as JSON. Asserts nothing.

What runs: one PostgreSQL (``tests/pg.py``: initdb into a temporary directory, fsync off), and as
separate ``python -m brio serve`` processes (``tests/system/cluster.py``), all at once:

- a cluster: ``coordinator-1`` (HTTP, the primary, ``coordinators_run_agents = false``) and
  ``worker-1``, ``worker-2`` (``max_agents = 50`` each), default failure detection and lease,
  authenticated by a ``cluster_secret``, on database ``cluster``;
- a single node (no mesh: it places its own tasks), ``max_agents = 50``, on database ``single``
  of the same server.

The load generator is ``bench/loadgen.py`` in its own process (a raw keep-alive HTTP/1.1
client; see there). Nothing is pinned with ``taskset``: client, nodes and PostgreSQL share the
machine's cores, and every phase reports the CPU seconds each of them used (``/proc/PID/stat``
of the nodes and of the postmaster's backends, ``os.times`` of the reaped load generator) and
``other``: the machine's busy time (``/proc/stat``) that none of them accounts for.

Rows (A and B alternate, A B A B ..., ``--reps`` times each; medians, ranges, ratio B/A of the
medians):

- ``scale-out``: ``sleep`` tasks of 100 ms, closed loop: 100 users (2 x max_agents) each submit
  a task to the coordinator and wait for its ``task_completed`` on the coordinator's WebSocket
  before the next. A: agent ``sleep_w1`` (kind sleep, ``node_affinity = ["worker-1"]``: one
  worker); B: ``sleep`` (both workers). Completions per second over 8 s after a 1 s warm-up,
  and the coordinator's CPU milliseconds per completed task.
- ``scale-out-slots``: the same with ``sleep`` tasks of 1 s (warm-up 2 s): one worker can then
  complete at most 50 tasks/s, two 100/s, so that the figure shows whether placement spreads
  work when the slots, not the coordinator's CPU, are the limit (with 100 ms tasks one
  worker's 50 slots could take 500/s, more than one coordinator serves over HTTP here).
- ``throughput``: ``echo`` tasks, 64 connections POSTing back to back. A: the single node; B:
  the cluster's coordinator. Figures: 202s per second at the client, and completions per
  second from the store (``succeeded`` tasks of the phase over ``max(finished_at) -
  min(created_at)``, after the queue drained), and the CPU milliseconds per task of the node
  that took the HTTP load (the single node; the coordinator).
- ``placement``: at low load (one task at a time, 50 ms apart), ``echo`` to the coordinator:
  from the 202 at the client to the worker's ``task_update`` ``running`` event on the
  coordinator's WebSocket (this includes the forwarding of the event back from the worker),
  and, from the store, ``started_at - created_at`` of the same tasks (created_at is taken
  before the insert commits, so this includes the commit and the 202's own path). p50, p99.
- ``backlog``: a long queue at once: 2,000 ``sleep`` tasks of 100 ms (300 with ``--quick``)
  submitted in batches of 1,000 (``POST /api/tasks:batch``), then drained. A: ``sleep_w1``
  (one worker), B: ``sleep`` (both). Completions per second from the store (as in
  ``throughput``) and the coordinator's CPU milliseconds per task: placement with a long
  queue, without an HTTP request or a WebSocket event per task.
- ``failover``: 20 ``sleep`` tasks of 10 minutes spread over both workers; ``kill -9`` of
  worker-2; time until every one of its tasks is ``running`` on worker-1 (store, polled every
  50 ms), with the coordinator's log times of ``suspected``, ``failed`` and the requeue. With
  the default failure detection (heartbeat 30 s, suspicion threshold 3) on the cluster above,
  and on a second cluster with heartbeat 0.5 s (timeout 1 s, threshold 3); killed worker
  restarted between repetitions.

``--only ROW,ROW`` runs some rows, ``--reps N`` sets the repetitions, and ``--profile DIR``
records the node under load with py-spy during the first repetition of each phase (collapsed
stacks, one file per phase; the report names the frames with the most samples).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests/ is not installed
    sys.path.insert(0, str(ROOT))

from bench.cpu import Meter, children_of, machine  # noqa: E402
from tests.pg import PostgresServer  # noqa: E402
from tests.system.cluster import (  # noqa: E402
    MeshNode,
    free_port,
    ready,
    toml,
    wait_for,
    write_cluster,
)

MAX_AGENTS = 50
BATCH_SIZE = 1000  # tasks per POST /api/tasks:batch in the backlog row (the API's most)
SLEEP_MS = 100
LONG_TASK_MS = 1000  # scale-out with tasks long enough that the slots, not the coordinator, bind
CONCURRENCY = 64
LONG_SLEEP_MS = 600_000
FAILOVER_TASKS = 20
SHORT_DETECTION = {"heartbeat_interval": 0.5, "heartbeat_timeout": 1.0, "suspicion_threshold": 3}
MAIN_IPS = {"coordinator-1": "127.0.0.2", "worker-1": "127.0.0.3", "worker-2": "127.0.0.4"}
SHORT_IPS = {"coordinator-1": "127.0.0.6", "worker-1": "127.0.0.7", "worker-2": "127.0.0.8"}
SINGLE_IP = "127.0.0.5"
ROLES = {"coordinator-1": "coordinator", "worker-1": "worker", "worker-2": "worker"}
ROWS = ("placement", "throughput", "scale-out", "scale-out-slots", "backlog", "failover")


@dataclass(frozen=True)
class Settings:
    reps: int
    throughput_s: float
    scaleout_s: float
    latency_count: int
    failover_reps_short: int
    failover_reps_default: int
    backlog: int  # tasks queued at once by the backlog row


FULL = Settings(3, 8.0, 8.0, 200, 3, 3, 2000)
QUICK = Settings(2, 1.5, 2.0, 15, 1, 0, 300)


def revision() -> str:
    """The commit the nodes run, with ``+dirty`` when brio/ has uncommitted changes (other
    engineers edit the tree meanwhile: a node runs the code as it was when it started)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", "brio") else "")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- processes -------------------------------------------------------------------------------


def cluster_nodes(
    base: Path, pg: PostgresServer, name: str, ips: dict[str, str], detection: dict[str, Any]
) -> dict[str, MeshNode]:
    base.mkdir()
    database = pg.create_database(name)
    tables: dict[str, dict[str, Any]] = {
        "agents.sleep_w1": {"kind": "sleep", "node_affinity": ["worker-1"]},
        "logging": {"level": "warning", "format": "json"},
    }
    if detection:
        tables["mesh.failure_detection"] = detection
    mesh = {
        "max_agents": MAX_AGENTS,
        "coordinators_run_agents": False,
        "cluster_secret": secrets.token_hex(16),
    }
    tls: dict[str, dict[str, Any]] = {n: {} for n in ips}
    return write_cluster(base, ips, ROLES, database, tls, tables, mesh)


def single_node(base: Path, pg: PostgresServer) -> MeshNode:
    node_dir = base / "single"
    node_dir.mkdir()
    database = pg.create_database("single")
    port = free_port(SINGLE_IP)
    tables: dict[str, dict[str, Any]] = {
        "": {"data_dir": str(node_dir / "data")},
        "server": {"host": SINGLE_IP, "port": port, "shutdown_grace": 2},
        "mesh": {"node_id": "single", "max_agents": MAX_AGENTS},
        "database": {"url": database},
        "logging": {"level": "warning", "format": "json"},
    }
    config = node_dir / "brio.toml"
    config.write_text(toml(tables, []))
    return MeshNode("single", node_dir, config, "", f"http://{SINGLE_IP}:{port}")


def start_all(nodes: list[MeshNode]) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(_start, nodes))


def _start(node: MeshNode) -> None:
    if node.node_id != "single":
        node.start()
        return
    # MeshNode.start waits for data/mesh-address, which only a mesh writes: start it here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIO_") and k != "CI"}
    env.update(HOME=str(node.dir), BRIO_CONFIG=str(node.config))
    with (node.dir / "node.log").open("ab") as out:
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "brio", "serve"],
            cwd=node.dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = node.http_url
    assert url is not None
    wait_for("single node ready", lambda: ready(url + "/health/ready"), 30, node)


def pid_of(node: MeshNode) -> list[int]:
    return [node.proc.pid] if node.proc is not None and node.proc.poll() is None else []


def postgres_pids(pg: PostgresServer) -> Callable[[], list[int]]:
    def pids() -> list[int]:
        pid_file = pg.data_dir / "postmaster.pid"
        master = int(pid_file.read_text().split("\n", 1)[0])
        return [master, *children_of(master)]

    return pids


def health(url: str) -> dict[str, Any]:
    reply: dict[str, Any] = httpx.get(url + "/health", timeout=5).json()
    return reply


def wait_cluster_ready(nodes: dict[str, MeshNode]) -> None:
    coordinator = nodes["coordinator-1"]
    url = coordinator.http_url
    assert url is not None

    def primary() -> bool:
        h = health(url)
        return bool(h["role"] == "primary" and h["mesh"]["connected_peers"] == 2)

    wait_for("coordinator primary with 2 peers", primary, 60, coordinator)
    # Every agent placed once, so that both workers' facts are known to the placer.
    for agent in ("echo", "sleep", "sleep_w1"):
        run_one(url, agent, {}, coordinator)


def run_one(url: str, agent: str, input_: dict[str, Any], node: MeshNode) -> None:
    reply = httpx.post(
        url + "/api/tasks", json={"agent": agent, "prompt": "probe", "input": input_}
    )
    reply.raise_for_status()
    task_id = reply.json()["id"]

    def done() -> bool:
        status = httpx.get(f"{url}/api/tasks/{task_id}", timeout=5).json()["status"]
        return bool(status == "succeeded")

    wait_for(f"probe task {agent}", done, 30, node)


def loadgen(mode: str, args: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", mode, json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen {mode} failed: {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --- the store -------------------------------------------------------------------------------


class Store:
    def __init__(self, pg: PostgresServer, database: str) -> None:
        self.pg = pg
        self.database = database

    def rows(self, statement: str) -> list[list[str]]:
        out = self.pg.sql(statement, self.database)
        return [line.split("|") for line in out.splitlines() if line]

    def unfinished(self, tag: str) -> int:
        return int(
            self.rows(
                "SELECT count(*) FROM tasks WHERE prompt = "
                f"'{tag}' AND status IN ('queued', 'assigned', 'running')"
            )[0][0]
        )

    def wait_drained(self, tag: str, timeout: float = 120) -> float:
        started = time.monotonic()
        while self.unfinished(tag) and time.monotonic() - started < timeout:
            time.sleep(0.2)
        return time.monotonic() - started

    def completion(self, tag: str) -> dict[str, Any]:
        count, first, last = self.rows(
            "SELECT count(*), extract(epoch FROM min(created_at)), "
            f"extract(epoch FROM max(finished_at)) FROM tasks WHERE prompt = '{tag}' "
            "AND status = 'succeeded'"
        )[0]
        n = int(count)
        span = float(last) - float(first) if n else 0.0
        by_node = dict(
            self.rows(
                f"SELECT node_id, count(*) FROM tasks WHERE prompt = '{tag}' GROUP BY node_id"
            )
        )
        # how long a task waited from its insert to its start (placement, and a free slot)
        quantiles = ("p50", "p90", "p99")
        waits = self.rows(
            "SELECT "
            + ", ".join(
                f"percentile_cont({q}) WITHIN GROUP (ORDER BY "
                "extract(epoch FROM started_at - created_at) * 1000)"
                for q in (0.5, 0.9, 0.99)
            )
            + f" FROM tasks WHERE prompt = '{tag}' AND status = 'succeeded'"
        )[0]
        return {
            "succeeded": n,
            "wait_ms": {q: float(w) for q, w in zip(quantiles, waits, strict=True) if w},
            "span_s": span,
            "rate": n / span if span else 0.0,
            "by_node": {k or "-": int(v) for k, v in by_node.items()},
        }


# --- profiles --------------------------------------------------------------------------------


class Profiler:
    """``--profile DIR``: py-spy records the node under load during the first repetition of
    each phase (``py-spy record --format raw``: collapsed stacks, one per line, that
    ``flamegraph.pl`` or speedscope read), and the report names the busiest frames."""

    def __init__(self, out: Path | None, py_spy: str | None, rate: int = 100) -> None:
        self.out = out
        self.py_spy = py_spy
        self.rate = rate
        self.found: dict[str, dict[str, Any]] = {}

    @contextmanager
    def phase(self, name: str, rep: int, node: MeshNode) -> Iterator[None]:
        if self.out is None or self.py_spy is None or rep or node.proc is None:
            yield
            return
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"{name}.txt"
        spy = subprocess.Popen(
            [
                *(self.py_spy, "record", "--format", "raw", "-r", str(self.rate)),
                *("-o", str(path), "--pid", str(node.proc.pid)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # py-spy attaches
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
            self.found[name] = summarize_profile(path)


def summarize_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """Samples (the process was running: py-spy leaves idle ones out) and the frames with the
    most of them, inclusive (anywhere in the stack) and self (the innermost)."""
    if not path.exists():
        return {"file": str(path), "samples": 0}
    total = 0
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.rsplit(":", 1)[0] for f in stack.split(";")]  # without line numbers
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n

    def share(counts: dict[str, int], skip: int = 0) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[skip : skip + top]
        return [(frame, round(100 * n / total, 1)) for frame, n in ranked]

    # the outermost frames (runpy, the CLI, trio's run loop) are in every sample: skip them
    always = sum(1 for n in inclusive.values() if n == total)
    return {
        "file": str(path),
        "samples": total,
        "inclusive_pct": share(inclusive, always),
        "self_pct": share(own),
    }


# --- statistics ------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# --- rows ------------------------------------------------------------------------------------


def alternate(
    reps: int, a: Callable[[int], dict[str, Any]], b: Callable[[int], dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    runs_a: list[dict[str, Any]] = []
    runs_b: list[dict[str, Any]] = []
    for rep in range(reps):
        runs_a.append(a(rep))
        runs_b.append(b(rep))
    return runs_a, runs_b


def background_share(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean CPU seconds per wall second of each group over a set of phases."""
    keys = [k for k in runs[0]["cpu"] if k not in ("wall", "capacity")]
    wall = sum(r["cpu"]["wall"] for r in runs)
    return {k: round(sum(r["cpu"][k] for r in runs) / wall, 3) for k in keys}


def measured(meter: Meter, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    meter.start()
    result = action()
    result["cpu"] = {k: round(v, 3) for k, v in meter.stop().items()}
    return result


def throughput_row(
    s: Settings,
    meter: Meter,
    *,
    single: MeshNode,
    coordinator: MeshNode,
    stores: dict[str, Store],
    profiler: Profiler,
) -> dict[str, Any]:
    def phase(node: MeshNode, store: Store, label: str) -> Callable[[int], dict[str, Any]]:
        def run(rep: int) -> dict[str, Any]:
            tag = f"tp-{label}-{rep}"
            args = {
                "url": node.http_url,
                "agent": "echo",
                "tag": tag,
                "concurrency": CONCURRENCY,
                "seconds": s.throughput_s,
            }
            with profiler.phase(f"throughput-{label}", rep, node):
                result = measured(meter, lambda: loadgen("submit", args))
            result["drain_s"] = store.wait_drained(tag)
            result["store"] = store.completion(tag)
            # the node that took the HTTP load; its CPU over the load phase per accepted task
            group = "single" if node is single else "coordinator-1"
            result["http_node_ms_per_task"] = per_task(result, group, result["store"]["succeeded"])
            log(
                f"throughput {label} rep {rep}: {result['rps']:.0f} 202/s, "
                f"{result['store']['rate']:.0f} done/s, {group} "
                f"{result['http_node_ms_per_task']:.1f} ms CPU/task, "
                f"other CPU {result['cpu']['other']:.1f}s"
            )
            return result

        return run

    runs_a, runs_b = alternate(
        s.reps,
        phase(single, stores["single"], "single"),
        phase(coordinator, stores["cluster"], "cluster"),
    )
    return summarize(
        "throughput",
        "single node (A) vs coordinator + 2 workers (B), echo, 64 connections",
        runs_a,
        runs_b,
        {
            "202/s": lambda r: r["rps"],
            "completed/s": lambda r: r["store"]["rate"],
            "node ms/task": lambda r: r["http_node_ms_per_task"],
        },
    )


def scaleout_row(
    s: Settings,
    meter: Meter,
    *,
    coordinator: MeshNode,
    store: Store,
    profiler: Profiler,
    sleep_ms: int = SLEEP_MS,
) -> dict[str, Any]:
    name = "scale-out" if sleep_ms == SLEEP_MS else "scale-out-slots"

    def phase(agent: str, label: str) -> Callable[[int], dict[str, Any]]:
        def run(rep: int) -> dict[str, Any]:
            tag = f"so{sleep_ms}-{label}-{rep}"
            # long tasks: a longer warm-up (the first round of tasks), a window of 3 at least
            warmup = max(1.0, 2 * sleep_ms / 1000)
            window = max(s.scaleout_s, 3 * sleep_ms / 1000)
            args = {
                "url": coordinator.http_url,
                "agent": agent,
                "tag": tag,
                "input": {"ms": sleep_ms},
                "users": 2 * MAX_AGENTS,
                "seconds": window + warmup,
                "warmup": warmup,
            }
            with profiler.phase(f"{name}-{label}", rep, coordinator):
                result = measured(meter, lambda: loadgen("closed", args))
            result["drain_s"] = store.wait_drained(tag)
            result["store"] = store.completion(tag)
            result["coord_ms_per_task"] = per_task(result, "coordinator-1", result["completed"])
            wait = result["store"]["wait_ms"]
            log(
                f"{name} {label} rep {rep}: {result['rate']:.0f} done/s "
                f"on {result['store']['by_node']}, started after p50 {wait.get('p50', 0):.0f} "
                f"p90 {wait.get('p90', 0):.0f} ms, coordinator "
                f"{result['coord_ms_per_task']:.1f} ms CPU/task, "
                f"other CPU {result['cpu']['other']:.1f}s"
            )
            return result

        return run

    runs_a, runs_b = alternate(s.reps, phase("sleep_w1", "one"), phase("sleep", "two"))
    return summarize(
        name,
        f"sleep {sleep_ms} ms, {2 * MAX_AGENTS} closed-loop users: 1 worker (A) vs 2 (B)",
        runs_a,
        runs_b,
        {
            "completed/s": lambda r: r["rate"],
            "p50 ms": lambda r: r["p50_ms"],
            "coord ms/task": lambda r: r["coord_ms_per_task"],
        },
    )


def backlog_row(
    s: Settings, meter: Meter, *, coordinator: MeshNode, store: Store, profiler: Profiler
) -> dict[str, Any]:
    """A long queue at once: ``s.backlog`` sleep tasks in batches of 1,000 (``POST
    /api/tasks:batch``, a few requests: no HTTP cost per task), then the drain."""

    def phase(agent: str, label: str) -> Callable[[int], dict[str, Any]]:
        def run(rep: int) -> dict[str, Any]:
            tag = f"backlog-{label}-{rep}"
            item = {"agent": agent, "prompt": tag, "input": {"ms": SLEEP_MS}}

            def submit_and_drain() -> dict[str, Any]:
                left, started = s.backlog, time.monotonic()
                while left:
                    n = min(left, BATCH_SIZE)
                    reply = httpx.post(
                        f"{coordinator.http_url}/api/tasks:batch",
                        json={"tasks": [item] * n},
                        timeout=120,
                    )
                    reply.raise_for_status()
                    left -= n
                submitted = time.monotonic() - started
                return {"submit_s": submitted, "drain_s": store.wait_drained(tag, timeout=300)}

            with profiler.phase(f"backlog-{label}", rep, coordinator):
                result = measured(meter, submit_and_drain)
            result["store"] = done = store.completion(tag)
            result["rate"] = done["rate"]
            result["coord_ms_per_task"] = per_task(result, "coordinator-1", done["succeeded"])
            log(
                f"backlog {label} rep {rep}: {done['succeeded']} in {done['span_s']:.1f} s, "
                f"{done['rate']:.0f} done/s on {done['by_node']}, coordinator "
                f"{result['coord_ms_per_task']:.2f} ms CPU/task, "
                f"other CPU {result['cpu']['other']:.1f}s"
            )
            return result

        return run

    runs_a, runs_b = alternate(s.reps, phase("sleep_w1", "one"), phase("sleep", "two"))
    return summarize(
        "backlog",
        f"{s.backlog} sleep {SLEEP_MS} ms tasks queued at once (batches of {BATCH_SIZE}): "
        "1 worker (A) vs 2 (B)",
        runs_a,
        runs_b,
        {
            "completed/s": lambda r: r["rate"],
            "coord ms/task": lambda r: r["coord_ms_per_task"],
        },
    )


def per_task(result: dict[str, Any], group: str, tasks: int) -> float:
    """CPU milliseconds ``group`` used per task over the phase (0 without tasks)."""
    return 1000 * result["cpu"][group] / tasks if tasks else 0.0


def summarize(
    name: str,
    what: str,
    runs_a: list[dict[str, Any]],
    runs_b: list[dict[str, Any]],
    figures: dict[str, Callable[[dict[str, Any]], float]],
) -> dict[str, Any]:
    out: dict[str, Any] = {"row": name, "what": what, "reps": len(runs_a), "figures": {}}
    for label, get in figures.items():
        a = spread([get(r) for r in runs_a])
        b = spread([get(r) for r in runs_b])
        ratio = b["median"] / a["median"] if a["median"] else float("nan")
        out["figures"][label] = {"A": a, "B": b, "ratio": ratio}
    out["cpu_per_s"] = {"A": background_share(runs_a), "B": background_share(runs_b)}
    out["runs"] = {"A": runs_a, "B": runs_b}
    return out


def placement_row(
    s: Settings, meter: Meter, coordinator: MeshNode, store: Store, profiler: Profiler
) -> dict[str, Any]:
    args = {
        "url": coordinator.http_url,
        "agent": "echo",
        "tag": "placement",
        "count": s.latency_count,
        "gap": 0.05,
    }
    with profiler.phase("placement", 0, coordinator):
        result = measured(meter, lambda: loadgen("latency", args))
    ids = ", ".join(f"'{i}'" for i in result["ids"])
    rows = store.rows(
        f"SELECT extract(epoch FROM started_at - created_at) * 1000 FROM tasks WHERE id IN ({ids})"
    )
    in_store = [float(r[0]) for r in rows]
    ws = result.pop("ms")
    result.pop("ids")
    out = {
        "row": "placement",
        "what": "echo, one at a time 50 ms apart, to the coordinator; placed on a worker",
        "count": len(ws),
        "missing": result["missing"],
        "ws_202_to_running": {"p50_ms": quantile(ws, 50), "p99_ms": quantile(ws, 99)},
        "store_started_minus_created": {
            "p50_ms": quantile(in_store, 50),
            "p99_ms": quantile(in_store, 99),
        },
        "cpu": result["cpu"],
    }
    log(f"placement: {out['ws_202_to_running']} (ws), {out['store_started_minus_created']}")
    return out


def log_times(node: MeshNode, since: float) -> dict[str, float]:
    """Seconds after ``since`` (unix) of the coordinator's first suspected / failed / requeue
    lines about worker-2 (its log is JSON lines)."""
    found: dict[str, float] = {}
    for line in node.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        at = datetime.fromisoformat(entry["time"]).timestamp() - since
        if at < 0:
            continue
        message = str(entry.get("message", ""))
        if "worker-2" not in message:
            continue
        for key in ("suspected", "failed"):
            if f"-> {key}" in message.replace("PeerState.", "").lower() and key not in found:
                found[key] = round(at, 3)
        if "redistributing" in message and "requeued" not in found:
            found["requeued"] = round(at, 3)
    return found


def failover_once(nodes: dict[str, MeshNode], store: Store, label: str) -> dict[str, Any]:
    coordinator, victim = nodes["coordinator-1"], nodes["worker-2"]
    url = coordinator.http_url
    assert url is not None
    ids = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(FAILOVER_TASKS):
            body = {"agent": "sleep", "prompt": f"fo-{label}", "input": {"ms": LONG_SLEEP_MS}}
            reply = client.post("/api/tasks", json=body)
            reply.raise_for_status()
            ids.append(reply.json()["id"])
    quoted = ", ".join(f"'{i}'" for i in ids)

    def running_on() -> dict[str, str]:
        rows = store.rows(
            f"SELECT id, node_id FROM tasks WHERE id IN ({quoted}) AND status = 'running'"
        )
        return dict((r[0], r[1]) for r in rows)

    wait_for("failover tasks running", lambda: len(running_on()) == len(ids), 30, coordinator)
    on_victim = [i for i, n in running_on().items() if n == "worker-2"]
    assert victim.proc is not None
    killed = time.time()
    victim.proc.kill()  # SIGKILL
    victim.proc.wait()
    first = None
    every = None
    while time.time() - killed < 300:
        moved = [i for i, n in running_on().items() if i in on_victim and n == "worker-1"]
        now = time.time() - killed
        if moved and first is None:
            first = now
        if len(moved) == len(on_victim):
            every = now
            break
        time.sleep(0.05)
    result = {
        "victim_tasks": len(on_victim),
        "first_running_s": first,
        "all_running_s": every,
        "coordinator_log_s": log_times(coordinator, killed),
    }
    log(f"failover {label}: {result}")
    with httpx.Client(base_url=url, timeout=10) as client:
        for task_id in ids:
            client.post(f"/api/tasks/{task_id}/cancel")
    victim.start()
    wait_for(
        "worker-2 healthy again",
        lambda: coordinator.status().get("worker-2", {}).get("status") == "healthy",
        120,
        coordinator,
    )
    return result


def failover_row(
    s: Settings, main: dict[str, MeshNode], short: dict[str, MeshNode], stores: dict[str, Store]
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"short": [], "default": []}
    for rep in range(max(s.failover_reps_short, s.failover_reps_default)):
        if rep < s.failover_reps_short:
            runs["short"].append(failover_once(short, stores["short"], f"short-{rep}"))
        if rep < s.failover_reps_default:
            runs["default"].append(failover_once(main, stores["cluster"], f"default-{rep}"))
    out: dict[str, Any] = {"row": "failover", "runs": runs}
    for label, items in runs.items():
        values = [r["all_running_s"] for r in items if r["all_running_s"] is not None]
        if values:
            out[label] = spread(values)
    return out


# --- report ----------------------------------------------------------------------------------


def fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if value else "0"


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"machine: {m['cores']} cores, {m['cpu_model']}, Python {m['python']}; "
        f"{report['mode']} run, {report['settings']['reps']} reps A B A B..., "
        "medians [min-max]",
        f"brio {report['revision']['start']} (at the end: {report['revision']['end']}); "
        f"other processes before the start: {report['background_before_cores']:.2f} cores busy; "
        f"load average before {report['loadavg']['before'][0]:.2f}, "
        f"after {report['loadavg']['after'][0]:.2f}",
        "",
        f"| {'row':<15} | {'figure':<13} | {'A':<22} | {'B':<22} | {'B/A':>5} |",
        f"|{'-' * 17}|{'-' * 15}|{'-' * 24}|{'-' * 24}|{'-' * 7}|",
    ]
    for row in report["rows"]:
        if "figures" not in row:
            continue
        for label, fig in row["figures"].items():
            a, b = fig["A"], fig["B"]
            cell_a = f"{fmt(a['median'])} [{fmt(a['min'])}-{fmt(a['max'])}]"
            cell_b = f"{fmt(b['median'])} [{fmt(b['min'])}-{fmt(b['max'])}]"
            lines.append(
                f"| {row['row']:<15} | {label:<13} | {cell_a:<22} | {cell_b:<22} | "
                f"{fig['ratio']:>5.2f} |"
            )
    lines.append("")
    for row in report["rows"]:
        if "figures" in row:
            lines.append(f"{row['row']}: {row['what']}")
            for side in ("A", "B"):
                share = row["cpu_per_s"][side]
                parts = ", ".join(f"{k} {v:.2f}" for k, v in share.items())
                lines.append(f"  CPU s per s during {side}: {parts}")
        elif row["row"] == "placement":
            ws, st = row["ws_202_to_running"], row["store_started_minus_created"]
            lines.append(
                f"placement ({row['count']} tasks, {row['missing']} missing): 202 -> running "
                f"event p50 {ws['p50_ms']:.1f} ms, p99 {ws['p99_ms']:.1f} ms; store "
                f"started_at - created_at p50 {st['p50_ms']:.1f} ms, p99 {st['p99_ms']:.1f} ms"
            )
        elif row["row"] == "failover":
            for label in ("default", "short"):
                if label not in row:
                    continue
                sp = row[label]
                logs = [r["coordinator_log_s"] for r in row["runs"][label]]
                lines.append(
                    f"failover {label}: kill -9 -> all its tasks running on worker-1 "
                    f"{sp['median']:.2f} s [{sp['min']:.2f}-{sp['max']:.2f}] over "
                    f"{len(sp['values'])} reps; coordinator log (s after kill): {logs}"
                )
    for name, prof in report["profiles"].items():
        lines.append(f"profile {name}: {prof['samples']} samples in {prof['file']}")
        for frame, pct in prof.get("inclusive_pct", [])[:8]:
            lines.append(f"  {pct:5.1f}% {frame}")
    return "\n".join(lines)


@contextmanager
def stopping(nodes: list[MeshNode]) -> Iterator[None]:
    try:
        yield
    finally:
        for node in nodes:
            node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, under a minute")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON")
    parser.add_argument(
        "--only", default=",".join(ROWS), help=f"rows to run, comma-separated: {', '.join(ROWS)}"
    )
    parser.add_argument("--reps", type=int, help="repetitions of each A/B row")
    parser.add_argument(
        "--profile", type=Path, help="py-spy record the node under load into this directory"
    )
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="the py-spy binary")
    args = parser.parse_args()
    s = QUICK if args.quick else FULL
    if args.reps:
        s = replace(s, reps=args.reps)
    only = [row.strip() for row in args.only.split(",") if row.strip()]
    unknown = sorted(set(only) - set(ROWS))
    if unknown:
        parser.error(f"--only: unknown row(s) {', '.join(unknown)}; rows are {', '.join(ROWS)}")
    if args.profile is not None and args.py_spy is None:
        parser.error("--profile: py-spy not found; install it or name it with --py-spy")
    profiler = Profiler(args.profile, args.py_spy)
    load_before = os.getloadavg()
    started = time.time()
    code = revision()
    idle_meter = Meter({})
    idle_meter.start()
    time.sleep(3)
    before = idle_meter.stop()
    background = round(before["other"] / before["wall"], 2)
    log(f"before starting: other processes used {background:.2f} of {machine()['cores']} cores")
    with tempfile.TemporaryDirectory(prefix="brio-bench-") as tmp, PostgresServer() as pg:
        base = Path(tmp)
        # --quick: one cluster, with the short failure detection, for every row (no default
        # failover: it takes a minute or more per repetition).
        detection = SHORT_DETECTION if args.quick else {}
        main_nodes = cluster_nodes(base / "cluster", pg, "cluster", MAIN_IPS, detection)
        single = single_node(base, pg)
        every = [*main_nodes.values(), single]
        with stopping(every):
            log("starting the cluster and the single node")
            start_all(every)
            wait_cluster_ready(main_nodes)
            assert single.http_url is not None
            run_one(single.http_url, "echo", {}, single)
            stores = {"cluster": Store(pg, "cluster"), "single": Store(pg, "single")}
            groups: dict[str, Callable[[], list[int]]] = {"single": lambda: pid_of(single)}
            for name, node in main_nodes.items():
                groups[name] = lambda node=node: pid_of(node)  # type: ignore[misc]
            groups["postgres"] = postgres_pids(pg)
            meter = Meter(groups)
            coordinator = main_nodes["coordinator-1"]
            rows = []
            if "placement" in only:
                log("placement latency")
                rows.append(placement_row(s, meter, coordinator, stores["cluster"], profiler))
            if "throughput" in only:
                rows.append(
                    throughput_row(
                        s,
                        meter,
                        single=single,
                        coordinator=coordinator,
                        stores=stores,
                        profiler=profiler,
                    )
                )
            for row, sleep_ms in (("scale-out", SLEEP_MS), ("scale-out-slots", LONG_TASK_MS)):
                if row in only:
                    rows.append(
                        scaleout_row(
                            s,
                            meter,
                            coordinator=coordinator,
                            store=stores["cluster"],
                            profiler=profiler,
                            sleep_ms=sleep_ms,
                        )
                    )
            if "backlog" in only:
                rows.append(
                    backlog_row(
                        s,
                        meter,
                        coordinator=coordinator,
                        store=stores["cluster"],
                        profiler=profiler,
                    )
                )
            single.stop()
            if "failover" not in only:
                pass
            elif args.quick:
                stores["short"] = stores["cluster"]
                rows.append(failover_row(s, main_nodes, main_nodes, stores))
            else:
                short = cluster_nodes(base / "short", pg, "short", SHORT_IPS, SHORT_DETECTION)
                with stopping(list(short.values())):
                    log("starting the cluster with short failure detection")
                    start_all(list(short.values()))
                    wait_cluster_ready(short)
                    stores["short"] = Store(pg, "short")
                    rows.append(failover_row(s, main_nodes, short, stores))
    report = {
        "mode": "quick" if args.quick else "full",
        "settings": s.__dict__,
        "machine": machine(),
        "background_before_cores": background,
        "loadavg": {"before": load_before, "after": os.getloadavg()},
        "profiles": profiler.found,
        "revision": {"start": code, "end": revision()},
        "seconds": round(time.time() - started, 1),
        "rows": rows,
    }
    if not args.json_only:
        print(render(report))
        print()
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
