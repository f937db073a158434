"""attestctl node and attestctl revoke: enrolled nodes and their verdicts."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from attest.cli._common import (
    EXIT_OK,
    EXIT_UNTRUSTED,
    SubParsers,
    add_connection_options,
    describe_time,
    print_json,
    print_rows,
    show_help,
    table_widths,
    write_json_array,
)

if TYPE_CHECKING:
    from attest.wire import NodeOut, ReasonOut

DESCRIPTION = """\
Nodes the verifier has enrolled, and the verdict of each one's latest appraisal.

States: trusted (the latest evidence passed and has not expired), untrusted (it failed:
see the reasons), stale (the trusted verdict expired: the agent stopped attesting),
enrolled (no verdict yet), revoked (an operator revoked it; it must enroll again).
"""

LIST_DESCRIPTION = """\
One line per node: NAME, STATE, LAST VERDICT and EXPIRES (relative, and absolute in UTC),
and REASONS: the first failed check's code and how many more there are. `node show NAME`
lists every reason. Reason codes: docs/reason-codes.md.
"""

SHOW_DESCRIPTION = """\
Everything the verifier holds about one node: state, EK fingerprint, AK name, the policy it
was appraised against, when, until when, and every failed check with its message and, where
it applies, the policy rule, PCR and event-log or IMA entry that broke it.

Exit status: 0 the node is trusted, 1 it is not (any other state), 2 no such node or error.
"""

HEADERS = ["NAME", "STATE", "LAST VERDICT", "EXPIRES", "REASONS"]

REVOKE_DESCRIPTION = """\
Revoke node NAME now: its verdict stops counting, admission refuses it, and its agent must
enroll again (with an EK the verifier still accepts). Asks no question; prints the node as
the verifier now holds it.
"""


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "node",
        help="list nodes and show their verdicts (verifier)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(handler=lambda _args: show_help(p))
    commands = p.add_subparsers(title="node commands", metavar="COMMAND")

    ls = commands.add_parser(
        "list",
        help="a table of nodes: state, last verdict, expiry, reasons",
        description=LIST_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument("--json", action="store_true", help="print the nodes (NodeOut) as JSON")
    add_connection_options(ls)
    ls.set_defaults(handler=run_list)

    show = commands.add_parser(
        "show",
        help="one node's full verdict, every failed check",
        description=SHOW_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("name", metavar="NAME", help="the node's name")
    show.add_argument("--json", action="store_true", help="print the node (NodeOut) as JSON")
    add_connection_options(show)
    show.set_defaults(handler=run_show)

    for parent, help_text in ((commands, "revoke a node"), (sub, "revoke a node (same as `node revoke`)")):
        r = parent.add_parser(
            "revoke",
            help=help_text,
            description=REVOKE_DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        r.add_argument("name", metavar="NAME", help="the node's name")
        r.add_argument("--json", action="store_true", help="print the node (NodeOut) as JSON")
        add_connection_options(r)
        r.set_defaults(handler=run_revoke)


def _reasons_cell(reasons: list[ReasonOut]) -> str:
    if not reasons:
        return "-"
    more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
    return reasons[0].code + more


def _row(n: NodeOut) -> list[str]:
    return [
        n.name,
        n.state,
        describe_time(n.last_verdict_at),
        describe_time(n.expires_at),
        _reasons_cell(n.reasons),
    ]


def run_list(args: argparse.Namespace) -> int:
    """Streams: each page of nodes is printed as it arrives; pages come by name, and each is
    sorted too (a verifier that predates paging sends one unsorted page). The table's column
    widths come from the first page, printed with the header."""
    from attest.cli.admin_client import open_client

    with open_client(args) as client:
        pages = client.node_pages()
        if args.json:
            write_json_array(sys.stdout, (n.model_dump(mode="json") for page in pages for n in page))
            return EXIT_OK
        widths: list[int] | None = None
        for page in pages:
            rows = [_row(n) for n in sorted(page, key=lambda n: n.name)]
            if widths is None:
                if not rows:
                    break
                widths = table_widths(HEADERS, rows)
                rows.insert(0, HEADERS)
            print_rows(widths, rows)
        if widths is None:
            print("no nodes enrolled")
    return EXIT_OK


def _print_node(node: NodeOut) -> None:
    fields = [
        ("node", node.name),
        ("state", node.state),
        ("EK", f"sha256:{node.ek_fingerprint}" if node.ek_fingerprint else "-"),
        ("AK name", node.ak_name or "-"),
        ("policy", node.policy or "-"),
        ("last verdict", describe_time(node.last_verdict_at)),
        ("expires", describe_time(node.expires_at)),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        print(f"{key:<{width}}  {value}")
    if node.containers:
        print(f"containers ({len(node.containers)}, as proven by the last quote):")
        for c in node.containers:
            digest = c.image_digest or "(no digest)"
            print(f"  {c.namespace}/{c.pod} {c.container}: {c.image} {digest} at {c.time}")
    if not node.reasons:
        return
    print(f"reasons ({len(node.reasons)}):")
    for reason in node.reasons:
        print(f"  {reason.code}: {reason.message}")
        where = [
            f"{label} {value}"
            for label, value in (("rule", reason.rule), ("pcr", reason.pcr), ("event", reason.event))
            if value is not None
        ]
        if where:
            print(f"    at {', '.join(where)}")


def run_show(args: argparse.Namespace) -> int:
    from attest.cli.admin_client import open_client

    with open_client(args) as client:
        node = client.get_node(args.name)
    if args.json:
        print_json(node.model_dump(mode="json"))
    else:
        _print_node(node)
    return EXIT_OK if node.state == "trusted" else EXIT_UNTRUSTED


def run_revoke(args: argparse.Namespace) -> int:
    from attest.cli.admin_client import open_client

    with open_client(args) as client:
        node = client.revoke_node(args.name)
    if args.json:
        print_json(node.model_dump(mode="json"))
    else:
        print(f"revoked node {node.name}: state {node.state}")
    return EXIT_OK
