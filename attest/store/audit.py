"""The audit trail's hash chain: how a record's hash is computed, and how a chain is checked.

Pure functions, no database: `attestctl audit verify` runs them on an export, offline.

Each record's hash is SHA-256 over the canonical JSON (sorted keys, no whitespace, ASCII) of
{seq, at, kind, subject, data, prev}, `at` in UTC as 2024-01-31T12:00:00.000000Z and `prev` the
previous record's hash ("" for the first). Editing a record breaks its hash; removing one
leaves a gap in seq and a `prev` that no longer matches; reordering breaks seq order and
`prev`. The chain alone cannot show a record removed from the end, nor a chain rewritten
whole by someone who can write the database: compare the head against one noted elsewhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from attest.store.api import AuditRecord


def canonical_json(value: Any) -> str:
    """One spelling per value: the bytes every verifier, in any language, hashes the same."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def timestamp(at: dt.datetime) -> str:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"naive datetime {at.isoformat()}: audit timestamps must be time-zone aware")
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Positional, in the order the record lists its fields, as verifiers in other languages will.
def record_hash(  # noqa: PLR0917
    seq: int, at: dt.datetime, kind: str, subject: str, data: Mapping[str, Any], prev: str
) -> str:
    doc = {"seq": seq, "at": timestamp(at), "kind": kind, "subject": subject, "data": data, "prev": prev}
    return hashlib.sha256(canonical_json(doc).encode("ascii")).hexdigest()


def make_record(  # noqa: PLR0917
    seq: int, at: dt.datetime, kind: str, subject: str, data: Mapping[str, Any], prev: str
) -> AuditRecord:
    """The record as it will read back: data goes through JSON once, so a tuple is already a
    list and the hash is over exactly what the database will return."""
    plain = json.loads(canonical_json(data))
    if not isinstance(plain, dict):
        raise TypeError("audit data must be a JSON object")
    at = at.astimezone(dt.UTC)
    return AuditRecord(seq, at, kind, subject, plain, prev, record_hash(seq, at, kind, subject, plain, prev))


def verify_chain(records: Iterable[AuditRecord]) -> list[str]:
    """Every problem in the chain, in order; an empty list means intact.

    `records` is the whole trail in the order it was read (by seq), streamed once. A record
    whose hash is wrong is reported and the next one is still checked against the hash it
    carries, so one edit is one problem and not a cascade.
    """
    problems: list[str] = []
    previous: AuditRecord | None = None
    for record in records:
        try:
            expected = record_hash(
                record.seq, record.at, record.kind, record.subject, record.data, record.prev
            )
        except (TypeError, ValueError) as e:
            problems.append(f"record {record.seq}: cannot be hashed ({e}): edited")
        else:
            if expected != record.hash:
                problems.append(f"record {record.seq}: hash does not match its content: edited")
        if previous is None:
            if record.seq != 1:
                problems.append(f"record {record.seq}: the trail starts at seq {record.seq}, not 1: removed")
            if record.prev != "":
                problems.append(f"record {record.seq}: first record must have an empty prev")
        else:
            if record.seq <= previous.seq:
                problems.append(f"record {record.seq}: comes after record {previous.seq}: reordered")
            elif record.seq != previous.seq + 1:
                missing = f"{previous.seq + 1}" + (
                    f"..{record.seq - 1}" if record.seq - 1 > previous.seq + 1 else ""
                )
                problems.append(f"record {record.seq}: record(s) {missing} missing: removed")
            if record.prev != previous.hash:
                problems.append(f"record {record.seq}: prev does not match record {previous.seq}'s hash")
        previous = record
    return problems
