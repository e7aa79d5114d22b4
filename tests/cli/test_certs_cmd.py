"""``brio certs init|issue``: in-process through ``brio.cli.main.main``, plus one real process."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from brio.certs import CertsError, issue_node_cert, make_ca
from brio.cli.main import main
from brio.config.model import TLSConfig
from brio.mesh.tls import check_files

Capsys = pytest.CaptureFixture[str]


def brio(capsys: Capsys, *args: str) -> tuple[int, str, str]:
    code = main(["certs", *args])
    out, err = capsys.readouterr()
    return code, out, err


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_writes_a_ca(tmp_path: Path, capsys: Capsys) -> None:
    d = tmp_path / "certs"
    code, out, err = brio(capsys, "init", "--dir", str(d), "--days", "30")
    assert (code, err) == (0, "")
    assert mode(d / "ca.key") == 0o600
    assert mode(d / "ca.crt") == 0o644
    assert f"wrote {d / 'ca.crt'}" in out
    assert f"wrote {d / 'ca.key'}" in out
    assert f"brio certs issue NODE_ID --dir {d} --ip ADDRESS" in out
    ca = load(d / "ca.crt")
    assert ca.subject == ca.issuer
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    assert timedelta(days=29) < ca.not_valid_after_utc - datetime.now(UTC) <= timedelta(days=30)
    ca.verify_directly_issued_by(ca)  # self-signed with its key


def test_init_defaults_to_certs_in_the_working_directory(
    tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, _ = brio(capsys, "init")
    assert code == 0
    assert (tmp_path / "certs" / "ca.crt").is_file()
    assert (tmp_path / "certs" / "ca.key").is_file()


def test_issue_writes_a_node_certificate_that_verifies_against_the_ca(
    tmp_path: Path, capsys: Capsys
) -> None:
    d = tmp_path / "certs"
    make_ca(d)
    code, out, err = brio(
        capsys,
        "issue", "worker-1", "--dir", str(d),
        "--ip", "10.0.1.10", "--ip", "::1", "--dns", "worker-1.mesh.internal", "--days", "90",
    )  # fmt: skip
    assert (code, err) == (0, "")
    cert_path, key_path = d / "worker-1.crt", d / "worker-1.key"
    assert mode(key_path) == 0o600
    assert mode(cert_path) == 0o644
    cert = load(cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "worker-1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["worker-1", "worker-1.mesh.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.1.10"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment
    assert not usage.key_cert_sign
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()

    # a real path validation (RFC 5280 and the CA/B web PKI rules) for both roles
    store = Store([load(d / "ca.crt")])
    for dialled in (
        x509.DNSName("worker-1"),
        x509.DNSName("worker-1.mesh.internal"),
        x509.IPAddress(ipaddress.ip_address("10.0.1.10")),
    ):
        verifier = PolicyBuilder().store(store).build_server_verifier(dialled)
        assert verifier.verify(cert, [])[0] == cert
    client = PolicyBuilder().store(store).build_client_verifier().verify(cert, [])
    assert client.chain[0] == cert

    # the printed [mesh.tls] section is valid TOML, and brio accepts its files
    snippet = out[out.index("[mesh.tls]") :]
    section = tomllib.loads(snippet)["mesh"]["tls"]
    assert section == {
        "enabled": True,
        "cert_file": str(cert_path.resolve()),
        "key_file": str(key_path.resolve()),
        "ca_file": str((d / "ca.crt").resolve()),
        "verify_client": True,
    }
    check_files(TLSConfig.model_validate(section))
    assert 'node_id = "worker-1"' in out


def test_refuses_to_overwrite_without_force(tmp_path: Path, capsys: Capsys) -> None:
    d = tmp_path / "certs"
    assert brio(capsys, "init", "--dir", str(d))[0] == 0
    ca_before = (d / "ca.key").read_bytes()
    code, out, err = brio(capsys, "init", "--dir", str(d))
    assert (code, out) == (1, "")
    assert err.startswith(
        f"brio: {d / 'ca.crt'} and {d / 'ca.key'} already exist; not replacing "
        "(give --force to overwrite); a new CA is not trusted"
    )
    assert err.count("\n") == 1
    assert (d / "ca.key").read_bytes() == ca_before

    assert brio(capsys, "issue", "n1", "--dir", str(d))[0] == 0
    (d / "n1.crt").unlink()  # one of the two left is enough to refuse
    code, _, err = brio(capsys, "issue", "n1", "--dir", str(d))
    assert code == 1
    assert (
        err == f"brio: {d / 'n1.key'} already exists; not replacing (give --force to overwrite)\n"
    )


def test_force_replaces_and_keeps_keys_private(tmp_path: Path, capsys: Capsys) -> None:
    d = tmp_path / "certs"
    assert brio(capsys, "init", "--dir", str(d))[0] == 0
    assert brio(capsys, "issue", "n1", "--dir", str(d))[0] == 0
    old_ca, old_node = load(d / "ca.crt"), load(d / "n1.crt")
    (d / "n1.key").chmod(0o644)  # someone loosened it; --force must not keep that

    assert brio(capsys, "init", "--dir", str(d), "--force")[0] == 0
    assert brio(capsys, "issue", "n1", "--dir", str(d), "--force")[0] == 0
    new_ca, new_node = load(d / "ca.crt"), load(d / "n1.crt")
    assert new_ca.serial_number != old_ca.serial_number
    assert new_node.serial_number != old_node.serial_number
    new_node.verify_directly_issued_by(new_ca)
    assert mode(d / "ca.key") == mode(d / "n1.key") == 0o600
    assert sorted(p.name for p in d.iterdir()) == ["ca.crt", "ca.key", "n1.crt", "n1.key"]


@pytest.mark.parametrize("node_id", ["a/b", "ca", "node 1", "_x", "é", "x" * 65, ".."])
def test_bad_node_ids(tmp_path: Path, capsys: Capsys, node_id: str) -> None:
    make_ca(tmp_path)
    code, out, err = brio(capsys, "issue", node_id, "--dir", str(tmp_path))
    assert (code, out) == (1, "")
    assert err.startswith(f"brio: invalid node id {node_id!r}")
    assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]


def test_bad_ip_and_dns(tmp_path: Path, capsys: Capsys) -> None:
    make_ca(tmp_path)
    code, _, err = brio(capsys, "issue", "n1", "--dir", str(tmp_path), "--ip", "10.0.0.300")
    assert code == 1
    assert err == (
        "brio: --ip '10.0.0.300' is not an IP address (e.g. 10.0.1.2 or ::1); "
        "use --dns for a host name\n"
    )
    code, _, err = brio(capsys, "issue", "n1", "--dir", str(tmp_path), "--ip", "node.example")
    assert code == 1
    assert err.startswith("brio: --ip 'node.example' is not an IP address")
    code, _, err = brio(capsys, "issue", "n1", "--dir", str(tmp_path), "--dns", "bad_name..x")
    assert code == 1
    assert err.startswith("brio: --dns 'bad_name..x' is not a DNS name")
    code, _, err = brio(capsys, "issue", "n1", "--dir", str(tmp_path), "--dns", "10.0.0.1")
    assert err == "brio: --dns '10.0.0.1' is an IP address; give it with --ip instead\n"
    assert not (tmp_path / "n1.key").exists()


def test_issue_without_a_ca(tmp_path: Path, capsys: Capsys) -> None:
    d = tmp_path / "empty"
    code, out, err = brio(capsys, "issue", "n1", "--dir", str(d))
    assert (code, out) == (1, "")
    assert err == (
        f"brio: no CA in {d}: {d / 'ca.crt'} and {d / 'ca.key'} not found; run "
        f"'brio certs init --dir {d}' first (or give --dir)\n"
    )
    make_ca(d)
    (d / "ca.key").unlink()
    code, _, err = brio(capsys, "issue", "n1", "--dir", str(d))
    assert err.startswith(f"brio: no CA in {d}: {d / 'ca.key'} not found")


def test_days_are_checked(tmp_path: Path, capsys: Capsys) -> None:
    code, _, err = brio(capsys, "init", "--dir", str(tmp_path), "--days", "0")
    assert (code, err) == (1, "brio: --days must be at least 1, not 0\n")
    make_ca(tmp_path, days=10)
    code, _, err = brio(capsys, "issue", "n1", "--dir", str(tmp_path), "--days", "11")
    assert code == 1
    assert err.startswith(f"brio: --days 11 would outlast the CA in {tmp_path / 'ca.crt'}")


def test_a_file_where_the_directory_should_be(tmp_path: Path, capsys: Capsys) -> None:
    blocker = tmp_path / "certs"
    blocker.write_text("")
    code, _, err = brio(capsys, "init", "--dir", str(blocker))
    assert (code, err) == (1, f"brio: {blocker} is not a directory\n")
    code, _, err = brio(capsys, "init", "--dir", str(blocker / "sub"))
    assert code == 1
    assert err.startswith(f"brio: cannot create the directory {blocker / 'sub'}: ")


def test_issue_with_an_rsa_ca_made_elsewhere(tmp_path: Path) -> None:
    """A CA from the guide's openssl recipe is RSA; brio certs issue signs with it too."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ops CA")])
    now = datetime.now(UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    paths = issue_node_cert(tmp_path, "n1", ips=["127.0.0.1"])
    load(paths.cert).verify_directly_issued_by(ca)
    check_files(
        TLSConfig(
            enabled=True, cert_file=paths.cert, key_file=paths.key, ca_file=tmp_path / "ca.crt"
        )
    )
    # a key that is not the CA's is refused
    (tmp_path / "ca.key").write_bytes(paths.key.read_bytes())
    with pytest.raises(CertsError, match=r"ca\.key is not the key of the CA certificate"):
        issue_node_cert(tmp_path, "n2")


def test_the_console_command(tmp_path: Path) -> None:
    d = tmp_path / "certs"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "brio", "certs", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = run("init", "--dir", str(d))
    assert (done.returncode, done.stderr) == (0, "")
    assert f"wrote {d / 'ca.key'}" in done.stdout
    done = run("issue", "no/slash", "--dir", str(d))
    assert done.returncode == 1
    assert done.stderr.startswith("brio: invalid node id 'no/slash'")
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1
