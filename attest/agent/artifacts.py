"""Quote artifacts in the files tpm2-tools reads, so `tpm2_checkquote` can check our quotes."""

from __future__ import annotations

from pathlib import Path

from attest.tpm import Quote
from attest.verify.pcrs import serialize_tools


def write_quote_artifacts(q: Quote, ak_public: bytes, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "ak.pub": ak_public,
        "quote.msg": q.attest,
        "quote.sig": q.signature,
        "pcrs.bin": serialize_tools(q.selection, q.pcrs),
    }
    written = []
    for name, data in files.items():
        path = out / name
        path.write_bytes(data)
        written.append(path)
    return written
