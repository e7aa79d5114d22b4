"""The Ray baseline: a driver that starts a local Ray (``num_cpus=2``) and times a no-op remote
function, batched (``ray.get([noop.remote() for _ in range(batch)])`` back to back) and one at
a time. Prints one JSON object.

Run it in a network namespace of its own, where the only interface is loopback, because Ray
binds 0.0.0.0 by default: ``unshare -n sh -c 'ip link set lo up && python -m
bench.baselines.ray_driver JSON-ARGS'`` (``bench/rows/batch.py`` does this). It also asks Ray
for 127.0.0.1 as the node's address. Ray is imported by name so that mypy checks this file
without the ``bench`` extra installed.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from typing import Any


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _noop() -> None:
    return None


def run(args: dict[str, Any]) -> dict[str, Any]:
    ray = importlib.import_module("ray")
    began = time.perf_counter()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="warning",
        log_to_driver=False,
    )
    init_s = time.perf_counter() - began

    noop = ray.remote(_noop)
    size = args["batch"]
    warm_until = time.perf_counter() + args["warmup"]
    while time.perf_counter() < warm_until:
        ray.get([noop.remote() for _ in range(size)])
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < args["seconds"]:
        ray.get([noop.remote() for _ in range(size)])
        done += size
    elapsed = time.perf_counter() - started
    single: list[float] = []
    until = time.perf_counter() + args["single_seconds"]
    while time.perf_counter() < until:
        begin = time.perf_counter()
        ray.get(noop.remote())
        single.append((time.perf_counter() - begin) * 1000)
    ray.shutdown()
    return {
        "init_s": init_s,
        "tasks": done,
        "elapsed": elapsed,
        "rate": done / elapsed,
        "single_p50_ms": _quantile(single, 0.5),
        "single_p99_ms": _quantile(single, 0.99),
        "single_count": len(single),
    }


def main() -> None:
    result = run(json.loads(sys.argv[1]))
    times = os.times()
    result["driver_cpu_s"] = times.user + times.system
    result["children_cpu_s"] = times.children_user + times.children_system
    print(json.dumps(result))


if __name__ == "__main__":
    main()
