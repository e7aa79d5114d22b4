"""Mesh call throughput: brio's gRPC ``Call`` and ``Heartbeat`` against raw grpclib, on loopback.

Run: ``.venv/bin/python bench/mesh_calls.py [--callers 50] [--duration 5] [--tls] [--json]``.

Everything runs in this one process (servers and callers share the trio run and the cores), so
the absolute numbers are lower than with a separate load generator. What carries over is the
ratio to the baseline measured in the same run: a raw grpclib server whose handler echoes a
``MeshRequest`` back as a ``MeshResponse``, and a raw grpclib client on one channel, both under
trio-asyncio as brio runs them (each end inside its own ``brio.aio.open_loop()``, the callers
trio tasks entering asyncio through ``brio.aio.call``). Against it:

- ``Call`` ``agent.invoke`` of ``echo`` on a real node (``run_node``, SQLite in a temporary
  directory, no peers), sent through ``ChannelPool.unary`` as a peer would;
- ``Heartbeat`` to the same node. The heartbeats come from a pretend peer, ``bench-peer``,
  whose address is the raw server (which answers heartbeats too), so the node dials it back
  once and then, as in a real mesh, treats every heartbeat as one from a known peer.

With ``--tls`` the same three cases run again with mTLS (certificates from
``tests/certs.py``), and their ratio is to the mTLS baseline. Each case warms up for 1 s
before it is measured. Prints figures; asserts nothing.

``cpu us/call`` is this process's CPU time (every thread) over the measured seconds, per
answered call: client and server together, with the node's background work. On a machine that
other processes share, req/s (and so ``x base``) moves with the share of a core this process
gets; CPU per call much less, so it says better where a change saved work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import grpclib.const
import grpclib.server
import trio
from grpclib.client import Channel

from brio import aio
from brio.config.model import BrioConfig, TLSConfig
from brio.mesh import methods, pb
from brio.mesh.tls import client_context, server_context
from brio.mesh.transport import ChannelPool, MeshCallError, TransportStats
from brio.node.root import NodeHandle, run_node

CALL = methods.CALL.path
HEARTBEAT = methods.HEARTBEAT.path
NODE = "bench-node"
PEER = "bench-peer"
TIMEOUT = 30.0  # the default mesh.call_timeout; every call carries it as a gRPC deadline
WARMUP = 1.0

#: One measured call: True when it got the expected answer.
OneCall = Callable[[], Awaitable[bool]]


@dataclass
class Result:
    case: str
    transport: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    cpu_seconds: float = 0.0  # this process's CPU time over ``seconds``
    ratio: float = 1.0  # req/s over the baseline of the same transport

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_seconds / self.requests * 1e6 if self.requests else float("nan")

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        lat = self.latencies_ms
        return statistics.quantiles(lat, n=100)[98] if len(lat) >= 100 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "transport": self.transport,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "ratio": round(self.ratio, 3),
            "p50_ms": round(self.p50, 3),
            "p99_ms": round(self.p99, 3),
            "cpu_us_per_call": round(self.cpu_us_per_call, 1),
        }


async def _load(
    callers: int, seconds: float, one: OneCall
) -> tuple[int, int, float, float, list[float]]:
    """Run ``callers`` loops of ``one`` for ``seconds``: successes, errors, elapsed, CPU
    seconds, latencies."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            if await one():
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                errors += 1

    started, cpu = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(caller)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return len(latencies), errors, elapsed, cpu, latencies


async def _case(name: str, transport: str, callers: int, seconds: float, one: OneCall) -> Result:
    # One call alone first: ChannelPool opens the channel on first use, and N callers
    # starting together would each open (and leak) one of their own.
    await one()
    await _load(callers, WARMUP, one)
    ok, errors, elapsed, cpu, latencies = await _load(callers, seconds, one)
    return Result(name, transport, ok, errors, elapsed, latencies, cpu)


def _call_request() -> pb.MeshRequest:
    """What ``PeerCalls.call_node`` sends for an ``agent.invoke`` (the baseline sends it too)."""
    return pb.MeshRequest(
        target="echo",
        method="agent.invoke",
        json=json.dumps({"prompt": "bench"}),
        metadata={"brio-node-id": PEER},
        deadline_unix_ms=int((time.time() + TIMEOUT) * 1000),
    )


def _peer_info(address: str) -> pb.NodeInfo:
    return pb.NodeInfo(
        node_id=PEER,
        role="worker",
        address=address,
        version="bench",
        agents=[pb.AgentInfo(name="echo", kind="echo"), pb.AgentInfo(name="sleep", kind="sleep")],
        workload=pb.Load(active=0, queued=0, max_agents=32),
        sent_unix_ms=int(time.time() * 1000),
    )


# --- the baseline: raw grpclib --------------------------------------------------------------


class RawMesh:
    """A minimal grpclib servable: ``Call`` echoes the json back; ``Heartbeat`` says who it is."""

    def __init__(self, info: pb.NodeInfo) -> None:
        self.info = info

    async def call(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        request: pb.MeshRequest | None = await stream.recv_message()
        assert request is not None  # our own client always sends one
        await stream.send_message(pb.MeshResponse(json=request.json, node_id=PEER))

    async def heartbeat(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(pb.HeartbeatResponse(responder=self.info))

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        unary = grpclib.const.Cardinality.UNARY_UNARY
        return {
            CALL: grpclib.const.Handler(self.call, unary, pb.MeshRequest, pb.MeshResponse),
            HEARTBEAT: grpclib.const.Handler(
                self.heartbeat, unary, pb.HeartbeatRequest, pb.HeartbeatResponse
            ),
        }


async def _serve_raw(
    ssl_context: ssl.SSLContext | None, stop: trio.Event, *, task_status: trio.TaskStatus[str]
) -> None:
    """Serve ``RawMesh`` on 127.0.0.1 in its own asyncio loop until ``stop``; report host:port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    async with aio.open_loop():

        async def start() -> grpclib.server.Server:
            server = grpclib.server.Server([RawMesh(_peer_info(address))])
            await server.start(sock=sock, ssl=ssl_context)
            return server

        server = await aio.call(start)
        task_status.started(address)
        try:
            await stop.wait()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):

                async def close() -> None:
                    server.close()
                    await server.wait_closed()

                await aio.call(close)


def _raw_call(channel: Channel) -> OneCall:
    async def request_once() -> pb.MeshResponse | None:
        async with channel.request(
            CALL,
            grpclib.const.Cardinality.UNARY_UNARY,
            pb.MeshRequest,
            pb.MeshResponse,
            timeout=TIMEOUT,
        ) as stream:
            await stream.send_message(_call_request(), end=True)
            reply: pb.MeshResponse | None = await stream.recv_message()
            return reply

    async def one() -> bool:
        reply = await aio.call(request_once)
        return reply is not None and reply.json is not None

    return one


# --- brio -----------------------------------------------------------------------------------


def _brio_call(pool: ChannelPool, address: str) -> OneCall:
    async def one() -> bool:
        try:
            reply = await pool.unary(address, CALL, _call_request(), pb.MeshResponse, TIMEOUT)
        except MeshCallError:
            return False
        return reply.error is None

    return one


def _brio_heartbeat(pool: ChannelPool, address: str, peer_address: str) -> OneCall:
    async def one() -> bool:
        request = pb.HeartbeatRequest(sender=_peer_info(peer_address))
        try:
            reply = await pool.unary(address, HEARTBEAT, request, pb.HeartbeatResponse, TIMEOUT)
        except MeshCallError:
            return False
        return reply.responder is not None and reply.responder.node_id == NODE

    return one


def _node_config(data_dir: Path, callers: int, tls: dict[str, Any]) -> BrioConfig:
    return BrioConfig.model_validate(
        {
            "data_dir": str(data_dir),
            "server": {"enabled": False},
            "mesh": {
                "enabled": True,
                "node_id": NODE,
                "listen_addr": "127.0.0.1:0",
                "max_agents": 2 * callers,  # never Busy: at most one invocation per caller
                "tls": tls,
            },
            "logging": {"level": "warning"},
        }
    )


def _tls_configs(certs_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``[mesh.tls]`` for the node and for the bench peer (mTLS: both verify the other)."""
    # tests/ is not installed, and running this file puts only bench/ on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.certs import make_cluster_certs, tls_config

    certs = make_cluster_certs(certs_dir, {NODE: ["127.0.0.1"], PEER: ["127.0.0.1"]})
    return tls_config(certs, NODE), tls_config(certs, PEER)


async def _baseline(
    address: str, client_ssl: ssl.SSLContext | None, transport: str, callers: int, seconds: float
) -> Result:
    host, port = address.rsplit(":", 1)

    async def make() -> Channel:
        return Channel(host, int(port), ssl=client_ssl)

    channel = await aio.call(make)
    try:
        return await _case(
            "raw grpclib echo (baseline)", transport, callers, seconds, _raw_call(channel)
        )
    finally:
        channel.close()


async def _brio_cases(  # noqa: PLR0917
    config: BrioConfig,
    raw_address: str,
    client_ssl: ssl.SSLContext | None,
    transport: str,
    callers: int,
    seconds: float,
) -> list[Result]:
    """Start a node, then load it with ``Call`` and with ``Heartbeat`` from the bench peer."""
    stop = trio.Event()
    pool = ChannelPool(client_ssl, PEER, TransportStats())
    async with trio.open_nursery() as nursery:
        handle: NodeHandle = await nursery.start(run_node, config, stop)
        address = handle.mesh_address
        assert address is not None
        try:
            call = _brio_call(pool, address)
            heartbeat = _brio_heartbeat(pool, address, raw_address)
            return [
                await _case("brio Call agent.invoke echo", transport, callers, seconds, call),
                await _case("brio Heartbeat", transport, callers, seconds, heartbeat),
            ]
        finally:
            pool.close()
            stop.set()


async def _run_transport(tmp: Path, transport: str, callers: int, seconds: float) -> list[Result]:
    """Baseline, brio Call and brio Heartbeat on one transport (plaintext or mTLS)."""
    node_tls: dict[str, Any] = {}
    peer_tls = TLSConfig()
    if transport == "mTLS":
        node_tls, peer = _tls_configs(tmp / "certs")
        peer_tls = TLSConfig.model_validate(peer)
    config = _node_config(tmp / f"node-{transport}", callers, node_tls)
    stop_raw = trio.Event()
    async with trio.open_nursery() as nursery:
        raw_address: str = await nursery.start(_serve_raw, server_context(peer_tls), stop_raw)
        try:
            async with aio.open_loop():
                client_ssl = client_context(peer_tls)
                base = await _baseline(raw_address, client_ssl, transport, callers, seconds)
                # The node starts only now: its background work does not weigh on the baseline.
                brio = await _brio_cases(
                    config, raw_address, client_ssl, transport, callers, seconds
                )
        finally:
            stop_raw.set()
    results = [base, *brio]
    for result in results:
        result.ratio = result.rps / base.rps
    return results


def _versions() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "trio": version("trio"),
        "trio_asyncio": version("trio-asyncio"),
        "grpclib": version("grpclib"),
    }


def _print_table(results: list[Result], callers: int, seconds: float) -> None:
    v = _versions()
    print(
        f"mesh calls, loopback, one process: {callers} callers, {seconds:g}s per case "
        f"after {WARMUP:g}s warm-up"
    )
    print(
        f"{v['cpus']} CPUs; Python {v['python']}, trio {v['trio']}, "
        f"trio-asyncio {v['trio_asyncio']}, grpclib {v['grpclib']}"
    )
    print("x base: req/s over the raw grpclib baseline on the same transport")
    header = (
        f"{'case':<36} {'req/s':>8} {'x base':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'cpu us/call':>12}"
    )
    print(header)
    for r in results:
        name = r.case if r.transport == "plaintext" else f"{r.case}, mTLS"
        print(
            f"{name:<36} {r.rps:>8.0f} {r.ratio:>7.2f} {r.p50:>8.1f} {r.p99:>8.1f} {r.errors:>7} "
            f"{r.cpu_us_per_call:>12.0f}"
        )
    bases = [r for r in results if r.case.endswith("(baseline)")]
    if len(bases) == 2:
        print(f"mTLS over plaintext, raw grpclib: {bases[1].rps / bases[0].rps:.2f}")


async def main(callers: int, seconds: float, tls: bool, as_json: bool) -> None:
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for transport in ["plaintext", "mTLS"] if tls else ["plaintext"]:
            results += await _run_transport(Path(tmp), transport, callers, seconds)
    if as_json:
        report = {
            "callers": callers,
            "duration": seconds,
            "warmup": WARMUP,
            **_versions(),
            "results": [r.as_dict() for r in results],
        }
        print(json.dumps(report, indent=2))
    else:
        _print_table(results, callers, seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=50, help="concurrent callers (50)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per case (5)")
    parser.add_argument("--tls", action="store_true", help="also run every case with mTLS")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    trio.run(main, args.callers, args.duration, args.tls, args.json)
