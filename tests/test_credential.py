"""MakeCredential without a TPM: the KDFs against straightforward re-implementations of the
spec's formulas, the output layout, a software ActivateCredential, and refusals. The real
TPM's ActivateCredential is the judge in test_credential_swtpm.py."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import replace

import pytest
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given
from hypothesis import strategies as st

from attest.errors import ParseError, VerificationError
from attest.reasons import Reason
from attest.tcg import Alg, hash_alg
from attest.verify.credential import Credential, check_activation, kdfa, kdfe, make_credential
from attest.verify.tpmstructs import (
    EccDetail,
    ObjectAttr,
    RsaDetail,
    Scheme,
    SymDef,
    TpmtPublic,
    parse_public,
)
from tests.recorded_swtpm import SWTPM_AK, SWTPM_AK_NAME

EK_ATTRIBUTES = int(
    ObjectAttr.FIXED_TPM
    | ObjectAttr.FIXED_PARENT
    | ObjectAttr.SENSITIVE_DATA_ORIGIN
    | ObjectAttr.ADMIN_WITH_POLICY
    | ObjectAttr.RESTRICTED
    | ObjectAttr.DECRYPT
)


def spec_kdfa(hash_name: str, key: bytes, label: bytes, context: bytes, bits: int) -> bytes:
    """KDFa as Part 1 writes it: HMAC(key, [i]32 || label || 0 || context || [bits]32)."""
    out = b""
    i = 1
    while len(out) < bits // 8:
        out += hmac.new(
            key, struct.pack(">I", i) + label + b"\0" + context + struct.pack(">I", bits), hash_name
        ).digest()
        i += 1
    return out[: bits // 8]


def spec_kdfe(hash_name: str, z: bytes, use: bytes, party_u: bytes, party_v: bytes, *, bits: int) -> bytes:
    """KDFe as Part 1 writes it: H([i]32 || Z || use || partyUInfo || partyVInfo)."""
    out = b""
    i = 1
    while len(out) < bits // 8:
        out += hashlib.new(hash_name, struct.pack(">I", i) + z + use + party_u + party_v).digest()
        i += 1
    return out[: bits // 8]


@given(
    st.sampled_from(["sha256", "sha384"]), st.binary(max_size=64), st.binary(max_size=40), st.integers(1, 80)
)
def test_kdfa_is_the_spec_formula(hash_name: str, key: bytes, context: bytes, nbytes: int) -> None:
    h = hash_alg(hash_name)
    assert kdfa(h, key or b"k", b"STORAGE", context, 8 * nbytes) == spec_kdfa(
        hash_name, key or b"k", b"STORAGE", context, 8 * nbytes
    )


@given(st.sampled_from(["sha256", "sha384"]), st.binary(min_size=1, max_size=66), st.binary(max_size=66))
def test_kdfe_is_the_spec_formula(hash_name: str, z: bytes, party: bytes) -> None:
    h = hash_alg(hash_name)
    ours = kdfe(h, z, b"IDENTITY\0" + party + party[::-1], 8 * h.size)
    assert ours == spec_kdfe(hash_name, z, b"IDENTITY\0", party, party[::-1], bits=8 * h.size)


# --- software EKs and a software ActivateCredential ----------------------------------------


def rsa_ek() -> tuple[rsa.RSAPrivateKey, TpmtPublic]:
    key = rsa.generate_private_key(65537, 2048)
    detail = RsaDetail(
        SymDef(Alg.AES, 128, Alg.CFB), Scheme(), 2048, 0, key.public_key().public_numbers().n.to_bytes(256)
    )
    return key, TpmtPublic(Alg.SHA256, EK_ATTRIBUTES, bytes(32), detail)


def ecc_ek() -> tuple[ec.EllipticCurvePrivateKey, TpmtPublic]:
    key = ec.generate_private_key(ec.SECP384R1())
    n = key.public_key().public_numbers()
    detail = EccDetail(
        SymDef(Alg.AES, 256, Alg.CFB), Scheme(), 4, Scheme(), n.x.to_bytes(48), n.y.to_bytes(48)
    )
    return key, TpmtPublic(Alg.SHA384, EK_ATTRIBUTES | ObjectAttr.USER_WITH_AUTH, bytes(48), detail)


def take(data: bytes) -> tuple[bytes, bytes]:
    (n,) = struct.unpack(">H", data[:2])
    assert len(data) >= 2 + n
    return data[2 : 2 + n], data[2 + n :]


def activate(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, ek: TpmtPublic, name: bytes, cred: Credential
) -> bytes:
    """What TPM2_ActivateCredential does (Part 1, 24.4), written from the spec for the test."""
    h = hash_alg(ek.name_alg)
    hcls = {Alg.SHA256: hashes.SHA256, Alg.SHA384: hashes.SHA384}[h.alg]
    secret, rest = take(cred.encrypted_secret)
    assert rest == b""
    if isinstance(key, rsa.RSAPrivateKey):
        seed = key.decrypt(secret, padding.OAEP(padding.MGF1(hcls()), hcls(), b"IDENTITY\0"))
    else:
        x, rest = take(secret)
        y, rest = take(rest)
        assert rest == b""
        ephemeral = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x), int.from_bytes(y), key.curve
        ).public_key()
        z = key.exchange(ec.ECDH(), ephemeral)
        assert isinstance(ek.detail, EccDetail)
        seed = spec_kdfe(h.name, z, b"IDENTITY\0", x, ek.detail.x, bits=8 * h.size)
    blob, rest = take(cred.id_object)
    assert rest == b""
    integrity, enc_identity = take(blob)
    hmac_key = spec_kdfa(h.name, seed, b"INTEGRITY", b"", 8 * h.size)
    if not hmac.compare_digest(integrity, hmac.new(hmac_key, enc_identity + name, h.name).digest()):
        raise ValueError("integrity check failed")
    sym = spec_kdfa(h.name, seed, b"STORAGE", name, ek.detail.symmetric.key_bits)
    decryptor = Cipher(algorithms.AES(sym), CFB(bytes(16))).decryptor()
    plain = decryptor.update(enc_identity) + decryptor.finalize()
    out, rest = take(plain)
    assert rest == b""
    return out


@pytest.mark.parametrize("make_ek", [rsa_ek, ecc_ek])
def test_software_activation_recovers_the_secret_only_for_the_named_ak(
    make_ek: Callable[[], tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, TpmtPublic]],
) -> None:
    key, ek = make_ek()
    cred = make_credential(ek.marshal_tpm2b(), SWTPM_AK_NAME, b"s3cret")
    assert activate(key, ek, SWTPM_AK_NAME, cred) == b"s3cret"
    other = SWTPM_AK_NAME[:-1] + bytes([SWTPM_AK_NAME[-1] ^ 1])
    with pytest.raises(ValueError, match="integrity"):
        activate(key, ek, other, cred)


def test_layout_of_the_outputs() -> None:
    _, ek = rsa_ek()
    cred = make_credential(ek, SWTPM_AK_NAME, bytes(32))
    blob, _ = take(cred.id_object)
    integrity, enc_identity = take(blob)
    assert (len(integrity), len(enc_identity)) == (32, 34)
    assert len(cred.encrypted_secret) == 2 + 256
    _, ecc = ecc_ek()
    point, _ = take(make_credential(ecc, SWTPM_AK_NAME, bytes(48)).encrypted_secret)
    x, rest = take(point)
    y, rest = take(rest)
    assert (len(x), len(y), rest) == (48, 48, b"")


def test_each_credential_uses_a_fresh_seed() -> None:
    _, ek = ecc_ek()
    assert make_credential(ek, SWTPM_AK_NAME, b"x") != make_credential(ek, SWTPM_AK_NAME, b"x")


# --- refusals -------------------------------------------------------------------------------


def ek_error(ek: TpmtPublic | bytes) -> Reason:
    with pytest.raises(ParseError) as e:
        make_credential(ek, SWTPM_AK_NAME, b"x")
    return e.value.code


def test_unusable_eks_are_refused() -> None:
    _, ek = rsa_ek()
    assert isinstance(ek.detail, RsaDetail)
    assert ek_error(parse_public(SWTPM_AK)) is Reason.EK_MALFORMED  # a signing key
    assert ek_error(replace(ek, attributes=ek.attributes & ~ObjectAttr.RESTRICTED)) is Reason.EK_MALFORMED
    assert ek_error(replace(ek, name_alg=Alg.SHA1, auth_policy=b"")) is Reason.EK_MALFORMED
    assert ek_error(replace(ek, detail=replace(ek.detail, symmetric=SymDef()))) is Reason.EK_MALFORMED
    assert ek_error(replace(ek, detail=replace(ek.detail, modulus=b""))) is Reason.EK_MALFORMED  # a template
    assert ek_error(b"\x00\x01\x00") is Reason.EK_MALFORMED
    _, ecc = ecc_ek()
    assert isinstance(ecc.detail, EccDetail)
    assert ek_error(replace(ecc, detail=replace(ecc.detail, y=bytes(47) + b"\x01"))) is Reason.EK_MALFORMED


@pytest.mark.parametrize(
    "name", [b"", b"\x00\x0b" + bytes(31), b"\x00\x0b" + bytes(33), b"\x00\x99" + bytes(32)]
)
def test_names_that_are_not_names_are_refused(name: bytes) -> None:
    _, ek = rsa_ek()
    with pytest.raises(ParseError) as e:
        make_credential(ek, name, b"x")
    assert e.value.code is Reason.AK_MALFORMED


def test_secret_size_is_bounded_by_the_ek_name_algorithm() -> None:
    _, ek = rsa_ek()
    make_credential(ek, SWTPM_AK_NAME, bytes(32))
    for bad in (b"", bytes(33)):
        with pytest.raises(ValueError, match="1-32 bytes"):
            make_credential(ek, SWTPM_AK_NAME, bad)


def test_check_activation() -> None:
    check_activation(b"abc", b"abc")
    for wrong in (b"abd", b"ab", b"abcd", b""):
        with pytest.raises(VerificationError) as e:
            check_activation(b"abc", wrong)
        assert e.value.code is Reason.CREDENTIAL_INVALID
