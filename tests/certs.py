"""Certificates for tests that need one to carry a key or a name, not a chain of trust."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

_NOT_BEFORE = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def self_signed(
    common_name: str,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
    *,
    skid: bytes | None = None,
) -> x509.Certificate:
    """A certificate for `key` (a new P-256 key by default) issued by itself to CN=`common_name`:
    serial 1, valid for one day of 2025, with a SubjectKeyIdentifier only when `skid` is given."""
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_BEFORE + datetime.timedelta(days=1))
    )
    if skid is not None:
        builder = builder.add_extension(x509.SubjectKeyIdentifier(skid), critical=False)
    return builder.sign(key, hashes.SHA256())
