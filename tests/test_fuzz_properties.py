"""Property tests (issue 7): the PCR file formats round-trip, and replay is the fold it claims to
be, for event logs and IMA lists, whatever the events. (TPMS_ATTEST, TPMT_SIGNATURE and
TPM2B_PUBLIC round trips: tests/test_tpmstructs.py.)"""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from attest.pcrselect import PcrSelection
from attest.tcg import EventType, hash_alg, pcr_reset_value
from attest.verify import eventlog, ima
from attest.verify.pcrs import (
    PcrValues,
    load_pcr_file,
    parse_pcrread_yaml,
    parse_tools_serialized,
    parse_tools_values,
    serialize_tools,
)
from tests.test_eventlog import agile_event, spec_id_event

BANKS = ("sha1", "sha256", "sha384", "sha512")

# --- PCR files ---------------------------------------------------------------------------------


@st.composite
def pcr_values(draw: st.DrawFn) -> tuple[PcrSelection, PcrValues]:
    banks = draw(st.lists(st.sampled_from(BANKS), min_size=1, max_size=4, unique=True))
    chosen = {b: draw(st.sets(st.integers(0, 23), min_size=1, max_size=24)) for b in banks}
    selection = PcrSelection.of(chosen)
    size = {b: hash_alg(b).size for b in banks}
    values = {b: {p: draw(st.binary(min_size=size[b], max_size=size[b])) for p in chosen[b]} for b in banks}
    return selection, PcrValues(values)


def pcrread_yaml(values: PcrValues) -> str:
    """What ``tpm2_pcrread`` prints."""
    return "".join(
        f"{bank}:\n" + "".join(f"  {p:<2}: 0x{v.hex().upper()}\n" for p, v in sorted(pcrs.items()))
        for bank, pcrs in values.items()
    )


@settings(max_examples=150, deadline=None)
@given(pcr_values())
def test_pcr_files_round_trip_in_every_format(sv: tuple[PcrSelection, PcrValues]) -> None:
    selection, values = sv
    serialized = serialize_tools(selection, values)
    assert parse_tools_serialized(serialized) == values
    assert load_pcr_file(serialized) == values
    as_values_file = b"".join(values[bank][p] for bank, p in selection)
    assert parse_tools_values(as_values_file, selection) == values
    assert parse_pcrread_yaml(pcrread_yaml(values)) == values
    assert load_pcr_file(pcrread_yaml(values).encode()) == values


# --- event log replay ----------------------------------------------------------------------------

SHA1, SHA256 = 0x0004, 0x000B
events = st.lists(st.tuples(st.integers(0, 23), st.binary(min_size=0, max_size=40)), min_size=1, max_size=12)


def log_of(evs: list[tuple[int, bytes]]) -> bytes:
    return spec_id_event() + b"".join(agile_event(pcr, EventType.EV_IPL, data) for pcr, data in evs)


def replayed(raw: bytes) -> dict[str, dict[int, bytes]]:
    return {bank: dict(v) for bank, v in eventlog.replay(eventlog.parse(raw)).pcrs.items()}


@settings(max_examples=150, deadline=None)
@given(events, st.integers(0, 23), st.binary(max_size=40))
def test_appending_an_event_extends_its_pcr_by_its_digest(
    evs: list[tuple[int, bytes]], pcr: int, data: bytes
) -> None:
    before = replayed(log_of(evs))
    after = replayed(log_of([*evs, (pcr, data)]))
    for bank in ("sha1", "sha256"):
        h = hash_alg(bank)
        expected = dict(before[bank])
        expected[pcr] = h.digest(before[bank][pcr] + h.digest(data))
        assert after[bank] == expected


@settings(max_examples=150, deadline=None)
@given(events)
def test_replay_is_the_fold_from_the_reset_values(evs: list[tuple[int, bytes]]) -> None:
    values = {pcr: pcr_reset_value(pcr, 32) for pcr in range(24)}
    for pcr, data in evs:
        values[pcr] = hashlib.sha256(values[pcr] + hashlib.sha256(data).digest()).digest()
    assert replayed(log_of(evs))["sha256"] == values


@settings(max_examples=150, deadline=None)
@given(events, st.data())
def test_dropping_or_swapping_events_changes_the_replayed_pcr(
    evs: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    full = replayed(log_of(evs))["sha256"]
    cut = data.draw(st.integers(0, len(evs) - 1))
    pcr = evs[cut][0]
    truncated = replayed(log_of(evs[:cut] + evs[cut + 1 :]))["sha256"]
    assert truncated[pcr] != full[pcr]
    # Two events on one PCR with different data, swapped: extend does not commute.
    same = [i for i, (p, _) in enumerate(evs) if p == pcr and evs[i][1] != evs[cut][1]]
    if same:
        i, j = sorted((cut, same[0]))
        swapped = list(evs)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        assert replayed(log_of(swapped))["sha256"][pcr] != full[pcr]


# --- IMA replay ------------------------------------------------------------------------------------

paths = st.lists(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30))


def ima_list(names: list[str]) -> bytes:
    return b"".join(
        ima.encode_binary_entry(
            "ima-ng",
            ima.encode_template_data("ima-ng", "sha256", hashlib.sha256(n.encode()).digest(), "/" + n),
        )
        for n in names
    )


@settings(max_examples=100, deadline=None)
@given(paths)
def test_ima_pcr_10_is_the_fold_of_the_template_hashes(names: list[str]) -> None:
    log = ima.parse(ima_list(names))
    state = ima.replay(log, ["sha1", "sha256"])
    sha1 = bytes(20)
    sha256 = bytes(32)
    for e in log.entries:
        sha1 = hashlib.sha1(sha1 + e.template_hash).digest()
        sha256 = hashlib.sha256(sha256 + hashlib.sha256(e.template_data).digest()).digest()
    if log.entries:
        assert state.pcrs["sha1"][10] == sha1
        assert state.pcrs["sha256"][10] == sha256


@settings(max_examples=100, deadline=None)
@given(paths, st.data())
def test_ima_replay_in_rounds_is_replay_of_the_whole(names: list[str], data: st.DataObject) -> None:
    whole = ima_list(names)
    cut = data.draw(st.integers(0, len(names)))
    first = ima.parse(ima_list(names[:cut]))
    rest = ima.parse(ima_list(names[cut:]), first_index=cut)
    state = ima.replay(rest, ["sha256"], start=ima.replay(first, ["sha256"]))
    assert state.pcrs == ima.replay(ima.parse(whole), ["sha256"]).pcrs
    assert state.offset == len(names)
