"""brio.mesh.tls: real certificates (tests/certs.py), real TLS handshakes on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from brio import aio
from brio.config.model import TLSConfig
from brio.mesh.tls import (
    TLSSetupError,
    check_files,
    client_context,
    node_id_from_cert,
    server_context,
)
from tests.certs import ClusterCerts, make_cluster_certs, tls_config


@pytest.fixture
def certs(tmp_path: Path) -> ClusterCerts:
    # node-c's certificate names no IP: dialling it at 127.0.0.1 must fail.
    return make_cluster_certs(
        tmp_path / "certs", {"node-a": ["127.0.0.1"], "node-b": ["127.0.0.1"], "node-c": []}
    )


@pytest.fixture
def other_ca(tmp_path: Path) -> ClusterCerts:
    return make_cluster_certs(tmp_path / "other", {"rogue": ["127.0.0.1"]})


def tls(c: ClusterCerts, node_id: str, verify_client: bool = True, **changes: Any) -> TLSConfig:
    return TLSConfig.model_validate({**tls_config(c, node_id, verify_client), **changes})


def server_ctx(c: ClusterCerts, node_id: str, verify_client: bool = True) -> ssl.SSLContext:
    ctx = server_context(tls(c, node_id, verify_client))
    assert ctx is not None
    return ctx


def client_ctx(c: ClusterCerts, node_id: str) -> ssl.SSLContext:
    ctx = client_context(tls(c, node_id))
    assert ctx is not None
    return ctx


def bare_client_ctx(
    ca_file: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context made without brio's checks: what a stranger could dial with."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.set_alpn_protocols(["h2"])
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class Outcome:
    server_cert: dict[str, Any] | None = None
    server_alpn: str | None = None
    server_error: BaseException | None = None
    client_cert: dict[str, Any] | None = None
    client_alpn: str | None = None
    client_error: BaseException | None = None
    client_data: bytes = b""


async def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str = "127.0.0.1"
) -> Outcome:
    """One connection: the server answers b"ok" after its handshake; record both sides."""
    out = Outcome()
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]

    async def serve() -> None:
        async with listener:
            tcp = await listener.accept()
        stream = trio.SSLStream(tcp, server, server_side=True)
        try:
            await stream.do_handshake()
            out.server_cert = stream.getpeercert()
            out.server_alpn = stream.selected_alpn_protocol()
            await stream.send_all(b"ok")
            await stream.receive_some()  # until the client closes
        except trio.BrokenResourceError as exc:
            out.server_error = exc.__cause__ or exc
        finally:
            await trio.aclose_forcefully(stream)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            stream = trio.SSLStream(tcp, client, server_hostname=server_hostname)
            try:
                await stream.do_handshake()
                out.client_cert = stream.getpeercert()
                out.client_alpn = stream.selected_alpn_protocol()
                # TLS 1.3: a server that refuses the client's certificate says so after the
                # client's side of the handshake is done, so read to see it.
                out.client_data = bytes(await stream.receive_some())
                await stream.aclose()
            except trio.BrokenResourceError as exc:
                out.client_error = exc.__cause__ or exc
            finally:
                await trio.aclose_forcefully(stream)
    return out


# --- contexts -------------------------------------------------------------------------------


def test_contexts_are_none_when_tls_is_disabled() -> None:
    assert server_context(TLSConfig()) is None
    assert client_context(TLSConfig()) is None
    check_files(TLSConfig(cert_file=Path("/nonexistent")))  # disabled: nothing to check


def test_context_settings(certs: ClusterCerts) -> None:
    server = server_ctx(certs, "node-a")
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_ctx(certs, "node-a", verify_client=False).verify_mode == ssl.CERT_NONE
    client = client_ctx(certs, "node-a")
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    assert not client.hostname_checks_common_name
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    # only our CA is trusted by a client with ca_file, not the system's public CAs
    assert [c["subject"] for c in client.get_ca_certs()] == [((("commonName", "Brio mesh CA"),),)]


async def test_mtls_handshake_negotiates_h2_and_each_side_sees_the_other_node_id(
    certs: ClusterCerts,
) -> None:
    out = await handshake(server_ctx(certs, "node-a"), client_ctx(certs, "node-b"))
    assert out.server_error is None
    assert out.client_error is None
    assert out.client_data == b"ok"
    assert out.server_alpn == out.client_alpn == "h2"
    assert node_id_from_cert(out.server_cert) == "node-b"  # the caller
    assert node_id_from_cert(out.client_cert) == "node-a"  # the server dialled


async def test_without_verify_client_the_server_asks_for_no_certificate(
    certs: ClusterCerts,
) -> None:
    out = await handshake(
        server_ctx(certs, "node-a", verify_client=False), client_ctx(certs, "node-b")
    )
    assert out.client_data == b"ok"
    assert out.server_cert is None
    assert node_id_from_cert(out.server_cert) is None
    # and a client without a certificate gets in
    out = await handshake(
        server_ctx(certs, "node-a", verify_client=False), bare_client_ctx(certs.ca.cert)
    )
    assert out.client_data == b"ok"


async def test_a_client_without_certificate_is_refused_with_verify_client(
    certs: ClusterCerts,
) -> None:
    out = await handshake(server_ctx(certs, "node-a"), bare_client_ctx(certs.ca.cert))
    assert isinstance(out.server_error, ssl.SSLError)
    assert out.server_error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    # TLS 1.3: the client finished its handshake, then the connection ends without data
    assert out.client_data == b""
    assert isinstance(out.client_error, ssl.SSLError)


async def test_a_client_certificate_from_another_ca_is_refused(
    certs: ClusterCerts, other_ca: ClusterCerts
) -> None:
    rogue = other_ca.node("rogue")
    client = bare_client_ctx(certs.ca.cert, rogue.cert, rogue.key)  # trusts our server
    out = await handshake(server_ctx(certs, "node-a"), client)
    assert isinstance(out.server_error, ssl.SSLCertVerificationError)
    assert out.server_error.verify_message == "unable to get local issuer certificate"
    assert out.client_data == b""


async def test_a_server_from_another_ca_is_refused_by_the_client(
    certs: ClusterCerts, other_ca: ClusterCerts
) -> None:
    out = await handshake(server_ctx(other_ca, "rogue"), client_ctx(certs, "node-b"))
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)
    assert out.server_cert is None


async def test_the_client_refuses_a_server_whose_san_lacks_the_dialled_ip(
    certs: ClusterCerts,
) -> None:
    out = await handshake(server_ctx(certs, "node-c"), client_ctx(certs, "node-b"))
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)
    assert "IP address mismatch" in out.client_error.verify_message
    # the same server dialled by its DNS SAN (the node id) is accepted
    out = await handshake(
        server_ctx(certs, "node-c"), client_ctx(certs, "node-b"), server_hostname="node-c"
    )
    assert out.client_data == b"ok"
    assert node_id_from_cert(out.client_cert) == "node-c"


async def test_a_client_without_ca_file_uses_the_system_cas_and_refuses_a_private_ca(
    certs: ClusterCerts,
) -> None:
    config = tls(certs, "node-b", verify_client=False, ca_file=None)
    client = client_context(config)
    assert client is not None
    out = await handshake(server_ctx(certs, "node-a", verify_client=False), client)
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)


async def test_a_grpclib_call_over_mtls_reads_the_callers_node_id(certs: ClusterCerts) -> None:
    from grpclib.client import Channel
    from grpclib.events import RecvRequest, listen
    from grpclib.exceptions import StreamTerminatedError
    from grpclib.health.service import Health
    from grpclib.health.v1.health_grpc import HealthStub
    from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
    from grpclib.server import Server

    callers: list[str | None] = []
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> Any:
        server = Server([Health()])

        async def on_request(event: Any) -> None:
            callers.append(node_id_from_cert(event.peer.cert()))

        listen(server, RecvRequest, on_request)
        await server.start("127.0.0.1", port, ssl=server_ctx(certs, "node-a"))
        channel = Channel("127.0.0.1", port, ssl=client_ctx(certs, "node-b"))
        stranger = Channel("127.0.0.1", port, ssl=bare_client_ctx(certs.ca.cert))
        try:
            reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=10)
            # no client certificate: grpclib sees only the connection drop (TLS 1.3)
            with pytest.raises(StreamTerminatedError, match="Connection lost"):
                await HealthStub(stranger).Check(HealthCheckRequest(), timeout=10)
            return reply
        finally:
            channel.close()
            stranger.close()
            server.close()
            await server.wait_closed()

    async with aio.open_loop():
        reply = await aio.call(scenario)
    assert reply.status == HealthCheckResponse.SERVING
    assert callers == ["node-b"]


# --- node_id_from_cert ----------------------------------------------------------------------


def test_node_id_from_cert_prefers_cn_then_first_dns_san() -> None:
    assert node_id_from_cert(None) is None
    assert node_id_from_cert({}) is None
    cert = {
        "subject": ((("organizationName", "x"),), (("commonName", "node-1"),)),
        "subjectAltName": (("DNS", "other"),),
    }
    assert node_id_from_cert(cert) == "node-1"
    no_cn = {
        "subject": ((("organizationName", "x"),),),
        "subjectAltName": (("IP Address", "10.0.0.1"), ("DNS", "node-2"), ("DNS", "n2")),
    }
    assert node_id_from_cert(no_cn) == "node-2"
    assert (
        node_id_from_cert({"subject": (), "subjectAltName": (("IP Address", "10.0.0.1"),)}) is None
    )


# --- TLSSetupError ----------------------------------------------------------------------------


def _ca(c: ClusterCerts) -> tuple[x509.Certificate, Any]:
    ca = x509.load_pem_x509_certificate(c.ca.cert.read_bytes())
    key = serialization.load_pem_private_key(c.ca.key.read_bytes(), password=None)
    return ca, key


def forge(
    c: ClusterCerts,
    name: str,
    *,
    valid: tuple[timedelta, timedelta] = (timedelta(days=-1), timedelta(days=30)),
    san: bool = True,
    eku: list[x509.ObjectIdentifier] | None = None,
) -> tuple[Path, Path]:
    """A node certificate signed by ``c``'s CA, with the given oddities; returns cert, key."""
    ca, ca_key = _ca(c)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + valid[0])
        .not_valid_after(now + valid[1])
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = c.dir / f"{name}.crt", c.dir / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def setup_error(config: TLSConfig) -> str:
    with pytest.raises(TLSSetupError) as info:
        check_files(config)
    # the context builders check the same way
    with pytest.raises(TLSSetupError):
        server_context(config)
    with pytest.raises(TLSSetupError):
        client_context(config)
    return str(info.value)


def test_valid_files_pass(certs: ClusterCerts) -> None:
    check_files(tls(certs, "node-a"))
    check_files(tls(certs, "node-a", verify_client=False, ca_file=None))


def test_unset_files_are_named(certs: ClusterCerts) -> None:
    message = setup_error(tls(certs, "node-a", cert_file=None))
    assert message.startswith("[mesh.tls] cert_file is not set")
    message = setup_error(tls(certs, "node-a", key_file=None))
    assert message.startswith("[mesh.tls] key_file is not set")
    message = setup_error(tls(certs, "node-a", ca_file=None))
    assert message.startswith("[mesh.tls] ca_file is not set, but verify_client = true needs it")


@pytest.mark.parametrize("key", ["cert_file", "key_file", "ca_file"])
def test_missing_file(certs: ClusterCerts, tmp_path: Path, key: str) -> None:
    missing = tmp_path / "nope" / f"{key}.pem"
    override: dict[str, Any] = {key: str(missing)}
    message = setup_error(tls(certs, "node-a", **override))
    assert message == f"[mesh.tls] {key} '{missing}': no such file"


@pytest.mark.parametrize("key", ["cert_file", "key_file", "ca_file"])
def test_a_directory_instead_of_a_file(certs: ClusterCerts, tmp_path: Path, key: str) -> None:
    override: dict[str, Any] = {key: str(tmp_path)}
    message = setup_error(tls(certs, "node-a", **override))
    assert message == f"[mesh.tls] {key} '{tmp_path}': is a directory, not a file"


def test_an_unreadable_file(certs: ClusterCerts, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod 000 does not stop root, which these tests may run as: refuse the read instead
    target = certs.node("node-a").key
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(TLSSetupError) as info:
        check_files(tls(certs, "node-a"))
    assert str(info.value) == f"[mesh.tls] key_file '{target}': cannot be read: permission denied"


def test_files_that_are_not_pem(certs: ClusterCerts, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    for key in ("cert_file", "ca_file"):
        override: dict[str, Any] = {key: str(junk)}
        message = setup_error(tls(certs, "node-a", **override))
        assert message.startswith(f"[mesh.tls] {key} '{junk}': not a PEM certificate")
    message = setup_error(tls(certs, "node-a", key_file=str(junk)))
    assert message.startswith(f"[mesh.tls] key_file '{junk}': not a PEM private key")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    message = setup_error(tls(certs, "node-a", cert_file=str(broken)))
    assert message.startswith(f"[mesh.tls] cert_file '{broken}': not a valid PEM certificate")


def test_swapped_cert_and_key_are_recognised(certs: ClusterCerts) -> None:
    node = certs.node("node-a")
    message = setup_error(tls(certs, "node-a", cert_file=str(node.key), key_file=str(node.cert)))
    assert message == (
        f"[mesh.tls] cert_file '{node.key}': holds a private key, not a certificate "
        "(are cert_file and key_file swapped?)"
    )


def test_an_encrypted_key(certs: ClusterCerts, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(certs.node("node-a").key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    message = setup_error(tls(certs, "node-a", key_file=str(encrypted)))
    assert message.startswith(f"[mesh.tls] key_file '{encrypted}': the key is encrypted")


def test_a_key_that_does_not_match_the_certificate(certs: ClusterCerts) -> None:
    other_key = certs.node("node-b").key
    message = setup_error(tls(certs, "node-a", key_file=str(other_key)))
    assert message.startswith(
        f"[mesh.tls] key_file '{other_key}': this key does not match the certificate in "
        f"[mesh.tls] cert_file '{certs.node('node-a').cert}' (CN=node-a)"
    )


def test_expired_and_not_yet_valid_certificates(certs: ClusterCerts) -> None:
    cert, key = forge(certs, "old", valid=(timedelta(days=-30), timedelta(days=-1)))
    message = setup_error(tls(certs, "node-a", cert_file=str(cert), key_file=str(key)))
    assert message.startswith(f"[mesh.tls] cert_file '{cert}': the certificate CN=old expired on ")
    cert, key = forge(certs, "future", valid=(timedelta(days=1), timedelta(days=30)))
    message = setup_error(tls(certs, "node-a", cert_file=str(cert), key_file=str(key)))
    assert message.startswith(
        f"[mesh.tls] cert_file '{cert}': the certificate CN=future is not valid yet: valid from "
    )


def test_a_certificate_not_signed_by_ca_file(certs: ClusterCerts, other_ca: ClusterCerts) -> None:
    rogue = other_ca.node("rogue")
    config = tls(certs, "node-a", cert_file=str(rogue.cert), key_file=str(rogue.key))
    message = setup_error(config)
    assert message == (
        f"[mesh.tls] cert_file '{rogue.cert}': the certificate CN=rogue (issued by "
        f"CN=Brio mesh CA) is not signed by a CA in [mesh.tls] ca_file '{certs.ca.cert}' "
        "(CN=Brio mesh CA); peers that trust that CA would refuse it"
    )


def test_a_certificate_without_subject_alt_name(certs: ClusterCerts) -> None:
    cert, key = forge(certs, "cn-only", san=False)
    message = setup_error(tls(certs, "node-a", cert_file=str(cert), key_file=str(key)))
    assert message.startswith(
        f"[mesh.tls] cert_file '{cert}': the certificate CN=cn-only has no subjectAltName"
    )


def test_extended_key_usage_must_allow_the_roles(certs: ClusterCerts) -> None:
    cert, key = forge(certs, "client-only", eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    message = setup_error(tls(certs, "node-a", cert_file=str(cert), key_file=str(key)))
    assert message.startswith(f"[mesh.tls] cert_file '{cert}': the certificate's extendedKeyUsage")
    assert "lacks serverAuth" in message
    cert, key = forge(certs, "server-only", eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    message = setup_error(tls(certs, "node-a", cert_file=str(cert), key_file=str(key)))
    assert "lacks clientAuth" in message
    # without verify_client, a server-only certificate is fine
    check_files(tls(certs, "node-a", False, cert_file=str(cert), key_file=str(key)))


def test_the_guides_openssl_recipe_as_corrected_in_docs_security_md(tmp_path: Path) -> None:
    """The commands in docs/security.md make files that pass, and the plain guide's do not."""
    import shlex
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")

    def run(command: str) -> None:
        args = shlex.split(command)
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    ec_key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    run(
        f"req -x509 {ec_key} -keyout ca.key -out ca.crt -days 3650 -subj '/CN=Brio mesh CA' "
        "-addext 'basicConstraints=critical,CA:TRUE,pathlen:0' "
        "-addext 'keyUsage=critical,keyCertSign,cRLSign'"
    )
    run(f"req {ec_key} -keyout worker-1.key -out worker-1.csr -subj /CN=worker-1")
    (tmp_path / "worker-1.ext").write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth, clientAuth\n"
        "subjectAltName = DNS:worker-1, IP:127.0.0.1\n"
    )
    sign = "x509 -req -in worker-1.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365"
    run(f"{sign} -extfile worker-1.ext -out worker-1.crt")
    config = TLSConfig(
        enabled=True,
        cert_file=tmp_path / "worker-1.crt",
        key_file=tmp_path / "worker-1.key",
        ca_file=tmp_path / "ca.crt",
        verify_client=True,
    )
    check_files(config)
    # without -extfile (the guide's own recipe) the certificate has no SAN
    run(f"{sign} -out plain.crt")
    with pytest.raises(TLSSetupError, match="has no subjectAltName"):
        check_files(config.model_copy(update={"cert_file": tmp_path / "plain.crt"}))
