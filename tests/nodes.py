"""A real node in-process (store, supervisor, hypercorn on a free loopback port), for the
API tests and the mesh tests that need one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from brio.config.model import BrioConfig
from brio.node.root import NodeHandle, run_node


@dataclass
class Node:
    handle: NodeHandle
    url: str
    client: httpx.AsyncClient
    config: BrioConfig

    async def submit(self, **body: Any) -> dict[str, Any]:
        resp = await self.client.post("/api/tasks", json=body)
        assert resp.status_code == 202, resp.text
        return resp.json()  # type: ignore[no-any-return]

    async def wait_for(
        self,
        task_id: str,
        statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
        timeout: float = 15,
    ) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                task = (await self.client.get(f"/api/tasks/{task_id}")).json()
                if task["status"] in statuses:
                    return task  # type: ignore[no-any-return]
                await trio.sleep(0.02)


def node_config(tmp_path: Path, **sections: Any) -> BrioConfig:
    raw: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace": 2},
        "mesh": {"node_id": "test-node", "max_agents": 4},
        "logging": {"level": "debug"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return BrioConfig.model_validate(raw)


@asynccontextmanager
async def running_node(config: BrioConfig, token: str | None = None) -> AsyncIterator[Node]:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        handle: NodeHandle = await nursery.start(run_node, config, shutdown)
        url = handle.http_urls[0]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:
            yield Node(handle, url, client, config)
        shutdown.set()
