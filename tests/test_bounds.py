"""Input bounds (issue 7): every limit on untrusted input holds at its value and refuses one
past it with the parser's own reason code, before the work it guards; docs/verifier.md's
"Input limits" table is the code's."""

from __future__ import annotations

import base64
import functools
import importlib
import json
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from attest import containerlog
from attest.errors import ParseError
from attest.reasons import Reason
from attest.verify import eventlog, ima, pcrs, policy
from attest.wire import ADMISSION_NODES, ADMISSION_PODS, _b64_decoder
from tests.webhook_api import Api

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
EVENTLOG = (DATA / "eventlogs/keylime/binary_bios_measurements").read_bytes()
# tpm2-tss's capture ends mid-record: its whole entries, re-encoded, are a complete list.
IMA_LIST = b"".join(
    ima.encode_binary_entry(e.template, e.template_data, pcr=e.pcr, template_hash_value=e.template_hash)
    for e in ima.parse(
        (DATA / "ima/tpm2-tss/sml-ima-ng-sha1.bin").read_bytes(), allow_partial_tail=True
    ).entries
)
PCR_YAML = b"sha256:\n  0: 0x" + b"00" * 32 + b"\n  7: 0x" + b"11" * 32 + b"\n"


def code_of(parse: Callable[[], object]) -> Reason | None:
    """None when the input is accepted, the reason code when it is refused."""
    try:
        parse()
    except ParseError as e:
        return e.code
    return None


# --- the table in docs/verifier.md -----------------------------------------------------------

_ROW = re.compile(r"^\| [^|]+ \| `(?P<name>[\w.]+)` \| (?P<value>[^|]+?) \| (?P<code>[^|]+?) \|$")
_UNITS = {"": 1, "bytes": 1, "levels": 1, "KiB": 1024, "MiB": 1024 * 1024}


def documented_limits() -> list[tuple[str, int, str]]:
    text = (ROOT / "docs/verifier.md").read_text()
    section = text.split("## Input limits", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        m = _ROW.match(line)
        if m:
            number, _, unit = m["value"].partition(" ")
            rows.append((m["name"], int(number.replace(",", "")) * _UNITS[unit], m["code"]))
    return rows


def constant(dotted: str) -> Any:
    """`attest.verify.ima.DEFAULT_LIMITS.max_entries`: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        return functools.reduce(getattr, parts[cut:], module)
    raise AssertionError(f"{dotted} names nothing importable")


def test_the_documented_limits_are_the_codes() -> None:
    rows = documented_limits()
    assert len(rows) >= 25, "the Input limits table lost rows"
    for name, value, code in rows:
        assert constant(name) == value, name
        for word in re.findall(r"`([a-z_]+)`", code):
            assert word in {r.value for r in Reason} or word in {
                "invalid_request",
                "request_too_large",
                "unsupported_content_encoding",
            }, (name, word)


# --- event log --------------------------------------------------------------------------------


def test_event_log_limits_hold_at_their_value(monkeypatch: pytest.MonkeyPatch) -> None:
    log = eventlog.parse(EVENTLOG)
    events = len(log.records)
    largest = max(end - start for *_, start, end in log.records)
    for name, at in (("MAX_LOG_SIZE", len(EVENTLOG)), ("MAX_EVENTS", events), ("MAX_EVENT_DATA", largest)):
        with monkeypatch.context() as m:
            m.setattr(eventlog, name, at)
            assert code_of(lambda: eventlog.parse(EVENTLOG)) is None, name
            m.setattr(eventlog, name, at - 1)
            assert code_of(lambda: eventlog.parse(EVENTLOG)) is Reason.EVENTLOG_MALFORMED, name


def test_an_oversized_event_log_is_refused_before_it_is_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    class Huge(bytes):
        """Claims a length past the limit; reading it for parsing would be a bug."""

        def __len__(self) -> int:
            return eventlog.MAX_LOG_SIZE + 1

        def __bytes__(self) -> bytes:
            raise AssertionError("the log was copied before its size was checked")

    with pytest.raises(ParseError, match="exceeds the") as e:
        eventlog.parse(Huge(b"x"))
    assert e.value.code is Reason.EVENTLOG_MALFORMED


# --- IMA ----------------------------------------------------------------------------------------


def test_ima_limits_hold_at_their_value() -> None:
    log = ima.parse(IMA_LIST)
    ascii_list = b"".join(ima.ascii_line(e) + b"\n" for e in log.entries)
    # A template this parser does not know splits into its length-prefixed fields, as many as
    # the record holds: max_fields bounds those (known templates have a fixed count).
    vendor = ima.encode_binary_entry("vendor-x", b"".join(struct.pack("<I", 1) + b"f" for _ in range(3)))
    cases = [
        ("max_bytes", IMA_LIST, len(IMA_LIST)),
        ("max_bytes", ascii_list, len(ascii_list)),
        ("max_entries", IMA_LIST, len(log.entries)),
        ("max_entries", ascii_list, len(log.entries)),
        # ASCII lines are bounded as a whole, at twice the template data limit (docs/ima.md).
        ("max_template_data", IMA_LIST, max(len(e.template_data) for e in log.entries)),
        ("max_template_name", IMA_LIST, len("ima-ng")),
        ("max_template_name", ascii_list, len("ima-ng")),
        ("max_fields", vendor, 3),
    ]
    for key, data, at in cases:
        ok = ima.Limits(**{key: at})
        assert code_of(lambda d=data, lim=ok: ima.parse(d, limits=lim)) is None, key
        over = ima.Limits(**{key: at - 1})
        assert code_of(lambda d=data, lim=over: ima.parse(d, limits=lim)) is Reason.IMA_MALFORMED, key


# --- container log --------------------------------------------------------------------------------


def test_container_log_limits_hold_at_their_value(monkeypatch: pytest.MonkeyPatch) -> None:
    record = containerlog.ContainerRecord(
        "2024-05-01T12:00:00Z", "ab" * 32, "web-0", "prod", "web", "ghcr.io/acme/web:1", "", "cri-o"
    )
    line = record.encode()
    data = (line + b"\n") * 3
    for name, at in (("MAX_LINE", len(line)), ("MAX_RECORDS", 3)):
        with monkeypatch.context() as m:
            m.setattr(containerlog, name, at)
            assert code_of(lambda: containerlog.parse_log(data)) is None, name
            m.setattr(containerlog, name, at - 1)
            assert code_of(lambda: containerlog.parse_log(data)) is Reason.CONTAINERLOG_MALFORMED, name


# --- policy and PCR YAML -------------------------------------------------------------------------


def nested(depth: int) -> str:
    """A key whose value nests `depth` - 1 flow sequences: with the root mapping, `depth` levels."""
    return "deep: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n"


def test_policy_size_holds_at_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = "version: 1\nname: sized\n"
    monkeypatch.setattr(policy, "MAX_POLICY_BYTES", len(doc))
    assert policy.load_policy(doc).name == "sized"
    monkeypatch.setattr(policy, "MAX_POLICY_BYTES", len(doc) - 1)
    with pytest.raises(ParseError, match="larger than") as e:
        policy.load_policy(doc)
    assert e.value.code is Reason.POLICY_INVALID


def test_policy_depth_holds_at_its_value_and_stops_reading_past_it() -> None:
    at = policy.MAX_POLICY_DEPTH
    # At the limit the document is composed, then judged by the schema (an unknown key).
    with pytest.raises(ParseError, match="unknown key") as e:
        policy.load_policy(nested(at))
    assert e.value.code is Reason.POLICY_INVALID
    # One past it is refused where the nesting is, before the YAML error further on is read.
    with pytest.raises(ParseError, match=f"line 1: nested deeper than {at} levels") as e:
        policy.load_policy(nested(at + 1) + "bad: [unclosed\n")
    assert e.value.code is Reason.POLICY_INVALID


def test_policy_aliases_are_refused_and_anchors_alone_are_fine() -> None:
    assert policy.load_policy("version: 1\nname: &n anchored\n").name == "anchored"
    with pytest.raises(ParseError, match="line 3: YAML aliases") as e:
        policy.load_policy("version: 1\nname: &n x\ncontainers: {images: [*n]}\n")
    assert e.value.code is Reason.POLICY_INVALID


def test_pcr_yaml_limits_hold_at_their_value(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pcrs.load_pcr_file(PCR_YAML)["sha256"][7] == b"\x11" * 32
    at = pcrs.MAX_PCR_YAML_DEPTH
    assert code_of(lambda: pcrs.parse_pcrread_yaml(nested(at))) is Reason.PCR_VALUES_MALFORMED
    with pytest.raises(ParseError, match=f"nested deeper than {at} levels"):
        pcrs.parse_pcrread_yaml(nested(at + 1))
    with pytest.raises(ParseError, match="YAML aliases"):
        pcrs.load_pcr_file(b"sha256: &a\n  0: 0x" + b"00" * 32 + b"\nsha1: *a\n")
    monkeypatch.setattr(pcrs, "MAX_PCR_FILE", len(PCR_YAML))
    assert code_of(lambda: pcrs.load_pcr_file(PCR_YAML)) is None
    monkeypatch.setattr(pcrs, "MAX_PCR_FILE", len(PCR_YAML) - 1)
    assert code_of(lambda: pcrs.load_pcr_file(PCR_YAML)) is Reason.PCR_VALUES_MALFORMED


# --- the wire ---------------------------------------------------------------------------------------


def test_base64_fields_hold_at_their_limit_and_refuse_long_text_undecoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decode = _b64_decoder(10)
    assert decode(base64.b64encode(bytes(10)).decode()) == bytes(10)
    with pytest.raises(ValueError, match="longer than 10 bytes"):
        decode(base64.b64encode(bytes(11)).decode())

    def never(*_: object, **__: object) -> bytes:
        raise AssertionError("decoded before the length was checked")

    monkeypatch.setattr(base64, "b64decode", never)
    with pytest.raises(ValueError, match="longer than 10 bytes"):
        decode("A" * 1000)


def test_compressed_uploads_are_refused_before_the_route(api: Api) -> None:
    review = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})
    for path, encoding in ((ADMISSION_PODS, "gzip"), ("/v1/nodes/worker-1/evidence", "deflate")):
        r = api.client.post(path, content=review, headers={"Content-Encoding": encoding})
        assert (r.status_code, r.json()["code"]) == (415, "unsupported_content_encoding")


def test_deeply_nested_json_is_a_400_not_a_500(api: Api) -> None:
    for path in (ADMISSION_NODES, "/v1/nodes/worker-1/evidence", "/v1/enroll"):
        r = api.client.post(path, content="[" * 100_000 + "]" * 100_000)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["code"] == "invalid_request"
