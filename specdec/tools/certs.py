"""Self-signed test certificates (`make certs` or `python -m specdec.tools.certs DIR`): a CA, a server
certificate for localhost/127.0.0.1 and a client certificate, all signed by that CA. For tests and
local TLS only; production certificates come from your PKI (e.g. cert-manager)."""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: pathlib.Path, key, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_ca(out: pathlib.Path, name: str = "ca"):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(f"specdec test {name}")).issuer_name(_name(f"specdec test {name}"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    _write(out / name, key, cert)
    return key, cert


def make_leaf(out: pathlib.Path, name: str, ca_key, ca_cert, *, server: bool) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    # service certificates also act as clients on internal hops (mTLS), so they carry both usages
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (x509.CertificateBuilder().subject_name(_name(name if not server else "localhost"))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    _write(out / name, key, builder.sign(ca_key, hashes.SHA256()))


def generate(out: pathlib.Path) -> pathlib.Path:
    """Write ca.{crt,key}, server.{crt,key}, client.{crt,key} and, for negative tests, other-ca.{crt,key}."""
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca(out)
    make_leaf(out, "server", ca_key, ca_cert, server=True)
    make_leaf(out, "client", ca_key, ca_cert, server=False)
    make_ca(out, "other-ca")
    return out


if __name__ == "__main__":
    target = generate(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "certs"))
    print(f"wrote test certificates to {target}/")
