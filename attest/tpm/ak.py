"""Attestation keys: created once under the storage root key, kept as a wrapped blob on disk.

A blob, rather than a persistent handle, because it costs no TPM NV, cannot collide with
another tool's handle, and stops loading (so the agent re-enrolls) exactly when the owner
hierarchy is cleared, which is when the verifier should see a new key anyway.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpm2_pytss import ESYS_TR, TPM2B_PRIVATE, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, TPMA_OBJECT

from attest.errors import TpmError
from attest.fileio import write_private
from attest.tpm.session import Tpm, tpm_errors

AK_ALGORITHMS = ("ecc", "rsa")
_BLOB_VERSION = 1


@dataclass(frozen=True)
class AttestationKey:
    alg: str  # "ecc" (P-256, ECDSA-SHA256) or "rsa" (2048, RSASSA-SHA256)
    public: bytes  # TPM2B_PUBLIC
    private: bytes  # TPM2B_PRIVATE, wrapped by the SRK: useless off this TPM

    def save(self, path: Path) -> None:
        """Write atomically and 0600: a torn or world-readable key file is worse than none."""
        doc = {
            "version": _BLOB_VERSION,
            "alg": self.alg,
            "public": self.public.hex(),
            "private": self.private.hex(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps(doc).encode())

    @classmethod
    def from_file(cls, path: Path) -> AttestationKey:
        try:
            doc = json.loads(path.read_text())
            if doc.get("version") != _BLOB_VERSION or doc.get("alg") not in AK_ALGORITHMS:
                raise ValueError("unsupported version or algorithm")
            return cls(
                alg=doc["alg"], public=bytes.fromhex(doc["public"]), private=bytes.fromhex(doc["private"])
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TpmError(f"{path}: not a usable AK blob ({e})") from None


def _srk_template() -> Any:
    # TCG TPM v2.0 Provisioning Guidance: the ECC P-256 storage root key template, so that
    # any tool re-deriving the SRK gets the same key.
    attrs = (
        TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
        | TPMA_OBJECT.NODA
        | TPMA_OBJECT.RESTRICTED
        | TPMA_OBJECT.DECRYPT
    )
    return TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=attrs, nameAlg="sha256")


def _ak_template(alg: str) -> Any:
    # The attributes a verifier requires of an AK: restricted signing, born in this TPM, never leaving it.
    attrs = (
        TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
        | TPMA_OBJECT.RESTRICTED
        | TPMA_OBJECT.SIGN_ENCRYPT
    )
    spec = {"ecc": "ecc256:ecdsa-sha256:null", "rsa": "rsa2048:rsassa-sha256:null"}[alg]
    return TPM2B_PUBLIC.parse(spec, objectAttributes=attrs, nameAlg="sha256")


@contextlib.contextmanager
def _srk(tpm: Tpm) -> Iterator[Any]:
    with tpm_errors("creating the storage root key"):
        handle, *_ = tpm.esapi.create_primary(TPM2B_SENSITIVE_CREATE(), _srk_template(), ESYS_TR.OWNER)
    with tpm.transient(handle):
        yield handle


def create_ak(tpm: Tpm, alg: str = "ecc") -> AttestationKey:
    if alg not in AK_ALGORITHMS:
        raise TpmError(f"AK algorithm must be one of {', '.join(AK_ALGORITHMS)}, not {alg!r}")
    with _srk(tpm) as srk, tpm_errors("creating the attestation key"):
        private, public, *_ = tpm.esapi.create(srk, TPM2B_SENSITIVE_CREATE(), _ak_template(alg))
    return AttestationKey(alg=alg, public=bytes(public.marshal()), private=bytes(private.marshal()))


@contextlib.contextmanager
def load_ak(tpm: Tpm, ak: AttestationKey) -> Iterator[Any]:
    """Load the AK under a re-derived SRK; yields its handle and flushes both afterwards."""
    public, _ = TPM2B_PUBLIC.unmarshal(ak.public)
    private, _ = TPM2B_PRIVATE.unmarshal(ak.private)
    with _srk(tpm) as srk, tpm_errors("loading the attestation key (was the TPM cleared?)"):
        handle = tpm.esapi.load(srk, private, public)
    with tpm.transient(handle):
        yield handle
