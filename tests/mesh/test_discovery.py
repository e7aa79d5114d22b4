"""Peer discovery against real servers on loopback: a dnslib DNS server, a fake Kubernetes API.

The DNS server (``tests/dns.py``, fixture ``dns_server`` in conftest) runs in a thread (UDP,
127.0.0.1, a free port) with records the test changes while discovery runs. The Kubernetes API
is ``http.server`` in a thread, speaking the real API's JSON (``PodList``, ``Status``), checking
the bearer token and the ``labelSelector``; its TLS variant uses a ``trustme`` CA.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dnslib
import pytest
import trio
import trustme

from brio.config.load import load_config
from brio.config.model import DiscoveryConfig, MeshConfig, PeerConfig
from brio.mesh.discovery import (
    DiscoveryError,
    FoundPeer,
    list_k8s_pods,
    resolve_dns,
    run_discovery,
)
from tests.dns import DnsServer

REFRESH = 0.05
LOGGER = "brio.mesh.discovery"


# --- helpers -----------------------------------------------------------------------------


class Reports:
    """The ``found`` callback: every reported set, in order, for the test to await."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[frozenset[FoundPeer]](math.inf)

    def __call__(self, peers: frozenset[FoundPeer]) -> None:
        self.send.send_nowait(peers)

    async def next(self) -> frozenset[FoundPeer]:
        with trio.fail_after(5):
            return await self.receive.receive()

    async def until(self, expected: frozenset[FoundPeer]) -> list[frozenset[FoundPeer]]:
        """Wait for ``expected``; return the sets reported before it (oldest first)."""
        before: list[frozenset[FoundPeer]] = []
        while (peers := await self.next()) != expected:
            before.append(peers)
        return before

    def drain(self) -> list[frozenset[FoundPeer]]:
        out: list[frozenset[FoundPeer]] = []
        while True:
            try:
                out.append(self.receive.receive_nowait())
            except trio.WouldBlock:
                return out


def peers(*addresses: str) -> frozenset[FoundPeer]:
    return frozenset(FoundPeer(address) for address in addresses)


def pod_peers(**by_name: str) -> frozenset[FoundPeer]:
    return frozenset(FoundPeer(address, node_id=name) for name, address in by_name.items())


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


async def free_udp_port_that_never_answers() -> tuple[trio.socket.SocketType, int]:
    """A bound UDP socket nobody reads: queries vanish, with no ICMP 'port unreachable'."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


async def closed_tcp_port() -> int:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- DNS ---------------------------------------------------------------------------------


async def test_dns_a_and_aaaa_records_are_paired_with_the_port(dns_server: DnsServer) -> None:
    dns_server.zone.set(
        {
            "brio-mesh.test": [dnslib.A("127.0.0.2"), dnslib.A("127.0.0.3"), dnslib.AAAA("::1")],
            "v4-only.test": [dnslib.A("127.0.0.4")],
            "txt-only.test": [dnslib.TXT("not an address")],
        }
    )
    servers = [dns_server.address]
    found = await resolve_dns("brio-mesh.test", 50051, servers, 2.0)
    assert found == peers("127.0.0.2:50051", "127.0.0.3:50051", "[::1]:50051")
    assert all(p.node_id is None and p.role is None for p in found)
    # no AAAA (NOERROR, empty) is fine; a trailing dot too
    assert await resolve_dns("v4-only.test.", 7000, servers, 2.0) == peers("127.0.0.4:7000")
    # the name exists but has no address records: an empty set, not an error
    assert await resolve_dns("txt-only.test", 50051, servers, 2.0) == frozenset()


async def test_dns_name_that_does_not_exist_is_an_empty_set(dns_server: DnsServer) -> None:
    dns_server.zone.set({"brio-mesh.test": [dnslib.A("127.0.0.2")]})
    assert await resolve_dns("nothing-here.test", 50051, [dns_server.address], 2.0) == frozenset()
    assert await resolve_dns("_mesh._tcp.nothing.test", 1, [dns_server.address], 2.0) == frozenset()


async def test_dns_srv_targets_are_resolved_with_their_ports(dns_server: DnsServer) -> None:
    dns_server.zone.set(
        {
            "_mesh._tcp.brio.test": [
                dnslib.SRV(priority=0, weight=10, port=50061, target="node-a.brio.test."),
                dnslib.SRV(priority=0, weight=10, port=50062, target="node-b.brio.test."),
                dnslib.SRV(priority=5, weight=0, port=50063, target="gone.brio.test."),
            ],
            "node-a.brio.test": [dnslib.A("127.0.0.2")],
            "node-b.brio.test": [dnslib.A("127.0.0.3"), dnslib.AAAA("::1")],
        }
    )
    # the port argument is not used: each SRV record carries its own
    found = await resolve_dns("_mesh._tcp.brio.test", 1, [dns_server.address], 2.0)
    assert found == peers("127.0.0.2:50061", "127.0.0.3:50062", "[::1]:50062")


async def test_dns_servfail_is_an_error(dns_server: DnsServer) -> None:
    dns_server.zone.servfail = True
    with pytest.raises(DiscoveryError, match=r"brio-mesh\.test.*SERVFAIL"):
        await resolve_dns("brio-mesh.test", 50051, [dns_server.address], 2.0)


async def test_dns_server_that_never_answers_fails_within_the_timeout() -> None:
    sock, port = await free_udp_port_that_never_answers()
    with sock:
        start = trio.current_time()
        with pytest.raises(DiscoveryError, match=r"no DNS answer for brio-mesh\.test .*0\.3s"):
            await resolve_dns("brio-mesh.test", 50051, [f"127.0.0.1:{port}"], 0.3)
        assert 0.25 <= trio.current_time() - start < 1.5


async def test_dns_lookup_is_cancelled_at_once() -> None:
    """A cancel does not wait for the lookup's timeout."""
    sock, port = await free_udp_port_that_never_answers()
    with sock:
        start = trio.current_time()
        with trio.move_on_after(0.1):
            await resolve_dns("brio-mesh.test", 50051, [f"127.0.0.1:{port}"], 5.0)
        assert trio.current_time() - start < 0.5


async def test_dns_lookup_cancelled_by_a_trio_scope_stops_and_closes_its_socket() -> None:
    """The lookup runs on trio, not in a thread: cancelling it ends it, socket and all.

    The unresponsive server sees the query (the lookup was waiting on it); after the cancel
    the client's UDP port is closed, so a datagram sent there comes back as ICMP "port
    unreachable". An abandoned resolver thread would still be listening, and retrying.
    """
    sock, port = await free_udp_port_that_never_answers()
    with sock:
        start = trio.current_time()
        with trio.move_on_after(0.2) as scope:
            await resolve_dns("brio-mesh.test", 50051, [f"127.0.0.1:{port}"], 30.0)
        late = trio.current_time() - start - 0.2
        assert scope.cancelled_caught
        assert late < 0.2
        with trio.fail_after(1):
            query, client = await sock.recvfrom(512)
        assert str(dnslib.DNSRecord.parse(query).q.qname) == "brio-mesh.test."
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as probe:
        await probe.connect(client)
        await probe.send(b"a late answer")
        with trio.fail_after(1), pytest.raises(ConnectionRefusedError):
            await probe.recv(512)


async def test_run_discovery_dns_follows_the_records(
    dns_server: DnsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    zone = dns_server.zone
    zone.set({"brio-mesh.test": [dnslib.A("127.0.0.2"), dnslib.A("127.0.0.3")]})
    seed = FoundPeer("127.0.0.9:50051", node_id="seed-1", role="coordinator")
    config = MeshConfig(
        peers=[PeerConfig(id="seed-1", address="127.0.0.9:50051", role="coordinator")],
        discovery=DiscoveryConfig(
            method="dns",
            dns_name="brio-mesh.test",
            dns_servers=[dns_server.address],
            refresh_interval=REFRESH,
        ),
    )
    reports = Reports()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_discovery, config, reports)
        # the first lookup has been reported by the time start() returns; seeds are included
        first = frozenset({seed}) | peers("127.0.0.2:50051", "127.0.0.3:50051")
        assert reports.drain()[0] == first

        # .3 goes away, .4 arrives
        zone.set({"brio-mesh.test": [dnslib.A("127.0.0.2"), dnslib.A("127.0.0.4")]})
        second = frozenset({seed}) | peers("127.0.0.2:50051", "127.0.0.4:50051")
        assert set(await reports.until(second)) <= {first}

        # a failing server: nothing is reported (the previous set stands), one warning
        zone.servfail = True
        await trio.sleep(REFRESH * 6)
        assert set(reports.drain()) <= {second}
        [warning] = warnings_from(caplog)
        assert "brio-mesh.test" in warning
        assert "SERVFAIL" in warning
        assert "keeping the previous peers" in warning

        # back, with a change: reported, and the recovery is logged once
        zone.set({"brio-mesh.test": [dnslib.A("127.0.0.5")]})
        zone.servfail = False
        third = frozenset({seed}) | peers("127.0.0.5:50051")
        assert await reports.until(third) == []
        assert any("works again" in r.getMessage() for r in caplog.records)
        assert len(warnings_from(caplog)) == 1
        nursery.cancel_scope.cancel()


async def test_run_discovery_dns_first_attempt_fails_but_starts_with_the_seeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sock, port = await free_udp_port_that_never_answers()
    config = MeshConfig(
        peers=[PeerConfig(address="127.0.0.9:50051")],
        discovery=DiscoveryConfig(
            method="dns", dns_name="brio-mesh.test", dns_servers=[f"127.0.0.1:{port}"]
        ),
    )
    reports = Reports()
    with sock:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_discovery(
                    config, reports, task_status=task_status, lookup_timeout=0.2
                )
            )
            assert reports.drain() == [peers("127.0.0.9:50051")]
            [warning] = warnings_from(caplog)
            assert "brio-mesh.test" in warning
            nursery.cancel_scope.cancel()


async def test_run_discovery_dns_needs_a_name() -> None:
    config = MeshConfig(discovery=DiscoveryConfig(method="dns"))
    with pytest.raises(DiscoveryError, match="dns_name"):
        await run_discovery(config, Reports())


# --- static ------------------------------------------------------------------------------


async def test_static_reports_the_configured_peers_once() -> None:
    config = MeshConfig(
        peers=[
            PeerConfig(id="coordinator-2", address="10.0.1.2:50051", role="coordinator"),
            PeerConfig(id="worker-1", address="10.0.1.10:50051", role="worker"),
            PeerConfig(address="[fd00::7]:50051"),
        ]
    )
    reports = Reports()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_discovery, config, reports)
        expected = frozenset(
            {
                FoundPeer("10.0.1.2:50051", "coordinator-2", "coordinator"),
                FoundPeer("10.0.1.10:50051", "worker-1", "worker"),
                FoundPeer("[fd00::7]:50051", None, None),  # no role written: none guessed
            }
        )
        assert reports.drain() == [expected]
        await trio.sleep(0.1)
        assert reports.drain() == []  # once, and still running
        nursery.cancel_scope.cancel()


async def test_static_peers_from_brio_mesh_peers_have_no_id_or_role() -> None:
    env = {"BRIO_MESH_PEERS": "coordinator-1:50051, node-3:50052,"}
    mesh = load_config(env=env, search=False).config.mesh
    reports = Reports()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_discovery, mesh, reports)
        assert reports.drain() == [peers("coordinator-1:50051", "node-3:50052")]
        nursery.cancel_scope.cancel()


# --- the Kubernetes API ------------------------------------------------------------------

NAMESPACE = "brio"
SELECTOR = "app=brio-kernel"
TOKEN = "token-1"


def make_pod(
    name: str,
    ip: str | None,
    *,
    phase: str = "Running",
    ready: bool = True,
    deleting: bool = False,
    labels: dict[str, str] | None = None,
    mesh_port: int | None = None,
    namespace: str = NAMESPACE,
) -> dict[str, Any]:
    """A pod as ``GET /api/v1/namespaces/NS/pods`` returns it (the fields that matter)."""
    brio_ports: list[dict[str, Any]] = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    containers: list[dict[str, Any]] = [
        {"name": "brio", "image": "brio-kernel:latest", "ports": brio_ports},
        {"name": "log-shipper", "image": "fluent-bit:3", "ports": []},
    ]
    if mesh_port is not None:  # declared on the sidecar: any container counts
        containers[1]["ports"] = [{"name": "mesh", "containerPort": mesh_port, "protocol": "TCP"}]
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "resourceVersion": "4242",
        "creationTimestamp": "2025-01-01T00:00:00Z",
        "labels": {"app": "brio-kernel"} if labels is None else labels,
    }
    if deleting:
        metadata["deletionTimestamp"] = "2025-01-01T01:00:00Z"
        metadata["deletionGracePeriodSeconds"] = 30
    flag = "True" if ready else "False"
    status: dict[str, Any] = {
        "phase": phase,
        "hostIP": "192.168.49.2",
        "conditions": [
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": flag},
            {"type": "ContainersReady", "status": flag},
            {"type": "PodScheduled", "status": "True"},
        ],
    }
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {
        "metadata": metadata,
        "spec": {"containers": containers, "restartPolicy": "Always"},
        "status": status,
    }


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selectors (``a=b,c==d,e!=f``), as the API server reads them."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        else:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
    return True


@dataclass
class FakeK8s:
    """What the fake API server serves; the test changes it while discovery runs."""

    pods: list[dict[str, Any]] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=lambda: {TOKEN: "admin"})  # or "nobody"
    broken: bool = False  # answer HTML instead of JSON, as a misrouted proxy would
    url: str = ""
    seen_selectors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, query: str, authorization: str) -> tuple[int, str, bytes]:
        parts = path.strip("/").split("/")
        if len(parts) != 5 or parts[:3] != ["api", "v1", "namespaces"] or parts[4] != "pods":
            return self._status(404, "NotFound", "the server could not find the requested resource")
        namespace = parts[3]
        scheme, _, token = authorization.partition(" ")
        with self.lock:
            who = self.tokens.get(token) if scheme == "Bearer" else None
            broken, pods = self.broken, list(self.pods)
        if who is None:
            return self._status(401, "Unauthorized", "Unauthorized")
        if who != "admin":
            return self._status(
                403,
                "Forbidden",
                f'pods is forbidden: User "system:serviceaccount:{namespace}:{who}" cannot '
                f'list resource "pods" in API group "" in the namespace "{namespace}"',
            )
        if broken:
            return 200, "text/html", b"<html><body>502 Bad Gateway</body></html>"
        selector = parse_qs(query).get("labelSelector", [""])[0]
        self.seen_selectors.append(selector)
        items = [
            pod
            for pod in pods
            if pod["metadata"]["namespace"] == namespace
            and selector_matches(selector, pod["metadata"]["labels"])
        ]
        body = {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "4242"},
            "items": items,
        }
        return 200, "application/json", json.dumps(body).encode()

    def _status(self, code: int, reason: str, message: str) -> tuple[int, str, bytes]:
        return code, "application/json", json.dumps(status_body(code, reason, message)).encode()


class _Handler(BaseHTTPRequestHandler):
    server: _K8sHTTPServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        code, content_type, body = self.server.fake.answer(
            url.path, url.query, self.headers.get("Authorization", "")
        )
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _K8sHTTPServer(ThreadingHTTPServer):
    """A threading HTTP(S) server whose TLS handshakes run in each connection's thread.

    Wrapping the listening socket would run the handshake inside ``accept()`` on the serving
    thread, so one client that connects and goes quiet would block ``shutdown()`` forever.
    """

    daemon_threads = True
    fake: FakeK8s
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            request.settimeout(5)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                # a client that does not trust us, or one that never finishes the handshake
                return
        super().finish_request(request, client_address)


@dataclass
class TLSFiles:
    ca: trustme.CA
    ca_file: Path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("k8s-ca") / "ca.crt"
    ca.cert_pem.write_to_path(str(path))
    return TLSFiles(ca, path)


def _serve_k8s(tls: trustme.CA | None) -> Iterator[FakeK8s]:
    server = _K8sHTTPServer(("127.0.0.1", 0), _Handler)
    server.fake = fake = FakeK8s()
    scheme = "http"
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.issue_cert("127.0.0.1").configure_cert(context)
        server.tls = context
        scheme = "https"
    fake.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def k8s() -> Iterator[FakeK8s]:
    yield from _serve_k8s(None)


@pytest.fixture
def k8s_tls(tls_files: TLSFiles) -> Iterator[FakeK8s]:
    yield from _serve_k8s(tls_files.ca)


# --- Kubernetes --------------------------------------------------------------------------


async def test_k8s_running_ready_pods_are_peers(k8s: FakeK8s) -> None:
    k8s.pods = [
        make_pod("brio-0", "127.0.0.2"),
        make_pod("brio-1", "127.0.0.3", mesh_port=50099),  # the named port wins
        make_pod("brio-2", "fd00::12"),
        make_pod("brio-pending", "127.0.0.4", phase="Pending"),
        make_pod("brio-unscheduled", None, phase="Pending"),
        make_pod("brio-terminating", "127.0.0.5", deleting=True),
        make_pod("brio-not-ready", "127.0.0.6", ready=False),
        make_pod("brio-done", "127.0.0.7", phase="Succeeded"),
        make_pod("postgres-0", "127.0.0.8", labels={"app": "postgres"}),
        make_pod("brio-elsewhere", "127.0.0.9", namespace="other"),
    ]
    found = await list_k8s_pods(k8s.url, NAMESPACE, SELECTOR, TOKEN, None, 50051, 2.0)
    assert found == pod_peers(
        **{"brio-0": "127.0.0.2:50051", "brio-1": "127.0.0.3:50099", "brio-2": "[fd00::12]:50051"}
    )
    assert all(p.role is None for p in found)
    assert k8s.seen_selectors == [SELECTOR]


async def test_k8s_pod_without_conditions_counts_as_ready(k8s: FakeK8s) -> None:
    pod = make_pod("brio-0", "127.0.0.2")
    del pod["status"]["conditions"]
    k8s.pods = [pod]
    found = await list_k8s_pods(k8s.url, NAMESPACE, SELECTOR, TOKEN, None, 50051, 2.0)
    assert found == pod_peers(**{"brio-0": "127.0.0.2:50051"})


async def test_k8s_wrong_token_is_refused_with_the_api_message(k8s: FakeK8s) -> None:
    with pytest.raises(DiscoveryError, match=r"HTTP 401 Unauthorized: Unauthorized"):
        await list_k8s_pods(k8s.url, NAMESPACE, SELECTOR, "stolen", None, 50051, 2.0)


async def test_k8s_missing_rbac_is_forbidden_with_the_api_message(k8s: FakeK8s) -> None:
    k8s.tokens["token-default"] = "default"
    with pytest.raises(DiscoveryError) as caught:
        await list_k8s_pods(k8s.url, NAMESPACE, SELECTOR, "token-default", None, 50051, 2.0)
    message = str(caught.value)
    assert "HTTP 403 Forbidden" in message
    assert 'cannot list resource "pods"' in message
    assert "RoleBinding" in message


async def test_k8s_not_found_bad_json_and_refused_connection(k8s: FakeK8s) -> None:
    with pytest.raises(DiscoveryError, match=r"HTTP 404 Not Found: the server could not find"):
        await list_k8s_pods(f"{k8s.url}/wrong", NAMESPACE, SELECTOR, TOKEN, None, 50051, 2.0)
    k8s.broken = True
    with pytest.raises(DiscoveryError, match=r"not JSON"):
        await list_k8s_pods(k8s.url, NAMESPACE, SELECTOR, TOKEN, None, 50051, 2.0)
    port = await closed_tcp_port()
    with pytest.raises(DiscoveryError, match=rf"127\.0\.0\.1:{port}/.*cannot connect.*refused"):
        await list_k8s_pods(f"http://127.0.0.1:{port}", NAMESPACE, SELECTOR, TOKEN, None, 1, 2.0)


async def test_k8s_tls_is_verified_with_the_ca_file(
    k8s_tls: FakeK8s, tls_files: TLSFiles, tmp_path: Path
) -> None:
    k8s_tls.pods = [make_pod("brio-0", "127.0.0.2")]
    found = await list_k8s_pods(
        k8s_tls.url, NAMESPACE, SELECTOR, TOKEN, tls_files.ca_file, 50051, 2.0
    )
    assert found == pod_peers(**{"brio-0": "127.0.0.2:50051"})

    other_ca = tmp_path / "other-ca.crt"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with pytest.raises(DiscoveryError) as caught:
        await list_k8s_pods(k8s_tls.url, NAMESPACE, SELECTOR, TOKEN, other_ca, 50051, 2.0)
    message = str(caught.value)
    assert "TLS verification failed" in message
    assert str(other_ca) in message

    not_a_cert = tmp_path / "garbage.crt"
    not_a_cert.write_text("hello")
    with pytest.raises(DiscoveryError, match=r"k8s_ca_file .* not a readable PEM"):
        await list_k8s_pods(k8s_tls.url, NAMESPACE, SELECTOR, TOKEN, not_a_cert, 50051, 2.0)


def in_cluster(
    tmp_path: Path, k8s: FakeK8s, tls_files: TLSFiles
) -> tuple[MeshConfig, dict[str, str], Path]:
    """A pod's view: service account files and KUBERNETES_SERVICE_* pointing at the fake."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN + "\n")
    (account / "namespace").write_text(NAMESPACE)
    host, port = k8s.url.removeprefix("https://").split(":")
    env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    config = MeshConfig(
        discovery=DiscoveryConfig(
            method="kubernetes",
            k8s_label_selector=SELECTOR,
            k8s_token_file=account / "token",
            k8s_ca_file=tls_files.ca_file,
            refresh_interval=REFRESH,
        )
    )
    return config, env, account / "token"


async def test_run_discovery_k8s_in_cluster_follows_the_pods(
    k8s_tls: FakeK8s, tls_files: TLSFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    config, env, token_file = in_cluster(tmp_path, k8s_tls, tls_files)
    k8s_tls.pods = [make_pod("brio-0", "127.0.0.2"), make_pod("brio-1", "127.0.0.3")]
    reports = Reports()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_discovery(config, reports, task_status=task_status, env=env)
        )
        first = pod_peers(**{"brio-0": "127.0.0.2:50051", "brio-1": "127.0.0.3:50051"})
        assert reports.drain()[0] == first

        # a rolling update: brio-1 terminates, brio-2 is pending, then ready
        k8s_tls.pods = [
            make_pod("brio-0", "127.0.0.2"),
            make_pod("brio-1", "127.0.0.3", deleting=True),
            make_pod("brio-2", "127.0.0.4", phase="Pending"),
        ]
        second = pod_peers(**{"brio-0": "127.0.0.2:50051"})
        await reports.until(second)
        k8s_tls.pods[2] = make_pod("brio-2", "127.0.0.4")
        third = pod_peers(**{"brio-0": "127.0.0.2:50051", "brio-2": "127.0.0.4:50051"})
        await reports.until(third)

        # the kubelet rotates the token: the file is read again at every refresh
        k8s_tls.tokens = {"token-2": "admin"}
        token_file.write_text("token-2")
        k8s_tls.pods = [make_pod("brio-2", "127.0.0.4")]
        fourth = pod_peers(**{"brio-2": "127.0.0.4:50051"})
        await reports.until(fourth)

        # the API refuses us: the last set stands, one warning names the namespace and error
        k8s_tls.tokens = {}
        await trio.sleep(REFRESH * 6)
        assert set(reports.drain()) <= {fourth}
        [warning] = warnings_from(caplog)
        assert f"namespace {NAMESPACE!r}" in warning
        assert "HTTP 401" in warning
        nursery.cancel_scope.cancel()


async def test_run_discovery_k8s_missing_pieces_name_what_to_set(tmp_path: Path) -> None:
    def config(**keys: Any) -> MeshConfig:
        base: dict[str, Any] = {"method": "kubernetes", "k8s_label_selector": SELECTOR}
        return MeshConfig(discovery=DiscoveryConfig(**(base | keys)))

    with pytest.raises(DiscoveryError, match=r"k8s_api_url.*KUBERNETES_SERVICE_HOST"):
        await run_discovery(config(), Reports(), env={})
    with pytest.raises(DiscoveryError, match=r"k8s_label_selector.*BRIO_MESH_K8S_LABEL_SELECTOR"):
        await run_discovery(config(k8s_label_selector=None, k8s_api_url="http://x:1"), Reports())
    token = tmp_path / "token"
    with pytest.raises(DiscoveryError, match="k8s_token_file"):
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
        await run_discovery(config(k8s_token_file=token), Reports(), env=env)
    token.write_text(TOKEN)
    with pytest.raises(DiscoveryError, match=r"k8s_namespace.*BRIO_MESH_K8S_NAMESPACE"):
        await run_discovery(
            config(k8s_api_url="http://127.0.0.1:1", k8s_token_file=token), Reports()
        )


async def test_run_discovery_k8s_outside_the_cluster_without_a_token(
    k8s: FakeK8s, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``kubectl proxy`` style: an explicit http URL, no token file, so no Authorization."""
    config = MeshConfig(
        peers=[PeerConfig(id="brio-0", address="127.0.0.2:50051", role="coordinator")],
        discovery=DiscoveryConfig(
            method="kubernetes",
            k8s_api_url=k8s.url,
            k8s_namespace=NAMESPACE,
            k8s_label_selector=SELECTOR,
            k8s_token_file=tmp_path / "no-token",
        ),
    )
    reports = Reports()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_discovery(
                config, reports, task_status=task_status, lookup_timeout=2.0
            )
        )
        # this API wants a token: the first attempt fails, the seed is still reported
        assert reports.drain() == [
            frozenset({FoundPeer("127.0.0.2:50051", "brio-0", "coordinator")})
        ]
        [warning] = warnings_from(caplog)
        assert "no token was sent" in warning
        nursery.cancel_scope.cancel()


async def test_seed_and_discovered_peer_with_one_address_are_merged(
    k8s: FakeK8s, tmp_path: Path
) -> None:
    k8s.pods = [make_pod("brio-0", "127.0.0.2"), make_pod("brio-1", "127.0.0.3")]
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = MeshConfig(
        peers=[PeerConfig(address="127.0.0.2:50051", role="coordinator")],
        discovery=DiscoveryConfig(
            method="kubernetes",
            k8s_api_url=k8s.url,
            k8s_namespace=NAMESPACE,
            k8s_label_selector=SELECTOR,
            k8s_token_file=token_file,
        ),
    )
    reports = Reports()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_discovery, config, reports)
        assert reports.drain() == [
            frozenset(
                {
                    FoundPeer("127.0.0.2:50051", "brio-0", "coordinator"),
                    FoundPeer("127.0.0.3:50051", "brio-1", None),
                }
            )
        ]
        nursery.cancel_scope.cancel()
