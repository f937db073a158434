"""Quote verification without a TPM: a real quote from Google Cloud hardware, a recorded swtpm
quote, and quotes signed here with software keys so every attack can be built exactly."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import ParseError, VerificationError
from attest.pcrselect import PcrSelection
from attest.reasons import Reason
from attest.tcg import Alg
from attest.verify.pcrs import PcrValues
from attest.verify.quote import (
    AkPublic,
    ak_name,
    check_ak_attributes,
    compare_clock,
    load_ak,
    verify_quote,
)
from attest.verify.tpmstructs import (
    Attest,
    ClockInfo,
    EccDetail,
    EcdsaSignature,
    ObjectAttr,
    RsaDetail,
    RsaSignature,
    Scheme,
    Signature,
    parse_tpmt_public,
)
from swtpm.softtpm import SoftAk, quote_attest
from tests.recorded_gcp import gcp, gcp_pcrs
from tests.recorded_swtpm import SWTPM_AK, SWTPM_AK_NAME, SWTPM_NONCE, SWTPM_QUOTE, SWTPM_SIG

EIGHT = PcrSelection.parse("sha256:0-7")
ZEROS = PcrValues({"sha256": dict.fromkeys(range(8), bytes(32))})


def codes(result: Any) -> set[Reason]:
    return set(result.reasons)


# --- a software "TPM": keys whose signatures the tests control ------------------------------


def make_quote(
    *,
    nonce: bytes = b"nonce-0123456789",
    selection: str = "sha256:0-7",
    values: PcrValues = ZEROS,
    digest_hash: int = Alg.SHA256,
    **changes: Any,
) -> Attest:
    attest = quote_attest(
        nonce, PcrSelection.parse(selection), values, ClockInfo(1000, 3, 0, True), digest_hash=digest_hash
    )
    return replace(attest, **changes)


def check(ak: SoftAk, attest: Attest, sig: Signature | None = None, **kwargs: Any) -> Any:
    msg = attest.marshal()
    args: dict[str, Any] = {"nonce": b"nonce-0123456789", "selection": EIGHT, "pcr_values": ZEROS, **kwargs}
    return verify_quote(ak.public.marshal_tpm2b(), msg, (sig or ak.sign(msg)).marshal(), **args)


@pytest.fixture(scope="module")
def ecc_ak() -> SoftAk:
    return SoftAk()


@pytest.fixture(scope="module")
def rsa_ak() -> SoftAk:
    return SoftAk("rsa", Alg.RSASSA)


# --- genuine quotes verify ----------------------------------------------------------------


def test_recorded_swtpm_quote_verifies() -> None:
    result = verify_quote(
        SWTPM_AK, SWTPM_QUOTE, SWTPM_SIG, nonce=SWTPM_NONCE, selection=EIGHT, pcr_values=ZEROS
    )
    assert result.ok, result.failures
    assert result.pcrs == ZEROS
    assert result.clock_info.reset_count == 2
    result.raise_for_failure()


def test_ak_name_matches_tpm2_createak() -> None:
    assert ak_name(SWTPM_AK) == SWTPM_AK_NAME
    assert load_ak(SWTPM_AK).name == SWTPM_AK_NAME


def test_real_gcp_shielded_vm_quote_verifies() -> None:
    """A quote from a Google Cloud vTPM: RSASSA-SHA1 over all 24 SHA-1 PCRs, empty nonce."""
    doc = gcp()
    ak = load_ak(parse_tpmt_public(base64.b64decode(doc["AK"]["Public"])))
    args: dict[str, Any] = {
        "nonce": base64.b64decode(doc["Quote"]["Nonce"]),
        "selection": PcrSelection.parse("sha1:0-23"),
        "pcr_values": gcp_pcrs(doc),
    }
    quote, sig = base64.b64decode(doc["Quote"]["Quote"]), base64.b64decode(doc["Quote"]["Signature"])
    result = verify_quote(ak, quote, sig, allow_sha1=True, **args)
    assert result.ok, result.failures
    assert len(result.pcrs["sha1"]) == 24
    assert codes(verify_quote(ak, quote, sig, **args)) == {Reason.QUOTE_SHA1_NOT_ALLOWED}
    wrong = verify_quote(ak, quote, sig, allow_sha1=True, **{**args, "nonce": b"\0"})
    assert codes(wrong) == {Reason.QUOTE_NONCE_MISMATCH}


def test_real_certify_creation_from_the_same_ak_is_not_a_quote() -> None:
    """Validly signed by that AK, but a TPM2_CertifyCreation structure: WRONG_TYPE, and the
    signature is not what fails."""
    doc = gcp()
    ak = load_ak(parse_tpmt_public(base64.b64decode(doc["AK"]["Public"])))
    result = verify_quote(
        ak,
        base64.b64decode(doc["AK"]["CreateAttestation"]),
        base64.b64decode(doc["AK"]["CreateSignature"]),
        nonce=b"",
        selection=PcrSelection.parse("sha1:0-23"),
        pcr_values=gcp_pcrs(doc),
        allow_sha1=True,
    )
    assert Reason.QUOTE_WRONG_TYPE in codes(result)
    assert Reason.QUOTE_SIGNATURE_INVALID not in codes(result)
    assert result.pcrs == PcrValues()
    assert result.selection is None


@pytest.mark.parametrize(
    ("kind", "scheme", "hash_id"),
    [
        ("ecc", Alg.ECDSA, Alg.SHA256),
        ("ecc", Alg.ECDSA, Alg.SHA384),
        ("rsa", Alg.RSASSA, Alg.SHA256),
        ("rsa", Alg.RSAPSS, Alg.SHA256),
        ("rsa", Alg.RSAPSS, Alg.SHA384),
    ],
)
def test_software_signed_quotes_verify(kind: str, scheme: int, hash_id: int) -> None:
    ak = SoftAk(kind, scheme, hash_id)
    result = check(ak, make_quote(digest_hash=hash_id))
    assert result.ok, result.failures


# --- tampering --------------------------------------------------------------------------


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def swtpm(**kwargs: Any) -> Any:
    args: dict[str, Any] = {"nonce": SWTPM_NONCE, "selection": EIGHT, "pcr_values": ZEROS, **kwargs}
    quote = args.pop("quote", SWTPM_QUOTE)
    sig = args.pop("sig", SWTPM_SIG)
    return verify_quote(args.pop("ak", SWTPM_AK), quote, sig, **args)


def test_flipped_signature_byte_is_invalid() -> None:
    assert codes(swtpm(sig=flip(SWTPM_SIG, 10))) == {Reason.QUOTE_SIGNATURE_INVALID}
    assert codes(swtpm(sig=flip(SWTPM_SIG, len(SWTPM_SIG) - 1))) == {Reason.QUOTE_SIGNATURE_INVALID}


def test_flipped_nonce_byte_in_the_quote_breaks_nonce_and_signature() -> None:
    at = SWTPM_QUOTE.index(SWTPM_NONCE)
    assert codes(swtpm(quote=flip(SWTPM_QUOTE, at + 3))) == {
        Reason.QUOTE_NONCE_MISMATCH,
        Reason.QUOTE_SIGNATURE_INVALID,
    }


@pytest.mark.parametrize(
    "nonce",
    [
        bytes.fromhex("0102030405060709"),  # wrong
        bytes.fromhex("01020304050607"),  # a prefix of the quoted nonce
        bytes.fromhex("010203040506070800"),  # the quoted nonce is a prefix of it
        b"",
    ],
)
def test_any_other_nonce_is_refused(nonce: bytes) -> None:
    assert codes(swtpm(nonce=nonce)) == {Reason.QUOTE_NONCE_MISMATCH}


def test_trailing_bytes_make_quote_and_signature_malformed() -> None:
    with pytest.raises(ParseError) as e:
        swtpm(quote=SWTPM_QUOTE + b"\0")
    assert e.value.code is Reason.QUOTE_MALFORMED
    with pytest.raises(ParseError) as e:
        swtpm(sig=SWTPM_SIG + b"\0")
    assert e.value.code is Reason.QUOTE_SIGNATURE_MALFORMED
    with pytest.raises(ParseError) as e:
        swtpm(ak=SWTPM_AK + b"\0")
    assert e.value.code is Reason.AK_MALFORMED


def test_changed_pcr_value_breaks_the_digest() -> None:
    values = PcrValues({"sha256": {**ZEROS["sha256"], 4: b"\x01" * 32}})
    result = swtpm(pcr_values=values)
    assert codes(result) == {Reason.PCR_DIGEST_MISMATCH}
    assert result.pcrs == PcrValues()


def test_missing_pcr_value_is_reported() -> None:
    values = PcrValues({"sha256": {i: bytes(32) for i in range(7)}})
    assert codes(swtpm(pcr_values=values)) == {Reason.PCR_VALUES_MALFORMED}


@pytest.mark.parametrize("asked", ["sha256:0-6", "sha256:0-8", "sha1:0-7", "sha256:0-7+sha1:0"])
def test_selection_other_than_requested_is_refused(asked: str) -> None:
    assert Reason.QUOTE_PCR_SELECTION_MISMATCH in codes(swtpm(selection=PcrSelection.parse(asked)))


def test_bank_order_is_part_of_the_selection(ecc_ak: SoftAk) -> None:
    both = PcrValues({"sha256": {0: bytes(32)}, "sha384": {0: bytes(48)}})
    attest = make_quote(selection="sha384:0+sha256:0", values=both)
    ok = check(ecc_ak, attest, selection=PcrSelection.parse("sha384:0+sha256:0"), pcr_values=both)
    assert ok.ok, ok.failures
    swapped = check(ecc_ak, attest, selection=PcrSelection.parse("sha256:0+sha384:0"), pcr_values=both)
    assert codes(swapped) == {Reason.QUOTE_PCR_SELECTION_MISMATCH}


def test_another_aks_public_key_does_not_verify(ecc_ak: SoftAk) -> None:
    assert codes(swtpm(ak=ecc_ak.public.marshal_tpm2b())) == {Reason.QUOTE_SIGNATURE_INVALID}


def test_edited_magic_and_type_are_reported_by_name() -> None:
    bad_magic = b"\xff\x54\x43\x46" + SWTPM_QUOTE[4:]
    assert codes(swtpm(quote=bad_magic)) == {Reason.QUOTE_BAD_MAGIC, Reason.QUOTE_SIGNATURE_INVALID}
    as_certify = SWTPM_QUOTE[:4] + b"\x80\x17" + SWTPM_QUOTE[6:]
    result = swtpm(quote=as_certify)
    assert codes(result) == {Reason.QUOTE_WRONG_TYPE, Reason.QUOTE_SIGNATURE_INVALID}


def test_validly_signed_non_tpm_data_is_refused_for_its_magic(ecc_ak: SoftAk) -> None:
    """What an unrestricted key could sign: everything right but the magic."""
    assert codes(check(ecc_ak, make_quote(magic=0x12345678))) == {Reason.QUOTE_BAD_MAGIC}


def test_validly_signed_other_attestation_type_is_refused(ecc_ak: SoftAk) -> None:
    attest = replace(make_quote(), type=0x8017, attested=b"\x00\x00\x00\x00")
    assert codes(check(ecc_ak, attest)) == {Reason.QUOTE_WRONG_TYPE}


def test_rsa_signature_scheme_swapped_is_a_scheme_mismatch(rsa_ak: SoftAk) -> None:
    attest = make_quote()
    pss = rsa_ak.sign(attest.marshal(), scheme=Alg.RSAPSS)
    assert codes(check(rsa_ak, attest, pss)) == {Reason.QUOTE_SIGNATURE_SCHEME_MISMATCH}
    sig = rsa_ak.sign(attest.marshal())
    assert isinstance(sig, RsaSignature)
    relabelled = RsaSignature(Alg.RSAPSS, sig.hash, sig.sig)
    assert codes(check(rsa_ak, attest, relabelled)) == {Reason.QUOTE_SIGNATURE_SCHEME_MISMATCH}


def test_signature_hash_other_than_the_aks_is_a_scheme_mismatch(ecc_ak: SoftAk) -> None:
    attest = make_quote(digest_hash=Alg.SHA384)
    assert codes(check(ecc_ak, attest, ecc_ak.sign(attest.marshal(), hash_id=Alg.SHA384))) == {
        Reason.QUOTE_SIGNATURE_SCHEME_MISMATCH
    }


def test_rsa_signature_under_an_ecc_ak_is_a_scheme_mismatch(ecc_ak: SoftAk, rsa_ak: SoftAk) -> None:
    attest = make_quote()
    assert Reason.QUOTE_SIGNATURE_SCHEME_MISMATCH in codes(
        check(ecc_ak, attest, rsa_ak.sign(attest.marshal()))
    )


def test_pss_salts_tpms_use_are_accepted_and_others_refused() -> None:
    ak = SoftAk("rsa", Alg.RSAPSS, Alg.SHA256)
    attest = make_quote()
    msg = attest.marshal()
    h = hashes.SHA256()
    largest = 256 - 32 - 2
    for salt, ok in ((32, True), (largest, True), (padding.PSS.MAX_LENGTH, True), (0, False), (20, False)):
        sig = RsaSignature(Alg.RSAPSS, Alg.SHA256, ak.rsa.sign(msg, padding.PSS(padding.MGF1(h), salt), h))
        assert check(ak, attest, sig).ok is ok, salt


def test_ecdsa_components_longer_than_the_curve_are_invalid(ecc_ak: SoftAk) -> None:
    attest = make_quote()
    sig = ecc_ak.sign(attest.marshal())
    assert isinstance(sig, EcdsaSignature)
    padded = EcdsaSignature(sig.hash, b"\0" + sig.r, sig.s)
    assert codes(check(ecc_ak, attest, padded)) == {Reason.QUOTE_SIGNATURE_INVALID}


def test_sha1_is_refused_unless_allowed() -> None:
    ak = SoftAk("rsa", Alg.RSASSA, Alg.SHA1)
    values = PcrValues({"sha1": dict.fromkeys(range(8), bytes(20))})
    attest = make_quote(selection="sha1:0-7", values=values, digest_hash=Alg.SHA1)
    args: dict[str, Any] = {"selection": PcrSelection.parse("sha1:0-7"), "pcr_values": values}
    assert codes(check(ak, attest, **args)) == {Reason.QUOTE_SHA1_NOT_ALLOWED}
    assert check(ak, attest, allow_sha1=True, **args).ok


def test_sha1_bank_under_a_sha256_signature_is_refused_unless_allowed(ecc_ak: SoftAk) -> None:
    values = PcrValues({"sha1": {0: bytes(20)}, "sha256": {0: bytes(32)}})
    attest = make_quote(selection="sha1:0+sha256:0", values=values)
    args: dict[str, Any] = {"selection": PcrSelection.parse("sha1:0+sha256:0"), "pcr_values": values}
    assert codes(check(ecc_ak, attest, **args)) == {Reason.QUOTE_SHA1_NOT_ALLOWED}
    assert check(ecc_ak, attest, allow_sha1=True, **args).ok


def test_only_the_signed_pcrs_are_trusted(ecc_ak: SoftAk) -> None:
    extra = PcrValues({"sha256": {**ZEROS["sha256"], 10: b"\x0a" * 32}, "sha1": {0: bytes(20)}})
    result = check(ecc_ak, make_quote(), pcr_values=extra)
    assert result.ok
    assert result.pcrs == ZEROS


def test_every_independent_failure_is_reported_together(ecc_ak: SoftAk) -> None:
    attest = make_quote(magic=0, nonce=b"old", selection="sha256:0-6", values=ZEROS)
    result = check(ecc_ak, attest, pcr_values=PcrValues({"sha256": dict.fromkeys(range(7), b"\x01" * 32)}))
    assert codes(result) == {
        Reason.QUOTE_BAD_MAGIC,
        Reason.QUOTE_NONCE_MISMATCH,
        Reason.QUOTE_PCR_SELECTION_MISMATCH,
        Reason.PCR_DIGEST_MISMATCH,
    }
    with pytest.raises(VerificationError) as e:
        result.raise_for_failure()
    assert e.value.code is Reason.QUOTE_BAD_MAGIC


# --- the AK -------------------------------------------------------------------------------


def test_pem_ak_verifies_without_a_public_area() -> None:
    key = load_ak(SWTPM_AK).key
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    ak = load_ak(pem)
    assert ak.public is None
    assert ak.name is None
    assert swtpm(ak=ak).ok


def test_pem_ak_refuses_a_scheme_of_the_other_key_type(rsa_ak: SoftAk) -> None:
    pem = rsa_ak.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert codes(swtpm(ak=load_ak(pem))) == {Reason.QUOTE_SIGNATURE_SCHEME_MISMATCH}


def test_pem_of_an_unsupported_key_is_malformed() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ParseError) as e:
        load_ak(pem)
    assert e.value.code is Reason.AK_MALFORMED
    with pytest.raises(ParseError):
        load_ak(b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")


@pytest.mark.parametrize(
    ("drop", "add"),
    [
        (ObjectAttr.RESTRICTED, 0),
        (ObjectAttr.SIGN_ENCRYPT, 0),
        (ObjectAttr.FIXED_TPM, 0),
        (ObjectAttr.FIXED_PARENT, 0),
        (ObjectAttr.SENSITIVE_DATA_ORIGIN, 0),
        (ObjectAttr.USER_WITH_AUTH, 0),
        (0, ObjectAttr.DECRYPT),
    ],
)
def test_ak_attributes_are_checked(ecc_ak: SoftAk, drop: int, add: int) -> None:
    bad = replace(ecc_ak.public, attributes=(ecc_ak.public.attributes & ~drop) | add)
    with pytest.raises(VerificationError) as e:
        check_ak_attributes(bad)
    assert e.value.code is Reason.AK_ATTRIBUTES_INVALID
    # and a quote under such a key is refused even though its signature is fine
    attest = make_quote()
    msg = attest.marshal()
    result = verify_quote(
        AkPublic(ecc_ak.ec.public_key(), bad),
        msg,
        ecc_ak.sign(msg).marshal(),
        nonce=b"nonce-0123456789",
        selection=EIGHT,
        pcr_values=ZEROS,
    )
    assert codes(result) == {Reason.AK_ATTRIBUTES_INVALID}


def test_ak_scheme_and_size_are_checked(ecc_ak: SoftAk, rsa_ak: SoftAk) -> None:
    assert isinstance(ecc_ak.public.detail, EccDetail)
    assert isinstance(rsa_ak.public.detail, RsaDetail)
    check_ak_attributes(ecc_ak.public)
    check_ak_attributes(rsa_ak.public)
    for bad in (
        replace(ecc_ak.public, detail=replace(ecc_ak.public.detail, scheme=Scheme())),
        replace(ecc_ak.public, detail=replace(ecc_ak.public.detail, scheme=Scheme(Alg.ECDAA, Alg.SHA256, 1))),
        replace(rsa_ak.public, detail=replace(rsa_ak.public.detail, scheme=Scheme(Alg.OAEP, Alg.SHA256))),
        replace(rsa_ak.public, detail=replace(rsa_ak.public.detail, key_bits=1024, modulus=bytes(128))),
        replace(ecc_ak.public, detail=replace(ecc_ak.public.detail, scheme=Scheme(Alg.ECDSA, Alg.SM3_256))),
    ):
        with pytest.raises(VerificationError) as e:
            check_ak_attributes(bad)
        assert e.value.code is Reason.AK_ATTRIBUTES_INVALID


def test_an_ak_that_is_not_on_its_curve_is_malformed(ecc_ak: SoftAk) -> None:
    assert isinstance(ecc_ak.public.detail, EccDetail)
    off = replace(ecc_ak.public, detail=replace(ecc_ak.public.detail, y=bytes(31) + b"\x07"))
    with pytest.raises(ParseError) as e:
        load_ak(off.marshal_tpm2b())
    assert e.value.code is Reason.AK_MALFORMED


# --- every single-byte change is refused ---------------------------------------------------


def refused(quote: bytes, sig: bytes) -> bool:
    try:
        return not swtpm(quote=quote, sig=sig).ok
    except ParseError:
        return True


@settings(max_examples=400)
@given(st.integers(0, len(SWTPM_QUOTE) - 1), st.integers(1, 255))
def test_no_edit_of_the_quote_verifies(at: int, xor: int) -> None:
    assert refused(bytes(b ^ xor if i == at else b for i, b in enumerate(SWTPM_QUOTE)), SWTPM_SIG)


@settings(max_examples=300)
@given(st.integers(0, len(SWTPM_SIG) - 1), st.integers(1, 255))
def test_no_edit_of_the_signature_verifies(at: int, xor: int) -> None:
    assert refused(SWTPM_QUOTE, bytes(b ^ xor if i == at else b for i, b in enumerate(SWTPM_SIG)))


# --- clock and firmware ---------------------------------------------------------------------


def clock(ms: int, resets: int = 5, restarts: int = 0, safe: bool = True) -> ClockInfo:
    return ClockInfo(ms, resets, restarts, safe)


def test_clock_running_forward_in_one_boot_is_fine() -> None:
    change = compare_clock(clock(1000), clock(61000))
    assert (change.reboot, change.restart, change.failures) == (False, False, ())


def test_clock_going_back_within_a_boot_is_a_rollback() -> None:
    assert [f.code for f in compare_clock(clock(61000), clock(1000)).failures] == [
        Reason.QUOTE_CLOCK_ROLLBACK
    ]
    resumed = compare_clock(clock(61000), clock(1000, restarts=1))
    assert [f.code for f in resumed.failures] == [Reason.QUOTE_CLOCK_ROLLBACK]


def test_reboot_is_detected() -> None:
    change = compare_clock(clock(61000), clock(90000, resets=6))
    assert change.reboot
    assert not change.failures


def test_clock_back_after_a_reboot_needs_the_tpm_to_admit_it() -> None:
    unorderly = compare_clock(clock(61000), clock(50000, resets=6, safe=False))
    assert unorderly.reboot
    assert not unorderly.failures
    claimed_safe = compare_clock(clock(61000), clock(50000, resets=6, safe=True))
    assert [f.code for f in claimed_safe.failures] == [Reason.QUOTE_CLOCK_ROLLBACK]


def test_clock_behind_after_several_reboots_is_not_a_rollback() -> None:
    # Killed (unorderly: the clock restarts from its last saved value, safe = NO), then shut down
    # cleanly and started again before the node attested: the second boot says safe = YES while
    # the clock still lags the value the verifier saw. Seen with swtpm in bench.soak.
    change = compare_clock(clock(61000), clock(50000, resets=7, safe=True))
    assert change.reboot
    assert not change.failures


def test_counters_going_back_are_rollbacks() -> None:
    assert [f.code for f in compare_clock(clock(1000, resets=5), clock(2000, resets=4)).failures] == [
        Reason.QUOTE_CLOCK_ROLLBACK
    ]
    back = compare_clock(clock(1000, restarts=3), clock(2000, restarts=2))
    assert [f.code for f in back.failures] == [Reason.QUOTE_CLOCK_ROLLBACK]


def test_resume_is_a_restart_not_a_reboot() -> None:
    change = compare_clock(clock(1000, restarts=1), clock(2000, restarts=2))
    assert (change.reboot, change.restart, change.failures) == (False, True, ())


def test_obfuscated_counters_order_across_the_wrap() -> None:
    """An AK outside the endorsement hierarchy sees counters offset by a constant, so the
    next reboot may wrap resetCount past 2**32."""
    change = compare_clock(clock(1000, resets=0xFFFFFFFF), clock(2000, resets=0))
    assert change.reboot
    assert not change.failures
    assert compare_clock(clock(1000, resets=0), clock(2000, resets=0xFFFFFFFF)).failures


def test_firmware_changes_are_reported_and_rollbacks_refused() -> None:
    up = compare_clock(clock(1000), clock(2000, resets=6), previous_firmware=0x10, current_firmware=0x11)
    assert up.firmware_changed
    assert not up.failures
    down = compare_clock(clock(1000), clock(2000, resets=6), previous_firmware=0x11, current_firmware=0x10)
    assert [f.code for f in down.failures] == [Reason.QUOTE_FIRMWARE_ROLLBACK]
    same = compare_clock(clock(1000), clock(2000), previous_firmware=0x11, current_firmware=0x11)
    assert not same.firmware_changed


def test_quote_result_carries_the_signed_clock(ecc_ak: SoftAk) -> None:
    result = check(ecc_ak, make_quote(clock_info=clock(777, resets=9), firmware_version=42))
    assert result.clock_info == clock(777, resets=9)
    assert result.firmware_version == 42
