"""A stock gRPC client (grpcio, stubs made by grpc_tools from the same .proto) talks to a node.

Whatever speaks gRPC can join the conversation: nothing on the wire is specific to grpclib or
betterproto2. The grpcio calls block, so they run in a thread while the node (on this test's
trio loop) keeps serving.
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import trio

from brio import __version__
from tests.certs import make_cluster_certs, tls_config
from tests.nodes import node_config, running_node

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto" / "brio" / "mesh" / "v1"
NODE_ID = "wire-node"
#: grpcio would otherwise honour http_proxy/https_proxy from the environment, even on loopback.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]

T = TypeVar("T")


@dataclass
class Stubs:
    pb2: Any  # mesh_pb2: the messages
    grpc: Any  # mesh_pb2_grpc: MeshStub, MeshAdminStub

    def heartbeat_request(self) -> Any:
        sender = self.pb2.NodeInfo(node_id="stock-client", role="worker", address="127.0.0.1:1")
        return self.pb2.HeartbeatRequest(sender=sender)

    def call_request(self, target: str, method: str = "agent.invoke", **payload: Any) -> Any:
        return self.pb2.MeshRequest(target=target, method=method, json=json.dumps(payload))

    def code(self, name: str) -> int:
        return int(self.pb2.MeshError.Code.Value(f"CODE_{name}"))


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stubs]:
    """grpcio stubs for mesh.proto, importable as mesh_pb2 / mesh_pb2_grpc for this module."""
    out = tmp_path_factory.mktemp("grpcio_stubs")
    # -I at the proto's own directory: the modules are top-level ``mesh_pb2*`` and cannot
    # shadow the real ``brio`` package. The wire names (/brio.mesh.v1.Mesh/Call) come from
    # the proto's ``package``, not from the file's path.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(PROTO_DIR),
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "mesh.proto",
        ],
        check=True,
        capture_output=True,
    )
    names = ("mesh_pb2", "mesh_pb2_grpc")
    assert not any(name in sys.modules for name in names)
    sys.path.insert(0, str(out))
    try:
        yield Stubs(*(importlib.import_module(name) for name in names))
    finally:
        sys.path.remove(str(out))
        for name in names:
            sys.modules.pop(name, None)


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


def mesh_section(**extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "node_id": NODE_ID,
        "listen_addr": "127.0.0.1:0",
        "max_agents": 3,
        **extra,
    }


async def test_heartbeat_call_and_status(tmp_path: Path, stubs: Stubs) -> None:
    config = node_config(tmp_path, mesh=mesh_section())
    async with running_node(config) as node:
        address = node.handle.mesh_address
        assert address is not None

        def talk() -> dict[str, Any]:
            out: dict[str, Any] = {}
            with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
                mesh = stubs.grpc.MeshStub(channel)
                admin = stubs.grpc.MeshAdminStub(channel)
                out["heartbeat"] = mesh.Heartbeat(stubs.heartbeat_request())
                # no grpcio timeout: the call carries no deadline at all
                out["echo"] = mesh.Call(stubs.call_request("echo", prompt="hi"))
                out["echo_local"] = mesh.Call(stubs.call_request(f"{NODE_ID}/echo", prompt="x"))
                out["unknown_agent"] = mesh.Call(stubs.call_request("ghost", prompt="hi"))
                out["unknown_node"] = mesh.Call(stubs.call_request("nope/echo", prompt="hi"))
                out["bad_method"] = mesh.Call(stubs.call_request("echo", "agent.frobnicate"))
                out["bad_json"] = mesh.Call(
                    stubs.pb2.MeshRequest(target="echo", method="agent.invoke", json="{nope")
                )
                out["status"] = admin.Status(stubs.pb2.StatusRequest())
            return out

        out = await in_thread(talk)

        responder = out["heartbeat"].responder
        assert responder.node_id == NODE_ID
        assert responder.role == "coordinator"
        assert responder.version == __version__
        assert responder.address == address
        assert {a.name for a in responder.agents} >= {"echo", "sleep"}
        assert responder.workload.max_agents == 3
        assert not responder.draining
        assert abs(responder.sent_unix_ms / 1000 - time.time()) < 60

        for key in ("echo", "echo_local"):
            reply = out[key]
            assert reply.WhichOneof("payload") == "json", reply
            assert reply.node_id == NODE_ID
        assert json.loads(out["echo"].json) == {"result": "hi"}
        assert json.loads(out["echo_local"].json) == {"result": "x"}

        unknown_agent = out["unknown_agent"]
        assert unknown_agent.WhichOneof("payload") == "error"
        assert unknown_agent.error.code == stubs.code("UNKNOWN_AGENT")
        assert "'ghost'" in unknown_agent.error.message
        assert "echo" in unknown_agent.error.message
        assert "sleep" in unknown_agent.error.message

        unknown_node = out["unknown_node"]
        assert unknown_node.WhichOneof("payload") == "error"
        assert unknown_node.error.code == stubs.code("UNKNOWN_NODE")
        assert "'nope'" in unknown_node.error.message
        assert NODE_ID in unknown_node.error.message.split("known nodes:", 1)[1]

        for key in ("bad_method", "bad_json"):
            reply = out[key]
            assert reply.WhichOneof("payload") == "error", reply
            assert reply.error.code == stubs.code("BAD_REQUEST"), reply
        assert "agent.frobnicate" in out["bad_method"].error.message

        status = out["status"]
        assert status.node.node_id == NODE_ID
        assert status.node.version == __version__
        # the stock client's heartbeat made it a peer in the node's table
        assert "stock-client" in [p.node_id for p in status.peers]
        assert node.handle.mesh is not None
        assert node.handle.mesh.peers.heartbeats_received == 1


async def test_grpcio_deadlines(tmp_path: Path, stubs: Stubs) -> None:
    config = node_config(tmp_path, mesh=mesh_section())
    async with running_node(config) as node:
        address = node.handle.mesh_address
        assert address is not None

        def talk() -> tuple[Any, grpc.RpcError, float, Any]:
            with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
                mesh = stubs.grpc.MeshStub(channel)
                ok = mesh.Call(stubs.call_request("echo", prompt="in time"), timeout=5)
                # the deadline reaches the handler: a slower agent is given up on in time
                slow = stubs.call_request("sleep", input={"ms": 5000})
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as caught:
                    mesh.Call(slow, timeout=0.5)
                took = time.monotonic() - started
                after = mesh.Call(stubs.call_request("echo", prompt="after"), timeout=5)
                return ok, caught.value, took, after

        ok, error, took, after = await in_thread(talk)
        assert json.loads(ok.json) == {"result": "in time"}
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert took < 3
        assert json.loads(after.json) == {"result": "after"}


async def test_mutual_tls(tmp_path: Path, stubs: Stubs, caplog: pytest.LogCaptureFixture) -> None:
    certs = make_cluster_certs(
        tmp_path / "certs", {NODE_ID: ["127.0.0.1"], "stock-client": ["127.0.0.1"]}
    )
    config = node_config(
        tmp_path, mesh=mesh_section(tls=tls_config(certs, NODE_ID, verify_client=True))
    )
    root = certs.ca.cert.read_bytes()
    client = certs.node("stock-client")
    key, chain = client.key.read_bytes(), client.cert.read_bytes()
    async with running_node(config) as node:
        address = node.handle.mesh_address
        assert address is not None
        # The certificate names 127.0.0.1 as an IP SAN; dial that, not "localhost".
        assert address.startswith("127.0.0.1:")

        def heartbeat(credentials: Any, request: Any = None) -> Any:
            with grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS) as channel:
                mesh = stubs.grpc.MeshStub(channel)
                return mesh.Heartbeat(request or stubs.heartbeat_request(), timeout=5)

        with_cert = grpc.ssl_channel_credentials(root, key, chain)
        reply = await in_thread(lambda: heartbeat(with_cert))
        assert reply.responder.node_id == NODE_ID

        def refused() -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as caught:
                heartbeat(grpc.ssl_channel_credentials(root))
            return caught.value

        error = await in_thread(refused)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error

        # the refused handshake did not hurt the node: a good client is still served
        reply = await in_thread(lambda: heartbeat(with_cert))
        assert reply.responder.node_id == NODE_ID
        assert node.handle.mesh is not None
        assert node.handle.mesh.membership.by_node_id("stock-client") is not None

        def impostor() -> grpc.RpcError:
            # the stock client's certificate, but a heartbeat in another node's name
            sender = stubs.pb2.NodeInfo(node_id="node-x", role="worker", address="127.0.0.1:1")
            with pytest.raises(grpc.RpcError) as caught:
                heartbeat(with_cert, stubs.pb2.HeartbeatRequest(sender=sender))
            return caught.value

        error = await in_thread(impostor)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
        assert "stock-client" in (error.details() or "")
        assert node.handle.mesh.membership.by_node_id("node-x") is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
