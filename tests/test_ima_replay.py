"""IMA replay against quotes: per-bank extend rules, the longer-than-quote rule, incremental
rounds, boot_aggregate, and the attacks a verifier must catch."""

from __future__ import annotations

import hashlib
import struct

import pytest

from attest.errors import ParseError, VerificationError
from attest.reasons import Reason
from attest.verify import ima

BANK_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
# Stand-in boot PCRs 0-9, as a quote of them would read in each bank.
BOOT_PCRS = {
    bank: {i: hashlib.new(bank, b"boot pcr %d" % i).digest() for i in range(10)} for bank in BANK_SIZES
}


def boot_aggregate(alg: str, indices: range) -> bytes:
    return hashlib.new(alg, b"".join(BOOT_PCRS[alg][i] for i in indices)).digest()


def entry_data(n: int) -> bytes:
    path = f"/usr/bin/tool{n}"
    return ima.encode_template_data("ima-ng", "sha256", hashlib.sha256(path.encode()).digest(), path)


def honest(count: int = 8, agg_alg: str = "sha256") -> list[bytes]:
    """Template data of a list: the boot_aggregate, then `count - 1` files."""
    agg = boot_aggregate(agg_alg, range(8) if agg_alg == "sha1" else range(10))
    first = ima.encode_template_data("ima-ng", agg_alg, agg, ima.BOOT_AGGREGATE)
    return [first] + [entry_data(n) for n in range(1, count)]


def binary(
    datas: list[bytes], *, violations: frozenset[int] = frozenset(), pcrs: dict[int, int] | None = None
) -> bytes:
    out = b""
    for n, data in enumerate(datas):
        th = bytes(20) if n in violations else None
        out += ima.encode_binary_entry("ima-ng", data, pcr=(pcrs or {}).get(n, 10), template_hash_value=th)
    return out


def violation_data(path: str) -> bytes:
    # What the kernel records for a violation: the ima_hash prefix, 20 zero bytes.
    fields = (b"sha256:\0" + bytes(20), path.encode() + b"\0")
    return b"".join(struct.pack("<I", len(f)) + f for f in fields)


def fold(
    datas: list[bytes], bank: str, *, padded: bool = False, violations: frozenset[int] = frozenset()
) -> bytes:
    """PCR 10 after the list, computed here independently of the module."""
    size = BANK_SIZES[bank]
    pcr = bytes(size)
    for n, data in enumerate(datas):
        if bank == "sha1" or padded:
            digest = b"\xff" * 20 if n in violations else hashlib.sha1(data).digest()
            digest += bytes(size - 20)
        else:
            digest = b"\xff" * size if n in violations else hashlib.new(bank, data).digest()
        pcr = hashlib.new(bank, pcr + digest).digest()
    return pcr


def quote(
    datas: list[bytes], banks: tuple[str, ...] = ("sha256",), **kw: object
) -> dict[str, dict[int, bytes]]:
    return {bank: {10: fold(datas, bank, **kw)} for bank in banks}  # type: ignore[arg-type]


# -- replay


def test_replay_extends_each_bank_with_its_own_hash() -> None:
    datas = honest()
    state = ima.replay(ima.parse(binary(datas)))
    assert state.offset == len(datas)
    for bank in BANK_SIZES:
        assert state.pcrs[bank] == {10: fold(datas, bank)}
    assert state.variants == {"sha256": ima.BANK_HASH, "sha384": ima.BANK_HASH, "sha512": ima.BANK_HASH}


def test_replay_with_the_pre_5_8_rule_pads_the_sha1_template_hash() -> None:
    datas = honest()
    state = ima.replay(ima.parse(binary(datas)), variant=ima.PADDED_SHA1)
    for bank in BANK_SIZES:
        assert state.pcrs[bank][10] == fold(datas, bank, padded=True)


def test_violations_extend_with_all_ones() -> None:
    datas = honest()
    datas[3] = violation_data("/tmp/written-while-open")
    log = ima.parse(binary(datas, violations=frozenset({3})))
    assert [e.violation for e in log.entries] == [n == 3 for n in range(len(datas))]
    state = ima.replay(log)
    for bank in BANK_SIZES:
        assert state.pcrs[bank][10] == fold(datas, bank, violations=frozenset({3}))
        padded = ima.replay(log, [bank], variant=ima.PADDED_SHA1).pcrs[bank][10]
        assert padded == fold(datas, bank, padded=True, violations=frozenset({3}))


def test_a_violation_must_not_carry_a_file_digest() -> None:
    # An all-zero template hash binds nothing; a "violation" claiming a real digest is forged.
    datas = honest()
    log = ima.parse(binary(datas, violations=frozenset({2})))
    with pytest.raises(VerificationError) as err:
        ima.replay(log)
    assert err.value.code is Reason.IMA_TEMPLATE_HASH_MISMATCH
    assert err.value.message.startswith("entry 2 (/usr/bin/tool2)")


def test_entries_on_other_pcrs_fold_separately() -> None:
    datas = honest()
    state = ima.replay(ima.parse(binary(datas, pcrs={5: 11})), ["sha256"])
    rest = datas[:5] + datas[6:]
    assert state.pcrs["sha256"] == {10: fold(rest, "sha256"), 11: fold([datas[5]], "sha256")}


# -- the longer-than-quote rule and the attacks


def test_list_matching_the_quote_is_accepted_whole() -> None:
    datas = honest()
    log = ima.parse(binary(datas))
    match = ima.match_quote(log, quote(datas, ("sha1", "sha256", "sha384", "sha512")))
    assert (len(match.accepted), match.pending) == (len(datas), ())
    assert match.state == ima.replay(log)


def test_list_longer_than_the_quote_is_accepted_up_to_the_quote() -> None:
    datas = honest(12)
    log = ima.parse(binary(datas))
    for k in (1, 5, 11, 12):
        match = ima.match_quote(log, quote(datas[:k], ("sha1", "sha256")))
        assert [e.index for e in match.accepted] == list(range(k))
        assert [e.index for e in match.pending] == list(range(k, 12))
        assert match.state.offset == k
        assert match.state.pcrs["sha256"] == {10: fold(datas[:k], "sha256")}


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda d: d[:3] + d[4:], id="entry removed"),
        pytest.param(lambda d: d[:-1], id="last entry removed"),
        pytest.param(lambda d: [d[0], d[2], d[1], *d[3:]], id="entries reordered"),
        pytest.param(lambda d: [*d[:4], entry_data(99), *d[4:]], id="entry inserted"),
        pytest.param(lambda d: [entry_data(50), *d[1:]], id="boot_aggregate replaced"),
    ],
)
def test_changed_lists_do_not_reproduce_the_quote(tamper: object) -> None:
    datas = honest()
    changed = tamper(datas)  # type: ignore[operator]
    with pytest.raises(VerificationError) as err:
        ima.match_quote(ima.parse(binary(changed)), quote(datas))
    assert err.value.code is Reason.IMA_REPLAY_MISMATCH


def test_edited_file_digest_is_caught_by_its_template_hash() -> None:
    datas = honest()
    record = binary(datas[:4])
    entry = ima.encode_binary_entry("ima-ng", datas[4])
    forged = ima.encode_template_data(
        "ima-ng", "sha256", hashlib.sha256(b"allowed").digest(), "/usr/bin/tool4"
    )
    # The attacker swaps the digest to one the policy allows, keeping the logged template hash.
    edited = entry[: len(entry) - len(datas[4])] + forged
    log = ima.parse(record + edited + binary(datas[5:]))
    with pytest.raises(VerificationError) as err:
        ima.match_quote(log, quote(datas))
    assert err.value.code is Reason.IMA_TEMPLATE_HASH_MISMATCH
    assert err.value.message.startswith("entry 4 (/usr/bin/tool4)")
    # Recomputing the template hash too moves the problem to the replay.
    datas[4] = forged
    with pytest.raises(VerificationError) as err:
        ima.match_quote(ima.parse(binary(datas)), quote(honest()))
    assert err.value.code is Reason.IMA_REPLAY_MISMATCH


def test_every_quoted_bank_must_agree_on_the_prefix() -> None:
    datas = honest()
    mixed = {"sha1": {10: fold(datas[:5], "sha1")}, "sha256": {10: fold(datas, "sha256")}}
    with pytest.raises(VerificationError) as err:
        ima.match_quote(ima.parse(binary(datas)), mixed)
    assert err.value.code is Reason.IMA_REPLAY_MISMATCH


def test_entries_on_an_unquoted_pcr_stop_acceptance() -> None:
    datas = honest()
    log = ima.parse(binary(datas, pcrs={5: 11}))
    match = ima.match_quote(log, quote(datas[:5]))
    assert (len(match.accepted), len(match.pending)) == (5, 3)
    with pytest.raises(VerificationError):
        ima.match_quote(log, quote(datas[:5] + datas[6:]))
    both = {"sha256": {10: fold(datas[:5] + datas[6:], "sha256"), 11: fold([datas[5]], "sha256")}}
    assert len(ima.match_quote(log, both).accepted) == len(datas)


def test_the_extend_rule_is_found_and_kept() -> None:
    datas = honest(10)
    log = ima.parse(binary(datas))
    old_kernel = quote(datas[:6], ("sha1", "sha256"), padded=True)
    match = ima.match_quote(log, old_kernel)
    assert len(match.accepted) == 6
    assert match.state.variants == {"sha256": ima.PADDED_SHA1}
    # The next round must not switch rules: a bank-hash quote now fails.
    fragment = ima.parse(binary(datas)[len(binary(datas[:6])) :], first_index=6)
    with pytest.raises(VerificationError):
        ima.match_quote(fragment, quote(datas, ("sha256",)), start=match.state)
    again = ima.match_quote(fragment, quote(datas, ("sha256",), padded=True), start=match.state)
    assert again.state.offset == 10


def test_incremental_rounds_replay_only_new_entries() -> None:
    datas = honest(20)
    full = binary(datas)
    state: ima.ReplayState | None = None
    accepted: list[int] = []
    for quoted_upto, sent_upto in ((3, 7), (7, 7), (12, 15), (20, 20)):
        offset = state.offset if state else 0
        # The agent sends what it has from the last accepted entry; the verifier says where that is.
        fragment = ima.parse(binary(datas[offset:sent_upto]), first_index=offset)
        match = ima.match_quote(fragment, quote(datas[:quoted_upto], ("sha1", "sha256")), start=state)
        accepted += [e.index for e in match.accepted]
        # The state survives a round trip through the store.
        state = ima.ReplayState.from_json(match.state.to_json())
        assert state == match.state
        assert state.offset == quoted_upto
    assert accepted == list(range(20))
    assert state is not None
    assert state.pcrs == ima.replay(ima.parse(full), ["sha1", "sha256"]).pcrs


def test_a_fragment_must_start_where_the_state_ends() -> None:
    datas = honest()
    state = ima.match_quote(ima.parse(binary(datas[:4])), quote(datas[:4])).state
    with pytest.raises(VerificationError) as err:
        ima.match_quote(ima.parse(binary(datas[5:]), first_index=5), quote(datas), start=state)
    assert err.value.code is Reason.IMA_REPLAY_MISMATCH
    with pytest.raises(ValueError, match="needs the state"):
        ima.replay(ima.parse(binary(datas[4:]), first_index=4))


def test_fragment_from_the_wrong_place_does_not_replay() -> None:
    datas = honest()
    state = ima.match_quote(ima.parse(binary(datas[:4])), quote(datas[:4])).state
    # Claimed to start at 4, but these are entries 5... (entry 4 withheld).
    with pytest.raises(VerificationError) as err:
        ima.match_quote(ima.parse(binary(datas[5:]), first_index=4), quote(datas), start=state)
    assert err.value.code is Reason.IMA_REPLAY_MISMATCH


def test_nothing_new_is_a_match() -> None:
    datas = honest()
    state = ima.match_quote(ima.parse(binary(datas)), quote(datas)).state
    match = ima.match_quote(ima.parse(b"", first_index=len(datas)), quote(datas), start=state)
    assert (match.accepted, match.pending, match.state) == ((), (), state)


def test_stored_state_is_validated() -> None:
    good = ima.replay(ima.parse(binary(honest())), ["sha256"]).to_json()
    for bad in (
        {},
        {**good, "offset": -1},
        {**good, "pcrs": {"sha256": {"10": "00"}}},
        {**good, "variants": {"x": "y"}},
    ):
        with pytest.raises(ValueError, match="replay state"):
            ima.ReplayState.from_json(bad)


def test_quoted_values_must_fit_their_bank() -> None:
    with pytest.raises(ValueError, match="not 32 bytes"):
        ima.match_quote(ima.parse(binary(honest())), {"sha256": {10: bytes(20)}})


# -- boot_aggregate


def test_boot_aggregate_over_pcrs_0_to_9() -> None:
    for alg in ("sha256", "sha384", "sha512"):
        log = ima.parse(binary(honest(agg_alg=alg)))
        assert ima.verify_boot_aggregate(log, BOOT_PCRS) == ima.BOOT_AGGREGATE_AGILE


def test_sha1_boot_aggregate_over_pcrs_0_to_7() -> None:
    log = ima.parse(binary(honest(agg_alg="sha1")))
    assert ima.verify_boot_aggregate(log, {"sha1": {i: BOOT_PCRS["sha1"][i] for i in range(8)}}) == (
        ima.BOOT_AGGREGATE_SHA1
    )
    legacy = ima.encode_template_data("ima", "sha1", boot_aggregate("sha1", range(8)), ima.BOOT_AGGREGATE)
    log = ima.parse(ima.encode_binary_entry("ima", legacy))
    assert ima.verify_boot_aggregate(log, BOOT_PCRS) == ima.BOOT_AGGREGATE_SHA1


def _boot_failure(log: ima.ImaLog, pcrs: dict[str, dict[int, bytes]] = BOOT_PCRS) -> str:
    with pytest.raises(VerificationError) as err:
        ima.verify_boot_aggregate(log, pcrs)
    assert err.value.code is Reason.IMA_BOOT_AGGREGATE_MISMATCH
    return err.value.message


def test_wrong_boot_aggregates() -> None:
    other = {**BOOT_PCRS, "sha256": {**BOOT_PCRS["sha256"], 4: bytes(32)}}
    assert "is not the sha256 of quoted PCRs 0-9" in _boot_failure(ima.parse(binary(honest())), other)
    lacking = {"sha256": {i: BOOT_PCRS["sha256"][i] for i in range(8)}}
    assert "lacks sha256 PCR 8, 9" in _boot_failure(ima.parse(binary(honest())), lacking)
    # A non-SHA-1 boot_aggregate over PCRs 0-7 only existed on kernels carrying half of the
    # 5.8 change; it is not accepted.
    half = ima.encode_template_data(
        "ima-ng", "sha256", boot_aggregate("sha256", range(8)), ima.BOOT_AGGREGATE
    )
    assert "PCRs 0-9" in _boot_failure(ima.parse(binary([half])))
    # Zeros: the kernel saw no TPM, so nothing binds the list to this boot.
    zero = ima.encode_template_data("ima-ng", "sha256", bytes(32), ima.BOOT_AGGREGATE)
    assert "all zeros" in _boot_failure(ima.parse(binary([zero])))
    assert "not boot_aggregate" in _boot_failure(ima.parse(binary(honest()[1:])))
    assert "first measurement" in _boot_failure(ima.parse(binary(honest()[1:]), first_index=1))
    forged = binary(honest())
    forged = forged[:60] + bytes([forged[60] ^ 1]) + forged[61:]  # inside the first entry's digest
    with pytest.raises(VerificationError) as err:
        ima.verify_boot_aggregate(ima.parse(forged), BOOT_PCRS)
    assert err.value.code is Reason.IMA_TEMPLATE_HASH_MISMATCH


def test_keylime_lists_have_no_tpm_boot_aggregate() -> None:
    # These machines logged a zero boot_aggregate: nothing to bind to a quote.
    from pathlib import Path

    text = (Path(__file__).parent / "data" / "ima" / "keylime" / "ascii_runtime_measurements").read_bytes()
    assert "all zeros" in _boot_failure(ima.parse(text))


def test_unavailable_bank_fails_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ima, "hash_alg_available", lambda h: h.name != "sm3_256")
    with pytest.raises(VerificationError) as err:
        ima.replay(ima.parse(binary(honest())), ["sm3_256"])
    assert err.value.code is Reason.IMA_UNKNOWN_ALGORITHM
    with pytest.raises(ValueError, match="unknown"):
        ima.replay(ima.parse(binary(honest())), ["md5"])
    with pytest.raises(ValueError, match="extend rule"):
        ima.replay(ima.parse(binary(honest())), variant="sideways")


def test_parse_errors_are_not_verification_errors() -> None:
    with pytest.raises(ParseError):
        ima.parse(b"\x0a\x00\x00\x00garbage")
