"""IMA measurement lists (attest.verify.ima, imasig), ASCII and binary.

The first input byte picks the options (partial tail allowed or not); the rest is the list.
A list that parses must replay in every bank, match its own replayed PCR 10, decode every
entry, and survive its encoders: a binary list re-encodes to the same entries, and an ASCII
list's lines print back to what was read.
"""

from __future__ import annotations

import contextlib

from attest.errors import ParseError, VerificationError
from attest.verify import ima, imasig, policy

_BANKS = ("sha1", "sha256", "sha384", "sha512", "sm3_256")
_POLICY = policy.load_policy(
    "version: 1\nname: fuzz\nima:\n  exclude: ['/tmp/*']\n"
    "  allow: {/usr/bin/bash: ['sha256:" + "00" * 32 + "'], /init: ['sha1:" + "00" * 20 + "']}\n"
)
_BOOT_PCRS = {bank: {i: bytes(size) for i in range(10)} for bank, size in (("sha1", 20), ("sha256", 32))}


def one_input(data: bytes) -> None:
    partial = bool(data[:1]) and data[0] & 1 == 1
    body = data[1:]
    try:
        log = ima.parse(body, allow_partial_tail=partial)
    except ParseError:
        return
    for entry in log.entries:
        _ = (entry.digest_alg, entry.digest, entry.path, entry.sig, entry.buf, entry.field_ids)
        if entry.sig:
            with contextlib.suppress(VerificationError):
                imasig.parse_signature(entry.sig)
    _round_trip(log, body)
    try:
        state = ima.replay(log, _BANKS)
        quoted = {bank: {ima.IMA_PCR: v[ima.IMA_PCR]} for bank, v in state.pcrs.items() if ima.IMA_PCR in v}
        match = ima.match_quote(log, quoted) if quoted else None
    except VerificationError:
        return
    policy.evaluate_ima(_POLICY, match.accepted if match else log.entries)
    with contextlib.suppress(VerificationError):
        ima.verify_boot_aggregate(log, _BOOT_PCRS)
    if match is not None and all(e.pcr == ima.IMA_PCR for e in log.entries):
        # The quote of the whole list's replay accepts the whole list, nothing pending.
        assert match.accepted == log.entries, (len(match.accepted), len(log.entries))


def _round_trip(log: ima.ImaLog, body: bytes) -> None:
    used = body[: len(body) - log.unparsed_tail]
    if log.format == "binary":
        again = ima.parse_binary(used, template_hash_alg=log.template_hash_alg)
        assert again.entries == log.entries
        if used[:1] != b"\0":  # little-endian: the encoder's byte order
            encoded = b"".join(
                ima.encode_binary_entry(
                    e.template, e.template_data, pcr=e.pcr, template_hash_value=e.template_hash
                )
                for e in log.entries
            )
            assert encoded == used
        return
    lines = []
    for entry in log.entries:
        try:
            lines.append(ima.ascii_line(entry) + b"\n")
        except ValueError:
            return  # a field with no reversible ASCII form (documented), nothing to compare
    again = ima.parse_ascii(b"".join(lines), template_hash_alg=log.template_hash_alg)
    assert again.entries == log.entries
