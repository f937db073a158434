"""The container launch log: one record per container a node started, and the PCR 23 fold.

Shared by the agent (which writes records and extends PCR 23) and the verifier (which replays
them), so it is pure Python with no TPM import. The format is documented in docs/containers.md.

A record is a JSON object in one canonical encoding (sorted keys, no whitespace, ASCII), one per
line. The line's bytes are what PCR 23 is extended with (each bank's hash of the line, without
its newline), so the verifier hashes exactly what it judges: there is no second encoding to
disagree with the first. Decoding insists on the canonical form, which also refuses duplicate
keys and any other spelling two JSON parsers might read differently.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from attest.errors import ParseError
from attest.reasons import Reason
from attest.tcg import extend, hash_alg, pcr_reset_value

CONTAINER_PCR = 23
RECORD_VERSION = 1
RUNTIMES = ("cri-o", "containerd", "oci")
# A sandbox ("pause") container has no container name in its pod: kubelet's name for it.
SANDBOX_CONTAINER = "POD"

MAX_LINE = 8 * 1024  # a valid record is under 2 KiB: the rest is margin, not a format limit
MAX_RECORDS = 100_000

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")  # runc's id alphabet, bounded
# OCI image-spec registered algorithms, lower-case hex of the right length.
DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
# Kubernetes names and image references are ASCII without blanks: anything else is not one.
_TOKEN = re.compile(r"^[\x21-\x7e]*$")
_LIMITS = {"pod": 253, "namespace": 63, "container": 63, "image": 1024}


class ContainerLogMalformed(ParseError):
    """A record or log that is not in the container log format."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.CONTAINERLOG_MALFORMED, message)


@dataclass(frozen=True)
class ContainerRecord:
    """What a node says it started. Every field is checked on construction, so a record that
    exists is one the format can carry."""

    time: str  # when the hook ran, UTC, second precision: the node's claim, not evidence
    container_id: str
    pod: str  # "" outside Kubernetes
    namespace: str
    container: str  # the container's name in its pod, SANDBOX_CONTAINER for the sandbox
    image: str  # the reference the runtime reports, as it reports it
    image_digest: str  # "sha256:hex" (or sha512) of the manifest; "" when the runtime did not say
    runtime: str  # one of RUNTIMES: where the fields came from

    def __post_init__(self) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), str):
                raise ContainerLogMalformed(f"{f.name} must be a string")
        if not _TIME.match(self.time):
            raise ContainerLogMalformed(f"time {self.time[:40]!r} is not YYYY-MM-DDTHH:MM:SSZ")
        try:
            dt.datetime.strptime(self.time, _TIME_FORMAT)
        except ValueError:
            raise ContainerLogMalformed(f"time {self.time!r} is not a date") from None
        if not _CONTAINER_ID.match(self.container_id):
            raise ContainerLogMalformed(f"container_id {self.container_id[:80]!r} is not a container id")
        for name, limit in _LIMITS.items():
            value = getattr(self, name)
            if len(value) > limit:
                raise ContainerLogMalformed(f"{name} is longer than {limit} characters")
            if not _TOKEN.match(value):
                raise ContainerLogMalformed(f"{name} {value[:80]!r} has characters outside printable ASCII")
        if self.image_digest and not DIGEST.match(self.image_digest):
            raise ContainerLogMalformed(
                f"image_digest {self.image_digest[:80]!r} is not sha256:HEX or sha512:HEX"
            )
        if self.runtime not in RUNTIMES:
            raise ContainerLogMalformed(f"runtime {self.runtime[:40]!r} is not one of {', '.join(RUNTIMES)}")

    @staticmethod
    def timestamp(when: dt.datetime) -> str:
        return when.astimezone(dt.UTC).strftime(_TIME_FORMAT)

    def to_json(self) -> dict[str, Any]:
        return {"v": RECORD_VERSION, **{f.name: getattr(self, f.name) for f in fields(self)}}

    def encode(self) -> bytes:
        """The canonical line, without its newline: the bytes PCR 23 is extended with."""
        return _canonical(self.to_json())

    @classmethod
    def decode(cls, line: bytes) -> ContainerRecord:
        """The record a canonical line encodes; ContainerLogMalformed for anything else."""
        if len(line) > MAX_LINE:
            raise ContainerLogMalformed(f"longer than {MAX_LINE} bytes")
        try:
            doc = json.loads(line.decode("ascii"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ContainerLogMalformed(f"not a JSON object in ASCII: {str(e)[:120]}") from None
        if not isinstance(doc, dict):
            raise ContainerLogMalformed("not a JSON object")
        version = doc.pop("v", None)
        if type(version) is not int or version != RECORD_VERSION:
            raise ContainerLogMalformed(f"v must be {RECORD_VERSION}, got {version!r:.40}")
        names = {f.name for f in fields(cls)}
        if set(doc) != names:
            missing, extra = sorted(names - set(doc)), sorted(set(doc) - names)
            parts = [f"missing {', '.join(missing)}"] if missing else []
            parts += [f"unknown {', '.join(k[:40] for k in extra[:5])}"] if extra else []
            raise ContainerLogMalformed("; ".join(parts))
        record = cls(**doc)
        if record.encode() != line:
            raise ContainerLogMalformed("not in canonical form (sorted keys, no whitespace, minimal escapes)")
        return record


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate key {key[:40]!r}")
        doc[key] = value
    return doc


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


@dataclass(frozen=True)
class ContainerEntry:
    """A record and where it sits in the log: `index` counts records from 0 (line index + 1)."""

    index: int
    record: ContainerRecord
    line: bytes  # the canonical encoding, as logged and extended

    def to_json(self) -> dict[str, Any]:
        doc = self.record.to_json()
        del doc["v"]
        return {"index": self.index, **doc}


def parse_log(data: bytes) -> tuple[ContainerEntry, ...]:
    """Every record of a log. Each line, the last one included, ends with a newline: a line
    without one was never completely written, so it cannot have been extended either."""
    if not data:
        return ()
    if not data.endswith(b"\n"):
        last, tail = data.count(b"\n") + 1, data.rsplit(b"\n", 1)[-1]
        raise ContainerLogMalformed(
            f"line {last}: no newline at the end ({len(tail)} bytes of an unfinished record)"
        )
    lines = data[:-1].split(b"\n")
    if len(lines) > MAX_RECORDS:
        raise ContainerLogMalformed(f"more than {MAX_RECORDS} records")
    entries = []
    for n, line in enumerate(lines):
        try:
            entries.append(ContainerEntry(n, ContainerRecord.decode(line), line))
        except ContainerLogMalformed as e:
            raise ContainerLogMalformed(f"line {n + 1}: {e.message}") from None
    return tuple(entries)


def fold(lines: Iterable[bytes], bank: str) -> list[bytes]:
    """PCR 23 of `bank` after each prefix of `lines`: element k is the value after k lines,
    starting from the reset value (zeros) at element 0."""
    h = hash_alg(bank)
    values = [pcr_reset_value(CONTAINER_PCR, h.size)]
    for line in lines:
        values.append(extend(h, values[-1], h.digest(line)))
    return values


def matching_prefix(lines: Sequence[bytes], target: Mapping[str, bytes]) -> int | None:
    """The longest prefix of `lines` whose fold equals `target` (bank -> PCR 23) in every bank,
    or None. Only one prefix can match unless SHA-2 collides, so longest is a formality."""
    common: set[int] | None = None
    for bank, value in target.items():
        hits = {k for k, v in enumerate(fold(lines, bank)) if v == value}
        common = hits if common is None else common & hits
        if not common:
            return None
    return max(common) if common else None
