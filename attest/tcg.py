"""Identifiers from the TCG specifications shared by the node and verifier sides.

Values are from TPM 2.0 Library Part 2 (algorithm identifiers, structure tags) and the
TCG PC Client Platform Firmware Profile (event types, PCR reset values).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Alg(enum.IntEnum):
    """TPM_ALG_ID values this project understands."""

    RSA = 0x0001
    SHA1 = 0x0004
    HMAC = 0x0005
    AES = 0x0006
    KEYEDHASH = 0x0008
    XOR = 0x000A
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    SM3_256 = 0x0012
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECDAA = 0x001A
    ECSCHNORR = 0x001C
    KDF1_SP800_56A = 0x0020
    KDF1_SP800_108 = 0x0022
    ECC = 0x0023
    SYMCIPHER = 0x0025
    CFB = 0x0043


@dataclass(frozen=True)
class HashAlg:
    """A digest algorithm as the TPM, hashlib and the logs name it."""

    alg: Alg
    name: str  # the bank name used in JSON output and PCR selections: "sha256"
    size: int

    def new(self) -> Any:
        return hashlib.new(self.hashlib_name)

    @property
    def hashlib_name(self) -> str:
        return "sm3" if self.alg is Alg.SM3_256 else self.name

    def digest(self, data: bytes) -> bytes:
        h = self.new()
        h.update(data)
        return bytes(h.digest())


HASH_ALGS: tuple[HashAlg, ...] = (
    HashAlg(Alg.SHA1, "sha1", 20),
    HashAlg(Alg.SHA256, "sha256", 32),
    HashAlg(Alg.SHA384, "sha384", 48),
    HashAlg(Alg.SHA512, "sha512", 64),
    HashAlg(Alg.SM3_256, "sm3_256", 32),
)
_BY_ID = {h.alg.value: h for h in HASH_ALGS}
_BY_NAME = {h.name: h for h in HASH_ALGS}


def hash_alg(key: int | str) -> HashAlg:
    """Look a digest algorithm up by TPM_ALG_ID or bank name; KeyError if unknown."""
    if isinstance(key, str):
        return _BY_NAME[key.lower()]
    return _BY_ID[key]


def hash_alg_available(h: HashAlg) -> bool:
    """SM3 is only present when OpenSSL was built with it."""
    try:
        hashlib.new(h.hashlib_name)
    except ValueError:
        return False
    return True


Hasher = Callable[[bytes], bytes]

PCR_COUNT = 24
# PC Client Platform Firmware Profile: PCRs 17-22 (the dynamic-launch PCRs) reset to all ones.
DRTM_PCRS = range(17, 23)


def pcr_reset_value(index: int, size: int) -> bytes:
    return (b"\xff" if index in DRTM_PCRS else b"\x00") * size


def extend(h: HashAlg, old: bytes, digest: bytes) -> bytes:
    return h.digest(old + digest)


class EventType(enum.IntEnum):
    """TCG PC Client event types (TCG PC Client Platform Firmware Profile, 10.4.1)."""

    EV_PREBOOT_CERT = 0x00000000
    EV_POST_CODE = 0x00000001
    EV_UNUSED = 0x00000002
    EV_NO_ACTION = 0x00000003
    EV_SEPARATOR = 0x00000004
    EV_ACTION = 0x00000005
    EV_EVENT_TAG = 0x00000006
    EV_S_CRTM_CONTENTS = 0x00000007
    EV_S_CRTM_VERSION = 0x00000008
    EV_CPU_MICROCODE = 0x00000009
    EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
    EV_TABLE_OF_DEVICES = 0x0000000B
    EV_COMPACT_HASH = 0x0000000C
    EV_IPL = 0x0000000D
    EV_IPL_PARTITION_DATA = 0x0000000E
    EV_NONHOST_CODE = 0x0000000F
    EV_NONHOST_CONFIG = 0x00000010
    EV_NONHOST_INFO = 0x00000011
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
    EV_POST_CODE2 = 0x00000013
    EV_EFI_EVENT_BASE = 0x80000000
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
    EV_EFI_VARIABLE_BOOT = 0x80000002
    EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
    EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
    EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
    EV_EFI_GPT_EVENT = 0x80000006
    EV_EFI_ACTION = 0x80000007
    EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
    EV_EFI_HANDOFF_TABLES = 0x80000009
    EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
    EV_EFI_HANDOFF_TABLES2 = 0x8000000B
    EV_EFI_VARIABLE_BOOT2 = 0x8000000C
    EV_EFI_GPT_EVENT2 = 0x8000000D
    EV_EFI_HCRTM_EVENT = 0x80000010
    EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
    EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
    EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2


def event_type_name(value: int) -> str:
    try:
        return EventType(value).name
    except ValueError:
        return f"0x{value:08x}"


# TPM 2.0 Part 2: TPM_GENERATED_VALUE and the structure tags an attestation uses.
TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
