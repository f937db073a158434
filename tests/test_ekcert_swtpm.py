"""The EK certificates swtpm_setup stores in NV, issued by swtpm's local CA, and the EK public
keys the TPM itself reports."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attest.errors import VerificationError
from attest.reasons import Reason
from attest.verify.ekcert import (
    LENIENCY_TRAILING_PADDING,
    TCG_KP_EK_CERTIFICATE,
    load_ca_certificates,
    validate_ek_certificate,
)
from attest.verify.tpmstructs import parse_public
from swtpm.instance import SwtpmInstance
from swtpm.provision import LocalCa
from swtpm.tools import run_tool

# TCG EK Credential Profile NV indices, and where swtpm_setup persists the matching EKs.
RSA_CERT, ECC_CERT = "0x01c00002", "0x01c00016"
RSA_EK, ECC_EK = "0x81010001", "0x81010016"


@dataclass(frozen=True)
class Ek:
    ca: LocalCa
    dir: Path

    def read(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()

    @property
    def roots(self) -> list[x509.Certificate]:
        return load_ca_certificates(self.ca.root_cert.read_bytes())

    @property
    def intermediates(self) -> list[x509.Certificate]:
        return load_ca_certificates(self.ca.intermediate_cert.read_bytes())


@pytest.fixture
def ek(swtpm: SwtpmInstance, tmp_path: Path) -> Ek:
    assert swtpm.ca is not None
    for index, out in ((RSA_CERT, "rsa.der"), (ECC_CERT, "ecc.der")):
        run_tool(swtpm, "tpm2_nvread", "-C", "o", index, "-o", out, cwd=tmp_path)
    for handle, out in ((RSA_EK, "rsa-persistent.pub"), (ECC_EK, "ecc.pub")):
        run_tool(swtpm, "tpm2_readpublic", "-c", handle, "-o", out, cwd=tmp_path)
    # The RSA EK re-derived from the EK Credential Profile template, as an agent does it.
    run_tool(swtpm, "tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "rsa.pub", cwd=tmp_path)
    # The low-range ECC P-256 EK: a genuine EK of this TPM, but not the one the P-384 certificate certifies.
    run_tool(swtpm, "tpm2_createek", "-c", "ek256.ctx", "-G", "ecc", "-u", "ecc256.pub", cwd=tmp_path)
    return Ek(swtpm.ca, tmp_path)


@pytest.mark.parametrize(("cert", "public"), [("rsa.der", "rsa.pub"), ("ecc.der", "ecc.pub")])
def test_swtpm_ek_certificates_chain_to_the_local_ca_and_certify_the_tpms_key(
    ek: Ek, cert: str, public: str
) -> None:
    ident = validate_ek_certificate(ek.read(cert), ek.roots, ek.intermediates, ek_public=ek.read(public))
    assert len(ident.chain) == 3
    assert ident.chain[-1] == ek.roots[0]
    assert ident.leniencies == ()
    # swtpm_localca writes swtpm's TCG vendor id, its model and its firmware date.
    assert (ident.manufacturer, ident.model, ident.version) == ("id:00001014", "swtpm", "id:20191023")
    eku = ident.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert TCG_KP_EK_CERTIFICATE in eku
    assert ident.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_the_persistent_and_the_rederived_rsa_ek_are_the_same_key(ek: Ek) -> None:
    assert parse_public(ek.read("rsa-persistent.pub")) == parse_public(ek.read("rsa.pub"))


@pytest.mark.parametrize(
    ("cert", "public"), [("rsa.der", "ecc.pub"), ("ecc.der", "ecc256.pub"), ("ecc.der", "rsa.pub")]
)
def test_a_different_ek_key_is_refused(ek: Ek, cert: str, public: str) -> None:
    with pytest.raises(VerificationError) as e:
        validate_ek_certificate(ek.read(cert), ek.roots, ek.intermediates, ek_public=ek.read(public))
    assert e.value.code is Reason.EK_KEY_MISMATCH


def test_the_chain_needs_the_intermediate(ek: Ek) -> None:
    with pytest.raises(VerificationError) as e:
        validate_ek_certificate(ek.read("rsa.der"), ek.roots, [])
    assert e.value.code is Reason.EK_CERT_UNTRUSTED


def test_nv_padding_after_the_certificate_is_a_named_leniency(ek: Ek) -> None:
    ident = validate_ek_certificate(ek.read("rsa.der") + bytes(1024), ek.roots, ek.intermediates)
    assert ident.leniencies == (LENIENCY_TRAILING_PADDING,)


def test_a_certificate_from_another_ca_is_refused(ek: Ek) -> None:
    """Same EK key, same TPM attributes, but issued by a CA this verifier does not trust."""
    genuine = x509.load_der_x509_certificate(ek.read("rsa.der"))
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swtpm-localca")])  # a look-alike
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(7)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA384())
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(ca_name)
        .public_key(genuine.public_key())
        .serial_number(8)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    for ext in genuine.extensions:
        if not isinstance(ext.value, x509.AuthorityKeyIdentifier):
            builder = builder.add_extension(ext.value, critical=ext.critical)
    forged = builder.sign(ca_key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)
    with pytest.raises(VerificationError) as e:
        validate_ek_certificate(forged, ek.roots, ek.intermediates, ek_public=ek.read("rsa.pub"))
    assert e.value.code is Reason.EK_CERT_UNTRUSTED
    # Under its own CA it is fine: the refusal above is about trust, not about the profile.
    validate_ek_certificate(forged, [ca], [], ek_public=ek.read("rsa.pub"))
    # And the genuine certificate does not verify under the look-alike CA.
    with pytest.raises(VerificationError) as e:
        validate_ek_certificate(ek.read("rsa.der"), [ca], [])
    assert e.value.code is Reason.EK_CERT_UNTRUSTED
