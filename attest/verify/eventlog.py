"""The TCG PC Client boot event log: parse it, bind event data to digests, replay the PCRs.

Two formats exist (TCG PC Client Platform Firmware Profile, "PFP"):

- crypto-agile: a first event in the SHA-1 format (TCG_PCClientPCREvent) whose data is the
  "Spec ID Event03" header listing every digest algorithm and its size, then TCG_PCR_EVENT2
  events carrying one digest per listed algorithm;
- SHA-1: TCG_PCClientPCREvent events only (TPM 1.2 firmware, and TPM 2.0 firmware logging only SHA-1).

What a log proves, and what it does not: the TPM only holds the running hash of the digests,
so a replay that reproduces a quoted PCR proves the sequence of (PCR, digest) pairs. An event's
type and data are not covered by its digest; they are trusted only where the data hashes to the
digest (`Event.verified`). EV_NO_ACTION events are never extended and so prove nothing.

Parsing is bounded: the log, the number of events, every event's data and every count are
checked against fixed limits before anything is allocated, and every malformed input raises
ParseError(Reason.EVENTLOG_MALFORMED, "offset N: event I: what").
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any, ClassVar, Protocol

from attest.errors import ParseError
from attest.reasons import Reason
from attest.tcg import (
    PCR_COUNT,
    Alg,
    EventType,
    HashAlg,
    event_type_name,
    hash_alg,
    hash_alg_available,
    pcr_reset_value,
)
from attest.verify import efi

MAX_LOG_SIZE = 64 * 1024 * 1024
MAX_EVENTS = 100_000
MAX_EVENT_DATA = 16 * 1024 * 1024
# TPM 2.0 Part 2 HASH_COUNT is a handful; 16 leaves room without letting a header ask for millions.
MAX_ALGORITHMS = 16
# The largest TPMU_HA member (SHA-512, SHA3-512).
MAX_DIGEST_SIZE = 64

SPEC_ID_EVENT03 = b"Spec ID Event03\x00"
STARTUP_LOCALITY = b"StartupLocality\x00"
# PFP StartupLocality event: TPM2_Startup ran at locality 0 or 3; 4 records that an H-CRTM
# sequence (_TPM_Hash_Start) started PCR 0.
_STARTUP_LOCALITIES = (0, 3, 4)

_EV_NO_ACTION = int(EventType.EV_NO_ACTION)
_EV_EFI_VARIABLE_BOOT = int(EventType.EV_EFI_VARIABLE_BOOT)
_EV_IPL = int(EventType.EV_IPL)

_SHA1_HEADER = struct.Struct("<II20sI")
_AGILE_HEADER = struct.Struct("<III")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_SPEC_ID_FIXED = struct.Struct("<16sIBBBBI")
_ALG_SIZE = struct.Struct("<HH")


class LogFormat(enum.StrEnum):
    CRYPTO_AGILE = "crypto-agile"
    SHA1 = "sha1"


class Binding(enum.StrEnum):
    """What the PFP defines an event type's digest to cover."""

    DATA = "data"  # a hash of the event data: the data is trusted once it hashes to the digest
    DIGEST_ONLY = "digest-only"  # something not in the log (an image, firmware): judge the digest itself
    NONE = "none"  # never extended (EV_NO_ACTION): carries no trusted facts


class Coverage(enum.StrEnum):
    """Which bytes of the event data were found to hash to the digest in every bank."""

    EVENT_DATA = "event-data"
    # EV_EFI_VARIABLE_BOOT on firmware that hashes VariableData alone (EDK2 does):
    # the value is bound, the variable's name and GUID are not.
    VARIABLE_DATA = "variable-data"
    # EV_IPL from GRUB: the digest covers the command or command line after GRUB's label
    # ("grub_cmd: ", "kernel_cmdline: ", "module_cmdline: "), without the NUL; the label is not bound.
    GRUB_STRING = "grub-string"


_GRUB_LABELS = (b"grub_cmd: ", b"kernel_cmdline: ", b"module_cmdline: ")


def _grub_string(data: bytes) -> bytes | None:
    for label in _GRUB_LABELS:
        if data.startswith(label):
            body = data[len(label) :]
            return body[:-1] if body.endswith(b"\x00") else body
    return None


# PFP: the types whose digest is defined as a hash of the event data. Every other type either
# measures something outside the log (images, firmware volumes, tables) or is not defined well
# enough to claim more.
_DATA_BOUND = frozenset(
    int(t)
    for t in (
        EventType.EV_SEPARATOR,
        EventType.EV_ACTION,
        EventType.EV_EVENT_TAG,
        EventType.EV_S_CRTM_VERSION,
        EventType.EV_PLATFORM_CONFIG_FLAGS,
        EventType.EV_COMPACT_HASH,
        EventType.EV_IPL,
        EventType.EV_IPL_PARTITION_DATA,
        EventType.EV_NONHOST_INFO,
        EventType.EV_OMIT_BOOT_DEVICE_EVENTS,
        EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,
        EventType.EV_EFI_VARIABLE_BOOT,
        EventType.EV_EFI_VARIABLE_BOOT2,
        EventType.EV_EFI_VARIABLE_AUTHORITY,
        EventType.EV_EFI_GPT_EVENT,
        EventType.EV_EFI_GPT_EVENT2,
        EventType.EV_EFI_ACTION,
        EventType.EV_EFI_SPDM_FIRMWARE_CONFIG,
    )
)


def binding_of(event_type: int) -> Binding:
    """The PFP's definition of what an event type's digest covers; unknown types claim nothing."""
    if event_type == _EV_NO_ACTION:
        return Binding.NONE
    return Binding.DATA if event_type in _DATA_BOUND else Binding.DIGEST_ONLY


def _hasher(alg: HashAlg) -> Callable[[bytes], Any]:
    # The named constructors (hashlib.sha256) are much cheaper per call than hashlib.new(name).
    named: Callable[[bytes], Any] | None = getattr(hashlib, alg.hashlib_name, None)
    return named if named is not None else partial(hashlib.new, alg.hashlib_name)


@dataclass(frozen=True, slots=True)
class Bank:
    """A digest algorithm the log carries. `algorithm` is None when it cannot be computed here:
    its digests are parsed by the declared size, but the bank can neither be replayed nor checked."""

    alg_id: int
    name: str
    size: int
    algorithm: HashAlg | None
    # The hashlib constructor for `algorithm`, resolved once: replay and the binding checks
    # call it for every event.
    new: Callable[[bytes], Any] | None = field(default=None, repr=False, compare=False)

    @property
    def replayable(self) -> bool:
        return self.algorithm is not None


def _bank(alg_id: int, size: int) -> Bank | None:
    """The bank for a header entry; None when a known algorithm is declared with a wrong size."""
    try:
        known = hash_alg(alg_id)
    except KeyError:
        return Bank(alg_id, f"alg_0x{alg_id:04x}", size, None)
    if known.size != size:
        return None
    if not hash_alg_available(known):
        return Bank(alg_id, known.name, size, None)
    return Bank(alg_id, known.name, size, known, _hasher(known))


_SHA1 = hash_alg(Alg.SHA1)
_SHA1_BANK = Bank(Alg.SHA1, _SHA1.name, _SHA1.size, _SHA1, _hasher(_SHA1))


@dataclass(frozen=True)
class SpecIdEvent(efi.Decoded):
    """TCG_EfiSpecIDEventStruct: the crypto-agile log header."""

    kind: ClassVar[str] = "spec_id_event"
    platform_class: int
    spec_version: str
    uintn_size: int
    algorithms: tuple[tuple[str, int], ...]  # (bank name, digest size)
    vendor_info: bytes


@dataclass(frozen=True)
class StartupLocality(efi.Decoded):
    """TCG_EfiStartupLocalityEvent: the locality of TPM2_Startup, which is PCR 0's initial value."""

    kind: ClassVar[str] = "startup_locality"
    locality: int


@dataclass(frozen=True)
class NoActionEvent(efi.Decoded):
    """Any other EV_NO_ACTION: a 16-byte signature and its data, informational only."""

    kind: ClassVar[str] = "no_action"
    signature: str
    data: bytes


@dataclass(frozen=True)
class Event:
    """One log entry. `type` and `data` are whatever the log says; only `verified` data is bound."""

    index: int
    offset: int
    pcr: int
    type: int
    digests: Mapping[str, bytes]
    data: bytes
    banks: tuple[Bank, ...] = field(repr=False, compare=False)

    @property
    def type_name(self) -> str:
        return event_type_name(self.type)

    @property
    def binding(self) -> Binding:
        return binding_of(self.type)

    @cached_property
    def coverage(self) -> Coverage | None:
        """What part of the data hashes to the digest in every computable bank, None if none does."""
        if self.type == _EV_NO_ACTION:
            return None
        checks = [(b.new, self.digests[b.name]) for b in self.banks if b.new is not None]
        if not checks:
            return None

        def binds(data: bytes) -> bool:
            return all(new(data).digest() == digest for new, digest in checks)

        if binds(self.data):
            return Coverage.EVENT_DATA
        if self.type == _EV_EFI_VARIABLE_BOOT:
            header = efi.variable_header(self.data)
            if (
                header is not None
                and header.start + header.size == len(self.data)
                and binds(self.data[header.start :])
            ):
                return Coverage.VARIABLE_DATA
        elif self.type == _EV_IPL:
            command = _grub_string(self.data)
            if command is not None and binds(command):
                return Coverage.GRUB_STRING
        return None

    @property
    def verified(self) -> bool:
        """True only when the data (or, see `coverage`, the variable's value) is bound to the digest."""
        return self.coverage is not None

    @cached_property
    def decoded(self) -> efi.Decoded | None:
        if self.type == _EV_NO_ACTION:
            return _decode_no_action(self.data)
        return efi.decode(self.type, self.data)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pcr": self.pcr,
            "type": self.type_name,
            "digests": {name: d.hex() for name, d in self.digests.items()},
            "data": self.data.hex(),
            "decoded": None if self.decoded is None else self.decoded.to_json(),
            "binding": self.binding.value,
            "verified": self.verified,
            "coverage": None if self.coverage is None else self.coverage.value,
        }


# One parsed event before it becomes an Event: (offset, pcr, type, digests in the order of
# EventLog.banks, data start, data end). Parsing and replay work on these alone; Event objects,
# with their decoding and binding checks, are made only when someone looks at the events.
Record = tuple[int, int, int, tuple[bytes, ...], int, int]


@dataclass(frozen=True)
class EventLog:
    format: LogFormat
    banks: tuple[Bank, ...]  # the banks the events carry
    spec_id: SpecIdEvent | None  # the crypto-agile header; None for a SHA-1 log
    startup_locality: int | None  # from the StartupLocality event, None when the log has none
    raw: bytes = field(repr=False, compare=False)
    records: tuple[Record, ...] = field(repr=False)

    def bank(self, name: str) -> Bank | None:
        return next((b for b in self.banks if b.name == name), None)

    @cached_property
    def events(self) -> tuple[Event, ...]:
        names = [b.name for b in self.banks]
        header_names = ["sha1"] if self.format is LogFormat.CRYPTO_AGILE else names
        raw, banks = self.raw, self.banks
        return tuple(
            Event(
                i,
                off,
                pcr,
                etype,
                dict(zip(names if i else header_names, digests, strict=True)),
                raw[a:b],
                banks,
            )
            for i, (off, pcr, etype, digests, a, b) in enumerate(self.records)
        )


# --- parsing -------------------------------------------------------------------------------


def _malformed(offset: int, index: int, what: str) -> ParseError:
    return ParseError(Reason.EVENTLOG_MALFORMED, f"offset {offset}: event {index}: {what}")


def _spec_id(data: bytes, offset: int) -> tuple[SpecIdEvent, tuple[Bank, ...]]:
    """Parse the Spec ID Event03 header strictly: it decides how every later byte is framed."""
    if len(data) < _SPEC_ID_FIXED.size:
        raise _malformed(offset, 0, f"Spec ID event of {len(data)} bytes is truncated")
    _sig, platform, minor, major, errata, uintn, count = _SPEC_ID_FIXED.unpack_from(data)
    if not 0 < count <= MAX_ALGORITHMS:
        raise _malformed(offset, 0, f"Spec ID event lists {count} algorithms (1 to {MAX_ALGORITHMS} allowed)")
    pos = _SPEC_ID_FIXED.size
    end = pos + _ALG_SIZE.size * count
    if len(data) < end + 1:
        raise _malformed(offset, 0, f"Spec ID event of {len(data)} bytes cannot hold {count} algorithms")
    banks: list[Bank] = []
    for alg_id, size in _ALG_SIZE.iter_unpack(data[pos:end]):
        if any(b.alg_id == alg_id for b in banks):
            raise _malformed(offset, 0, f"Spec ID event lists algorithm 0x{alg_id:04x} twice")
        if not 0 < size <= MAX_DIGEST_SIZE:
            raise _malformed(offset, 0, f"Spec ID event: algorithm 0x{alg_id:04x} has digest size {size}")
        bank = _bank(alg_id, size)
        if bank is None:
            raise _malformed(
                offset, 0, f"Spec ID event: {hash_alg(alg_id).name} declared with {size}-byte digests"
            )
        banks.append(bank)
    vendor_size = data[end]
    pos = end + 1
    # Decision (docs/eventlog.md): vendorInfo must lie inside the event. When vendorInfoSize runs
    # past it, either eventSize or vendorInfoSize lies, the bytes after the header have two
    # readings, and parsers that pick differently would be shown different logs.
    if pos + vendor_size != len(data):
        raise _malformed(
            offset,
            0,
            f"Spec ID event: vendorInfoSize {vendor_size} with {len(data) - pos} bytes left in the event",
        )
    header = SpecIdEvent(
        platform,
        f"{major}.{minor}.{errata}",
        uintn,
        tuple((b.name, b.size) for b in banks),
        bytes(data[pos:]),
    )
    return header, tuple(banks)


def _decode_no_action(data: bytes) -> efi.Decoded:
    signature = data[:16]
    if signature == SPEC_ID_EVENT03:
        try:
            return _spec_id(data, 0)[0]
        except ParseError as e:
            return efi.Undecodable(e.message)
    if signature == STARTUP_LOCALITY and len(data) == 17:
        return StartupLocality(data[16])
    return NoActionEvent(signature.rstrip(b"\x00").decode("ascii", errors="replace"), data[16:])


def parse(raw: bytes | bytearray | memoryview) -> EventLog:
    """Parse a binary event log (as /sys/kernel/security/tpm0/binary_bios_measurements holds it)."""
    n = len(raw)
    if n > MAX_LOG_SIZE:
        raise _malformed(0, 0, f"log of {n} bytes exceeds the {MAX_LOG_SIZE}-byte limit")
    if n == 0:
        raise _malformed(0, 0, "empty log")
    buf = bytes(raw)
    records, end = _sha1_records(buf, 0, 1)
    _off, _pcr, etype, _digests, start, _end = records[0]
    if etype == _EV_NO_ACTION and buf[start : start + 16] == SPEC_ID_EVENT03:
        spec_id, header_banks = _spec_id(buf[start:end], 0)
        banks, more = _agile_records(buf, end, header_banks)
        records += more
        fmt = LogFormat.CRYPTO_AGILE
    else:
        spec_id = None
        banks = (_SHA1_BANK,)
        records, end = _sha1_records(buf, 0, MAX_EVENTS)
        if end < n:
            raise _malformed(end, MAX_EVENTS, f"more than {MAX_EVENTS} events")
        fmt = LogFormat.SHA1
    return EventLog(fmt, banks, spec_id, _startup_locality(buf, records), buf, tuple(records))


def _check_event(off: int, index: int, pcr: int, etype: int, *, size: int, left: int) -> None:
    """Raise if the event's PCR index or size is impossible (the hot loops test cheaply first)."""
    if pcr >= PCR_COUNT and etype != _EV_NO_ACTION:
        raise _malformed(off, index, f"PCR index {pcr} is out of range")
    if size > MAX_EVENT_DATA:
        raise _malformed(off, index, f"event size {size} exceeds the {MAX_EVENT_DATA}-byte limit")
    if size > left:
        raise _malformed(off, index, f"event size {size} runs past the end of the log ({left} bytes left)")


def _sha1_records(buf: bytes, off: int, limit: int) -> tuple[list[Record], int]:
    """Up to `limit` TCG_PCClientPCREvent events from `off`, and the offset where reading stopped."""
    records: list[Record] = []
    n = len(buf)
    header = _SHA1_HEADER.unpack_from
    hsize = _SHA1_HEADER.size
    while off < n and len(records) < limit:
        if n - off < hsize:
            raise _malformed(off, len(records), f"header needs {hsize} bytes, {n - off} left")
        pcr, etype, digest, size = header(buf, off)
        start = off + hsize
        end = start + size
        if (pcr >= PCR_COUNT and etype != _EV_NO_ACTION) or size > MAX_EVENT_DATA or end > n:
            _check_event(off, len(records), pcr, etype, size=size, left=n - start)
        records.append((off, pcr, etype, (digest,), start, end))
        off = end
    return records, off


def _agile_digests(
    buf: bytes, off: int, index: int, banks: tuple[Bank, ...], exact: bool
) -> tuple[int, int, dict[int, bytes], int]:
    """(pcr, type, {alg_id: digest}, offset of eventSize) of one TCG_PCR_EVENT2, read field by field."""
    n = len(buf)
    if n - off < _AGILE_HEADER.size:
        raise _malformed(off, index, f"header needs {_AGILE_HEADER.size} bytes, {n - off} left")
    pcr, etype, count = _AGILE_HEADER.unpack_from(buf, off)
    if count != len(banks) if exact else not 0 < count <= len(banks):
        raise _malformed(off, index, f"{count} digests where {len(banks)} banks are in use")
    sizes = {b.alg_id: b for b in banks}
    pos = off + _AGILE_HEADER.size
    digests: dict[int, bytes] = {}
    for _ in range(count):
        if n - pos < 2:
            raise _malformed(off, index, "digest algorithm truncated")
        alg_id = _U16.unpack_from(buf, pos)[0]
        bank = sizes.get(alg_id)
        if bank is None:
            raise _malformed(off, index, f"digest algorithm 0x{alg_id:04x} is not a bank of this log")
        if alg_id in digests:
            raise _malformed(off, index, f"two {bank.name} digests")
        pos += 2
        if n - pos < bank.size:
            raise _malformed(off, index, f"{bank.name} digest truncated")
        digests[alg_id] = buf[pos : pos + bank.size]
        pos += bank.size
    if n - pos < 4:
        raise _malformed(off, index, "event size truncated")
    return pcr, etype, digests, pos


def _agile_records(
    buf: bytes, off: int, header_banks: tuple[Bank, ...]
) -> tuple[tuple[Bank, ...], list[Record]]:
    """The TCG_PCR_EVENT2 events after the header, and the banks they carry.

    The header lists every algorithm the firmware supports; the events carry the active banks.
    Every event must carry the same banks, since the firmware extends every active bank with
    every measurement: a bank missing from some event could not be replayed. Events whose
    digests come in the usual order are read with one precompiled struct."""
    records: list[Record] = []
    n = len(buf)
    banks = header_banks
    fast: struct.Struct | None = None
    alg_ids: tuple[int, ...] = ()
    index = 1
    while off < n:
        if index >= MAX_EVENTS:
            raise _malformed(off, index, f"more than {MAX_EVENTS} events")
        if fast is not None and n - off >= fast.size:
            fields = fast.unpack_from(buf, off)
            if fields[2] == len(alg_ids) and fields[3:-1:2] == alg_ids:
                pcr, etype = fields[0], fields[1]
                digests: tuple[bytes, ...] = fields[4:-1:2]
                start = off + fast.size
                end = start + fields[-1]
                if (pcr >= PCR_COUNT and etype != _EV_NO_ACTION) or fields[-1] > MAX_EVENT_DATA or end > n:
                    _check_event(off, index, pcr, etype, size=fields[-1], left=n - start)
                records.append((off, pcr, etype, digests, start, end))
                off = end
                index += 1
                continue
        pcr, etype, by_alg, pos = _agile_digests(buf, off, index, banks, exact=fast is not None)
        if fast is None:
            banks = tuple(b for b in header_banks if b.alg_id in by_alg)
            alg_ids = tuple(b.alg_id for b in banks)
            fast = struct.Struct("<III" + "".join(f"H{b.size}s" for b in banks) + "I")
        size = _U32.unpack_from(buf, pos)[0]
        start = pos + 4
        _check_event(off, index, pcr, etype, size=size, left=n - start)
        records.append((off, pcr, etype, tuple(by_alg[a] for a in alg_ids), start, start + size))
        off = start + size
        index += 1
    return banks, records


def _startup_locality(buf: bytes, records: Sequence[Record]) -> int | None:
    """PCR 0's starting locality. The event must come before any PCR 0 extension and appear once:
    a locality announced after PCR 0 moved, or twice, has no single meaning."""
    locality: int | None = None
    pcr0_extended = False
    for index, (off, pcr, etype, _digests, start, end) in enumerate(records):
        if etype != _EV_NO_ACTION:
            pcr0_extended = pcr0_extended or pcr == 0
            continue
        if buf[start : start + 16] != STARTUP_LOCALITY:
            continue
        if end - start != 17 or pcr != 0:
            raise _malformed(off, index, f"StartupLocality event of {end - start} bytes on PCR {pcr}")
        if locality is not None:
            raise _malformed(off, index, "a second StartupLocality event")
        if pcr0_extended:
            raise _malformed(off, index, "StartupLocality event after PCR 0 was extended")
        if buf[start + 16] not in _STARTUP_LOCALITIES:
            raise _malformed(off, index, f"StartupLocality {buf[start + 16]} (0, 3 or 4 expected)")
        locality = buf[start + 16]
    return locality


# --- replay --------------------------------------------------------------------------------


class Extend(Protocol):
    """One PCR extension in every bank: a logged event, or one a workaround knows was unlogged."""

    @property
    def pcr(self) -> int: ...

    @property
    def digests(self) -> Mapping[str, bytes]: ...


@dataclass(frozen=True, slots=True)
class Measurement:
    """An extension the firmware made without logging it, supplied by a named workaround."""

    pcr: int
    digests: Mapping[str, bytes]
    reason: str


class Workaround(Protocol):
    """A named, documented firmware bug that explains a replay mismatch (see attest.verify.workarounds)."""

    @property
    def name(self) -> str: ...

    @property
    def pcrs(self) -> frozenset[int]:
        """The PCRs the workaround can change, so a mismatch elsewhere never tries it."""
        ...

    def rewrite(self, log: EventLog, extends: Sequence[Extend]) -> Sequence[Extend] | None:
        """The extensions as the firmware really made them, or None when the bug's symptom is absent."""
        ...


@dataclass(frozen=True)
class Replay:
    """PCR values a log reproduces: every PCR 0-23 of every replayable bank."""

    pcrs: Mapping[str, Mapping[int, bytes]]
    workarounds: tuple[str, ...] = ()
    unreplayable: tuple[str, ...] = ()  # banks the log carries whose algorithm is unknown here

    def mismatches(self, quoted: Mapping[str, Mapping[int, bytes]]) -> list[tuple[str, int]]:
        """(bank, PCR) pairs whose quoted value the replay does not reproduce, including any
        bank the replay lacks."""
        bad = []
        for bank, values in quoted.items():
            replayed = self.pcrs.get(bank)
            for index, value in sorted(values.items()):
                if replayed is None or replayed.get(index) != value:
                    bad.append((bank, index))
        return bad

    def to_json(self) -> dict[str, Any]:
        return {
            "pcrs": {
                bank: {str(i): v.hex() for i, v in values.items()} for bank, values in self.pcrs.items()
            },
            "workarounds": list(self.workarounds),
        }


def replay(
    log: EventLog, workarounds: Sequence[Workaround] = (), banks: Collection[str] | None = None
) -> Replay:
    """Recompute every PCR from the log. Each workaround is applied only when its symptom is
    present in this log, and the names of those applied are reported in the result.

    `banks` limits the work to the named banks (an appraisal needs only the quoted ones);
    by default every bank the log carries is replayed."""
    steps: list[tuple[int, tuple[bytes, ...]]] = [(r[1], r[3]) for r in log.records if r[2] != _EV_NO_ACTION]
    applied = []
    if workarounds:
        extends: Sequence[Extend] = [e for e in log.events if e.type != _EV_NO_ACTION]
        for w in workarounds:
            rewritten = w.rewrite(log, extends)
            if rewritten is not None:
                extends = rewritten
                applied.append(w.name)
        if applied:
            steps = [(e.pcr, tuple(e.digests.get(b.name, b"") for b in log.banks)) for e in extends]
    pcrs: dict[str, dict[int, bytes]] = {}
    for k, bank in enumerate(log.banks):
        new = bank.new
        if new is None or (banks is not None and bank.name not in banks):
            continue
        values = [pcr_reset_value(i, bank.size) for i in range(PCR_COUNT)]
        if log.startup_locality:
            values[0] = bytes(bank.size - 1) + bytes((log.startup_locality,))
        for pcr, digests in steps:
            values[pcr] = new(values[pcr] + digests[k]).digest()
        pcrs[bank.name] = dict(enumerate(values))
    unreplayable = tuple(b.name for b in log.banks if b.algorithm is None)
    return Replay(pcrs, tuple(applied), unreplayable)
