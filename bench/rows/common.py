"""What the suite's rows share: the run's settings, processes they start (``brio serve``, the
bare app, redis-server, PostgreSQL with fsync on), the load generator in its own process, and
the CPU and memory figures read from ``/proc``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tests/ is not installed
    sys.path.insert(0, str(ROOT))

from bench.cpu import Meter, children_of, pid_seconds  # noqa: E402
from tests.pg import PostgresServer  # noqa: E402
from tests.system.cluster import toml  # noqa: E402

Run = dict[str, Any]


class Unavailable(Exception):
    """A row cannot run here (a missing server binary, an endpoint not built yet); the message
    says what is missing and how to get it."""


@dataclass(frozen=True)
class Settings:
    """How long and how often: ``smoke`` sizes prove the harness in seconds."""

    reps: int
    seconds: float  # one load phase
    warmup: float
    single_seconds: float  # the 1-client latency phase
    smoke: bool
    tmp: Path = field(default_factory=lambda: Path("/tmp"))


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float | None:
    """Resident memory of one process in MB (VmRSS), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Celery's prefork children, PostgreSQL's backends)."""
    found = [pid]
    for child in children_of(pid):
        found.extend(tree(child))
    return found


def run_json(args: list[str], what: str, timeout: float = 900, ok: tuple[int, ...] = (0,)) -> Run:
    """Run a child of the suite from the repository root; its stdout is one JSON object
    (or its last line is). Its CPU time lands in ``os.times().children_*``, which
    ``Meter`` reports as ``loadgen``."""
    done = subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode not in ok:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr[-3000:]}")
    text = done.stdout.strip()
    try:
        result: Run = json.loads(text)
    except ValueError:  # lines printed before it (Ray's, say)
        result = json.loads(text.splitlines()[-1])
    return result


def loadgen(mode: str, args: dict[str, Any], timeout: float = 600) -> Run:
    """One ``bench.suite_load`` run in its own process."""
    command = [sys.executable, "-m", "bench.suite_load", mode, json.dumps(args)]
    return run_json(command, f"load generator {mode}", timeout)


def measured(meter: Meter, action: Callable[[], Run]) -> Run:
    """``action``'s result with ``cpu``: CPU seconds per group over it (see bench/cpu.py)."""
    meter.start()
    result = action()
    result["cpu"] = {k: round(v, 3) for k, v in meter.stop().items()}
    return result


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float, log_path: Path) -> float:
    """Seconds until ``url`` answers 200, polled every 5 ms; raises if the process exits."""
    began = time.perf_counter()
    with httpx.Client(timeout=1) as client:
        while time.perf_counter() - began < timeout:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{tail}")
            try:
                if client.get(url).status_code == 200:
                    return time.perf_counter() - began
            except httpx.HTTPError:
                pass
            time.sleep(0.005)
    raise RuntimeError(f"{url} not ready within {timeout} s")


@dataclass
class Server:
    """A server process the suite started, with its URL and how long it took to be ready."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    ready_s: float
    dir: Path

    def pids(self) -> list[int]:
        return tree(self.proc.pid) if self.proc.poll() is None else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIO_") and k != "CI"}
    env.update(extra)
    return env


def start_brio(
    name: str,
    base: Path,
    *,
    database_url: str | None = None,
    max_agents: int = 64,
    host: str = "127.0.0.1",
) -> Server:
    """``python -m brio serve``, one node without a mesh: SQLite in its data directory (the
    store's ``synchronous = FULL``) unless ``database_url`` names a PostgreSQL database."""
    node_dir = base / name
    node_dir.mkdir(parents=True)
    port = free_port(host)
    tables: dict[str, dict[str, Any]] = {
        "": {"data_dir": str(node_dir / "data")},
        "server": {"host": host, "port": port, "shutdown_grace": 2},
        "mesh": {"node_id": name, "max_agents": max_agents},
        "logging": {"level": "warning", "format": "json"},
    }
    if database_url is not None:
        tables["database"] = {"url": database_url}
    config = node_dir / "brio.toml"
    config.write_text(toml(tables, []))
    log_path = node_dir / "node.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "brio", "serve"],
            cwd=node_dir,
            env=clean_env({"HOME": str(node_dir), "BRIO_CONFIG": str(config)}),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{host}:{port}"
    ready_s = wait_ready(url + "/health/ready", proc, 60, log_path)
    return Server(name, proc, url, ready_s, node_dir)


def start_bare(name: str, base: Path, host: str = "127.0.0.1") -> Server:
    """The hypercorn + quart-trio baseline (``bench/baselines/bare_app.py``)."""
    node_dir = base / name
    node_dir.mkdir(parents=True)
    port = free_port(host)
    log_path = node_dir / "app.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.baselines.bare_app", host, str(port)],
            cwd=ROOT,
            env=clean_env({}),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{host}:{port}"
    ready_s = wait_ready(url + "/health/ready", proc, 60, log_path)
    return Server(name, proc, url, ready_s, node_dir)


def need(binary: str, how: str) -> str:
    found = shutil.which(binary)
    if found is None:
        raise Unavailable(f"{binary} is not on PATH; {how}")
    return found


def need_module(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise Unavailable(f"Python package {module} is missing: pip install -e '.[bench]'")


@contextmanager
def redis_server(base: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Debian's redis-server on 127.0.0.1, durable like Brio's store: the append-only file on,
    fsynced on every write (``appendfsync always``), no RDB snapshots."""
    binary = need("redis-server", "install it with: apt-get install -y redis-server")
    data = base / "redis"
    data.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(data),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
        ],
        stdout=(data / "redis.log").open("ab"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not start: {(data / 'redis.log').read_text()}"
                )
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.terminate()
        proc.wait(10)


class DurablePostgres(PostgresServer):
    """``tests/pg.py``'s server with what it switches off for speed switched back on: fsync,
    synchronous_commit and full_page_writes, PostgreSQL's defaults."""

    def _start_on(self, port: int) -> None:
        options = (
            f"-k {self._dir} -p {port} -c listen_addresses={self.host} -c fsync=on"
            " -c synchronous_commit=on -c full_page_writes=on -c max_connections=200"
        )
        log_file = self.data_dir.parent / "server.log"
        self._server_tool(
            "pg_ctl", "-D", self.data_dir, "-l", log_file, "-w", "start", "-o", options
        )
        self.port = port


def postgres_pids(pg: PostgresServer) -> list[int]:
    pid_file = pg.data_dir / "postmaster.pid"
    master = int(pid_file.read_text().split("\n", 1)[0])
    return [master, *children_of(master)]


def cpu_of(pids: list[int]) -> float:
    return sum(pid_seconds(p) for p in pids)


__all__ = ["Meter"]
