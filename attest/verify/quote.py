"""Quote verification: is this a fresh TPM2_Quote, signed by the bound attestation key, over
exactly the PCRs asked for, with these values?

Malformed input (an AK, quote or signature that does not parse) raises ParseError at once:
nothing else can be judged. Every other check runs regardless of the others, and
``verify_quote`` returns all the failures in its QuoteResult, so the appraisal can report every
reason at once. PCR values are trusted only when every check passed, and only those inside the
signed selection. See docs/quote.md for the list and the order.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attest.errors import ParseError, VerificationError
from attest.pcrselect import PcrSelection
from attest.reasons import Reason
from attest.tcg import TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE, Alg, hash_alg
from attest.verify.pcrs import PcrValues
from attest.verify.tpmstructs import (
    CURVES,
    Attest,
    ClockInfo,
    EcdsaSignature,
    ObjectAttr,
    PublicKey,
    QuoteInfo,
    RsaDetail,
    Signature,
    TpmlPcrSelection,
    TpmtPublic,
    parse_attest,
    parse_public,
    parse_signature,
)

# Hashes a quote may be signed with. SHA-1 only when the caller allows it.
_SIGN_HASHES: Final[dict[int, hashes.HashAlgorithm]] = {
    Alg.SHA1: hashes.SHA1(),  # noqa: S303
    Alg.SHA256: hashes.SHA256(),
    Alg.SHA384: hashes.SHA384(),
    Alg.SHA512: hashes.SHA512(),
}
_RSA_SIGN_SCHEMES: Final = frozenset({Alg.RSASSA, Alg.RSAPSS})

# A restricted signing key the TPM generated and will never let out: what makes a quote
# evidence. userWithAuth is the profile the agent creates (tpm2_createak does the same).
AK_REQUIRED: Final = (
    ObjectAttr.FIXED_TPM
    | ObjectAttr.FIXED_PARENT
    | ObjectAttr.SENSITIVE_DATA_ORIGIN
    | ObjectAttr.USER_WITH_AUTH
    | ObjectAttr.RESTRICTED
    | ObjectAttr.SIGN_ENCRYPT
)
AK_MIN_RSA_BITS: Final = 2048


@dataclass(frozen=True)
class AkPublic:
    """An attestation key as the verifier holds it: the key, and its public area when known.

    From a PEM file only the key is known: its attributes, scheme and name are not, so such an
    AK serves offline checks (``attestctl verify``); enrollment binds a TPM2B_PUBLIC.
    """

    key: PublicKey
    public: TpmtPublic | None

    @property
    def name(self) -> bytes | None:
        return None if self.public is None else self.public.name()


def load_ak(data: bytes | TpmtPublic) -> AkPublic:
    """An AK from TPM2B_PUBLIC bytes (``tpm2_createak -u``, ``tpm2_readpublic -o``), a parsed
    public area, or a PEM public key; ParseError(AK_MALFORMED) if it is none of these."""
    if isinstance(data, TpmtPublic):
        public = data
    elif data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as e:
            raise ParseError(Reason.AK_MALFORMED, f"AK PEM: {e}") from None
        if isinstance(key, rsa.RSAPublicKey) or (
            isinstance(key, ec.EllipticCurvePublicKey)
            and any(key.curve.name == c.name for c in CURVES.values())
        ):
            return AkPublic(key, None)
        raise ParseError(Reason.AK_MALFORMED, f"AK PEM holds an unsupported key: {type(key).__name__}")
    else:
        public = parse_public(data, Reason.AK_MALFORMED)
    try:
        return AkPublic(public.public_key(), public)
    except ValueError as e:
        raise ParseError(Reason.AK_MALFORMED, f"AK public area: {e}") from None


def ak_name(public: TpmtPublic | bytes) -> bytes:
    """The AK's Name (nameAlg || H(TPMT_PUBLIC)), computed here rather than taken from the node."""
    pub = public if isinstance(public, TpmtPublic) else parse_public(public, Reason.AK_MALFORMED)
    return pub.name()


def check_ak_attributes(public: TpmtPublic) -> None:
    """VerificationError(AK_ATTRIBUTES_INVALID) unless this is a restricted signing key that was
    generated in and cannot leave its TPM, with a signing scheme this verifier can check.

    A quote is only evidence because a restricted key refuses to sign data that starts with
    TPM_GENERATED_VALUE unless the TPM produced it; an unrestricted or exportable key could sign
    anything.
    """
    problems = []
    missing = ObjectAttr(AK_REQUIRED & ~public.attributes)
    if missing:
        problems.append(f"missing {missing.name}")
    if public.has(ObjectAttr.DECRYPT):
        problems.append("decrypt is set")
    scheme = public.detail.scheme
    if isinstance(public.detail, RsaDetail):
        if scheme.alg not in _RSA_SIGN_SCHEMES:
            problems.append(f"RSA signing scheme 0x{scheme.alg:04x} (need RSASSA or RSAPSS)")
        if public.detail.key_bits < AK_MIN_RSA_BITS:
            problems.append(f"RSA key of {public.detail.key_bits} bits")
    elif scheme.alg != Alg.ECDSA:
        problems.append(f"ECC signing scheme 0x{scheme.alg:04x} (need ECDSA)")
    if scheme.alg != Alg.NULL and scheme.hash not in _SIGN_HASHES:
        problems.append(f"signing hash 0x{scheme.hash:04x}")
    if problems:
        raise VerificationError(
            Reason.AK_ATTRIBUTES_INVALID, "AK is not an attestation key: " + "; ".join(problems)
        )


@dataclass(frozen=True)
class QuoteResult:
    """The outcome of one quote check.

    ``pcrs`` holds the values this quote proves: those inside its signed selection, and only
    when every check passed (otherwise it is empty). The clock and firmware fields come from the
    signed structure; keep them to compare with the next quote (``compare_clock``).
    """

    attest: Attest
    signature: Signature
    failures: tuple[VerificationError, ...]
    pcrs: PcrValues

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def reasons(self) -> tuple[Reason, ...]:
        return tuple(f.code for f in self.failures)

    @property
    def clock_info(self) -> ClockInfo:
        return self.attest.clock_info

    @property
    def firmware_version(self) -> int:
        return self.attest.firmware_version

    @property
    def selection(self) -> TpmlPcrSelection | None:
        """The signed PCR selection (None when the structure is not a quote)."""
        return self.attest.attested.pcr_select if isinstance(self.attest.attested, QuoteInfo) else None

    def raise_for_failure(self) -> None:
        """Raise the first failure, for callers that only need a yes or no."""
        if self.failures:
            raise self.failures[0]


def _hash_name(alg: int) -> str:
    try:
        return hash_alg(alg).name
    except KeyError:
        return f"0x{alg:04x}"


def _scheme_name(alg: int) -> str:
    try:
        return Alg(alg).name
    except ValueError:
        return f"0x{alg:04x}"


def _scheme_failure(ak: AkPublic, sig: Signature) -> str | None:
    """Why this signature's scheme is not the AK's, or None if it is."""
    used = f"{_scheme_name(sig.scheme)}/{_hash_name(sig.hash)}"
    if ak.public is not None:
        scheme = ak.public.detail.scheme
        if (sig.scheme, sig.hash) != (scheme.alg, scheme.hash):
            return (
                f"signed with {used}, the AK's scheme is {_scheme_name(scheme.alg)}/{_hash_name(scheme.hash)}"
            )
    elif isinstance(ak.key, rsa.RSAPublicKey) != (sig.scheme in _RSA_SIGN_SCHEMES):
        kind = "RSA" if isinstance(ak.key, rsa.RSAPublicKey) else "EC"
        return f"signed with {used}, which an {kind} AK cannot use"
    if sig.hash not in _SIGN_HASHES:
        return f"signed with {used}: unsupported hash"
    return None


def _signature_valid(key: PublicKey, sig: Signature, message: bytes) -> bool:
    h = _SIGN_HASHES[sig.hash]
    try:
        if isinstance(sig, EcdsaSignature):
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return False
            size = (key.key_size + 7) // 8
            if len(sig.r) > size or len(sig.s) > size:
                return False
            der = encode_dss_signature(int.from_bytes(sig.r), int.from_bytes(sig.s))
            key.verify(der, message, ec.ECDSA(h))
        elif not isinstance(key, rsa.RSAPublicKey):
            return False
        elif sig.scheme == Alg.RSASSA:
            key.verify(sig.sig, message, padding.PKCS1v15(), h)
        else:
            # TPMs salt PSS with as many bytes as the digest (FIPS 186-4, TPM 2.0 Library 1.38
            # and later); older TPMs use the largest salt the key size allows. Nothing else:
            # PSS.MAX_LENGTH would not do, as cryptography verifies it as "any length".
            try:
                key.verify(sig.sig, message, padding.PSS(padding.MGF1(h), h.digest_size), h)
            except InvalidSignature:
                largest = (key.key_size + 6) // 8 - h.digest_size - 2
                key.verify(sig.sig, message, padding.PSS(padding.MGF1(h), largest), h)
    except InvalidSignature:
        return False
    return True


def verify_quote(
    ak: AkPublic | bytes,
    attest_bytes: bytes,
    signature_bytes: bytes,
    *,
    nonce: bytes,
    selection: PcrSelection,
    pcr_values: PcrValues,
    allow_sha1: bool = False,
) -> QuoteResult:
    """Check a TPM2_Quote (``tpm2_quote -m`` / ``-s``) against the bound AK, the nonce that was
    issued, the PCR selection that was asked for, and the PCR values the node sent.

    ParseError (AK_MALFORMED, QUOTE_MALFORMED, QUOTE_SIGNATURE_MALFORMED) if the AK, quote or
    signature does not parse; every other failure is collected in the result.
    """
    key = ak if isinstance(ak, AkPublic) else load_ak(ak)
    attest = parse_attest(attest_bytes)
    sig = parse_signature(signature_bytes)
    failures: list[VerificationError] = []

    if key.public is not None:
        try:
            check_ak_attributes(key.public)
        except VerificationError as e:
            failures.append(e)
    if attest.magic != TPM_GENERATED_VALUE:
        failures.append(
            VerificationError(Reason.QUOTE_BAD_MAGIC, f"magic 0x{attest.magic:08x}: not generated by a TPM")
        )
    if attest.type != TPM_ST_ATTEST_QUOTE:
        failures.append(
            VerificationError(Reason.QUOTE_WRONG_TYPE, f"attestation type 0x{attest.type:04x} is not a quote")
        )
    # One comparison over the whole value, in constant time: no prefix or length games.
    if not hmac.compare_digest(attest.extra_data, nonce):
        failures.append(VerificationError(Reason.QUOTE_NONCE_MISMATCH, "extraData is not the nonce issued"))

    quote = attest.attested if isinstance(attest.attested, QuoteInfo) else None
    sha1 = ["the signature hash"] if sig.hash == Alg.SHA1 else []
    if quote is not None:
        sha1 += [f"{b.bank} PCR bank" for b in quote.pcr_select.banks if b.alg == Alg.SHA1]
    if sha1 and not allow_sha1:
        failures.append(VerificationError(Reason.QUOTE_SHA1_NOT_ALLOWED, "SHA-1 in " + ", ".join(sha1)))

    scheme_problem = _scheme_failure(key, sig)
    if scheme_problem is not None:
        failures.append(VerificationError(Reason.QUOTE_SIGNATURE_SCHEME_MISMATCH, scheme_problem))
    elif not _signature_valid(key.key, sig, attest_bytes):
        failures.append(
            VerificationError(Reason.QUOTE_SIGNATURE_INVALID, "signature does not verify under the AK")
        )

    if quote is not None:
        if quote.pcr_select.as_banks() != selection.banks:
            failures.append(
                VerificationError(
                    Reason.QUOTE_PCR_SELECTION_MISMATCH,
                    f"quote covers {quote.pcr_select}, asked for {selection}",
                )
            )
        try:
            quoted = pcr_values.restrict(quote.pcr_select)
        except ParseError as e:
            failures.append(VerificationError(e.code, e.message))
        else:
            # TPM2_Quote digests the PCRs with the signing scheme's hash (Part 3, 18.4).
            if sig.hash in _SIGN_HASHES and not hmac.compare_digest(
                quoted.digest(quote.pcr_select, hash_alg(sig.hash)), quote.pcr_digest
            ):
                failures.append(
                    VerificationError(
                        Reason.PCR_DIGEST_MISMATCH, "the PCR values do not hash to the quote's pcrDigest"
                    )
                )
            if not failures:
                return QuoteResult(attest, sig, (), quoted)
    return QuoteResult(attest, sig, tuple(failures), PcrValues())


# --- clock and firmware between quotes ----------------------------------------------------


@dataclass(frozen=True)
class ClockChange:
    """What happened to the TPM between two quotes from the same AK."""

    reboot: bool  # resetCount moved on: TPM Reset, the machine rebooted; appraise everything again
    restart: bool  # restartCount moved on within one boot: TPM Restart or Resume (hibernate, suspend)
    firmware_changed: bool
    failures: tuple[VerificationError, ...]  # QUOTE_CLOCK_ROLLBACK, QUOTE_FIRMWARE_ROLLBACK


def _moved(previous: int, current: int, bits: int) -> int:
    """How far a counter moved, signed, modulo 2**bits.

    A TPM obfuscates resetCount, restartCount and firmwareVersion (adds a per-key constant,
    wrapping) when the AK is outside the endorsement hierarchy, e.g. under the SRK. The offset
    cancels in the difference, so serial-number arithmetic orders both kinds the same way.
    """
    d = (current - previous) % (1 << bits)
    return d - (1 << bits) if d >= 1 << (bits - 1) else d


def compare_clock(
    previous: ClockInfo,
    current: ClockInfo,
    *,
    previous_firmware: int | None = None,
    current_firmware: int | None = None,
) -> ClockChange:
    """Compare the clock info of the last accepted quote with a new one (pure; no state).

    Within one boot the clock only runs forward. A reboot (resetCount up) may bring it back
    only after an unorderly shutdown, which the TPM admits by reporting ``safe`` = NO in the
    boot that follows it. ``safe`` speaks for the latest startup only: after several reboots
    (resetCount up by two or more) an unorderly one may lie between the quotes, unseen, and the
    clock may lag its old value until it catches up, so only a single reboot reporting ``safe``
    with the clock behind is a rollback. Counters never go back, except through TPM2_Clear,
    which also gives the node a new identity.
    """
    failures = []

    def rollback(message: str) -> None:
        failures.append(VerificationError(Reason.QUOTE_CLOCK_ROLLBACK, message))

    reboot = restart = False
    resets = _moved(previous.reset_count, current.reset_count, 32)
    restarts = _moved(previous.restart_count, current.restart_count, 32)
    if resets < 0:
        rollback(f"resetCount went back by {-resets}")
    elif resets > 0:
        reboot = True
        if current.clock < previous.clock and current.safe and resets == 1:
            rollback(
                f"clock went back from {previous.clock} to {current.clock} ms, yet the TPM says it is safe"
            )
    elif restarts < 0:
        rollback(f"restartCount went back by {-restarts} within one boot")
    else:
        restart = restarts > 0
        if current.clock < previous.clock:
            rollback(f"clock went back from {previous.clock} to {current.clock} ms within one boot")

    firmware_changed = False
    if previous_firmware is not None and current_firmware is not None:
        moved = _moved(previous_firmware, current_firmware, 64)
        firmware_changed = moved != 0
        if moved < 0:
            failures.append(
                VerificationError(
                    Reason.QUOTE_FIRMWARE_ROLLBACK,
                    f"firmwareVersion went back from 0x{previous_firmware:016x} to 0x{current_firmware:016x}",
                )
            )
    return ClockChange(reboot, restart, firmware_changed, tuple(failures))
