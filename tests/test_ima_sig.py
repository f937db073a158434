"""IMA file signatures: keylime's signed entries under keylime's test keys, and our own keys,
certificates and signatures for everything else."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from attest.errors import ParseError, VerificationError
from attest.reasons import Reason
from attest.verify import ima, imasig
from tests.certs import self_signed

KEYLIME = Path(__file__).parent / "data" / "ima" / "keylime"
SIGNER = "ima signing test"  # our own signing key's certificate

# The public halves of the keys keylime signed its test entries with: keylime/keylime
# test/data/ima_keys/rsa2048pub.pem, and the public key of test/data/ima_keys/secp256k1.pem
# (Apache-2.0).
KEYLIME_RSA = b"""-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA1cD7bW5tX5qIVgWskS5t
zY+XpqWzcW6HFq5npj8dHFIWsAJJCUdoSU631hkyY8HP/RfXDPq/J4IeKvx35EVX
j49t1Z1FTJBgUlEbkKvqm0rY6jo7PnJ6BsDRrauXtiEXVKNXcWXDk8ES+9v9Cz26
BJYAr+5Xgm2aEyAbj8GhicxUZfsjDm8eJ7ZnQKuhF7jejG5dYAYxnBVu99bQJHI5
Fsu3dAjGbys9v7ToNbonS+1bJXdHyEE0swhxBOPvvV6vx5CzRNw1Sou3rT19T4j8
wpsFOyYXVcbbRVBAmBE2Qy2UHvojFqaJN/A9lztllyER1S5heGG6CxK3GoR6pkOX
AQIDAQAB
-----END PUBLIC KEY-----
"""
KEYLIME_EC = b"""-----BEGIN PUBLIC KEY-----
MFYwEAYHKoZIzj0CAQYFK4EEAAoDQgAEnNH3Y/xOTwRRd8D6hpodRLnVx71qDTLv
JHouno7nU7JSzcXWN1PxK+HQEh1V7sMdwBER4KFKE635JTv6C+BRBg==
-----END PUBLIC KEY-----
"""


def _signed_entries() -> tuple[ima.ImaEntry, ...]:
    return ima.parse((KEYLIME / "test_ima_verification.SIGNATURES.txt").read_bytes()).entries


def _fail(entry: ima.ImaEntry, keys: imasig.KeyRing) -> str:
    with pytest.raises(VerificationError) as err:
        imasig.verify_entry_signature(entry, keys)
    assert err.value.code is Reason.IMA_SIGNATURE_INVALID
    return err.value.message


# -- keylime's entries


def test_keylime_key_ids_are_the_evmctl_ones() -> None:
    ring = imasig.KeyRing.load([KEYLIME_RSA, KEYLIME_EC])
    rsa_entry, ec_entry = _signed_entries()
    assert imasig.parse_signature(rsa_entry.sig or b"").key_id.hex() == "f3452d23"
    assert imasig.parse_signature(ec_entry.sig or b"").key_id.hex() == "531f4025"
    assert len(ring.candidates(bytes.fromhex("f3452d23"))) == 1
    assert len(ring.candidates(bytes.fromhex("531f4025"))) == 1


def test_keylime_signatures_verify_under_enrolled_keys() -> None:
    entries = _signed_entries()
    ring = imasig.KeyRing.load([KEYLIME_RSA + KEYLIME_EC])  # both in one PEM blob
    assert isinstance(imasig.verify_entry_signature(entries[0], ring).key, rsa.RSAPublicKey)
    assert isinstance(imasig.verify_entry_signature(entries[1], ring).key, ec.EllipticCurvePublicKey)
    assert imasig.verify_signatures(entries, ring) == (0, 1)


def test_unenrolled_key_is_refused() -> None:
    rsa_entry, ec_entry = _signed_entries()
    assert "signing key 531f4025 is not enrolled" in _fail(ec_entry, imasig.KeyRing.load([KEYLIME_RSA]))
    assert "not enrolled" in _fail(rsa_entry, imasig.KeyRing([]))
    # Keys the node loaded and logged (ima-buf ".ima") are never trusted: only the caller's are.
    keyring = ima.parse((KEYLIME / "test_ima_verification.KEYRINGS.txt").read_bytes()).entries[0]
    assert keyring.buf is not None
    logged = imasig.KeyRing.load([keyring.buf])
    assert "not enrolled" in _fail(ec_entry, logged)


def test_corrupted_signatures_are_refused() -> None:
    ring = imasig.KeyRing.load([KEYLIME_RSA, KEYLIME_EC])
    for entry in _signed_entries():
        sig = bytearray(entry.sig or b"")
        sig[-5] ^= 0x40
        fields = (*entry.fields[:2], bytes(sig))
        data = b"".join(struct.pack("<I", len(f)) + f for f in fields)
        (bad,) = ima.parse(ima.encode_binary_entry("ima-sig", data)).entries
        assert "does not verify" in _fail(bad, ring)
    # keylime's bad signature: its size field no longer matches the signature.
    (bad,) = ima.parse((KEYLIME / "test_ima_verification.BAD_SIGNATURES.txt").read_bytes()).entries
    assert "signature header says 18432 bytes, the field has 72" in _fail(bad, ring)


# -- our own keys and certificates


def _signed(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    key_id: bytes,
    *,
    alg: str = "sha256",
    algo_id: int = 4,
    version: int = 2,
    content: bytes = b"file contents",
) -> ima.ImaEntry:
    digest = hashlib.new(alg, content).digest()
    chosen = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha1": hashes.SHA1()}[alg]
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(digest, padding.PKCS1v15(), utils.Prehashed(chosen))
    else:
        signature = key.sign(digest, ec.ECDSA(utils.Prehashed(chosen)))
    header = struct.pack(">BBB4sH", 3, version, algo_id, key_id, len(signature))
    data = ima.encode_template_data("ima-sig", alg, digest, "/usr/bin/signed", header + signature)
    return ima.parse(ima.encode_binary_entry("ima-sig", data)).entries[0]


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_own_keys_from_certificates_and_key_files(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    for key in (rsa_key, ec_key):
        key_id = imasig.key_id_v2(key.public_key())
        entry = _signed(key, key_id)
        cert = self_signed(SIGNER, key)
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for blob in (
            cert.public_bytes(serialization.Encoding.PEM),
            cert.public_bytes(serialization.Encoding.DER),
            spki,
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        ):
            assert imasig.verify_entry_signature(entry, imasig.KeyRing.load([blob])).key.public_numbers() == (
                key.public_key().public_numbers()
            )


def test_key_id_from_the_certificate_subject_key_identifier(ec_key: ec.EllipticCurvePrivateKey) -> None:
    # evmctl --keyid-from-cert names the key by the last 4 bytes of the certificate's SKID.
    skid = bytes(range(16)) + b"\xca\xfe\xf0\x0d"
    cert = self_signed(SIGNER, ec_key, skid=skid)
    ring = imasig.KeyRing.load([cert.public_bytes(serialization.Encoding.PEM)])
    imasig.verify_entry_signature(_signed(ec_key, b"\xca\xfe\xf0\x0d"), ring)
    imasig.verify_entry_signature(_signed(ec_key, imasig.key_id_v2(ec_key.public_key())), ring)


def test_same_key_id_different_key_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    entry = _signed(other, imasig.key_id_v2(rsa_key.public_key()))  # claims the enrolled key's id
    ring = imasig.KeyRing.load([self_signed(SIGNER, rsa_key).public_bytes(serialization.Encoding.PEM)])
    assert "does not verify" in _fail(entry, ring)


def test_signature_header_rules(rsa_key: rsa.RSAPrivateKey) -> None:
    key_id = imasig.key_id_v2(rsa_key.public_key())
    ring = imasig.KeyRing([imasig.enroll(rsa_key.public_key())])
    assert "sha384 digest, the entry records sha256" in _fail(_signed(rsa_key, key_id, algo_id=5), ring)
    assert "unsupported signature hash algorithm 2" in _fail(
        _signed(rsa_key, key_id, alg="sha1", algo_id=2), ring
    )
    assert "unsupported signature version 3" in _fail(_signed(rsa_key, key_id, version=3), ring)
    imasig.verify_entry_signature(_signed(rsa_key, key_id, alg="sha384", algo_id=5), ring)
    for field, what in ((b"\x03\x02", "a 2-byte signature field"), (b"\x04\x02\x04abcd\x00\x00", "type 4")):
        with pytest.raises(VerificationError, match=what):
            imasig.parse_signature(field)


def test_unsigned_entries_and_violations(rsa_key: rsa.RSAPrivateKey) -> None:
    ring = imasig.KeyRing([])
    unsigned = ima.parse((KEYLIME / "test_ima_verification.MEASUREMENTS.txt").read_bytes()).entries
    assert imasig.verify_signatures(unsigned, ring) == ()
    assert "no file signature" in _fail(unsigned[1], ring)
    data = ima.encode_template_data("ima-sig", "sha256", bytes(32), "/tmp/x", b"\x03\x02\x04" + bytes(6))
    (violation,) = ima.parse(ima.encode_binary_entry("ima-sig", data, template_hash_value=bytes(20))).entries
    assert imasig.verify_signatures([violation], ring) == ()
    assert "violation" in _fail(violation, ring)


@pytest.mark.parametrize(
    ("blob", "what"),
    [
        (b"not a key", "not an X.509 certificate or public key"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "unreadable PEM block"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA", "without its END line"),
        (b"-----BEGIN X-----\nAAAA\n-----END X-----\n", "only CERTIFICATE and PUBLIC KEY"),
    ],
)
def test_enrolling_garbage_fails_cleanly(blob: bytes, what: str) -> None:
    with pytest.raises(ParseError) as err:
        imasig.KeyRing.load([blob])
    assert err.value.code is Reason.POLICY_INVALID
    assert what in err.value.message


def test_private_keys_and_other_key_types_are_not_enrolled(ec_key: ec.EllipticCurvePrivateKey) -> None:
    private = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ParseError, match="only CERTIFICATE and PUBLIC KEY"):
        imasig.KeyRing.load([private])
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(ParseError, match="RSA or ECDSA"):
        imasig.KeyRing.load(
            [ed.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)]
        )
