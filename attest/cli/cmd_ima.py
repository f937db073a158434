"""attestctl ima: replay a Linux IMA measurement list."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from attest.cli._common import EXIT_OK, SubParsers, print_json, read_file, show_help
from attest.errors import UsageError
from attest.verify.ima import (
    BANK_HASH,
    BOOT_AGGREGATE,
    DEFAULT_BANKS,
    DEFAULT_LIMITS,
    PADDED_SHA1,
    VARIANTS,
    ImaLog,
    ReplayState,
    parse,
    replay,
)

_LIST_HELP = (
    "the measurement list: /sys/kernel/security/ima/binary_runtime_measurements or "
    "ascii_runtime_measurements (told apart by content)"
)

DESCRIPTION = """\
Work with the Linux IMA (Integrity Measurement Architecture) measurement list: one entry per
file the kernel measured (or buffer: keys, the kexec command line), each extended into a PCR,
normally PCR 10.
"""

REPLAY_DESCRIPTION = f"""\
Check every entry's template hash against its template data, then recompute the PCRs the
list extends (normally only 10) in each PCR bank, as a TPM that started at reset and was
extended only by IMA would hold them. Compare with `tpm2_pcrread sha256:10`: equal values
prove the list up to its end. A list read after the quote may run past it; the verifier
then accepts it up to the entry whose running value equals the quote (see docs/ima.md).

The list may be binary (binary_runtime_measurements) or ASCII (ascii_runtime_measurements),
including the per-bank lists of Linux >= 6.10 (*_sha256...), whose template hashes are in
that bank's algorithm. Violations (all-zero template hash: a file measured while open for
writing) extend with all ones.

The SHA-1 bank is extended with the SHA-1 template hash. For the other banks, Linux >= 5.8
extends each with that bank's hash of the template data ({BANK_HASH}, the default); older
kernels, and banks whose hash the kernel lacks, get the SHA-1 template hash zero-padded
(--variant {PADDED_SHA1}).

JSON: {{"pcrs": {{"sha1": {{"10": "hex"}}, "sha256": {{"10": "hex"}}, ...}}, "entries": N,
       "violations": N, "format": "binary"|"ascii", "template_hash_alg": "sha1",
       "templates": {{"ima-ng": N}}, "boot_aggregate": {{"alg": ..., "digest": ...}} | null,
       "variant": ..., "unparsed_tail": bytes}}

Exit status: 0 replayed; 2 the file is unreadable, malformed, or an entry's template hash
does not match its data (the message names the entry).
"""


def register(sub: SubParsers) -> None:
    parser = sub.add_parser(
        "ima",
        help="replay a Linux IMA measurement list",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=lambda _args: show_help(parser))
    commands = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    rep = commands.add_parser(
        "replay",
        help="check template hashes and recompute PCR 10 per bank",
        description=REPLAY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("file", metavar="FILE", help=_LIST_HELP)
    rep.add_argument("--json", action="store_true", help="print one JSON document")
    rep.add_argument(
        "--bank",
        action="append",
        choices=("sha1", "sha256", "sha384", "sha512", "sm3_256"),
        help=f"PCR bank to replay (repeatable; default {', '.join(DEFAULT_BANKS)})",
    )
    rep.add_argument(
        "--variant",
        choices=VARIANTS,
        default=BANK_HASH,
        help=f"extend rule for the non-SHA-1 banks (default {BANK_HASH}: Linux >= 5.8)",
    )
    rep.add_argument(
        "--template-hash-alg",
        choices=("sha1", "sha256", "sha384", "sha512", "sm3_256"),
        help="algorithm of the stored template hashes (default: from their size)",
    )
    rep.add_argument(
        "--allow-partial",
        action="store_true",
        help="ignore a last entry cut off mid-way (a truncated capture); its size is reported",
    )
    rep.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
    log = parse(
        read_file(args.file, limit=DEFAULT_LIMITS.max_bytes),
        template_hash_alg=args.template_hash_alg,
        allow_partial_tail=args.allow_partial,
    )
    if not log.entries:
        raise UsageError(f"{args.file}: no measurements in the list")
    banks = tuple(dict.fromkeys(args.bank or DEFAULT_BANKS))
    state = replay(log, banks, variant=args.variant)
    doc = _document(log, state, banks, args.variant)
    if args.json:
        print_json(doc)
        return EXIT_OK
    tail = f", {log.unparsed_tail} bytes of a cut-off entry ignored" if log.unparsed_tail else ""
    print(
        f"{doc['entries']} entries ({log.format}, {log.template_hash_alg} template hashes), "
        f"{doc['violations']} violations{tail}"
    )
    print("templates: " + ", ".join(f"{name} {n}" for name, n in doc["templates"].items()))
    agg = doc["boot_aggregate"]
    print(f"boot_aggregate: {agg['alg']}:{agg['digest']}" if agg else "boot_aggregate: not the first entry")
    width = max(len(b) for b in banks)
    for bank in banks:
        for pcr, value in doc["pcrs"][bank].items():
            print(f"PCR {pcr:>2} {bank:<{width}}  {value}")
    if args.variant != BANK_HASH:
        print(f"(non-SHA-1 banks replayed with the {args.variant} rule)")
    return EXIT_OK


def _document(log: ImaLog, state: ReplayState, banks: tuple[str, ...], variant: str) -> dict[str, Any]:
    first = log.entries[0]
    boot = None
    if first.path == BOOT_AGGREGATE and first.digest is not None and not first.violation:
        boot = {"alg": first.digest_alg, "digest": first.digest.hex()}
    return {
        "pcrs": {b: {str(p): v.hex() for p, v in sorted(state.pcrs[b].items())} for b in banks},
        "entries": len(log.entries),
        "violations": sum(e.violation for e in log.entries),
        "format": log.format,
        "template_hash_alg": log.template_hash_alg,
        "templates": dict(Counter(e.template for e in log.entries)),
        "boot_aggregate": boot,
        "variant": variant,
        "unparsed_tail": log.unparsed_tail,
    }
