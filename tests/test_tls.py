"""TLS and mutual TLS against the real server, with a certificate authority made here."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client.sdk import ClipmatchClient, ClipmatchError
from tests.conftest import SERVER_COMMAND, ServerProcess
from tests.media import Clip, fixture


def _issue(directory: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
           | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A key and certificate for ``name`` (the CA's own when ``issuer`` is None), as PEM
    files ``<name>.pem`` and ``<name>.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1)))
    if issuer is None:
        builder = builder.issuer_name(subject).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True)
        signer = key
    else:
        builder = builder.issuer_name(issuer[0].subject).add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        signer = issuer[1]
    certificate = builder.sign(signer, hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return certificate, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it,
    and a stranger's certificate signed by another CA."""
    directory = tmp_path_factory.mktemp("pki")
    ca = _issue(directory, "ca")
    _issue(directory, "server", ca)
    _issue(directory, "client", ca)
    _issue(directory, "stranger", _issue(directory, "other-ca"))
    return directory


def _server(tmp_path: Path, pki: Path, *extra: str, **client: str) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", (
        *SERVER_COMMAND, "--tls-cert", str(pki / "server.pem"), "--tls-key",
        str(pki / "server.key"), *extra), {"tls_ca": str(pki / "ca.pem"), **client})
    server.start()
    yield server
    assert server.stop() == 0


@pytest.fixture
def tls_server(tmp_path: Path, pki: Path) -> Iterator[ServerProcess]:
    yield from _server(tmp_path, pki)


@pytest.fixture
def mtls_server(tmp_path: Path, pki: Path) -> Iterator[ServerProcess]:
    yield from _server(tmp_path, pki, "--tls-client-ca", str(pki / "ca.pem"),
                       tls_cert=str(pki / "client.pem"), tls_key=str(pki / "client.key"))


def test_tls_serves_clients_that_trust_its_ca_only(tls_server: ServerProcess, pki: Path,
                                                    tmp_path: Path) -> None:
    assert tls_server.events("serving")[0]["tls"] == "on"
    with ClipmatchClient(tls_server.target, token=tls_server.admin_token,
                         tls_ca=str(pki / "ca.pem")) as client:
        reference = client.register(fixture("knolls"))
        found = client.match(Clip("knolls", 5.0, 6.0).write(tmp_path))["matches"]
        assert found and found[0]["reference_id"] == reference["reference_id"]
    for untrusting in ({}, {"tls_ca": str(pki / "other-ca.pem")}):  # plain gRPC, wrong CA
        with ClipmatchClient(tls_server.target, token=tls_server.admin_token,
                             **untrusting) as client, pytest.raises(ClipmatchError) as refused:
            client.list()
        assert refused.value.code == "UNAVAILABLE"


def test_mutual_tls_refuses_clients_without_a_certificate_from_its_ca(
        mtls_server: ServerProcess, pki: Path) -> None:
    assert mtls_server.events("serving")[0]["tls"] == "mutual"
    with ClipmatchClient(mtls_server.target, token=mtls_server.admin_token,
                         tls_ca=str(pki / "ca.pem"), tls_cert=str(pki / "client.pem"),
                         tls_key=str(pki / "client.key")) as client:
        assert client.list()["total_count"] == 0
    for name in ("", "stranger"):
        certificate = {"tls_cert": str(pki / f"{name}.pem"),
                       "tls_key": str(pki / f"{name}.key")} if name else {}
        with ClipmatchClient(mtls_server.target, token=mtls_server.admin_token,
                             tls_ca=str(pki / "ca.pem"), **certificate
                             ) as client, pytest.raises(ClipmatchError) as refused:
            client.list()
        assert refused.value.code == "UNAVAILABLE"
