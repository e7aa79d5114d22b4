"""Row ``batch``: ``POST /api/tasks:batch`` (one request carrying many tasks, each with its own
idempotency key) beside Ray (``num_cpus=2``, a no-op remote function, batched).

Brio: one node on SQLite (``synchronous = FULL``); ``CONNECTIONS`` loops each post a batch of
``BATCH`` ``echo`` tasks and wait for every one's ``task_completed`` on one WebSocket before
posting the next. Ray: ``bench/baselines/ray_driver.py`` in a network namespace of its own
(``unshare -n``: Ray binds 0.0.0.0 by default), ``ray.get`` of ``BATCH`` ``noop.remote()``
back to back; its start-up (about 10 s) is outside the measured window. Both: tasks completed
per second after the warm-up. While Ray runs, ``ss -ltnp`` in the suite's own namespace is
sampled: any listener of Ray's on 0.0.0.0 there is reported (there should be none).

If this node has no ``POST /api/tasks:batch`` yet, the Brio side says "not available" and
Ray still runs, so its figure is there to compare with.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx

from bench.ab import alternate, figure
from bench.cpu import Meter
from bench.rows.common import (
    ROOT,
    Run,
    Settings,
    Unavailable,
    clean_env,
    loadgen,
    log,
    measured,
    need,
    need_module,
    start_brio,
)

BATCH = 100
# Two batches in flight: every event of theirs (about 4 a task) fits the node's buffer of
# 1,000 per WebSocket subscriber, beyond which it closes the socket as a slow consumer.
CONNECTIONS = 2
RAY_PROCESSES = ("ray", "raylet", "gcs_server", "plasma", "dashboard")


def batch_available(url: str) -> str | None:
    """None when the node takes batches; else why not."""
    body = {"tasks": [{"agent": "echo", "prompt": "probe"}]}
    reply = httpx.post(url + "/api/tasks:batch", json=body, timeout=10)
    if reply.status_code == 200:
        return None
    return f"POST /api/tasks:batch answered {reply.status_code} (not built on this commit yet)"


def wildcard_listeners() -> list[str]:
    """Lines of ``ss -ltnp`` (this namespace) for Ray's processes on 0.0.0.0 or [::]."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=False).stdout
    return [
        " ".join(line.split())
        for line in out.splitlines()
        if any(w in line for w in ("0.0.0.0:", "[::]:", "*:"))
        and any(f'"{p}' in line for p in RAY_PROCESSES)
    ]


def ray_once(settings: Settings) -> Run:
    args = {
        "batch": BATCH,
        "warmup": settings.warmup,
        "seconds": settings.seconds,
        "single_seconds": settings.single_seconds,
    }
    python = shlex.quote(sys.executable)
    driver = f"{python} -m bench.baselines.ray_driver {shlex.quote(json.dumps(args))}"
    command = f"ip link set lo up && {driver}"
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            seen.extend(line for line in wildcard_listeners() if line not in seen)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        done = subprocess.run(
            ["unshare", "-n", "sh", "-c", command],
            cwd=ROOT,
            env=clean_env({"RAY_USAGE_STATS_ENABLED": "0"}),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        stop.set()
        watcher.join()
    if done.returncode != 0:
        raise RuntimeError(f"the Ray driver failed: {done.stderr[-3000:]}")
    result: Run = json.loads(done.stdout.strip().splitlines()[-1])
    result["host_wildcard_listeners"] = seen
    return result


def run(settings: Settings) -> dict[str, Any]:
    notes: list[str] = []
    systems: dict[str, Callable[[int], Run]] = {}
    with ExitStack() as stack:
        node = start_brio("batch-sqlite", settings.tmp, max_agents=64)
        stack.callback(node.stop)
        meter = Meter({"brio-sqlite": node.pids})
        missing = batch_available(node.url)
        if missing is None:

            def brio_rep(index: int) -> Run:
                args = {
                    "url": node.url,
                    "agent": "echo",
                    "tag": f"batch-{index}",
                    "batch": BATCH,
                    "connections": CONNECTIONS,
                    "seconds": settings.seconds,
                    "warmup": settings.warmup,
                }
                out = measured(meter, lambda: loadgen("batch", args))
                done = out["completed"]
                out["server_cpu_ms_per_task"] = (
                    out["cpu"]["brio-sqlite"] * 1000 / done if done else None
                )
                log(f"batch brio rep {index}: {out['rate']:.0f} tasks/s, errors {out['errors']}")
                return out

            systems["brio-sqlite batch"] = brio_rep
        else:
            notes.append(f"brio batch: not available: {missing}")
        ray_reason = None
        if settings.smoke:
            ray_reason = "the smoke run has no Ray"
        else:
            try:
                need_module("ray")
                need("unshare", "it comes with util-linux")
                if os.geteuid() != 0:
                    raise Unavailable("unshare -n needs root here")
            except Unavailable as exc:
                ray_reason = str(exc)
        if ray_reason is None:

            def ray_rep(index: int) -> Run:
                out = measured(meter, lambda: ray_once(settings))
                log(
                    f"batch ray rep {index}: {out['rate']:.0f} tasks/s (init {out['init_s']:.1f}"
                    f" s), wildcard listeners here: {out['host_wildcard_listeners']}"
                )
                return out

            systems["ray"] = ray_rep
        else:
            notes.append(f"ray not measured: {ray_reason}")
        if not systems:
            raise Unavailable("; ".join(notes))
        done = alternate(settings.reps, systems)
    baseline = "ray" if "ray" in done.runs else None
    listeners = sorted({x for r in done.runs.get("ray", []) for x in r["host_wildcard_listeners"]})
    if "ray" in done.runs:
        notes.append(
            "Ray's listeners on 0.0.0.0 in the suite's namespace during its runs: "
            + (", ".join(listeners) if listeners else "none (it ran in its own namespace)")
        )
    return {
        "row": "batch",
        "title": f"batch submits, {BATCH} echo tasks per request, {CONNECTIONS} connections",
        "available": True,
        "figures": [
            figure(
                "tasks/s, batched",
                "tasks/s",
                "higher",
                done.runs,
                lambda r: r["rate"],
                baseline=baseline,
            ),
        ],
        "notes": notes,
        "order": done.order,
        "runs": done.runs,
        "time": time.time(),
    }
