"""TLS between mesh nodes: SSL contexts for grpclib, and checking ``[mesh.tls]`` files at start.

Every node is both a gRPC server (peers dial it) and a client (it dials peers), and presents the
same certificate in both roles:

- ``server_context``: the node's certificate; with ``verify_client`` every caller must present
  a certificate signed by ``ca_file`` (mTLS), otherwise callers are not asked for one.
- ``client_context``: verifies the server against ``ca_file`` (system CAs without one) *and*
  the address dialled: the IP or DNS name must be in the server certificate's
  subjectAltName. The common name is deliberately not used for that (``hostname_checks_
  common_name = False``), as browsers and gRPC do. The node's own certificate is presented.
- ``node_id_from_cert``: the caller's node id, from the peer certificate that ssl verified.
- ``check_files``: reads and cross-checks the files so that a bad setup fails at start with a
  message naming the ``[mesh.tls]`` key, the path and what is wrong, instead of an opaque
  OpenSSL error at the first handshake. Both context builders call it first.

grpclib takes an ``ssl.SSLContext`` as it is: it only builds (and sets ALPN on) its own context
when given ``ssl=True``, so ours must set ALPN ``h2`` itself. grpclib passes no
``server_hostname`` unless ``ssl_target_name_override`` is configured, and asyncio then uses
the host being dialled, which is what the SAN is checked against.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from brio.config.model import TLSConfig

__all__ = [
    "TLSSetupError",
    "check_files",
    "client_context",
    "node_id_from_cert",
    "server_context",
]

#: TLS 1.2 cipher suites allowed by HTTP/2 (RFC 9113 §9.2.2: ephemeral keys, AEAD only), the
#: same list grpclib uses for its own default context. TLS 1.3 suites are not affected.
_H2_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


class TLSSetupError(Exception):
    """A ``[mesh.tls]`` file is missing, unreadable or does not fit; the message says which."""


def server_context(tls: TLSConfig) -> ssl.SSLContext | None:
    """The context for the node's gRPC listener, or None when ``[mesh.tls]`` is not enabled."""
    if not tls.enabled:
        return None
    cert_file, key_file, ca_file = _checked(tls)
    # Built from scratch rather than with create_default_context(): only ca_file may be
    # trusted for client certificates, never the system's public CAs.
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, cert_file, key_file)
    if tls.verify_client:
        assert ca_file is not None  # _checked() refuses verify_client without ca_file
        _load_ca(ctx, ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(tls: TLSConfig) -> ssl.SSLContext | None:
    """The context for dialling peers, or None when ``[mesh.tls]`` is not enabled."""
    if not tls.enabled:
        return None
    cert_file, key_file, ca_file = _checked(tls)
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.hostname_checks_common_name = False  # the dialled address must be in the SAN
    if ca_file is not None:
        _load_ca(ctx, ca_file)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    _load_chain(ctx, cert_file, key_file)
    return ctx


def node_id_from_cert(cert: dict[str, Any] | None) -> str | None:
    """The node id in a peer certificate (``getpeercert()``): subject CN, else first DNS SAN.

    None without a certificate; ``{}`` is what ssl returns for a certificate it did not
    verify, and counts as none.
    """
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName" and value:
                return str(value)
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "DNS" and value:
            return str(value)
    return None


def check_files(tls: TLSConfig) -> None:
    """Raise ``TLSSetupError`` unless the ``[mesh.tls]`` files can work; no-op when disabled.

    Checked: each file exists, is readable and is PEM of the right kind; the key belongs to
    the certificate; the certificate (and its CA) are within their validity period; it has
    a subjectAltName (peers check the address they dial against it) and, if it restricts
    its use, allows TLS servers (and clients, with ``verify_client``); and it chains up to
    a CA in ``ca_file`` when that is set.
    """
    if tls.enabled:
        _checked(tls)


def _checked(tls: TLSConfig) -> tuple[Path, Path, Path | None]:
    cert_path = _required(tls.cert_file, "cert_file")
    key_path = _required(tls.key_file, "key_file")
    if tls.verify_client and tls.ca_file is None:
        raise TLSSetupError(
            "[mesh.tls] ca_file is not set, but verify_client = true needs it "
            "(the CA that signs the peers' certificates)"
        )
    chain = _load_certificates("cert_file", cert_path)
    key = _load_key("key_file", key_path)
    leaf = chain[0]
    for cert in chain:
        _check_validity("cert_file", cert_path, cert)
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise TLSSetupError(
            f"{_where('key_file', key_path)}: this key does not match the certificate in "
            f"{_where('cert_file', cert_path)} ({_name(leaf.subject)}); "
            "use the key that was generated with that certificate"
        )
    _check_usage(cert_path, leaf, tls.verify_client)
    if tls.ca_file is not None:
        cas = _load_certificates("ca_file", tls.ca_file)
        _check_signed(cert_path, chain, tls.ca_file, cas)
    return cert_path, key_path, tls.ca_file


def _where(key: str, path: Path) -> str:
    return f"[mesh.tls] {key} {str(path)!r}"


def _required(path: Path | None, key: str) -> Path:
    if path is None:
        raise TLSSetupError(f"[mesh.tls] {key} is not set, but [mesh.tls] enabled = true needs it")
    return path


def _read(key: str, path: Path) -> bytes:
    where = _where(key, path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSSetupError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise TLSSetupError(f"{where}: is a directory, not a file") from None
    except PermissionError:
        raise TLSSetupError(f"{where}: cannot be read: permission denied") from None
    except OSError as exc:
        raise TLSSetupError(f"{where}: cannot be read: {exc.strerror or exc}") from None


def _load_certificates(key: str, path: Path) -> list[x509.Certificate]:
    data = _read(key, path)
    where = _where(key, path)
    if b"-----BEGIN" not in data:
        raise TLSSetupError(f"{where}: not a PEM certificate (no '-----BEGIN CERTIFICATE-----')")
    if b"CERTIFICATE-----" not in data and b"PRIVATE KEY-----" in data:
        raise TLSSetupError(
            f"{where}: holds a private key, not a certificate (are cert_file and key_file swapped?)"
        )
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TLSSetupError(f"{where}: not a valid PEM certificate ({exc})") from None


def _load_key(key: str, path: Path) -> PrivateKeyTypes:
    data = _read(key, path)
    where = _where(key, path)
    if b"PRIVATE KEY-----" not in data:
        if b"CERTIFICATE-----" in data:
            raise TLSSetupError(
                f"{where}: holds a certificate, not a private key (are cert_file and key_file "
                "swapped?)"
            )
        raise TLSSetupError(f"{where}: not a PEM private key (no '-----BEGIN ... PRIVATE KEY')")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSSetupError(
            f"{where}: the key is encrypted with a passphrase; brio needs an unencrypted key "
            "(decrypt it with 'openssl pkey -in KEY -out KEY.plain' and keep it mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TLSSetupError(f"{where}: not a valid PEM private key ({exc})") from None


def _spki(public_key: Any) -> bytes:
    data: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def _name(name: x509.Name) -> str:
    return name.rfc4514_string() or "an empty name"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _check_validity(key: str, path: Path, cert: x509.Certificate, what: str = "") -> None:
    now = datetime.now(UTC)
    label = what or f"the certificate {_name(cert.subject)}"
    if now > cert.not_valid_after_utc:
        raise TLSSetupError(
            f"{_where(key, path)}: {label} expired on {_when(cert.not_valid_after_utc)}"
        )
    if now < cert.not_valid_before_utc:
        raise TLSSetupError(
            f"{_where(key, path)}: {label} is not valid yet: valid from "
            f"{_when(cert.not_valid_before_utc)} (is this machine's clock right?)"
        )


def _check_usage(path: Path, cert: x509.Certificate, verify_client: bool) -> None:
    where = _where("cert_file", path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is None or not (
        san.get_values_for_type(x509.DNSName) or san.get_values_for_type(x509.IPAddress)
    ):
        raise TLSSetupError(
            f"{where}: the certificate {_name(cert.subject)} has no subjectAltName; peers "
            "check the address they dial (IP or DNS name) against it and would refuse this "
            "node. Issue it with 'brio certs issue NODE_ID --ip ADDRESS' (see docs/security.md)"
        )
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # no restriction
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        raise TLSSetupError(
            f"{where}: the certificate's extendedKeyUsage lacks serverAuth, so peers will "
            "refuse it when they dial this node"
        )
    if verify_client and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise TLSSetupError(
            f"{where}: the certificate's extendedKeyUsage lacks clientAuth, so peers with "
            "verify_client = true will refuse this node's calls"
        )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _check_signed(
    cert_path: Path, chain: list[x509.Certificate], ca_path: Path, cas: list[x509.Certificate]
) -> None:
    """Walk from the leaf through the intermediates in cert_file up to a CA in ca_file."""
    current = chain[0]
    intermediates = list(chain[1:])
    while True:
        anchor = next((ca for ca in cas if _issued_by(current, ca)), None)
        if anchor is not None:
            _check_validity(
                "ca_file", ca_path, anchor, f"the CA certificate {_name(anchor.subject)}"
            )
            return
        parent = next((c for c in intermediates if _issued_by(current, c)), None)
        if parent is None:
            break
        intermediates.remove(parent)
        current = parent
    leaf = chain[0]
    ca_names = ", ".join(_name(ca.subject) for ca in cas)
    raise TLSSetupError(
        f"{_where('cert_file', cert_path)}: the certificate {_name(leaf.subject)} (issued by "
        f"{_name(current.issuer)}) is not signed by a CA in {_where('ca_file', ca_path)} "
        f"({ca_names}); peers that trust that CA would refuse it"
    )


def _base_context(protocol: ssl._SSLMethod) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_ciphers(_H2_CIPHERS)
    ctx.set_alpn_protocols(["h2"])  # grpclib does not set it on a context it is given
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:  # after _checked(), only on a file changed meanwhile
        raise TLSSetupError(
            f"{_where('cert_file', cert_file)} with {_where('key_file', key_file)}: "
            f"OpenSSL cannot load them: {exc}"
        ) from None


def _load_ca(ctx: ssl.SSLContext, ca_file: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise TLSSetupError(
            f"{_where('ca_file', ca_file)}: OpenSSL cannot load it: {exc}"
        ) from None
