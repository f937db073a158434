"""attestctl policy: reference policies from known-good evidence."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from attest.cli._common import (
    EXIT_OK,
    CommandError,
    SubParsers,
    add_connection_options,
    describe_time,
    positive_int,
    print_json,
    print_table,
    read_file,
)

DESCRIPTION = """\
Reference policies say what a good node's evidence looks like: firmware PCR values, Secure
Boot state and keys, allowed boot applications, drivers and kernel command lines, an IMA
allowlist, and allowed container images. The format is documented in docs/policy.md.

`create` works offline; `apply`, `list` and `show` talk to the verifier, which keeps every
version of every policy by name.
"""

CREATE_DESCRIPTION = """\
Write a policy that the given known-good evidence satisfies, as tight as that evidence
allows: PCRs 0-3 and 6 pinned by value; Secure Boot required (with its PK, KEK and db
exactly, and dbx at least as it is) if it was on; every boot application, driver, GRUB
command (PCR 8) and file GRUB measured (PCR 9) allowlisted by digest; the kernel command
line; and, with --ima, every file in the IMA list by path and digest.

Generate it on a node you trust, review it, then apply it. Every list is an allowlist: add
digests for the kernels and boot loaders you will roll out before you roll them out.
"""

APPLY_DESCRIPTION = """\
Validate FILE locally exactly as the verifier will (strict YAML: an unknown key, a misspelt
rule or a malformed digest is refused here, with where it is), then store it on the verifier
as the next version of the policy named inside it. Prints NAME@VERSION and the SHA-256 of the
text. A policy refused locally never reaches the verifier.

Exit status: 0 stored; 2 invalid (the message says where) or refused by the verifier.
"""

LIST_DESCRIPTION = """\
The latest version of every policy: name, version, the first 16 hex digits of its SHA-256
digest (--json for all of it), and when it was stored.
"""

SHOW_DESCRIPTION = """\
Print a policy's YAML text exactly as it was applied: the latest version, or --version N.
With --json, the whole record (name, version, digest, created_at, text).
"""


def register(sub: SubParsers) -> None:
    p = sub.add_parser("policy", help="reference policies", description=DESCRIPTION)
    policy_sub = p.add_subparsers(title="policy commands", metavar="COMMAND")
    c = policy_sub.add_parser(
        "create",
        help="generate a policy from a known-good event log (and IMA list)",
        description=CREATE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--eventlog", required=True, metavar="FILE", help="the known-good TCG event log")
    c.add_argument("--ima", metavar="FILE", help="the known-good IMA measurement list (ASCII or binary)")
    c.add_argument(
        "--name", default="reference", help="the policy's name, shown in every finding (default: %(default)s)"
    )
    c.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here instead of stdout")
    c.set_defaults(handler=run_create)

    a = policy_sub.add_parser(
        "apply",
        help="validate a policy file and store it on the verifier as a new version",
        description=APPLY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("file", metavar="FILE", help="the policy YAML (attestctl policy create, reviewed)")
    a.add_argument("--json", action="store_true", help="print the stored policy (PolicyOut) as JSON")
    add_connection_options(a)
    a.set_defaults(handler=run_apply)

    ls = policy_sub.add_parser(
        "list",
        help="list the verifier's policies (latest version of each)",
        description=LIST_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument("--json", action="store_true", help="print the policies (PolicyOut) as JSON")
    add_connection_options(ls)
    ls.set_defaults(handler=run_list)

    sh = policy_sub.add_parser(
        "show",
        help="print a stored policy's YAML",
        description=SHOW_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sh.add_argument("name", metavar="NAME", help="the policy's name")
    sh.add_argument(
        "--version",
        type=positive_int("a policy version (1, 2, ...)"),
        metavar="N",
        help="this version (default: the latest)",
    )
    sh.add_argument("--json", action="store_true", help="print the policy (PolicyOut) as JSON")
    add_connection_options(sh)
    sh.set_defaults(handler=run_show)


def run_create(args: argparse.Namespace) -> int:
    from attest.verify import eventlog, ima
    from attest.verify.policy import create_policy, dump_policy

    log = eventlog.parse(read_file(args.eventlog))
    replay = eventlog.replay(log)
    entries: tuple[ima.ImaEntry, ...] = ()
    if args.ima:
        ima_log = ima.parse(read_file(args.ima))
        ima.verify_template_hashes(ima_log)
        entries = ima_log.entries
    text = dump_policy(create_policy(args.name, log, replay.pcrs, entries, with_ima=bool(args.ima)))
    if args.output is None:
        sys.stdout.write(text)
    else:
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    return EXIT_OK


def run_apply(args: argparse.Namespace) -> int:
    from attest.cli.admin_client import open_client
    from attest.errors import UsageError
    from attest.verify.policy import MAX_POLICY_BYTES, load_policy

    raw = read_file(args.file, limit=MAX_POLICY_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{args.file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    load_policy(text)  # ParseError(POLICY_INVALID) says what is wrong where; nothing is sent
    with open_client(args) as client:
        stored = client.apply_policy(text)
    if args.json:
        print_json(stored.model_dump(mode="json"))
    else:
        print(f"applied {stored.name}@{stored.version} sha256:{stored.digest}")
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    from attest.cli.admin_client import open_client

    with open_client(args) as client:
        policies = client.list_policies()
    if args.json:
        print_json([p.model_dump(mode="json") for p in policies])
        return EXIT_OK
    if not policies:
        print("no policies stored")
        return EXIT_OK
    rows = [
        [p.name, str(p.version), p.digest[:16], describe_time(p.created_at)]
        for p in sorted(policies, key=lambda p: p.name)
    ]
    print_table(["NAME", "VERSION", "DIGEST", "CREATED"], rows)
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    from attest.cli.admin_client import open_client

    with open_client(args) as client:
        policy = client.get_policy(args.name, args.version)
    if args.json:
        print_json(policy.model_dump(mode="json"))
        return EXIT_OK
    if policy.text is None:
        raise CommandError(f"the verifier sent no text for {policy.name}@{policy.version}")
    sys.stdout.write(policy.text if policy.text.endswith("\n") else policy.text + "\n")
    return EXIT_OK
