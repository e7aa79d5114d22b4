"""A small private CA for the mesh: ``brio certs init`` and ``brio certs issue`` (see the CLI).

``make_ca`` writes ``DIR/ca.crt`` and ``DIR/ca.key``; ``issue_node_cert`` signs
``DIR/NODE_ID.crt`` and ``DIR/NODE_ID.key`` with it. Keys are EC P-256, written mode 0600.
A node certificate carries the node id as its subject CN (the mesh takes a caller's node id
from there) and, as subjectAltName, ``DNS:NODE_ID`` plus every address peers dial it by: the
client side of a connection checks the dialled IP or DNS name against the SAN.

Files are written atomically (a temporary file in the same directory, then a rename), and
existing files are only replaced with ``force=True``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_DAYS",
    "NODE_DAYS",
    "CertPaths",
    "CertsError",
    "issue_node_cert",
    "make_ca",
    "validate_node_id",
]

CA_DAYS = 3650
NODE_DAYS = 365
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_COMMON_NAME = "Brio mesh CA"

# Also a file name and a DNS SAN: no '/', no leading '.' or '-', and at most the 64
# characters an X.509 common name may have.
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# Certificates start a little in the past so that a peer whose clock lags accepts them.
_BACKDATE = timedelta(minutes=5)


class CertsError(Exception):
    """A certificate could not be made; the message says what and where."""


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path


def validate_node_id(node_id: str) -> str:
    if not _NODE_ID.match(node_id):
        raise CertsError(
            f"invalid node id {node_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if node_id.lower() == "ca":
        raise CertsError("invalid node id 'ca': its files would replace the CA's ca.crt/ca.key")
    return node_id


def make_ca(
    dir: Path | str, days: int = CA_DAYS, *, force: bool = False, common_name: str = CA_COMMON_NAME
) -> CertPaths:
    """Write a new CA certificate and key to ``dir`` (created if missing)."""
    directory = Path(dir)
    paths = CertPaths(directory / CA_CERT, directory / CA_KEY)
    _check_days(days)
    _prepare(
        directory,
        paths,
        force,
        "; a new CA is not trusted by nodes that have the old ca.crt, and their certificates "
        "would need reissuing",
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(paths, cert, key)
    return paths


def issue_node_cert(
    dir: Path | str,
    node_id: str,
    ips: Iterable[str] = (),
    dns: Iterable[str] = (),
    days: int = NODE_DAYS,
    *,
    force: bool = False,
) -> CertPaths:
    """Sign a certificate for ``node_id`` with the CA in ``dir``; write NODE_ID.crt/.key there."""
    directory = Path(dir)
    validate_node_id(node_id)
    _check_days(days)
    addresses = [_parse_ip(ip) for ip in ips]
    names = [_check_dns(name) for name in dns]
    ca_cert, ca_key = _load_ca(directory)
    paths = CertPaths(directory / f"{node_id}.crt", directory / f"{node_id}.key")
    now = datetime.now(UTC)
    not_after = now + timedelta(days=days)
    if not_after > ca_cert.not_valid_after_utc:
        left = (ca_cert.not_valid_after_utc - now).days
        raise CertsError(
            f"--days {days} would outlast the CA in {directory / CA_CERT}, which expires on "
            f"{ca_cert.not_valid_after_utc:%Y-%m-%d} ({left} days from now); "
            "give a smaller --days or make a new CA"
        )
    _prepare(directory, paths, force)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(node_id)]
    for name in names:
        if x509.DNSName(name) not in sans:
            sans.append(x509.DNSName(name))
    for address in addresses:
        if x509.IPAddress(address) not in sans:
            sans.append(x509.IPAddress(address))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    algorithm = (
        None
        if isinstance(ca_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else (hashes.SHA256())
    )
    cert = builder.sign(ca_key, algorithm)
    _write(paths, cert, key)
    return paths


def describe(cert_path: Path) -> str:
    """One line about a certificate file: subject, SANs and expiry (for the CLI's output)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    parts = [cert.subject.rfc4514_string()]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        entries = [f"DNS:{v}" for v in san.get_values_for_type(x509.DNSName)]
        entries += [f"IP:{v}" for v in san.get_values_for_type(x509.IPAddress)]
        parts.append("SAN " + ", ".join(entries))
    parts.append(f"valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    return "; ".join(parts)


def _check_days(days: int) -> None:
    if days < 1:
        raise CertsError(f"--days must be at least 1, not {days}")


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise CertsError(
            f"--ip {text!r} is not an IP address (e.g. 10.0.1.2 or ::1); use --dns for a host name"
        ) from None


def _check_dns(name: str) -> str:
    labels = name.split(".")
    if labels and labels[0] == "*":  # a wildcard, only as the whole first label
        labels = labels[1:]
    if not labels or len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise CertsError(
            f"--dns {name!r} is not a DNS name (letters, digits and '-' in dot-separated "
            "labels, e.g. worker-1.mesh.internal); use --ip for an address"
        )
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name.lower()
    raise CertsError(f"--dns {name!r} is an IP address; give it with --ip instead")


def _prepare(directory: Path, paths: CertPaths, force: bool, why: str = "") -> None:
    if directory.exists() and not directory.is_dir():
        raise CertsError(f"{directory} is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CertsError(
            f"cannot create the directory {directory}: {exc.strerror or exc}"
        ) from None
    if not force:
        existing = [str(p) for p in (paths.cert, paths.key) if p.exists() or p.is_symlink()]
        if existing:
            raise CertsError(
                f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                f"not replacing (give --force to overwrite){why}"
            )


def _load_ca(directory: Path) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    missing = [str(p) for p in (cert_path, key_path) if not p.is_file()]
    if missing:
        raise CertsError(
            f"no CA in {directory}: {' and '.join(missing)} not found; run "
            f"'brio certs init --dir {directory}' first (or give --dir)"
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except OSError as exc:
        raise CertsError(f"cannot read {cert_path}: {exc.strerror or exc}") from None
    except ValueError:
        raise CertsError(f"{cert_path} is not a PEM certificate") from None
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(
            key_path.read_bytes(), password=None
        )
    except OSError as exc:
        raise CertsError(f"cannot read {key_path}: {exc.strerror or exc}") from None
    except TypeError:
        raise CertsError(
            f"{key_path} is encrypted with a passphrase; brio certs needs an unencrypted CA key"
        ) from None
    except ValueError:
        raise CertsError(f"{key_path} is not a PEM private key") from None
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | dsa.DSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise CertsError(f"{key_path}: this kind of key cannot sign certificates")
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*public) != key.public_key().public_bytes(*public):
        raise CertsError(f"{key_path} is not the key of the CA certificate {cert_path}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertsError(f"{cert_path} is not a CA certificate (basicConstraints CA:TRUE missing)")
    if datetime.now(UTC) > cert.not_valid_after_utc:
        raise CertsError(
            f"the CA certificate {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
            "make a new CA with 'brio certs init --force' and reissue the node certificates"
        )
    return cert, key


def _write(paths: CertPaths, cert: x509.Certificate, key: PrivateKeyTypes) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_file(paths.key, key_pem, 0o600)
    _write_file(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically replace ``path``; the temporary file is 0600 from the start."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise CertsError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CertsError(f"cannot write {path}: {exc.strerror or exc}") from None
