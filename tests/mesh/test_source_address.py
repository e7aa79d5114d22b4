"""Outgoing mesh connections leave from the node's own mesh address (issue 10).

With ``allowed_cidrs = ["127.0.1.0/24"]`` and every node listening inside that range, every
mesh connection was refused: they left from 127.0.0.1, and the nodes sat with 0 peers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from brio.config.model import BrioConfig
from brio.mesh.transport import bind_address
from brio.node.root import NodeHandle, run_node

pytestmark = pytest.mark.postgres


def config(tmp_path: Path, node_id: str, role: str, ip: str, db: str, **mesh: Any) -> BrioConfig:
    return BrioConfig.model_validate(
        {
            "data_dir": str(tmp_path / node_id),
            "server": {"enabled": False},
            "mesh": {
                "enabled": True,
                "node_id": node_id,
                "role": role,
                "listen_addr": f"{ip}:0",
                "insecure": True,
                "failure_detection": {"heartbeat_interval": 0.1, "heartbeat_timeout": 2.0},
                "access_control": {"allowed_cidrs": ["127.0.1.0/24"]},
                **mesh,
            },
            "database": {"url": db},
        }
    )


def test_bind_address_is_a_specific_ip_only() -> None:
    assert bind_address("127.0.1.5:0") == "127.0.1.5"
    assert bind_address("[::1]:50051") == "::1"
    assert bind_address("0.0.0.0:50051") is None
    assert bind_address("[::]:50051") is None
    assert bind_address("node-1.mesh:50051") is None


async def test_nodes_inside_allowed_cidrs_reach_each_other(
    tmp_path: Path, postgres_url: str
) -> None:
    stops = [trio.Event(), trio.Event()]
    async with trio.open_nursery() as nursery:
        n1: NodeHandle = await nursery.start(
            run_node, config(tmp_path, "n1", "coordinator", "127.0.1.1", postgres_url), stops[0]
        )
        peers = [{"id": "n1", "address": n1.mesh_address, "role": "coordinator"}]
        n2_config = config(tmp_path, "n2", "worker", "127.0.1.2", postgres_url, peers=peers)
        n2: NodeHandle = await nursery.start(run_node, n2_config, stops[1])
        assert n1.mesh is not None and n2.mesh is not None
        try:
            with trio.fail_after(15):
                while n1.mesh.connected_peers() < 1 or n2.mesh.connected_peers() < 1:
                    await trio.sleep(0.05)
            # each side dialled the other (n1 dials n2 back once n2's heartbeat named it)
            assert n1.mesh.stats.refused_connections == 0
            assert n2.mesh.stats.refused_connections == 0
            assert n1.mesh.peers.heartbeats_received > 0
            assert n2.mesh.peers.heartbeats_received > 0
        finally:
            for stop in stops:
                stop.set()
