"""The Linux IMA measurement list, verifier side: parse, check template hashes, replay PCR 10.

IMA appends one entry per measurement and extends a PCR (10 unless the IMA policy says
otherwise) with it. An entry is (PCR, template hash, template name, template data); the
template data is a list of fields (file digest, file name, signature, buffer...) and the
template hash is the hash of that data. The kernel exports the list twice:
`binary_runtime_measurements` (authoritative, length-prefixed) and
`ascii_runtime_measurements` (one line per entry, fields printed as text). Both parse here,
detected automatically, into the same `ImaEntry` values.

What a list proves: only the PCR value is in the TPM, so an entry is proven when the list
replays to a quoted PCR value (`match_quote`) and its template hash is the hash of its data
(checked by `match_quote` and `replay` before anything is extended). A violation entry
(all-zero template hash, written when a file was measured while open for writing) extends
the PCR with all ones and binds none of its data: its fields are never evidence of anything.

Use, per attestation round: `parse` what the agent sent, `match_quote` against the quoted
IMA PCRs (resuming from the previous round's `ReplayState`), then on the first round
`verify_boot_aggregate`, and on the accepted entries only, signatures (`attest.verify.imasig`)
and policy. docs/ima.md has the rules and the kernel facts behind them.

Parsing is bounded (`Limits`): every length is checked against the limits and the bytes left
before anything is sliced, and malformed input raises
ParseError(Reason.IMA_MALFORMED, "line N: what" / "offset N: entry I: what").
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from functools import lru_cache, partial
from typing import Any, Protocol

from attest.errors import ParseError, VerificationError
from attest.reasons import Reason
from attest.tcg import PCR_COUNT, hash_alg, hash_alg_available, pcr_reset_value

IMA_PCR = 10
BOOT_AGGREGATE = "boot_aggregate"
# The banks a TPM 2.0 usually has; sm3_256 can be asked for where OpenSSL has SM3.
DEFAULT_BANKS: tuple[str, ...] = ("sha1", "sha256", "sha384", "sha512")

# PCR extend rules for the non-SHA-1 banks (docs/ima.md, "Replay"):
# Linux >= 5.8 extends each bank with that bank's hash of the template data;
BANK_HASH = "bank-hash"
# before 5.8, and for banks whose algorithm the kernel has no hash for, every bank gets the
# SHA-1 template hash padded with zeros to the bank's size.
PADDED_SHA1 = "padded-sha1"
VARIANTS = (BANK_HASH, PADDED_SHA1)

# boot_aggregate rules (docs/ima.md, "boot_aggregate").
BOOT_AGGREGATE_SHA1 = "sha1-pcr0-7"
BOOT_AGGREGATE_AGILE = "pcr0-9"

# IMA_EVENT_NAME_LEN_MAX: the legacy `ima` template truncates names to 255 bytes and hashes
# them NUL-padded to 256.
_IMA_NAME_MAX = 255
_LEGACY_DIGEST_SIZE = 20
# IMA_DIGEST_SIZE: a violation's d-ng field holds 20 zero bytes whatever its algorithm prefix.
_VIOLATION_DIGEST = bytes(_LEGACY_DIGEST_SIZE)

# d-ng algorithm prefixes as the kernel spells them (crypto/hash_info.c), plus keylime's
# "sm3_256", mapped to one name and the digest size. md5 and the other legacy hashes are
# deliberately absent: a file digest in them is not evidence.
_FILE_DIGEST_ALGS: dict[bytes, tuple[str, int]] = {
    b"sha1": ("sha1", 20),
    b"sha224": ("sha224", 28),
    b"sha256": ("sha256", 32),
    b"sha384": ("sha384", 48),
    b"sha512": ("sha512", 64),
    b"sm3": ("sm3_256", 32),
    b"sm3-256": ("sm3_256", 32),
    b"sm3_256": ("sm3_256", 32),
    b"sha3-256": ("sha3_256", 32),
    b"sha3-384": ("sha3_384", 48),
    b"sha3-512": ("sha3_512", 64),
}
# The spelling current kernels write for each name above.
_KERNEL_ALG_NAMES: dict[str, bytes] = {
    "sha1": b"sha1",
    "sha224": b"sha224",
    "sha256": b"sha256",
    "sha384": b"sha384",
    "sha512": b"sha512",
    "sm3_256": b"sm3",
    "sha3_256": b"sha3-256",
    "sha3_384": b"sha3-384",
    "sha3_512": b"sha3-512",
}

# Template-hash algorithms by digest size; 32 bytes is SHA-256 or SM3, told apart by hashing.
_TEMPLATE_HASH_ALGS: dict[int, tuple[str, ...]] = {
    20: ("sha1",),
    32: ("sha256", "sm3_256"),
    48: ("sha384",),
    64: ("sha512",),
}

# Field kinds: how a field is printed in the ASCII list and what its bytes hold.
_LEGACY_DIGEST = "legacy-digest"  # d: 20 bytes, no algorithm prefix
_DIGEST = "digest"  # d-ng and friends: b"<alg>:\0" + digest
_STRING = "string"  # NUL-terminated text
_HEX = "hex"  # opaque bytes, printed as hex
_UINT = "uint"  # host-endian integer, printed in decimal (not reversible)

_FIELD_KINDS: dict[str, str] = {
    "d": _LEGACY_DIGEST,
    "n": _STRING,
    "d-ng": _DIGEST,
    "d-ngv2": _DIGEST,
    "d-modsig": _DIGEST,
    "n-ng": _STRING,
    "sig": _HEX,
    "buf": _HEX,
    "modsig": _HEX,
    "evmsig": _HEX,
    "xattrnames": _STRING,
    "xattrlengths": _HEX,
    "xattrvalues": _HEX,
    "iuid": _UINT,
    "igid": _UINT,
    "imode": _UINT,
}
# The kernel's built-in templates (security/integrity/ima/ima_template.c). A template set
# with ima_template_fmt= is named by its format string, e.g. "d-ng|n-ng|sig".
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "ima": ("d", "n"),
    "ima-ng": ("d-ng", "n-ng"),
    "ima-ngv2": ("d-ngv2", "n-ng"),
    "ima-sig": ("d-ng", "n-ng", "sig"),
    "ima-sigv2": ("d-ngv2", "n-ng", "sig"),
    "ima-buf": ("d-ng", "n-ng", "buf"),
    "ima-modsig": ("d-ng", "n-ng", "sig", "d-modsig", "modsig"),
    "evm-sig": (
        "d-ng",
        "n-ng",
        "evmsig",
        "xattrnames",
        "xattrlengths",
        "xattrvalues",
        "iuid",
        "igid",
        "imode",
    ),
}
_TEMPLATE_HASH_SIZES = tuple(sorted(_TEMPLATE_HASH_ALGS))
_TEMPLATE_NAME_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_|")

_U32LE = struct.Struct("<I")
_U32BE = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds on what a parser accepts, checked before anything is allocated."""

    max_bytes: int = 256 * 1024 * 1024
    max_entries: int = 2_000_000
    # Larger than any field the kernel writes (certificates in ima-buf, kexec command lines,
    # signatures); an entry claiming more is hostile or corrupt.
    max_template_data: int = 1024 * 1024
    max_fields: int = 64
    max_template_name: int = 255


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class ImaEntry:
    """One measurement. `template_data` is the kernel's serialization, as the binary list
    carries it; `fields` are the template's fields. `digest_alg`, `digest` and `path` decode
    the first digest and name fields of a known template (parsing validated them)."""

    index: int
    pcr: int
    template: str
    template_hash: bytes
    template_data: bytes
    fields: tuple[bytes, ...]
    violation: bool  # an all-zero template hash: nothing in the entry is bound

    @property
    def field_ids(self) -> tuple[str, ...] | None:
        return _layout(self.template).ids

    @property
    def digest_alg(self) -> str | None:
        decoded = self._digest()
        return decoded[0] if decoded else None

    @property
    def digest(self) -> bytes | None:
        decoded = self._digest()
        return decoded[1] if decoded else None

    def _digest(self) -> tuple[str, bytes] | None:
        layout = _layout(self.template)
        if layout.ids is None or layout.digest_at < 0:
            return None
        return _decode_digest(self.fields[layout.digest_at], layout.ids[layout.digest_at])

    @property
    def path(self) -> str | None:
        """The file name (or buffer name); bytes that are not UTF-8 survive as surrogates."""
        layout = _layout(self.template)
        if layout.name_at < 0:
            return None
        return self.fields[layout.name_at][:-1].decode("utf-8", "surrogateescape")

    def field(self, field_id: str) -> bytes | None:
        """The data of a template field by id ("sig", "buf", "d-modsig"...), None if absent."""
        ids = self.field_ids
        if ids is None or field_id not in ids:
            return None
        return self.fields[ids.index(field_id)]

    @property
    def sig(self) -> bytes | None:
        return self.field("sig")

    @property
    def buf(self) -> bytes | None:
        return self.field("buf")


# Parsers build hundreds of thousands of entries. The frozen dataclass __init__ sets each slot
# through object.__setattr__; calling the slot descriptors directly does the same in half the
# time. The names are checked against the dataclass so a new field cannot be left unset.
_ENTRY_FIELDS = ("index", "pcr", "template", "template_hash", "template_data", "fields", "violation")
if tuple(f.name for f in dataclass_fields(ImaEntry)) != _ENTRY_FIELDS:
    raise RuntimeError("_new_entry is out of step with ImaEntry")
_set_index, _set_pcr, _set_template, _set_hash, _set_data, _set_fields, _set_violation = (
    ImaEntry.__dict__[name].__set__ for name in _ENTRY_FIELDS
)


def _new_entry(  # noqa: PLR0917 - the dataclass's own constructor order
    index: int, pcr: int, template: str, th: bytes, data: bytes, fields: tuple[bytes, ...], violation: bool
) -> ImaEntry:
    entry: ImaEntry = object.__new__(ImaEntry)
    _set_index(entry, index)
    _set_pcr(entry, pcr)
    _set_template(entry, template)
    _set_hash(entry, th)
    _set_data(entry, data)
    _set_fields(entry, fields)
    _set_violation(entry, violation)
    return entry


@dataclass(frozen=True, slots=True)
class ImaLog:
    """A parsed list or fragment of one. `first_index` is the position of its first entry in
    the machine's whole list; `template_hash_alg` is the algorithm of the stored template
    hashes (SHA-1 except in the per-bank lists of Linux >= 6.10)."""

    entries: tuple[ImaEntry, ...]
    format: str
    template_hash_alg: str
    first_index: int = 0
    # Bytes of a last record cut off mid-way, left unparsed (only with allow_partial_tail).
    unparsed_tail: int = 0


@dataclass(frozen=True, slots=True)
class ReplayState:
    """Where a replay stands: `offset` entries of the machine's list consumed, the running
    value of every PCR they touched per bank (absent PCRs are at their reset value), and the
    extend rule established for each non-SHA-1 bank. Persist it between attestation rounds
    (`to_json`) so the next round replays only the new entries."""

    offset: int = 0
    pcrs: Mapping[str, Mapping[int, bytes]] = field(default_factory=dict)
    variants: Mapping[str, str] = field(default_factory=dict)

    def value(self, bank: str, pcr: int) -> bytes:
        held = self.pcrs.get(bank, {}).get(pcr)
        return held if held is not None else pcr_reset_value(pcr, _bank_size(bank))

    def to_json(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "pcrs": {b: {str(p): v.hex() for p, v in sorted(vs.items())} for b, vs in self.pcrs.items()},
            "variants": dict(self.variants),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ReplayState:
        try:
            offset = int(doc["offset"])
            pcrs = {
                str(bank): {int(p): bytes.fromhex(v) for p, v in values.items()}
                for bank, values in doc["pcrs"].items()
            }
            variants = {str(b): str(v) for b, v in doc.get("variants", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a stored IMA replay state: {e}") from None
        for bank, values in pcrs.items():
            size = _bank_size(bank)
            if any(not 0 <= p < PCR_COUNT or len(v) != size for p, v in values.items()):
                raise ValueError(f"not a stored IMA replay state: bad {bank} PCR value")
        if offset < 0 or any(v not in VARIANTS for v in variants.values()):
            raise ValueError("not a stored IMA replay state: bad offset or variant")
        return cls(offset, pcrs, variants)


@dataclass(frozen=True, slots=True)
class QuoteMatch:
    """The outcome of the longer-than-quote rule: `accepted` entries are proven by the quote
    and may be used for policy; `pending` ones were logged after the quote was taken and are
    ignored until a later quote covers them; `state` resumes the next round."""

    accepted: tuple[ImaEntry, ...]
    pending: tuple[ImaEntry, ...]
    state: ReplayState


class _Hash(Protocol):
    def digest(self) -> bytes: ...


_Ctor = Callable[[bytes], _Hash]
_FAST_CTORS: dict[str, _Ctor] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}


_BANK_SIZES: dict[str, int] = {}


def _bank_size(bank: str) -> int:
    size = _BANK_SIZES.get(bank)
    if size is not None:
        return size
    try:
        size = hash_alg(bank).size
    except KeyError:
        raise ValueError(f"unknown PCR bank {bank!r}") from None
    _BANK_SIZES[bank] = size
    return size


def _ctor(name: str) -> _Ctor:
    fast = _FAST_CTORS.get(name)
    if fast is not None:
        return fast
    try:
        h = hash_alg(name)
    except KeyError:
        raise ValueError(f"unknown hash algorithm {name!r}") from None
    if not hash_alg_available(h):
        raise VerificationError(
            Reason.IMA_UNKNOWN_ALGORITHM, f"{name} is not available in this Python's OpenSSL"
        )
    return partial(hashlib.new, h.hashlib_name)


def _template_fields(template: str) -> tuple[str, ...] | None:
    known = _TEMPLATES.get(template)
    if known is not None:
        return known
    ids = tuple(template.split("|"))
    if len(ids) > 1 and all(i in _FIELD_KINDS for i in ids):
        return ids
    return None


def _malformed(what: str) -> ParseError:
    return ParseError(Reason.IMA_MALFORMED, what)


def _located(e: ParseError, where: str) -> ParseError:
    return ParseError(e.code, f"{where}: {e.message}")


class _Cut(Exception):
    """A record runs past the end of the input: corrupt, or a capture cut mid-record."""


# -- encoding: one encoder for the parser and for anyone generating lists (the swtpm harness)


def _encode_fields(fields: Iterable[bytes]) -> bytes:
    return b"".join([_U32LE.pack(len(f)) + f for f in fields])


def _digest_field(prefix: bytes, digest: bytes) -> bytes:
    return prefix + b":\0" + digest


def _string_field(text: bytes) -> bytes:
    return text + b"\0"


def _hashed(template: str, template_data: bytes) -> bytes:
    """The bytes the kernel hashes into the template hash."""
    if template != "ima":
        return template_data
    # The legacy template hashes the digest and the name NUL-padded to 256 bytes, not its
    # serialization (which has a length before the name).
    return template_data[:_LEGACY_DIGEST_SIZE] + template_data[_LEGACY_DIGEST_SIZE + 4 :].ljust(
        _IMA_NAME_MAX + 1, b"\0"
    )


def encode_template_data(
    template: str, hash_alg_name: str, file_digest: bytes, path: str | bytes, extra: bytes = b""
) -> bytes:
    """The template data of an `ima`, `ima-ng`, `ima-sig` or `ima-buf` entry, byte for byte as
    the kernel serializes it in binary_runtime_measurements.

    `hash_alg_name` names the file digest's algorithm ("sha256", "sm3_256"...; `ima` takes only
    "sha1"), `path` the file (or, for ima-buf, the buffer: ".ima", "kexec-cmdline"), `extra`
    the signature (ima-sig, an IMA signature header and signature) or the buffer (ima-buf).
    Spaces in `path` become "_", as the kernel writes them. Stable: the swtpm harness uses it.
    """
    info = _FILE_DIGEST_ALGS.get(
        _KERNEL_ALG_NAMES.get(hash_alg_name) or hash_alg_name.encode("ascii", "replace")
    )
    if info is None:
        raise ValueError(f"unknown digest algorithm {hash_alg_name!r}")
    alg, size = info
    if len(file_digest) != size:
        raise ValueError(f"a {alg} digest is {size} bytes, not {len(file_digest)}")
    name = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
    if b"\0" in name:
        raise ValueError("a path cannot contain NUL")
    name = name.replace(b" ", b"_")
    if template == "ima":
        if alg != "sha1" or extra:
            raise ValueError("the legacy ima template holds a SHA-1 digest and a name only")
        if len(name) > _IMA_NAME_MAX:
            raise ValueError(f"the legacy ima template holds names up to {_IMA_NAME_MAX} bytes")
        return file_digest + _U32LE.pack(len(name)) + name
    fields = [_digest_field(_KERNEL_ALG_NAMES[alg], file_digest), _string_field(name)]
    if template in ("ima-sig", "ima-buf"):
        fields.append(extra)
    elif template != "ima-ng" or extra:
        raise ValueError(f"cannot encode template {template!r} (ima, ima-ng, ima-sig, ima-buf)")
    return _encode_fields(fields)


def template_hash(alg: str, template_data: bytes, template: str = "ima-ng") -> bytes:
    """The template hash of `template_data` in `alg` ("sha1" for the classic lists' column 2,
    the bank's algorithm for what a Linux >= 5.8 kernel extends into that bank)."""
    return _ctor(alg)(_hashed(template, template_data)).digest()


def encode_binary_entry(
    template: str, template_data: bytes, *, pcr: int = IMA_PCR, template_hash_value: bytes | None = None
) -> bytes:
    """One binary_runtime_measurements record (little-endian, SHA-1 template hash unless given)."""
    digest = (
        template_hash("sha1", template_data, template) if template_hash_value is None else template_hash_value
    )
    name = template.encode("ascii")
    head = _U32LE.pack(pcr) + digest + _U32LE.pack(len(name)) + name
    if template == "ima":
        return head + template_data
    return head + _U32LE.pack(len(template_data)) + template_data


def binary_record_size(entry: ImaEntry) -> int:
    """How many bytes `entry` takes in binary_runtime_measurements: PCR (u32), template hash,
    name length (u32), name, then data length (u32) and data, except for the legacy "ima"
    template, whose data carries its own lengths."""
    data_len = 0 if entry.template == "ima" else 4
    return 4 + len(entry.template_hash) + 4 + len(entry.template) + data_len + len(entry.template_data)


def ascii_line(entry: ImaEntry) -> bytes:
    """The entry as the kernel prints it in ascii_runtime_measurements (without the newline)."""
    ids = entry.field_ids
    if ids is None:
        raise ValueError(f"template {entry.template!r} has no known ASCII form")
    out = [b"%2d" % entry.pcr, entry.template_hash.hex().encode(), entry.template.encode()]
    for fid, data in zip(ids, entry.fields, strict=True):
        kind = _FIELD_KINDS[fid]
        if kind == _UINT:
            raise ValueError(f"field {fid} has no reversible ASCII form")
        if not data:
            out.append(b"")
        elif kind == _DIGEST:
            nul = data.index(b"\0")
            out.append(data[:nul] + data[nul + 1 :].hex().encode())
        elif kind == _STRING:
            out.append(data[:-1])
        else:
            out.append(data.hex().encode())
    return b" ".join(out)


# -- parsing


def parse(
    data: bytes,
    *,
    template_hash_alg: str | None = None,
    first_index: int = 0,
    allow_partial_tail: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> ImaLog:
    """Parse an ASCII or binary measurement list, telling them apart by content.

    `template_hash_alg` says which algorithm the stored template hashes are in; by default it
    follows from their size (SHA-1 for the classic lists; a per-bank list of Linux >= 6.10 in
    SHA-256 or SM3 is told apart by hashing). `first_index` is the position of the first
    entry in the machine's whole list, for fragments sent incrementally.
    `allow_partial_tail` takes a last record that runs past the end of the input as a capture
    cut mid-record: it is left out (`ImaLog.unparsed_tail`), never replayed.
    """
    if b"\0" in data[:4]:
        # A binary record starts with a 32-bit PCR index below 24: three NUL bytes out of four.
        parser = parse_binary
    elif not data or data[:1] in b" 0123456789":
        # An ASCII line starts with the PCR number ("10", or " 9"); the list holds no NUL.
        parser = parse_ascii
    else:
        raise _malformed("input is not an IMA measurement list, ASCII or binary")
    return parser(
        data,
        template_hash_alg=template_hash_alg,
        first_index=first_index,
        allow_partial_tail=allow_partial_tail,
        limits=limits,
    )


def _check_common(data: bytes, first_index: int, template_hash_alg: str | None, limits: Limits) -> None:
    if len(data) > limits.max_bytes:
        raise _malformed(f"input larger than {limits.max_bytes} bytes")
    if first_index < 0:
        raise ValueError("first_index cannot be negative")
    if template_hash_alg is not None and _bank_size(template_hash_alg) not in _TEMPLATE_HASH_ALGS:
        raise ValueError(f"{template_hash_alg} is not a template hash algorithm")


@dataclass(frozen=True, slots=True)
class _Layout:
    """What decoding needs to know about a template, worked out once per name."""

    name: str
    ids: tuple[str, ...] | None
    kinds: tuple[str, ...]
    digest_at: int  # the first digest field (ImaEntry.digest), -1 if none
    name_at: int  # the first string field (ImaEntry.path), -1 if none
    checks: tuple[tuple[int, str], ...]  # every other digest or string field: (position, id)
    lone_string: bool  # exactly one string field: in ASCII, the one that may hold spaces
    simple: bool = False  # exactly a digest then a string field (ima-ng): parsed inline


@lru_cache(maxsize=256)
def _layout(name: str) -> _Layout:
    ids = _template_fields(name)
    kinds = tuple(_FIELD_KINDS[fid] for fid in ids or ())
    digest_at = name_at = -1
    checks: list[tuple[int, str]] = []
    for n, (fid, kind) in enumerate(zip(ids or (), kinds, strict=True)):
        if kind in (_DIGEST, _LEGACY_DIGEST) and digest_at < 0:
            digest_at = n
        elif kind == _STRING and name_at < 0:
            name_at = n
        elif kind in (_DIGEST, _LEGACY_DIGEST, _STRING):
            checks.append((n, fid))
    simple = ids is not None and len(ids) == 2 and digest_at == 0 and name_at == 1 and not checks
    return _Layout(name, ids, kinds, digest_at, name_at, tuple(checks), kinds.count(_STRING) == 1, simple)


_struct = lru_cache(maxsize=64)(struct.Struct)


def _template(raw: bytes, limits: Limits) -> _Layout:
    if not 0 < len(raw) <= limits.max_template_name or not _TEMPLATE_NAME_CHARS.issuperset(raw):
        raise _malformed(f"template name {raw[:32]!r} is not one a kernel writes")
    return _layout(raw.decode("ascii"))


def _check_fields(layout: _Layout, fields: list[bytes]) -> None:
    """Validate the fields of a known template: count, digest algorithms and sizes, strings."""
    ids = layout.ids
    if ids is None:
        return
    if len(fields) != len(ids):
        raise _malformed(f"template {layout.name} has {len(ids)} fields, the entry {len(fields)}")
    if layout.digest_at >= 0:
        # Inline the common case (a plain "<alg>:" prefix and a full-size digest); anything
        # else takes the full decoder, which accepts the other forms or raises.
        f = fields[layout.digest_at]
        nul = f.find(b"\0", 0, 32)
        info = _DIGEST_PREFIXES.get(f[: nul + 1])
        if info is None or len(f) - nul - 1 != info[1]:
            _decode_digest(f, ids[layout.digest_at])
    if layout.name_at >= 0:
        f = fields[layout.name_at]
        if not f or f.find(b"\0") != len(f) - 1:
            raise _malformed(f"{ids[layout.name_at]} field is not a NUL-terminated string")
    for n, fid in layout.checks:
        if _FIELD_KINDS[fid] == _STRING:
            _check_string(fields[n], fid)
        elif fields[n] or fid != "d-modsig":  # d-modsig is empty for files without a modsig
            _decode_digest(fields[n], fid)


# b"<alg>:\0" as d-ng fields start, for the common case of a plain algorithm prefix.
_DIGEST_PREFIXES = {name + b":\0": info for name, info in _FILE_DIGEST_ALGS.items()}


def _decode_digest(data: bytes, fid: str) -> tuple[str, bytes]:
    if fid == "d":
        if len(data) != _LEGACY_DIGEST_SIZE:
            raise _malformed(f"a legacy digest of {len(data)} bytes (only SHA-1 is accepted)")
        return "sha1", data
    nul = data.find(b"\0", 0, 32)
    info = _DIGEST_PREFIXES.get(data[: nul + 1])
    if info is None:
        if nul < 2 or data[nul - 1] != 0x3A:
            raise _malformed(f"{fid} field lacks its 'algorithm:' prefix")
        # d-ngv2 prefixes carry the digest type too: "ima:sha256", "verity:sha256".
        name = data[: nul - 1].rpartition(b":")[2]
        info = _FILE_DIGEST_ALGS.get(name)
        if info is None:
            raise ParseError(Reason.IMA_UNKNOWN_ALGORITHM, f"unknown digest algorithm {name[:16]!r} in {fid}")
    alg, size = info
    digest = data[nul + 1 :]
    if len(digest) != size and digest != _VIOLATION_DIGEST:
        raise _malformed(f"a {alg} digest of {len(digest)} bytes")
    return alg, digest


def _check_string(data: bytes, fid: str) -> None:
    if not data or data.find(b"\0") != len(data) - 1:
        raise _malformed(f"{fid} field is not a NUL-terminated string")


def parse_ascii(
    data: bytes | str,
    *,
    template_hash_alg: str | None = None,
    first_index: int = 0,
    allow_partial_tail: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> ImaLog:
    """Parse ascii_runtime_measurements (or ascii_runtime_measurements_<alg>).

    The text form loses information the binary form keeps: a template it does not know, or
    fields printed in decimal (evm-sig), cannot be turned back into template data; those
    fail cleanly here and parse from the binary list.
    """
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    _check_common(raw, first_index, template_hash_alg, limits)
    if raw.count(b"\n") > limits.max_entries:
        raise _malformed(f"more than {limits.max_entries} entries")
    lines = raw.split(b"\n")
    # The kernel ends every line with a newline, so a last line without one was cut off.
    tail = lines.pop()
    if tail and not allow_partial_tail:
        lines.append(tail)
        tail = b""
    if len(lines) > limits.max_entries:
        raise _malformed(f"more than {limits.max_entries} entries")
    max_line = 2 * limits.max_template_data + 1024
    templates: dict[bytes, _Layout] = {}
    entries: list[ImaEntry] = []
    size = 0
    number = 0
    try:
        for number, line in enumerate(lines, 1):
            if len(line) > max_line:
                raise _malformed(f"longer than {max_line} bytes")
            entry = _ascii_entry(line, first_index + number - 1, templates, limits)
            if len(entry.template_hash) != (size or len(entry.template_hash)):
                raise _malformed("template hashes of different sizes")
            size = len(entry.template_hash)
            entries.append(entry)
    except ParseError as e:
        raise _located(e, f"line {number}") from None
    if template_hash_alg is not None and size and _bank_size(template_hash_alg) != size:
        raise _malformed(f"line 1: template hashes of {size} bytes are not {template_hash_alg}")
    alg = _template_hash_alg(template_hash_alg, size or 20, entries)
    return ImaLog(tuple(entries), "ascii", alg, first_index, len(tail))


def _ascii_entry(line: bytes, index: int, templates: dict[bytes, _Layout], limits: Limits) -> ImaEntry:
    if line[:1] == b" ":  # "%2d " pads PCR numbers below 10
        line = line[1:]
    parts = line.split(b" ", 3)
    if len(parts) != 4:
        raise _malformed("expected a PCR, a template hash, a template name and its fields")
    pcr_tok, hash_tok, name_tok, rest = parts
    if not pcr_tok.isdigit() or len(pcr_tok) > 2 or int(pcr_tok) >= PCR_COUNT:
        raise _malformed(f"PCR {pcr_tok[:8]!r} is not a TPM PCR index")
    digest = _hex(hash_tok, "template hash")
    if len(digest) not in _TEMPLATE_HASH_ALGS:
        raise _malformed(f"a template hash of {len(digest)} bytes")
    t = templates.get(name_tok)
    if t is None:
        t = templates[name_tok] = _template(name_tok, limits)
    if t.ids is None:
        raise _malformed(
            f"unknown template {t.name!r}: its ASCII form cannot be decoded; "
            "parse binary_runtime_measurements instead"
        )
    fields = _ascii_fields(rest, t)
    if t.name == "ima":
        name = fields[1][:-1]
        if len(name) > _IMA_NAME_MAX:
            raise _malformed(f"a legacy ima name longer than {_IMA_NAME_MAX} bytes")
        template_data = fields[0] + _U32LE.pack(len(name)) + name
    else:
        template_data = _encode_fields(fields)
    _check_fields(t, fields)
    return _new_entry(
        index, int(pcr_tok), t.name, digest, template_data, tuple(fields), not digest.strip(b"\0")
    )


def _hex(token: bytes, what: str) -> bytes:
    try:
        value = bytes.fromhex(token.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise _malformed(f"{what} is not hex") from None
    # fromhex skips whitespace; the kernel never prints any inside a field.
    if 2 * len(value) != len(token):
        raise _malformed(f"{what} is not hex")
    return value


def _ascii_fields(rest: bytes, layout: _Layout) -> list[bytes]:
    ids, kinds = layout.ids or (), layout.kinds
    count = len(kinds)
    if _UINT in kinds:
        raise _malformed("fields printed in decimal cannot be decoded; parse the binary list instead")
    if layout.lone_string:
        # A name is the one field that may hold spaces (kernels before the '_' substitution):
        # split the fields before it from the left and the ones after it from the right.
        s = layout.name_at
        head = rest.split(b" ", s) if s else [rest]
        tail = head.pop().rsplit(b" ", count - s - 1) if count - s - 1 else [head.pop()]
        tokens = head + tail
    else:
        tokens = rest.split(b" ")
    if len(tokens) != count:
        raise _malformed(f"template has {count} fields, the line {len(tokens)}")
    fields: list[bytes] = []
    append = fields.append
    for fid, kind, tok in zip(ids, kinds, tokens, strict=True):
        if kind == _STRING:
            append(_string_field(tok))
        elif kind == _DIGEST:
            if not tok:  # d-modsig of a file without an appended signature
                append(b"")
                continue
            prefix, colon, digest = tok.rpartition(b":")
            if not colon or not prefix:
                raise _malformed(f"{fid} field {tok[:24]!r} lacks its 'algorithm:' prefix")
            append(_digest_field(prefix, _hex(digest, fid)))
        else:
            append(_hex(tok, fid))
    return fields


def parse_binary(
    data: bytes,
    *,
    template_hash_alg: str | None = None,
    first_index: int = 0,
    allow_partial_tail: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> ImaLog:
    """Parse binary_runtime_measurements (or binary_runtime_measurements_<alg>).

    Integers are little-endian (x86, arm64, or ima_canonical_fmt) or big-endian (s390x, ppc64
    without it), told apart by the first PCR index. Templates the kernel may have but this
    module does not know parse generically into their length-prefixed fields.
    """
    _check_common(data, first_index, template_hash_alg, limits)
    end = len(data)
    entries: list[ImaEntry] = []
    size = _bank_size(template_hash_alg) if template_hash_alg else 20
    start = 0
    try:
        if not end:
            return ImaLog((), "binary", template_hash_alg or "sha1", first_index)
        u32 = _byte_order(data)
        if not template_hash_alg:
            size = _detect_hash_size(data, u32)
        _binary_records(data, u32, size, entries, first_index=first_index, limits=limits)
        start = end
    except _Cut:
        start = _record_offset(entries)
        if not allow_partial_tail:
            raise _malformed(f"offset {start}: entry {first_index + len(entries)}: truncated entry") from None
    except ParseError as e:
        start = _record_offset(entries)
        raise _located(e, f"offset {start}: entry {first_index + len(entries)}") from None
    alg = _template_hash_alg(template_hash_alg, size, entries)
    return ImaLog(tuple(entries), "binary", alg, first_index, end - start)


def _byte_order(data: bytes) -> struct.Struct:
    if len(data) < 4:
        raise _Cut
    if int.from_bytes(data[:4], "little") < PCR_COUNT:
        return _U32LE
    if int.from_bytes(data[:4], "big") < PCR_COUNT:
        return _U32BE
    raise _malformed("does not start with a PCR index: not an IMA measurement list")


def _record_offset(entries: list[ImaEntry]) -> int:
    """Where the record after `entries` starts (only computed to report an error)."""
    return sum(binary_record_size(e) for e in entries)


def _binary_records(
    data: bytes, u32: struct.Struct, size: int, entries: list[ImaEntry], *, first_index: int, limits: Limits
) -> None:
    unpack = u32.unpack_from
    order = u32.format[0]
    # PCR index, template hash, template name length: one unpack per record...
    header = _struct(f"{order}I{size}sI").unpack_from
    # ...or, as a list is runs of one template, PCR to template data length in one unpack when
    # the record names the previous record's template.
    repeat: tuple[Callable[[bytes, int], tuple[Any, ...]], bytes, _Layout] | None = None
    prefixes = _DIGEST_PREFIXES
    two_fields = limits.max_fields >= 2
    end = len(data)
    templates: dict[bytes, _Layout] = {}
    zero = bytes(size)
    max_data, max_name = limits.max_template_data, limits.max_template_name
    last = first_index + limits.max_entries
    append = entries.append
    index = first_index
    start = 0
    while start < end:
        if index >= last:
            raise _malformed(f"more than {limits.max_entries} entries")
        record = None
        if repeat is not None:
            try:
                record = repeat[0](data, start)
            except struct.error:
                record = None
        if (
            repeat is not None
            and record is not None
            and record[2] == len(repeat[1])
            and record[3] == repeat[1]
        ):
            pcr, digest, _, _, tlen = record
            layout = repeat[2]
            pos = start + 12 + size + len(repeat[1])
        else:
            try:
                pcr, digest, name_len = header(data, start)
            except struct.error:
                raise _Cut from None
            if not 0 < name_len <= max_name:
                raise _malformed(f"template name length {name_len}")
            pos = start + 8 + size
            raw = data[pos : pos + name_len]
            if len(raw) != name_len:
                raise _Cut
            pos += name_len
            found = templates.get(raw)
            layout = found if found is not None else templates.setdefault(raw, _template(raw, limits))
            if layout.name == "ima":
                tlen = -1
            else:
                try:
                    (tlen,) = unpack(data, pos)
                except struct.error:
                    raise _Cut from None
                pos += 4
                if repeat is None or raw != repeat[1]:
                    repeat = (_struct(f"{order}I{size}sI{name_len}sI").unpack_from, raw, layout)
        if pcr >= PCR_COUNT:
            raise _malformed(f"PCR {pcr} is not a TPM PCR index")
        if tlen < 0:
            # The legacy template has no data length: a 20-byte digest, then the name.
            if end - pos < _LEGACY_DIGEST_SIZE + 4:
                raise _Cut
            (flen,) = unpack(data, pos + _LEGACY_DIGEST_SIZE)
            if flen > _IMA_NAME_MAX:
                raise _malformed(f"legacy ima name length {flen}")
            if flen > end - pos - _LEGACY_DIGEST_SIZE - 4:
                raise _Cut
            template_data = data[pos : pos + _LEGACY_DIGEST_SIZE + 4 + flen]
            fields = [
                template_data[:_LEGACY_DIGEST_SIZE],
                _string_field(template_data[_LEGACY_DIGEST_SIZE + 4 :]),
            ]
        else:
            if tlen > max_data:
                raise _malformed(f"template data length {tlen}")
            template_data = data[pos : pos + tlen]
            if len(template_data) != tlen:
                raise _Cut
            if layout.simple and two_fields and tlen >= 8:
                # ima-ng and the like: a digest and a name. Split and check them inline, as
                # _binary_fields and _check_fields would; anything unusual takes those two.
                (flen,) = unpack(template_data, 0)
                cut = 4 + flen
                if cut <= tlen - 4 and unpack(template_data, cut)[0] == tlen - cut - 4:
                    f = template_data[4:cut]
                    name = template_data[cut + 4 :]
                    nul = f.find(b"\0", 0, 32)
                    info = prefixes.get(f[: nul + 1])
                    if (
                        info is not None
                        and len(f) - nul - 1 == info[1]
                        and name
                        and name.find(b"\0") == len(name) - 1
                    ):
                        append(
                            _new_entry(
                                index, pcr, layout.name, digest, template_data, (f, name), digest == zero
                            )
                        )
                        index += 1
                        start = pos + tlen
                        continue
            fields = _binary_fields(template_data, unpack, limits.max_fields)
        _check_fields(layout, fields)
        append(_new_entry(index, pcr, layout.name, digest, template_data, tuple(fields), digest == zero))
        index += 1
        start = pos + len(template_data)


def _detect_hash_size(data: bytes, u32: struct.Struct) -> int:
    # The first entry's template name follows the template hash; only the right hash size
    # lands on a plausible name length and name.
    for size in _TEMPLATE_HASH_SIZES:
        if len(data) < 8 + size:
            raise _Cut
        (name_len,) = u32.unpack_from(data, 4 + size)
        name = data[8 + size : 8 + size + name_len]
        if 0 < name_len <= 255 and len(name) == name_len and _TEMPLATE_NAME_CHARS.issuperset(name):
            return size
    raise _malformed("no template name after a template hash of any known size")


def _binary_fields(
    data: bytes, unpack: Callable[[bytes, int], tuple[int, ...]], max_fields: int
) -> list[bytes]:
    fields: list[bytes] = []
    append = fields.append
    pos, end = 0, len(data)
    budget = max_fields
    try:
        while pos < end:
            (flen,) = unpack(data, pos)
            pos += 4 + flen
            if pos > end:
                raise _malformed(f"template field of {flen} bytes overruns its template data")
            budget -= 1
            if budget < 0:
                raise _malformed(f"more than {max_fields} template fields")
            append(data[pos - flen : pos])
    except struct.error:
        raise _malformed("template data ends inside a field length") from None
    return fields


def _template_hash_alg(explicit: str | None, size: int, entries: list[ImaEntry]) -> str:
    if explicit is not None:
        return explicit
    candidates = _TEMPLATE_HASH_ALGS[size]
    if len(candidates) == 1:
        return candidates[0]
    sample = next((e for e in entries if not e.violation), None)
    if sample is None:
        return candidates[0]
    hashed = _hashed(sample.template, sample.template_data)
    for alg in candidates:
        if hash_alg_available(hash_alg(alg)) and _ctor(alg)(hashed).digest() == sample.template_hash:
            return alg
    missing = [a for a in candidates if not hash_alg_available(hash_alg(a))]
    if missing:
        raise ParseError(
            Reason.IMA_UNKNOWN_ALGORITHM,
            f"template hashes of {size} bytes are not {candidates[0]}, and {', '.join(missing)} "
            "is not available to check them",
        )
    return candidates[0]


# -- template hashes and replay


def verify_template_hashes(log: ImaLog) -> None:
    """Check that every entry's template hash is the hash of its template data, and that
    every violation (all-zero template hash) records no file digest, as the kernel writes it."""
    _checked_hashes(log)


def _checked_hashes(log: ImaLog) -> list[bytes]:
    """The entries' template hashes, each checked against its template data."""
    ctor = _ctor(log.template_hash_alg)
    entries = log.entries
    stored = [e.template_hash for e in entries]
    computed = [
        ctor(e.template_data if e.template != "ima" else _hashed("ima", e.template_data)).digest()
        for e in entries
    ]
    if computed == stored:
        return stored
    # Violations (or a mismatch): find out which, entry by entry.
    for e, c in zip(entries, computed, strict=True):
        if e.violation:
            digest = e.digest
            if digest is not None and digest.strip(b"\0"):
                raise VerificationError(
                    Reason.IMA_TEMPLATE_HASH_MISMATCH,
                    f"entry {e.index} ({e.path}): an all-zero template hash marks a violation, "
                    "but the entry carries a file digest; the kernel writes zeros there",
                )
        elif c != e.template_hash:
            raise VerificationError(
                Reason.IMA_TEMPLATE_HASH_MISMATCH,
                f"entry {e.index} ({e.path or e.template}): template hash {e.template_hash.hex()} "
                f"is not the {log.template_hash_alg} of its template data ({c.hex()})",
            )
    return stored


def _extend_values(log: ImaLog, checked: list[bytes], bank: str, variant: str) -> list[bytes]:
    """What the kernel extends into `bank` for each entry (docs/ima.md, "Replay"): the bank's
    template hash (or the SHA-1 one, zero-padded), all ones for a violation."""
    size = _bank_size(bank)
    alg = "sha1" if variant == PADDED_SHA1 else bank
    pad = bytes(size - _bank_size(alg))
    invalid = b"\xff" * _bank_size(alg) + pad
    entries = log.entries
    if alg == log.template_hash_alg:
        hashes: Iterable[bytes] = checked
    elif not pad:
        # Hash and mark violations in one pass (a violation's hash is never used).
        ctor = _ctor(alg)
        return [
            invalid
            if e.violation
            else ctor(e.template_data if e.template != "ima" else _hashed("ima", e.template_data)).digest()
            for e in entries
        ]
    else:
        ctor = _ctor(alg)
        hashes = [
            ctor(e.template_data if e.template != "ima" else _hashed("ima", e.template_data)).digest()
            for e in entries
        ]
    if pad:
        return [invalid if e.violation else h + pad for e, h in zip(entries, hashes, strict=True)]
    return [invalid if e.violation else h for e, h in zip(entries, hashes, strict=True)]


def _start(log: ImaLog, start: ReplayState | None) -> ReplayState:
    if start is None:
        if log.first_index:
            raise ValueError("a fragment that does not start at entry 0 needs the state it resumes from")
        return ReplayState()
    if start.offset != log.first_index:
        raise VerificationError(
            Reason.IMA_REPLAY_MISMATCH,
            f"the entries start at {log.first_index}, the accepted replay ends at {start.offset}",
        )
    return start


def replay(
    log: ImaLog,
    banks: Iterable[str] = DEFAULT_BANKS,
    *,
    variant: str = BANK_HASH,
    start: ReplayState | None = None,
) -> ReplayState:
    """Check the template hashes, then fold every entry into its PCR in each bank.

    `variant` is the extend rule for the non-SHA-1 banks (BANK_HASH: Linux >= 5.8; PADDED_SHA1:
    older kernels); a bank whose rule `start` already established keeps it.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown extend rule {variant!r}")
    start = _start(log, start)
    checked = _checked_hashes(log)
    pcrs: dict[str, Mapping[int, bytes]] = dict(start.pcrs)
    variants = dict(start.variants)
    for bank in banks:
        rule = variants.setdefault(bank, variant) if bank != "sha1" else BANK_HASH
        pcrs[bank] = _fold(log, _extend_values(log, checked, bank, rule), bank, start)
    return ReplayState(start.offset + len(log.entries), pcrs, variants)


def _fold(log: ImaLog, extend: list[bytes], bank: str, start: ReplayState) -> dict[int, bytes]:
    ctor = _ctor(bank)
    values = dict(start.pcrs.get(bank, {}))
    # Entries come in runs on one PCR (all of them on 10, normally): fold a run in a local.
    pcr = -1
    value = b""
    for e, x in zip(log.entries, extend, strict=True):
        if e.pcr != pcr:
            if pcr >= 0:
                values[pcr] = value
            pcr = e.pcr
            value = values.get(pcr) or start.value(bank, pcr)
        value = ctor(value + x).digest()
    if pcr >= 0:
        values[pcr] = value
    return values


def match_quote(
    log: ImaLog,
    quoted: Mapping[str, Mapping[int, bytes]],
    *,
    start: ReplayState | None = None,
) -> QuoteMatch:
    """Apply the longer-than-quote rule: accept the list up to the entry whose running values
    equal the quoted PCR values in every quoted bank, and no further.

    `quoted` maps each bank to the quoted value of the IMA PCRs (normally {10: value}). The
    kernel appends to the list after a quote is taken, so a list may run past the quote: the
    entries after the matching point are `pending`, never evidence. Entries extending a PCR
    the quote does not cover cannot be proven, so acceptance stops before the first of them.
    Raises VerificationError(IMA_REPLAY_MISMATCH) when no prefix of the list reproduces the
    quote, and IMA_TEMPLATE_HASH_MISMATCH for an entry whose hash is not its data's.
    """
    if not quoted:
        raise ValueError("no quoted PCR values to match")
    start = _start(log, start)
    checked = _checked_hashes(log)
    entries = log.entries
    targets = list(quoted.values())
    covered = set(targets[0]).intersection(*targets[1:])
    limit = len(entries)
    for n, e in enumerate(entries):
        if e.pcr not in covered:
            limit = n
            break
    common: set[int] | None = None
    found: dict[str, tuple[str, dict[int, dict[int, bytes]]]] = {}
    for bank, target in quoted.items():
        size = _bank_size(bank)
        for v in target.values():
            if len(v) != size:
                raise ValueError(f"a quoted {bank} PCR value is not {size} bytes")
        known = start.variants.get(bank)
        rules = [BANK_HASH] if bank == "sha1" else [known] if known else list(VARIANTS)
        best: tuple[str, dict[int, dict[int, bytes]]] | None = None
        for rule in rules:
            matches = _matches(log, _extend_values(log, checked, bank, rule)[:limit], bank, target, start)
            if matches and (best is None or max(matches) > max(best[1])):
                best = (rule, matches)
            # A match past the start settles the rule; both rules agree on the empty prefix.
            if best is not None and max(best[1]) > 0:
                break
        if best is None:
            raise VerificationError(
                Reason.IMA_REPLAY_MISMATCH,
                f"no prefix of the IMA list (entries {log.first_index}-{log.first_index + limit}) "
                f"reproduces the quoted {bank} PCR {', '.join(map(str, sorted(target)))}",
            )
        found[bank] = best
        common = set(best[1]) if common is None else common & set(best[1])
    if not common:
        raise VerificationError(
            Reason.IMA_REPLAY_MISMATCH,
            "the quoted banks are reproduced by different prefixes of the IMA list",
        )
    k = max(common)
    pcrs: dict[str, Mapping[int, bytes]] = dict(start.pcrs)
    variants = dict(start.variants)
    for bank, (rule, matches) in found.items():
        pcrs[bank] = matches[k]
        if bank != "sha1":
            variants[bank] = rule
    state = ReplayState(start.offset + k, pcrs, variants)
    return QuoteMatch(entries[:k], entries[k:], state)


def _matches(
    log: ImaLog, extend: Sequence[bytes], bank: str, target: Mapping[int, bytes], start: ReplayState
) -> dict[int, dict[int, bytes]]:
    """Prefix lengths whose running values equal `target`, with those values."""
    ctor = _ctor(bank)
    values = {p: start.value(bank, p) for p in target} | dict(start.pcrs.get(bank, {}))
    found: dict[int, dict[int, bytes]]
    if len(target) == 1:
        # The usual quote, PCR 10 alone: every entry before `len(extend)` extends it (match_quote
        # stops at the first that does not), so fold it in a local.
        ((p, want),) = target.items()
        value = values[p]
        found = {0: dict(values)} if value == want else {}
        for n, x in enumerate(extend, 1):
            value = ctor(value + x).digest()
            if value == want:
                found[n] = {**values, p: value}
        return found
    # Count the quoted PCRs not yet at their quoted value; an extend changes one PCR only.
    off = sum(values[p] != v for p, v in target.items())
    found = {0: dict(values)} if not off else {}
    for n, (e, x) in enumerate(zip(log.entries[: len(extend)], extend, strict=True), 1):
        p = e.pcr
        want = target[p]
        old = values[p]
        new = ctor(old + x).digest()
        values[p] = new
        off += (old == want) - (new == want)
        if not off:
            found[n] = dict(values)
    return found


# -- boot_aggregate


def verify_boot_aggregate(log: ImaLog, boot_pcrs: Mapping[str, Mapping[int, bytes]]) -> str:
    """Check the list's first entry against the quoted boot PCRs; return the rule that held.

    The kernel hashes PCRs 0-7 of the SHA-1 bank for a SHA-1 boot_aggregate (all kernels, TPM
    1.2 and 2.0), and PCRs 0-9 of the bank named by the entry's digest algorithm for any other
    (Linux >= 5.8 and the stable kernels the change was backported to). Call it on a list
    whose first entry `match_quote` accepted: the entry is only evidence once quoted.
    """
    if log.first_index != 0 or not log.entries:
        raise VerificationError(
            Reason.IMA_BOOT_AGGREGATE_MISMATCH, "the list does not start with the machine's first measurement"
        )
    first = log.entries[0]
    if first.path != BOOT_AGGREGATE or first.digest is None or first.digest_alg is None:
        raise VerificationError(
            Reason.IMA_BOOT_AGGREGATE_MISMATCH, f"the first entry is {first.path!r}, not {BOOT_AGGREGATE}"
        )
    verify_template_hashes(ImaLog((first,), log.format, log.template_hash_alg))
    if first.violation:
        raise VerificationError(Reason.IMA_BOOT_AGGREGATE_MISMATCH, "the boot_aggregate entry is a violation")
    if not first.digest.strip(b"\0"):
        raise VerificationError(
            Reason.IMA_BOOT_AGGREGATE_MISMATCH,
            "boot_aggregate is all zeros: the kernel found no TPM (or no usable bank) when IMA started",
        )
    bank = first.digest_alg
    indices = range(8) if bank == "sha1" else range(10)
    if bank not in ("sha1", "sha256", "sha384", "sha512", "sm3_256"):
        raise VerificationError(
            Reason.IMA_BOOT_AGGREGATE_MISMATCH, f"a {bank} boot_aggregate has no PCR bank to come from"
        )
    values = boot_pcrs.get(bank, {})
    missing = [i for i in indices if i not in values]
    if missing:
        raise VerificationError(
            Reason.IMA_BOOT_AGGREGATE_MISMATCH,
            f"boot_aggregate is {bank} over PCRs 0-{indices[-1]}; the quote lacks {bank} PCR "
            + ", ".join(map(str, missing)),
        )
    expected = _ctor(bank)(b"".join(values[i] for i in indices)).digest()
    if expected != first.digest:
        raise VerificationError(
            Reason.IMA_BOOT_AGGREGATE_MISMATCH,
            f"boot_aggregate {first.digest.hex()} is not the {bank} of quoted PCRs 0-{indices[-1]} "
            f"({expected.hex()})",
        )
    return BOOT_AGGREGATE_SHA1 if bank == "sha1" else BOOT_AGGREGATE_AGILE
