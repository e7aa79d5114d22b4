"""The benchmark suite (issue 12): every row measures Brio beside its baseline in the same run,
alternating A B A B, and prints one table plus the whole report as JSON.

Run: ``python -m bench.suite [--rows submit,serve] [--reps N] [--smoke] [--json-only]``
(``just bench``; ``just bench-smoke`` is the seconds-long run CI uses to prove the harness).
Progress goes to stderr. Asserts nothing: it prints figures.

Rows (``bench/rows/``; docs/benchmarks.md says what each figure means):

- ``submit``: single durable submits end to end, Brio on SQLite and on PostgreSQL (fsync on)
  beside Celery + Redis;
- ``batch``: ``POST /api/tasks:batch`` beside Ray's batched no-op remote function;
- ``cluster``: ``bench/cluster.py`` (scale-out, cluster against single node, placement,
  worker failover), run as its own process;
- ``failover``: ``kill -9`` of the primary of 3 coordinators + a worker, default settings: time
  to a new primary that has placed a new task;
- ``mesh``: mesh ``Call`` beside raw grpclib at 50 and 100 callers (``bench/mesh_calls.py``);
- ``serve``: ``brio serve`` ready time and idle RSS beside a bare hypercorn + quart-trio app;
  1,000 concurrent ``sleep`` agents: added RSS and ``/health/live`` latency meanwhile;
- ``sim``: the simulator's speed with the scheduler, and heartbeat cost at 5, 50, 200 nodes.

Every row records the CPU other processes used while it ran (``bench/cpu.py``): on a shared
machine that says how far its figures can be trusted.

A row that cannot run here (no redis-server, no PostgreSQL, an endpoint not built yet) says
why in the table and the JSON and is not a failure. Exit status: 0; 1 when a row failed (its
traceback on stderr, the other rows still reported); 2 for bad flags.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.ab import table_rows
from bench.cpu import Meter, machine
from bench.rows import batch, cluster_rows, common, failover, mesh, serve, sim, submit
from bench.rows.common import ROOT, Settings, Unavailable, log

RowRun = Callable[[Settings], dict[str, Any]]

#: name -> (what runs it, whether the smoke run includes it)
ROWS: dict[str, tuple[RowRun, bool]] = {
    "submit": (submit.run, True),
    "batch": (batch.run, True),
    "cluster": (cluster_rows.run, False),
    "failover": (failover.run, False),
    "mesh": (mesh.run, False),
    "serve": (serve.run, True),
    "sim": (sim.run, True),
}

FULL: dict[str, float] = {"reps": 3, "seconds": 8.0, "warmup": 1.0, "single_seconds": 3.0}
SMOKE: dict[str, float] = {"reps": 1, "seconds": 1.5, "warmup": 0.3, "single_seconds": 0.5}


def revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", "brio") else "")


def load_average() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def run_row(name: str, runner: RowRun, settings: Settings) -> dict[str, Any]:
    """One row, with the machine's CPU meanwhile; a row that cannot run here says why."""
    meter = Meter({})
    meter.start()
    began = time.time()
    try:
        row = runner(settings)
    except Unavailable as exc:
        row = {"row": name, "available": False, "reason": str(exc)}
    except Exception as exc:  # one broken row must not lose the others' figures
        log(f"row {name} failed:\n{traceback.format_exc()}")
        row = {"row": name, "available": False, "failed": True, "reason": f"failed: {exc!r}"}
    used = meter.stop()
    row["seconds"] = round(time.time() - began, 1)
    row["machine_cpu"] = {
        "cores_busy": round(used["machine"] / used["wall"], 2),
        "other_cores": round(used["other"] / used["wall"], 2),
        "load_average": load_average(),
    }
    return row


def render(report: dict[str, Any], console: Console) -> None:
    m = report["machine"]
    console.print(
        f"Brio benchmark suite, {report['mode']} run: {report['settings']['reps']} reps, "
        f"systems alternating; medians [min-max]; ratio = system / baseline\n"
        f"machine: {m['cores']} cores, {m['cpu_model']}, Python {m['python']}, kernel "
        f"{m['kernel']}; brio {report['revision']['start']} (end {report['revision']['end']})\n"
        f"before the start, other processes kept {report['background_before_cores']:.2f} "
        f"cores busy; load average {report['load_before']}",
        highlight=False,
        markup=False,
    )
    table = Table(show_lines=False)
    for column in ("row", "figure", "unit, better", "system", "median [min-max]", "ratio", "n"):
        table.add_column(column, justify="right" if column in ("ratio", "n") else "left")
    for line in table_rows(report["rows"]):
        table.add_row(*(Text(cell) for cell in line))  # no rich markup: [min-max]
    console.print(table)
    for row in report["rows"]:
        cpu = row["machine_cpu"]
        console.print(
            f"{row['row']}: {row['seconds']} s; other processes {cpu['other_cores']:.2f} "
            f"cores (machine {cpu['cores_busy']:.2f} busy); load {cpu['load_average']}",
            highlight=False,
            markup=False,
        )
        for note in row.get("notes", []):
            console.print(f"  - {note}", highlight=False, markup=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--rows", default="", help=f"comma list of rows (default all: {','.join(ROWS)})"
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions per system (3; smoke 1)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, Brio rows only (CI)")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON")
    args = parser.parse_args(argv)
    chosen = [r.strip() for r in args.rows.split(",") if r.strip()] or [
        name for name, (_, in_smoke) in ROWS.items() if in_smoke or not args.smoke
    ]
    unknown = [r for r in chosen if r not in ROWS]
    if unknown:
        parser.error(
            f"argument --rows: unknown row {', '.join(unknown)} (choose from {', '.join(ROWS)})"
        )
    if args.reps is not None and args.reps < 1:
        parser.error(f"argument --reps: expected at least 1, got {args.reps}")
    sizes = dict(SMOKE if args.smoke else FULL)
    if args.reps is not None:
        sizes["reps"] = args.reps
    started = time.time()
    idle = Meter({})
    idle.start()
    time.sleep(0.5 if args.smoke else 3)
    before = idle.stop()
    report: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "settings": sizes,
        "machine": machine(),
        "background_before_cores": round(before["other"] / before["wall"], 2),
        "load_before": load_average(),
        "revision": {"start": revision()},
        "rows": [],
    }
    log(f"before starting: other processes used {report['background_before_cores']:.2f} cores")
    with tempfile.TemporaryDirectory(prefix="brio-suite-") as tmp:
        for name in chosen:
            runner, _ = ROWS[name]
            row_tmp = Path(tmp) / name
            row_tmp.mkdir()
            settings = Settings(
                reps=int(sizes["reps"]),
                seconds=sizes["seconds"],
                warmup=sizes["warmup"],
                single_seconds=sizes["single_seconds"],
                smoke=args.smoke,
                tmp=row_tmp,
            )
            log(f"row {name}")
            report["rows"].append(run_row(name, runner, settings))
    report["revision"]["end"] = revision()
    report["seconds"] = round(time.time() - started, 1)
    if not args.json_only:
        render(report, Console(width=180))
        print()
    print(json.dumps(report, indent=1, default=str))
    failed = [row["row"] for row in report["rows"] if row.get("failed")]
    if failed:  # a row that cannot run here is not a failure; a broken one is
        log(f"rows that failed: {', '.join(failed)}")
        return 1
    return 0


__all__ = ["common"]

if __name__ == "__main__":
    sys.exit(main())
