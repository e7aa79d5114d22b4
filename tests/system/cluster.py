"""Helpers for tests that run real ``python -m brio serve`` processes as a cluster."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tests.pg import PostgresServer


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def toml(tables: dict[str, dict[str, Any]], peers: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]" if name else "")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
        lines.append("")
    for peer in peers:
        lines.append("[[mesh.peers]]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in peer.items())
        lines.append("")
    return "\n".join(lines)


@dataclass
class MeshNode:
    node_id: str
    dir: Path
    config: Path
    mesh_address: str
    http_url: str | None
    proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        path = self.dir / "node.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIO_") and k != "CI"}
        env.update(HOME=str(self.dir), BRIO_CONFIG=str(self.config))
        address_file = self.dir / "data" / "mesh-address"
        address_file.unlink(missing_ok=True)
        with (self.dir / "node.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "brio", "serve"],
                cwd=self.dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.node_id} exited; log:\n{self.log()}")
            if address_file.exists() and (
                self.http_url is None or ready(self.http_url + "/health/ready")
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.node_id} not ready after 30s; log:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def mesh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``brio mesh ARGS`` beside this node, with its config (and so its TLS identity)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIO_")}
        done = subprocess.run(
            [sys.executable, "-m", "brio", "mesh", *args, "--config", str(self.config)],
            cwd=self.dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"brio mesh {' '.join(args)} failed: {done.stderr}")
        return done

    def status(self) -> dict[str, dict[str, Any]]:
        reply = json.loads(self.mesh("status", "--json").stdout)
        return {p["node_id"] or p["address"]: p for p in reply["peers"]}


def fast_timings(interval: float, timeout: float, threshold: int) -> dict[str, dict[str, Any]]:
    """Config tables for a test cluster that detects failures and fails over in seconds."""
    return {
        "mesh.failure_detection": {
            "heartbeat_interval": interval,
            "heartbeat_timeout": timeout,
            "suspicion_threshold": threshold,
            "remove_delay": 120,
            "degraded_latency": 2.0,
        },
        "mesh.lease": {"lease_duration": 2.0, "election_timeout": [0.3, 0.8]},
    }


def write_cluster(
    base: Path,
    ips: dict[str, str],
    roles: dict[str, str],
    database: str,
    tls: dict[str, dict[str, Any]],
    tables: dict[str, dict[str, Any]],
    mesh: dict[str, Any] | None = None,
) -> dict[str, MeshNode]:
    """Write one ``brio.toml`` per node: every node names every other as a peer (with id and
    role), coordinators serve HTTP; ``tables`` are added to each file as they are, ``mesh``
    keys to its ``[mesh]`` table. Without TLS, pass ``cluster_secret`` or ``insecure``."""
    mesh_ports = {n: free_port(ip) for n, ip in ips.items()}
    nodes: dict[str, MeshNode] = {}
    for node_id, ip in ips.items():
        node_dir = base / node_id
        node_dir.mkdir()
        http = roles[node_id] == "coordinator"
        http_port = free_port(ip) if http else 0
        own: dict[str, dict[str, Any]] = {
            "": {"data_dir": str(node_dir / "data")},
            "server": {"enabled": http, "host": ip, "port": http_port, "shutdown_grace": 2},
            "mesh": {
                "enabled": True,
                "node_id": node_id,
                "role": roles[node_id],
                "listen_addr": f"{ip}:{mesh_ports[node_id]}",
                **(mesh or {}),
            },
            "mesh.tls": tls[node_id],
            "database": {"url": database},
            "logging": {"level": "info"},
        }
        peers = [
            {"id": other, "address": f"{ips[other]}:{mesh_ports[other]}", "role": roles[other]}
            for other in ips
            if other != node_id
        ]
        config = node_dir / "brio.toml"
        config.write_text(toml({**own, **tables}, peers))
        nodes[node_id] = MeshNode(
            node_id,
            node_dir,
            config,
            f"{ip}:{mesh_ports[node_id]}",
            f"http://{ip}:{http_port}" if http else None,
        )
    return nodes


def ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(what: str, check: Any, timeout: float, node: MeshNode | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    log = f"\nlog of {node.node_id}:\n{node.log()[-4000:]}" if node else ""
    raise AssertionError(f"{what} not seen within {timeout}s (last: {last!r}){log}")


# --- helpers for the scheduling, chaos and rolling-update tests -----------------------------


def health(node: MeshNode, timeout: float = 1.0) -> dict[str, Any] | None:
    """The node's ``/health`` body, or None when it does not answer (or serves no HTTP)."""
    if node.http_url is None:
        return None
    try:
        body: dict[str, Any] = httpx.get(node.http_url + "/health", timeout=timeout).json()
    except (httpx.HTTPError, ValueError):
        return None
    return body


def wait_primary(nodes: list[MeshNode], timeout: float, above: int = 0) -> MeshNode:
    """The one node among ``nodes`` whose ``/health`` says primary, with an epoch above
    ``above``, once exactly one says so."""

    def check() -> MeshNode | None:
        found = [
            n
            for n in nodes
            if (h := health(n)) is not None and h["role"] == "primary" and h["epoch"] > above
        ]
        return found[0] if len(found) == 1 else None

    primary: MeshNode = wait_for(f"one primary among {[n.node_id for n in nodes]}", check, timeout)
    return primary


def query(pg: PostgresServer, database: str, sql: str) -> list[list[str]]:
    """Rows of one statement run with psql against ``database``: each a list of column texts."""
    out = pg.sql(sql, database)
    return [line.split("|") for line in out.splitlines() if line]


def serve_command(node: MeshNode) -> str:
    """A shell command that starts ``node`` in the background, detached from the caller (its
    log appended to ``node.log``, its pid written to ``serve.pid``), for scripts that restart
    nodes themselves. The caller's environment should hold no ``BRIO_`` variables."""
    q = shlex.quote
    return (
        f"cd {q(str(node.dir))} && rm -f data/mesh-address && "
        f"HOME={q(str(node.dir))} BRIO_CONFIG={q(str(node.config))} "
        f"nohup {q(sys.executable)} -m brio serve >> node.log 2>&1 < /dev/null & "
        f"echo $! > {q(str(node.dir / 'serve.pid'))}"
    )


def serve_pid(node: MeshNode) -> int | None:
    """The pid ``serve_command`` last wrote for ``node``, if any."""
    path = node.dir / "serve.pid"
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text.isdigit() else None


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, exited but not reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def launch(node: MeshNode) -> None:
    """Start ``node`` as ``MeshNode.start`` does, without waiting for it (see ``is_up``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIO_") and k != "CI"}
    env.update(HOME=str(node.dir), BRIO_CONFIG=str(node.config))
    (node.dir / "data" / "mesh-address").unlink(missing_ok=True)
    with (node.dir / "node.log").open("ab") as log:
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "brio", "serve"],
            cwd=node.dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def is_up(node: MeshNode) -> bool:
    """Whether a node started by ``launch`` is ready (what ``MeshNode.start`` waits for);
    raises if its process has exited."""
    if node.proc is None:
        return False
    if node.proc.poll() is not None:
        raise AssertionError(f"{node.node_id} exited; log:\n{node.log()[-4000:]}")
    if not (node.dir / "data" / "mesh-address").exists():
        return False
    return node.http_url is None or ready(node.http_url + "/health/ready")
