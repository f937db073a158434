"""Quote artifacts in the files tpm2-tools reads, so `tpm2_checkquote` can check our quotes."""

from __future__ import annotations

import struct
from pathlib import Path

from attest.tcg import hash_alg
from attest.tpm import Quote

# tpm2-tools' "serialized" PCR file is its C structs written raw, little-endian:
# TPML_PCR_SELECTION (u32 count + 16 x {u16 hash, u8 sizeofSelect, u8 pcrSelect[4], pad}),
# u32 count of TPML_DIGESTs, then each TPML_DIGEST (u32 count + 8 x {u16 size, u8 buffer[64]}).
_MAX_SELECTIONS = 16
_DIGESTS_PER_LIST = 8
_PCR_SELECT_MAX = 4


def tpm2tools_pcrs(q: Quote) -> bytes:
    sel = bytearray(struct.pack("<I", len(q.selection.banks)))
    values: list[bytes] = []
    for bank, pcrs in q.selection.banks:
        bitmap = bytearray(_PCR_SELECT_MAX)
        for p in pcrs:
            bitmap[p // 8] |= 1 << (p % 8)
            values.append(q.pcrs[bank][p])
        sel += struct.pack("<HB", hash_alg(bank).alg, 3) + bitmap + b"\0"
    sel += bytes(8 * (_MAX_SELECTIONS - len(q.selection.banks)))
    lists = [values[i : i + _DIGESTS_PER_LIST] for i in range(0, len(values), _DIGESTS_PER_LIST)]
    out = bytearray(sel) + struct.pack("<I", len(lists))
    for chunk in lists:
        out += struct.pack("<I", len(chunk))
        for d in chunk + [b""] * (_DIGESTS_PER_LIST - len(chunk)):
            out += struct.pack("<H", len(d)) + d.ljust(64, b"\0")
    return bytes(out)


def write_quote_artifacts(q: Quote, ak_public: bytes, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "ak.pub": ak_public,
        "quote.msg": q.attest,
        "quote.sig": q.signature,
        "pcrs.bin": tpm2tools_pcrs(q),
    }
    written = []
    for name, data in files.items():
        path = out / name
        path.write_bytes(data)
        written.append(path)
    return written
