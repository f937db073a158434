"""A real Google Cloud Shielded VM's vTPM, from go-attestation's test data: its AK (TPM2B_PUBLIC,
and a TPM2_CertifyCreation it signed), a quote of all 24 SHA-1 PCRs with its signature, and the
event log with the PCR values it was quoted with, as go-attestation's JSON holds them (base64)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from attest.verify.pcrs import PcrValues

GCP = Path(__file__).parent / "data/eventlogs/go-attestation/windows_gcp_shielded_vm.json"


def gcp() -> dict[str, Any]:
    """The whole document: "AK", "Quote" and "Log" as go-attestation recorded them."""
    doc: dict[str, Any] = json.loads(GCP.read_text())
    return doc


def gcp_pcrs(doc: dict[str, Any]) -> PcrValues:
    """The SHA-1 PCR values the quote was made over (doc["Log"]["PCRs"])."""
    # go-attestation's DigestAlg is Go's crypto.Hash: 3 is SHA-1.
    assert {p["DigestAlg"] for p in doc["Log"]["PCRs"]} == {3}
    return PcrValues({"sha1": {p["Index"]: base64.b64decode(p["Digest"]) for p in doc["Log"]["PCRs"]}})
