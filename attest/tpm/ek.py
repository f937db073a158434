"""Endorsement keys: the certificates the manufacturer left in NV, and the keys they certify.

The EK itself is never stored: it is re-derived from the endorsement seed with the template
the TCG EK Credential Profile fixes for each certificate index, so the key we create must be
the key in the certificate. We check that here rather than trusting the NV contents.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tpm2_pytss import ESYS_TR, TPM2_CAP, TPM2_HT, TPM2B_SENSITIVE_CREATE, TPMA_OBJECT
from tpm2_pytss.utils import NoSuchIndex, create_ek_template

from attest.errors import TpmError
from attest.tpm.session import Tpm, tpm_errors

# TCG EK Credential Profile 2.x: certificate NV index per EK type, in the order we prefer
# them. Low-range RSA first: it is the one nearly every TPM has and every verifier accepts.
EK_CERT_INDICES: dict[str, int] = {
    "EK-RSA2048": 0x01C00002,
    "EK-ECC256": 0x01C0000A,
    "EK-HIGH-RSA2048": 0x01C00012,
    "EK-HIGH-ECC256": 0x01C00014,
    "EK-HIGH-ECC384": 0x01C00016,
}
_NV_CHUNK = 512  # below every TPM's MAX_NV_BUFFER_SIZE


@dataclass(frozen=True)
class EkCertificate:
    kind: str  # a key of EK_CERT_INDICES
    nv_index: int
    der: bytes

    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(_strip_nv_padding(self.der))


@dataclass(frozen=True)
class EndorsementKey:
    """A loaded EK: its handle is valid only inside the `create_ek` block."""

    kind: str
    handle: Any
    public: bytes  # TPM2B_PUBLIC, as sent to the verifier
    public_pem: bytes
    certificate: EkCertificate | None
    # Low-range templates clear userWithAuth: using the key needs PolicySecret(endorsement).
    needs_policy: bool
    name_alg: int


def _strip_nv_padding(der: bytes) -> bytes:
    """NV areas are often larger than the certificate; keep exactly the outer DER SEQUENCE."""
    if len(der) < 4 or der[0] != 0x30:
        return der
    if der[1] < 0x80:
        return der[: 2 + der[1]]
    n = der[1] & 0x7F
    length = int.from_bytes(der[2 : 2 + n], "big")
    return der[: 2 + n + length]


def _defined_nv_indices(tpm: Tpm) -> set[int]:
    found: set[int] = set()
    start = TPM2_HT.NV_INDEX << 24
    with tpm_errors("listing NV indices"):
        while True:
            more, data = tpm.esapi.get_capability(TPM2_CAP.HANDLES, start, 64)
            handles = [int(h) for h in data.data.handles]
            found.update(handles)
            if not more or not handles:
                return found
            start = handles[-1] + 1


def _nv_read(tpm: Tpm, index: int) -> bytes:
    with tpm_errors(f"reading NV index 0x{index:08x}"):
        handle = tpm.esapi.tr_from_tpmpublic(index)
        try:
            pub, _ = tpm.esapi.nv_read_public(handle)
            size = int(pub.nvPublic.dataSize)
            out = bytearray()
            while len(out) < size:
                n = min(_NV_CHUNK, size - len(out))
                out += bytes(tpm.esapi.nv_read(handle, n, len(out), auth_handle=ESYS_TR.RH_OWNER))
            return bytes(out)
        finally:
            tpm.esapi.tr_close(handle)


def read_ek_certificates(tpm: Tpm) -> list[EkCertificate]:
    """Every EK certificate the TPM holds, in order of preference."""
    present = _defined_nv_indices(tpm)
    return [
        EkCertificate(kind, index, _strip_nv_padding(_nv_read(tpm, index)))
        for kind, index in EK_CERT_INDICES.items()
        if index in present
    ]


@contextlib.contextmanager
def create_ek(tpm: Tpm, kind: str | None = None) -> Iterator[EndorsementKey]:
    """Create the EK (of `kind`, or the preferred one with a certificate) and flush it afterwards.

    Raises TpmError when the created key is not the key the certificate names: that TPM's
    NV holds a certificate for some other key, and enrolling it would bind the wrong TPM.
    """
    certs = {c.kind: c for c in read_ek_certificates(tpm)}
    if kind is None:
        kind = next(iter(certs), "EK-RSA2048")
    if kind not in EK_CERT_INDICES:
        raise TpmError(f"unknown EK type {kind!r}; one of {', '.join(EK_CERT_INDICES)}")
    cert = certs.get(kind)

    def nv_read(index: int) -> bytes:
        if index not in _defined_nv_indices(tpm):
            raise NoSuchIndex(index)
        return _nv_read(tpm, index)

    with tpm_errors(f"creating the {kind} endorsement key"):
        try:
            _, template = create_ek_template(kind, nv_read)
        except ValueError as e:
            raise TpmError(str(e)) from None
        handle, public, *_ = tpm.esapi.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT)
    with tpm.transient(handle):
        pem = bytes(public.to_pem())
        if cert is not None:
            cert_pem = (
                cert.certificate()
                .public_key()
                .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            )
            if cert_pem != pem:
                raise TpmError(
                    f"the {kind} EK created from the standard template is not the key in its certificate"
                )
        attrs = public.publicArea.objectAttributes
        yield EndorsementKey(
            kind=kind,
            handle=handle,
            public=bytes(public.marshal()),
            public_pem=pem,
            certificate=cert,
            needs_policy=not bool(attrs & TPMA_OBJECT.USERWITHAUTH),
            name_alg=int(public.publicArea.nameAlg),
        )
