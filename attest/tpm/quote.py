"""TPM2_Quote over a fresh nonce, with the PCR values it covers."""

from __future__ import annotations

from dataclasses import dataclass

from tpm2_pytss import TPM2_ALG, TPML_PCR_SELECTION, TPMT_SIG_SCHEME

from attest.errors import TpmError
from attest.pcrselect import PcrSelection
from attest.tpm.ak import AttestationKey, load_ak
from attest.tpm.pcr import PcrValues, pcr_read
from attest.tpm.session import Tpm, tpm_errors

# PCRs can move between reading them and quoting (IMA extends PCR 10 at any time). A few
# attempts make a consistent pair all but certain; more would hide a TPM that never settles.
_ATTEMPTS = 5
MAX_NONCE = 64  # TPM2B_DATA holds at most sizeof(TPMT_HA) = 66; keep to the largest digest


@dataclass(frozen=True)
class Quote:
    attest: bytes  # TPMS_ATTEST as signed (tpm2_quote -m)
    signature: bytes  # TPMT_SIGNATURE (tpm2_quote -s)
    pcrs: PcrValues  # the values the quote covers, read around it
    selection: PcrSelection


def quote(tpm: Tpm, ak: AttestationKey, nonce: bytes, selection: PcrSelection) -> Quote:
    if not 1 <= len(nonce) <= MAX_NONCE:
        raise TpmError(f"nonce must be 1-{MAX_NONCE} bytes, got {len(nonce)}")
    with load_ak(tpm, ak) as handle:
        for _ in range(_ATTEMPTS):
            before = pcr_read(tpm, selection)
            with tpm_errors("quoting"):
                attest, signature = tpm.esapi.quote(
                    handle,
                    TPML_PCR_SELECTION.parse(str(selection)),
                    nonce,
                    TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL),
                )
            if pcr_read(tpm, selection) == before:
                return Quote(
                    attest=bytes(attest),
                    signature=bytes(signature.marshal()),
                    pcrs=before,
                    selection=selection,
                )
    raise TpmError(f"PCRs kept changing during {_ATTEMPTS} quote attempts")
