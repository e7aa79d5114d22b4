"""Row ``sim``: the simulator's speed and the heartbeat cost it models.

- Speed: ``python -m sim --seeds N --jobs 1 --json`` (one process, so one core), the default
  mixed faults, with the scheduler (``--task-rate 2``, the default) beside the same seeds
  without tasks (``--task-rate 0``) as the baseline, alternating. Figure: simulated seconds per
  wall second as the simulator reports it, and per CPU second of its process (the wall figure
  falls when other processes take the core; the CPU one does not).
- Heartbeat cost (``bench/rows/sim_heartbeat.py``): one fault-free seed without tasks at 5, 50
  and 200 simulated nodes in a full mesh: messages per simulated second (in all, and per
  node) and the simulator's CPU milliseconds per node and simulated second.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from bench.ab import alternate, figure
from bench.rows.common import Run, Settings, log, run_json

WITH = "with the scheduler"
WITHOUT = "without tasks"
NODES = (5, 50, 200)


def _child_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def speed(seeds: int, task_rate: float) -> Run:
    before = _child_cpu()
    command = [sys.executable, "-m", "sim", "--seeds", str(seeds), "--jobs", "1", "--json"]
    # exit 1: a seed violated an invariant; its speed still counts (and the count is kept)
    report = run_json([*command, "--task-rate", str(task_rate)], "python -m sim", ok=(0, 1))
    cpu = _child_cpu() - before
    return {
        "sim_s_per_wall_s": report["sim_seconds_per_wall_second"],
        "sim_s_per_cpu_s": report["simulated_seconds"] / cpu if cpu else None,
        "simulated_s": report["simulated_seconds"],
        "wall_s": report["wall_seconds"],
        "cpu_s": cpu,
        "events": report["events"],
        "violations": len(report["violations"]),
    }


def heartbeat(nodes: int, seconds: float) -> Run:
    command = [sys.executable, "-m", "bench.rows.sim_heartbeat", str(nodes), str(seconds)]
    return run_json(command, f"sim_heartbeat {nodes}")


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
