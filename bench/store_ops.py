"""The store's write path per task: create_task, assign_tasks, claim_assigned, finish_task.

Run: ``.venv/bin/python bench/store_ops.py [--against REV] [--backend sqlite|postgresql|both]
[--tasks 400] [--concurrency 1,64] [--reps 3] [--batch 100]``.

Each of ``concurrency`` workers drives its own node id through the life of one no-op task
after another: create it, assign it to its node (the placer's fenced write), claim it straight
into running (the supervisor's claim), finish it (succeeded, with a result). That is every
store write a task costs on a single node, so tasks/s here is the store's ceiling for the
node, and CPU per task is what the store costs (this process, threads included; on
PostgreSQL also the server's backends).

``--batch N`` adds rows for ``create_tasks`` of N tasks a call (what ``POST /api/tasks:batch``
costs the store), for this tree only.

Durable on both backends: SQLite with ``synchronous = FULL`` (the store's setting), and a
PostgreSQL started here with fsync and synchronous_commit on (the test server runs without).

``--against REV`` compares with another commit in the same run: a ``git worktree`` of REV is
checked out in a temporary directory and each repetition runs both trees in turn (A B A B),
each in its own process with that tree first on ``sys.path``. Prints figures, medians with
their range, the ratio new/old, the machine and how busy it was; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: bench/ and tests/ are not installed
    sys.path.append(str(ROOT))  # appended: a tree on PYTHONPATH (--against) comes first

from bench.cpu import Meter, children_of, machine, pid_seconds  # noqa: E402
from tests.pg import PostgresServer  # noqa: E402

AGENT = "echo"
Run = dict[str, Any]


class DurablePostgres(PostgresServer):
    """The test server, but with fsync and synchronous_commit on, as a production one."""

    def _start_on(self, port: int) -> None:
        options = f"-k {self._dir} -p {port} -c listen_addresses={self.host} -c max_connections=200"
        log = self.data_dir.parent / "server.log"
        self._server_tool("pg_ctl", "-D", self.data_dir, "-l", log, "-w", "start", "-o", options)
        self.port = port


def postmaster_pids(pid: int) -> Callable[[], list[int]]:
    return lambda: [pid, *children_of(pid)]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# one measurement, in a child process (the tree under test is first on sys.path)


async def _measure(
    url: str, tasks: int, concurrency: int, server: int | None, batch: int
) -> dict[str, Any]:
    import trio

    from brio import aio
    from brio.core.tasks import TaskStatus
    from brio.store import NewTask, open_store
    from brio.store.base import Assignment

    latencies: list[float] = []  # one per task, or one per batch
    done_tasks = 0
    per_worker = max(1, tasks // concurrency // max(batch, 1))

    async with aio.open_loop():
        store = await open_store(url, max_connections=min(concurrency, 20) + 2)
        try:
            assert await store.raise_fence(1, "bench")

            async def batches() -> None:
                nonlocal done_tasks
                for _ in range(per_worker):
                    start = time.perf_counter()
                    made = await store.create_tasks([NewTask(AGENT, "hi") for _ in range(batch)])
                    if not all(isinstance(outcome, tuple) and outcome[1] for outcome in made):
                        raise RuntimeError(f"a batch was refused: {made!r}")
                    latencies.append((time.perf_counter() - start) * 1e3)
                    done_tasks += batch

            async def worker(i: int) -> None:
                nonlocal done_tasks
                if batch:
                    await batches()
                    return
                node = f"n{i}"
                for _ in range(per_worker):
                    start = time.perf_counter()
                    task, _ = await store.create_task(NewTask(AGENT, "hi"))
                    landed = await store.assign_tasks(1, [Assignment(task.id, 1, node)])
                    claimed = await store.claim_assigned(node, [AGENT], 1)
                    done = await store.finish_task(
                        task.id, 1, TaskStatus.SUCCEEDED, result={"ok": True}
                    )
                    if not (landed and claimed and done):
                        raise RuntimeError(f"task {task.id} did not go through its life")
                    latencies.append((time.perf_counter() - start) * 1e3)
                    done_tasks += 1

            async with trio.open_nursery() as warm:  # connections, statement caches
                for i in range(concurrency):
                    warm.start_soon(store.get_task, str(i))
            # the server's backends end with the pool: read their CPU while it is open
            backends = postmaster_pids(server) if server is not None else list
            server0 = {pid: pid_seconds(pid) for pid in backends()}
            cpu0, wall0 = time.process_time(), time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(concurrency):
                    nursery.start_soon(worker, i)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            server_cpu = sum(pid_seconds(pid) - server0.get(pid, 0.0) for pid in backends())
        finally:
            await store.close()
    return {
        "tasks": done_tasks,
        "wall": wall,
        "tasks_per_s": done_tasks / wall,
        "cpu_ms_per_task": cpu * 1e3 / done_tasks,
        "server_cpu_ms_per_task": server_cpu * 1e3 / done_tasks,
        "p50_ms": quantile(latencies, 0.5),
        "p99_ms": quantile(latencies, 0.99),
    }


def child(args: argparse.Namespace) -> None:
    import trio

    import brio

    result = trio.run(
        _measure, args.url, args.tasks, int(args.concurrency), args.server, args.batch
    )
    result["brio"] = str(Path(brio.__file__).parent)
    print(json.dumps(result))


# the parent: servers, trees, alternation, the table


@contextmanager
def worktree(rev: str | None) -> Iterator[Path | None]:
    if rev is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="brio-bench-old-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev],
            check=True,
        )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False
            )


def run_tree(
    tree: Path, url: str, tasks: int, concurrency: int, *, server: int | None, batch: int
) -> Run:
    meter = Meter({})
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--url", url]
    command += ["--tasks", str(tasks), "--concurrency", str(concurrency), "--batch", str(batch)]
    if server is not None:
        command += ["--server", str(server)]
    meter.start()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    used = meter.stop()
    if done.returncode != 0:
        raise RuntimeError(f"the run in {tree} failed:\n{done.stderr[-3000:]}")
    run: Run = json.loads(done.stdout.strip().splitlines()[-1])
    run["other_cpu_share"] = used["other"] / max(used["capacity"], 1e-9)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--against", help="also run this commit (a git revision), A B A B")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--tasks", type=int, default=400, help="tasks per measurement")
    parser.add_argument("--concurrency", default="1,64", help="workers, comma-separated")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="also time create_tasks of this many tasks a call (this tree only: REV may lack it)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--server", type=int, help=argparse.SUPPRESS)  # the postmaster's pid
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    levels = [int(c) for c in args.concurrency.split(",")]
    report: dict[str, Any] = {"machine": machine(), "load_before": os.getloadavg(), "rows": []}
    counter = iter(range(10**6))  # one fresh database per measurement
    with worktree(args.against) as old, tempfile.TemporaryDirectory(prefix="brio-bench-") as tmp:
        trees = {"new": ROOT} if old is None else {"old": old, "new": ROOT}
        pg = DurablePostgres() if "postgresql" in backends else None
        if pg is not None:
            pg.start()
        try:
            for backend in backends:
                rows = [(c, 0, trees) for c in levels]
                if args.batch:
                    rows += [(c, args.batch, {"new": ROOT}) for c in levels]
                for c, batch, under_test in rows:

                    def measure(
                        tree: Path, backend: str = backend, c: int = c, b: int = batch
                    ) -> Run:
                        n = next(counter)
                        if backend == "sqlite":
                            url = f"sqlite:///{tmp}/s{n}.db"
                            return run_tree(tree, url, args.tasks, c, server=None, batch=b)
                        assert pg is not None
                        url = pg.create_database(f"bench_{n}")
                        master = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
                        return run_tree(tree, url, args.tasks, c, server=master, batch=b)

                    runs: dict[str, list[Run]] = {name: [] for name in under_test}
                    for _ in range(args.reps):  # A B A B: the machine's load lands on both
                        for name, tree in under_test.items():
                            runs[name].append(measure(tree))
                    figures = {name: _figures(name, runs) for name in FIGURES}
                    what = f"create_tasks of {batch}" if batch else "create, assign, claim, finish"
                    label = f"{backend}, {what}, {c} workers"
                    row = {"row": label, "figures": figures, "runs": runs}
                    report["rows"].append(row)
                    _print_row(row)
        finally:
            if pg is not None:
                pg.stop()
    report["load_after"] = os.getloadavg()
    print(f"machine: {report['machine']}")
    print(f"load average before {report['load_before']}, after {report['load_after']}")
    print(json.dumps(report, default=str))


FIGURES = {  # figure -> the run's field
    "tasks/s": "tasks_per_s",
    "p50 ms": "p50_ms",
    "p99 ms": "p99_ms",
    "client CPU ms/task": "cpu_ms_per_task",
    "server CPU ms/task": "server_cpu_ms_per_task",
    "other processes' CPU share": "other_cpu_share",
}


def _figures(field: str, runs: dict[str, list[Run]]) -> dict[str, Any]:
    """Median, min and max per tree, and new/old of the medians."""
    out: dict[str, Any] = {}
    for name, items in runs.items():
        values = [float(r[FIGURES[field]]) for r in items]
        out[name] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    if "old" in out and out["old"]["median"]:
        out["ratio"] = out["new"]["median"] / out["old"]["median"]
    return out


def _print_row(row: dict[str, Any]) -> None:
    print(f"\n{row['row']}")
    for name, fig in row["figures"].items():
        for tree in ("old", "new"):
            if tree in fig:
                s = fig[tree]
                ratio = f"  new/old x{fig['ratio']:.2f}" if tree == "new" and "ratio" in fig else ""
                print(
                    f"  {name:<28} {tree:<4} {s['median']:9.3f}"
                    f" [{s['min']:.3f}-{s['max']:.3f}]{ratio}"
                )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
