"""Row ``cluster``: ``bench/cluster.py`` (its own process, ``--json-only``), its rows carried
into the suite's table: scale-out (1 worker against 2, ``sleep`` 100 ms) and throughput (the
single node against coordinator + 2 workers on the same PostgreSQL), with placement latency
and worker failover as notes. ``bench/cluster.py`` does its own A B A B alternation and
repetitions (3; ``--quick`` 2 with short phases when the suite runs with ``--smoke``).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from typing import Any

from bench.rows.common import ROOT, Settings, Unavailable

SIDES = {
    "throughput": ("single node", "coordinator + 2 workers"),
    "scale-out": ("1 worker", "2 workers"),
    "scale-out-slots": ("1 worker", "2 workers"),
}


def sides(row: dict[str, Any]) -> tuple[str, str]:
    """Names for A and B: known rows by name, others from ``what`` ("x (A) vs y (B)")."""
    if row["row"] in SIDES:
        return SIDES[row["row"]]
    found = re.search(r"([^:,]+?) \(A\) vs ([^,]+?) \(B\)", row.get("what", ""))
    return (found[1].strip(), found[2].strip()) if found else ("A", "B")


def convert(report: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """``bench/cluster.py``'s report as the suite's figures (A is the baseline) and notes."""
    figures: list[dict[str, Any]] = []
    notes: list[str] = []
    for row in report["rows"]:
        name = row["row"]
        if "figures" in row:
            a_name, b_name = sides(row)
            for label, fig in row["figures"].items():
                systems = {
                    a_name: {**fig["A"], "n": len(fig["A"]["values"])},
                    b_name: {**fig["B"], "n": len(fig["B"]["values"])},
                }
                figures.append(
                    {
                        "figure": f"{name}: {label}",
                        "unit": label.split(" ")[-1] if " " in label else label,
                        "better": "lower" if "ms" in label else "higher",
                        "baseline": a_name,
                        "systems": systems,
                        "ratio": {b_name: fig["ratio"] if math.isfinite(fig["ratio"]) else None},
                    }
                )
        elif name == "placement":
            ws, st = row["ws_202_to_running"], row["store_started_minus_created"]
            notes.append(
                f"placement, {row['count']} tasks: 202 -> running event p50 {ws['p50_ms']:.1f} "
                f"ms, p99 {ws['p99_ms']:.1f} ms; started_at - created_at p50 "
                f"{st['p50_ms']:.1f} ms, p99 {st['p99_ms']:.1f} ms"
            )
        elif name == "failover":
            for label in ("default", "short"):
                if label in row:
                    sp = row[label]
                    notes.append(
                        f"worker failover ({label} detection): kill -9 -> its tasks running "
                        f"elsewhere {sp['median']:.2f} s [{sp['min']:.2f}-{sp['max']:.2f}]"
                    )
    return figures, notes


def run(settings: Settings) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.cluster", "--json-only"]
    if settings.smoke:
        command.append("--quick")
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        tail = done.stderr[-2000:]
        if "PostgresUnavailable" in tail or "initdb" in tail:
            raise Unavailable(f"bench/cluster.py needs the PostgreSQL server binaries: {tail}")
        raise RuntimeError(f"bench/cluster.py failed: {tail}")
    report: dict[str, Any] = json.loads(done.stdout)
    figures, notes = convert(report)
    return {
        "row": "cluster",
        "title": "bench/cluster.py on PostgreSQL (its own A B alternation)",
        "available": True,
        "figures": figures,
        "notes": notes,
        "report": report,
    }
