"""Chaos with real processes: two coordinators and three workers, mTLS, PostgreSQL.

At least 500 ``sleep`` tasks (10-200 ms each, from a seeded random generator) are submitted
through both coordinators while a worker is ``kill -9``ed and restarted every few seconds and
the primary coordinator is ``kill -9``ed once (and restarted). At the end:

- every task the submitter was given an id for, and every task in the store, is
  ``succeeded`` with its result (``slept_ms`` equal to the ``ms`` asked for);
- each task has exactly one recorded completion: an audit trigger, added by this test,
  records every committed change of a task's status or attempt with the database's clock, and
  each task entered ``succeeded`` once; the WebSocket of a coordinator did not send two
  ``task_completed`` events for one task (events are best effort, so a completion published
  by a node killed at that moment may be missing: at most one is checked, not exactly one);
- executions (the task entered ``running``: an agent started, once per attempt) >= tasks;
- most tasks ran on workers (the test weights them 4 to the coordinators' 1).

It prints tasks, executions, redistributions and the time it took. Every loop has a deadline:
the test stops by itself. ``CHAOS_SEED=N`` replays one seed (the seed drives the sleeps and
which worker is killed when; the timing of processes is not replayable).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from tests.certs import make_cluster_certs, tls_config
from tests.pg import PostgresServer
from tests.system.cluster import (
    MeshNode,
    health,
    is_up,
    launch,
    query,
    wait_for,
    wait_primary,
    write_cluster,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(600)]

IPS = {
    "coord-1": "127.0.0.51",
    "coord-2": "127.0.0.52",
    "worker-1": "127.0.0.53",
    "worker-2": "127.0.0.54",
    "worker-3": "127.0.0.55",
}
ROLES = {n: "coordinator" if n.startswith("coord") else "worker" for n in IPS}
COORDINATORS = [n for n in IPS if ROLES[n] == "coordinator"]
WORKERS = [n for n in IPS if ROLES[n] == "worker"]
DB = "chaos"
TASKS = 520
SUBMIT_WINDOW = 20.0  # seconds over which the tasks are submitted
KILL_EVERY = 3.0  # seconds between worker kills
DOWN_FOR = 1.0  # seconds a killed worker stays down
PRIMARY_KILL_AT = 8.0  # seconds into the run
# Bounds, far above what a quiet 2-core machine needs (about 20 s of submission and chaos, a
# few seconds to settle) so that a loaded one still passes; they only make the test stop.
SUBMIT_LIMIT = 180.0  # every task is accepted by then, or the test fails
CHAOS_LIMIT = 200.0  # the chaos loop ends by then whatever happens
SETTLE = 90.0  # after the chaos, every task must be done within this
MIN_WORKER_KILLS = 3
SLEEP_MS = (10, 200)

AUDIT = """
CREATE TABLE task_audit (
    task_id TEXT, old_status TEXT, new_status TEXT, old_attempt INT, new_attempt INT,
    node_id TEXT, written_at TIMESTAMPTZ DEFAULT clock_timestamp()
);
CREATE FUNCTION audit_task() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_audit (task_id, new_status, new_attempt, node_id)
            VALUES (NEW.id, NEW.status, NEW.attempt, NEW.node_id);
    ELSIF OLD.status IS DISTINCT FROM NEW.status OR OLD.attempt IS DISTINCT FROM NEW.attempt THEN
        INSERT INTO task_audit (task_id, old_status, new_status, old_attempt, new_attempt, node_id)
            VALUES (NEW.id, OLD.status, NEW.status, OLD.attempt, NEW.attempt, NEW.node_id);
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER task_audit AFTER INSERT OR UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION audit_task();
"""

WEIGHTS = "".join(
    f'[[mesh.load_balancing.weights]]\nnode_id = "{n}"\nweight = {4 if n in WORKERS else 1}\n\n'
    for n in IPS
)


@dataclass
class Cluster:
    nodes: dict[str, MeshNode]
    pg: PostgresServer

    def rows(self, sql: str) -> list[list[str]]:
        return query(self.pg, DB, sql)

    def coordinators(self) -> list[MeshNode]:
        return [self.nodes[n] for n in COORDINATORS]

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{node.log()[-3000:]}" for n, node in self.nodes.items())


@pytest.fixture
def cluster(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("chaos")
    certs = make_cluster_certs(base / "certs", {n: [ip] for n, ip in IPS.items()})
    database = postgres_server.create_database(DB)
    tables: dict[str, dict[str, Any]] = {
        "mesh.failure_detection": {
            "heartbeat_interval": 0.3,
            "heartbeat_timeout": 1.0,
            "suspicion_threshold": 3,
            "remove_delay": 300,
            "degraded_latency": 2.0,
        },
        "mesh.lease": {"lease_duration": 3.0, "election_timeout": [0.5, 1.2]},
        "mesh.load_balancing": {"strategy": "weighted"},
        "logging": {"level": "info"},
    }
    tls = {n: tls_config(certs, n) for n in IPS}
    nodes = write_cluster(base, IPS, ROLES, database, tls, tables)
    for node in nodes.values():
        node.config.write_text(node.config.read_text() + "\n" + WEIGHTS)
    try:
        for node in nodes.values():
            launch(node)
        wait_for("every node up", lambda: all(is_up(n) for n in nodes.values()), 60)
        postgres_server.sql(AUDIT, DB)
        yield Cluster(nodes, postgres_server)
    finally:
        for node in nodes.values():
            node.stop()
        postgres_server.drop_database(DB)


@dataclass
class Submitter:
    """Submits the sleep tasks, no faster than TASKS over SUBMIT_WINDOW seconds, from a few
    threads, each request to the next coordinator in turn; a failed request is retried (same
    idempotency key) on the other one until ``deadline``."""

    urls: list[str]
    sleeps: list[int]
    deadline: float
    threads: int = 8
    ids: dict[int, str] = field(default_factory=dict)
    retries: int = 0
    gave_up: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # why requests were retried
    latencies: list[float] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        start = time.monotonic()
        todo = iter(enumerate(self.sleeps))
        lock = threading.Lock()

        def worker() -> None:
            clients = [httpx.Client(base_url=u, timeout=5) for u in self.urls]
            try:
                while True:
                    with lock:
                        item = next(todo, None)
                    if item is None:
                        return
                    i, ms = item
                    pause = start + SUBMIT_WINDOW * i / len(self.sleeps) - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    self._one(clients, i, ms)
            finally:
                for c in clients:
                    c.close()

        pool = [threading.Thread(target=worker, daemon=True) for _ in range(self.threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(max(0.0, self.deadline - time.monotonic()) + 10)
        self.done.set()

    def _one(self, clients: list[httpx.Client], i: int, ms: int) -> None:
        body = {
            "agent": "sleep",
            "prompt": f"chaos {i}",
            "input": {"ms": ms},
            "idempotency_key": f"chaos-{i}",
        }
        turn = i
        while time.monotonic() < self.deadline:
            client = clients[turn % len(clients)]
            sent = time.monotonic()
            try:
                reply = client.post("/api/tasks", json=body)
                if reply.status_code in (200, 202):
                    self.latencies.append(time.monotonic() - sent)
                    self.ids[i] = reply.json()["id"]
                    return
                self.errors[f"{reply.status_code} {reply.text[:300]}"] += 1
            except httpx.HTTPError as exc:
                self.errors[type(exc).__name__] += 1
            self.retries += 1
            turn += 1
            time.sleep(0.1)
        self.gave_up.append(i)


@dataclass
class Listener:
    """Counts ``task_completed`` events per task on one coordinator's WebSocket, reconnecting
    when the coordinator goes away, until ``stop`` is set."""

    url: str
    stop: threading.Event
    completed: Counter[str] = field(default_factory=Counter)
    running: Counter[tuple[str, int]] = field(default_factory=Counter)
    connections: int = 0
    overflows: int = 0

    def run(self) -> None:
        trio.run(self._main)

    async def _main(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(
                trio_websocket.HandshakeError, trio_websocket.ConnectionClosed, OSError
            ):
                await self._listen()
            await trio.sleep(0.2)

    async def _listen(self) -> None:
        ws_url = self.url.replace("http://", "ws://") + "/ws"
        async with trio_websocket.open_websocket_url(ws_url, connect_timeout=2) as ws:
            await ws.send_message(json.dumps({"action": "subscribe", "all": True}))
            self.connections += 1
            while not self.stop.is_set():
                with trio.move_on_after(0.5):
                    event = json.loads(await ws.get_message())
                    kind = event.get("type")
                    if kind == "task_completed":
                        self.completed[event["task_id"]] += 1
                    elif kind == "task_update" and event["data"].get("status") == "running":
                        self.running[(event["task_id"], event["data"]["attempt"])] += 1
                    elif kind == "error":
                        self.overflows += 1


def _kill(node: MeshNode) -> None:
    assert node.proc is not None
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(10)


@dataclass
class Chaos:
    """Kills a worker every KILL_EVERY seconds or so (one at a time: the next only once the
    last one is back), restarting each after about DOWN_FOR seconds, and the primary once at
    PRIMARY_KILL_AT seconds (restarted once another coordinator is primary). ``step`` never
    blocks for long, so that restarts overlap with everything else."""

    cluster: Cluster
    rng: random.Random
    start: float
    kills: list[str] = field(default_factory=list)
    down: dict[str, float] = field(default_factory=dict)  # node -> when to launch it again
    starting: set[str] = field(default_factory=set)
    primary_killed: str | None = None
    primary_epoch: int = 0
    killed_at: float = 0.0
    failover: float | None = None
    next_kill: float = 0.0

    def __post_init__(self) -> None:
        self.next_kill = self.start + KILL_EVERY
        self.order = self.rng.sample(WORKERS, len(WORKERS))

    def step(self) -> None:
        now = time.monotonic()
        nodes = self.cluster.nodes
        for name, when in list(self.down.items()):
            if name == self.primary_killed and self.failover is None:
                others = [n for n in self.cluster.coordinators() if n.node_id != name]
                new = [
                    n.node_id
                    for n in others
                    if (h := health(n))
                    and h["role"] == "primary"
                    and h["epoch"] > self.primary_epoch
                ]
                if not new:
                    continue
                self.failover = now - self.killed_at
                print(f"primary {name} killed; {new[0]} primary after {self.failover:.2f} s")
            if now >= when:
                del self.down[name]
                launch(nodes[name])
                self.starting.add(name)
        for name in list(self.starting):
            if is_up(nodes[name]):
                self.starting.discard(name)
                self.next_kill = max(self.next_kill, time.monotonic() + KILL_EVERY / 2)
        if self.down or self.starting:
            return
        if self.primary_killed is None and now - self.start >= PRIMARY_KILL_AT:
            primary = wait_primary(self.cluster.coordinators(), 20)
            self.primary_epoch = int((health(primary) or {"epoch": 0})["epoch"])
            _kill(primary)
            self.killed_at = time.monotonic()
            self.primary_killed = primary.node_id
            self.kills.append(f"{primary.node_id} (primary)")
            self.down[primary.node_id] = self.killed_at + DOWN_FOR
        elif now >= self.next_kill:
            victim = self.order[len(self.kills) % len(self.order)]
            _kill(nodes[victim])
            self.kills.append(victim)
            self.down[victim] = time.monotonic() + DOWN_FOR * self.rng.uniform(0.5, 1.5)
            self.next_kill = time.monotonic() + KILL_EVERY * self.rng.uniform(0.7, 1.3)

    @property
    def worker_kills(self) -> int:
        return sum(1 for k in self.kills if k in WORKERS)

    def finished(self) -> bool:
        return (
            self.primary_killed is not None
            and self.worker_kills >= MIN_WORKER_KILLS
            and not self.down
            and not self.starting
        )


def test_chaos(cluster: Cluster) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    print(f"\nchaos seed {seed} (CHAOS_SEED={seed} to replay the choices)")
    began = time.monotonic()
    primary = wait_primary(cluster.coordinators(), 30)

    def all_connected() -> bool:
        h = health(primary)
        return h is not None and h["mesh"]["connected_peers"] == len(IPS) - 1

    wait_for("the primary connected to every node", all_connected, 30, primary)
    ready_after = time.monotonic() - began

    stop = threading.Event()
    urls = [str(n.http_url) for n in cluster.coordinators()]
    # One WebSocket client (on the first coordinator, reconnecting while it is down): a
    # subscriber to every event costs its coordinator CPU that the test would rather spend on
    # tasks; one is enough to see a task completed twice.
    listeners = [Listener(urls[0], stop)]
    sleeps = [rng.randint(*SLEEP_MS) for _ in range(TASKS)]
    submitter = Submitter(urls, sleeps, deadline=time.monotonic() + SUBMIT_LIMIT)
    threads = [threading.Thread(target=x.run, daemon=True) for x in listeners]
    for t in threads:
        t.start()
    wait_for("the listener connected", lambda: all(x.connections for x in listeners), 10)

    chaos_start = time.monotonic()
    submitting = threading.Thread(target=submitter.run, daemon=True)
    submitting.start()
    chaos = Chaos(cluster, rng, chaos_start)
    try:
        hard_stop = chaos_start + CHAOS_LIMIT
        while time.monotonic() < hard_stop and not (submitter.done.is_set() and chaos.finished()):
            if submitter.done.is_set() and chaos.worker_kills >= MIN_WORKER_KILLS:
                chaos.next_kill = math.inf  # enough: only bring the last ones back
            chaos.step()
            time.sleep(0.1)
        chaos_took = time.monotonic() - chaos_start
        assert submitter.done.is_set(), "the submitter did not finish"
        assert chaos.finished(), f"the chaos did not finish: {chaos}"

        def settled() -> list[list[str]] | None:
            rows = cluster.rows("SELECT status, count(*) FROM tasks GROUP BY status ORDER BY 1")
            left = [r for r in rows if r[0] not in ("succeeded", "failed", "cancelled")]
            return None if left else rows

        try:
            wait_for("every task finished", settled, SETTLE)
        except AssertionError:
            stuck = cluster.rows(
                "SELECT id, status, attempt, node_id, target_node FROM tasks "
                "WHERE status NOT IN ('succeeded', 'failed', 'cancelled') ORDER BY seq LIMIT 20"
            )
            raise AssertionError(
                f"tasks not finished (seed {seed}): {stuck}\n{cluster.logs()}"
            ) from None
        finished = time.monotonic()
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    kills = chaos.kills
    failover = chaos.failover or 0.0

    # --- what the store says -----------------------------------------------------------------
    assert not submitter.gave_up, (
        f"submissions never accepted: {submitter.gave_up[:10]}; {submitter.errors}"
    )
    assert len(submitter.ids) == TASKS
    ids = set(submitter.ids.values())
    assert len(ids) == TASKS  # one task per idempotency key
    rows = cluster.rows("SELECT id, status, node_id, attempt, input, result FROM tasks")
    assert {r[0] for r in rows} == ids, "the store holds tasks the submitter was not given"
    by_id = {r[0]: r for r in rows}
    bad = [r for r in rows if r[1] != "succeeded"]
    assert not bad, f"not succeeded (seed {seed}): {bad[:10]}"
    for r in rows:
        assert json.loads(r[5]) == {"slept_ms": float(json.loads(r[4])["ms"])}, r

    audit = cluster.rows(
        "SELECT task_id, old_status, new_status, old_attempt, new_attempt, node_id "
        "FROM task_audit ORDER BY written_at"
    )
    completions = Counter(a[0] for a in audit if a[2] == "succeeded")
    twice = {t: n for t, n in completions.items() if n != 1}
    assert set(completions) == ids and not twice, f"completions != 1 (seed {seed}): {twice}"
    starts = Counter((a[0], a[4]) for a in audit if a[2] == "running")
    executions = sum(starts.values())
    twice_started = {k: n for k, n in starts.items() if n > 1}
    assert not twice_started, f"an attempt started twice (seed {seed}): {twice_started}"
    assert executions >= TASKS
    # each task's completion is under its final attempt, on the node that ran that attempt
    final_run = {a[0]: (a[4], a[5]) for a in audit if a[2] == "running"}
    for task_id, r in by_id.items():
        assert final_run[task_id] == (r[3], r[2]), (task_id, final_run[task_id], r)
    redistributed = sum(
        1 for a in audit if a[3] is not None and a[3] != "" and int(a[4]) > int(a[3])
    )
    ran_on = Counter(r[2] for r in rows)
    on_workers = sum(n for node, n in ran_on.items() if node in WORKERS)
    assert on_workers > TASKS / 2, ran_on

    # --- what the coordinators' WebSockets said ------------------------------------------------
    for listener in listeners:
        doubled = {t: n for t, n in listener.completed.items() if n > 1}
        assert not doubled, f"two task_completed events for one task on {listener.url}: {doubled}"
        assert set(listener.completed) <= ids
    seen = set().union(*(set(x.completed) for x in listeners))

    logs = {n: node.log() for n, node in cluster.nodes.items()}
    by_primary = sum(
        int(line.split("redistributing ", 1)[1].split()[0])
        for n in COORDINATORS
        for line in logs[n].splitlines()
        if "redistributing " in line
    )
    at_restart = sum(log.count("left unfinished by a previous run") for log in logs.values())
    tracebacks = {n: log.count("Traceback") for n, log in logs.items() if "Traceback" in log}

    total = finished - chaos_start
    print(
        f"tasks {TASKS}, executions {executions}, redistributions {redistributed} "
        f"(by the primary {by_primary}, requeued by restarted nodes {at_restart}), "
        f"time {total:.1f} s (submission and chaos {chaos_took:.1f} s, cluster ready after "
        f"{ready_after:.1f} s)\n"
        f"kills: {', '.join(kills)}; primary failover {failover:.2f} s; submit retries "
        f"{submitter.retries}, submit latency median {statistics.median(submitter.latencies):.3f} s"
        f" max {max(submitter.latencies):.2f} s\n"
        f"completed where: {dict(sorted(ran_on.items()))}; task_completed events seen "
        f"{len(seen)}/{TASKS} (per coordinator: {[len(x.completed) for x in listeners]}); "
        f"tracebacks in logs: {tracebacks or 'none'}"
    )
