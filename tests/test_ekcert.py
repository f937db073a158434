"""EK certificate validation against chains built here, one property at a time (the swtpm
local CA's real certificates are in test_ekcert_swtpm.py)."""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from attest.errors import ParseError, VerificationError
from attest.reasons import Reason
from attest.tcg import Alg
from attest.verify.ekcert import (
    LENIENCY_TRAILING_PADDING,
    TCG_KP_EK_CERTIFICATE,
    TPM_MANUFACTURER,
    TPM_MODEL,
    TPM_VERSION,
    load_ca_certificates,
    load_ek_certificate,
    validate_ek_certificate,
)
from attest.verify.tpmstructs import RsaDetail, Scheme, SymDef, TpmtPublic

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Ca:
    cert: x509.Certificate
    key: Key


def make_ca(cn: str, parent: Ca | None = None, *, key_usage: bool = True, basic: bool = True) -> Ca:
    key = ec.generate_private_key(ec.SECP384R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(parent.cert.subject if parent else name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 30 * DAY)
        .not_valid_after(NOW + 3650 * DAY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if basic:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if key_usage:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if parent:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), critical=False
        )
    return Ca(b.sign(parent.key if parent else key, hashes.SHA384()), key)


def tpm_san(*, one_rdn: bool = True) -> x509.SubjectAlternativeName:
    attrs = [
        x509.NameAttribute(TPM_MANUFACTURER, "id:49465800"),
        x509.NameAttribute(TPM_MODEL, "SLB9670"),
        x509.NameAttribute(TPM_VERSION, "id:00070055"),
    ]
    dn = x509.Name([x509.RelativeDistinguishedName(attrs)]) if one_rdn else x509.Name(attrs)
    return x509.SubjectAlternativeName([x509.DirectoryName(dn)])


@dataclass
class EkCertSpec:
    eku: list[ObjectIdentifier] | None = field(default_factory=lambda: [TCG_KP_EK_CERTIFICATE])
    san: x509.SubjectAlternativeName | None = field(default_factory=tpm_san)
    ca: bool = False
    extra: list[tuple[x509.ExtensionType, bool]] = field(default_factory=list)
    not_before: datetime.datetime = NOW - DAY
    not_after: datetime.datetime = NOW + 3650 * DAY


def make_ek_cert(
    issuer: Ca, key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, spec: EkCertSpec
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))  # EK certificates usually have no subject
        .issuer_name(issuer.cert.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(spec.not_before)
        .not_valid_after(spec.not_after)
        .add_extension(x509.BasicConstraints(ca=spec.ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    )
    if spec.eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(spec.eku), critical=False)
    if spec.san is not None:
        b = b.add_extension(spec.san, critical=True)
    for ext, critical in spec.extra:
        b = b.add_extension(ext, critical=critical)
    return b.sign(issuer.key, hashes.SHA256())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    root = make_ca("TPM Vendor Root")
    inter = make_ca("TPM Vendor EK CA", root)
    ek = rsa.generate_private_key(65537, 2048)
    return {
        "root": root,
        "inter": inter,
        "ek": ek,
        "cert": make_ek_cert(inter, ek.public_key(), EkCertSpec()),
    }


def validate(pki: dict[str, Any], cert: x509.Certificate | bytes | str | None = None, **kwargs: Any) -> Any:
    data = cert if isinstance(cert, bytes | str) else der(cert or pki["cert"])
    roots = kwargs.pop("roots", [pki["root"].cert])
    inters = kwargs.pop("intermediates", [pki["inter"].cert])
    return validate_ek_certificate(data, roots, inters, **kwargs)


def untrusted(pki: dict[str, Any], cert: x509.Certificate | bytes | None = None, **kwargs: Any) -> str:
    with pytest.raises(VerificationError) as e:
        validate(pki, cert, **kwargs)
    assert e.value.code is Reason.EK_CERT_UNTRUSTED
    return e.value.message


def spec_cert(pki: dict[str, Any], **changes: Any) -> x509.Certificate:
    return make_ek_cert(pki["inter"], pki["ek"].public_key(), EkCertSpec(**changes))


# --- accepted -----------------------------------------------------------------------------


def test_tcg_profile_certificate_verifies_through_the_intermediate(pki: dict[str, Any]) -> None:
    ident = validate(pki)
    assert (ident.manufacturer, ident.model, ident.version) == ("id:49465800", "SLB9670", "id:00070055")
    assert [c.subject for c in ident.chain] == [
        x509.Name([]),
        name("TPM Vendor EK CA"),
        name("TPM Vendor Root"),
    ]
    assert ident.leniencies == ()
    assert ident.fingerprint == hashlib.sha256(der(pki["cert"])).hexdigest()
    assert ident.public_key.public_numbers() == pki["ek"].public_key().public_numbers()


def test_pem_input_and_text(pki: dict[str, Any]) -> None:
    pem = pki["cert"].public_bytes(serialization.Encoding.PEM)
    assert validate(pki, pem).fingerprint == validate(pki, pem.decode()).fingerprint


def test_without_eku_or_with_extra_ekus_alongside_the_tcg_one(pki: dict[str, Any]) -> None:
    validate(pki, spec_cert(pki, eku=None))
    validate(pki, spec_cert(pki, eku=[ExtendedKeyUsageOID.CLIENT_AUTH, TCG_KP_EK_CERTIFICATE]))


def test_san_attributes_as_separate_rdns(pki: dict[str, Any]) -> None:
    ident = validate(pki, spec_cert(pki, san=tpm_san(one_rdn=False)))
    assert ident.model == "SLB9670"


def test_no_san_means_no_tpm_attributes_but_still_a_valid_chain(pki: dict[str, Any]) -> None:
    ident = validate(pki, spec_cert(pki, san=None))
    assert (ident.manufacturer, ident.model, ident.version) == (None, None, None)


def test_unknown_non_critical_extensions_are_tolerated(pki: dict[str, Any]) -> None:
    ext = x509.UnrecognizedExtension(ObjectIdentifier("2.5.29.9"), b"\x30\x00")  # subjectDirectoryAttributes
    validate(pki, spec_cert(pki, extra=[(ext, False)]))


# --- refused ------------------------------------------------------------------------------


def test_eku_without_the_tcg_purpose_is_refused(pki: dict[str, Any]) -> None:
    assert "tcg-kp-EKCertificate" in untrusted(pki, spec_cert(pki, eku=[ExtendedKeyUsageOID.CLIENT_AUTH]))


def test_unknown_critical_extension_is_refused(pki: dict[str, Any]) -> None:
    ext = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    untrusted(pki, spec_cert(pki, extra=[(ext, True)]))


def test_a_ca_certificate_is_not_an_ek_certificate(pki: dict[str, Any]) -> None:
    assert "CA certificate" in untrusted(pki, spec_cert(pki, ca=True))
    assert "CA certificate" in untrusted(pki, pki["inter"].cert, intermediates=[])


def test_validity_is_checked_at_the_given_time(pki: dict[str, Any]) -> None:
    untrusted(pki, spec_cert(pki, not_after=NOW - DAY / 2, not_before=NOW - 10 * DAY))
    untrusted(pki, spec_cert(pki, not_before=NOW + DAY))
    old = spec_cert(pki, not_after=NOW - DAY / 2, not_before=NOW - 10 * DAY)
    validate(pki, old, at=NOW - 5 * DAY)


def test_another_vendors_chain_is_refused(pki: dict[str, Any]) -> None:
    other_root = make_ca("Someone Else")
    other_inter = make_ca("Someone Else EK CA", other_root)
    forged = make_ek_cert(other_inter, pki["ek"].public_key(), EkCertSpec())
    untrusted(pki, forged, intermediates=[other_inter.cert])
    # Same issuer name, different key: the signature does not verify.
    impostor = make_ca("TPM Vendor EK CA", other_root)
    untrusted(pki, make_ek_cert(impostor, pki["ek"].public_key(), EkCertSpec()))


def test_missing_intermediate_is_refused(pki: dict[str, Any]) -> None:
    untrusted(pki, intermediates=[])


def test_no_trusted_roots_trusts_nothing(pki: dict[str, Any]) -> None:
    assert "no trusted" in untrusted(pki, roots=[])


def test_intermediates_must_be_cas(pki: dict[str, Any]) -> None:
    for broken in (
        make_ca("TPM Vendor EK CA", pki["root"], key_usage=False),
        make_ca("TPM Vendor EK CA", pki["root"], basic=False),
    ):
        cert = make_ek_cert(broken, pki["ek"].public_key(), EkCertSpec())
        untrusted(pki, cert, intermediates=[broken.cert])


def test_signature_damage_is_refused(pki: dict[str, Any]) -> None:
    raw = bytearray(der(pki["cert"]))
    raw[-3] ^= 0x01
    untrusted(pki, bytes(raw))


# --- the key ------------------------------------------------------------------------------


def ek_public_area(key: rsa.RSAPublicKey) -> TpmtPublic:
    modulus = key.public_numbers().n.to_bytes(256)
    detail = RsaDetail(SymDef(Alg.AES, 128, Alg.CFB), Scheme(), 2048, 0, modulus)
    return TpmtPublic(Alg.SHA256, 0x300B2, bytes(32), detail)


def test_ek_public_must_be_the_certified_key(pki: dict[str, Any]) -> None:
    area = ek_public_area(pki["ek"].public_key())
    validate(pki, ek_public=area)
    validate(pki, ek_public=area.marshal_tpm2b())
    validate(pki, ek_public=pki["ek"].public_key())
    other = ek_public_area(rsa.generate_private_key(65537, 2048).public_key())
    for wrong in (other, other.marshal_tpm2b(), ec.generate_private_key(ec.SECP256R1()).public_key()):
        with pytest.raises(VerificationError) as e:
            validate(pki, ek_public=wrong)
        assert e.value.code is Reason.EK_KEY_MISMATCH


def test_unparsable_ek_public_area_is_ek_malformed(pki: dict[str, Any]) -> None:
    with pytest.raises(ParseError) as e:
        validate(pki, ek_public=b"\x00\x02\x00\x01")
    assert e.value.code is Reason.EK_MALFORMED


# --- parsing and leniencies -----------------------------------------------------------------


def test_trailing_zero_padding_is_a_reported_leniency(pki: dict[str, Any]) -> None:
    ident = validate(pki, der(pki["cert"]) + bytes(700))
    assert ident.leniencies == (LENIENCY_TRAILING_PADDING,)
    assert ident.fingerprint == hashlib.sha256(der(pki["cert"])).hexdigest()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x30",
        b"\x30\x82\x01",
        b"garbage",
        b"\x30\x03\x02\x01\x01",
        bytes(100),
        b"-----BEGIN CERTIFICATE-----\nx\n",
    ],
)
def test_garbage_is_malformed(data: bytes) -> None:
    with pytest.raises(ParseError) as e:
        load_ek_certificate(data)
    assert e.value.code is Reason.EK_CERT_MALFORMED


def test_trailing_data_that_is_not_padding_is_malformed(pki: dict[str, Any]) -> None:
    for tail in (b"\x01", bytes(10) + b"\xff", b"\xff" * 8):
        with pytest.raises(ParseError) as e:
            load_ek_certificate(der(pki["cert"]) + tail)
        assert e.value.code is Reason.EK_CERT_MALFORMED


def test_oversized_input_is_malformed(pki: dict[str, Any]) -> None:
    with pytest.raises(ParseError, match="too large"):
        load_ek_certificate(der(pki["cert"]) + bytes(20000))


def test_ca_bundles(pki: dict[str, Any]) -> None:
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (pki["root"].cert, pki["inter"].cert))
    assert load_ca_certificates(pem) == [pki["root"].cert, pki["inter"].cert]
    assert load_ca_certificates(der(pki["root"].cert)) == [pki["root"].cert]
    with pytest.raises(ParseError) as e:
        load_ca_certificates(b"nonsense")
    assert e.value.code is Reason.EK_CERT_MALFORMED
