"""Row ``sim``: the simulator's speed and the heartbeat cost it models
(``bench/rows/sim_probe.py``).

- Speed: 20 seeds of the simulator's defaults (``python -m sim``'s mixed faults) one after
  another in one process (one core), with the scheduler (task rate 2, the default) beside the
  same seeds without tasks (task rate 0) as the baseline, alternating. Simulated seconds per
  wall second (as ``python -m sim`` reports it) and per CPU second of the process (the wall
  figure falls when other processes take the core; the CPU one much less), both timed around
  the seeds only.
- Heartbeat cost: one fault-free seed without tasks at 5, 50 and 200 simulated nodes in a
  full mesh: messages per simulated second (in all, and per node) and the simulator's CPU
  milliseconds per node and simulated second.
"""

from __future__ import annotations

import sys
from typing import Any

from bench.ab import alternate, figure
from bench.rows.common import Run, Settings, log, run_json

WITH = "with the scheduler"
WITHOUT = "without tasks"
NODES = (5, 50, 200)


def speed(seeds: int, task_rate: float) -> Run:
    command = [sys.executable, "-m", "bench.rows.sim_probe", "speed", str(seeds)]
    return run_json([*command, str(task_rate)], "sim_probe speed")


def heartbeat(nodes: int, seconds: float) -> Run:
    command = [sys.executable, "-m", "bench.rows.sim_probe", "heartbeat", str(nodes)]
    return run_json([*command, str(seconds)], f"sim_probe heartbeat {nodes}")


def run(settings: Settings) -> dict[str, Any]:
    seeds = 1 if settings.smoke else 20

    def system(rate: float) -> Any:
        def rep(index: int) -> Run:
            out = speed(seeds, rate)
            log(f"sim task-rate {rate} rep {index}: {out['sim_s_per_wall_s']:.0f} sim-s/wall-s")
            return out

        return rep

    done = alternate(settings.reps, {WITH: system(2.0), WITHOUT: system(0.0)})
    figures = [
        figure(
            f"speed, {seeds} seeds, 1 process",
            "sim-s per wall-s",
            "higher",
            done.runs,
            lambda r: r["sim_s_per_wall_s"],
            baseline=WITHOUT,
        ),
        figure(
            f"speed, {seeds} seeds, 1 process",
            "sim-s per CPU-s",
            "higher",
            done.runs,
            lambda r: r["sim_s_per_cpu_s"],
            baseline=WITHOUT,
        ),
    ]
    beats: dict[str, list[Run]] = {}
    seconds = 5.0  # five heartbeat periods of the simulator (1 s)
    for nodes in NODES[:1] if settings.smoke else NODES:
        result = heartbeat(nodes, seconds)
        log(f"sim heartbeat {nodes} nodes: {result['messages_per_s']:.0f} msg/s")
        beats[f"{nodes} nodes"] = [result]
    figures += [
        figure(
            "heartbeats: messages per simulated s",
            "msg/s",
            "lower",
            beats,
            lambda r: r["messages_per_s"],
            baseline=None,
        ),
        figure(
            "heartbeats: messages per node and simulated s",
            "msg/s",
            "lower",
            beats,
            lambda r: r["messages_per_node_s"],
            baseline=None,
        ),
        figure(
            "heartbeats: simulator CPU per node and simulated s",
            "ms",
            "lower",
            beats,
            lambda r: r["cpu_ms_per_node_s"],
            baseline=None,
        ),
    ]
    return {
        "row": "sim",
        "title": "the simulator: speed with the scheduler, heartbeat cost by mesh size",
        "available": True,
        "figures": figures,
        "notes": [f"heartbeat cost: one fault-free seed of {seconds:g} simulated s per size"],
        "order": done.order,
        "runs": {"speed": done.runs, "heartbeat": beats},
    }
