"""PCR values and the PCR files tpm2-tools writes (real files from swtpm are checked in
test_quote_swtpm.py)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attest.errors import ParseError
from attest.pcrselect import PcrSelection
from attest.reasons import Reason
from attest.tcg import hash_alg
from attest.verify.pcrs import (
    PcrValues,
    load_pcr_file,
    parse_pcrread_yaml,
    parse_tools_serialized,
    parse_tools_values,
    serialize_tools,
)


def values_for(selection: PcrSelection) -> PcrValues:
    """Distinct, recognisable values: byte i of bank b's PCR p is p."""
    return PcrValues(
        {bank: {p: bytes([p]) * hash_alg(bank).size for p in pcrs} for bank, pcrs in selection.banks}
    )


def serialized(selection: PcrSelection, values: PcrValues) -> bytes:
    """The writer of tpm2-tools' serialized PCR file (the agent's, for tpm2_checkquote); real
    tpm2_quote output is checked against the parser in test_quote_swtpm."""
    return serialize_tools(selection, values)


# --- PcrValues ----------------------------------------------------------------------------


def test_values_are_checked_on_construction() -> None:
    for bad, message in (
        ({"sha256": {0: bytes(20)}}, "is 20 bytes, not 32"),
        ({"md5": {0: bytes(16)}}, "unknown PCR bank"),
        ({"sha1": {24: bytes(20)}}, "index 24 out of range"),
        ({"sha1": {-1: bytes(20)}}, "index -1 out of range"),
    ):
        with pytest.raises(ParseError, match=message) as e:
            PcrValues(bad)
        assert e.value.code is Reason.PCR_VALUES_MALFORMED
    with pytest.raises(ParseError, match="given twice"):
        PcrValues({"sha1": {}, "SHA1": {}})


def test_banks_by_id_or_name_are_the_same_values() -> None:
    assert PcrValues({0x000B: {1: bytes(32)}}) == PcrValues({"SHA256": {1: bytes(32)}})
    assert PcrValues({"sha256": {1: bytes(32)}}).to_json() == {"sha256": {"1": "00" * 32}}


def test_values_are_immutable() -> None:
    v = PcrValues({"sha256": {1: bytes(32)}})
    with pytest.raises(TypeError):
        v["sha256"][2] = bytes(32)  # type: ignore[index]


def test_digest_is_over_the_selection_in_order() -> None:
    sel = PcrSelection.parse("sha256:3,1+sha1:0")
    v = values_for(PcrSelection.parse("sha256:0-7+sha1:0-7"))
    expected = hash_alg("sha384").digest(b"\x01" * 32 + b"\x03" * 32 + bytes(20))
    assert v.digest(sel, hash_alg("sha384")) == expected
    assert v.restrict(sel) == PcrValues(
        {"sha256": {1: b"\x01" * 32, 3: b"\x03" * 32}, "sha1": {0: bytes(20)}}
    )


def test_missing_value_is_malformed() -> None:
    with pytest.raises(ParseError, match="no value for sha256 PCR 9") as e:
        values_for(PcrSelection.parse("sha256:0-7")).digest(
            PcrSelection.parse("sha256:9"), hash_alg("sha256")
        )
    assert e.value.code is Reason.PCR_VALUES_MALFORMED


# --- tpm2-tools serialized ------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["sha256:0-7", "sha1:0,2,23", "sha256:0-23+sha1:0-23+sha384:1", "sha384:16"])
def test_serialized_file_round_trips_with_the_agents_writer(spec: str) -> None:
    sel = PcrSelection.parse(spec)
    data = serialized(sel, values_for(sel))
    assert parse_tools_serialized(data) == values_for(sel)
    assert load_pcr_file(data) == values_for(sel)


def test_serialized_layout_is_what_tpm2_tools_writes() -> None:
    """The size tpm2_quote -o gives for eight sha256 PCRs: 132 + 4 + 532."""
    data = serialized(PcrSelection.parse("sha256:0-7"), values_for(PcrSelection.parse("sha256:0-7")))
    assert len(data) == 668
    assert data[:8] == bytes.fromhex("010000000b0003ff")


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ((0, struct.pack("<I", 0)), "selection count 0"),
        ((0, struct.pack("<I", 17)), "selection count 17"),
        ((4, struct.pack("<H", 0x99)), "unknown bank"),
        ((6, b"\x05"), "sizeofSelect 5"),
        ((6, b"\x04\xff\x00\x00\x01"), "PCR 24 selected"),
        ((132, struct.pack("<I", 2)), "digest lists"),
        ((136, struct.pack("<I", 9)), "digest list count 9"),
        ((140, struct.pack("<H", 65)), "digest size 65"),
        ((136, struct.pack("<I", 7)), "7 digests for 8 selected"),
    ],
)
def test_serialized_file_damage_is_refused(patch: tuple[int, bytes], message: str) -> None:
    data = bytearray(
        serialized(PcrSelection.parse("sha256:0-7"), values_for(PcrSelection.parse("sha256:0-7")))
    )
    at, new = patch
    data[at : at + len(new)] = new
    with pytest.raises(ParseError, match=message):
        parse_tools_serialized(bytes(data))


def test_serialized_digest_of_the_wrong_size_is_refused() -> None:
    data = bytearray(serialized(PcrSelection.parse("sha256:0"), values_for(PcrSelection.parse("sha256:0"))))
    data[140:142] = struct.pack("<H", 20)
    with pytest.raises(ParseError, match="is 20 bytes, not 32"):
        parse_tools_serialized(bytes(data))


# --- values and YAML ---------------------------------------------------------------------


def test_values_file_needs_its_selection() -> None:
    sel = PcrSelection.parse("sha1:0,1+sha256:0,1,16")
    data = b"".join(values_for(sel).ordered(sel))
    assert len(data) == 136
    assert parse_tools_values(data, sel) == values_for(sel)
    assert load_pcr_file(data, sel) == values_for(sel)
    with pytest.raises(ParseError, match="selection"):
        parse_tools_values(data[:-1], sel)
    with pytest.raises(ParseError):
        load_pcr_file(data)


# Verbatim tpm2_pcrread (tpm2-tools 5.4) output.
PCRREAD = """\
  sha1:
    0 : 0x0000000000000000000000000000000000000000
    1 : 0x0000000000000000000000000000000000000000
  sha256:
    0 : 0x9EF814B42FA0BE12D197C44D3E8E03441A4B1118237658368BA1351090E556ED
    1 : 0x0000000000000000000000000000000000000000000000000000000000000000
    16: 0x0000000000000000000000000000000000000000000000000000000000000000
"""


def test_pcrread_yaml_keeps_leading_zero_bytes() -> None:
    v = parse_pcrread_yaml(PCRREAD)
    assert v["sha1"][0] == bytes(20)
    assert v["sha256"][0].hex() == "9ef814b42fa0be12d197c44d3e8e03441a4b1118237658368ba1351090e556ed"
    assert sorted(v["sha256"]) == [0, 1, 16]
    assert load_pcr_file(PCRREAD.encode()) == v


def test_tpm2_quote_yaml_output_is_read_from_its_pcrs_key() -> None:
    text = "quoted: ff54\nsignature:\n  alg: ecdsa\npcrs:\n" + "\n".join(
        "  " + line for line in PCRREAD.splitlines()
    )
    assert parse_pcrread_yaml(text) == parse_pcrread_yaml(PCRREAD)


@pytest.mark.parametrize(
    "text",
    [
        "sha256:\n  0 : 9EF8\n",  # no 0x
        "sha256:\n  0 : 0x9EF\n",  # odd digits
        "sha256:\n  x : 0x00\n",
        "sha256:\n  - 0x00\n",
        "sha256: 0x00\n",
        "- sha256\n",
        "",
        "sha256:\n  0 : 0x00\n",  # wrong size
        "md5:\n  0 : 0x00000000000000000000000000000000\n",
        "sha256: [\n",
    ],
)
def test_bad_yaml_is_malformed(text: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_pcrread_yaml(text)
    assert e.value.code is Reason.PCR_VALUES_MALFORMED


def test_oversized_files_are_refused_before_parsing() -> None:
    with pytest.raises(ParseError, match="larger than"):
        load_pcr_file(b"#" * (64 * 1024 + 1))
    with pytest.raises(ParseError, match="larger than"):
        parse_pcrread_yaml("#" * (64 * 1024 + 1))


@given(st.binary(max_size=800))
def test_any_bytes_load_or_fail_with_pcr_values_malformed(data: bytes) -> None:
    try:
        load_pcr_file(data, PcrSelection.parse("sha256:0-7"))
    except ParseError as e:
        assert e.code is Reason.PCR_VALUES_MALFORMED  # noqa: PT017
