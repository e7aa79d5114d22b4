"""Single-node throughput: HTTP task submission and end-to-end completion, on SQLite.

Run: ``.venv/bin/python bench/single_node.py [--seconds 5] [--clients 20] [--tasks 500]``.

Everything runs in this one process (node and clients share the loop and the 2 cores), so the
absolute numbers are lower than with a separate load generator; what carries over is the
ratio to the baseline, ``GET /health/live``, measured in the same run against the same
server: it prices what the task path (validation, a committed SQLite write, events, the
supervisor) adds to a bare request. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

from brio.config.model import BrioConfig
from brio.node.root import NodeHandle, run_node


async def _load(
    seconds: float, clients: int, one: Callable[[httpx.AsyncClient], Awaitable[None]], url: str
) -> tuple[float, list[float]]:
    """Run ``clients`` loops of ``one`` for ``seconds``; return req/s and latencies (ms)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                await one(client)
                latencies.append((time.perf_counter() - start) * 1000)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(worker)
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


async def _health(client: httpx.AsyncClient) -> None:
    (await client.get("/health/live")).raise_for_status()


async def _submit(client: httpx.AsyncClient) -> None:
    resp = await client.post("/api/tasks", json={"agent": "echo", "prompt": "bench"})
    resp.raise_for_status()


async def _end_to_end(url: str, tasks: int, clients: int) -> float:
    """Submit ``tasks`` echo tasks and wait until every one succeeded; tasks per second."""
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        ids: list[str] = []
        started = time.perf_counter()
        send, receive = trio.open_memory_channel[int](tasks)
        for i in range(tasks):
            send.send_nowait(i)
        send.close()

        async def submitter() -> None:
            async for _ in receive:
                resp = await client.post("/api/tasks", json={"agent": "echo", "prompt": "e2e"})
                ids.append(resp.json()["id"])

        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(submitter)
    await _wait_idle(url)
    return tasks / (time.perf_counter() - started)


async def _wait_idle(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while True:
            load = (await client.get("/health")).json()["agents"]
            if load["queued"] == 0 and load["active"] == 0:
                return
            await trio.sleep(0.05)


def _row(name: str, rps: float, lat: list[float], base: float) -> str:
    p50 = statistics.median(lat) if lat else float("nan")
    p99 = statistics.quantiles(lat, n=100)[98] if len(lat) >= 100 else float("nan")
    return f"{name:<28} {rps:>9.0f} {p50:>9.1f} {p99:>9.1f} {rps / base:>9.2f}"


async def main(seconds: float, clients: int, tasks: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = BrioConfig.model_validate(
            {
                "data_dir": str(Path(tmp) / "data"),
                "server": {"port": 0},
                "mesh": {"node_id": "bench", "max_agents": 64},
                "logging": {"level": "warning"},
            }
        )
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            handle: NodeHandle = await nursery.start(run_node, config, shutdown)
            url = handle.http_urls[0]
            base_rps, base_lat = await _load(seconds, clients, _health, url)
            sub_rps, sub_lat = await _load(seconds, clients, _submit, url)
            await _wait_idle(url)  # the submission load left a queue behind
            e2e = await _end_to_end(url, tasks, clients)
            shutdown.set()
    print(f"single node, SQLite, {clients} clients, {seconds:g}s per load, same process")
    print(f"{'measure':<28} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'x base':>9}")
    print(_row("GET /health/live (baseline)", base_rps, base_lat, base_rps))
    print(_row("POST /api/tasks (echo)", sub_rps, sub_lat, base_rps))
    print(f"{'submit+complete echo':<28} {e2e:>9.0f} {'':>9} {'':>9} {e2e / base_rps:>9.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=500)
    args = parser.parse_args()
    trio.run(main, args.seconds, args.clients, args.tasks)
