"""attestctl policy: reference policies from known-good evidence."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from attest.cli._common import EXIT_OK, SubParsers, read_file

DESCRIPTION = """\
Reference policies say what a good node's evidence looks like: firmware PCR values, Secure
Boot state and keys, allowed boot applications, drivers and kernel command lines, an IMA
allowlist, and allowed container images. The format is documented in docs/policy.md.
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
