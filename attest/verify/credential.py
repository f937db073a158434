"""TPM2_MakeCredential in software (TPM 2.0 Library Part 1, 24; Part 3, 12.6).

The verifier wraps a secret so that only a TPM holding the EK's private key, and holding a
loaded object with exactly the given Name (the AK), can unwrap it with TPM2_ActivateCredential.
A seed is shared with the EK: RSA-OAEP to an RSA EK, or ECDH with an ephemeral key for an ECC
EK. From the seed, KDFa derives an AES key (bound to the AK's Name) that encrypts the secret,
and an HMAC key whose HMAC binds the ciphertext to the Name, so the TPM refuses any other AK.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from attest.errors import ParseError, VerificationError
from attest.reasons import Reason
from attest.tcg import Alg, HashAlg, hash_alg
from attest.verify.tpmstructs import (
    CURVE_BYTES,
    EccDetail,
    ObjectAttr,
    RsaDetail,
    TpmtPublic,
    marshal_ecc_point,
    parse_public,
    tpm2b,
)

_HASHES: Final[dict[int, type[hashes.HashAlgorithm]]] = {
    Alg.SHA256: hashes.SHA256,
    Alg.SHA384: hashes.SHA384,
    Alg.SHA512: hashes.SHA512,
}
# Labels end in NUL (Part 1, 11.4.10). KBKDF inserts that NUL itself, as the separator between
# label and context; KDFe and OAEP take the label whole.
_IDENTITY: Final = b"IDENTITY\0"
_STORAGE: Final = b"STORAGE"
_INTEGRITY: Final = b"INTEGRITY"


@dataclass(frozen=True)
class Credential:
    """What TPM2_ActivateCredential takes, marshalled (size-prefixed) as the TPM reads them."""

    id_object: bytes  # TPM2B_ID_OBJECT: the credentialBlob (integrity HMAC, encrypted secret)
    encrypted_secret: bytes  # TPM2B_ENCRYPTED_SECRET: the seed, for the EK's private key only


def kdfa(h: HashAlg, key: bytes, label: bytes, context: bytes, bits: int) -> bytes:
    """KDFa (Part 1, 11.4.10.2): SP 800-108 counter-mode HMAC, a 32-bit counter before the fixed
    data ``label || 0 || contextU || contextV || bits``; ``context`` is contextU || contextV."""
    return KBKDFHMAC(
        algorithm=_HASHES[h.alg](),
        mode=Mode.CounterMode,
        length=bits // 8,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=context,
        fixed=None,
    ).derive(key)


def kdfe(h: HashAlg, z: bytes, other_info: bytes, bits: int) -> bytes:
    """KDFe (Part 1, 11.4.10.3): the SP 800-56A concatenation KDF, ``H(counter || Z || use ||
    partyUInfo || partyVInfo)``; ``other_info`` is the last three, the label with its NUL."""
    return ConcatKDFHash(_HASHES[h.alg](), bits // 8, other_info).derive(z)


def _ek_problem(ek: TpmtPublic) -> str | None:
    """Why MakeCredential cannot target this public area, or None."""
    if not (ek.has(ObjectAttr.RESTRICTED) and ek.has(ObjectAttr.DECRYPT)) or ek.has(ObjectAttr.SIGN_ENCRYPT):
        return "not a restricted decryption key"
    if ek.name_alg not in _HASHES:
        return f"nameAlg 0x{ek.name_alg:04x} is not supported"
    if ek.detail.symmetric.alg != Alg.AES:
        return "no AES-CFB symmetric definition to protect the credential with"
    return None


def _check_name(name: bytes) -> None:
    """An object Name: a hash algorithm identifier, then a digest of that algorithm's size."""
    try:
        ok = len(name) == 2 + hash_alg(int.from_bytes(name[:2])).size
    except KeyError:
        ok = False
    if not ok:
        raise ParseError(Reason.AK_MALFORMED, f"not an object Name: {name.hex()}")


def _rsa_seed(ek: RsaDetail, h: HashAlg) -> tuple[bytes, bytes]:
    """A random seed, and the seed under RSA-OAEP with the EK's nameAlg and label IDENTITY."""
    seed = os.urandom(h.size)
    algorithm = _HASHES[h.alg]()
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=_IDENTITY)
    return seed, ek.public_key().encrypt(seed, oaep)


def _ecc_seed(ek: EccDetail, h: HashAlg) -> tuple[bytes, bytes]:
    """The seed KDFe derives from ECDH between a fresh ephemeral key and the EK, and the
    ephemeral public point (TPMS_ECC_POINT) from which the TPM derives the same seed."""
    ek_key = ek.public_key()
    size = CURVE_BYTES[ek.curve]
    ephemeral = ec.generate_private_key(ek_key.curve)
    point = ephemeral.public_key().public_numbers()
    x, y = point.x.to_bytes(size), point.y.to_bytes(size)
    z = ephemeral.exchange(ec.ECDH(), ek_key)
    # partyVInfo is the EK's x coordinate exactly as its public area, and so the TPM, holds it.
    return kdfe(h, z, _IDENTITY + x + ek.x, 8 * h.size), marshal_ecc_point(x, y)


def make_credential(ek: TpmtPublic | bytes, ak_name: bytes, secret: bytes) -> Credential:
    """Wrap ``secret`` for the TPM that holds ``ek`` (TPM2B_PUBLIC bytes or a parsed public
    area), to be released only to the object named ``ak_name``.

    ParseError(EK_MALFORMED) if the EK public area is unusable, ParseError(AK_MALFORMED) if the
    name is not a Name; ValueError if the secret is empty or longer than the EK's nameAlg digest
    (the TPM's own limit for a credential).
    """
    public = ek if isinstance(ek, TpmtPublic) else parse_public(ek, Reason.EK_MALFORMED)
    problem = _ek_problem(public)
    if problem:
        raise ParseError(Reason.EK_MALFORMED, f"EK cannot receive a credential: {problem}")
    h = hash_alg(public.name_alg)
    if not 1 <= len(secret) <= h.size:
        raise ValueError(f"a credential is 1-{h.size} bytes for this EK, not {len(secret)}")
    _check_name(ak_name)
    detail = public.detail
    try:
        seed, encrypted_seed = _ecc_seed(detail, h) if isinstance(detail, EccDetail) else _rsa_seed(detail, h)
    except ValueError as e:
        raise ParseError(Reason.EK_MALFORMED, f"EK public area: {e}") from None

    sym_key = kdfa(h, seed, _STORAGE, ak_name, detail.symmetric.key_bits)
    # CFB is the TPM's mode for credentials and storage keys; cryptography files it as "decrepit".
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(tpm2b(secret)) + encryptor.finalize()
    integrity = HMAC(kdfa(h, seed, _INTEGRITY, b"", 8 * h.size), _HASHES[h.alg]())
    integrity.update(enc_identity + ak_name)
    return Credential(
        id_object=tpm2b(tpm2b(integrity.finalize()) + enc_identity),
        encrypted_secret=tpm2b(encrypted_seed),
    )


def check_activation(expected: bytes, returned: bytes) -> None:
    """VerificationError(CREDENTIAL_INVALID) unless the node returned the secret it was sent."""
    if not hmac.compare_digest(expected, returned):
        raise VerificationError(
            Reason.CREDENTIAL_INVALID, "the activated credential is not the secret issued"
        )
