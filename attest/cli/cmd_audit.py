"""attestctl audit: export the verifier's hash-chained audit trail and verify it."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attest.cli._common import (
    EXIT_OK,
    EXIT_UNTRUSTED,
    SubParsers,
    add_connection_options,
    print_json,
    read_file,
    show_help,
)
from attest.errors import UsageError

if TYPE_CHECKING:
    from attest.wire import AuditRecordOut

DESCRIPTION = """\
Every enrollment, verdict, policy version, EK and revocation the verifier stores appends a
record to its audit trail. Each record carries the SHA-256 of the one before it, so changing,
removing or reordering any record breaks every hash after it.
"""

VERIFY_DESCRIPTION = """\
Fetch the whole trail from the verifier (or read an export with --file) and check the chain:
sequence numbers, each record's hash over its content, each record's link to the one before.

What it proves: checked against the verifier's own copy, only that the copy is consistent.
Whoever can write the verifier's database can also rewrite the whole chain consistently.
So record the head this command prints (seq and hash) somewhere the verifier cannot write
(a ticket, a commit, a second system), and pass earlier heads with --known-head: the trail
must still contain that record with that hash, which a rewrite cannot fake.

Exit status: 0 intact (prints the record count and the head); 1 broken (every problem is
listed); 2 the trail could not be fetched or read.
"""

EXPORT_DESCRIPTION = """\
Fetch the whole trail and write it as one JSON array of records (the admin API's
AuditRecordOut: seq, at, kind, subject, data, prev, hash) to stdout or -o FILE. Keep exports
off the verifier: `audit verify --file FILE` checks one later, without the verifier.
"""


def _known_head(text: str) -> tuple[int, str]:
    seq, sep, digest = text.partition(":")
    digest = digest.lower()
    if not (sep and seq.isdigit() and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected SEQ:HASH (as `audit verify` prints)")
    return int(seq), digest


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "audit",
        help="export and verify the verifier's hash-chained audit trail",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(handler=lambda _args: show_help(p))
    commands = p.add_subparsers(title="audit commands", metavar="COMMAND")

    v = commands.add_parser(
        "verify",
        help="check the audit trail's hash chain (from the verifier or an export)",
        description=VERIFY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("--file", metavar="FILE", help="verify this export instead of the verifier's trail")
    v.add_argument(
        "--known-head",
        action="append",
        type=_known_head,
        default=[],
        metavar="SEQ:HASH",
        help="a head recorded earlier that the trail must still contain (repeatable)",
    )
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    add_connection_options(v)
    v.set_defaults(handler=run_verify)

    e = commands.add_parser(
        "export",
        help="save the whole audit trail as JSON",
        description=EXPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here instead of stdout")
    e.add_argument(
        "--json", action="store_true", help="with -o: print a JSON summary (file, records, head) on stdout"
    )
    add_connection_options(e)
    e.set_defaults(handler=run_export)


def _progress() -> tuple[Callable[[int], None] | None, Callable[[], None]]:
    """A running count on stderr for a person at a terminal; nothing in pipes and logs."""
    if not sys.stderr.isatty():
        return None, lambda: None
    shown = False

    def update(count: int) -> None:
        nonlocal shown
        shown = True
        sys.stderr.write(f"\rfetched {count} audit records")
        sys.stderr.flush()

    def done() -> None:
        if shown:
            sys.stderr.write("\n")

    return update, done


def _fetch(args: argparse.Namespace) -> list[AuditRecordOut]:
    from attest.cli.admin_client import open_client

    update, done = _progress()
    try:
        with open_client(args) as client:
            return client.audit_records(update)
    finally:
        done()


def _load_export(path: str) -> list[AuditRecordOut]:
    from pydantic import TypeAdapter, ValidationError

    from attest.wire import AuditRecordOut

    try:
        return TypeAdapter(list[AuditRecordOut]).validate_json(read_file(path))
    except ValidationError as e:
        first = e.errors()[0]
        where = "record " + ".".join(str(p) for p in first["loc"]) if first["loc"] else "top level"
        raise UsageError(
            f"{path}: not an audit export (a JSON array of records): {where}: {first['msg']}"
        ) from None


def _head(records: list[AuditRecordOut]) -> dict[str, Any] | None:
    return {"seq": records[-1].seq, "hash": records[-1].hash} if records else None


def run_verify(args: argparse.Namespace) -> int:
    from attest.store.api import AuditRecord
    from attest.store.audit import verify_chain

    records = _load_export(args.file) if args.file else _fetch(args)
    problems = list(verify_chain([AuditRecord(**r.model_dump()) for r in records]))
    by_seq = {r.seq: r.hash for r in records}
    for seq, digest in args.known_head:
        if seq not in by_seq:
            problems.append(f"known head {seq}:{digest}: the trail has no record {seq}")
        elif by_seq[seq] != digest:
            problems.append(f"known head {seq}:{digest}: record {seq} now has hash {by_seq[seq]}")
    head = _head(records)
    if args.json:
        print_json({"intact": not problems, "records": len(records), "head": head, "problems": problems})
    elif problems:
        print(f"audit trail BROKEN: {len(problems)} problem(s) in {len(records)} records")
        for problem in problems:
            print(f"  {problem}")
    elif head is None:
        print("audit trail intact: no records yet")
    else:
        print(f"audit trail intact: {len(records)} records, seq {records[0].seq}..{head['seq']}")
        print(f"head {head['seq']}:{head['hash']}")
        print("record this head outside the verifier; check it later with --known-head SEQ:HASH")
    return EXIT_UNTRUSTED if problems else EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    import json

    records = _fetch(args)
    text = json.dumps([r.model_dump(mode="json") for r in records], indent=2) + "\n"
    head = _head(records)
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, args.output)
    if args.json:
        print_json({"file": str(args.output), "records": len(records), "head": head})
    else:
        where = f", head {head['seq']}:{head['hash']}" if head else ""
        print(f"wrote {len(records)} audit records to {args.output}{where}")
    return EXIT_OK
