"""``brio serve`` that cannot start says why in one line, exits 1, and shows no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system.nodeproc import free_port, start_node_on_free_port


def serve(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIO_")}
    child_env |= {"HOME": str(cwd), **env}
    return subprocess.run(
        [sys.executable, "-m", "brio", "serve"],
        cwd=cwd,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve(tmp_path, {"BRIO_SERVER__PORT": str(port)})
    assert done.returncode == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port} ([server] host, port)" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_database_names_the_url_without_the_password(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nobody listens there
    done = serve(tmp_path, {"BRIO_DATABASE_URL": f"postgresql://brio:hunter2@127.0.0.1:{port}/x"})
    assert done.returncode == 1
    assert f"brio: store: cannot connect to postgresql://brio:***@127.0.0.1:{port}/x" in done.stderr
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[server]\nport = "eighty"\n', "[server] port: got 'eighty'; expected a whole number"),
        ("[mesh]\nmax_agent = 3\n", "[mesh] max_agent: got 3; unknown key"),
        ('[database]\nurl = "postgresql://u:${NOPE_UNSET}@h/db"\n', "NOPE_UNSET"),
    ],
)
def test_bad_config_file(tmp_path: Path, toml: str, expected: str) -> None:
    (tmp_path / "brio.toml").write_text(toml)
    done = serve(tmp_path, {})
    assert done.returncode == 1
    assert "brio: invalid configuration" in done.stderr
    assert expected in done.stderr
    assert str(tmp_path / "brio.toml") in done.stderr or "brio.toml" in done.stderr
    assert "Traceback" not in done.stderr


def test_broken_agent_section_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "brio.toml").write_text('[agents.files]\nkind = "shell"\n')
    done = serve(tmp_path, {})
    assert done.returncode == 1
    assert "[agents.files]" in done.stderr and "allowed_commands" in done.stderr
    assert "Traceback" not in done.stderr


def test_two_nodes_on_one_data_dir(tmp_path: Path) -> None:
    first = start_node_on_free_port(tmp_path)
    try:
        second = serve(tmp_path, {"BRIO_SERVER__PORT": str(free_port())})
    finally:
        assert first.terminate() == 0
    assert second.returncode == 1
    assert "is in use by another brio process" in second.stderr
    assert f"(pid {first.proc.pid})" in second.stderr


def test_corrupt_lease_state_stops_a_mesh_node(tmp_path: Path) -> None:
    # Starting over at term 0 could let the node vote twice in one term: refuse instead.
    state = tmp_path / "data" / "lease-state.json"
    state.parent.mkdir()
    state.write_text('{"version": 1, "term": "seven"')
    env = {
        "BRIO_DATA_DIR": str(tmp_path / "data"),
        "BRIO_SERVER__PORT": str(free_port()),
        "BRIO_MESH__ENABLED": "true",
        "BRIO_MESH__LISTEN_ADDR": "127.0.0.1:0",
    }
    done = serve(tmp_path, env)
    assert done.returncode == 1
    assert str(state) in done.stderr
    assert "Traceback" not in done.stderr
