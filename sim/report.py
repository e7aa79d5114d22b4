"""Turning many seeds' results into one summary: a dict for ``--json``, and text for people.

The text leads with what was run and, loudly, any safety measure switched off; then what the
faults did, the failover figures, liveness, the violations with the command that replays each,
and the speed. Figures are true (simulated) seconds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from sim.config import SimConfig
from sim.invariants import LIVENESS
from sim.stats import SeedResult

#: Violations listed one by one in the text; the JSON has them all.
LISTED = 20


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (sorted or not), ``p`` in (0, 100]."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(
    config: SimConfig,
    results: list[SeedResult],
    wall: float,
    replay: Callable[[int], str],
) -> dict[str, Any]:
    faults: Counter[str] = Counter()
    failovers: list[float] = []
    transfers: list[float] = []
    placement: list[float] = []
    for result in results:
        faults.update(result.faults)
        failovers.extend(result.failovers)
        transfers.extend(result.transfers)
        placement.extend(result.placement)
    finished = [r for r in results if r.violation is None or r.violation.invariant in LIVENESS]
    held = [r for r in finished if r.violation is None]
    simulated = sum(r.simulated for r in results)
    seeds = [r.seed for r in results]
    return {
        "seeds": {"first": min(seeds, default=0), "count": len(results)},
        "config": {
            "nodes": config.nodes,
            "coordinators": config.coordinators,
            "duration": config.duration,
            "faults": [str(f) for f in config.faults],
            "lease_duration": config.lease_duration,
            "election_timeout": list(config.election_timeout),
            "max_clock_drift": config.max_clock_drift,
            "heal_window": config.heal_window,
            "max_events": config.event_budget,
            "task_rate": config.task_rate,
            "task_capacity": config.task_capacity,
        },
        "unsafe": sorted(str(u) for u in config.unsafe),
        "faults_injected": dict(sorted(faults.items())),
        "elections": sum(r.elections for r in results),
        "writes_accepted": sum(r.writes for r in results),
        "failover": _spread(failovers),
        "transfer": _spread(transfers),
        "tasks": {
            "submitted": sum(r.tasks_submitted for r in results),
            "acknowledged": sum(r.tasks_acked for r in results),
            "completed": sum(r.tasks_completed for r in results),
            "executions": sum(r.executions for r in results),
            "redistributed": sum(r.redistributed for r in results),
            "requeued_at_restart": sum(r.restart_requeued for r in results),
            "placement": _spread(placement),
        },
        "liveness": {
            "checked": len(finished),
            "held": len(held),
            "primary_bound": round(config.primary_bound, 3),
            "membership_bound": round(config.membership_bound, 3),
            "primary_after_heal": _spread(
                [r.primary_after_heal for r in held if r.primary_after_heal is not None]
            ),
            "membership_after_heal": _spread(
                [r.members_after_heal for r in held if r.members_after_heal is not None]
            ),
            "task_bound": round(config.task_bound, 3) if config.tasks else None,
            "tasks_after_heal": _spread(
                [r.tasks_after_heal for r in held if r.tasks_after_heal is not None]
            ),
        },
        "violations": [
            {
                "seed": r.seed,
                "invariant": r.violation.invariant,
                "time": round(r.violation.time, 6),
                "detail": r.violation.detail,
                "replay": replay(r.seed),
            }
            for r in results
            if r.violation is not None
        ],
        "events": sum(r.events for r in results),
        "simulated_seconds": round(simulated, 3),
        "wall_seconds": round(wall, 3),
        "sim_seconds_per_wall_second": round(simulated / wall, 1) if wall > 0 else None,
    }


def _spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    return {
        "count": len(values),
        **{f"p{p}": round(percentile(values, p), 3) for p in (50, 90, 99)},
        "max": round(max(values), 3),
    }


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def banner(unsafe: list[str]) -> str:
    return (
        f"!!! SAFETY MEASURES OFF (test only): {', '.join(unsafe)}. "
        "Violations are expected: this run shows what the measure prevents. !!!"
    )


def render(summary: dict[str, Any]) -> str:
    """The summary as text a person reads top to bottom."""
    config, seeds = summary["config"], summary["seeds"]
    lines: list[str] = []
    if summary["unsafe"]:
        lines.append(banner(summary["unsafe"]))
    first, count = seeds["first"], seeds["count"]
    span = f"seed {first}" if count == 1 else f"seeds {first}..{first + count - 1} ({count})"
    low, high = config["election_timeout"]
    lines.append(
        f"brio sim: {span}, {config['nodes']} nodes ({config['coordinators']} candidates), "
        f"{config['duration']:g} simulated s each, the last {config['heal_window']:g} s "
        "fault-free"
    )
    lines.append(
        f"  lease {config['lease_duration']:g} s, election timeout {low:g}-{high:g} s, "
        f"max clock drift {config['max_clock_drift']:g}; "
        f"faults: {', '.join(config['faults']) or 'none'}"
    )
    injected = summary["faults_injected"]
    shown = ", ".join(f"{kind} {n}" for kind, n in injected.items()) or "none"
    lines.append(f"faults injected: {sum(injected.values())} episodes ({shown})")
    per_seed = summary["elections"] / max(count, 1)
    lines.append(
        f"elections won: {summary['elections']} ({per_seed:.1f} per seed); "
        f"writes accepted by the store: {summary['writes_accepted']}"
    )
    tasks = summary["tasks"]
    if config["task_rate"]:
        lines.append(
            f"tasks: {tasks['submitted']} submitted, {tasks['acknowledged']} acknowledged, "
            f"{tasks['completed']} completed; {tasks['executions']} executions, "
            f"{tasks['redistributed']} redistributed from nodes down, "
            f"{tasks['requeued_at_restart']} requeued by restarted workers "
            f"({config['task_rate']:g}/s, {config['task_capacity']} slots per node)"
        )
        pl = tasks["placement"]
        if pl["count"]:
            lines.append(
                f"placement, from queued to assigned (n={pl['count']}): p50 {_seconds(pl['p50'])}, "
                f"p90 {_seconds(pl['p90'])}, p99 {_seconds(pl['p99'])}, max {_seconds(pl['max'])}"
            )
    fo = summary["failover"]
    if fo["count"]:
        lines.append(
            f"failover, from losing the primary to the next one (n={fo['count']}): "
            f"p50 {_seconds(fo['p50'])}, p90 {_seconds(fo['p90'])}, "
            f"p99 {_seconds(fo['p99'])}, max {_seconds(fo['max'])}"
        )
    else:
        lines.append("failover: no primary was lost")
    tr = summary["transfer"]
    if tr["count"]:  # only runs with ``stop`` hand the lease over
        lines.append(
            f"handover, from a stopping primary's transfer to the next primary "
            f"(n={tr['count']}): p50 {_seconds(tr['p50'])}, p90 {_seconds(tr['p90'])}, "
            f"p99 {_seconds(tr['p99'])}, max {_seconds(tr['max'])}"
        )
    live = summary["liveness"]
    if not live["checked"]:
        lines.append("liveness after the heal: not judged (no seed ran to the end)")
    else:
        lines.append(
            f"liveness after the heal: held in {live['held']} of {live['checked']} seeds that "
            f"ran to the end; fenced primary after {_seconds(live['primary_after_heal']['max'])} "
            f"at worst (bound {live['primary_bound']:.1f} s), everyone healthy after "
            f"{_seconds(live['membership_after_heal']['max'])} (bound "
            f"{live['membership_bound']:.1f} s)"
            + (
                f", every task finished after {_seconds(live['tasks_after_heal']['max'])} "
                f"(bound {live['task_bound']:.1f} s)"
                if live["task_bound"] is not None
                else ""
            )
        )
    violations = summary["violations"]
    if not violations:
        lines.append("violations: none")
    else:
        lines.append(f"VIOLATIONS: {len(violations)} of {count} seeds")
        for v in violations[:LISTED]:
            lines.append(
                f"  seed {v['seed']}: {v['invariant']} at t={v['time']:.6f}: {v['detail']}"
            )
            lines.append(f"    replay: {v['replay']}")
        if len(violations) > LISTED:
            lines.append(f"  ... and {len(violations) - LISTED} more (all of them with --json)")
    rate = summary["sim_seconds_per_wall_second"]
    lines.append(
        f"speed: {summary['simulated_seconds']:.0f} simulated s in "
        f"{summary['wall_seconds']:.1f} wall s = "
        f"{'-' if rate is None else f'{rate:.0f}'} sim-s/wall-s ({summary['events']} events)"
    )
    if summary["unsafe"]:
        lines.append(banner(summary["unsafe"]))
    return "\n".join(lines)
