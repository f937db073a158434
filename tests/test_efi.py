"""UEFI event data decoding: device paths, signature databases, variables, images, GPT."""

from __future__ import annotations

import hashlib
import struct
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.tcg import EventType
from attest.verify import efi
from tests.certs import self_signed

ET = EventType
GLOBAL = efi.EFI_GLOBAL_VARIABLE
SECURITY_DB = efi.EFI_IMAGE_SECURITY_DATABASE
OWNER = "77fa9abd-0359-4d32-bd60-28f4e78f784b"
SHA256_TYPE = "c1c41626-504c-4092-aca9-41f936934328"


def g(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


def node(node_type: int, subtype: int, body: bytes = b"") -> bytes:
    return struct.pack("<BBH", node_type, subtype, 4 + len(body)) + body


END = node(0x7F, 0xFF)
END_INSTANCE = node(0x7F, 0x01)
PCI_ROOT = node(2, 1, struct.pack("<II", 0x0A0341D0, 0))


def file_node(path: str) -> bytes:
    return node(4, 4, (path + "\0").encode("utf-16-le"))


def variable(var_guid: str, name: str, value: bytes) -> bytes:
    return g(var_guid) + struct.pack("<QQ", len(name), len(value)) + name.encode("utf-16-le") + value


def signature_list(
    type_guid: str, entries: list[bytes], header: bytes = b"", size: int | None = None
) -> bytes:
    sig_size = size if size is not None else (16 + len(entries[0]) if entries else 16)
    body = b"".join(g(OWNER) + e for e in entries)
    total = 28 + len(header) + len(body)
    return g(type_guid) + struct.pack("<III", total, len(header), sig_size) + header + body


# --- device paths --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (PCI_ROOT + node(1, 1, bytes([0, 0x1F])) + END, "PciRoot(0x0)/Pci(0x1f,0x0)"),
        (node(2, 1, struct.pack("<II", 0x0A0841D0, 1)) + END, "PcieRoot(0x1)"),
        (node(2, 1, struct.pack("<II", 0x050141D0, 2)) + END, "Serial(0x2)"),
        (node(2, 1, struct.pack("<II", 0x123441D0, 0)) + END, "Acpi(PNP1234,0x0)"),
        (node(2, 1, struct.pack("<II", 0x12345678, 0)) + END, "Acpi(0x12345678,0x0)"),
        (node(3, 0x12, struct.pack("<HHH", 1, 0xFFFF, 0)) + END, "Sata(1,65535,0)"),
        (node(3, 2, struct.pack("<HH", 1, 0)) + END, "SCSI(1,0)"),
        (node(3, 5, bytes([11, 0])) + END, "USB(11,0)"),
        (node(3, 0x17, struct.pack("<I", 1) + bytes(range(1, 9))) + END, "NVMe(0x1,08-07-06-05-04-03-02-01)"),
        (node(3, 0x18, b"http://boot/x.efi") + END, "Uri(http://boot/x.efi)"),
        (node(3, 0x0B, bytes.fromhex("0cc47aff601c") + bytes(26) + b"\x01") + END, "MAC(0cc47aff601c,1)"),
        (
            node(3, 0x0C, bytes([10, 0, 0, 2, 10, 0, 0, 1]) + struct.pack("<HHHB", 0, 69, 17, 1) + bytes(8))
            + END,
            "IPv4(10.0.0.1,UDP,Static,10.0.0.2,0.0.0.0,0.0.0.0)",
        ),
        (
            node(
                4,
                1,
                struct.pack("<IQQ", 1, 0x800, 0x100000)
                + g("1a504613-19b5-4b44-a83d-d926d40daa1c")
                + b"\x02\x02",
            )
            + file_node("\\EFI\\BOOT\\BOOTX64.EFI")
            + END,
            "HD(1,GPT,1a504613-19b5-4b44-a83d-d926d40daa1c,0x800,0x100000)/File(\\EFI\\BOOT\\BOOTX64.EFI)",
        ),
        (
            node(
                4,
                1,
                struct.pack("<IQQ", 2, 63, 2048) + struct.pack("<I", 0xDEADBEEF) + bytes(12) + b"\x01\x01",
            )
            + END,
            "HD(2,MBR,0xdeadbeef,0x3f,0x800)",
        ),
        (node(4, 8, struct.pack("<IQQ", 0, 0x15C00, 0x47FFF)) + END, "Offset(0x15c00,0x47fff)"),
        (
            node(4, 7, g("7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1"))
            + node(4, 6, g("462caa21-7614-4503-836e-8ab6f4662331"))
            + END,
            "FvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)",
        ),
        (node(1, 4, g(OWNER) + b"\xab") + END, f"VenHw({OWNER},ab)"),
        (node(5, 1, struct.pack("<HH", 2, 0) + b"Disk\0") + END, "BBS(HD,Disk,0x0)"),
        (node(9, 9, b"\x01\x02") + END, "Path(9,9,0102)"),
        (PCI_ROOT + END_INSTANCE + file_node("\\a") + END, "PciRoot(0x0),File(\\a)"),
    ],
)
def test_device_path_text(raw: bytes, text: str) -> None:
    assert efi.device_path(raw) == text


def test_empty_device_path() -> None:
    assert efi.device_path(b"") == ""


def test_device_path_ignores_bytes_after_its_end() -> None:
    assert efi.device_path(PCI_ROOT + END + b"\xff\xff\xff") == "PciRoot(0x0)"


def test_packed_device_paths() -> None:
    assert efi.device_paths(file_node("\\a") + END + file_node("\\b") + END) == ("File(\\a)", "File(\\b)")


@pytest.mark.parametrize(
    ("raw", "what"),
    [
        (struct.pack("<BBH", 4, 4, 0) + END, "has length 0"),  # a zero-length node would never advance
        (struct.pack("<BBH", 4, 4, 3) + END, "has length 3"),
        (struct.pack("<BBH", 4, 4, 400) + END, "has length 400"),
        (PCI_ROOT, "no end node"),
        (PCI_ROOT + b"\x7f", "truncated"),
        (node(1, 1, b"\x00") + END, "needs 2"),
    ],
)
def test_malformed_device_paths(raw: bytes, what: str) -> None:
    with pytest.raises(efi.DecodeError, match=what):
        efi.device_paths(raw)


# --- variables -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(b"\x01", True), (b"\x00", False), (b"", None)])
def test_secure_boot_boolean(value: bytes, expected: bool | None) -> None:
    decoded = efi.decode(ET.EV_EFI_VARIABLE_DRIVER_CONFIG, variable(GLOBAL, "SecureBoot", value))
    assert decoded == efi.UefiVariable(GLOBAL, "SecureBoot", value, efi.Boolean(expected), b"")


def test_secure_boot_of_two_bytes_is_undecodable_but_the_variable_is_kept() -> None:
    decoded = efi.decode(ET.EV_EFI_VARIABLE_DRIVER_CONFIG, variable(GLOBAL, "SecureBoot", b"\x01\x01"))
    assert isinstance(decoded, efi.UefiVariable)
    assert decoded.name == "SecureBoot"
    assert isinstance(decoded.value, efi.Undecodable)


def test_secure_boot_under_another_guid_is_not_the_secure_boot_variable() -> None:
    decoded = efi.decode(ET.EV_EFI_VARIABLE_DRIVER_CONFIG, variable(OWNER, "SecureBoot", b"\x01"))
    assert isinstance(decoded, efi.UefiVariable)
    assert decoded.value is None


def test_signature_database_with_certificates_and_hashes() -> None:
    der = self_signed("Test PK").public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(b"image").digest()
    value = signature_list(efi.EFI_CERT_X509, [der]) + signature_list(SHA256_TYPE, [digest, bytes(32)])
    decoded = efi.decode(ET.EV_EFI_VARIABLE_DRIVER_CONFIG, variable(SECURITY_DB, "db", value))
    assert isinstance(decoded, efi.UefiVariable)
    db = decoded.value
    assert isinstance(db, efi.SignatureDatabase)
    certs, hashes_ = db.lists
    assert certs.type_name == "x509"
    (sig,) = certs.signatures
    assert sig.owner == OWNER
    assert sig.certificate == efi.Certificate(der, hashlib.sha256(der).hexdigest(), "CN=Test PK")
    assert hashes_.type_name == "sha256"
    assert [s.data for s in hashes_.signatures] == [digest, bytes(32)]
    assert all(s.certificate is None for s in hashes_.signatures)
    doc = decoded.to_json()
    assert doc["value"]["lists"][0]["signatures"][0]["certificate"]["subject"] == "CN=Test PK"
    assert doc["value"]["lists"][1]["signatures"][0]["data"] == digest.hex()


def test_certificate_that_does_not_parse_keeps_der_and_fingerprint() -> None:
    cert = efi.certificate(b"\x30\x03\x02\x01\x00")
    assert cert.subject is None
    assert cert.sha256 == hashlib.sha256(b"\x30\x03\x02\x01\x00").hexdigest()


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (signature_list(SHA256_TYPE, [bytes(32)])[:-1], "does not fit"),
        (signature_list(SHA256_TYPE, [bytes(32)], size=0), "entries"),  # would loop forever if accepted
        (signature_list(SHA256_TYPE, [bytes(32)], size=15), "entries"),
        (g(SHA256_TYPE) + struct.pack("<III", 10, 0, 48), "does not fit"),
        (b"\x00" * 27, "EFI_SIGNATURE_LIST"),
    ],
)
def test_malformed_signature_lists(value: bytes, what: str) -> None:
    decoded = efi.decode(ET.EV_EFI_VARIABLE_DRIVER_CONFIG, variable(SECURITY_DB, "dbx", value))
    assert isinstance(decoded, efi.UefiVariable)
    assert isinstance(decoded.value, efi.Undecodable)
    assert what in decoded.value.error


def test_authority_event_holds_one_signature_data() -> None:
    der = self_signed("Test CA").public_bytes(serialization.Encoding.DER)
    decoded = efi.decode(ET.EV_EFI_VARIABLE_AUTHORITY, variable(SECURITY_DB, "db", g(OWNER) + der))
    assert isinstance(decoded, efi.UefiVariable)
    assert isinstance(decoded.value, efi.SignatureData)
    assert decoded.value.owner == OWNER
    assert decoded.value.certificate is not None
    assert decoded.value.certificate.subject == "CN=Test CA"


def test_shim_vendor_certificate_authority() -> None:
    der = self_signed("Vendor").public_bytes(serialization.Encoding.DER)
    decoded = efi.decode(ET.EV_EFI_VARIABLE_AUTHORITY, variable(efi.SHIM_LOCK, "Shim", der))
    assert isinstance(decoded, efi.UefiVariable)
    assert isinstance(decoded.value, efi.Certificate)
    assert decoded.value.subject == "CN=Vendor"


def test_sbat_level_text() -> None:
    decoded = efi.decode(
        ET.EV_EFI_VARIABLE_AUTHORITY, variable(efi.SHIM_LOCK, "SbatLevel", b"sbat,1,2021030218\n")
    )
    assert isinstance(decoded, efi.UefiVariable)
    assert decoded.value == efi.Text("sbat,1,2021030218\n", "ascii")


def test_boot_order_and_load_option() -> None:
    order = efi.decode(
        ET.EV_EFI_VARIABLE_BOOT, variable(GLOBAL, "BootOrder", struct.pack("<HHH", 3, 0, 0x1A))
    )
    assert isinstance(order, efi.UefiVariable)
    assert order.value == efi.BootOrder(("Boot0003", "Boot0000", "Boot001A"))
    paths = file_node("\\EFI\\shim.efi") + END + file_node("\\initrd") + END
    option = struct.pack("<IH", 1, len(paths)) + "Linux\0".encode("utf-16-le") + paths + b"opt"
    decoded = efi.decode(ET.EV_EFI_VARIABLE_BOOT, variable(GLOBAL, "Boot0003", option))
    assert isinstance(decoded, efi.UefiVariable)
    assert decoded.value == efi.LoadOption(
        1, True, "Linux", ("File(\\EFI\\shim.efi)", "File(\\initrd)"), b"opt"
    )


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (struct.pack("<IH", 1, 0) + b"L\x00", "not NUL-terminated"),
        (struct.pack("<IH", 1, 100) + b"\x00\x00", "FilePathList"),
        (b"\x01", "Attributes"),
    ],
)
def test_malformed_load_options(value: bytes, what: str) -> None:
    decoded = efi.decode(ET.EV_EFI_VARIABLE_BOOT, variable(GLOBAL, "Boot0001", value))
    assert isinstance(decoded, efi.UefiVariable)
    assert isinstance(decoded.value, efi.Undecodable)
    assert what in decoded.value.error


def test_load_option_with_a_broken_path_keeps_its_description() -> None:
    paths = b"\x04\x04\x00\x00"
    option = struct.pack("<IH", 0, len(paths)) + "Old\0".encode("utf-16-le") + paths
    decoded = efi.decode(ET.EV_EFI_VARIABLE_BOOT, variable(GLOBAL, "Boot0001", option))
    assert isinstance(decoded, efi.UefiVariable)
    assert decoded.value == efi.LoadOption(0, False, "Old", (None,), b"")


def test_variable_sizes_must_fit_the_event() -> None:
    raw = variable(GLOBAL, "BootOrder", b"\x01\x00")
    assert isinstance(efi.decode(ET.EV_EFI_VARIABLE_BOOT, raw[:-1]), efi.Undecodable)
    header = efi.variable_header(raw)
    assert header == efi.VariableHeader(GLOBAL, "BootOrder", 32 + 18, 2)
    assert efi.variable_header(raw[:31]) is None


def test_trailing_bytes_after_the_variable_are_kept_apart() -> None:
    decoded = efi.decode(
        ET.EV_EFI_VARIABLE_AUTHORITY, variable(efi.SHIM_LOCK, "SbatLevel", b"sbat") + b"\xaa"
    )
    assert isinstance(decoded, efi.UefiVariable)
    assert decoded.data == b"sbat"
    assert decoded.trailing == b"\xaa"


# --- other event types ---------------------------------------------------------------------


def test_image_load_event() -> None:
    path = PCI_ROOT + file_node("\\k") + END
    raw = struct.pack("<QQQQ", 0x1000, 0x2000, 0, len(path)) + path
    assert efi.decode(ET.EV_EFI_BOOT_SERVICES_APPLICATION, raw) == efi.ImageLoad(
        0x1000, 0x2000, 0, "PciRoot(0x0)/File(\\k)", path
    )


def test_image_load_with_a_path_length_past_the_event() -> None:
    raw = struct.pack("<QQQQ", 0, 0, 0, 1 << 60) + PCI_ROOT + END
    decoded = efi.decode(ET.EV_EFI_BOOT_SERVICES_DRIVER, raw)
    assert isinstance(decoded, efi.ImageLoad)
    assert decoded.device_path is None
    assert isinstance(efi.decode(ET.EV_EFI_RUNTIME_SERVICES_DRIVER, raw[:20]), efi.Undecodable)


def test_firmware_blobs() -> None:
    assert efi.decode(
        ET.EV_EFI_PLATFORM_FIRMWARE_BLOB, struct.pack("<QQ", 0x820000, 0xE0000)
    ) == efi.FirmwareBlob(0x820000, 0xE0000, None)
    blob2 = b"\x06PEIFV\x00" + struct.pack("<QQ", 1, 2)
    assert efi.decode(ET.EV_EFI_PLATFORM_FIRMWARE_BLOB2, blob2) == efi.FirmwareBlob(1, 2, "PEIFV")
    assert isinstance(efi.decode(ET.EV_EFI_PLATFORM_FIRMWARE_BLOB, bytes(15)), efi.Undecodable)
    assert isinstance(efi.decode(ET.EV_EFI_PLATFORM_FIRMWARE_BLOB2, blob2 + b"x"), efi.Undecodable)


def test_handoff_tables() -> None:
    smbios = "eb9d2d31-2d88-11d3-9a16-0090273fc14d"
    raw = struct.pack("<Q", 1) + g(smbios) + struct.pack("<Q", 0xFEED)
    assert efi.decode(ET.EV_EFI_HANDOFF_TABLES, raw) == efi.HandoffTables(
        None, (efi.HandoffTable(smbios, 0xFEED),)
    )
    raw2 = b"\x04SMB\x00" + raw
    assert efi.decode(ET.EV_EFI_HANDOFF_TABLES2, raw2) == efi.HandoffTables(
        "SMB", (efi.HandoffTable(smbios, 0xFEED),)
    )
    huge = struct.pack("<Q", 1 << 62)
    assert isinstance(efi.decode(ET.EV_EFI_HANDOFF_TABLES, huge), efi.Undecodable)


def gpt_event(partitions: list[bytes], count: int | None = None, entry_size: int = 128) -> bytes:
    header = struct.pack(
        "<8sIIII QQQQ 16s QII I",
        b"EFI PART",
        0x10000,
        92,
        0,
        0,
        1,
        99,
        34,
        66,
        g(OWNER),
        2,
        128,
        entry_size,
        0,
    )
    n = len(partitions) if count is None else count
    return header + struct.pack("<Q", n) + b"".join(partitions)


def test_gpt_event() -> None:
    esp = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    entry = (
        g(esp) + g(OWNER) + struct.pack("<QQQ", 2048, 4095, 0) + "EFI\0".encode("utf-16-le").ljust(72, b"\0")
    )
    decoded = efi.decode(ET.EV_EFI_GPT_EVENT, gpt_event([entry]))
    assert decoded == efi.GptData(
        OWNER, 0x10000, 1, 99, 34, 66, 2, (efi.GptPartition(esp, OWNER, 2048, 4095, 0, "EFI"),)
    )


@pytest.mark.parametrize(
    "raw",
    [
        gpt_event([], count=1 << 60),  # a count that would allocate forever
        gpt_event([bytes(64)], entry_size=64),
        gpt_event([bytes(128)])[:-1],
        b"EFI PARX" + gpt_event([])[8:],
        bytes(10),
    ],
)
def test_malformed_gpt_events(raw: bytes) -> None:
    assert isinstance(efi.decode(ET.EV_EFI_GPT_EVENT, raw), efi.Undecodable)


@pytest.mark.parametrize(
    ("etype", "raw", "expected"),
    [
        (ET.EV_SEPARATOR, bytes(4), efi.Separator(0, False)),
        (ET.EV_SEPARATOR, b"\xff" * 4, efi.Separator(0xFFFFFFFF, True)),
        (
            ET.EV_EFI_ACTION,
            b"Exit Boot Services Invocation",
            efi.Text("Exit Boot Services Invocation", "ascii"),
        ),
        (ET.EV_IPL, b"grub_cmd: linux /vmlinuz\0", efi.Text("grub_cmd: linux /vmlinuz", "ascii")),
        (ET.EV_IPL, "quiet\0".encode("utf-16-le") + b"\0", efi.Text("quiet", "utf-16le")),
        (ET.EV_S_CRTM_VERSION, "v1\0".encode("utf-16-le"), efi.Text("v1", "utf-16le")),
        (ET.EV_S_CRTM_VERSION, bytes(range(16)), None),
        (ET.EV_POST_CODE, b"ACPI DATA", efi.Text("ACPI DATA", "ascii")),
        (ET.EV_POST_CODE, struct.pack("<QQ", 1, 2), efi.FirmwareBlob(1, 2, None)),
        (
            ET.EV_EVENT_TAG,
            struct.pack("<II", 0x8F3B22EC, 4) + b"abc\0",
            efi.TaggedEvent(0x8F3B22EC, b"abc\0", "abc"),
        ),
        (
            ET.EV_S_CRTM_CONTENTS,
            b"Boot Guard Measured S-CRTM\0",
            efi.Text("Boot Guard Measured S-CRTM", "ascii"),
        ),
        (ET.EV_COMPACT_HASH, b"\x01", None),
        (ET.EV_NONHOST_CODE, b"text", None),
        (0x12345678, b"\x01", None),
    ],
)
def test_simple_event_data(etype: int, raw: bytes, expected: efi.Decoded | None) -> None:
    assert efi.decode(etype, raw) == expected


@pytest.mark.parametrize(
    ("etype", "raw"),
    [
        (ET.EV_SEPARATOR, bytes(5)),
        (ET.EV_EFI_ACTION, b"\x00\x01\x02"),
        (ET.EV_EFI_ACTION, b""),
        (ET.EV_EVENT_TAG, struct.pack("<II", 1, 99)),
        (ET.EV_EVENT_TAG, struct.pack("<II", 1, 0) + b"x"),
    ],
)
def test_undecodable_event_data(etype: int, raw: bytes) -> None:
    assert isinstance(efi.decode(etype, raw), efi.Undecodable)


def test_json_of_decoded_data() -> None:
    decoded = efi.decode(ET.EV_EFI_VARIABLE_DRIVER_CONFIG, variable(GLOBAL, "SecureBoot", b"\x01"))
    assert decoded is not None
    assert decoded.to_json() == {
        "kind": "uefi_variable",
        "guid": GLOBAL,
        "name": "SecureBoot",
        "data": "01",
        "value": {"kind": "boolean", "value": True},
        "trailing": "",
    }


DECODED_TYPES = [
    ET.EV_SEPARATOR,
    ET.EV_EFI_ACTION,
    ET.EV_IPL,
    ET.EV_POST_CODE,
    ET.EV_EVENT_TAG,
    ET.EV_S_CRTM_VERSION,
    ET.EV_EFI_VARIABLE_DRIVER_CONFIG,
    ET.EV_EFI_VARIABLE_BOOT,
    ET.EV_EFI_VARIABLE_AUTHORITY,
    ET.EV_EFI_BOOT_SERVICES_APPLICATION,
    ET.EV_EFI_PLATFORM_FIRMWARE_BLOB2,
    ET.EV_EFI_HANDOFF_TABLES2,
    ET.EV_EFI_GPT_EVENT,
]


@settings(max_examples=500, deadline=500)
@given(st.sampled_from(DECODED_TYPES), st.binary(max_size=512))
def test_decoding_never_raises(etype: int, raw: bytes) -> None:
    decoded = efi.decode(etype, raw)
    if decoded is not None:
        decoded.to_json()


@settings(max_examples=300, deadline=500)
@given(
    st.sampled_from([GLOBAL, SECURITY_DB, efi.SHIM_LOCK]),
    st.sampled_from(
        ["SecureBoot", "PK", "db", "dbx", "BootOrder", "Boot0001", "MokList", "SbatLevel", "Shim"]
    ),
    st.binary(max_size=256),
)
def test_decoding_arbitrary_variable_values_never_raises(var_guid: str, name: str, value: bytes) -> None:
    for etype in (ET.EV_EFI_VARIABLE_DRIVER_CONFIG, ET.EV_EFI_VARIABLE_AUTHORITY):
        decoded = efi.decode(etype, variable(var_guid, name, value))
        assert isinstance(decoded, efi.UefiVariable)
        decoded.to_json()
