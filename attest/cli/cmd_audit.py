"""attestctl audit: export the verifier's hash-chained audit trail and verify it."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
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
    write_json_array,
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


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


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


def _fetch(args: argparse.Namespace) -> Iterator[AuditRecordOut]:
    """The verifier's trail record by record, fetched a page at a time as it is consumed."""
    from attest.cli.admin_client import open_client

    update, done = _progress()
    try:
        with open_client(args) as client:
            for page in client.audit_pages(update):
                yield from page
    finally:
        done()


def _load_export(path: str) -> Iterator[AuditRecordOut]:
    """An export's records one at a time: the file's text is read whole, but only one record is
    decoded at a time."""
    import json

    from pydantic import ValidationError

    from attest.wire import AuditRecordOut

    def refuse(where: str, why: str) -> UsageError:
        return UsageError(f"{path}: not an audit export (a JSON array of records): {where}: {why}")

    try:
        text = read_file(path).decode()
    except UnicodeDecodeError as e:
        raise refuse("top level", f"not UTF-8 ({e.reason})") from None
    decoder = json.JSONDecoder()

    def skip_space(at: int) -> int:
        found = _JSON_SPACE.match(text, at)  # always matches, if only the empty string
        return found.end() if found else at

    pos = skip_space(0)
    if not text.startswith("[", pos):
        raise refuse("top level", "expected a JSON array")
    pos = skip_space(pos + 1)
    index = 0
    while not text.startswith("]", pos):
        if index:
            if not text.startswith(",", pos):
                raise refuse(f"after record {index - 1}", "expected ',' or ']'")
            pos = skip_space(pos + 1)
        try:
            doc, pos = decoder.raw_decode(text, pos)
            yield AuditRecordOut.model_validate(doc)
        except json.JSONDecodeError as e:
            raise refuse(f"record {index}", f"invalid JSON ({e.msg}, character {e.pos})") from None
        except ValidationError as e:
            first = e.errors()[0]
            raise refuse(".".join(str(p) for p in (f"record {index}", *first["loc"])), first["msg"]) from None
        pos = skip_space(pos)
        index += 1
    if text[pos + 1 :].strip():
        raise refuse("top level", "more after the array")


class _Tally:
    """What the summary needs of a streamed trail: its count, first and last records, and the
    hashes of the records the known heads name."""

    def __init__(self, wanted: Iterable[int]) -> None:
        self.count = 0
        self.first: AuditRecordOut | None = None
        self.last: AuditRecordOut | None = None
        self.hashes: dict[int, str | None] = dict.fromkeys(wanted)

    def __call__(self, records: Iterable[AuditRecordOut]) -> Iterator[AuditRecordOut]:
        for record in records:
            self.count += 1
            self.first = self.first or record
            self.last = record
            if record.seq in self.hashes:
                self.hashes[record.seq] = record.hash
            yield record

    def head(self) -> dict[str, Any] | None:
        return {"seq": self.last.seq, "hash": self.last.hash} if self.last else None


def run_verify(args: argparse.Namespace) -> int:
    from attest.store.api import AuditRecord
    from attest.store.audit import verify_chain

    tally = _Tally(seq for seq, _ in args.known_head)
    records = tally(_load_export(args.file) if args.file else _fetch(args))
    problems = verify_chain(AuditRecord(**r.model_dump()) for r in records)
    for seq, digest in args.known_head:
        found = tally.hashes[seq]
        if found is None:
            problems.append(f"known head {seq}:{digest}: the trail has no record {seq}")
        elif found != digest:
            problems.append(f"known head {seq}:{digest}: record {seq} now has hash {found}")
    head = tally.head()
    if args.json:
        print_json({"intact": not problems, "records": tally.count, "head": head, "problems": problems})
    elif problems:
        print(f"audit trail BROKEN: {len(problems)} problem(s) in {tally.count} records")
        for problem in problems:
            print(f"  {problem}")
    elif head is None or tally.first is None:
        print("audit trail intact: no records yet")
    else:
        print(f"audit trail intact: {tally.count} records, seq {tally.first.seq}..{head['seq']}")
        print(f"head {head['seq']}:{head['hash']}")
        print("record this head outside the verifier; check it later with --known-head SEQ:HASH")
    return EXIT_UNTRUSTED if problems else EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    """Streams: records are written as their pages arrive. To stdout, a failure midway leaves a
    truncated array and exit status 2; to a file, the file is only replaced once complete."""
    tally = _Tally(())
    records = (r.model_dump(mode="json") for r in tally(_fetch(args)))
    if args.output is None:
        write_json_array(sys.stdout, records)
        return EXIT_OK
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    try:
        with tmp.open("w") as out:
            write_json_array(out, records)
        os.replace(tmp, args.output)
    finally:
        tmp.unlink(missing_ok=True)
    head = tally.head()
    if args.json:
        print_json({"file": str(args.output), "records": tally.count, "head": head})
    else:
        where = f", head {head['seq']}:{head['hash']}" if head else ""
        print(f"wrote {tally.count} audit records to {args.output}{where}")
    return EXIT_OK
