"""Container launch log (attest.containerlog): one canonical JSON record per line.

A log that parses re-encodes line for line to the input, and folds in every bank.
"""

from __future__ import annotations

from attest import containerlog
from attest.errors import ParseError
from attest.reasons import Reason
from fuzz import expect_code


def one_input(data: bytes) -> None:
    try:
        entries = containerlog.parse_log(data)
    except ParseError as e:
        expect_code(e, Reason.CONTAINERLOG_MALFORMED)
        return
    assert b"".join(e.record.encode() + b"\n" for e in entries) == data
    lines = [e.line for e in entries]
    for bank in ("sha1", "sha256"):
        assert containerlog.matching_prefix(lines, {bank: containerlog.fold(lines, bank)[-1]}) == len(lines)
