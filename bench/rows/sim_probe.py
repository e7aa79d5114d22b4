"""The probes of the ``sim`` row, each run in its own process; each prints one JSON object.

- ``python -m bench.rows.sim_probe speed SEEDS TASK_RATE``: seeds 0..SEEDS-1 with the
  simulator's defaults (``python -m sim``'s, mixed faults) and the given task rate, one after
  another in this process (one core); simulated seconds per wall second and per CPU second,
  both timed around the seeds alone (not the interpreter's start and imports).
- ``python -m bench.rows.sim_probe heartbeat NODES SECONDS``: one fault-free seed without
  tasks, every node a peer of every other (the simulator's full mesh), the first 3
  coordinators; counts the messages the simulated network carries (each call of
  ``Network.transit``, a request or an answer, heartbeats and lease messages alike) and the
  process's CPU time.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from sim.config import SimConfig
from sim.world import World, run_seed


def speed(seeds: int, task_rate: float) -> dict[str, Any]:
    config = SimConfig(task_rate=task_rate)
    cpu = time.process_time()
    wall = time.perf_counter()
    results = [run_seed(config, seed) for seed in range(seeds)]
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    simulated = sum(r.simulated for r in results)
    return {
        "seeds": seeds,
        "task_rate": task_rate,
        "simulated_s": simulated,
        "wall_s": wall,
        "cpu_s": cpu,
        "sim_s_per_wall_s": simulated / wall,
        "sim_s_per_cpu_s": simulated / cpu if cpu else None,
        "events": sum(r.events for r in results),
        "violations": sum(r.violation is not None for r in results),
    }


def heartbeat(nodes: int, seconds: float) -> dict[str, Any]:
    config = SimConfig(
        nodes=nodes, coordinators=3, duration=seconds, faults=(), task_rate=0.0,
        max_events=10**9,
    )  # fmt: skip
    world = World(config, 0)
    sent = 0
    transit: Callable[..., list[float]] = world.network.transit

    def counted(src: str, dst: str, rng: Any = None) -> list[float]:
        nonlocal sent
        sent += 1
        return transit(src, dst, rng)

    world.network.transit = counted  # type: ignore[method-assign]
    cpu = time.process_time()
    wall = time.perf_counter()
    result = world.run()
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    return {
        "nodes": nodes,
        "simulated_s": result.simulated,
        "violation": None if result.violation is None else str(result.violation),
        "messages": sent,
        "messages_per_s": sent / result.simulated,
        "messages_per_node_s": sent / result.simulated / nodes,
        "events": result.events,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_ms_per_node_s": cpu * 1000 / (nodes * result.simulated),
    }


if __name__ == "__main__":
    mode, first, second = sys.argv[1:4]
    if mode == "speed":
        print(json.dumps(speed(int(first), float(second))))
    else:
        print(json.dumps(heartbeat(int(first), float(second))))
