"""Row ``submit``: single durable submissions end to end, Brio (SQLite ``synchronous = FULL``;
PostgreSQL with fsync on) beside Celery 5 on Redis (``acks_late``, 2 prefork workers, the
append-only file fsynced on every write).

Each repetition of each system is two phases, each a ``bench/suite_load.py`` process:

1. 64 users in a closed loop for ``seconds``: submit a no-op ``echo`` task and wait for its
   result (Brio: the ``task_completed`` event on one WebSocket, then one ``GET`` of the task;
   Celery: ``AsyncResult.get``), then submit the next. The WebSocket subscribes to
   completions only, coalesced (``"types": ["task_completed"], "coalesce": true``), as a
   client that wants only results would: one event per task, not the five a watcher of
   everything gets, and several to a frame when tasks end together. Tasks per second after
   the warm-up; the server's CPU over the phase divided by the tasks it completed (Brio: the
   node, plus PostgreSQL's postmaster and backends for the PostgreSQL system; Celery: the
   worker with its prefork children, plus redis-server).
2. One user for ``single_seconds``: the p50 of submit to result.

Every system's servers run during the whole row (idle while another is measured).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from bench.ab import alternate, figure
from bench.cpu import Meter
from bench.rows.common import (
    DurablePostgres,
    Run,
    Server,
    Settings,
    Unavailable,
    clean_env,
    loadgen,
    log,
    measured,
    need_module,
    postgres_pids,
    redis_server,
    start_brio,
    tree,
)

USERS = 64
SERVER_PARTS = {"brio-sqlite": "the node", "brio-postgres": "the node + PostgreSQL"}


def _celery_worker(stack: ExitStack, settings: Settings) -> tuple[str, Callable[[], list[int]]]:
    import subprocess
    import sys

    from bench.rows.common import ROOT

    need_module("celery")
    redis_url, redis_proc = stack.enter_context(redis_server(settings.tmp))
    log_path = settings.tmp / "celery.log"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.baselines.celery_app",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "2",
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=clean_env({"BENCH_REDIS_URL": redis_url}),
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
    )

    def stop() -> None:
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

    stack.callback(stop)
    # Ready once a task comes back (the load generator waits for its results).
    probe = loadgen(
        "celery",
        {"redis_url": redis_url, "users": 1, "seconds": 1.0, "warmup": 0.0, "tag": "probe"},
        timeout=120,
    )
    if not probe["completed"]:
        raise RuntimeError(f"the Celery worker answered nothing: {log_path.read_text()[-2000:]}")
    return redis_url, lambda: [*tree(worker.pid), redis_proc.pid]


def _brio_phases(
    settings: Settings, system: str, url: str
) -> tuple[Callable[[int], Run], Callable[[], Run]]:
    def load(users: int, seconds: float, tag: str) -> Run:
        args = {"url": url, "agent": "echo", "tag": tag, "users": users}
        return loadgen("brio", {**args, "seconds": seconds, "warmup": settings.warmup})

    return (
        lambda i: load(USERS, settings.seconds, f"{system}-{i}"),
        lambda: load(1, settings.single_seconds, f"{system}-one"),
    )


def _celery_phases(
    settings: Settings, redis_url: str
) -> tuple[Callable[[int], Run], Callable[[], Run]]:
    def load(users: int, seconds: float, tag: str) -> Run:
        args = {"redis_url": redis_url, "users": users, "tag": tag}
        return loadgen("celery", {**args, "seconds": seconds, "warmup": settings.warmup})

    return (
        lambda i: load(USERS, settings.seconds, f"celery-{i}"),
        lambda: load(1, settings.single_seconds, "celery-one"),
    )


def run(settings: Settings) -> dict[str, Any]:
    notes: list[str] = []
    systems: dict[str, Callable[[int], Run]] = {}
    groups: dict[str, Callable[[], list[int]]] = {}
    with ExitStack() as stack:
        sqlite = start_brio("submit-sqlite", settings.tmp, max_agents=USERS)
        stack.callback(sqlite.stop)
        groups["brio-sqlite"] = sqlite.pids
        brio_servers: dict[str, Server] = {"brio-sqlite": sqlite}
        if not settings.smoke:
            try:
                pg = stack.enter_context(DurablePostgres())
                node = start_brio(
                    "submit-postgres",
                    settings.tmp,
                    database_url=pg.create_database("submit"),
                    max_agents=USERS,
                )
                stack.callback(node.stop)
                brio_servers["brio-postgres"] = node
                groups["brio-postgres"] = lambda: [*node.pids(), *postgres_pids(pg)]
            except Exception as exc:  # PostgreSQL missing: the other systems still run
                notes.append(f"brio-postgres not measured: {exc}")
        redis_url = None
        if not settings.smoke:
            try:
                redis_url, celery_pids = _celery_worker(stack, settings)
                groups["celery"] = celery_pids
            except (Unavailable, RuntimeError) as exc:
                notes.append(f"celery not measured: {exc}")
        meter = Meter(groups)

        def phases(system: str, many: Callable[[int], Run], one: Callable[[], Run]) -> None:
            def rep(index: int) -> Run:
                out = measured(meter, lambda: many(index))
                tasks = out["completed"]
                out["server_cpu_ms_per_task"] = out["cpu"][system] * 1000 / tasks if tasks else None
                out["single"] = one()
                log(
                    f"submit {system} rep {index}: {out['rate']:.0f} tasks/s, 1-client p50 "
                    f"{out['single']['p50_ms']:.2f} ms, other CPU {out['cpu']['other']:.1f} s"
                )
                return out

            systems[system] = rep

        for system, server in brio_servers.items():
            many, one = _brio_phases(settings, system, server.url)
            phases(system, many, one)
        if redis_url is not None:
            many, one = _celery_phases(settings, redis_url)
            phases("celery", many, one)
        done = alternate(settings.reps, systems)
    baseline = "celery" if "celery" in done.runs else None
    if baseline is None:
        notes.append("no baseline in this run: the ratios are missing")
    return {
        "row": "submit",
        "title": "single durable submits, echo, end to end (result from the event + one GET)",
        "available": True,
        "figures": [
            figure(
                f"tasks/s, {USERS} clients",
                "tasks/s",
                "higher",
                done.runs,
                lambda r: r["rate"],
                baseline=baseline,
            ),
            figure(
                "p50, 1 client",
                "ms",
                "lower",
                done.runs,
                lambda r: r["single"]["p50_ms"],
                baseline=baseline,
            ),
            figure(
                "server CPU per task",
                "ms",
                "lower",
                done.runs,
                lambda r: r["server_cpu_ms_per_task"],
                baseline=baseline,
            ),
        ],
        "server_cpu_counts": {**SERVER_PARTS, "celery": "the worker + its children + redis"},
        "notes": notes,
        "order": done.order,
        "runs": done.runs,
    }
