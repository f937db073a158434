"""Reason codes: why an appraisal, enrollment or admission decision went the way it did.

The string values are a stable, documented interface (docs/reason-codes.md): operators
alert on them and scripts match them. Add codes; never rename or reuse one.
"""

from __future__ import annotations

import dataclasses
import enum


class Reason(enum.StrEnum):
    # Freshness (DESIGN 4.1)
    NONCE_UNKNOWN = "nonce_unknown"
    NONCE_EXPIRED = "nonce_expired"
    NONCE_REUSED = "nonce_reused"
    NONCE_WRONG_NODE = "nonce_wrong_node"

    # Quote and signature (DESIGN 4.2, SECURITY "Quote and signature")
    QUOTE_MALFORMED = "quote_malformed"
    QUOTE_BAD_MAGIC = "quote_bad_magic"
    QUOTE_WRONG_TYPE = "quote_wrong_type"
    QUOTE_NONCE_MISMATCH = "quote_nonce_mismatch"
    QUOTE_PCR_SELECTION_MISMATCH = "quote_pcr_selection_mismatch"
    QUOTE_SIGNATURE_MALFORMED = "quote_signature_malformed"
    QUOTE_SIGNATURE_SCHEME_MISMATCH = "quote_signature_scheme_mismatch"
    QUOTE_SIGNATURE_INVALID = "quote_signature_invalid"
    QUOTE_CLOCK_ROLLBACK = "quote_clock_rollback"
    QUOTE_FIRMWARE_ROLLBACK = "quote_firmware_rollback"
    QUOTE_SHA1_NOT_ALLOWED = "quote_sha1_not_allowed"
    AK_MALFORMED = "ak_malformed"
    AK_NOT_BOUND = "ak_not_bound"

    # PCR values (DESIGN 4.3)
    PCR_VALUES_MALFORMED = "pcr_values_malformed"
    PCR_DIGEST_MISMATCH = "pcr_digest_mismatch"

    # TCG event log (DESIGN 4.4)
    EVENTLOG_MISSING = "eventlog_missing"
    EVENTLOG_MALFORMED = "eventlog_malformed"
    EVENTLOG_BANK_MISSING = "eventlog_bank_missing"
    EVENTLOG_REPLAY_MISMATCH = "eventlog_replay_mismatch"

    # IMA (DESIGN 4.5, SECURITY "IMA")
    IMA_MISSING = "ima_missing"
    IMA_MALFORMED = "ima_malformed"
    IMA_UNKNOWN_ALGORITHM = "ima_unknown_algorithm"
    IMA_TEMPLATE_HASH_MISMATCH = "ima_template_hash_mismatch"
    IMA_REPLAY_MISMATCH = "ima_replay_mismatch"
    IMA_BOOT_AGGREGATE_MISMATCH = "ima_boot_aggregate_mismatch"
    IMA_SIGNATURE_INVALID = "ima_signature_invalid"

    # Container launch log (PCR 23)
    CONTAINERLOG_MISSING = "containerlog_missing"
    CONTAINERLOG_MALFORMED = "containerlog_malformed"
    CONTAINERLOG_REPLAY_MISMATCH = "containerlog_replay_mismatch"

    # Reference policy (DESIGN 4.5)
    POLICY_INVALID = "policy_invalid"
    POLICY_MISSING = "policy_missing"
    POLICY_PCR_MISMATCH = "policy_pcr_mismatch"
    POLICY_EVENT_NOT_ALLOWED = "policy_event_not_allowed"
    POLICY_SECURE_BOOT_DISABLED = "policy_secure_boot_disabled"
    POLICY_SECURE_BOOT_KEYS = "policy_secure_boot_keys"
    POLICY_KERNEL_CMDLINE = "policy_kernel_cmdline"
    POLICY_IMA_NOT_ALLOWED = "policy_ima_not_allowed"
    POLICY_IMAGE_NOT_ALLOWED = "policy_image_not_allowed"
    # A rule judges events of a PCR that the quote did not cover or the log did not replay to.
    POLICY_PCR_UNVERIFIED = "policy_pcr_unverified"
    POLICY_IMA_VIOLATION = "policy_ima_violation"

    # Enrollment (SECURITY "Enrollment")
    EK_CERT_MALFORMED = "ek_cert_malformed"
    EK_CERT_UNTRUSTED = "ek_cert_untrusted"
    EK_KEY_MISMATCH = "ek_key_mismatch"
    EK_MALFORMED = "ek_malformed"
    EK_NOT_ENROLLED = "ek_not_enrolled"
    # A node already bound to one TPM presented another: never a silent takeover.
    EK_NODE_CONFLICT = "ek_node_conflict"
    NODE_REVOKED = "node_revoked"
    AK_ATTRIBUTES_INVALID = "ak_attributes_invalid"
    CREDENTIAL_INVALID = "credential_invalid"
    # Activating a credential challenge that was never issued, has expired, or was already used.
    ENROLLMENT_UNKNOWN = "enrollment_unknown"
    ENROLLMENT_EXPIRED = "enrollment_expired"
    ENROLLMENT_USED = "enrollment_used"

    # Kubelet certificate approval (DESIGN 5.1, docs/kubernetes.md): why a CSR was denied.
    CSR_MALFORMED = "csr_malformed"
    # The requesting user is another node than the one the certificate would name.
    CSR_REQUESTOR_MISMATCH = "csr_requestor_mismatch"
    CSR_NODE_UNTRUSTED = "csr_node_untrusted"
    CSR_NOT_BOUND = "csr_not_bound"
    CSR_VERDICT_STALE = "csr_verdict_stale"
    CSR_SAN_FOREIGN = "csr_san_foreign"

    # Kubernetes admission (DESIGN 5.3, docs/admission.md): why the webhook refused a request.
    # The review or its object is not what kube-apiserver sends (answered 400, not a decision).
    ADMISSION_REVIEW_MALFORMED = "admission_review_malformed"
    # A resource or operation the webhook path does not judge: its configuration is wrong.
    ADMISSION_REQUEST_UNEXPECTED = "admission_request_unexpected"
    ADMISSION_NODE_MISMATCH = "admission_node_mismatch"
    ADMISSION_LABEL_FORBIDDEN = "admission_label_forbidden"
    ADMISSION_TAINT_MISSING = "admission_taint_missing"
    ADMISSION_TAINT_REMOVED = "admission_taint_removed"
    ADMISSION_CSR_MALFORMED = "admission_csr_malformed"
    ADMISSION_NODE_UNATTESTED = "admission_node_unattested"
    ADMISSION_NODE_UNTRUSTED = "admission_node_untrusted"
    ADMISSION_NODE_STALE = "admission_node_stale"
    ADMISSION_IMAGE_NOT_PINNED = "admission_image_not_pinned"
    ADMISSION_IMAGE_NOT_ALLOWED = "admission_image_not_allowed"
    ADMISSION_STORE_UNAVAILABLE = "admission_store_unavailable"

    # Fail closed: any unexpected error during appraisal.
    INTERNAL_ERROR = "internal_error"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One failed check: the stable code, a sentence a person can act on, and where it broke."""

    code: Reason
    message: str
    rule: str | None = None  # "boot/efi_applications": the policy section and rule that failed
    pcr: int | None = None
    event: int | None = None  # index of the event-log or IMA entry that broke it

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"code": self.code.value, "message": self.message}
        for key in ("rule", "pcr", "event"):
            value = getattr(self, key)
            if value is not None:
                doc[key] = value
        return doc
