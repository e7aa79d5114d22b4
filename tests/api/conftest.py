"""The ``node`` fixture: a real node in-process, with the test agents of tests/api/agents.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.nodes import Node, node_config, running_node


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    config = node_config(
        tmp_path,
        agents={
            "hist": {"entrypoint": "tests.api.agents:history"},
            "boom": {"entrypoint": "tests.api.agents:boom"},
            "slow": {"entrypoint": "tests.api.agents:slow", "timeout": 0.3},
            "weird": {"entrypoint": "tests.api.agents:unserialisable"},
            "exits": {"entrypoint": "tests.api.agents:exits"},
        },
    )
    async with running_node(config) as n:
        yield n
