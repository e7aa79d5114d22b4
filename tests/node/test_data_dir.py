"""The data directory: one node process at a time, and a node id that outlives the host name."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import trio

from brio.config.model import BrioConfig
from brio.core.tasks import TaskStatus
from brio.node.data_dir import DataDirBusy, locked_data_dir, node_id
from brio.node.root import NodeHandle, run_node
from brio.store import open_store
from brio.store.base import NewTask


def config(data_dir: Path, **mesh: str) -> BrioConfig:
    return BrioConfig.model_validate(
        {"data_dir": str(data_dir), "server": {"port": 0}, "mesh": mesh}
    )


def test_a_second_holder_is_refused_with_the_first_pid(tmp_path: Path) -> None:
    busy = r"in use by another brio process \(pid \d+\)"
    with (
        locked_data_dir(tmp_path / "d"),
        pytest.raises(DataDirBusy, match=busy),
        locked_data_dir(tmp_path / "d"),
    ):
        pass
    with locked_data_dir(tmp_path / "d"):  # released: usable again
        pass


def test_node_id_is_remembered_unless_configured(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    assert node_id(config(tmp_path)) == socket.gethostname()
    (tmp_path / "node-id").write_text("old-host\n")
    assert node_id(config(tmp_path)) == "old-host"
    assert node_id(config(tmp_path, node_id="explicit")) == "explicit"


async def test_a_renamed_host_still_finds_its_unfinished_tasks(tmp_path: Path) -> None:
    db = tmp_path / "brio.db"
    store = await open_store(f"sqlite:///{db}")
    task, _ = await store.create_task(NewTask(agent="echo", prompt="left over"))
    claimed = await store.claim_task("old-host", ["echo"])
    assert claimed is not None and await store.mark_running(task.id, 1) is not None
    await store.close()
    (tmp_path / "node-id").write_text("old-host\n")  # written by the first start

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        handle: NodeHandle = await nursery.start(run_node, config(tmp_path), shutdown)
        async with httpx.AsyncClient(base_url=handle.http_urls[0]) as client:
            assert (await client.get("/health")).json()["node_id"] == "old-host"
            with trio.fail_after(10):
                while True:
                    got = (await client.get(f"/api/tasks/{task.id}")).json()
                    if got["status"] == TaskStatus.SUCCEEDED:
                        break
                    await trio.sleep(0.02)
        assert got["attempt"] == 2 and got["result"] == "left over"
        shutdown.set()
