"""PCR values: an immutable set by bank and index, the digest a quote signs over them, and the
PCR files tpm2-tools writes.

tpm2-tools writes three shapes. ``tpm2_quote -o`` (and ``tpm2_pcrread -F serialized``) write
the "serialized" form: a TPML_PCR_SELECTION and TPML_DIGEST structures dumped from the tool's
memory in little-endian host layout (its ``tpm2_pcrs`` struct), not TPM marshalling.
``-F values`` (``tpm2_pcrread -o``'s default) writes the bare digests in selection order,
meaningful only with the selection. ``tpm2_pcrread`` prints YAML, ``bank: {index: 0xHEX}``;
``tpm2_quote`` prints the same under ``pcrs:``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Final

import yaml

from attest import boundedyaml
from attest.errors import ParseError
from attest.pcrselect import PcrSelection
from attest.reasons import Reason
from attest.tcg import PCR_COUNT, HashAlg, hash_alg
from attest.verify.tpmstructs import (
    MAX_DIGEST,
    MAX_PCR_BANKS,
    PCR_SELECT_MAX,
    PCR_SELECT_MIN,
    TpmlPcrSelection,
    bitmap_pcrs,
)

# Either selection type iterates as (bank name, PCR index) pairs in digest order.
Selection = PcrSelection | TpmlPcrSelection

# Anything larger is not a PCR file: refuse before reading it (YAML parsing is not cheap).
MAX_PCR_FILE: Final = 64 * 1024
# tpm2_quote's YAML nests three deep (pcrs: sha256: 0: 0x..); no aliases either (attest.boundedyaml).
MAX_PCR_YAML_DEPTH: Final = 8

# tpm2-tools' in-memory layout (tss2 types on a little-endian host): TPML_PCR_SELECTION is a
# UINT32 count and 16 TPMS_PCR_SELECTION of {UINT16 hash, UINT8 sizeofSelect, BYTE[4]} padded
# to 8 bytes; then a UINT32 count of TPML_DIGEST, each a UINT32 count and 8 TPM2B_DIGEST of
# {UINT16 size, BYTE[64]}. One TPML_DIGEST per TPM2_PCR_Read, which returns at most 8 values.
_TOOLS_BANKS: Final = 16
_TOOLS_SEL_ENTRY: Final = struct.Struct("<HB4sx")
_TOOLS_SEL_SIZE: Final = 4 + _TOOLS_BANKS * _TOOLS_SEL_ENTRY.size
_TOOLS_DIGESTS: Final = 8
_TOOLS_DIGEST: Final = struct.Struct(f"<H{MAX_DIGEST}s")
_TOOLS_LIST_SIZE: Final = 4 + _TOOLS_DIGESTS * _TOOLS_DIGEST.size
_TOOLS_MAX_LISTS: Final = 32  # the size of tpm2_pcrs' array
_U32LE: Final = struct.Struct("<I")


def _malformed(message: str) -> ParseError:
    return ParseError(Reason.PCR_VALUES_MALFORMED, message)


class PcrValues(Mapping[str, Mapping[int, bytes]]):
    """PCR values by bank name ("sha256") and PCR index. Immutable.

    Construction checks every value against its bank's digest size, so a PcrValues never holds
    a value that could not have come from a TPM. Banks may be named or given by TPM_ALG_ID.
    """

    __slots__ = ("_banks",)

    def __init__(
        self, banks: Mapping[str, Mapping[int, bytes]] | Mapping[int, Mapping[int, bytes]] | None = None
    ):
        checked: dict[str, Mapping[int, bytes]] = {}
        for key, values in (banks or {}).items():
            try:
                h = hash_alg(key)
            except KeyError:
                raise _malformed(f"unknown PCR bank {key!r}") from None
            if h.name in checked:
                raise _malformed(f"PCR bank {h.name} given twice")
            bank: dict[int, bytes] = {}
            for index, value in sorted(values.items()):
                if not 0 <= index < PCR_COUNT:
                    raise _malformed(f"{h.name} PCR index {index} out of range")
                if len(value) != h.size:
                    raise _malformed(f"{h.name} PCR {index} is {len(value)} bytes, not {h.size}")
                bank[index] = bytes(value)
            checked[h.name] = MappingProxyType(bank)
        self._banks: Mapping[str, Mapping[int, bytes]] = MappingProxyType(checked)

    def __getitem__(self, bank: str) -> Mapping[int, bytes]:
        return self._banks[bank]

    def __iter__(self) -> Iterator[str]:
        return iter(self._banks)

    def __len__(self) -> int:
        return len(self._banks)

    def __repr__(self) -> str:
        return f"PcrValues({self.to_json()!r})"

    def ordered(self, selection: Selection) -> list[bytes]:
        """The selected values in digest order; ParseError(PCR_VALUES_MALFORMED) if one is missing."""
        out = []
        for bank, index in selection:
            value = self._banks.get(bank, {}).get(index)
            if value is None:
                raise _malformed(f"no value for {bank} PCR {index}")
            out.append(value)
        return out

    def digest(self, selection: Selection, h: HashAlg) -> bytes:
        """What TPM2_Quote puts in pcrDigest: ``h`` over the selected values concatenated in
        selection order (banks as listed, indices ascending)."""
        return h.digest(b"".join(self.ordered(selection)))

    def restrict(self, selection: Selection) -> PcrValues:
        """Only the values inside the selection, all of which must be present."""
        return _assign(selection, self.ordered(selection), "PCR values")

    def to_json(self) -> dict[str, dict[str, str]]:
        """``{"sha256": {"0": "hex", ...}}``, the shape the CLI prints."""
        return {bank: {str(i): v.hex() for i, v in values.items()} for bank, values in self._banks.items()}


def _assign(selection: Iterable[tuple[str, int]], digests: Iterable[bytes], what: str) -> PcrValues:
    pairs = list(selection)
    found = list(digests)
    if len(found) != len(pairs):
        raise _malformed(f"{what}: {len(found)} digests for {len(pairs)} selected PCRs")
    banks: dict[str, dict[int, bytes]] = {}
    for (bank, index), value in zip(pairs, found, strict=True):
        if index in banks.setdefault(bank, {}):
            raise _malformed(f"{what}: {bank} PCR {index} selected twice")
        banks[bank][index] = value
    return PcrValues(banks)


def parse_tools_serialized(data: bytes) -> PcrValues:
    """The tpm2-tools "serialized" PCR file (``tpm2_quote -o``), which names its own selection."""
    if len(data) < _TOOLS_SEL_SIZE + 4:
        raise _malformed(f"serialized PCR file: {len(data)} bytes is too short")
    count = _U32LE.unpack_from(data)[0]
    if not 0 < count <= _TOOLS_BANKS:
        raise _malformed(f"serialized PCR file: selection count {count}")
    selection: list[tuple[str, int]] = []
    for i in range(count):
        alg, size, bitmap = _TOOLS_SEL_ENTRY.unpack_from(data, 4 + i * _TOOLS_SEL_ENTRY.size)
        try:
            h = hash_alg(alg)
        except KeyError:
            raise _malformed(f"serialized PCR file: unknown bank 0x{alg:04x}") from None
        if not PCR_SELECT_MIN <= size <= PCR_SELECT_MAX:
            raise _malformed(f"serialized PCR file: sizeofSelect {size}")
        pcrs = bitmap_pcrs(bitmap[:size])
        if pcrs and pcrs[-1] >= PCR_COUNT:
            raise _malformed(f"serialized PCR file: PCR {pcrs[-1]} selected")
        selection.extend((h.name, p) for p in pcrs)

    pos = _TOOLS_SEL_SIZE
    lists = _U32LE.unpack_from(data, pos)[0]
    pos += 4
    if lists > _TOOLS_MAX_LISTS or len(data) != pos + lists * _TOOLS_LIST_SIZE:
        raise _malformed(f"serialized PCR file: {lists} digest lists do not make {len(data)} bytes")
    digests: list[bytes] = []
    for _ in range(lists):
        n = _U32LE.unpack_from(data, pos)[0]
        if n > _TOOLS_DIGESTS:
            raise _malformed(f"serialized PCR file: digest list count {n}")
        for k in range(n):
            size, buf = _TOOLS_DIGEST.unpack_from(data, pos + 4 + k * _TOOLS_DIGEST.size)
            if size > MAX_DIGEST:
                raise _malformed(f"serialized PCR file: digest size {size}")
            digests.append(buf[:size])
        pos += _TOOLS_LIST_SIZE
    return _assign(selection, digests, "serialized PCR file")


def serialize_tools(selection: PcrSelection, values: Mapping[str, Mapping[int, bytes]]) -> bytes:
    """The "serialized" file ``tpm2_quote -o`` writes, so tpm2_checkquote can read our quotes.
    Digests go eight to a TPML_DIGEST, as TPM2_PCR_Read returns them."""
    if len(selection.banks) > _TOOLS_BANKS:
        raise ValueError(f"tpm2-tools files hold at most {_TOOLS_BANKS} banks")
    out = bytearray(_U32LE.pack(len(selection.banks)))
    for bank, pcrs in selection.banks:
        bitmap = bytearray(PCR_SELECT_MAX)
        for p in pcrs:
            bitmap[p >> 3] |= 1 << (p & 7)
        out += _TOOLS_SEL_ENTRY.pack(hash_alg(bank).alg, PCR_SELECT_MIN, bytes(bitmap))
    out += bytes(_TOOLS_SEL_SIZE - len(out))
    digests = [values[bank][p] for bank, p in selection]
    lists = [digests[i : i + _TOOLS_DIGESTS] for i in range(0, len(digests), _TOOLS_DIGESTS)]
    out += _U32LE.pack(len(lists))
    for chunk in lists:
        out += _U32LE.pack(len(chunk))
        for k in range(_TOOLS_DIGESTS):
            d = chunk[k] if k < len(chunk) else b""
            out += _TOOLS_DIGEST.pack(len(d), d)
    return bytes(out)


def parse_tools_values(data: bytes, selection: Selection) -> PcrValues:
    """The tpm2-tools "values" PCR file: bare digests in the order of ``selection``."""
    sizes = [hash_alg(bank).size for bank, _ in selection]
    if len(data) != sum(sizes):
        raise _malformed(f"PCR values file is {len(data)} bytes, selection {selection} needs {sum(sizes)}")
    digests, pos = [], 0
    for size in sizes:
        digests.append(data[pos : pos + size])
        pos += size
    return _assign(selection, digests, "PCR values file")


_YAML_INDEX = re.compile(r"^\d{1,2}$")
_YAML_VALUE = re.compile(r"^0x((?:[0-9a-fA-F]{2})+)$")


def parse_pcrread_yaml(text: str) -> PcrValues:
    """``tpm2_pcrread`` output (or ``tpm2_quote``'s, whose values sit under ``pcrs:``)."""
    if len(text) > MAX_PCR_FILE:
        raise _malformed(f"PCR YAML larger than {MAX_PCR_FILE} bytes")
    try:
        # BaseLoader keeps every scalar a string: the other loaders read 0x... as an integer
        # and lose the leading zero bytes. It constructs no objects, so it is safe.
        doc = boundedyaml.load(text, boundedyaml.BaseLoader, MAX_PCR_YAML_DEPTH)
    except yaml.YAMLError as e:
        raise _malformed(f"PCR YAML does not parse: {e}") from None
    if isinstance(doc, dict) and "pcrs" in doc:
        doc = doc["pcrs"]
    if not isinstance(doc, dict) or not doc or len(doc) > MAX_PCR_BANKS:
        raise _malformed("PCR YAML is not a mapping of banks")
    banks: dict[str, dict[int, bytes]] = {}
    for name, entries in doc.items():
        if not isinstance(entries, dict) or len(entries) > PCR_COUNT:
            raise _malformed(f"PCR YAML bank {name!r:.40} is not a mapping of PCR indices")
        bank: dict[int, bytes] = {}
        for index, value in entries.items():
            m = _YAML_VALUE.match(value) if isinstance(value, str) else None
            if m is None or not isinstance(index, str) or not _YAML_INDEX.match(index):
                raise _malformed(f"PCR YAML bank {name!r:.40}: bad entry {index!r:.40}: {value!r:.80}")
            bank[int(index)] = bytes.fromhex(m[1])
        banks[name] = bank
    return PcrValues(banks)


def load_pcr_file(data: bytes, selection: Selection | None = None) -> PcrValues:
    """Any PCR file tpm2-tools writes: serialized, YAML, or (given the selection) values.

    The self-describing forms are tried first; a values file is arbitrary bytes, so it is the
    last resort, used only when its length fits ``selection``.
    """
    if len(data) > MAX_PCR_FILE:
        raise _malformed(f"PCR file larger than {MAX_PCR_FILE} bytes")
    attempts: list[Callable[[], PcrValues]] = []
    if b"\0" not in data:  # YAML is text; the binary forms are full of NULs
        attempts.append(lambda: parse_pcrread_yaml(data.decode("utf-8")))
    tail = len(data) - _TOOLS_SEL_SIZE - 4
    if tail >= 0 and tail % _TOOLS_LIST_SIZE == 0:
        attempts.append(lambda: parse_tools_serialized(data))
    if selection is not None and len(data) == sum(hash_alg(bank).size for bank, _ in selection):
        attempts.append(lambda: parse_tools_values(data, selection))
    error = _malformed("PCR file is neither tpm2-tools serialized, values (for this selection), nor YAML")
    for attempt in attempts:
        try:
            return attempt()
        except UnicodeDecodeError:
            continue
        except ParseError as e:
            error = e
    raise error
