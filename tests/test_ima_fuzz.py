"""Hostile input: whatever the bytes, parsing raises ParseError or returns, replay raises
VerificationError or returns, quickly and without holding more than the input."""

from __future__ import annotations

import contextlib
import hashlib
import struct
import time

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import ParseError, VerificationError
from attest.verify import ima, imasig

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC = ec.generate_private_key(ec.SECP256R1())
DATAS = [
    ima.encode_template_data("ima-ng", "sha256", hashlib.sha256(b"%d" % n).digest(), f"/usr/lib/l{n}.so")
    for n in range(4)
]
BINARY = b"".join(ima.encode_binary_entry("ima-ng", d) for d in DATAS) + ima.encode_binary_entry(
    "ima-sig", ima.encode_template_data("ima-sig", "sha1", bytes(20), "/x", b"\x03\x02\x04abcd\x00\x01z")
)
ASCII = b"".join(ima.ascii_line(e) + b"\n" for e in ima.parse(BINARY).entries)
KEYS = imasig.KeyRing([imasig.enroll(_EC.public_key()), imasig.enroll(_RSA.public_key())])


def _exercise(data: bytes, *, partial: bool = False) -> None:
    try:
        log = ima.parse(data, allow_partial_tail=partial)
    except ParseError:
        return
    try:
        state = ima.replay(log, ["sha1", "sha256"])
        ima.match_quote(log, {"sha256": {10: state.pcrs["sha256"].get(10, bytes(32))}})
    except VerificationError:
        return
    for entry in log.entries:
        # Every decoded view of an accepted entry works.
        _ = (entry.digest_alg, entry.digest, entry.path, entry.sig, entry.buf, entry.field_ids)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512), st.booleans())
def test_arbitrary_bytes(data: bytes, partial: bool) -> None:
    _exercise(data, partial=partial)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text(text: str) -> None:
    with contextlib.suppress(ParseError):
        ima.parse_ascii(text)
    _exercise(text.encode("utf-8", "surrogatepass"))


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["flip", "cut", "insert", "u32"]))
            at = draw(st.integers(0, max(len(data) - 1, 0)))
            if kind == "flip" and data:
                data[at] ^= draw(st.integers(1, 255))
            elif kind == "cut":
                del data[at : at + draw(st.integers(1, 40))]
            elif kind == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            else:
                data[at : at + 4] = struct.pack(
                    "<I", draw(st.sampled_from([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
                )
        return bytes(data)

    return mutate()


@settings(max_examples=500, deadline=None)
@given(_mutations(BINARY), st.booleans())
def test_mutated_binary_lists(data: bytes, partial: bool) -> None:
    _exercise(data, partial=partial)


@settings(max_examples=500, deadline=None)
@given(_mutations(ASCII), st.booleans())
def test_mutated_ascii_lists(data: bytes, partial: bool) -> None:
    _exercise(data, partial=partial)


def test_huge_claims_fail_fast() -> None:
    # A few hundred KiB of records claiming 4 GiB fields, names, entries: each refused at once.
    header = struct.pack("<I", 10) + bytes(20) + struct.pack("<I", 6) + b"ima-ng"
    hostile = [
        header + struct.pack("<I", 0xFFFFFFFF),
        header + struct.pack("<I", 1 << 20) + struct.pack("<I", 0xFFFFFFF0) * ((1 << 20) // 4),
        header + struct.pack("<I", 1 << 20) + bytes(1 << 20),  # 262144 empty fields
        struct.pack("<I", 10) + bytes(20) + struct.pack("<I", 0xFFFFFFFF),
        (header + struct.pack("<I", 0)) * 50_000,  # empty template data: field count is wrong
        b"10 " + b"0" * 40 + b" ima-ng " + b"sha1:" + b"0" * 3_000_000 + b" /x\n",
    ]
    for data in hostile:
        began = time.perf_counter()
        with contextlib.suppress(ParseError):
            ima.parse(data)
        assert time.perf_counter() - began < 0.5


@st.composite
def _signature_fields(draw: st.DrawFn) -> bytes:
    """Random fields, and headers that name an enrolled key over random signature bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    body = draw(st.binary(max_size=300))
    key_id = draw(st.sampled_from([imasig.key_id_v2(_RSA.public_key()), imasig.key_id_v2(_EC.public_key())]))
    algo = draw(st.sampled_from([2, 4, 5, 6, 7, 17, 20, 99]))
    size = draw(st.sampled_from([len(body), len(body) + 1, 0xFFFF]))
    return struct.pack(">BBB4sH", 3, draw(st.sampled_from([2, 3])), algo, key_id, size) + body


@settings(max_examples=300, deadline=None)
@given(_signature_fields())
def test_arbitrary_signature_fields(field: bytes) -> None:
    data = ima.encode_template_data("ima-sig", "sha256", bytes(range(32)), "/x", field)
    (entry,) = ima.parse(ima.encode_binary_entry("ima-sig", data)).entries
    with contextlib.suppress(VerificationError):
        imasig.verify_entry_signature(entry, KEYS)
