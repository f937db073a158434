"""The agent's log readers: IMA split at entry boundaries from an offset, the event log, the boot id."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest

from attest.agent import logs
from attest.agent.logs import ImaReader, LogError, read_boot_id, read_eventlog
from attest.verify import ima
from attest.verify.ima import encode_binary_entry, encode_template_data


def _file(i: int) -> tuple[str, bytes]:
    return f"/usr/bin/tool-{i}", f"content {i}".encode()


def _binary(template: str, i: int, extra: bytes = b"") -> bytes:
    path, content = _file(i)
    alg = "sha1" if template == "ima" else "sha256"
    digest = hashlib.new(alg, content).digest()
    return encode_binary_entry(template, encode_template_data(template, alg, digest, path, extra))


def _ascii(i: int) -> bytes:
    path, content = _file(i)
    data = encode_template_data("ima-ng", "sha256", hashlib.sha256(content).digest(), path)
    return ima.ascii_line(ima.parse(encode_binary_entry("ima-ng", data)).entries[0]) + b"\n"


def _big_endian(i: int) -> bytes:
    """A record as s390x writes it: every integer big-endian, template data fields included."""
    path, content = _file(i)
    fields = [b"sha256:\0" + hashlib.sha256(content).digest(), path.encode() + b"\0"]
    data = b"".join(struct.pack(">I", len(f)) + f for f in fields)
    name = b"ima-ng"
    return (
        struct.pack(">I", 10)
        + hashlib.sha1(data).digest()
        + struct.pack(">I", len(name))
        + name
        + struct.pack(">I", len(data))
        + data
    )


RECORDS = {
    "binary": lambda i: _binary("ima-ng", i),
    "binary-mixed": lambda i: _binary(("ima-ng", "ima", "ima-sig")[i % 3], i, b"\x03\x02" * (i % 3 == 2)),
    "big-endian": _big_endian,
    "ascii": _ascii,
}


@pytest.fixture(params=sorted(RECORDS))
def records(request: pytest.FixtureRequest) -> list[bytes]:
    return [RECORDS[request.param](i) for i in range(12)]


def test_splits_at_entry_boundaries_from_any_offset(tmp_path: Path, records: list[bytes]) -> None:
    path = tmp_path / "ima"
    path.write_bytes(b"".join(records))
    snap = ImaReader(path).read()
    assert snap is not None
    assert snap.entries == len(records)
    for offset in range(len(records) + 1):
        assert snap.since(offset) == (offset, b"".join(records[offset:]))


def test_new_entries_are_found_without_reparsing_the_old(
    tmp_path: Path, records: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ima"
    path.write_bytes(b"".join(records[:5]))
    reader = ImaReader(path)
    assert reader.read() is not None
    parsed: list[tuple[int, int]] = []
    real_parse = ima.parse

    def spy(data: bytes, **kw: Any) -> ima.ImaLog:
        parsed.append((len(data), kw["first_index"]))
        return real_parse(data, **kw)

    monkeypatch.setattr(ima, "parse", spy)
    path.write_bytes(b"".join(records))
    snap = reader.read()
    assert snap is not None
    assert parsed == [(len(b"".join(records[5:])), 5)]
    assert snap.since(7) == (7, b"".join(records[7:]))


def test_an_entry_cut_off_by_a_concurrent_append_waits_for_the_next_read(
    tmp_path: Path, records: list[bytes]
) -> None:
    path = tmp_path / "ima"
    whole = b"".join(records)
    path.write_bytes(whole[: len(whole) - 7])
    reader = ImaReader(path)
    snap = reader.read()
    assert snap is not None
    assert snap.entries == len(records) - 1
    assert snap.since(0) == (0, b"".join(records[:-1]))
    path.write_bytes(whole)
    snap = reader.read()
    assert snap is not None
    assert snap.since(len(records) - 1) == (len(records) - 1, records[-1])


def test_a_replaced_list_is_split_again(tmp_path: Path) -> None:
    """After a reboot the list starts over: same length or longer must not reuse old boundaries."""
    path = tmp_path / "ima"
    before = [_binary("ima-ng", i) for i in range(6)]
    path.write_bytes(b"".join(before))
    reader = ImaReader(path)
    assert reader.read() is not None
    after = [_binary("ima-sig", 100 + i, b"\x03" * 40) for i in range(8)]
    path.write_bytes(b"".join(after))
    snap = reader.read()
    assert snap is not None
    assert snap.entries == 8
    assert snap.since(3) == (3, b"".join(after[3:]))


def test_an_offset_beyond_the_list_sends_it_whole(tmp_path: Path) -> None:
    """The verifier still counts entries of the previous boot: the list it gets must start over."""
    path = tmp_path / "ima"
    recs = [_binary("ima-ng", i) for i in range(3)]
    path.write_bytes(b"".join(recs))
    snap = ImaReader(path).read()
    assert snap is not None
    assert snap.since(9) == (0, b"".join(recs))


def test_an_unsplittable_list_goes_whole_for_the_verifier_to_judge(tmp_path: Path) -> None:
    path = tmp_path / "ima"
    garbage = b"\x0a\x00\x00\x00" + b"\xff" * 400
    path.write_bytes(garbage)
    snap = ImaReader(path).read()
    assert snap is not None
    assert snap.whole
    assert snap.since(5) == (0, garbage)


def test_no_ima_file_means_no_ima(tmp_path: Path) -> None:
    reader = ImaReader(tmp_path / "absent")
    assert reader.read() is None
    (tmp_path / "absent").write_bytes(_binary("ima-ng", 0))
    snap = reader.read()
    assert snap is not None
    assert snap.entries == 1


def test_an_empty_list_has_no_entries(tmp_path: Path) -> None:
    (tmp_path / "ima").write_bytes(b"")
    snap = ImaReader(tmp_path / "ima").read()
    assert snap is not None
    assert snap.since(0) == (0, b"")


def test_eventlog_is_read_whole_or_absent(tmp_path: Path) -> None:
    assert read_eventlog(tmp_path / "none") is None
    (tmp_path / "log").write_bytes(b"\x01" * 3000)
    assert read_eventlog(tmp_path / "log") == b"\x01" * 3000


def test_a_log_larger_than_the_protocol_carries_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "MAX_EVENTLOG", 100)
    (tmp_path / "log").write_bytes(b"\0" * 101)
    with pytest.raises(LogError, match="larger than the 100 bytes"):
        read_eventlog(tmp_path / "log")


def test_an_unreadable_log_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="cannot read IMA list"):
        ImaReader(tmp_path).read()


def test_boot_id(tmp_path: Path) -> None:
    assert read_boot_id(tmp_path / "none") is None
    (tmp_path / "boot_id").write_text("3f1e0c55-8c1f-4b8e-9d7e-2a0f6c1b9e21\n")
    assert read_boot_id(tmp_path / "boot_id") == "3f1e0c55-8c1f-4b8e-9d7e-2a0f6c1b9e21"
    (tmp_path / "empty").write_text("\n")
    assert read_boot_id(tmp_path / "empty") is None
