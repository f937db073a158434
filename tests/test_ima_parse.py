"""IMA measurement lists: parsing real lists (keylime, tpm2-tss), the template encoder, and
every way a list can be malformed."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from attest.errors import ParseError, VerificationError
from attest.reasons import Reason
from attest.tcg import hash_alg, hash_alg_available
from attest.verify import ima

DATA = Path(__file__).parent / "data" / "ima"
KEYLIME = DATA / "keylime"
TSS = DATA / "tpm2-tss"
HAVE_SM3 = hash_alg_available(hash_alg("sm3_256"))

# tpm2-tss cut these captures after the entries its expectations list, mid-way through the next.
TSS_LOGS = {"sml-ima-ng-sha1": 1, "sml-ima-sha1": 1, "sml-ima-sig-sha256": 6}


def _expected(name: str) -> list[tuple[str, str]]:
    doc = json.loads((TSS / f"{name}.expected-entries.json").read_text())
    assert doc["pcr"] == 10
    return [(e["name"], e["template_hash_sha1"]) for e in doc["entries"]]


def _sha1_fold(hashes: list[bytes]) -> bytes:
    """PCR 10's SHA-1 bank, folded the way keylime does from the list's column 2."""
    pcr = bytes(20)
    for h in hashes:
        pcr = hashlib.sha1(pcr + (b"\xff" * 20 if h == bytes(20) else h)).digest()
    return pcr


# -- the tpm2-tss binary lists


@pytest.mark.parametrize(("name", "tail"), TSS_LOGS.items())
def test_binary_lists_match_their_expected_entries(name: str, tail: int) -> None:
    log = ima.parse((TSS / f"{name}.bin").read_bytes(), allow_partial_tail=True)
    assert log.format == "binary"
    assert log.template_hash_alg == "sha1"
    assert log.unparsed_tail == tail
    assert [(e.path, e.template_hash.hex()) for e in log.entries] == _expected(name)
    assert all(e.pcr == 10 and not e.violation for e in log.entries)
    assert [e.index for e in log.entries] == list(range(len(log.entries)))
    ima.verify_template_hashes(log)


@pytest.mark.parametrize("name", TSS_LOGS)
def test_binary_list_cut_mid_entry_is_malformed_unless_allowed(name: str) -> None:
    data = (TSS / f"{name}.bin").read_bytes()
    count = len(_expected(name))
    with pytest.raises(ParseError) as err:
        ima.parse(data)
    assert err.value.code is Reason.IMA_MALFORMED
    assert f"offset {len(data) - TSS_LOGS[name]}: entry {count}: truncated entry" in err.value.message


@pytest.mark.parametrize("name", TSS_LOGS)
def test_binary_lists_survive_the_ascii_form(name: str) -> None:
    log = ima.parse((TSS / f"{name}.bin").read_bytes(), allow_partial_tail=True)
    text = b"".join(ima.ascii_line(e) + b"\n" for e in log.entries)
    again = ima.parse(text)
    assert again.format == "ascii"
    assert [(e.template, e.template_hash, e.template_data, e.fields) for e in again.entries] == [
        (e.template, e.template_hash, e.template_data, e.fields) for e in log.entries
    ]


def test_tpm2_tss_templates_decode() -> None:
    ng = ima.parse((TSS / "sml-ima-ng-sha1.bin").read_bytes(), allow_partial_tail=True).entries
    assert (ng[1].template, ng[1].digest_alg, ng[1].path) == ("ima-ng", "sha1", "/init")
    assert ng[0].digest == bytes(20)
    legacy = ima.parse((TSS / "sml-ima-sha1.bin").read_bytes(), allow_partial_tail=True).entries
    assert (legacy[1].template, legacy[1].digest_alg, legacy[1].field_ids) == ("ima", "sha1", ("d", "n"))
    sig = ima.parse((TSS / "sml-ima-sig-sha256.bin").read_bytes(), allow_partial_tail=True).entries
    assert (sig[1].template, sig[1].digest_alg, sig[1].sig) == ("ima-sig", "sha256", b"")
    assert sig[0].digest_alg == "sha1"  # its boot_aggregate was computed before the sha256 switch


# -- the "-invalidated" variants: violation records, and one capture cut short


def test_invalidated_legacy_list_holds_a_violation() -> None:
    log = ima.parse((TSS / "sml-ima-sha1-invalidated.bin").read_bytes())
    (entry,) = log.entries
    assert entry.violation
    assert entry.digest == bytes(20)
    assert entry.path == "boot_aggregate"
    # It departs from the honest list at its first entry: the template hash is all zeros...
    assert entry.template_hash.hex() != _expected("sml-ima-sha1")[0][1]
    # ...which binds nothing, so the hash check passes it and the replay extends with ones.
    ima.verify_template_hashes(log)
    assert ima.replay(log, ["sha1"]).pcrs["sha1"][10] == _sha1_fold([bytes(20)])
    # A violation proves nothing about its data, so it cannot stand for the boot_aggregate.
    with pytest.raises(VerificationError) as err:
        ima.verify_boot_aggregate(log, {"sha1": {i: bytes(20) for i in range(8)}})
    assert err.value.code is Reason.IMA_BOOT_AGGREGATE_MISMATCH


def test_invalidated_sig_list_departs_at_its_second_entry() -> None:
    log = ima.parse((TSS / "sml-ima-sig-sha256-invalidated.bin").read_bytes())
    honest = _expected("sml-ima-sig-sha256")
    assert [e.violation for e in log.entries] == [False, True]
    assert log.entries[0].template_hash.hex() == honest[0][1]
    assert log.entries[1].template_hash != bytes.fromhex(honest[1][1])
    assert (log.entries[1].path, log.entries[1].digest) == ("/init", bytes(32))
    ima.verify_template_hashes(log)
    got = ima.replay(log, ["sha1"]).pcrs["sha1"][10]
    assert got == _sha1_fold([e.template_hash for e in log.entries])
    assert got != _sha1_fold([bytes.fromhex(h) for _, h in honest[:2]])


def test_invalidated_ng_list_is_cut_inside_its_only_entry() -> None:
    data = (TSS / "sml-ima-ng-sha1-invalidated.bin").read_bytes()
    with pytest.raises(ParseError) as err:
        ima.parse(data)
    assert err.value.code is Reason.IMA_MALFORMED
    assert err.value.message == "offset 0: entry 0: truncated entry"
    log = ima.parse(data, allow_partial_tail=True)
    assert (log.entries, log.unparsed_tail) == ((), len(data))


# -- keylime's ASCII lists


def test_ima_ng_ascii_list() -> None:
    log = ima.parse((KEYLIME / "ascii_runtime_measurements").read_bytes())
    assert (log.format, log.template_hash_alg, len(log.entries)) == ("ascii", "sha1", 826)
    assert {e.template for e in log.entries} == {"ima-ng"}
    assert not any(e.violation for e in log.entries)
    assert log.entries[0].path == ima.BOOT_AGGREGATE
    state = ima.replay(log)
    assert state.offset == 826
    assert state.pcrs["sha1"][10] == _sha1_fold([e.template_hash for e in log.entries])
    assert set(state.pcrs) == set(ima.DEFAULT_BANKS)


def test_legacy_ima_ascii_list_with_violations() -> None:
    text = (KEYLIME / "ascii_runtime_measurements_ima").read_bytes()
    log = ima.parse(text)
    assert len(log.entries) == 867
    assert {e.template for e in log.entries} == {"ima"}
    violations = [e for e in log.entries if e.violation]
    lines = text.splitlines()
    assert [e.index for e in violations] == [
        n for n, line in enumerate(lines) if line.split()[1] == b"0" * 40
    ]
    assert len(violations) == 9
    assert all(e.digest == bytes(20) and (e.path or "").startswith("/tmp/sh-thd-") for e in violations)
    # The legacy template hashes its name NUL-padded to 256 bytes: 858 real entries agree.
    ima.verify_template_hashes(log)
    sha1 = ima.replay(log, ["sha1"]).pcrs["sha1"][10]
    assert sha1 == _sha1_fold([e.template_hash for e in log.entries])


# keylime's create-runtime-policy fixtures: one list per file-digest algorithm. Entries whose
# column 2 is zeros are violations; the sm3 list's column 2 is an SM3 template hash.
ALG_LOGS = {
    "sha1": ("sha1", [0]),
    "sha256": ("sha1", []),
    "sha384": ("sha1", [0]),
    "sha512": ("sha1", [0]),
    "sm3_256": ("sm3_256", [0]),
}


@pytest.mark.parametrize("alg", ALG_LOGS)
def test_every_file_digest_algorithm_parses_and_replays(alg: str) -> None:
    if alg == "sm3_256" and not HAVE_SM3:
        pytest.skip("this OpenSSL has no SM3")
    log = ima.parse((KEYLIME / f"ima-log-{alg}").read_bytes())
    template_alg, violations = ALG_LOGS[alg]
    assert log.template_hash_alg == template_alg
    assert [e.index for e in log.entries if e.violation] == violations
    data = log.entries[1]
    assert (data.path, data.digest_alg, len(data.digest or b"")) == ("/data", alg, hash_alg(alg).size)
    state = ima.replay(log, [*ima.DEFAULT_BANKS, "sha1"])
    assert state.offset == 2
    if template_alg == "sha1":
        assert state.pcrs["sha1"][10] == _sha1_fold([e.template_hash for e in log.entries])


def test_sm3_template_hashes_without_sm3_fail_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ima, "hash_alg_available", lambda h: h.name != "sm3_256")
    with pytest.raises(ParseError) as err:
        ima.parse((KEYLIME / "ima-log-sm3_256").read_bytes())
    assert err.value.code is Reason.IMA_UNKNOWN_ALGORITHM


def test_unknown_digest_algorithm_fails_cleanly() -> None:
    with pytest.raises(ParseError) as err:
        ima.parse((KEYLIME / "ima-log-unknown").read_bytes())
    assert err.value.code is Reason.IMA_UNKNOWN_ALGORITHM
    assert err.value.message.startswith("line 1: ")


def test_md5_file_digests_are_not_accepted() -> None:
    line = b"10 " + b"1" * 40 + b" ima-ng md5:" + b"ab" * 16 + b" /bin/sh\n"
    with pytest.raises(ParseError) as err:
        ima.parse(line)
    assert err.value.code is Reason.IMA_UNKNOWN_ALGORITHM


def test_keylime_verification_lists() -> None:
    measurements = ima.parse((KEYLIME / "test_ima_verification.MEASUREMENTS.txt").read_bytes())
    assert [e.sig for e in measurements.entries] == [b"", b"", b""]  # the trailing space: empty sig
    ima.verify_template_hashes(measurements)
    signatures = ima.parse((KEYLIME / "test_ima_verification.SIGNATURES.txt").read_bytes())
    assert [e.template for e in signatures.entries] == ["ima-sig"] * 2
    assert [len(e.sig or b"") for e in signatures.entries[:2]] == [9 + 256, 9 + 72]
    ima.verify_template_hashes(signatures)


def test_ima_buf_keyring_entry() -> None:
    # This one has no trailing newline: the default parse takes the last line as complete.
    (entry,) = ima.parse((KEYLIME / "test_ima_verification.KEYRINGS.txt").read_bytes()).entries
    assert (entry.template, entry.path, entry.digest_alg) == ("ima-buf", ".ima", "sha256")
    assert entry.buf is not None
    assert entry.buf[:2] == b"\x30\x82"
    assert entry.digest == hashlib.sha256(entry.buf).digest()
    assert entry.template_data == ima.encode_template_data(
        "ima-buf", "sha256", entry.digest, ".ima", entry.buf
    )
    # Read as a capture whose last line was cut off, it holds nothing.
    cut = ima.parse((KEYLIME / "test_ima_verification.KEYRINGS.txt").read_bytes(), allow_partial_tail=True)
    assert cut.entries == ()
    assert cut.unparsed_tail > 0


def test_corrupted_signature_field_fails_the_template_hash() -> None:
    # keylime's "bad signature" changed the sig field but kept the template hash.
    log = ima.parse((KEYLIME / "test_ima_verification.BAD_SIGNATURES.txt").read_bytes())
    with pytest.raises(VerificationError) as err:
        ima.verify_template_hashes(log)
    assert err.value.code is Reason.IMA_TEMPLATE_HASH_MISMATCH
    assert err.value.message.startswith("entry 0 (/usr/bin/zmore)")


# -- the encoder, against the kernel's bytes


def test_encoder_reproduces_kernel_template_data() -> None:
    ng = ima.parse((TSS / "sml-ima-ng-sha1.bin").read_bytes(), allow_partial_tail=True).entries[1]
    legacy = ima.parse((TSS / "sml-ima-sha1.bin").read_bytes(), allow_partial_tail=True).entries[1]
    sig = ima.parse((TSS / "sml-ima-sig-sha256.bin").read_bytes(), allow_partial_tail=True).entries[1]
    for entry, alg in ((ng, "sha1"), (legacy, "sha1"), (sig, "sha256")):
        assert entry.digest is not None
        data = ima.encode_template_data(entry.template, alg, entry.digest, "/init")
        assert data == entry.template_data
        assert ima.template_hash("sha1", data, entry.template) == entry.template_hash
        record = ima.encode_binary_entry(entry.template, data)
        assert ima.parse(record).entries[0].template_data == data


def test_encoder_spellings_and_spaces() -> None:
    data = ima.encode_template_data("ima-ng", "sm3_256", bytes(32), "/a b")
    assert data.startswith(struct.pack("<I", 3 + 2 + 32) + b"sm3:\0")  # the kernel spells it "sm3"
    (entry,) = ima.parse(ima.encode_binary_entry("ima-ng", data)).entries
    assert (entry.digest_alg, entry.path) == ("sm3_256", "/a_b")


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("ima-ng", "sha256", bytes(20), "/x"), "32 bytes"),
        (("ima-ng", "md5", bytes(16), "/x"), "unknown digest algorithm"),
        (("ima-ng", "sha256", bytes(32), "/x\0y"), "NUL"),
        (("ima", "sha256", bytes(32), "/x"), "SHA-1"),
        (("ima", "sha1", bytes(20), "/" * 256), "255"),
        (("ima-ng", "sha1", bytes(20), "/x", b"sig"), "cannot encode"),
        (("evm-sig", "sha1", bytes(20), "/x"), "cannot encode"),
    ],
)
def test_encoder_refuses_what_the_kernel_cannot_write(args: tuple[str, str, bytes, str], what: str) -> None:
    with pytest.raises(ValueError, match=what):
        ima.encode_template_data(*args)


# -- per-bank lists (Linux >= 6.10), custom and unknown templates, big-endian hosts


def _generated(count: int = 5) -> list[bytes]:
    return [
        ima.encode_template_data("ima-ng", "sha256", hashlib.sha256(b"%d" % n).digest(), f"/bin/p{n}")
        for n in range(count)
    ]


@pytest.mark.parametrize("alg", ["sha256", "sha384", "sha512", "sm3_256"])
def test_per_bank_lists_carry_that_banks_template_hashes(alg: str) -> None:
    if alg == "sm3_256" and not HAVE_SM3:
        pytest.skip("this OpenSSL has no SM3")
    datas = _generated()
    hashes = [ima.template_hash(alg, d) for d in datas]
    binary = b"".join(
        ima.encode_binary_entry("ima-ng", d, template_hash_value=h)
        for d, h in zip(datas, hashes, strict=True)
    )
    for data in (binary, b"".join(ima.ascii_line(e) + b"\n" for e in ima.parse(binary).entries)):
        log = ima.parse(data)
        assert log.template_hash_alg == alg
        ima.verify_template_hashes(log)
        classic = ima.parse(b"".join(ima.encode_binary_entry("ima-ng", d) for d in datas))
        assert ima.replay(log).pcrs == ima.replay(classic).pcrs


def test_explicit_template_hash_algorithm_must_fit() -> None:
    line = ima.ascii_line(ima.parse(ima.encode_binary_entry("ima-ng", _generated(1)[0])).entries[0])
    with pytest.raises(ParseError, match="not sha256"):
        ima.parse(line + b"\n", template_hash_alg="sha256")
    with pytest.raises(ValueError, match="unknown PCR bank"):
        ima.parse(line, template_hash_alg="md5")


def test_custom_format_template_parses_by_its_field_names() -> None:
    fields = [b"sha256:\0" + bytes(32), b"/usr/bin/x\0", b"\x03\x02\x04"]
    data = b"".join(struct.pack("<I", len(f)) + f for f in fields)
    (entry,) = ima.parse(ima.encode_binary_entry("d-ng|n-ng|sig", data)).entries
    assert (entry.field_ids, entry.digest_alg, entry.path, entry.sig) == (
        ("d-ng", "n-ng", "sig"),
        "sha256",
        "/usr/bin/x",
        b"\x03\x02\x04",
    )
    again = ima.parse(ima.ascii_line(entry))
    assert again.entries[0].template_data == data


def test_unknown_template_parses_generically_in_binary_only() -> None:
    fields = [b"one", b"", b"three"]
    data = b"".join(struct.pack("<I", len(f)) + f for f in fields)
    log = ima.parse(ima.encode_binary_entry("vendor-x", data))
    (entry,) = log.entries
    assert (entry.fields, entry.digest, entry.path, entry.field_ids) == (tuple(fields), None, None, None)
    ima.verify_template_hashes(log)
    with pytest.raises(ValueError, match="no known ASCII form"):
        ima.ascii_line(entry)
    line = b"10 " + entry.template_hash.hex().encode() + b" vendor-x 6f6e65  7468726565\n"
    with pytest.raises(ParseError, match="unknown template 'vendor-x'"):
        ima.parse(line)


def test_evm_sig_needs_the_binary_list() -> None:
    line = b"10 " + b"1" * 40 + b" evm-sig sha256:" + b"00" * 32 + b" /x   security.ima 0004 00 0 0 33188\n"
    with pytest.raises(ParseError, match="decimal"):
        ima.parse(line)


def test_big_endian_lists() -> None:
    fields = [b"sha256:\0" + bytes(range(32)), b"/bin/sh\0"]
    data = b"".join(struct.pack(">I", len(f)) + f for f in fields)  # native order, as s390x writes
    th = hashlib.sha1(data).digest()
    record = (
        struct.pack(">I", 10) + th + struct.pack(">I", 6) + b"ima-ng" + struct.pack(">I", len(data)) + data
    )
    log = ima.parse(record * 3)
    assert [(e.pcr, e.path, e.digest) for e in log.entries] == [(10, "/bin/sh", bytes(range(32)))] * 3
    ima.verify_template_hashes(log)


def test_single_digit_pcrs_and_other_pcrs() -> None:
    line = ima.ascii_line(ima.parse(ima.encode_binary_entry("ima-ng", _generated(1)[0], pcr=9)).entries[0])
    assert line.startswith(b" 9 ")
    (entry,) = ima.parse(line + b"\n").entries
    assert entry.pcr == 9
    assert set(ima.replay(ima.parse(line)).pcrs["sha1"]) == {9}


def test_non_utf8_names_round_trip() -> None:
    data = ima.encode_template_data("ima-ng", "sha1", bytes(20), b"/tmp/\xff\xfe")
    (entry,) = ima.parse(ima.encode_binary_entry("ima-ng", data)).entries
    assert entry.path is not None
    assert entry.path.encode("utf-8", "surrogateescape") == b"/tmp/\xff\xfe"


def test_empty_lists() -> None:
    for log in (ima.parse(b""), ima.parse_binary(b""), ima.parse_ascii(b""), ima.parse_ascii("")):
        assert (log.entries, log.unparsed_tail, log.template_hash_alg) == ((), 0, "sha1")


# -- malformed input: a clean ParseError, located


GOOD = ima.encode_binary_entry("ima-ng", _generated(1)[0])
GOOD_LINE = ima.ascii_line(ima.parse(GOOD).entries[0])
U32 = struct.Struct("<I")
THREE_FIELDS = ima.encode_binary_entry(
    "ima-ng", b"".join(U32.pack(len(f)) + f for f in (b"sha1:\0" + bytes(20), b"/x\0", b""))
)


def _second(offset: int, value: bytes) -> bytes:
    """A good record, then one with `value` written at `offset` (the first fixes the layout)."""
    return GOOD + GOOD[:offset] + value + GOOD[offset + len(value) :]


AT = f"offset {len(GOOD)}: entry 1: "


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (U32.pack(24) + GOOD[4:], "not an IMA measurement list"),
        (GOOD[:24] + U32.pack(0) + GOOD[28:], "no template name after a template hash"),
        (_second(0, U32.pack(99)), AT + "PCR 99 is not a TPM PCR index"),
        (_second(24, U32.pack(0)), AT + "template name length 0"),
        (_second(24, U32.pack(70000)), AT + "template name length 70000"),
        (_second(28, b"IMA-NG"), AT + "template name b'IMA-NG'"),
        (_second(34, U32.pack(0xFFFFFFFF)), AT + "template data length 4294967295"),
        (_second(34, U32.pack(len(GOOD) - 38 + 4)), AT + "truncated entry"),
        (_second(38, U32.pack(1000)), AT + "template field of 1000 bytes overruns"),
        (GOOD + THREE_FIELDS, AT + "template ima-ng has 2 fields, the entry 3"),
        (_second(42, b"sha256;"), AT + "d-ng field lacks its 'algorithm:' prefix"),
        (_second(42, b"sha512:"), AT + "a sha512 digest of 32 bytes"),
        (GOOD + GOOD[:-1] + b"x", AT + "n-ng field is not a NUL-terminated string"),
        (GOOD[:7], "offset 0: entry 0: truncated entry"),
        (GOOD + GOOD[:30], AT + "truncated entry"),
        (GOOD_LINE.replace(b"10 ", b"24 ", 1), "line 1: PCR b'24' is not a TPM PCR index"),
        (GOOD_LINE.replace(b"10 ", b"x1 ", 1), "not an IMA measurement list"),
        (GOOD_LINE[:45], "line 1: expected a PCR"),
        (GOOD_LINE[:3] + b"zz" + GOOD_LINE[5:], "line 1: template hash is not hex"),
        (GOOD_LINE[:3] + GOOD_LINE[5:], "line 1: a template hash of 19 bytes"),
        (
            GOOD_LINE + b"\n" + GOOD_LINE.replace(GOOD_LINE[3:43], b"ab" * 32),
            "line 2: template hashes of diff",
        ),
        (GOOD_LINE.replace(b"ima-ng", b"ima-NG"), "line 1: template name"),
        (GOOD_LINE.replace(b"sha256:", b"sha256"), "line 1: d-ng field"),
        (GOOD_LINE.replace(b"sha256:", b"sha256:0"), "line 1: d-ng is not hex"),
        (GOOD_LINE.replace(b"ima-ng", b"ima-sig"), "line 1: template has 3 fields, the line 2"),
        (b"\n" + GOOD_LINE, "not an IMA measurement list"),
        (b" \n" + GOOD_LINE, "line 1: expected a PCR"),
        (GOOD_LINE + b"\n\n" + GOOD_LINE, "line 2: expected a PCR"),
    ],
)
def test_malformed_lists(data: bytes, what: str) -> None:
    with pytest.raises(ParseError) as err:
        ima.parse(data)
    assert err.value.code is Reason.IMA_MALFORMED
    assert what in err.value.message


def test_crlf_lines_fail_the_template_hash() -> None:
    # A name may hold any byte but "/" and NUL, so the "\r" parses, as part of the name.
    log = ima.parse(GOOD_LINE + b"\r\n")
    with pytest.raises(VerificationError) as err:
        ima.verify_template_hashes(log)
    assert err.value.code is Reason.IMA_TEMPLATE_HASH_MISMATCH


def test_limits_are_checked_before_work() -> None:
    limits = ima.Limits(max_entries=2, max_template_data=64, max_fields=2, max_bytes=1000)
    with pytest.raises(ParseError, match="more than 2 entries"):
        ima.parse(GOOD * 3, limits=limits)
    with pytest.raises(ParseError, match="more than 2 entries"):
        ima.parse(b"\n".join([GOOD_LINE] * 3), limits=limits)
    with pytest.raises(ParseError, match="larger than 1000 bytes"):
        ima.parse(GOOD * 20, limits=limits)
    big = ima.encode_binary_entry("ima-ng", ima.encode_template_data("ima-ng", "sha1", bytes(20), "/" * 100))
    with pytest.raises(ParseError, match="template data length"):
        ima.parse(big, limits=limits)
    many = b"".join(struct.pack("<I", 0) for _ in range(3))
    with pytest.raises(ParseError, match="more than 2 template fields"):
        ima.parse(ima.encode_binary_entry("vendor-x", many), limits=limits)


def test_mixed_templates_in_one_list() -> None:
    # A list is mostly runs of one template, which the parser reads fastest; mixing must not confuse it.
    ng = ima.encode_template_data("ima-ng", "sha1", bytes(20), "/ng")
    legacy = ima.encode_template_data("ima", "sha1", bytes(range(20)), "/legacy")
    sig = ima.encode_template_data("ima-sig", "sha256", bytes(32), "/sig", b"")
    order = ["ima-ng", "ima", "ima-ng", "ima-sig", "ima-ng", "ima", "ima", "ima-sig", "ima-sig", "ima-ng"]
    datas = {"ima-ng": ng, "ima": legacy, "ima-sig": sig}
    log = ima.parse(b"".join(ima.encode_binary_entry(t, datas[t]) for t in order))
    assert [(e.template, e.path) for e in log.entries] == [
        (t, "/" + t.replace("ima-", "").replace("ima", "legacy")) for t in order
    ]
    ima.verify_template_hashes(log)
    again = ima.parse(b"".join(ima.ascii_line(e) + b"\n" for e in log.entries))
    assert [e.template_data for e in again.entries] == [e.template_data for e in log.entries]
