"""``brio serve`` start-up beside a bare hypercorn + quart-trio app (issue 12 target 6: ready
<= 0.6 s, idle RSS <= 60 MB), and where the start-up time goes.

Run: ``.venv/bin/python -m bench.startup [--runs 5] [--idle 5] [--top 25] [--against DIR]``.
``--against`` adds a third system in the same alternation: ``brio serve`` from another
checkout (``git worktree add DIR COMMIT``), to measure a change before and after.

Each run starts a new process, Brio then the bare app (``bench/baselines/bare_app.py``), in
turn: ``python -m brio serve`` as one node on SQLite in a fresh data directory, without a
mesh (the servers of ``bench/rows/common.py``). Per process:

- ready: seconds from ``Popen`` to the first 200 of ``/health/ready``, polled every 5 ms (a
  node answers ``/health/live`` no earlier: both are served once the HTTP part is up);
- CPU: the process's user + system seconds at that moment, the part of ``ready`` that is not
  waiting for the machine (the figure to trust when other processes load it);
- idle RSS: VmRSS after ``--idle`` seconds at rest.

Then one more ``brio serve`` with ``PYTHONPROFILEIMPORTTIME=1`` (``python -X importtime``):
the import time per top-level package (self time summed, so that nothing is counted twice)
and the slowest modules. Prints figures with the machine's load; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.ab import alternate, figure, fmt
from bench.cpu import busy_seconds, machine, pid_seconds
from bench.rows.common import Run, Server, rss_mb, start_bare, start_brio

BRIO = "brio serve"
BARE = "bare hypercorn + quart-trio"
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def _measure(server: Server, idle: float) -> Run:
    cpu = pid_seconds(server.proc.pid)
    time.sleep(idle)
    return {"ready_s": server.ready_s, "cpu_s": cpu, "idle_rss_mb": rss_mb(server.proc.pid)}


def _one(start: Any, name: str, base: Path, idle: float, checkout: str | None = None) -> Run:
    if checkout is not None:
        os.environ["PYTHONPATH"] = checkout  # the child's brio, ahead of the editable install
    try:
        server: Server = start(name, base)
    finally:
        os.environ.pop("PYTHONPATH", None)
    try:
        return _measure(server, idle)
    finally:
        server.stop()


def import_profile(base: Path) -> tuple[Counter[str], list[tuple[int, int, str]]]:
    """(self µs per top-level package, [(self µs, cumulative µs, module)]) of one start."""
    os.environ["PYTHONPROFILEIMPORTTIME"] = "1"  # read by the child at start, not by us
    try:
        server = start_brio("imports", base)
    finally:
        del os.environ["PYTHONPROFILEIMPORTTIME"]
    server.stop()
    per_package: Counter[str] = Counter()
    modules = []
    for line in (server.dir / "node.log").read_text(errors="replace").splitlines():
        match = _IMPORT_LINE.match(line)
        if match is None:
            continue
        self_us, cumulative_us, module = int(match[1]), int(match[2]), match[4]
        per_package[module.split(".", 1)[0]] += self_us
        modules.append((self_us, cumulative_us, module))
    return per_package, modules


def _print_figures(figures: list[dict[str, Any]]) -> None:
    print(f"\n{'figure':<22} {'system':<30} {'median':>8} {'min':>8} {'max':>8} {'ratio':>6}")
    for fig in figures:
        for system, s in fig["systems"].items():
            ratio = fig["ratio"].get(system)
            print(
                f"{fig['figure'] + ' (' + fig['unit'] + ')':<22} {system:<30} "
                f"{fmt(s['median']):>8} {fmt(s['min']):>8} {fmt(s['max']):>8} "
                f"{fmt(ratio) if ratio is not None else '':>6}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="processes of each kind")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds at rest before RSS")
    parser.add_argument("--top", type=int, default=25, help="packages and modules listed")
    parser.add_argument("--against", help="another checkout's brio serve, run alongside")
    args = parser.parse_args()
    print(f"machine: {machine()}; load average before: {os.getloadavg()}")
    busy_before, total_before = busy_seconds()
    with tempfile.TemporaryDirectory(prefix="brio-startup-") as tmp:
        base = Path(tmp)
        counter = iter(range(10_000))
        systems = {
            BRIO: lambda rep: _one(start_brio, f"brio-{rep}-{next(counter)}", base, args.idle),
            BARE: lambda rep: _one(start_bare, f"bare-{rep}-{next(counter)}", base, args.idle),
        }
        if args.against:
            checkout = str(Path(args.against).resolve())
            systems[f"brio serve @ {args.against}"] = lambda rep: _one(
                start_brio, f"against-{rep}-{next(counter)}", base, args.idle, checkout
            )
        done = alternate(args.runs, systems)
        busy_after, total_after = busy_seconds()
        per_package, modules = import_profile(base)
    ours = sum(r["cpu_s"] for runs in done.runs.values() for r in runs)
    others = (busy_after - busy_before) - ours
    wall = (total_after - total_before) / (os.cpu_count() or 1)
    _print_figures(
        [
            figure("ready", "s", "lower", done.runs, lambda r: r["ready_s"], baseline=BARE),
            figure("CPU to ready", "s", "lower", done.runs, lambda r: r["cpu_s"], baseline=BARE),
            figure("idle RSS", "MB", "lower", done.runs, lambda r: r["idle_rss_mb"], baseline=BARE),
        ]
    )
    print(
        f"\nmachine busy meanwhile: {busy_after - busy_before:.1f} CPU s in {wall:.1f} s, of "
        f"which {max(0.0, others):.1f} s other processes (the started servers' own start-up "
        f"excluded); load average after: {os.getloadavg()}"
    )
    total = sum(per_package.values())
    print(f"\nimports of one brio serve: {total / 1000:.0f} ms self time in {len(modules)} modules")
    for package, us in per_package.most_common(args.top):
        print(f"  {us / 1000:7.1f} ms  {package}")
    print(f"\nslowest modules (self / cumulative ms), top {args.top}:")
    for self_us, cumulative_us, module in sorted(modules, reverse=True)[: args.top]:
        print(f"  {self_us / 1000:7.1f} / {cumulative_us / 1000:7.1f}  {module}")


if __name__ == "__main__":
    main()
