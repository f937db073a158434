"""The TPM 2.0 structure codec: real structures round-trip, malformed ones fail with the
caller's reason code, and no input makes a parser fail any other way."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import ParseError
from attest.reasons import Reason
from attest.tcg import TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE, Alg
from attest.verify.tpmstructs import (
    Attest,
    ClockInfo,
    EccDetail,
    EcdsaSignature,
    ObjectAttr,
    QuoteInfo,
    RsaDetail,
    RsaSignature,
    Scheme,
    SymDef,
    TpmlPcrSelection,
    TpmsPcrSelection,
    TpmtPublic,
    parse_attest,
    parse_public,
    parse_signature,
    parse_tpmt_public,
    tpm2b,
)
from tests.recorded_gcp import gcp
from tests.recorded_swtpm import SWTPM_AK, SWTPM_QUOTE, SWTPM_SIG


def b64(s: str) -> bytes:
    return base64.b64decode(s)


# --- real structures ----------------------------------------------------------------------


def test_swtpm_quote_parses_and_round_trips() -> None:
    a = parse_attest(SWTPM_QUOTE)
    assert a.magic == TPM_GENERATED_VALUE
    assert a.type == TPM_ST_ATTEST_QUOTE
    assert a.extra_data == bytes.fromhex("0102030405060708")
    assert a.clock_info == ClockInfo(clock=0x8801, reset_count=2, restart_count=0, safe=True)
    assert isinstance(a.attested, QuoteInfo)
    assert a.attested.pcr_select.as_banks() == (("sha256", tuple(range(8))),)
    assert len(a.attested.pcr_digest) == 32
    assert a.marshal() == SWTPM_QUOTE


def test_swtpm_ecdsa_signature_parses_and_round_trips() -> None:
    s = parse_signature(SWTPM_SIG)
    assert isinstance(s, EcdsaSignature)
    assert (s.scheme, s.hash, len(s.r), len(s.s)) == (Alg.ECDSA, Alg.SHA256, 32, 32)
    assert s.marshal() == SWTPM_SIG


def test_swtpm_ecc_ak_parses_and_round_trips() -> None:
    p = parse_public(SWTPM_AK)
    assert isinstance(p.detail, EccDetail)
    assert p.detail.scheme == Scheme(Alg.ECDSA, Alg.SHA256)
    assert p.detail.symmetric == SymDef()
    assert p.has(ObjectAttr.RESTRICTED | ObjectAttr.SIGN_ENCRYPT | ObjectAttr.FIXED_TPM)
    assert p.marshal_tpm2b() == SWTPM_AK
    assert parse_tpmt_public(SWTPM_AK[2:]) == p


def test_gcp_structures_round_trip() -> None:
    doc = gcp()
    ak = b64(doc["AK"]["Public"])
    pub = parse_tpmt_public(ak)
    assert isinstance(pub.detail, RsaDetail)
    assert (pub.detail.scheme, pub.detail.key_bits, pub.detail.exponent) == (
        Scheme(Alg.RSASSA, Alg.SHA1),
        2048,
        0,
    )
    assert pub.marshal() == ak
    quote = b64(doc["Quote"]["Quote"])
    assert parse_attest(quote).marshal() == quote
    sig = b64(doc["Quote"]["Signature"])
    parsed = parse_signature(sig)
    assert isinstance(parsed, RsaSignature)
    assert parsed.marshal() == sig
    # A TPM2_CertifyCreation structure: another type, body kept as it is.
    creation = parse_attest(b64(doc["AK"]["CreateAttestation"]))
    assert creation.type == 0x801A
    assert creation.marshal() == b64(doc["AK"]["CreateAttestation"])


def test_name_of_the_gcp_ak_is_the_one_its_tpm_certified() -> None:
    """TPMS_CREATION_INFO (signed by that TPM) starts with the object's Name: a hardware
    cross-check of the Name computation."""
    doc = gcp()
    body = parse_attest(b64(doc["AK"]["CreateAttestation"])).attested
    assert isinstance(body, bytes)
    (size,) = struct.unpack(">H", body[:2])
    assert parse_tpmt_public(b64(doc["AK"]["Public"])).name() == body[2 : 2 + size]


# --- strictness ---------------------------------------------------------------------------


def test_trailing_bytes_are_refused_with_each_structures_code() -> None:
    with pytest.raises(ParseError) as e:
        parse_attest(SWTPM_QUOTE + b"\0")
    assert e.value.code is Reason.QUOTE_MALFORMED
    with pytest.raises(ParseError) as e:
        parse_signature(SWTPM_SIG + b"\0")
    assert e.value.code is Reason.QUOTE_SIGNATURE_MALFORMED
    with pytest.raises(ParseError) as e:
        parse_public(SWTPM_AK + b"\0")
    assert e.value.code is Reason.AK_MALFORMED
    with pytest.raises(ParseError) as e:
        parse_public(SWTPM_AK + b"\0", Reason.EK_MALFORMED)
    assert e.value.code is Reason.EK_MALFORMED


@pytest.mark.parametrize("cut", [1, 10, 40, len(SWTPM_QUOTE) - 1])
def test_truncated_quote_is_malformed(cut: int) -> None:
    with pytest.raises(ParseError) as e:
        parse_attest(SWTPM_QUOTE[:cut])
    assert e.value.code is Reason.QUOTE_MALFORMED


def _quote(**changes: Any) -> Attest:
    base = parse_attest(SWTPM_QUOTE)
    return Attest(**{**base.__dict__, **changes})


def test_oversized_tpm2b_fields_are_refused() -> None:
    too_long = _quote(extra_data=bytes(67)).marshal()
    with pytest.raises(ParseError, match="extraData size 67 exceeds 66"):
        parse_attest(too_long)
    body = QuoteInfo(parse_attest(SWTPM_QUOTE).attested.pcr_select, bytes(65))  # type: ignore[union-attr]
    with pytest.raises(ParseError, match="pcrDigest size 65 exceeds 64"):
        parse_attest(_quote(attested=body).marshal())


def test_clock_safe_must_be_yes_or_no() -> None:
    raw = bytearray(SWTPM_QUOTE)
    safe_at = 6 + 2 + 34 + 2 + 8 + 8 + 4 + 4
    assert raw[safe_at] == 1
    raw[safe_at] = 2
    with pytest.raises(ParseError, match="TPMI_YES_NO"):
        parse_attest(bytes(raw))


def _selection_bytes(entries: list[tuple[int, bytes]]) -> bytes:
    return struct.pack(">I", len(entries)) + b"".join(
        struct.pack(">HB", alg, len(bitmap)) + bitmap for alg, bitmap in entries
    )


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([(Alg.SHA256, b"\xff\xff")], "sizeofSelect 2"),
        ([(Alg.SHA256, b"\xff\xff\xff\x00\x00")], "sizeofSelect 5"),
        ([(Alg.SHA256, b"\x00\x00\x00\x01")], "PCR 24 selected"),
        ([(0x0027, b"\xff\x00\x00")], "not a supported hash"),
        ([(Alg.NULL, b"\xff\x00\x00")], "not a supported hash"),
    ],
)
def test_pcr_selection_limits(entries: list[tuple[int, bytes]], message: str) -> None:
    head = SWTPM_QUOTE[: SWTPM_QUOTE.index(bytes.fromhex("00000001000b03ff"))]
    with pytest.raises(ParseError, match=message):
        parse_attest(head + _selection_bytes(entries) + tpm2b(bytes(32)))


def test_too_many_banks_is_refused() -> None:
    head = SWTPM_QUOTE[: SWTPM_QUOTE.index(bytes.fromhex("00000001000b03ff"))]
    with pytest.raises(ParseError, match="count 17 exceeds 16"):
        parse_attest(head + struct.pack(">I", 17) + bytes(200))


def test_selection_with_four_byte_bitmap_round_trips_and_equals_the_three_byte_one() -> None:
    four = TpmsPcrSelection(Alg.SHA256, (0, 7, 23), 4)
    assert four == TpmsPcrSelection(Alg.SHA256, (0, 7, 23), 3)
    sel = TpmlPcrSelection((four,))
    q = _quote(attested=QuoteInfo(sel, bytes(32))).marshal()
    assert parse_attest(q).marshal() == q


@pytest.mark.parametrize(
    "sig",
    [
        struct.pack(">HH", Alg.HMAC, Alg.SHA256) + bytes(32),  # TPM_ALG_HMAC: not an AK signature
        struct.pack(">HH", Alg.ECDAA, Alg.SHA256) + tpm2b(bytes(32)) + tpm2b(bytes(32)),
        struct.pack(">H", Alg.NULL),
        struct.pack(">HH", Alg.RSASSA, Alg.NULL) + tpm2b(bytes(256)),
        struct.pack(">HH", Alg.RSASSA, Alg.SHA256) + tpm2b(bytes(513)),
        struct.pack(">HH", Alg.ECDSA, Alg.SHA256) + tpm2b(bytes(67)) + tpm2b(bytes(32)),
        b"\x00",
    ],
)
def test_unsupported_or_oversized_signatures_are_malformed(sig: bytes) -> None:
    with pytest.raises(ParseError) as e:
        parse_signature(sig)
    assert e.value.code is Reason.QUOTE_SIGNATURE_MALFORMED


def _ak(**changes: Any) -> TpmtPublic:
    return TpmtPublic(**{**parse_public(SWTPM_AK).__dict__, **changes})


def test_public_area_strictness() -> None:
    with pytest.raises(ParseError, match="reserved objectAttributes"):
        parse_public(_ak(attributes=0x50072 | 0x1).marshal_tpm2b())
    with pytest.raises(ParseError, match="authPolicy is 20 bytes"):
        parse_public(_ak(auth_policy=bytes(20)).marshal_tpm2b())
    with pytest.raises(ParseError, match="size field says"):
        parse_public(SWTPM_AK[:1] + bytes([SWTPM_AK[1] + 1]) + SWTPM_AK[2:])
    ecc = parse_public(SWTPM_AK).detail
    assert isinstance(ecc, EccDetail)
    with pytest.raises(ParseError, match=r"unique\.x size 33 exceeds 32"):
        parse_public(_ak(detail=EccDetail(**{**ecc.__dict__, "x": bytes(33)})).marshal_tpm2b())
    with pytest.raises(ParseError, match="unsupported curve"):
        parse_public(_ak(detail=EccDetail(**{**ecc.__dict__, "curve": 0x0010})).marshal_tpm2b())
    with pytest.raises(ParseError, match="unsupported key type"):
        parse_public(tpm2b(struct.pack(">HH", Alg.KEYEDHASH, Alg.SHA256) + bytes(10)))
    rsa = RsaDetail(SymDef(), Scheme(Alg.RSASSA, Alg.SHA256), 2048, 0, bytes(255))
    with pytest.raises(ParseError, match="modulus is 255 bytes"):
        parse_public(_ak(detail=rsa).marshal_tpm2b())


def test_ecc_point_off_the_curve_is_not_a_key() -> None:
    ecc = parse_public(SWTPM_AK).detail
    assert isinstance(ecc, EccDetail)
    bad = _ak(detail=EccDetail(**{**ecc.__dict__, "y": bytes(31) + b"\x01"}))
    with pytest.raises(ValueError, match=r"(?i)invalid|not on the curve"):
        bad.public_key()


# --- properties ---------------------------------------------------------------------------

hash_ids = st.sampled_from([Alg.SHA1, Alg.SHA256, Alg.SHA384, Alg.SHA512])
digests = st.binary(max_size=64)
selections = st.lists(
    st.builds(
        TpmsPcrSelection,
        hash_ids,
        st.lists(st.integers(0, 23), unique=True).map(lambda x: tuple(sorted(x))),
        st.sampled_from([3, 4]),
    ),
    max_size=16,
).map(lambda banks: TpmlPcrSelection(tuple(banks)))
clocks = st.builds(
    ClockInfo, st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.booleans()
)
attests = st.builds(
    Attest,
    st.integers(0, 2**32 - 1),
    st.just(TPM_ST_ATTEST_QUOTE),
    st.binary(max_size=66),
    st.binary(max_size=66),
    clocks,
    st.integers(0, 2**64 - 1),
    st.builds(QuoteInfo, selections, digests),
)
signatures = st.one_of(
    st.builds(RsaSignature, st.sampled_from([Alg.RSASSA, Alg.RSAPSS]), hash_ids, st.binary(max_size=512)),
    st.builds(EcdsaSignature, hash_ids, st.binary(max_size=66), st.binary(max_size=66)),
)
schemes_rsa = st.one_of(
    st.just(Scheme()),
    st.just(Scheme(Alg.RSAES)),
    st.builds(Scheme, st.sampled_from([Alg.RSASSA, Alg.RSAPSS, Alg.OAEP]), hash_ids),
)
schemes_ecc = st.one_of(
    st.just(Scheme()),
    st.builds(Scheme, st.sampled_from([Alg.ECDSA, Alg.ECDH, Alg.ECSCHNORR]), hash_ids),
    st.builds(Scheme, st.just(Alg.ECDAA), hash_ids, st.integers(0, 0xFFFF)),
)
symdefs = st.one_of(
    st.just(SymDef()), st.builds(SymDef, st.just(Alg.AES), st.sampled_from([128, 256]), st.just(Alg.CFB))
)
rsa_details = st.integers(128, 512).flatmap(
    lambda n: st.builds(
        RsaDetail,
        symdefs,
        schemes_rsa,
        st.just(8 * n),
        st.integers(0, 2**32 - 1),
        st.binary(min_size=n, max_size=n),
    )
)
ecc_details = st.sampled_from([(3, 32), (4, 48), (5, 66)]).flatmap(
    lambda c: st.builds(
        EccDetail,
        symdefs,
        schemes_ecc,
        st.just(c[0]),
        st.one_of(st.just(Scheme()), st.builds(Scheme, st.just(Alg.KDF1_SP800_108), hash_ids)),
        st.binary(max_size=c[1]),
        st.binary(max_size=c[1]),
    )
)
publics = hash_ids.flatmap(
    lambda h: st.builds(
        TpmtPublic,
        st.just(h),
        st.sampled_from([0, 0x50072, 0x300B2, 0xFFFFF & ~0xF309]),
        st.sampled_from([b"", bytes({Alg.SHA1: 20, Alg.SHA256: 32, Alg.SHA384: 48, Alg.SHA512: 64}[h])]),
        st.one_of(rsa_details, ecc_details),
    )
)


@given(attests)
def test_attest_round_trips(a: Attest) -> None:
    assert parse_attest(a.marshal()) == a


@given(signatures)
def test_signature_round_trips(s: RsaSignature | EcdsaSignature) -> None:
    assert parse_signature(s.marshal()) == s


@given(publics)
def test_public_round_trips(p: TpmtPublic) -> None:
    assert parse_public(p.marshal_tpm2b()) == p


def _failure(parse: Callable[[bytes], object], data: bytes) -> Reason | None:
    """The reason a parse failed, None if it succeeded; anything but ParseError propagates."""
    try:
        parse(data)
    except ParseError as e:
        return e.code
    return None


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_garbage_fails_only_with_parse_errors(data: bytes) -> None:
    assert _failure(parse_attest, data) in (None, Reason.QUOTE_MALFORMED)
    assert _failure(parse_signature, data) in (None, Reason.QUOTE_SIGNATURE_MALFORMED)
    assert _failure(parse_public, data) in (None, Reason.AK_MALFORMED)


@settings(max_examples=300)
@given(st.integers(0, len(SWTPM_QUOTE) - 1), st.integers(1, 255))
def test_mutated_quotes_parse_to_what_they_say_or_fail_cleanly(at: int, xor: int) -> None:
    raw = bytes(a ^ xor if i == at else a for i, a in enumerate(SWTPM_QUOTE))
    failure = _failure(parse_attest, raw)
    assert failure in (None, Reason.QUOTE_MALFORMED)
    if failure is None:
        assert parse_attest(raw).marshal() == raw
