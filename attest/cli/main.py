"""attestctl entry point: builds the command tree from one module per command group."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from attest import __version__
from attest.cli._common import ArgumentParser, add_connection_options, run

DESCRIPTION = """\
Operate TPM node attestation: inspect and replay boot and IMA logs, appraise evidence
offline, and build reference policies from known-good machines (offline commands); enroll
endorsement keys, apply policies, list nodes and verdicts, revoke, and verify the audit
trail (commands that talk to the verifier: they need --verifier, --ca-cert and
--token-file, or ATTEST_VERIFIER, ATTEST_CA_CERT and ATTEST_TOKEN_FILE; `certs init`
makes the files).

Exit codes: 0 success (or trusted), 1 appraised and untrusted, 2 unusable input or usage.
Every command takes --json to print one JSON document on stdout.
"""


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at module level, so `attestctl --version` does no work.
    from attest.cli import (
        cmd_audit,
        cmd_certs,
        cmd_ek,
        cmd_eventlog,
        cmd_ima,
        cmd_node,
        cmd_policy,
        cmd_verify,
    )

    parser = ArgumentParser(
        prog="attestctl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"attestctl {__version__}")
    add_connection_options(parser, top_level=True)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in (cmd_eventlog, cmd_ima, cmd_verify, cmd_policy, cmd_ek, cmd_node, cmd_audit, cmd_certs):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run("attestctl", build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
