"""`brio mesh`: one-line errors for everything an operator can get wrong, and real answers.

The cluster test (tests/system/test_mesh_cluster.py) covers the tables against three nodes;
here a single mesh node runs as a real process and the CLI runs in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from brio.cli.main import main
from tests.system.nodeproc import NodeProcess, free_port, start_node_on_free_port


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["mesh", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No config file or BRIO_* variable of the developer's leaks into the CLI."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in list(os.environ):
        if name.startswith("BRIO_"):
            monkeypatch.delenv(name)
    return tmp_path


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, str]]:
    cwd = tmp_path_factory.mktemp("solo")
    mesh_port = free_port()
    node = start_node_on_free_port(
        cwd,
        {
            "BRIO_NODE_ID": "solo",
            "BRIO_MESH_ENABLED": "true",
            "BRIO_MESH_LISTEN": f"127.0.0.1:{mesh_port}",
        },
    )
    try:
        yield node, f"127.0.0.1:{mesh_port}"
    finally:
        assert node.terminate() == 0


def test_status_and_stats_of_a_single_node(
    solo: tuple[NodeProcess, str], isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, address = solo
    code, out, err = run(capsys, "status", "--node", address)
    assert code == 0, err
    assert out.startswith("solo (coordinator) at ")
    assert "0 peer(s)" in out
    code, out, err = run(capsys, "stats", "--node", address, "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["node_id"] == "solo"
    assert stats["workload"]["max_agents"] == 32
    assert "echo" in stats["agents"]
    code, out, err = run(capsys, "status", "solo", "--node", address)
    assert code == 0, err
    assert "node_id" in out and "solo" in out and "active_agents" in out


def test_unknown_node_is_named_with_the_known_ones(
    solo: tuple[NodeProcess, str], isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, address = solo
    code, _, err = run(capsys, "ping", "ghost", "--node", address)
    assert code == 1
    assert err == "brio: unknown node 'ghost'; known nodes: solo\n"


def test_drain_then_leave_stops_the_node(
    solo: tuple[NodeProcess, str],
    isolated: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last test of the module on ``solo``: it leaves, and its process exits 0."""
    node, address = solo
    # a CLI with another identity (no config: the host name) acts on another node...
    code, _, err = run(capsys, "drain", "--node", address)
    assert code == 1
    assert "drain of 'solo' is accepted only from coordinators" in err
    # ...while the node's own identity may: leave first wants a drain
    monkeypatch.setenv("BRIO_NODE_ID", "solo")
    code, _, err = run(capsys, "leave", "--node", address)
    assert code == 1
    assert err.startswith("brio: solo is not draining: run `brio mesh drain` first"), err
    code, out, err = run(capsys, "drain", "--node", address)
    assert code == 0, err
    assert (
        out == "solo is draining: no new tasks are placed on it; 0 running task(s) finish there\n"
    )
    code, out, err = run(capsys, "status", "solo", "--node", address)
    assert code == 0 and "draining       yes" in out, out
    code, out, err = run(capsys, "remove", "ghost", "--force", "--node", address)
    assert code == 1 and err == "brio: unknown node 'ghost'; known nodes: solo\n"
    code, out, err = run(capsys, "leave", "--node", address, "--json")
    assert code == 0, err
    reply = json.loads(out)
    assert reply["node_id"] == "solo"
    assert reply["message"] == "solo left the mesh; goodbye said to no peer; the node stops now"
    assert node.proc.wait(30) == 0, node.log()


def test_unreachable_node(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: refused
        code, out, err = run(capsys, "status", "--node", f"127.0.0.1:{port}", "--timeout", "2")
    assert code == 1 and out == ""
    assert err.startswith(f"brio: cannot reach the node's mesh port at 127.0.0.1:{port}: ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "--node", "nohost"], "brio: --node 'nohost': the ':port' is missing"),
        (["status", "--timeout", "0"], "brio: --timeout: expected a positive number"),
        (["ping", "x", "--count", "0"], "brio: --count: expected 1 to 100, got 0"),
    ],
)
def test_bad_arguments(
    isolated: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = run(capsys, *args)
    assert code == 1
    assert err.startswith(message), err


def test_port_zero_without_a_running_node(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (isolated / "brio.toml").write_text('[mesh]\nlisten_addr = "127.0.0.1:0"\n')
    code, _, err = run(capsys, "status")
    assert code == 1
    assert "port 0" in err and "--node" in err


def test_bad_tls_files_are_named(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (isolated / "brio.toml").write_text(
        "[mesh]\nlisten_addr = '127.0.0.1:50999'\n[mesh.tls]\nenabled = true\n"
        "cert_file = 'missing.crt'\nkey_file = 'missing.key'\n"
    )
    code, _, err = run(capsys, "status")
    assert code == 1
    assert "[mesh.tls] cert_file" in err and "missing.crt" in err
    assert "Traceback" not in err


def test_invalid_config_is_reported(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (isolated / "brio.toml").write_text("[mesh]\nlisten_addr = 'nope'\n")
    code, _, err = run(capsys, "status")
    assert code == 1
    assert "invalid configuration" in err and "listen_addr" in err


def test_a_wildcard_address_is_dialled_on_loopback_with_the_node_id_for_tls(
    isolated: Path,
) -> None:
    from brio.cli.mesh_cmd import _target
    from brio.config.model import BrioConfig

    config = BrioConfig.model_validate(
        {"data_dir": str(isolated / "data"), "mesh": {"node_id": "n1"}}
    )
    assert _target(config, None) == ("127.0.0.1:50051", "n1")
    (isolated / "data").mkdir()
    (isolated / "data" / "mesh-address").write_text("[::]:6000\n")
    assert _target(config, None) == ("[::1]:6000", "n1")
    (isolated / "data" / "mesh-address").write_text("10.0.0.5:6000\n")
    assert _target(config, None) == ("10.0.0.5:6000", None)
    assert _target(config, "10.0.0.9:1") == ("10.0.0.9:1", None)


def test_status_table_off_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The columns of docs/mesh.md, one peer a line, as scripts read it."""
    from brio.cli.mesh_cmd import _print_status
    from brio.mesh import pb

    now_ms = 1_000_000_000
    monkeypatch.setattr("brio.cli.mesh_cmd.time.time", lambda: now_ms / 1000 + 1)
    reply = pb.StatusResponse(
        node=pb.NodeInfo(node_id="coordinator-1", role="coordinator", address="127.0.0.2:50051"),
        peers=[
            pb.PeerStatus(
                node_id="worker-1",
                address="127.0.0.3:50051",
                status="healthy",
                last_seen_unix_ms=now_ms,
                latency_ms=26.0,
            ),
            pb.PeerStatus(address="127.0.0.4:50051", status="unknown"),
        ],
        lease=pb.LeaseStatus(role="primary", epoch=4, lease_remaining=3.2, voter=True),
    )
    _print_status(reply, detail=False)
    assert capsys.readouterr().out == (
        "coordinator-1 (coordinator) at 127.0.0.2:50051: 2 peer(s)\n"
        "lease: primary, epoch 4, 3.2 s left\n"
        "Node ID   Address          Status   Last Seen  Latency\n"
        "worker-1  127.0.0.3:50051  healthy  1s ago     26ms\n"
        "?         127.0.0.4:50051  unknown  never      -\n"
    )


def test_topology_and_stats_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from brio.cli.mesh_cmd import _print_stats, _print_topology
    from brio.mesh import pb

    _print_topology(
        pb.TopologyResponse(
            nodes=[
                pb.NodeInfo(
                    node_id="coordinator-1",
                    role="coordinator",
                    address="127.0.0.2:50051",
                    workload=pb.Load(active=1, max_agents=32),
                ),
                pb.NodeInfo(node_id="worker-1", role="worker", address="127.0.0.3:50051"),
            ],
            edges=[pb.Edge(from_node="coordinator-1", to_node="worker-1", status="healthy")],
            unreachable=["worker-2"],
        )
    )
    assert capsys.readouterr().out == (
        "Node ID        Role         Address          Active  Max\n"
        "coordinator-1  coordinator  127.0.0.2:50051  1       32\n"
        "worker-1       worker       127.0.0.3:50051  0       0\n"
        "\n"
        "From           To        Status   Latency\n"
        "coordinator-1  worker-1  healthy  -\n"
        "\n"
        "no view from: worker-2\n"
    )
    _print_stats(pb.StatsResponse(node_id="worker-1", role="worker", agents=["echo", "sleep"]))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "node_id              worker-1"
    assert lines[1] == "role                 worker"
    assert "heartbeats_received  0" in lines
    assert "tasks_run            0" in lines and "mean_task_time       -" in lines
    assert lines[-1] == "agents               echo, sleep"


def test_every_action_names_a_mesh_admin_method() -> None:
    from brio.cli.mesh_cmd import add_arguments
    from brio.mesh import methods

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for action in ("status", "ping", "topology", "stats", "drain", "leave", "remove"):
        assert (
            methods.ADMIN[action.capitalize()].path
            == f"/brio.mesh.v1.MeshAdmin/{action.capitalize()}"
        )
        args = [action, "x"] if action in ("ping", "remove") else [action]
        assert parser.parse_args(args).mesh_command == action
    assert parser.parse_args(["remove", "w1", "--force"]).force
    assert parser.parse_args(["leave", "--force"]).force
    with pytest.raises(SystemExit):
        parser.parse_args(["remove"])  # remove names the node


def test_the_cli_signs_its_admin_calls_with_the_cluster_secret(
    tmp_path: Path,
    isolated: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a cluster secret, drain (a signed admin call) is refused unless the CLI signs it
    with the same secret, which it takes from the node's config as the node does."""
    secret = "c0ffee" * 11
    mesh_port = free_port()
    node = start_node_on_free_port(
        tmp_path,
        {
            "BRIO_NODE_ID": "signed",
            "BRIO_MESH_ENABLED": "true",
            "BRIO_MESH_LISTEN": f"127.0.0.1:{mesh_port}",
            "BRIO_MESH_CLUSTER_SECRET": secret,
        },
    )
    address = f"127.0.0.1:{mesh_port}"
    try:
        monkeypatch.setenv("BRIO_NODE_ID", "signed")
        monkeypatch.setenv("BRIO_MESH_CLUSTER_SECRET", "another" * 8)
        code, _, err = run(capsys, "drain", "--node", address)
        assert (
            code == 1
            and err == "brio: the cluster-secret signature does not match (another secret?)\n"
        ), err
        monkeypatch.setenv("BRIO_MESH_CLUSTER_SECRET", secret)
        code, out, err = run(capsys, "drain", "--node", address)
        assert code == 0, err
        assert out.startswith("signed is draining"), out
    finally:
        assert node.terminate() == 0
