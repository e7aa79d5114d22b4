"""The heartbeat-cost probe of the ``sim`` row, run in its own process: ``python -m
bench.rows.sim_heartbeat NODES SECONDS``. One fault-free seed without tasks, every node a peer
of every other (the simulator's full mesh), the first 3 coordinators; counts the messages
the simulated network carries (each call of ``Network.transit``, a request or an answer,
heartbeats and lease messages alike) and the process's CPU time. Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from sim.config import SimConfig
from sim.world import World


def measure(nodes: int, seconds: float) -> dict[str, Any]:
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
    print(json.dumps(measure(int(sys.argv[1]), float(sys.argv[2]))))
