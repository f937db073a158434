"""TPM 2.0 structures the verifier reads and writes, marshalled as TPM 2.0 Library Part 2 says.

Parsing is strict: every size is checked against the limits below, unknown algorithms and
reserved attribute bits are refused, and a structure must use up its input exactly. Each parser
raises ParseError with the reason code its caller names, so a malformed quote, signature, AK or
EK public area reports its own code. Serialising a parsed structure gives back the input bytes.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attest.errors import ParseError
from attest.reasons import Reason
from attest.tcg import PCR_COUNT, TPM_ST_ATTEST_QUOTE, Alg, hash_alg

# sizeof(TPMU_HA): the largest digest, SHA-512.
MAX_DIGEST: Final = 64
# TPM2B_NAME and TPM2B_DATA hold a TPMT_HA (algorithm + digest).
MAX_NAME: Final = 2 + MAX_DIGEST
MAX_DATA: Final = 2 + MAX_DIGEST
# A TPM's MAX_RSA_KEY_BYTES / MAX_ECC_KEY_BYTES depend on its build; these are the largest
# keys this verifier supports (RSA-4096, NIST P-521), so anything larger cannot be ours.
MAX_RSA_KEY_BYTES: Final = 512
MAX_ECC_KEY_BYTES: Final = 66
# TPML_PCR_SELECTION: the TSS's limit of 16 banks; bitmaps of 3 bytes (a PC Client TPM's 24
# PCRs, the TPM refuses shorter) or 4 (the TSS's maximum), but no PCR beyond the 24th.
MAX_PCR_BANKS: Final = 16
PCR_SELECT_MIN: Final = 3
PCR_SELECT_MAX: Final = 4


class ObjectAttr(enum.IntFlag):
    """TPMA_OBJECT bits (Part 2, 8.3)."""

    FIXED_TPM = 0x00000002
    ST_CLEAR = 0x00000004
    FIXED_PARENT = 0x00000010
    SENSITIVE_DATA_ORIGIN = 0x00000020
    USER_WITH_AUTH = 0x00000040
    ADMIN_WITH_POLICY = 0x00000080
    NO_DA = 0x00000400
    ENCRYPTED_DUPLICATION = 0x00000800
    RESTRICTED = 0x00010000
    DECRYPT = 0x00020000
    SIGN_ENCRYPT = 0x00040000
    X509_SIGN = 0x00080000


_OBJECT_RESERVED: Final = 0xFFFFFFFF & ~sum(a.value for a in ObjectAttr)


class EccCurve(enum.IntEnum):
    """TPM_ECC_CURVE values this verifier can use."""

    NIST_P256 = 0x0003
    NIST_P384 = 0x0004
    NIST_P521 = 0x0005


CURVE_BYTES: Final[dict[int, int]] = {EccCurve.NIST_P256: 32, EccCurve.NIST_P384: 48, EccCurve.NIST_P521: 66}
CURVES: Final[dict[int, ec.EllipticCurve]] = {
    EccCurve.NIST_P256: ec.SECP256R1(),
    EccCurve.NIST_P384: ec.SECP384R1(),
    EccCurve.NIST_P521: ec.SECP521R1(),
}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

_HASH_IDS: Final = frozenset(a.value for a in (Alg.SHA1, Alg.SHA256, Alg.SHA384, Alg.SHA512, Alg.SM3_256))
# The schemes a key's parameters may name besides NULL. Their details are a hash algorithm,
# except RSAES (no details) and ECDAA (a hash and a commit count).
_RSA_SCHEMES: Final = frozenset({Alg.RSASSA, Alg.RSAPSS, Alg.OAEP, Alg.RSAES})
_ECC_SCHEMES: Final = frozenset({Alg.ECDSA, Alg.ECDH, Alg.ECSCHNORR, Alg.ECDAA})
_KDF_SCHEMES: Final = frozenset({Alg.KDF1_SP800_56A, Alg.KDF1_SP800_108})
_AES_KEY_BITS: Final = frozenset({128, 192, 256})

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ATTEST_HEAD = struct.Struct(">IH")
_CLOCK_INFO = struct.Struct(">QIIB")


class _Reader:
    """A cursor over one structure; every failure names the structure and the caller's code."""

    __slots__ = ("buf", "code", "pos", "what")

    def __init__(self, buf: bytes, code: Reason, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self.code = code
        self.what = what

    def fail(self, message: str) -> ParseError:
        return ParseError(self.code, f"{self.what}: {message}")

    def raw(self, n: int, name: str) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise self.fail(f"truncated in {name} (needs {n} bytes at offset {self.pos})")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u8(self, name: str) -> int:
        return self.raw(1, name)[0]

    def u16(self, name: str) -> int:
        v: int = _U16.unpack(self.raw(2, name))[0]
        return v

    def u32(self, name: str) -> int:
        v: int = _U32.unpack(self.raw(4, name))[0]
        return v

    def sized(self, limit: int, name: str) -> bytes:
        n = self.u16(name)
        if n > limit:
            raise self.fail(f"{name} size {n} exceeds {limit}")
        return self.raw(n, name)

    def hash_alg(self, name: str) -> int:
        alg = self.u16(name)
        if alg not in _HASH_IDS:
            raise self.fail(f"{name} 0x{alg:04x} is not a supported hash algorithm")
        return alg

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self.fail(f"{len(self.buf) - self.pos} trailing bytes")


def tpm2b(data: bytes) -> bytes:
    """Wrap bytes as a TPM2B: the big-endian 16-bit size, then the bytes."""
    if len(data) > 0xFFFF:
        raise ValueError("a TPM2B holds at most 65535 bytes")
    return _U16.pack(len(data)) + data


# --- PCR selection ------------------------------------------------------------------------


@dataclass(frozen=True)
class TpmsPcrSelection:
    """One TPMS_PCR_SELECTION: a hash bank and the PCR indices selected in it, ascending.

    ``size_of_select`` (the bitmap length) is kept so a parsed selection serialises back to the
    same bytes; it does not take part in equality because it does not change which PCRs are meant.
    """

    alg: int
    pcrs: tuple[int, ...]
    size_of_select: int = field(default=PCR_SELECT_MIN, compare=False)

    def __post_init__(self) -> None:
        if self.alg not in _HASH_IDS:
            raise ValueError(f"0x{self.alg:04x} is not a supported hash algorithm")
        if not PCR_SELECT_MIN <= self.size_of_select <= PCR_SELECT_MAX:
            raise ValueError(f"sizeofSelect {self.size_of_select} out of range")
        if list(self.pcrs) != sorted(set(self.pcrs)) or any(not 0 <= p < PCR_COUNT for p in self.pcrs):
            raise ValueError(f"PCR indices must be ascending, unique and in range: {self.pcrs}")

    @property
    def bank(self) -> str:
        return hash_alg(self.alg).name

    def marshal(self) -> bytes:
        bitmap = bytearray(self.size_of_select)
        for p in self.pcrs:
            bitmap[p >> 3] |= 1 << (p & 7)
        return _U16.pack(self.alg) + bytes([self.size_of_select]) + bytes(bitmap)


@dataclass(frozen=True)
class TpmlPcrSelection:
    """A TPML_PCR_SELECTION as a TPM wrote it. Bank order matters: the PCR digest concatenates
    in this order. (``attest.pcrselect.PcrSelection`` is what a challenge asks for.)"""

    banks: tuple[TpmsPcrSelection, ...]

    def marshal(self) -> bytes:
        return _U32.pack(len(self.banks)) + b"".join(b.marshal() for b in self.banks)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        """(bank name, PCR index) pairs in digest order, as ``attest.pcrselect.PcrSelection``."""
        for b in self.banks:
            bank = b.bank
            for p in b.pcrs:
                yield bank, p

    def as_banks(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """The ``banks`` of the equivalent ``attest.pcrselect.PcrSelection``, for comparison."""
        return tuple((b.bank, b.pcrs) for b in self.banks)

    def __str__(self) -> str:
        return "+".join(f"{b.bank}:{','.join(map(str, b.pcrs))}" for b in self.banks)


def _read_pcr_selection(r: _Reader) -> TpmlPcrSelection:
    count = r.u32("TPML_PCR_SELECTION.count")
    if count > MAX_PCR_BANKS:
        raise r.fail(f"TPML_PCR_SELECTION.count {count} exceeds {MAX_PCR_BANKS}")
    banks = []
    for _ in range(count):
        alg = r.hash_alg("TPMS_PCR_SELECTION.hash")
        size = r.u8("TPMS_PCR_SELECTION.sizeofSelect")
        if not PCR_SELECT_MIN <= size <= PCR_SELECT_MAX:
            raise r.fail(f"sizeofSelect {size} outside {PCR_SELECT_MIN}..{PCR_SELECT_MAX}")
        bitmap = r.raw(size, "TPMS_PCR_SELECTION.pcrSelect")
        pcrs = bitmap_pcrs(bitmap)
        if pcrs and pcrs[-1] >= PCR_COUNT:
            raise r.fail(f"PCR {pcrs[-1]} selected; a TPM has {PCR_COUNT}")
        banks.append(TpmsPcrSelection(alg, pcrs, size))
    return TpmlPcrSelection(tuple(banks))


def bitmap_pcrs(bitmap: bytes) -> tuple[int, ...]:
    """The PCR indices a pcrSelect bitmap selects (bit i of byte n is PCR 8n+i)."""
    return tuple(i for i in range(8 * len(bitmap)) if bitmap[i >> 3] & (1 << (i & 7)))


# --- TPMS_ATTEST --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClockInfo:
    """TPMS_CLOCK_INFO. resetCount and restartCount are obfuscated (offset by a per-key
    constant) when the signing key is outside the endorsement and platform hierarchies."""

    clock: int  # milliseconds the TPM has been powered since its owner was last cleared
    reset_count: int  # TPM Resets (reboots) since the last TPM2_Clear
    restart_count: int  # TPM Restarts / Resumes since the last reset
    safe: bool  # NO: this clock value may have been reported before (unorderly shutdown)

    def marshal(self) -> bytes:
        return _CLOCK_INFO.pack(self.clock, self.reset_count, self.restart_count, int(self.safe))


@dataclass(frozen=True)
class QuoteInfo:
    """TPMS_QUOTE_INFO: which PCRs were quoted and the digest of their values."""

    pcr_select: TpmlPcrSelection
    pcr_digest: bytes

    def marshal(self) -> bytes:
        return self.pcr_select.marshal() + tpm2b(self.pcr_digest)


@dataclass(frozen=True)
class Attest:
    """TPMS_ATTEST. For a quote, ``attested`` is its QuoteInfo; other attestation types keep
    their body as bytes: the verifier only needs to recognise and refuse them."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    attested: QuoteInfo | bytes

    def marshal(self) -> bytes:
        body = self.attested.marshal() if isinstance(self.attested, QuoteInfo) else self.attested
        return b"".join(
            (
                _ATTEST_HEAD.pack(self.magic, self.type),
                tpm2b(self.qualified_signer),
                tpm2b(self.extra_data),
                self.clock_info.marshal(),
                _U64.pack(self.firmware_version),
                body,
            )
        )


def parse_attest(data: bytes) -> Attest:
    """TPMS_ATTEST as TPM2_Quote signs it (``tpm2_quote -m``); ParseError(QUOTE_MALFORMED).

    The magic and type are returned, not judged here: the quote check reports them with their
    own reason codes.
    """
    r = _Reader(data, Reason.QUOTE_MALFORMED, "TPMS_ATTEST")
    magic, type_ = _ATTEST_HEAD.unpack(r.raw(_ATTEST_HEAD.size, "header"))
    signer = r.sized(MAX_NAME, "qualifiedSigner")
    extra = r.sized(MAX_DATA, "extraData")
    clock, resets, restarts, safe = _CLOCK_INFO.unpack(r.raw(_CLOCK_INFO.size, "clockInfo"))
    if safe > 1:
        raise r.fail(f"clockInfo.safe is {safe}, not a TPMI_YES_NO")
    firmware: int = _U64.unpack(r.raw(8, "firmwareVersion"))[0]
    attested: QuoteInfo | bytes
    if type_ == TPM_ST_ATTEST_QUOTE:
        sel = _read_pcr_selection(r)
        attested = QuoteInfo(sel, r.sized(MAX_DIGEST, "pcrDigest"))
        r.end()
    else:
        attested = r.raw(len(data) - r.pos, "attested")
    return Attest(
        magic, type_, signer, extra, ClockInfo(clock, resets, restarts, bool(safe)), firmware, attested
    )


# --- TPMT_SIGNATURE -----------------------------------------------------------------------


@dataclass(frozen=True)
class RsaSignature:
    """TPMS_SIGNATURE_RSA under TPM_ALG_RSASSA or TPM_ALG_RSAPSS."""

    scheme: int
    hash: int
    sig: bytes

    def marshal(self) -> bytes:
        return _U16.pack(self.scheme) + _U16.pack(self.hash) + tpm2b(self.sig)


@dataclass(frozen=True)
class EcdsaSignature:
    """TPMS_SIGNATURE_ECDSA: the hash and the (r, s) pair as big-endian integers."""

    hash: int
    r: bytes
    s: bytes

    @property
    def scheme(self) -> int:
        return Alg.ECDSA.value

    def marshal(self) -> bytes:
        return _U16.pack(Alg.ECDSA) + _U16.pack(self.hash) + tpm2b(self.r) + tpm2b(self.s)


Signature = RsaSignature | EcdsaSignature


def parse_signature(data: bytes) -> Signature:
    """TPMT_SIGNATURE (``tpm2_quote -s``): RSASSA, RSAPSS or ECDSA;
    ParseError(QUOTE_SIGNATURE_MALFORMED) for anything else."""
    r = _Reader(data, Reason.QUOTE_SIGNATURE_MALFORMED, "TPMT_SIGNATURE")
    alg = r.u16("sigAlg")
    sig: Signature
    if alg in (Alg.RSASSA, Alg.RSAPSS):
        sig = RsaSignature(alg, r.hash_alg("hash"), r.sized(MAX_RSA_KEY_BYTES, "sig"))
    elif alg == Alg.ECDSA:
        h = r.hash_alg("hash")
        sig = EcdsaSignature(
            h, r.sized(MAX_ECC_KEY_BYTES, "signatureR"), r.sized(MAX_ECC_KEY_BYTES, "signatureS")
        )
    else:
        raise r.fail(f"unsupported signature algorithm 0x{alg:04x}")
    r.end()
    return sig


# --- TPMT_PUBLIC --------------------------------------------------------------------------


@dataclass(frozen=True)
class SymDef:
    """TPMT_SYM_DEF_OBJECT: NULL, or AES with a key size and (for storage keys) CFB mode."""

    alg: int = Alg.NULL.value
    key_bits: int = 0
    mode: int = Alg.NULL.value

    def marshal(self) -> bytes:
        if self.alg == Alg.NULL:
            return _U16.pack(self.alg)
        return struct.pack(">HHH", self.alg, self.key_bits, self.mode)


@dataclass(frozen=True)
class Scheme:
    """A key's TPMT_*_SCHEME or TPMT_KDF_SCHEME: the algorithm and, where it has one, its hash."""

    alg: int = Alg.NULL.value
    hash: int = Alg.NULL.value
    count: int = 0  # ECDAA only

    def marshal(self) -> bytes:
        if self.alg in (Alg.NULL, Alg.RSAES):
            return _U16.pack(self.alg)
        if self.alg == Alg.ECDAA:
            return struct.pack(">HHH", self.alg, self.hash, self.count)
        return struct.pack(">HH", self.alg, self.hash)


@dataclass(frozen=True)
class RsaDetail:
    """TPMS_RSA_PARMS and the modulus (TPM2B_PUBLIC_KEY_RSA)."""

    symmetric: SymDef
    scheme: Scheme
    key_bits: int
    exponent: int  # 0 means the default, 65537
    modulus: bytes

    def marshal(self) -> bytes:
        return (
            self.symmetric.marshal()
            + self.scheme.marshal()
            + struct.pack(">HI", self.key_bits, self.exponent)
            + tpm2b(self.modulus)
        )

    def public_key(self) -> rsa.RSAPublicKey:
        if not self.modulus:
            raise ValueError("no RSA modulus (a template, not a key)")
        return rsa.RSAPublicNumbers(self.exponent or 65537, int.from_bytes(self.modulus)).public_key()


@dataclass(frozen=True)
class EccDetail:
    """TPMS_ECC_PARMS and the public point (TPMS_ECC_POINT)."""

    symmetric: SymDef
    scheme: Scheme
    curve: int
    kdf: Scheme
    x: bytes
    y: bytes

    def marshal(self) -> bytes:
        return (
            self.symmetric.marshal()
            + self.scheme.marshal()
            + _U16.pack(self.curve)
            + self.kdf.marshal()
            + tpm2b(self.x)
            + tpm2b(self.y)
        )

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """ValueError if (x, y) is not a point on the curve."""
        x, y = int.from_bytes(self.x), int.from_bytes(self.y)
        return ec.EllipticCurvePublicNumbers(x, y, CURVES[self.curve]).public_key()


@dataclass(frozen=True)
class TpmtPublic:
    """TPMT_PUBLIC of an RSA or ECC key: type, nameAlg, objectAttributes, authPolicy,
    parameters and unique (the last two in ``detail``)."""

    name_alg: int
    attributes: int
    auth_policy: bytes
    detail: RsaDetail | EccDetail

    @property
    def type(self) -> int:
        return (Alg.RSA if isinstance(self.detail, RsaDetail) else Alg.ECC).value

    def has(self, attr: ObjectAttr) -> bool:
        return self.attributes & attr == attr

    def marshal(self) -> bytes:
        return (
            struct.pack(">HHI", self.type, self.name_alg, self.attributes)
            + tpm2b(self.auth_policy)
            + self.detail.marshal()
        )

    def marshal_tpm2b(self) -> bytes:
        """TPM2B_PUBLIC, as ``tpm2_createak -u`` and ``tpm2_readpublic -o`` write it."""
        return tpm2b(self.marshal())

    def name(self) -> bytes:
        """The object's Name: nameAlg, then the nameAlg digest of this TPMT_PUBLIC."""
        return _U16.pack(self.name_alg) + hash_alg(self.name_alg).digest(self.marshal())

    def public_key(self) -> PublicKey:
        """The key in ``unique``; ValueError if it is not one (a template, a point off the curve)."""
        return self.detail.public_key()


def _read_symdef(r: _Reader) -> SymDef:
    alg = r.u16("symmetric.algorithm")
    if alg == Alg.NULL:
        return SymDef()
    if alg != Alg.AES:
        raise r.fail(f"unsupported symmetric algorithm 0x{alg:04x}")
    bits = r.u16("symmetric.keyBits")
    mode = r.u16("symmetric.mode")
    if bits not in _AES_KEY_BITS or mode != Alg.CFB:
        raise r.fail(f"unsupported AES parameters: {bits} bits, mode 0x{mode:04x}")
    return SymDef(alg, bits, mode)


def _read_scheme(r: _Reader, allowed: frozenset[Alg], name: str) -> Scheme:
    alg = r.u16(name)
    if alg != Alg.NULL and alg not in allowed:
        raise r.fail(f"unsupported {name} 0x{alg:04x}")
    if alg in (Alg.NULL, Alg.RSAES):
        return Scheme(alg)
    h = r.hash_alg(f"{name}.hashAlg")
    if alg == Alg.ECDAA:
        return Scheme(alg, h, r.u16(f"{name}.count"))
    return Scheme(alg, h)


def _read_public_area(r: _Reader) -> TpmtPublic:
    type_ = r.u16("type")
    if type_ not in (Alg.RSA, Alg.ECC):
        raise r.fail(f"unsupported key type 0x{type_:04x}")
    name_alg = r.hash_alg("nameAlg")
    attributes = r.u32("objectAttributes")
    if attributes & _OBJECT_RESERVED:
        raise r.fail(f"reserved objectAttributes bits set: 0x{attributes & _OBJECT_RESERVED:08x}")
    policy = r.sized(MAX_DIGEST, "authPolicy")
    if policy and len(policy) != hash_alg(name_alg).size:
        raise r.fail(f"authPolicy is {len(policy)} bytes, not a {hash_alg(name_alg).name} digest")
    symmetric = _read_symdef(r)
    detail: RsaDetail | EccDetail
    if type_ == Alg.RSA:
        scheme = _read_scheme(r, _RSA_SCHEMES, "scheme")
        key_bits = r.u16("keyBits")
        if key_bits % 8 or not 1024 <= key_bits <= 8 * MAX_RSA_KEY_BYTES:
            raise r.fail(f"unsupported RSA key size {key_bits}")
        exponent = r.u32("exponent")
        modulus = r.sized(MAX_RSA_KEY_BYTES, "unique.rsa")
        if modulus and len(modulus) != key_bits // 8:
            raise r.fail(f"modulus is {len(modulus)} bytes for a {key_bits}-bit key")
        detail = RsaDetail(symmetric, scheme, key_bits, exponent, modulus)
    else:
        scheme = _read_scheme(r, _ECC_SCHEMES, "scheme")
        curve = r.u16("curveID")
        if curve not in CURVE_BYTES:
            raise r.fail(f"unsupported curve 0x{curve:04x}")
        kdf = _read_scheme(r, _KDF_SCHEMES, "kdf")
        size = CURVE_BYTES[curve]
        detail = EccDetail(
            symmetric, scheme, curve, kdf, r.sized(size, "unique.x"), r.sized(size, "unique.y")
        )
    return TpmtPublic(name_alg, attributes, policy, detail)


def parse_public(data: bytes, code: Reason = Reason.AK_MALFORMED) -> TpmtPublic:
    """TPM2B_PUBLIC bytes (``tpm2_createak -u``, ``tpm2_readpublic -o``): the size must match."""
    r = _Reader(data, code, "TPM2B_PUBLIC")
    size = r.u16("size")
    if size != len(data) - 2:
        raise r.fail(f"size field says {size} bytes, {len(data) - 2} follow")
    pub = _read_public_area(r)
    r.end()
    return pub


def parse_tpmt_public(data: bytes, code: Reason = Reason.AK_MALFORMED) -> TpmtPublic:
    """A bare TPMT_PUBLIC (no size prefix)."""
    r = _Reader(data, code, "TPMT_PUBLIC")
    pub = _read_public_area(r)
    r.end()
    return pub


def marshal_ecc_point(x: bytes, y: bytes) -> bytes:
    """TPMS_ECC_POINT."""
    return tpm2b(x) + tpm2b(y)
