"""attest-agent: the node side of attestation."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from attest import __version__
from attest.cli._common import EXIT_OK, ArgumentParser, run
from attest.errors import UsageError
from attest.pcrselect import PcrSelection

DESCRIPTION = """\
The node agent. It reads the TPM's endorsement key certificate, keeps an attestation key
(AK) in its state directory, and answers a verifier's challenges with TPM quotes and logs.

TCTI strings are tpm2-tools': device:/dev/tpmrm0 (default), swtpm:path=/run/swtpm.sock,
mssim:host=localhost,port=2321.
"""

QUOTE_EPILOG = """\
The files are the ones tpm2-tools uses, so the quote can be checked independently:
  tpm2_checkquote -u DIR/ak.pub -m DIR/quote.msg -s DIR/quote.sig -f DIR/pcrs.bin -q NONCE
or offline with this project's verifier:
  attestctl verify --ak DIR/ak.pub --quote DIR/quote.msg --sig DIR/quote.sig --pcrs DIR/pcrs.bin --nonce NONCE
"""


def _selection(text: str) -> PcrSelection:
    try:
        return PcrSelection.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _nonce(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not hexadecimal") from None
    if not value:
        raise argparse.ArgumentTypeError("empty nonce")
    return value


def _add_tpm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tcti", default="device:/dev/tpmrm0", help="how to reach the TPM (default: %(default)s)")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/attest-agent"),
        help="where the AK blob is kept across restarts (default: %(default)s)",
    )
    p.add_argument(
        "--ak-alg",
        choices=("ecc", "rsa"),
        default="ecc",
        help="algorithm of a newly created AK (default: %(default)s)",
    )


def cmd_quote(args: argparse.Namespace) -> int:
    from attest.agent.artifacts import write_quote_artifacts
    from attest.agent.state import load_or_create_ak
    from attest.tpm import Tpm, quote

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"{args.out}: exists and is not a directory")
    with Tpm(args.tcti) as tpm:
        ak, _ = load_or_create_ak(tpm, args.state_dir, args.ak_alg)
        q = quote(tpm, ak, args.nonce, args.pcrs)
    for path in write_quote_artifacts(q, ak.public, args.out):
        print(path)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="attest-agent", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"attest-agent {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    q = sub.add_parser(
        "quote",
        help="quote PCRs over a nonce and write tpm2-tools artifacts",
        description="Quote the selected PCRs with the AK over NONCE and write ak.pub, quote.msg, "
        "quote.sig and pcrs.bin into DIR.",
        epilog=QUOTE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_tpm_options(q)
    q.add_argument("--nonce", type=_nonce, required=True, metavar="HEX", help="the verifier's challenge, hex")
    q.add_argument(
        "--pcrs",
        type=_selection,
        default=PcrSelection.parse("sha256:0-9"),
        metavar="SEL",
        help="PCR selection in tpm2-tools syntax (default: sha256:0-9)",
    )
    q.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the four files")
    q.set_defaults(handler=cmd_quote)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run("attest-agent", build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
