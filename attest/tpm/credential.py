"""TPM2_ActivateCredential: proving to the verifier that the AK lives in the TPM of this EK."""

from __future__ import annotations

from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_SE, TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TPMT_SYM_DEF

from attest.tpm.ak import AttestationKey, load_ak
from attest.tpm.ek import create_ek
from attest.tpm.session import Tpm, tpm_errors


def activate_credential(
    tpm: Tpm, ak: AttestationKey, id_object: bytes, encrypted_secret: bytes, ek_kind: str | None = None
) -> bytes:
    """Recover the verifier's secret. The TPM releases it only if the credential was made for
    this EK and for exactly this AK's name; anything else fails inside the TPM."""
    blob, _ = TPM2B_ID_OBJECT.unmarshal(id_object)
    secret, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)
    with create_ek(tpm, ek_kind) as ek, load_ak(tpm, ak) as ak_handle:
        if not ek.needs_policy:
            with tpm_errors("activating the credential"):
                return bytes(tpm.esapi.activate_credential(ak_handle, ek.handle, blob, secret))
        with tpm_errors("starting the EK policy session"):
            session = tpm.esapi.start_auth_session(
                ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), ek.name_alg
            )
        with tpm.transient(session), tpm_errors("activating the credential"):
            # The low-range EK policy is PolicySecret(TPM_RH_ENDORSEMENT) (EK Credential Profile, policy A).
            tpm.esapi.policy_secret(ESYS_TR.ENDORSEMENT, session)
            return bytes(tpm.esapi.activate_credential(ak_handle, ek.handle, blob, secret, session2=session))
