"""EK certificates: does this endorsement key belong to a genuine TPM?

An EK certificate (TCG EK Credential Profile for TPM Family 2.0) is an end-entity certificate
that a WebPKI or TLS-client policy refuses: the subject is often empty, the TPM's manufacturer,
model and firmware version sit in a critical subjectAltName directoryName, and the only extended
key usage, if any, is tcg-kp-EKCertificate (2.23.133.8.1). So the leaf gets its own extension
policy: those extensions allowed, any other critical extension still refused, a CA certificate
refused as a leaf. The chain itself is checked as strictly as cryptography's X.509 verifier
checks any chain: signatures, validity at the given time, CA basic constraints and key usage.

Vendor quirks are accepted only as named leniencies, reported in the result. There is one:
``trailing_padding``, zero bytes after the DER certificate, as NV indices sized larger than
their certificate hold. The bytes that are signed are never altered and no signature check is
skipped.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from cryptography.x509.oid import ObjectIdentifier

from attest.errors import UNDECODABLE, ParseError, VerificationError
from attest.reasons import Reason
from attest.verify.tpmstructs import PublicKey, TpmtPublic, parse_public

TCG_KP_EK_CERTIFICATE: Final = ObjectIdentifier("2.23.133.8.1")
TPM_MANUFACTURER: Final = ObjectIdentifier("2.23.133.2.1")
TPM_MODEL: Final = ObjectIdentifier("2.23.133.2.2")
TPM_VERSION: Final = ObjectIdentifier("2.23.133.2.3")

LENIENCY_TRAILING_PADDING: Final = "trailing_padding"
MAX_CERTIFICATE: Final = 16 * 1024  # EK certificates are 1-2 KiB; an NV index at most a few


@dataclass(frozen=True)
class EkIdentity:
    """A verified EK certificate and what it says about the TPM."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # leaf first, the trusted root last
    public_key: PublicKey
    manufacturer: str | None  # tcg-at-tpmManufacturer as written, e.g. "id:49465800"
    model: str | None
    version: str | None
    leniencies: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate's DER, hex: how operators enroll or revoke one."""
        return hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _der_length(data: bytes) -> int | None:
    """The length of the DER SEQUENCE that starts ``data``, header included, if it is one."""
    if len(data) < 2 or data[0] != 0x30:
        return None
    if data[1] < 0x80:
        return 2 + data[1]
    n = data[1] & 0x7F
    if not 1 <= n <= 4 or len(data) < 2 + n:
        return None
    return 2 + n + int.from_bytes(data[2 : 2 + n])


def load_ek_certificate(data: bytes | str) -> tuple[x509.Certificate, tuple[str, ...]]:
    """Parse an EK certificate, PEM or DER, and the leniencies that took;
    ParseError(EK_CERT_MALFORMED) if it is not one."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_CERTIFICATE:
        raise ParseError(Reason.EK_CERT_MALFORMED, f"{len(raw)} bytes is too large for an EK certificate")
    leniencies: list[str] = []
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw), ()
        end = _der_length(raw)
        if end is not None and end < len(raw):
            if raw[end:].strip(b"\0"):
                raise ParseError(
                    Reason.EK_CERT_MALFORMED, f"{len(raw) - end} bytes of data after the certificate"
                )
            raw = raw[:end]
            leniencies.append(LENIENCY_TRAILING_PADDING)
        return x509.load_der_x509_certificate(raw), tuple(leniencies)
    except UNDECODABLE as e:
        raise ParseError(Reason.EK_CERT_MALFORMED, f"not an X.509 certificate: {e}") from None


def load_ca_certificates(data: bytes) -> list[x509.Certificate]:
    """Trust anchors or intermediates: a PEM bundle or one DER certificate."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except UNDECODABLE as e:
        raise ParseError(Reason.EK_CERT_MALFORMED, f"CA certificates: {e}") from None


def _ek_usage(
    _policy: verification.Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None
) -> None:
    if eku is not None and TCG_KP_EK_CERTIFICATE not in eku:
        raise ValueError("extended key usage present without tcg-kp-EKCertificate")


def _not_a_ca(
    _policy: verification.Policy, _cert: x509.Certificate, bc: x509.BasicConstraints | None
) -> None:
    if bc is not None and bc.ca:
        raise ValueError("a CA certificate is not an EK certificate")


def _ek_policy() -> verification.ExtensionPolicy:
    agnostic = verification.Criticality.AGNOSTIC
    return (
        verification.ExtensionPolicy.permit_all()
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _ek_usage)
        .may_be_present(x509.BasicConstraints, agnostic, _not_a_ca)
        .may_be_present(x509.SubjectAlternativeName, agnostic, None)
    )


def _tpm_attributes(cert: x509.Certificate) -> dict[ObjectIdentifier, str]:
    """The TPM manufacturer, model and version from the subjectAltName directoryName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return {}
    found: dict[ObjectIdentifier, str] = {}
    for name in san.get_values_for_type(x509.DirectoryName):
        for oid in (TPM_MANUFACTURER, TPM_MODEL, TPM_VERSION):
            for attr in name.get_attributes_for_oid(oid):
                value = attr.value
                found.setdefault(oid, value if isinstance(value, str) else value.decode("latin-1"))
    return found


def _key_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_ek_public(certified: PublicKey, ek_public: TpmtPublic | bytes | PublicKey) -> None:
    """VerificationError(EK_KEY_MISMATCH) unless ``ek_public`` (TPM2B_PUBLIC bytes, a public area
    or a key) is the certified key: MakeCredential must encrypt to the key the certificate vouches for."""
    if isinstance(ek_public, bytes):
        ek_public = parse_public(ek_public, Reason.EK_MALFORMED)
    if isinstance(ek_public, TpmtPublic):
        try:
            ek_public = ek_public.public_key()
        except ValueError as e:
            raise ParseError(Reason.EK_MALFORMED, f"EK public area: {e}") from None
    if _key_der(ek_public) != _key_der(certified):
        raise VerificationError(
            Reason.EK_KEY_MISMATCH, "the EK public key is not the one in the EK certificate"
        )


def validate_ek_certificate(
    cert: bytes | str,
    trusted_roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    *,
    ek_public: TpmtPublic | bytes | PublicKey | None = None,
    at: datetime.datetime | None = None,
) -> EkIdentity:
    """Verify an EK certificate (PEM or DER) up to one of ``trusted_roots`` (the TPM vendors'
    CAs), through ``intermediates``, at time ``at`` (now by default); if ``ek_public`` is given,
    also that it is the certified key.

    ParseError(EK_CERT_MALFORMED) if it does not parse, VerificationError(EK_CERT_UNTRUSTED) if
    it does not chain to a trusted root under the EK profile, VerificationError(EK_KEY_MISMATCH)
    if the key differs.
    """
    leaf, leniencies = load_ek_certificate(cert)
    if not trusted_roots:
        raise VerificationError(Reason.EK_CERT_UNTRUSTED, "no trusted EK roots configured")
    builder = (
        verification.PolicyBuilder()
        .store(verification.Store(list(trusted_roots)))
        .time(at or datetime.datetime.now(datetime.UTC))
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ek_policy()
        )
    )
    try:
        verified = builder.build_client_verifier().verify(leaf, list(intermediates))
    except verification.VerificationError as e:
        raise VerificationError(Reason.EK_CERT_UNTRUSTED, f"EK certificate does not verify: {e}") from None
    try:
        key = leaf.public_key()
    except UNDECODABLE as e:
        raise ParseError(Reason.EK_CERT_MALFORMED, f"EK certificate key: {e}") from None
    if not isinstance(key, PublicKey):
        raise ParseError(
            Reason.EK_CERT_MALFORMED, f"EK certificate holds a {type(key).__name__}, not RSA or EC"
        )
    if ek_public is not None:
        check_ek_public(key, ek_public)
    tpm = _tpm_attributes(leaf)
    return EkIdentity(
        certificate=leaf,
        chain=tuple(verified.chain),
        public_key=key,
        manufacturer=tpm.get(TPM_MANUFACTURER),
        model=tpm.get(TPM_MODEL),
        version=tpm.get(TPM_VERSION),
        leniencies=leniencies,
    )
