"""Reading and extending PCRs."""

from __future__ import annotations

from collections.abc import Mapping

from tpm2_pytss import ESYS_TR, TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMT_HA

from attest.errors import TpmError
from attest.pcrselect import PcrSelection
from attest.tcg import hash_alg
from attest.tpm.session import Tpm, tpm_errors

PcrValues = dict[str, dict[int, bytes]]


def pcr_read(tpm: Tpm, selection: PcrSelection) -> PcrValues:
    """Read every selected PCR. A TPM returns at most 8 digests per TPM2_PCR_Read, so ask again
    for whatever it left out until the selection is complete."""
    wanted = {bank: set(pcrs) for bank, pcrs in selection.banks}
    out: PcrValues = {bank: {} for bank in wanted}
    with tpm_errors("reading PCRs"):
        while any(wanted.values()):
            ask = PcrSelection.of({b: p for b, p in wanted.items() if p})
            _, got_sel, digests = tpm.esapi.pcr_read(TPML_PCR_SELECTION.parse(str(ask)))
            values = iter(bytes(d) for d in digests)
            progressed = False
            for sel in got_sel:
                bank = hash_alg(int(sel.hash)).name
                bitmap = bytes(sel.pcrSelect)[: sel.sizeofSelect]
                for pcr in range(len(bitmap) * 8):
                    if bitmap[pcr // 8] & (1 << (pcr % 8)):
                        out[bank][pcr] = next(values)
                        wanted[bank].discard(pcr)
                        progressed = True
            if not progressed:
                missing = {b: sorted(p) for b, p in wanted.items() if p}
                raise TpmError(f"TPM does not implement the PCRs {missing} (is the bank active?)")
    return {bank: dict(sorted(v.items())) for bank, v in out.items()}


def pcr_extend(tpm: Tpm, index: int, digests: Mapping[str, bytes]) -> None:
    """Extend one PCR in several banks at once, as firmware and IMA do."""
    values = []
    for bank, digest in digests.items():
        alg = hash_alg(bank)
        if len(digest) != alg.size:
            raise ValueError(f"{bank} digest must be {alg.size} bytes, got {len(digest)}")
        ha = TPMT_HA(hashAlg=int(alg.alg))
        ha.digest.sha512 = digest + b"\0" * (64 - len(digest))  # the union is sized for the largest
        values.append(ha)
    with tpm_errors(f"extending PCR {index}"):
        tpm.esapi.pcr_extend(ESYS_TR.PCR0 + index, TPML_DIGEST_VALUES(values))
