"""Row ``mesh``: the mesh's gRPC ``Call`` (``agent.invoke`` of ``echo`` on a real node) beside a
raw grpclib server and client, at 50 and 100 callers, by running ``bench/mesh_calls.py
--json`` once per repetition and caller count. Each of its runs measures the raw baseline and
then Brio in one process on loopback (plaintext), so the repetitions alternate raw, Brio, raw,
Brio. Figures: requests per second, p50 and p99 per system, and Brio's added p99 (its p99
minus the raw p99 of the same run).
"""

from __future__ import annotations

import sys
from typing import Any

from bench.ab import figure
from bench.cpu import Meter
from bench.rows.common import Run, Settings, log, measured, run_json

CALLERS = (50, 100)
RAW = "raw grpclib"
BRIO = "brio Call"


def once(callers: int, seconds: float) -> Run:
    command = [sys.executable, "bench/mesh_calls.py", "--json"]
    args = ["--callers", str(callers), "--duration", str(seconds)]
    return run_json(command + args, "bench/mesh_calls.py", 600)


def split(report: Run) -> dict[str, Run]:
    """mesh_calls' results by system: the raw baseline and Brio's Call."""
    out: dict[str, Run] = {}
    for result in report["results"]:
        if result["case"].endswith("(baseline)"):
            out[RAW] = result
        elif result["case"].startswith("brio Call"):
            out[BRIO] = result
    brio, raw = out[BRIO], out[RAW]
    brio["added_p99_ms"] = brio["p99_ms"] - raw["p99_ms"]
    return out


def run(settings: Settings) -> dict[str, Any]:
    meter = Meter({})
    figures: list[dict[str, Any]] = []
    runs: dict[str, dict[str, list[Run]]] = {}
    for callers in CALLERS if not settings.smoke else CALLERS[:1]:
        per: dict[str, list[Run]] = {RAW: [], BRIO: []}
        for rep in range(settings.reps):
            report = measured(meter, lambda c=callers: once(c, settings.seconds))  # type: ignore[misc]
            for system, result in split(report).items():
                result["cpu"] = report["cpu"]
                per[system].append(result)
            log(
                f"mesh {callers} callers rep {rep}: raw {per[RAW][-1]['rps']:.0f}/s, brio "
                f"{per[BRIO][-1]['rps']:.0f}/s, other CPU {report['cpu']['other']:.1f} s"
            )
        runs[str(callers)] = per
        figures += [
            figure(
                f"{callers} callers: calls/s",
                "calls/s",
                "higher",
                per,
                lambda r: r["rps"],
                baseline=RAW,
            ),
            figure(
                f"{callers} callers: p50", "ms", "lower", per, lambda r: r["p50_ms"], baseline=RAW
            ),
            figure(
                f"{callers} callers: p99", "ms", "lower", per, lambda r: r["p99_ms"], baseline=RAW
            ),
            figure(
                f"{callers} callers: added p99",
                "ms",
                "lower",
                {BRIO: per[BRIO]},
                lambda r: r["added_p99_ms"],
                baseline=None,
            ),
        ]
    return {
        "row": "mesh",
        "title": "mesh Call beside raw grpclib, loopback, plaintext, one process each run",
        "available": True,
        "figures": figures,
        "notes": [],
        "runs": runs,
    }
