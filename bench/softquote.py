"""Quotes signed in software with the exact TPM structures, so appraisal can be measured
without a TPM in the loop (a TPM's 100-700 ms quote would measure the TPM, not the verifier)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attest.pcrselect import PcrSelection
from attest.tcg import TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE, Alg, hash_alg
from attest.verify.pcrs import PcrValues
from attest.verify.quote import AK_REQUIRED
from attest.verify.tpmstructs import (
    Attest,
    ClockInfo,
    EccCurve,
    EccDetail,
    EcdsaSignature,
    ObjectAttr,
    QuoteInfo,
    Scheme,
    SymDef,
    TpmlPcrSelection,
    TpmsPcrSelection,
    TpmtPublic,
)


@dataclass(frozen=True)
class SoftQuote:
    ak_public: bytes  # TPM2B_PUBLIC
    attest: bytes
    signature: bytes
    pcrs: PcrValues


class SoftAk:
    """An ECC P-256 restricted signing key with the attributes a TPM-made AK has."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        numbers = self.key.public_key().public_numbers()
        self.public = TpmtPublic(
            name_alg=Alg.SHA256,
            attributes=int(AK_REQUIRED | ObjectAttr.SIGN_ENCRYPT),
            auth_policy=b"",
            detail=EccDetail(
                symmetric=SymDef(),
                scheme=Scheme(Alg.ECDSA, Alg.SHA256),
                curve=EccCurve.NIST_P256,
                kdf=Scheme(),
                x=numbers.x.to_bytes(32, "big"),
                y=numbers.y.to_bytes(32, "big"),
            ),
        )

    def quote(
        self,
        nonce: bytes,
        selection: PcrSelection,
        pcrs: Mapping[str, Mapping[int, bytes]],
        clock: int = 1000,
    ) -> SoftQuote:
        values = PcrValues({bank: {p: pcrs[bank][p] for p in indices} for bank, indices in selection.banks})
        tpml = TpmlPcrSelection(tuple(TpmsPcrSelection(hash_alg(b).alg, p) for b, p in selection.banks))
        attest = Attest(
            magic=TPM_GENERATED_VALUE,
            type=TPM_ST_ATTEST_QUOTE,
            qualified_signer=self.public.name(),
            extra_data=nonce,
            clock_info=ClockInfo(clock, 1, 0, True),
            firmware_version=0x2019102300000000,
            attested=QuoteInfo(tpml, values.digest(tpml, hash_alg("sha256"))),
        ).marshal()
        r, s = decode_dss_signature(self.key.sign(attest, ec.ECDSA(hashes.SHA256())))
        sig = EcdsaSignature(Alg.SHA256, r.to_bytes(32, "big"), s.to_bytes(32, "big")).marshal()
        return SoftQuote(self.public.marshal_tpm2b(), attest, sig, values)


def nonce_for(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()
