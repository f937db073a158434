"""The container log format: one canonical JSON record per line, the line's bytes extended into
PCR 23. Decoding accepts exactly the encoder's output and fails cleanly on anything else."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.containerlog import (
    MAX_LINE,
    MAX_RECORDS,
    ContainerEntry,
    ContainerLogMalformed,
    ContainerRecord,
    fold,
    matching_prefix,
    parse_log,
)
from attest.reasons import Reason

DIGEST_A = "sha256:" + "a1" * 32
DIGEST_B = "sha256:" + "b2" * 32


def record(**changes: Any) -> ContainerRecord:
    fields: dict[str, Any] = {
        "time": "2024-05-01T12:00:00Z",
        "container_id": "3f2a" * 16,
        "pod": "shop-7d9c4b6f5-x2x9q",
        "namespace": "prod",
        "container": "web",
        "image": "ghcr.io/acme/shop:1.4",
        "image_digest": DIGEST_A,
        "runtime": "cri-o",
    }
    return ContainerRecord(**(fields | changes))


def log_of(*records: ContainerRecord) -> bytes:
    return b"".join(r.encode() + b"\n" for r in records)


def test_encoding_is_canonical_and_round_trips() -> None:
    r = record()
    line = r.encode()
    assert line == (
        b'{"container":"web","container_id":"' + b"3f2a" * 16 + b'","image":"ghcr.io/acme/shop:1.4",'
        b'"image_digest":"' + DIGEST_A.encode() + b'","namespace":"prod","pod":"shop-7d9c4b6f5-x2x9q",'
        b'"runtime":"cri-o","time":"2024-05-01T12:00:00Z","v":1}'
    )
    assert line == json.dumps(json.loads(line), sort_keys=True, separators=(",", ":")).encode()
    assert ContainerRecord.decode(line) == r
    assert r.to_json()["v"] == 1


def test_quotes_and_backslashes_are_escaped_once_and_round_trip() -> None:
    r = record(image='odd"name\\x')
    assert ContainerRecord.decode(r.encode()) == r


@pytest.mark.parametrize(
    "line",
    [
        b'{"v":1, "time":"2024-05-01T12:00:00Z"}',  # whitespace
        b" " + record().encode(),
        record().encode().replace(b'"v":1', b'"v":1.0'),
        record().encode().replace(b'"v":1', b'"v":true'),
        record().encode().replace(b'"v":1', b'"v":2'),
        record().encode().replace(b'"web"', b'"w\\u0065b"'),  # a needless escape
        record().encode()[:-1] + b',"v":1}',  # duplicate key
        record().encode()[:-1] + b',"extra":"x"}',
        record().encode().replace(b',"pod":"shop-7d9c4b6f5-x2x9q"', b""),
        record().encode().replace(b'"prod"', b"7"),  # wrong type
        record().encode().replace(b'"prod"', b"null"),
        b"[1,2,3]",
        b"not json",
        b"",
        b"\xff\xfe",
        b"[" * 5000 + b"]" * 5000,
        b'{"v":' + b"9" * 5000 + b"}",
        b"x" * (MAX_LINE + 1),
    ],
)
def test_anything_but_the_canonical_encoding_is_refused(line: bytes) -> None:
    with pytest.raises(ContainerLogMalformed) as e:
        ContainerRecord.decode(line)
    assert e.value.code is Reason.CONTAINERLOG_MALFORMED


@pytest.mark.parametrize(
    "changes",
    [
        {"time": "2024-05-01 12:00:00Z"},
        {"time": "2024-02-30T12:00:00Z"},
        {"time": "2024-05-01T12:00:00+00:00"},
        {"container_id": ""},
        {"container_id": "a" * 129},
        {"container_id": "../etc"},
        {"pod": "p" * 254},
        {"namespace": "n" * 64},
        {"container": "c" * 64},
        {"image": "i" * 1025},
        {"image": "has space"},
        {"pod": "caf\u00e9"},
        {"container": "tab\there"},
        {"image_digest": "sha256:" + "A1" * 32},  # upper case
        {"image_digest": "sha256:" + "a1" * 31},
        {"image_digest": "md5:" + "a1" * 16},
        {"image_digest": "a1" * 32},
        {"runtime": "docker"},
        {"pod": 7},
    ],
)
def test_fields_are_validated_on_construction(changes: dict[str, Any]) -> None:
    with pytest.raises(ContainerLogMalformed):
        record(**changes)


def test_empty_identity_and_digest_are_allowed() -> None:
    r = record(pod="", namespace="", container="", image="", image_digest="", runtime="oci")
    assert ContainerRecord.decode(r.encode()) == r
    assert record(image_digest="sha512:" + "c3" * 64).image_digest.startswith("sha512:")


def test_parse_log_numbers_entries_and_keeps_the_exact_lines() -> None:
    a, b = record(), record(container_id="b" * 64, image_digest=DIGEST_B)
    entries = parse_log(log_of(a, b))
    assert [(e.index, e.record) for e in entries] == [(0, a), (1, b)]
    assert [e.line for e in entries] == [a.encode(), b.encode()]
    assert entries[1].to_json()["index"] == 1
    assert "v" not in entries[1].to_json()
    assert parse_log(b"") == ()


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (log_of(record()) + b"\n", "line 2"),  # empty line
        (log_of(record()) + record().encode()[:40], "line 2: no newline"),  # unfinished last line
        (log_of(record()) + b"garbage\n" + log_of(record()), "line 2"),
        (log_of(record()).replace(b"\n", b"\r\n"), "line 1"),
    ],
)
def test_malformed_logs_name_the_line(data: bytes, where: str) -> None:
    with pytest.raises(ContainerLogMalformed, match=where):
        parse_log(data)


def test_a_log_with_too_many_records_is_refused() -> None:
    with pytest.raises(ContainerLogMalformed, match="more than"):
        parse_log(b"x\n" * (MAX_RECORDS + 1))


def test_fold_is_the_pcr_extend_of_each_lines_hash() -> None:
    lines = [record().encode(), record(container_id="b" * 64).encode()]
    pcr = bytes(32)
    for line in lines:
        pcr = hashlib.sha256(pcr + hashlib.sha256(line).digest()).digest()
    values = fold(lines, "sha256")
    assert values[0] == bytes(32)
    assert values[-1] == pcr
    assert len(fold(lines, "sha1")[-1]) == 20


def test_matching_prefix_needs_every_bank() -> None:
    lines = [record(container_id=f"c{i}").encode() for i in range(4)]
    sha1, sha256 = fold(lines, "sha1"), fold(lines, "sha256")
    assert matching_prefix(lines, {"sha1": sha1[2], "sha256": sha256[2]}) == 2
    assert matching_prefix(lines, {"sha256": sha256[0]}) == 0
    assert matching_prefix(lines, {"sha1": sha1[2], "sha256": sha256[3]}) is None
    assert matching_prefix(lines, {"sha256": b"\x01" * 32}) is None


def test_entries_are_frozen() -> None:
    entry = ContainerEntry(0, record(), record().encode())
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.index = 1  # type: ignore[misc]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_parse_or_fail_with_the_reason_code(data: bytes) -> None:
    try:
        entries = parse_log(data)
    except ContainerLogMalformed as e:
        code = e.code
    else:
        code = None
        assert b"".join(e.line + b"\n" for e in entries) == data
    assert code in (None, Reason.CONTAINERLOG_MALFORMED)


_names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)


@settings(max_examples=200, deadline=None)
@given(pod=_names, namespace=_names, container=_names, image=_names)
def test_every_valid_record_round_trips(pod: str, namespace: str, container: str, image: str) -> None:
    r = record(pod=pod, namespace=namespace, container=container, image=image)
    assert ContainerRecord.decode(r.encode()) == r
    assert parse_log(log_of(r, r))[1].record == r
