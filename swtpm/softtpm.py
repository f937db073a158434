"""A TPM's signing side in software, for tests and benchmarks: AKs whose signatures the caller
controls, and quotes built with the exact TPM structures, so a test can sign precisely the
structure it wants (a valid quote, or any attack on one) and a benchmark can measure the
verifier without a TPM's 100-700 ms per quote."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attest.pcrselect import PcrSelection
from attest.tcg import TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE, Alg, hash_alg
from attest.verify.pcrs import PcrValues
from attest.verify.quote import AK_REQUIRED
from attest.verify.tpmstructs import (
    Attest,
    ClockInfo,
    EccDetail,
    EcdsaSignature,
    QuoteInfo,
    RsaDetail,
    RsaSignature,
    Scheme,
    Signature,
    SymDef,
    TpmlPcrSelection,
    TpmsPcrSelection,
    TpmtPublic,
)

HASHES: dict[int, hashes.HashAlgorithm] = {
    Alg.SHA1: hashes.SHA1(),  # noqa: S303 - to sign the SHA-1 quotes the verifier must refuse
    Alg.SHA256: hashes.SHA256(),
    Alg.SHA384: hashes.SHA384(),
}


class SoftAk:
    """A key pair posing as an AK (ECC P-256 or RSA 2048, with an AK's attributes), so a test
    can sign exactly the structure it wants."""

    def __init__(
        self,
        kind: str = "ecc",
        scheme: int = Alg.ECDSA,
        hash_id: int = Alg.SHA256,
        *,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        """`key`: an ECC P-256 key to use instead of a new one (a benchmark's load generator
        signs for AKs its parent enrolled)."""
        self.hash_id = hash_id
        self.scheme = scheme
        if kind == "ecc":
            self.ec = key or ec.generate_private_key(ec.SECP256R1())
            n = self.ec.public_key().public_numbers()
            detail: RsaDetail | EccDetail = EccDetail(
                SymDef(), Scheme(scheme, hash_id), 3, Scheme(), n.x.to_bytes(32), n.y.to_bytes(32)
            )
        else:
            self.rsa = rsa.generate_private_key(65537, 2048)
            modulus = self.rsa.public_key().public_numbers().n.to_bytes(256)
            detail = RsaDetail(SymDef(), Scheme(scheme, hash_id), 2048, 0, modulus)
        self.public = TpmtPublic(Alg.SHA256, int(AK_REQUIRED), b"", detail)
        self.kind = kind

    def sign(self, message: bytes, *, scheme: int | None = None, hash_id: int | None = None) -> Signature:
        """The TPMT_SIGNATURE over `message`, in the key's scheme and hash unless told otherwise."""
        scheme = self.scheme if scheme is None else scheme
        hash_id = self.hash_id if hash_id is None else hash_id
        h = HASHES[hash_id]
        if self.kind == "ecc":
            r, s = decode_dss_signature(self.ec.sign(message, ec.ECDSA(h)))
            return EcdsaSignature(hash_id, r.to_bytes(32), s.to_bytes(32))
        if scheme == Alg.RSAPSS:
            pss = padding.PSS(padding.MGF1(h), h.digest_size)
            return RsaSignature(scheme, hash_id, self.rsa.sign(message, pss, h))
        return RsaSignature(scheme, hash_id, self.rsa.sign(message, padding.PKCS1v15(), h))


def quote_attest(
    nonce: bytes,
    selection: PcrSelection,
    values: PcrValues,
    clock: ClockInfo,
    *,
    digest_hash: int = Alg.SHA256,
) -> Attest:
    """The TPMS_ATTEST a TPM2_Quote of `selection` over `nonce` would sign: `values` digested
    in `digest_hash`, a fixed qualified signer and firmware version."""
    tpml = TpmlPcrSelection(tuple(TpmsPcrSelection(hash_alg(b).alg.value, p) for b, p in selection.banks))
    return Attest(
        magic=TPM_GENERATED_VALUE,
        type=TPM_ST_ATTEST_QUOTE,
        qualified_signer=b"\x00\x0b" + bytes(32),
        extra_data=nonce,
        clock_info=clock,
        firmware_version=0x2000000000001,
        attested=QuoteInfo(tpml, values.digest(tpml, hash_alg(digest_hash))),
    )
