"""IMA file signatures (ima-sig and kin): verify them under enrolled keys only.

The `sig` template field holds the file's security.ima extended attribute when it is a
signature: an IMA signature v2 header (struct signature_v2_hdr in the kernel)

    type      u8     0x03 (EVM_IMA_XATTR_DIGSIG)
    version   u8     2
    hash_algo u8     the kernel's enum hash_algo (4 = sha256...)
    keyid     be32   last 4 bytes of the signing key's id (below)
    sig_size  be16   length of what follows
    sig       RSA PKCS#1 v1.5 or DER ECDSA signature over the file digest itself

The key id is what ima-evm-utils writes: the last 4 bytes of the SHA-1 of the key's
subjectPublicKey BIT STRING contents (RSAPublicKey DER, or the EC point), which is the X.509
"method 1" subject key identifier; or, when it signed with --keyid-from-cert, the last 4
bytes of the certificate's subjectKeyIdentifier extension. An enrolled certificate answers
to both. Keys come only from the caller (the reference policy): never from the list, whose
ima-buf ".ima" keyring entries only say what the node loaded.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from attest.errors import UNDECODABLE, ParseError, VerificationError
from attest.reasons import Reason
from attest.verify.ima import ImaEntry

EVM_IMA_XATTR_DIGSIG = 0x03
SIGNATURE_V2 = 2
_HEADER = struct.Struct(">BBB4sH")

# The kernel's enum hash_algo (include/uapi/linux/hash_info.h), as far as signatures use it,
# with the names `ImaEntry.digest_alg` gives them. SHA-1 (2) is refused: a signed SHA-1 digest
# vouches for every file that collides with it.
_SIG_HASHES: dict[int, tuple[str, hashes.HashAlgorithm]] = {
    4: ("sha256", hashes.SHA256()),
    5: ("sha384", hashes.SHA384()),
    6: ("sha512", hashes.SHA512()),
    7: ("sha224", hashes.SHA224()),
    17: ("sm3_256", hashes.SM3()),
    20: ("sha3_256", hashes.SHA3_256()),
    21: ("sha3_384", hashes.SHA3_384()),
    22: ("sha3_512", hashes.SHA3_512()),
}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True, slots=True)
class EnrolledKey:
    """A public key trusted to sign files, and the 4-byte key ids a signature may name it by."""

    key: PublicKey
    key_ids: frozenset[bytes]
    label: str


@dataclass(frozen=True, slots=True)
class SignatureV2:
    hash_alg: str
    hash: hashes.HashAlgorithm
    key_id: bytes
    signature: bytes


class KeyRing:
    """The enrolled IMA signing keys, looked up by key id."""

    def __init__(self, keys: Iterable[EnrolledKey]) -> None:
        self._by_id: dict[bytes, list[EnrolledKey]] = {}
        for k in keys:
            for key_id in k.key_ids:
                self._by_id.setdefault(key_id, []).append(k)

    @classmethod
    def load(cls, blobs: Iterable[bytes]) -> KeyRing:
        """Keys from X.509 certificates or SubjectPublicKeyInfo, PEM (any number of blocks
        per blob) or DER. Raises ParseError(POLICY_INVALID) for anything else."""
        keys: list[EnrolledKey] = []
        for n, blob in enumerate(blobs):
            keys.extend(_load(blob, f"IMA key {n}"))
        return cls(keys)

    def candidates(self, key_id: bytes) -> tuple[EnrolledKey, ...]:
        return tuple(self._by_id.get(key_id, ()))


def _load(blob: bytes, where: str) -> list[EnrolledKey]:
    if b"-----BEGIN " not in blob:
        return [enroll(_der(blob, where), where)]
    out: list[EnrolledKey] = []
    pos = 0
    while (start := blob.find(b"-----BEGIN ", pos)) >= 0:
        end = blob.find(b"-----END ", start)
        close = blob.find(b"-----", end + 9) if end >= 0 else -1
        if close < 0:
            raise ParseError(Reason.POLICY_INVALID, f"{where}: PEM block without its END line")
        pos = close + 5
        out.append(enroll(_pem(blob[start:pos] + b"\n", where), where))
    return out


def _der(blob: bytes, where: str) -> x509.Certificate | PublicKey:
    try:
        return x509.load_der_x509_certificate(blob)
    except UNDECODABLE:
        pass
    try:
        key = serialization.load_der_public_key(blob)
    except UNDECODABLE:
        raise ParseError(
            Reason.POLICY_INVALID, f"{where}: not an X.509 certificate or public key (DER)"
        ) from None
    return _check_type(key, where)


def _pem(block: bytes, where: str) -> x509.Certificate | PublicKey:
    try:
        if b"-----BEGIN CERTIFICATE-----" in block:
            return x509.load_pem_x509_certificate(block)
        if b"-----BEGIN PUBLIC KEY-----" in block:
            return _check_type(serialization.load_pem_public_key(block), where)
    except UNDECODABLE:
        raise ParseError(Reason.POLICY_INVALID, f"{where}: unreadable PEM block") from None
    raise ParseError(Reason.POLICY_INVALID, f"{where}: only CERTIFICATE and PUBLIC KEY blocks are enrolled")


def _check_type(key: object, where: str) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return key
    raise ParseError(Reason.POLICY_INVALID, f"{where}: IMA signatures use RSA or ECDSA keys")


def enroll(item: x509.Certificate | PublicKey, where: str = "IMA key") -> EnrolledKey:
    """An enrolled key from a certificate or a public key, with every key id it answers to."""
    ids: set[bytes] = set()
    if isinstance(item, x509.Certificate):
        try:  # cryptography decodes these only when asked
            public = item.public_key()
            label = item.subject.rfc4514_string() or where
            try:
                skid = item.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except x509.ExtensionNotFound:
                skid = b""
        except UNDECODABLE:
            raise ParseError(
                Reason.POLICY_INVALID, f"{where}: the certificate's key or extensions do not parse"
            ) from None
        key = _check_type(public, where)
        if len(skid) >= 4:
            ids.add(skid[-4:])
    else:
        key, label = item, where
    ids.add(key_id_v2(key))
    return EnrolledKey(key, frozenset(ids), label)


def key_id_v2(key: PublicKey) -> bytes:
    """The 4-byte key id ima-evm-utils computes for a public key."""
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    else:
        bits = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return hashlib.sha1(bits, usedforsecurity=False).digest()[-4:]


def parse_signature(field: bytes) -> SignatureV2:
    """Decode a sig field; VerificationError(IMA_SIGNATURE_INVALID) when it is not a v2 signature."""
    if len(field) < _HEADER.size:
        raise VerificationError(Reason.IMA_SIGNATURE_INVALID, f"a {len(field)}-byte signature field")
    kind, version, algo, key_id, size = _HEADER.unpack_from(field)
    if kind != EVM_IMA_XATTR_DIGSIG:
        raise VerificationError(Reason.IMA_SIGNATURE_INVALID, f"security.ima type {kind}, not a signature")
    if version != SIGNATURE_V2:
        raise VerificationError(Reason.IMA_SIGNATURE_INVALID, f"unsupported signature version {version}")
    if algo not in _SIG_HASHES:
        raise VerificationError(Reason.IMA_SIGNATURE_INVALID, f"unsupported signature hash algorithm {algo}")
    signature = field[_HEADER.size :]
    if size != len(signature):
        raise VerificationError(
            Reason.IMA_SIGNATURE_INVALID,
            f"signature header says {size} bytes, the field has {len(signature)}",
        )
    name, algorithm = _SIG_HASHES[algo]
    return SignatureV2(name, algorithm, key_id, signature)


def verify_entry_signature(entry: ImaEntry, keys: KeyRing) -> EnrolledKey:
    """Verify an entry's file signature; return the enrolled key that made it."""
    where = f"entry {entry.index} ({entry.path})"
    field = entry.sig
    if not field:
        raise VerificationError(Reason.IMA_SIGNATURE_INVALID, f"{where}: no file signature")
    if entry.violation or entry.digest is None:
        raise VerificationError(Reason.IMA_SIGNATURE_INVALID, f"{where}: a violation binds no signature")
    try:
        sig = parse_signature(field)
    except VerificationError as e:
        raise VerificationError(e.code, f"{where}: {e.message}") from None
    if sig.hash_alg != entry.digest_alg:
        raise VerificationError(
            Reason.IMA_SIGNATURE_INVALID,
            f"{where}: signature over a {sig.hash_alg} digest, the entry records {entry.digest_alg}",
        )
    candidates = keys.candidates(sig.key_id)
    if not candidates:
        raise VerificationError(
            Reason.IMA_SIGNATURE_INVALID, f"{where}: signing key {sig.key_id.hex()} is not enrolled"
        )
    prehashed = utils.Prehashed(sig.hash)
    for k in candidates:
        try:
            if isinstance(k.key, rsa.RSAPublicKey):
                k.key.verify(sig.signature, entry.digest, padding.PKCS1v15(), prehashed)
            else:
                k.key.verify(sig.signature, entry.digest, ec.ECDSA(prehashed))
        except (InvalidSignature, ValueError, UnsupportedAlgorithm):
            continue
        return k
    raise VerificationError(
        Reason.IMA_SIGNATURE_INVALID,
        f"{where}: signature does not verify under enrolled key {sig.key_id.hex()}",
    )


def verify_signatures(entries: Iterable[ImaEntry], keys: KeyRing) -> tuple[int, ...]:
    """Verify every signature the entries carry (pass only quote-accepted entries); return the
    indices of the signed entries. Unsigned entries and violations are skipped: whether a file
    had to be signed is policy."""
    signed: list[int] = []
    for e in entries:
        if e.sig and not e.violation:
            verify_entry_signature(e, keys)
            signed.append(e.index)
    return tuple(signed)
