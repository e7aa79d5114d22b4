"""Run ``python -m brio serve`` as a real child process and talk to it over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class NodeProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"node did not exit after SIGTERM; log:\n{self.log()}") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_node_on_free_port(cwd: Path, env: dict[str, str] | None = None) -> NodeProcess:
    """Start a node whose HTTP port is a free one (``BRIO_SERVER__PORT``)."""
    port = free_port()
    return start_node(
        cwd, f"http://127.0.0.1:{port}", {"BRIO_SERVER__PORT": str(port), **(env or {})}
    )


def start_node(
    cwd: Path, url: str, env: dict[str, str] | None = None, ready_timeout: float = 30
) -> NodeProcess:
    """Start a node in ``cwd`` with a clean environment and wait until it answers."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIO_") and k != "CI"}
    child_env["HOME"] = str(cwd)  # no ~/.config/brio/brio.toml from the developer
    child_env.update(env or {})
    log_path = cwd / "node.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "brio", "serve"],
            cwd=cwd,
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    node = NodeProcess(proc, url, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"node exited with {proc.returncode}; log:\n{node.log()}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return node
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"node not ready after {ready_timeout}s; log:\n{node.log()}")
