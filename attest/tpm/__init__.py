"""The node side: talking to the TPM through tpm2-pytss.

Only the agent imports this package; the verifier never needs a TPM.
"""

from attest.tpm.ak import AttestationKey, create_ak, load_ak
from attest.tpm.credential import activate_credential
from attest.tpm.ek import EkCertificate, EndorsementKey, create_ek, read_ek_certificates
from attest.tpm.pcr import pcr_extend, pcr_read
from attest.tpm.quote import Quote, quote
from attest.tpm.session import Tpm

__all__ = [
    "AttestationKey",
    "EkCertificate",
    "EndorsementKey",
    "Quote",
    "Tpm",
    "activate_credential",
    "create_ak",
    "create_ek",
    "load_ak",
    "pcr_extend",
    "pcr_read",
    "quote",
    "read_ek_certificates",
]
