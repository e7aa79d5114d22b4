"""Spurious failovers under load: three coordinators and a worker (real processes, PostgreSQL
from ``tests/pg.py``, default lease settings unless overridden) while both cores are saturated by
CPU burners at the nodes' own priority and by clients submitting tasks, for a bounded time.

Issue 12 target 4 asks for no spurious failover on a loaded machine: the figure is the number of
new epochs during the run (0 wanted). Also measured, by polling every coordinator's ``/health``
about ten times a second: the primary's smallest ``lease_remaining`` seen (how close its lease
came to running out: each renewal round that a majority answers moves it up to
``0.95 * lease_duration``), and the slowest ``/health/live`` answer (a stand-in for the worst stall
of a node's trio loop, the loop that also runs the lease driver: ``/health/live`` touches no
store).

Run: ``python -m bench.lease_saturation [--seconds 300] [--burners 2] [--clients 4]
[--lease-duration S --election-timeout MIN,MAX]``; prints one JSON object. A measurement, not a
test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests/ is not installed
    sys.path.insert(0, str(ROOT))

from tests.pg import PostgresServer  # noqa: E402
from tests.system.cluster import MeshNode, query, wait_primary, write_cluster  # noqa: E402

IPS = {
    "coordinator-1": "127.0.0.31",
    "coordinator-2": "127.0.0.32",
    "coordinator-3": "127.0.0.33",
    "worker-1": "127.0.0.34",
}
ROLES = {n: "worker" if n.startswith("worker") else "coordinator" for n in IPS}
COORDINATORS = [n for n in IPS if ROLES[n] == "coordinator"]
#: The clients pause while this many tasks are queued, so that the backlog stays bounded.
MAX_QUEUED = 300
POLL_S = 0.1
BURNER = "while True: pass"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Clients:
    """Threads that submit ``echo`` and short ``sleep`` tasks to the coordinators in turn,
    each as fast as its submits are taken, pausing while the queue is long."""

    def __init__(self, nodes: list[MeshNode], count: int, stop_at: float) -> None:
        self.nodes = nodes
        self.stop_at = stop_at
        self.paused = threading.Event()
        self.accepted = 0
        self.refused = 0
        self.errors = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(count)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(30)

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(timeout=5) as http:
            while time.monotonic() < self.stop_at:
                if self.paused.is_set():
                    time.sleep(0.05)
                    continue
                node = rng.choice(self.nodes)
                assert node.http_url is not None
                if rng.random() < 0.5:
                    body: dict[str, Any] = {"agent": "echo", "prompt": f"load-{index}"}
                else:
                    body = {"agent": "sleep", "prompt": "", "input": {"ms": rng.randint(10, 200)}}
                try:
                    status = http.post(node.http_url + "/api/tasks", json=body).status_code
                except httpx.HTTPError:
                    status = 0
                with self._lock:
                    if status == 202:
                        self.accepted += 1
                    elif status == 0:
                        self.errors += 1
                    else:
                        self.refused += 1
                if status != 202:
                    time.sleep(0.05)


def poll(http: httpx.Client, node: MeshNode) -> tuple[dict[str, Any] | None, float | None]:
    """The node's ``/health`` body (None when it does not answer), and how long its
    ``/health/live`` took to answer (None: no answer): that route touches no store, so its
    time is the HTTP path and the wait for the node's trio loop."""
    assert node.http_url is not None
    started = time.monotonic()
    took: float | None
    try:
        http.get(node.http_url + "/health/live")
        took = time.monotonic() - started
    except httpx.HTTPError:
        took = None
    try:
        body: dict[str, Any] | None = http.get(node.http_url + "/health").json()
    except (httpx.HTTPError, ValueError):
        body = None
    return body, took


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    tables: dict[str, dict[str, Any]] = {"logging": {"level": "info", "format": "json"}}
    lease: dict[str, Any] = {}
    if args.lease_duration is not None:
        lease["lease_duration"] = args.lease_duration
    if args.election_timeout is not None:
        lease["election_timeout"] = [float(x) for x in args.election_timeout.split(",")]
    if lease:
        tables["mesh.lease"] = lease
    with ExitStack() as stack:
        pg = stack.enter_context(PostgresServer())
        database = pg.create_database("saturation")
        nodes = write_cluster(
            base,
            IPS,
            ROLES,
            database,
            {n: {} for n in IPS},
            tables,
            {"cluster_secret": secrets.token_hex(16), "coordinators_run_agents": True},
        )
        for node in nodes.values():
            stack.callback(node.stop)
            node.start()
        coordinators = [nodes[n] for n in COORDINATORS]
        first = wait_primary(coordinators, 60)
        time.sleep(2)  # let the first epoch settle before counting
        epoch0 = int(query(pg, database, "SELECT epoch FROM fence")[0][0])
        log(f"primary {first.node_id} at epoch {epoch0}; loading for {args.seconds:g} s")
        burners = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(args.burners)]
        for burner in burners:
            stack.callback(burner.wait)
            stack.callback(burner.kill)
        started = time.monotonic()
        stop_at = started + args.seconds
        clients = Clients(coordinators, args.clients, stop_at)
        clients.start()
        epochs: set[int] = {epoch0}
        primaries: set[tuple[str, int]] = set()
        remaining: list[float] = []
        latencies: list[float] = []
        worst: dict[str, float] = {}
        unanswered = 0
        next_check = started
        with httpx.Client(timeout=5) as http:
            while time.monotonic() < stop_at:
                for node in coordinators:
                    body, took = poll(http, node)
                    if took is not None:
                        latencies.append(took)
                        worst[node.node_id] = max(worst.get(node.node_id, 0.0), took)
                    if body is None or took is None:
                        unanswered += 1
                        continue
                    epochs.add(int(body.get("epoch", 0)))
                    if body.get("role") == "primary":
                        primaries.add((node.node_id, int(body["epoch"])))
                        left = body.get("mesh", {}).get("lease_remaining")
                        if left is not None:
                            remaining.append(float(left))
                if time.monotonic() >= next_check:
                    queued = int(
                        query(pg, database, "SELECT count(*) FROM tasks WHERE status = 'queued'")[
                            0
                        ][0]
                    )
                    if queued > MAX_QUEUED:
                        clients.paused.set()
                    else:
                        clients.paused.clear()
                    next_check = time.monotonic() + 1.0
                time.sleep(POLL_S)
        clients.join()
        elapsed = time.monotonic() - started
        epoch1 = int(query(pg, database, "SELECT epoch FROM fence")[0][0])
        done = query(
            pg, database, "SELECT status, count(*) FROM tasks GROUP BY status ORDER BY status"
        )
        logs = {n: nodes[n].log() for n in COORDINATORS}
        became = {n: text.count("lease: primary for epoch") for n, text in logs.items()}
        stepped = {n: text.count("lease: stepped down") for n, text in logs.items()}
        reasons = Counter(
            line.split("lease: stepped down from epoch ", 1)[1].split(": ", 1)[1].split('"')[0]
            for text in logs.values()
            for line in text.splitlines()
            if "lease: stepped down from epoch " in line
        )
    return {
        "seconds": round(elapsed, 1),
        "burners": args.burners,
        "clients": args.clients,
        "lease": lease or "defaults",
        "epoch_at_start": epoch0,
        "epoch_at_end": epoch1,
        "new_epochs": epoch1 - epoch0,
        "epochs_seen": sorted(epochs),
        "primaries_seen": sorted(primaries),
        "elections_won_per_node": became,
        "step_downs_per_node": stepped,
        "step_down_reasons": dict(reasons),
        "live_latency_max_per_node_s": {n: round(v, 3) for n, v in worst.items()},
        "lease_remaining_min_s": min(remaining) if remaining else None,
        "lease_remaining_p01_s": quantile(remaining, 0.01),
        "live_latency_p50_s": quantile(latencies, 0.5),
        "live_latency_p99_s": quantile(latencies, 0.99),
        "live_latency_max_s": max(latencies) if latencies else None,
        "health_unanswered": unanswered,
        "health_polls": len(latencies),
        "submits": {
            "accepted": clients.accepted,
            "refused": clients.refused,
            "errors": clients.errors,
        },
        "tasks_by_status": {status: int(n) for status, n in done},
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--burners", type=int, default=2, help="busy-loop processes")
    parser.add_argument("--clients", type=int, default=4, help="submitting threads")
    parser.add_argument("--lease-duration", type=float, default=None)
    parser.add_argument("--election-timeout", default=None, help="MIN,MAX")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 1200:
        parser.error("--seconds must be in (0, 1200]")
    with tempfile.TemporaryDirectory(prefix="brio-saturation-") as tmp:
        result = measure(args, Path(tmp))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
