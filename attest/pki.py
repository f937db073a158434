"""TLS material for the verifier: a private CA and the serving certificates it issues.

The verifier is reached only by its own agents, operators and the Kubernetes API server, each
of which is told which CA to trust; a private CA therefore gives the same assurance as a
public one without depending on it, and lets the cluster issue certificates for in-cluster
names (webhook Service DNS names) that no public CA would. Keys are EC P-256: small,
fast, and accepted by every TLS stack involved (Go's in the API server included).

Files are written with exact modes (secrets 0600, certificates 0644), never over an existing
file unless asked, and all of them or none are checked before the first is written.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from attest.fileio import write_private

CA_DAYS = 3650
SERVER_DAYS = 365
TOKEN_BYTES = 32
# Clocks on nodes that just booted can lag: a certificate valid from "now" would be refused.
_BACKDATE = dt.timedelta(minutes=5)
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
ADMIN_TOKEN = "admin.token"  # noqa: S105 (a file name)


class PkiError(Exception):
    """Input or a file system state that the material cannot be made from."""


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    mode: int
    what: str


def check_dns_name(name: str) -> str:
    """A DNS name as a SAN: lowercase LDH labels; PkiError otherwise (wildcards are not issued)."""
    lowered = name.lower().rstrip(".")
    if not lowered or len(lowered) > 253 or not all(_DNS_LABEL.match(label) for label in lowered.split(".")):
        raise PkiError(f"{name!r} is not a DNS host name")
    return lowered


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int, now: dt.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def create_ca(common_name: str = "attest-verifier CA", days: int = CA_DAYS) -> Issued:
    """A self-signed CA that can issue end-entity certificates only (pathLen 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(name, name, key.public_key(), days, dt.datetime.now(dt.UTC))
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
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue_server_certificate(
    ca: Issued, hosts: Sequence[str], ips: Sequence[str] = (), days: int = SERVER_DAYS
) -> Issued:
    """A TLS serving certificate (serverAuth) for the given DNS names and IP addresses, signed
    by `ca`. The subject CN is the first name, for people; clients match only the SANs."""
    names = [check_dns_name(h) for h in hosts]
    try:
        addresses = [ipaddress.ip_address(ip) for ip in ips]
    except ValueError as e:
        raise PkiError(str(e)) from None
    if not names and not addresses:
        raise PkiError("a server certificate needs at least one host name or IP address")
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names)]
    sans += [x509.IPAddress(a) for a in dict.fromkeys(addresses)]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else str(addresses[0]))])
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _builder(subject, ca.certificate.subject, key.public_key(), days, dt.datetime.now(dt.UTC))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def new_token() -> str:
    """An admin bearer token: 32 random bytes, urlsafe base64 without padding."""
    return base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).rstrip(b"=").decode("ascii")


def write_files(
    directory: Path, files: Sequence[tuple[str, bytes, int, str]], force: bool = False
) -> list[WrittenFile]:
    """Write (name, content, mode, what) into `directory` (created 0700 if missing).

    Names are plain file names: nothing is written outside the directory. Without `force`,
    any existing target stops everything before a byte is written, so a second run never
    leaves a CA from one run next to a key from another. With it, each file is replaced
    atomically. The mode is set on the open descriptor, so the umask cannot loosen it and a
    secret is never readable by others, not even for a moment."""
    for name, *_ in files:
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise PkiError(f"{name!r}: not a plain file name")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = [name for name, *_ in files if os.path.lexists(directory / name)]
    if existing and not force:
        raise PkiError(f"{directory}: {', '.join(existing)} already exist (--force replaces them)")
    written = []
    for name, content, mode, what in files:
        target = directory / name
        # Without force, exclusively: a file that appeared since the check is still never overwritten.
        write_private(target, content, mode, replace=force)
        written.append(WrittenFile(target, mode, what))
    return written


def init_verifier_pki(
    directory: Path, hosts: Sequence[str], ips: Sequence[str] = (), force: bool = False
) -> list[WrittenFile]:
    """A CA, the verifier's serving certificate and key, and an admin token, in `directory`."""
    ca = create_ca()
    server = issue_server_certificate(ca, hosts, ips)
    return write_files(
        directory,
        [
            (
                CA_CERT,
                ca.cert_pem(),
                0o644,
                "CA certificate: what agents, attestctl and the API server trust",
            ),
            (CA_KEY, ca.key_pem(), 0o600, "CA private key: keep offline once the certificates are issued"),
            (SERVER_CERT, server.cert_pem(), 0o644, "verifier TLS certificate"),
            (SERVER_KEY, server.key_pem(), 0o600, "verifier TLS private key"),
            (ADMIN_TOKEN, (new_token() + "\n").encode("ascii"), 0o600, "admin API bearer token"),
        ],
        force=force,
    )
