"""What a node imports to run (issue 12 target 6: ``brio serve`` start-up was almost all imports).

Each case starts a real node in a fresh interpreter, stops it once it is up, and lists the
heavy packages in ``sys.modules``: a single node on SQLite loads none of the mesh's or
PostgreSQL's; the same node with the mesh enabled loads the mesh's (so that the probe is seen
to find them). ``bench/startup.py`` measures what this saves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: Packages only the mesh, PostgreSQL, llm agents or the CLI's tables need.
HEAVY = (
    "asyncpg",
    "betterproto2",
    "cryptography",
    "dns",
    "grpclib",
    "httpx",
    "rich",
    "stamina",
    "trio_asyncio",
)

PROBE = """
import json, sys
import trio
from brio.config.model import BrioConfig
from brio.node.root import run_node

async def main() -> None:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_node, BrioConfig.model_validate(json.loads(sys.argv[1])), shutdown)
        shutdown.set()

trio.run(main)
heavy = json.loads(sys.argv[2])
print("loaded:", json.dumps(sorted(h for h in heavy if h in sys.modules)))
"""


def loaded_by_a_node(tmp_path: Path, **mesh: object) -> set[str]:
    config = {
        "data_dir": str(tmp_path / "data"),
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace": 1},
        "mesh": {"node_id": "probe", **mesh},
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(config), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.splitlines()[-1]
    assert last.startswith("loaded:"), done.stdout
    return set(json.loads(last.removeprefix("loaded:")))


def test_a_single_sqlite_node_loads_no_mesh_postgresql_or_llm_package(tmp_path: Path) -> None:
    assert loaded_by_a_node(tmp_path) == set()


def test_a_node_with_the_mesh_loads_the_mesh_packages(tmp_path: Path) -> None:
    loaded = loaded_by_a_node(tmp_path, enabled=True, listen_addr="127.0.0.1:0")
    assert {"grpclib", "betterproto2", "trio_asyncio", "dns"} <= loaded, loaded
    assert "asyncpg" not in loaded
