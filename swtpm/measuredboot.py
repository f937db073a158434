"""A simulated UEFI measured boot: a boot profile, its TCG event log, and the PCR extends.

`simulate_boot(profile)` writes what PC-Client firmware, shim and grub would log for the boot a
`BootProfile` describes (a crypto-agile log, TCG PC Client Platform Firmware Profile 1.05) and
computes the final PCR values; `apply(tcti, boot)` performs the same extends on a software TPM
that was powered on without TPM2_Startup, so its PCRs end where the log replays to.

The writer is deliberately separate from the verifier's event-log parser: parsing what it writes
is a real test of both. docs/swtpm.md lists where the simulation differs from real firmware.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attest.tcg import PCR_COUNT, EventType, HashAlg, extend, hash_alg, pcr_reset_value
from swtpm import SwtpmError

if TYPE_CHECKING:
    from swtpm.instance import SwtpmInstance

PcrValues = dict[str, dict[int, bytes]]

DEFAULT_SEED = b"tpm-node-attest swtpm boot profile v1"

# UEFI 2.10: variable vendor GUIDs and signature types.
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
# The owner GUID stamped on every signature this harness enrolls: a fixed name-based UUID.
SIGNATURE_OWNER = uuid.uuid5(uuid.NAMESPACE_URL, "https://tpm-node-attest.invalid/swtpm")

# The simulated disk: a GPT disk with the EFI system partition (1) and the root file system (2).
DISK_GUID = uuid.uuid5(uuid.NAMESPACE_URL, "https://tpm-node-attest.invalid/swtpm/disk")
_PARTITIONS = {1: (2048, 1_050_624), 2: (1_052_672, 40_000_000)}

EV_SEPARATOR_DATA = b"\x00\x00\x00\x00"
CALLING_EFI_APPLICATION = b"Calling EFI Application from Boot Option"
EXIT_BOOT_SERVICES_INVOCATION = b"Exit Boot Services Invocation"
EXIT_BOOT_SERVICES_SUCCEEDED = b"Exit Boot Services Returned with Success"
_SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
_STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"


@dataclass(frozen=True)
class FirmwareBlob:
    """A firmware volume measured into PCR 0 (EV_EFI_PLATFORM_FIRMWARE_BLOB2)."""

    description: str
    content: bytes
    base: int


@dataclass(frozen=True)
class Driver:
    """A UEFI driver the firmware loads from a PCI option ROM, measured into PCR 2."""

    name: str
    content: bytes
    pci_device: int = 3


@dataclass(frozen=True)
class SecureBootKeys:
    """The Secure Boot databases: DER certificates for PK, KEK and db, SHA-256 hashes for dbx."""

    pk: tuple[bytes, ...]
    kek: tuple[bytes, ...]
    db: tuple[bytes, ...]
    dbx: tuple[bytes, ...]

    @classmethod
    def from_seed(cls, seed: bytes) -> SecureBootKeys:
        """Keys and certificates that depend only on `seed`, so a profile's PCR 7 is stable."""
        return _keys_from_seed(seed)


@functools.cache
def _keys_from_seed(seed: bytes) -> SecureBootKeys:
    def cert(label: str) -> bytes:
        # ECDSA with a derived private key and RFC 6979 signatures: same seed, same bytes.
        scalar = int.from_bytes(hashlib.sha256(seed + b"/key/" + label.encode()).digest(), "big")
        key = ec.derive_private_key(scalar % (2**255) + 1, ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tpm-node-attest simulated firmware"),
                x509.NameAttribute(NameOID.COMMON_NAME, label),
            ]
        )
        serial = int.from_bytes(hashlib.sha256(seed + b"/serial/" + label.encode()).digest()[:16], "big") >> 1
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(datetime.datetime(2050, 1, 1, tzinfo=datetime.UTC))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        )
        signed = builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
        return signed.public_bytes(serialization.Encoding.DER)

    dbx = tuple(hashlib.sha256(seed + b"/dbx/" + bytes([i])).digest() for i in range(3))
    return SecureBootKeys(
        pk=(cert("Simulated Platform Key"),),
        kek=(cert("Simulated KEK CA"),),
        db=(cert("Simulated UEFI CA"), cert("Simulated Windows PCA")),
        dbx=dbx,
    )


_DEFAULT_BLOBS = (
    FirmwareBlob("PEI firmware volume", b"simulated PEI firmware volume, SimFW 2024.02", 0xFFC84000),
    FirmwareBlob("DXE firmware volume", b"simulated DXE firmware volume, SimFW 2024.02", 0xFF000000),
)
_DEFAULT_GRUB_COMMANDS = (
    "set root='hd0,gpt2'",
    "search --no-floppy --fs-uuid --set=root 4f1c8a3e-2b6d-4d0e-9a57-3c1e2f9d8b10",
    "insmod gzio",
    "insmod part_gpt",
    "insmod ext2",
    "echo 'Loading Linux 6.8.0-45-generic ...'",
)


@dataclass(frozen=True)
class BootProfile:
    """Everything a simulated boot measures. The default is a healthy Secure Boot Ubuntu node.

    Derive untrusted variants with the `with_*` methods; each changes only the PCRs it says.
    """

    name: str = "good"
    banks: tuple[str, ...] = ("sha1", "sha256")
    # 3 when an H-CRTM or Intel TXT started the TPM at locality 3: PCR 0 then starts at ...03.
    startup_locality: int = 0
    crtm_version: str = "SimFW 2024.02 (tpm-node-attest)"
    firmware_blobs: tuple[FirmwareBlob, ...] = _DEFAULT_BLOBS
    secure_boot: bool = True
    keys: SecureBootKeys = field(default_factory=lambda: SecureBootKeys.from_seed(DEFAULT_SEED))
    # Which db certificate verified shim (the EV_EFI_VARIABLE_AUTHORITY event).
    shim_signer: int = 0
    boot_option: int = 1
    boot_description: str = "ubuntu"
    drivers: tuple[Driver, ...] = ()
    shim_path: str = "\\EFI\\ubuntu\\shimx64.efi"
    shim: bytes = b"simulated shimx64.efi 15.8-0ubuntu1"
    grub_path: str = "\\EFI\\ubuntu\\grubx64.efi"
    grub: bytes = b"simulated grubx64.efi 2.12-1ubuntu7"
    grub_cfg_path: str = "/boot/grub/grub.cfg"
    grub_commands: tuple[str, ...] = _DEFAULT_GRUB_COMMANDS
    kernel_path: str = "/boot/vmlinuz-6.8.0-45-generic"
    kernel: bytes = b"simulated vmlinuz 6.8.0-45-generic"
    initrd_path: str = "/boot/initrd.img-6.8.0-45-generic"
    initrd: bytes = b"simulated initrd.img 6.8.0-45-generic"
    cmdline: str = "root=UUID=4f1c8a3e-2b6d-4d0e-9a57-3c1e2f9d8b10 ro quiet splash ima_hash=sha256"

    @classmethod
    def from_seed(cls, seed: bytes) -> BootProfile:
        """The default profile with Secure Boot keys of its own (a different vendor's machine)."""
        return cls(keys=SecureBootKeys.from_seed(seed))

    def with_kernel(self, kernel: bytes) -> BootProfile:
        """Another kernel image at the same path: PCR 4 (loaded as an application) and PCR 9."""
        return dataclasses.replace(self, name=f"{self.name}+kernel", kernel=kernel)

    def with_secure_boot(self, enabled: bool) -> BootProfile:
        """Secure Boot on or off, same keys: PCR 7 only (SecureBoot variable, no authority event)."""
        return dataclasses.replace(
            self, name=f"{self.name}+sb={'on' if enabled else 'off'}", secure_boot=enabled
        )

    def with_driver(self, content: bytes, name: str = "ExtraDxe") -> BootProfile:
        """One more option-ROM driver (EV_EFI_BOOT_SERVICES_DRIVER): PCR 2 only."""
        driver = Driver(name, content, pci_device=3 + len(self.drivers))
        return dataclasses.replace(self, name=f"{self.name}+driver", drivers=(*self.drivers, driver))

    def with_cmdline(self, cmdline: str) -> BootProfile:
        """Another kernel command line in grub.cfg: PCR 8 (commands) and PCR 9 (grub.cfg's digest)."""
        return dataclasses.replace(self, name=f"{self.name}+cmdline", cmdline=cmdline)

    def with_startup_locality(self, locality: int) -> BootProfile:
        if locality not in (0, 3):
            raise ValueError("StartupLocality is 0 or 3")
        return dataclasses.replace(self, startup_locality=locality)

    @property
    def linux_command(self) -> str:
        return f"linux {self.kernel_path} {self.cmdline}"

    @property
    def initrd_command(self) -> str:
        return f"initrd {self.initrd_path}"

    @property
    def grub_cfg(self) -> bytes:
        """grub.cfg as grub reads (and measures) it: the commands it will run."""
        return "".join(
            f"{c}\n" for c in (*self.grub_commands, self.linux_command, self.initrd_command)
        ).encode()


PROFILES = ("good", "altered-kernel", "secureboot-off", "extra-driver")


def named_profile(name: str) -> BootProfile:
    """The CLI's profiles: a trusted node and three ways it can go wrong."""
    good = BootProfile()
    if name == "good":
        return good
    if name == "altered-kernel":
        return dataclasses.replace(
            good.with_kernel(b"simulated vmlinuz 6.8.0-45-generic, patched"), name=name
        )
    if name == "secureboot-off":
        return dataclasses.replace(good.with_secure_boot(False), name=name)
    if name == "extra-driver":
        return dataclasses.replace(good.with_driver(b"simulated unsigned option ROM driver"), name=name)
    raise ValueError(f"unknown boot profile {name!r}: one of {', '.join(PROFILES)}")


@dataclass(frozen=True)
class Measurement:
    """One measured event: what was extended into which PCR, and what the log says about it."""

    pcr: int
    event_type: EventType
    digests: Mapping[str, bytes]
    data: bytes


@dataclass(frozen=True)
class SimulatedBoot:
    profile: BootProfile
    measurements: tuple[Measurement, ...]
    log: bytes
    # Every PCR 0-23 of every bank of the profile, as the TPM holds them after `apply`.
    pcrs: PcrValues

    def pcrs_changed(self, other: SimulatedBoot) -> dict[str, list[int]]:
        """Per bank, the PCRs whose final values differ between two boots."""
        return {
            bank: [i for i in range(PCR_COUNT) if values[i] != other.pcrs[bank][i]]
            for bank, values in self.pcrs.items()
        }


# --- encoders for the event data (UEFI and PC Client structures) ---


def ucs2(text: str) -> bytes:
    return text.encode("utf-16-le")


def variable_data(vendor: uuid.UUID, name: str, data: bytes) -> bytes:
    """UEFI_VARIABLE_DATA: the event data of EV_EFI_VARIABLE_* events."""
    return vendor.bytes_le + struct.pack("<QQ", len(name), len(data)) + ucs2(name) + data


def signature_list(
    sig_type: uuid.UUID, entries: Sequence[bytes], owner: uuid.UUID = SIGNATURE_OWNER
) -> bytes:
    """One EFI_SIGNATURE_LIST of equally sized entries, each prefixed with its owner GUID."""
    if not entries:
        return b""
    size = 16 + len(entries[0])
    if any(16 + len(e) != size for e in entries):
        raise ValueError("entries of one EFI_SIGNATURE_LIST must have the same size")
    body = b"".join(owner.bytes_le + e for e in entries)
    return sig_type.bytes_le + struct.pack("<III", 28 + len(body), 0, size) + body


def x509_signature_lists(certs: Sequence[bytes]) -> bytes:
    # Certificates differ in size, so each gets a list of its own, as firmware setup tools write them.
    return b"".join(signature_list(EFI_CERT_X509, [c]) for c in certs)


def _node(node_type: int, subtype: int, payload: bytes) -> bytes:
    return struct.pack("<BBH", node_type, subtype, 4 + len(payload)) + payload


_END_OF_PATH = _node(0x7F, 0xFF, b"")


def hard_drive_node(partition: int) -> bytes:
    """HD(partition, GPT, signature, start, size): a media device path node."""
    start, size = _PARTITIONS[partition]
    return _node(0x04, 0x01, struct.pack("<IQQ", partition, start, size) + DISK_GUID.bytes_le + b"\x02\x02")


def file_path_node(path: str) -> bytes:
    return _node(0x04, 0x04, ucs2(path + "\0"))


def disk_file_path(partition: int, path: str) -> bytes:
    """HD(...)/File(path), the device path of a file on the simulated disk."""
    return hard_drive_node(partition) + file_path_node(path) + _END_OF_PATH


def option_rom_path(pci_device: int, length: int) -> bytes:
    """PciRoot(0x0)/Pci(device,0x0)/Offset(0x0,length-1): where EDK2 says an option ROM image came from."""
    acpi = _node(0x02, 0x01, struct.pack("<II", 0x0A0341D0, 0))  # PNP0A03, UID 0
    pci = _node(0x01, 0x01, struct.pack("<BB", 0, pci_device))
    offset = _node(0x04, 0x08, struct.pack("<IQQ", 0, 0, max(length - 1, 0)))
    return acpi + pci + offset + _END_OF_PATH


def image_load_event(location: int, length: int, device_path: bytes, link_address: int = 0) -> bytes:
    """UEFI_IMAGE_LOAD_EVENT: where the image sits in memory, and the device path it came from."""
    return struct.pack("<QQQQ", location, length, link_address, len(device_path)) + device_path


def load_option(description: str, device_path: bytes, attributes: int = 0x1) -> bytes:
    """EFI_LOAD_OPTION, the value of a Boot#### variable (attributes: LOAD_OPTION_ACTIVE)."""
    return struct.pack("<IH", attributes, len(device_path)) + ucs2(description + "\0") + device_path


def firmware_blob2(blob: FirmwareBlob) -> bytes:
    desc = blob.description.encode()
    return struct.pack("<B", len(desc)) + desc + struct.pack("<QQ", blob.base, len(blob.content))


# --- the log writer ---


class _Writer:
    def __init__(self, banks: Sequence[HashAlg], startup_locality: int) -> None:
        self.banks = tuple(banks)
        self.measurements: list[Measurement] = []
        self.pcrs: PcrValues = {
            b.name: {i: pcr_reset_value(i, b.size) for i in range(PCR_COUNT)} for b in self.banks
        }
        for b in self.banks:
            self.pcrs[b.name][0] = b"\x00" * (b.size - 1) + bytes([startup_locality])
        self.body = bytearray()

    def header(self, startup_locality: int) -> bytes:
        """The SHA-1-format Spec ID Event03 that announces a crypto-agile log, then StartupLocality."""
        algs = b"".join(struct.pack("<HH", b.alg, b.size) for b in self.banks)
        spec_id = (
            _SPEC_ID_SIGNATURE
            # platformClass 0 (client), spec 2.0 errata 0, UINTN is 64-bit (2).
            + struct.pack("<IBBBB", 0, 0, 2, 0, 2)
            + struct.pack("<I", len(self.banks))
            + algs
            + b"\x00"  # vendorInfoSize
        )
        out = (
            struct.pack("<II", 0, EventType.EV_NO_ACTION)
            + b"\x00" * 20
            + struct.pack("<I", len(spec_id))
            + spec_id
        )
        if startup_locality:
            zeros = {b.name: b"\x00" * b.size for b in self.banks}
            out += self._event(
                0, EventType.EV_NO_ACTION, zeros, _STARTUP_LOCALITY_SIGNATURE + bytes([startup_locality])
            )
        return out

    def _event(self, pcr: int, event_type: EventType, digests: Mapping[str, bytes], data: bytes) -> bytes:
        out = struct.pack("<III", pcr, event_type, len(self.banks))
        for b in self.banks:
            out += struct.pack("<H", b.alg) + digests[b.name]
        return out + struct.pack("<I", len(data)) + data

    def measure(self, pcr: int, event_type: EventType, data: bytes, hashed: bytes | None = None) -> None:
        """Log `data` and extend PCR `pcr` with the digest of `hashed` (by default, of `data`)."""
        content = data if hashed is None else hashed
        digests = {b.name: b.digest(content) for b in self.banks}
        for b in self.banks:
            self.pcrs[b.name][pcr] = extend(b, self.pcrs[b.name][pcr], digests[b.name])
        self.measurements.append(Measurement(pcr, event_type, digests, data))
        self.body += self._event(pcr, event_type, digests, data)

    def grub_string(self, pcr: int, prefix: str, text: str) -> None:
        # grub logs "prefix: text" with its NUL but extends the digest of the bare text.
        self.measure(pcr, EventType.EV_IPL, f"{prefix}{text}\0".encode(), hashed=text.encode())

    def grub_file(self, path: str, content: bytes) -> None:
        self.measure(9, EventType.EV_IPL, f"{path}\0".encode(), hashed=content)


# Where the simulated firmware places images in memory; only logged, never checked.
_LOAD_ADDRESSES = {"shim": 0x7E3C_5000, "grub": 0x7D8F_0000, "kernel": 0x7B20_0000, "driver": 0x7F61_0000}


def simulate_boot(profile: BootProfile) -> SimulatedBoot:
    """The event log and PCR values of booting `profile`, in the order EDK2, shim and grub measure."""
    try:
        banks = [hash_alg(b) for b in profile.banks]
    except KeyError as e:
        raise ValueError(f"unknown PCR bank {e}") from None
    if profile.startup_locality not in (0, 3):
        raise ValueError("StartupLocality is 0 or 3")
    w = _Writer(banks, profile.startup_locality)
    keys = profile.keys

    # PCR 0: the CRTM and the firmware volumes (SEC/PEI).
    w.measure(0, EventType.EV_S_CRTM_VERSION, ucs2(profile.crtm_version + "\0"))
    for blob in profile.firmware_blobs:
        w.measure(0, EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2, firmware_blob2(blob), hashed=blob.content)

    # PCR 7: the Secure Boot policy, measured whole (UEFI_VARIABLE_DATA), then its separator, which
    # EDK2 measures early so that later authority events are known to come after the policy.
    config = EventType.EV_EFI_VARIABLE_DRIVER_CONFIG
    w.measure(
        7,
        config,
        variable_data(EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01" if profile.secure_boot else b"\x00"),
    )
    w.measure(7, config, variable_data(EFI_GLOBAL_VARIABLE, "PK", x509_signature_lists(keys.pk)))
    w.measure(7, config, variable_data(EFI_GLOBAL_VARIABLE, "KEK", x509_signature_lists(keys.kek)))
    w.measure(7, config, variable_data(EFI_IMAGE_SECURITY_DATABASE, "db", x509_signature_lists(keys.db)))
    w.measure(
        7,
        config,
        variable_data(EFI_IMAGE_SECURITY_DATABASE, "dbx", signature_list(EFI_CERT_SHA256, keys.dbx)),
    )
    w.measure(7, EventType.EV_SEPARATOR, EV_SEPARATOR_DATA)

    # PCR 1: boot variables. The digest is of the variable's value only, not of the whole
    # UEFI_VARIABLE_DATA logged (unlike PCR 7's): EDK2 did this for years and deployed firmware
    # still does, so verifiers meet it in real logs.
    shim_device_path = disk_file_path(1, profile.shim_path)
    boot_order = struct.pack("<H", profile.boot_option)
    boot_entry = load_option(profile.boot_description, shim_device_path)
    w.measure(
        1,
        EventType.EV_EFI_VARIABLE_BOOT,
        variable_data(EFI_GLOBAL_VARIABLE, "BootOrder", boot_order),
        hashed=boot_order,
    )
    w.measure(
        1,
        EventType.EV_EFI_VARIABLE_BOOT,
        variable_data(EFI_GLOBAL_VARIABLE, f"Boot{profile.boot_option:04X}", boot_entry),
        hashed=boot_entry,
    )

    # PCR 2: drivers from option ROMs, loaded while the boot manager connects devices.
    for i, driver in enumerate(profile.drivers):
        event = image_load_event(
            _LOAD_ADDRESSES["driver"] + i * 0x10_0000,
            len(driver.content),
            option_rom_path(driver.pci_device, len(driver.content)),
        )
        w.measure(2, EventType.EV_EFI_BOOT_SERVICES_DRIVER, event, hashed=driver.content)

    # ReadyToBoot: the boot attempt, then the separators that end the pre-OS measurements.
    w.measure(4, EventType.EV_EFI_ACTION, CALLING_EFI_APPLICATION)
    for pcr in range(7):
        w.measure(pcr, EventType.EV_SEPARATOR, EV_SEPARATOR_DATA)

    # shim, loaded by the firmware from Boot####; Secure Boot logs the db entry that allowed it.
    app = EventType.EV_EFI_BOOT_SERVICES_APPLICATION
    w.measure(
        4,
        app,
        image_load_event(_LOAD_ADDRESSES["shim"], len(profile.shim), shim_device_path),
        hashed=profile.shim,
    )
    if profile.secure_boot:
        signer = keys.db[profile.shim_signer]
        authority = variable_data(EFI_IMAGE_SECURITY_DATABASE, "db", SIGNATURE_OWNER.bytes_le + signer)
        w.measure(7, EventType.EV_EFI_VARIABLE_AUTHORITY, authority)
    # grub, loaded by shim through the firmware's LoadImage.
    grub_path = disk_file_path(1, profile.grub_path)
    w.measure(
        4, app, image_load_event(_LOAD_ADDRESSES["grub"], len(profile.grub), grub_path), hashed=profile.grub
    )

    # grub: files it reads into PCR 9, commands and the kernel command line into PCR 8.
    w.grub_file(profile.grub_cfg_path, profile.grub_cfg)
    for command in profile.grub_commands:
        w.grub_string(8, "grub_cmd: ", command)
    w.grub_string(8, "grub_cmd: ", profile.linux_command)
    w.grub_file(profile.kernel_path, profile.kernel)
    w.grub_string(8, "kernel_cmdline: ", f"{profile.kernel_path} {profile.cmdline}")
    w.grub_string(8, "grub_cmd: ", profile.initrd_command)
    w.grub_file(profile.initrd_path, profile.initrd)
    # The kernel's EFI stub is started through LoadImage too, so the firmware measures it in PCR 4.
    kernel_path = disk_file_path(2, profile.kernel_path.replace("/", "\\"))
    w.measure(
        4,
        app,
        image_load_event(_LOAD_ADDRESSES["kernel"], len(profile.kernel), kernel_path),
        hashed=profile.kernel,
    )

    # The kernel's EFI stub leaves boot services.
    w.measure(5, EventType.EV_EFI_ACTION, EXIT_BOOT_SERVICES_INVOCATION)
    w.measure(5, EventType.EV_EFI_ACTION, EXIT_BOOT_SERVICES_SUCCEEDED)

    log = w.header(profile.startup_locality) + bytes(w.body)
    return SimulatedBoot(profile, tuple(w.measurements), log, w.pcrs)


# --- driving a TPM ---

# TPM2_Startup(TPM_SU_CLEAR): tag TPM_ST_NO_SESSIONS, size 12, TPM_CC_Startup.
_TPM2_STARTUP_CLEAR = struct.pack(">HIIH", 0x8001, 12, 0x0144, 0x0000)
_TPM_RC_INITIALIZE = 0x100


def apply(tcti: str, simulated: SimulatedBoot) -> None:
    """Power-on a TPM as firmware would: TPM2_Startup(CLEAR) at the profile's locality, then every extend.

    The TPM must be waiting for TPM2_Startup (`SwtpmInstance.start(startup=False)`): a boot starts
    from reset PCRs, and only the first command after power-on decides PCR 0's locality.
    """
    from tpm2_pytss import TSS2_Exception

    from attest.tpm import Tpm, pcr_extend

    with Tpm(tcti) as tpm:
        tcti_ctx = tpm.esapi.get_tcti()
        locality = simulated.profile.startup_locality
        try:
            # The swtpm TCTI sends the locality over swtpm's control channel; TPM2_Startup latches
            # it into PCR 0. Sent raw: ESAPI reports TPM_RC_INITIALIZE (already started) as success.
            if locality:
                tcti_ctx.set_locality(locality)
            tcti_ctx.transmit(_TPM2_STARTUP_CLEAR)
            response = bytes(tcti_ctx.receive(4096, 10_000))
        except TSS2_Exception as e:
            raise SwtpmError(f"TPM2_Startup at locality {locality}: {e}") from None
        finally:
            if locality:
                tcti_ctx.set_locality(0)
        rc = struct.unpack(">I", response[6:10])[0] if len(response) >= 10 else -1
        if rc == _TPM_RC_INITIALIZE:
            raise SwtpmError(
                "the TPM is already started: power it on without TPM2_Startup "
                "(SwtpmInstance.start(startup=False) or restart(startup=False)) before a boot"
            )
        if rc != 0:
            raise SwtpmError(f"TPM2_Startup at locality {locality} failed: response {response.hex()}")
        for m in simulated.measurements:
            pcr_extend(tpm, m.pcr, m.digests)


def boot(instance: SwtpmInstance, profile: BootProfile) -> SimulatedBoot:
    """Power-cycle `instance` and boot `profile` on it; the TPM is left running, PCRs as logged."""
    simulated = simulate_boot(profile)
    if instance.running:
        instance.restart(startup=False)
    else:
        instance.start(startup=False)
    apply(instance.tcti, simulated)
    return simulated


def read_pcrs(tcti: str, banks: Sequence[str], pcrs: Sequence[int]) -> PcrValues:
    """The TPM's current values of `pcrs` in each of `banks`."""
    from attest.pcrselect import PcrSelection
    from attest.tpm import Tpm, pcr_read

    with Tpm(tcti) as tpm:
        return pcr_read(tpm, PcrSelection.of(dict.fromkeys(banks, pcrs)))
