"""Decoding of UEFI and PC Client event data: variables, signature databases, images, device paths.

Structures are from the UEFI specification (EFI_SIGNATURE_LIST, EFI_LOAD_OPTION, device path
nodes, the GPT header) and the TCG PC Client Platform Firmware Profile (UEFI_VARIABLE_DATA,
UEFI_IMAGE_LOAD_EVENT, UEFI_PLATFORM_FIRMWARE_BLOB(2), UEFI_GPT_DATA, UEFI_HANDOFF_TABLE_POINTERS).

Decoding is for display and for policy on events whose data is bound to their digest. It never
raises on bad data: the type of an event is not covered by its digest, so any event may carry
any bytes, and a structure that does not decode becomes `Undecodable` instead of failing the log.
Every loop advances by at least one fixed-size header, so decoding is linear in the data size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from cryptography import x509

from attest.errors import UNDECODABLE
from attest.tcg import EventType

EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFI_IMAGE_SECURITY_DATABASE = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
SHIM_LOCK = "605dab50-e046-4300-abb6-3dd810dd8b23"

EFI_CERT_X509 = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072"
SIGNATURE_TYPES = {
    EFI_CERT_X509: "x509",
    "c1c41626-504c-4092-aca9-41f936934328": "sha256",
    "826ca512-cf10-4ac9-b187-be01496631bd": "sha1",
    "0b6e5233-a65c-44c9-9407-d9ab83bfc8bd": "sha224",
    "ff3e5307-9fd0-48c9-85f1-8ad56c701e01": "sha384",
    "093e0fae-a6c4-4f50-9f1b-d41e2b89c19a": "sha512",
    "3c5766e8-269c-4e34-aa14-ed776e85b3b6": "rsa2048",
    "3bd2a492-96c0-4079-b420-fcf98ef103ed": "x509-sha256",
    "7076876e-80c2-4ee6-aad2-28b349a6865b": "x509-sha384",
    "446dbf63-2502-4cda-bcfa-2465d2b0fe9d": "x509-sha512",
    "4aafd29d-68df-49ee-8aa9-347d375665a7": "pkcs7",
}

# Variables whose value is an EFI_SIGNATURE_LIST array (UEFI Secure Boot databases; shim's MOK lists).
_SIGNATURE_DATABASES = {
    (EFI_GLOBAL_VARIABLE, "PK"),
    (EFI_GLOBAL_VARIABLE, "KEK"),
    (EFI_IMAGE_SECURITY_DATABASE, "db"),
    (EFI_IMAGE_SECURITY_DATABASE, "dbx"),
    (EFI_IMAGE_SECURITY_DATABASE, "dbt"),
    (EFI_IMAGE_SECURITY_DATABASE, "dbr"),
    (SHIM_LOCK, "MokList"),
    (SHIM_LOCK, "MokListX"),
}
# One-byte booleans (UEFI globally defined variables; shim's MokListTrusted).
_BOOLEANS = {
    (EFI_GLOBAL_VARIABLE, "SecureBoot"),
    (EFI_GLOBAL_VARIABLE, "SetupMode"),
    (EFI_GLOBAL_VARIABLE, "AuditMode"),
    (EFI_GLOBAL_VARIABLE, "DeployedMode"),
    (SHIM_LOCK, "MokListTrusted"),
}
_TEXT_VARIABLES = {(SHIM_LOCK, "SbatLevel")}

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_VARIABLE_HEADER = struct.Struct("<16sQQ")
_IMAGE_LOAD = struct.Struct("<QQQQ")
_BLOB = struct.Struct("<QQ")
_SIGNATURE_LIST = struct.Struct("<16sIII")
_GPT_HEADER = struct.Struct("<8sIIII QQQQ 16s QII I")
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")
_NODE = struct.Struct("<BBH")


class DecodeError(ValueError):
    """Event data does not have the structure its type announces."""


def guid(raw: bytes) -> str:
    """An EFI_GUID (mixed-endian, as UEFI stores it) in its registry form."""
    return str(uuid.UUID(bytes_le=bytes(raw)))


def ucs2(raw: bytes) -> str:
    """UCS-2 text as firmware writes it, up to the first NUL; unpaired surrogates are replaced."""
    text = bytes(raw).decode("utf-16-le", errors="replace")
    end = text.find("\x00")
    return text if end < 0 else text[:end]


class _Reader:
    """Bounds-checked little-endian reads; running past the end is a DecodeError."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > len(self.data) - self.pos:
            raise DecodeError(f"{what}: needs {n} bytes at offset {self.pos}, {self.remaining()} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, s: struct.Struct, what: str) -> tuple[Any, ...]:
        return s.unpack(self.take(s.size, what))

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int(self.unpack(_U16, what)[0])

    def u32(self, what: str) -> int:
        return int(self.unpack(_U32, what)[0])

    def u64(self, what: str) -> int:
        return int(self.unpack(_U64, what)[0])

    def guid(self, what: str) -> str:
        return guid(self.take(16, what))

    def rest(self) -> bytes:
        return self.take(self.remaining(), "rest")


# --- decoded values ------------------------------------------------------------------------


def _json(value: Any) -> Any:
    if isinstance(value, Decoded):
        return value.to_json()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    return value


@dataclass(frozen=True)
class Decoded:
    """Base of every decoded structure; `kind` names it in JSON output."""

    kind: ClassVar[str] = "decoded"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            out[f.name] = _json(getattr(self, f.name))
        return out


@dataclass(frozen=True)
class Undecodable(Decoded):
    """The data does not have the structure the event type announces (the raw bytes stay in the event)."""

    kind: ClassVar[str] = "undecodable"
    error: str


@dataclass(frozen=True)
class Text(Decoded):
    """A string event: EV_EFI_ACTION, EV_IPL, EV_S_CRTM_VERSION, EV_POST_CODE descriptions."""

    kind: ClassVar[str] = "text"
    text: str
    encoding: str  # "ascii" or "utf-16le": what the firmware or boot loader wrote


@dataclass(frozen=True)
class Separator(Decoded):
    """EV_SEPARATOR: 0 normally, 0xFFFFFFFF (or 1 on some firmware) when a pre-OS error occurred."""

    kind: ClassVar[str] = "separator"
    value: int
    error: bool


@dataclass(frozen=True)
class Certificate(Decoded):
    """An X.509 certificate kept as DER; `subject` is None when the DER does not parse."""

    kind: ClassVar[str] = "certificate"
    der: bytes
    sha256: str
    subject: str | None


@dataclass(frozen=True)
class SignatureData(Decoded):
    """EFI_SIGNATURE_DATA: the owner and one hash or certificate."""

    kind: ClassVar[str] = "signature"
    owner: str
    data: bytes
    certificate: Certificate | None


@dataclass(frozen=True)
class SignatureList(Decoded):
    kind: ClassVar[str] = "signature_list"
    signature_type: str
    type_name: str | None  # "x509", "sha256", ... ; None for a type this decoder does not know
    header: bytes
    signatures: tuple[SignatureData, ...]


@dataclass(frozen=True)
class SignatureDatabase(Decoded):
    """PK, KEK, db, dbx, dbt, dbr, MokList, MokListX: an array of EFI_SIGNATURE_LIST."""

    kind: ClassVar[str] = "signature_database"
    lists: tuple[SignatureList, ...]


@dataclass(frozen=True)
class Boolean(Decoded):
    """A one-byte UEFI boolean; `value` is None when the variable was measured empty (absent)."""

    kind: ClassVar[str] = "boolean"
    value: bool | None


@dataclass(frozen=True)
class BootOrder(Decoded):
    kind: ClassVar[str] = "boot_order"
    entries: tuple[str, ...]  # "Boot0001", ...


@dataclass(frozen=True)
class LoadOption(Decoded):
    """EFI_LOAD_OPTION (Boot####): the first device path is the one the firmware boots."""

    kind: ClassVar[str] = "load_option"
    attributes: int
    active: bool
    description: str
    device_paths: tuple[str | None, ...]
    optional_data: bytes


@dataclass(frozen=True)
class UefiVariable(Decoded):
    """UEFI_VARIABLE_DATA; `value` is the decoded VariableData where the variable is known."""

    kind: ClassVar[str] = "uefi_variable"
    guid: str
    name: str
    data: bytes
    value: Decoded | None
    trailing: bytes  # bytes after VariableData inside the event (a firmware bug; not part of the variable)


@dataclass(frozen=True)
class ImageLoad(Decoded):
    """UEFI_IMAGE_LOAD_EVENT: where a PE image was loaded from (its digest is the Authenticode hash)."""

    kind: ClassVar[str] = "image_load"
    location: int
    length: int
    link_time_address: int
    device_path: str | None  # None when the device path does not decode
    device_path_raw: bytes


@dataclass(frozen=True)
class FirmwareBlob(Decoded):
    """UEFI_PLATFORM_FIRMWARE_BLOB(2): a measured firmware region (digest of memory, not of this data)."""

    kind: ClassVar[str] = "firmware_blob"
    base: int
    length: int
    description: str | None  # only in the BLOB2 form


@dataclass(frozen=True)
class HandoffTable(Decoded):
    kind: ClassVar[str] = "handoff_table"
    guid: str
    address: int


@dataclass(frozen=True)
class HandoffTables(Decoded):
    """UEFI_HANDOFF_TABLE_POINTERS(2): configuration tables (e.g. SMBIOS) handed to the OS."""

    kind: ClassVar[str] = "handoff_tables"
    description: str | None
    tables: tuple[HandoffTable, ...]


@dataclass(frozen=True)
class GptPartition(Decoded):
    kind: ClassVar[str] = "gpt_partition"
    type_guid: str
    unique_guid: str
    starting_lba: int
    ending_lba: int
    attributes: int
    name: str


@dataclass(frozen=True)
class GptData(Decoded):
    """UEFI_GPT_DATA: the GPT header and the partitions in use, as the firmware read them."""

    kind: ClassVar[str] = "gpt"
    disk_guid: str
    revision: int
    my_lba: int
    alternate_lba: int
    first_usable_lba: int
    last_usable_lba: int
    partition_entry_lba: int
    partitions: tuple[GptPartition, ...]


@dataclass(frozen=True)
class TaggedEvent(Decoded):
    """TCG_PCClientTaggedEvent (EV_EVENT_TAG), used e.g. by systemd's boot stub."""

    kind: ClassVar[str] = "tagged_event"
    tag: int
    data: bytes
    text: str | None


# --- primitives ----------------------------------------------------------------------------


def _printable_ascii(raw: bytes) -> str | None:
    """ASCII text without a trailing NUL, or None when the bytes are not text."""
    body = raw[:-1] if raw.endswith(b"\x00") else raw
    if not body or not all(0x20 <= b < 0x7F or b in (0x09, 0x0A, 0x0D) for b in body):
        return None
    return body.decode("ascii")


def _printable_ucs2(raw: bytes) -> str | None:
    if len(raw) % 2 and raw.endswith(b"\x00"):
        raw = raw[:-1]  # systemd-boot has logged a UTF-16 command line with one extra NUL byte
    if len(raw) < 2 or len(raw) % 2:
        return None
    # Firmware and boot loader strings are ASCII in UTF-16 clothing; requiring that keeps binary
    # data (a GUID, a hash) from passing for CJK text.
    text = raw.decode("utf-16-le", errors="replace").rstrip("\x00")
    if not text or not all(" " <= c <= "~" or c in "\t\r\n" for c in text):
        return None
    return text


def text(raw: bytes) -> Text | None:
    """A string as boot software writes one: ASCII (optionally NUL-terminated) or UTF-16LE."""
    ascii_text = _printable_ascii(raw)
    if ascii_text is not None:
        return Text(ascii_text, "ascii")
    wide = _printable_ucs2(raw)
    return None if wide is None else Text(wide, "utf-16le")


def certificate(der: bytes) -> Certificate:
    try:
        subject: str | None = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except UNDECODABLE:
        subject = None
    return Certificate(der, hashlib.sha256(der).hexdigest(), subject)


def signature_data(raw: bytes, type_guid: str) -> SignatureData:
    if len(raw) < 16:
        raise DecodeError(f"EFI_SIGNATURE_DATA of {len(raw)} bytes is shorter than its owner GUID")
    payload = raw[16:]
    cert = certificate(payload) if type_guid == EFI_CERT_X509 else None
    return SignatureData(guid(raw[:16]), payload, cert)


def signature_database(raw: bytes) -> SignatureDatabase:
    """An array of EFI_SIGNATURE_LIST, each a header and SignatureSize-byte entries."""
    lists = []
    r = _Reader(raw)
    while r.remaining():
        start = r.pos
        type_raw, list_size, header_size, sig_size = r.unpack(_SIGNATURE_LIST, "EFI_SIGNATURE_LIST")
        body = list_size - _SIGNATURE_LIST.size - header_size
        if list_size > len(raw) - start or body < 0:
            raise DecodeError(f"EFI_SIGNATURE_LIST at {start}: size {list_size} does not fit")
        if sig_size < 16 or body % sig_size:
            raise DecodeError(f"EFI_SIGNATURE_LIST at {start}: {body} bytes are not {sig_size}-byte entries")
        type_guid = guid(type_raw)
        header = r.take(header_size, "SignatureHeader")
        sigs = tuple(
            signature_data(r.take(sig_size, "EFI_SIGNATURE_DATA"), type_guid) for _ in range(body // sig_size)
        )
        lists.append(SignatureList(type_guid, SIGNATURE_TYPES.get(type_guid), header, sigs))
    return SignatureDatabase(tuple(lists))


# --- device paths --------------------------------------------------------------------------

_END = 0x7F
_END_ENTIRE = 0xFF
_END_INSTANCE = 0x01


def _vendor(prefix: str, body: bytes) -> str:
    extra = body[16:]
    return f"{prefix}({guid(body[:16])}" + (f",{extra.hex()})" if extra else ")")


def _acpi(body: bytes) -> str:
    hid, uid = struct.unpack_from("<II", body)
    if hid & 0xFFFF == 0x41D0:  # a compressed EISA "PNP" identifier
        pnp = hid >> 16
        named = {
            0x0A03: "PciRoot",
            0x0A08: "PcieRoot",
            0x0604: "Floppy",
            0x0301: "Keyboard",
            0x0501: "Serial",
        }
        if pnp in named:
            return f"{named[pnp]}(0x{uid:x})"
        return f"Acpi(PNP{pnp:04X},0x{uid:x})"
    return f"Acpi(0x{hid:08x},0x{uid:x})"


def _ipv4(body: bytes) -> str:
    local, remote = body[0:4], body[4:8]
    _lport, _rport, proto, static = struct.unpack_from("<HHHB", body, 8)
    protocol = {6: "TCP", 17: "UDP"}.get(proto, str(proto))
    parts = [".".join(map(str, remote)), protocol, "Static" if static else "DHCP", ".".join(map(str, local))]
    if len(body) >= 23:  # the longer, newer node adds the gateway and subnet mask
        parts += [".".join(map(str, body[15:19])), ".".join(map(str, body[19:23]))]
    return f"IPv4({','.join(parts)})"


def _hard_drive(body: bytes) -> str:
    part, start, size = struct.unpack_from("<IQQ", body)
    signature, sig_type = body[20:36], body[37]
    if sig_type == 2:
        return f"HD({part},GPT,{guid(signature)},0x{start:x},0x{size:x})"
    if sig_type == 1:
        return f"HD({part},MBR,0x{_U32.unpack_from(signature)[0]:08x},0x{start:x},0x{size:x})"
    return f"HD({part},{sig_type},0,0x{start:x},0x{size:x})"


def _bbs(body: bytes) -> str:
    dev_type, status = struct.unpack_from("<HH", body)
    names = {1: "Floppy", 2: "HD", 3: "CDROM", 4: "PCMCIA", 5: "USB", 6: "Network"}
    description = body[4:].split(b"\x00", 1)[0].decode("ascii", errors="replace")
    return f"BBS({names.get(dev_type, f'0x{dev_type:x}')},{description},0x{status:x})"


def _ram_disk(body: bytes) -> str:
    start, end = _BLOB.unpack_from(body)
    return f"RamDisk(0x{start:x},0x{end:x},{guid(body[16:32])})"


def _nvme(body: bytes) -> str:
    nsid = _U32.unpack_from(body)[0]
    eui = "-".join(f"{b:02X}" for b in reversed(body[4:12]))
    return f"NVMe(0x{nsid:x},{eui})"


def _u(fmt: str, template: str) -> Callable[[bytes], str]:
    s = struct.Struct("<" + fmt)
    return lambda body: template.format(*s.unpack_from(body))


# (type, subtype) -> (minimum body size, renderer). The text forms follow the UEFI
# specification's device path to text conventions as efivar prints them.
_NODES: dict[tuple[int, int], tuple[int, Callable[[bytes], str]]] = {
    (0x01, 0x01): (2, lambda b: f"Pci(0x{b[1]:x},0x{b[0]:x})"),
    (0x01, 0x02): (1, lambda b: f"PcCard(0x{b[0]:x})"),
    (0x01, 0x03): (20, _u("IQQ", "MemoryMapped({0},0x{1:x},0x{2:x})")),
    (0x01, 0x04): (16, lambda b: _vendor("VenHw", b)),
    (0x01, 0x05): (4, _u("I", "Ctrl(0x{0:x})")),
    (0x01, 0x06): (9, _u("BQ", "BMC({0},0x{1:x})")),
    (0x02, 0x01): (8, _acpi),
    (0x02, 0x03): (4, _u("I", "AcpiAdr(0x{0:x})")),
    (0x03, 0x01): (4, _u("BBH", "Ata({0},{1},{2})")),
    (0x03, 0x02): (4, _u("HH", "SCSI({0},{1})")),
    (0x03, 0x03): (20, _u("IQQ", "Fibre(0x{1:x},0x{2:x})")),
    (0x03, 0x05): (2, _u("BB", "USB({0},{1})")),
    (0x03, 0x0A): (16, lambda b: _vendor("VenMsg", b)),
    (0x03, 0x0B): (33, lambda b: f"MAC({b[: 6 if b[32] in (0, 1) else 32].hex()},{b[32]})"),
    (0x03, 0x0C): (15, _ipv4),
    (0x03, 0x0F): (7, _u("HHBBB", "UsbClass(0x{0:x},0x{1:x},0x{2:x},0x{3:x},0x{4:x})")),
    (0x03, 0x11): (1, _u("B", "Unit({0})")),
    (0x03, 0x12): (6, _u("HHH", "Sata({0},{1},{2})")),
    (0x03, 0x14): (2, _u("H", "Vlan({0})")),
    (0x03, 0x17): (12, _nvme),
    (0x03, 0x18): (0, lambda b: f"Uri({b.decode('ascii', errors='replace')})"),
    (0x03, 0x1A): (1, _u("B", "eMMC({0})")),
    (0x03, 0x1D): (1, _u("B", "SD({0})")),
    (0x04, 0x01): (38, _hard_drive),
    (0x04, 0x02): (20, _u("IQQ", "CDROM({0},0x{1:x},0x{2:x})")),
    (0x04, 0x03): (16, lambda b: _vendor("VenMedia", b)),
    (0x04, 0x04): (0, lambda b: f"File({ucs2(b)})"),
    (0x04, 0x05): (16, lambda b: f"Media({guid(b[:16])})"),
    (0x04, 0x06): (16, lambda b: f"FvFile({guid(b[:16])})"),
    (0x04, 0x07): (16, lambda b: f"FvVol({guid(b[:16])})"),
    (0x04, 0x08): (20, _u("IQQ", "Offset(0x{1:x},0x{2:x})")),
    (0x04, 0x09): (34, _ram_disk),
    (0x05, 0x01): (4, _bbs),
}


def _node_text(node_type: int, subtype: int, body: bytes) -> str:
    known = _NODES.get((node_type, subtype))
    if known is None:
        return f"Path({node_type},{subtype},{body.hex()})"
    min_size, render = known
    if len(body) < min_size:
        raise DecodeError(f"device path node ({node_type},{subtype}) has {len(body)} bytes, needs {min_size}")
    return render(body)


def device_paths(raw: bytes) -> tuple[str, ...]:
    """Every device path in a packed list (EFI_LOAD_OPTION.FilePathList), as text.

    Instances of one multi-instance path are joined with ",", as the UEFI text form does.
    """
    paths: list[str] = []
    instances: list[str] = []
    nodes: list[str] = []
    pos = 0
    while pos < len(raw):
        if len(raw) - pos < _NODE.size:
            raise DecodeError(f"device path node header truncated at {pos}")
        node_type, subtype, length = _NODE.unpack_from(raw, pos)
        if length < _NODE.size or length > len(raw) - pos:
            raise DecodeError(f"device path node at {pos} has length {length}")
        body = raw[pos + _NODE.size : pos + length]
        pos += length
        if node_type == _END and subtype == _END_ENTIRE:
            paths.append(",".join([*instances, "/".join(nodes)]))
            instances, nodes = [], []
        elif node_type == _END and subtype == _END_INSTANCE:
            instances.append("/".join(nodes))
            nodes = []
        else:
            nodes.append(_node_text(node_type, subtype, body))
    if nodes or instances:
        raise DecodeError("device path has no end node")
    return tuple(paths)


def device_path(raw: bytes) -> str:
    """One device path as text; an empty path is "" and anything after its end node is ignored."""
    if not raw:
        return ""
    paths = device_paths(_first_path(raw))
    return paths[0]


def _first_path(raw: bytes) -> bytes:
    pos = 0
    while pos + _NODE.size <= len(raw):
        node_type, subtype, length = _NODE.unpack_from(raw, pos)
        if length < _NODE.size:
            break
        pos += length
        if node_type == _END and subtype == _END_ENTIRE:
            return raw[:pos]
    return raw


# --- event structures ----------------------------------------------------------------------


class VariableHeader(NamedTuple):
    guid: str
    name: str
    start: int  # offset of VariableData in the event data
    size: int  # VariableDataLength


def variable_header(raw: bytes) -> VariableHeader | None:
    """The header of a UEFI_VARIABLE_DATA whose declared sizes fit in `raw`, else None."""
    if len(raw) < _VARIABLE_HEADER.size:
        return None
    guid_raw, name_len, data_len = _VARIABLE_HEADER.unpack_from(raw)
    start = _VARIABLE_HEADER.size + 2 * name_len
    if start + data_len > len(raw):
        return None
    return VariableHeader(guid(guid_raw), ucs2(raw[_VARIABLE_HEADER.size : start]), start, data_len)


def _boot_order(raw: bytes) -> BootOrder:
    if len(raw) % 2:
        raise DecodeError(f"BootOrder of odd length {len(raw)}")
    return BootOrder(tuple(f"Boot{n:04X}" for (n,) in _U16.iter_unpack(raw)))


def load_option(raw: bytes) -> LoadOption:
    r = _Reader(raw)
    attributes = r.u32("Attributes")
    path_len = r.u16("FilePathListLength")
    rest = raw[r.pos :]
    for i in range(0, len(rest) - 1, 2):
        if rest[i] == 0 and rest[i + 1] == 0:
            description = rest[:i].decode("utf-16-le", errors="replace")
            r.pos += i + 2
            break
    else:
        raise DecodeError("EFI_LOAD_OPTION description is not NUL-terminated")
    path_list = r.take(path_len, "FilePathList")
    try:
        paths: tuple[str | None, ...] = device_paths(path_list)
    except DecodeError:
        paths = (None,)
    return LoadOption(attributes, bool(attributes & 1), description, paths, r.rest())


def _variable_value(var_guid: str, name: str, value: bytes) -> Decoded | None:
    key = (var_guid, name)
    if key in _BOOLEANS:
        if len(value) > 1:
            raise DecodeError(f"{name} has {len(value)} bytes, a boolean has 1")
        return Boolean(bool(value[0]) if value else None)
    if key in _SIGNATURE_DATABASES:
        return signature_database(value)
    if var_guid == EFI_GLOBAL_VARIABLE and name == "BootOrder":
        return _boot_order(value)
    if var_guid == EFI_GLOBAL_VARIABLE and len(name) == 8 and name.startswith("Boot") and _is_hex(name[4:]):
        return load_option(value)
    if key in _TEXT_VARIABLES:
        return text(value)
    return None


def _authority_value(var_guid: str, name: str, value: bytes) -> Decoded | None:
    # PFP: an EV_EFI_VARIABLE_AUTHORITY event carries the one EFI_SIGNATURE_DATA (owner and
    # certificate) that authorized an image; shim logs its built-in vendor certificate as bare DER.
    if (var_guid, name) in _SIGNATURE_DATABASES:
        return signature_data(value, EFI_CERT_X509)
    if var_guid == SHIM_LOCK and name == "Shim":
        return certificate(value)
    return _variable_value(var_guid, name, value)


def _is_hex(s: str) -> bool:
    return all(c in "0123456789ABCDEFabcdef" for c in s)


def uefi_variable(raw: bytes, authority: bool = False) -> UefiVariable:
    header = variable_header(raw)
    if header is None:
        raise DecodeError("UEFI_VARIABLE_DATA sizes run past the event")
    value = raw[header.start : header.start + header.size]
    try:
        decoded = (_authority_value if authority else _variable_value)(header.guid, header.name, value)
    except DecodeError as e:
        decoded = Undecodable(str(e))
    return UefiVariable(header.guid, header.name, value, decoded, raw[header.start + header.size :])


def image_load(raw: bytes) -> ImageLoad:
    r = _Reader(raw)
    location, length, link, path_len = r.unpack(_IMAGE_LOAD, "UEFI_IMAGE_LOAD_EVENT")
    path_raw = r.take(path_len, "DevicePath") if path_len <= r.remaining() else r.rest()
    try:
        path: str | None = device_path(path_raw)
    except DecodeError:
        path = None
    if path_len > len(path_raw):
        path = None
    return ImageLoad(location, length, link, path, path_raw)


def firmware_blob(raw: bytes) -> FirmwareBlob:
    if len(raw) != _BLOB.size:
        raise DecodeError(f"UEFI_PLATFORM_FIRMWARE_BLOB is {_BLOB.size} bytes, not {len(raw)}")
    base, length = _BLOB.unpack(raw)
    return FirmwareBlob(base, length, None)


def firmware_blob2(raw: bytes) -> FirmwareBlob:
    r = _Reader(raw)
    description = r.take(r.u8("BlobDescriptionSize"), "BlobDescription")
    base, length = r.unpack(_BLOB, "UEFI_PLATFORM_FIRMWARE_BLOB2")
    if r.remaining():
        raise DecodeError(f"{r.remaining()} bytes after UEFI_PLATFORM_FIRMWARE_BLOB2")
    return FirmwareBlob(base, length, description.rstrip(b"\x00").decode("ascii", errors="replace"))


def _handoff(raw: bytes, described: bool) -> HandoffTables:
    r = _Reader(raw)
    description = None
    if described:
        description = (
            r.take(r.u8("TableDescriptionSize"), "TableDescription")
            .rstrip(b"\x00")
            .decode("ascii", errors="replace")
        )
    count = r.u64("NumberOfTables")
    if count * 24 != r.remaining():
        raise DecodeError(f"{count} configuration tables do not fill {r.remaining()} bytes")
    tables = tuple(HandoffTable(r.guid("VendorGuid"), r.u64("VendorTable")) for _ in range(count))
    return HandoffTables(description, tables)


def gpt(raw: bytes) -> GptData:
    r = _Reader(raw)
    header = r.unpack(_GPT_HEADER, "EFI_PARTITION_TABLE_HEADER")
    sig, revision, my_lba, alt_lba, first, last, disk, entry_lba = header[:2] + header[5:11]
    entry_size = header[12]
    if sig != b"EFI PART":
        raise DecodeError(f"GPT header signature {sig!r}")
    count = r.u64("NumberOfPartitions")
    if entry_size < _GPT_ENTRY.size or count * entry_size != r.remaining():
        raise DecodeError(f"{count} partitions of {entry_size} bytes do not fill {r.remaining()} bytes")
    partitions = []
    for _ in range(count):
        type_g, unique, start, end, attrs, name = _GPT_ENTRY.unpack_from(r.take(entry_size, "partition"))
        partitions.append(GptPartition(guid(type_g), guid(unique), start, end, attrs, ucs2(name)))
    return GptData(guid(disk), revision, my_lba, alt_lba, first, last, entry_lba, tuple(partitions))


def separator(raw: bytes) -> Separator:
    if len(raw) != 4:
        raise DecodeError(f"separator of {len(raw)} bytes")
    value = _U32.unpack(raw)[0]
    return Separator(value, value != 0)


def tagged_event(raw: bytes) -> TaggedEvent:
    r = _Reader(raw)
    tag = r.u32("taggedEventID")
    body = r.take(r.u32("taggedEventDataSize"), "taggedEventData")
    if r.remaining():
        raise DecodeError(f"{r.remaining()} bytes after the tagged event")
    decoded = _printable_ascii(body)
    return TaggedEvent(tag, body, decoded)


def _required_text(raw: bytes) -> Text:
    decoded = text(raw)
    if decoded is None:
        raise DecodeError("not a printable string")
    return decoded


def _crtm_version(raw: bytes) -> Decoded | None:
    # PFP: a UCS-2 version string; some firmware logs a 16-byte GUID instead, left raw.
    version = _printable_ucs2(raw)
    return None if version is None else Text(version, "utf-16le")


def _post_code(raw: bytes) -> Decoded | None:
    # PFP, EV_POST_CODE and EV_S_CRTM_CONTENTS: either a
    # UEFI_PLATFORM_FIRMWARE_BLOB or a string naming what was measured.
    described = text(raw)
    if described is not None:
        return described
    return firmware_blob(raw) if len(raw) == _BLOB.size else None


_DECODERS: dict[int, Callable[[bytes], Decoded | None]] = {
    EventType.EV_SEPARATOR: separator,
    EventType.EV_ACTION: _required_text,
    EventType.EV_EFI_ACTION: _required_text,
    EventType.EV_OMIT_BOOT_DEVICE_EVENTS: text,
    EventType.EV_IPL: text,
    EventType.EV_S_CRTM_VERSION: _crtm_version,
    EventType.EV_POST_CODE: _post_code,
    EventType.EV_S_CRTM_CONTENTS: _post_code,
    EventType.EV_PLATFORM_CONFIG_FLAGS: text,
    EventType.EV_COMPACT_HASH: text,
    EventType.EV_EVENT_TAG: tagged_event,
    EventType.EV_EFI_VARIABLE_DRIVER_CONFIG: uefi_variable,
    EventType.EV_EFI_VARIABLE_BOOT: uefi_variable,
    EventType.EV_EFI_VARIABLE_BOOT2: uefi_variable,
    EventType.EV_EFI_VARIABLE_AUTHORITY: lambda raw: uefi_variable(raw, authority=True),
    EventType.EV_EFI_BOOT_SERVICES_APPLICATION: image_load,
    EventType.EV_EFI_BOOT_SERVICES_DRIVER: image_load,
    EventType.EV_EFI_RUNTIME_SERVICES_DRIVER: image_load,
    EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB: firmware_blob,
    EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2: firmware_blob2,
    EventType.EV_EFI_HANDOFF_TABLES: lambda raw: _handoff(raw, described=False),
    EventType.EV_EFI_HANDOFF_TABLES2: lambda raw: _handoff(raw, described=True),
    EventType.EV_EFI_GPT_EVENT: gpt,
    EventType.EV_EFI_GPT_EVENT2: gpt,
}


def decode(event_type: int, raw: bytes) -> Decoded | None:
    """The structure of an event's data, None for types without one, Undecodable when it is broken."""
    decoder = _DECODERS.get(event_type)
    if decoder is None:
        return None
    try:
        return decoder(raw)
    except (DecodeError, struct.error) as e:
        return Undecodable(str(e))
