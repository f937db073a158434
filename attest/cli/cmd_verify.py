"""attestctl verify: appraise tpm2-tools quote artifacts offline."""

from __future__ import annotations

import argparse

from attest.cli._common import (
    EXIT_OK,
    EXIT_UNTRUSTED,
    SubParsers,
    hex_nonce,
    pcr_selection,
    print_json,
    read_file,
)
from attest.errors import UsageError
from attest.pcrselect import PcrSelection

DESCRIPTION = """\
Appraise a quote offline, exactly as the verifier service would, from the files tpm2-tools
(or `attest-agent quote`) writes:

  AK    the attestation key: TPM2B_PUBLIC (tpm2_createak -u, tpm2_readpublic -o) or PEM
  MSG   the signed TPMS_ATTEST (tpm2_quote -m)
  SIG   the TPMT_SIGNATURE (tpm2_quote -s)
  PCRS  the PCR values: tpm2_quote -o (serialized or values) or tpm2_pcrread YAML

Checks, in order: the quote (magic, type, nonce, PCR selection, PCR digest, signature scheme
and signature), the event log's replay of every quoted boot PCR, the IMA list's replay of
PCR 10 and its boot_aggregate, then the policy's rules. Without --policy only integrity is
appraised (signature, nonce, PCR digest, log replay): trusted when all of that holds.

JSON: {"trusted": bool, "reasons": [{"code": "...", "message": "...", "rule"?, "pcr"?, "event"?}],
       "pcrs": {...}, "workarounds": [...], ...}  Reason codes: docs/reason-codes.md.

Exit status: 0 trusted, 1 untrusted (reasons printed), 2 unusable input.
"""


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "verify",
        help="appraise tpm2-tools quote artifacts (and logs, and a policy) offline",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ak", required=True, metavar="AK", help="attestation key: TPM2B_PUBLIC or PEM")
    p.add_argument("--quote", required=True, metavar="MSG", help="TPMS_ATTEST (tpm2_quote -m)")
    p.add_argument("--sig", required=True, metavar="SIG", help="TPMT_SIGNATURE (tpm2_quote -s)")
    p.add_argument(
        "--pcrs", required=True, metavar="PCRS", help="PCR values (tpm2_quote -o, tpm2_pcrread -o/YAML)"
    )
    p.add_argument(
        "--nonce", required=True, type=hex_nonce, metavar="HEX", help="the nonce the quote must carry"
    )
    p.add_argument(
        "--selection",
        type=pcr_selection,
        metavar="SEL",
        help="the PCR selection that was asked for, e.g. sha256:0-9 (default: the quote's own)",
    )
    p.add_argument("--eventlog", metavar="FILE", help="TCG event log (binary_bios_measurements)")
    p.add_argument("--ima", metavar="FILE", help="IMA measurement list, ASCII or binary")
    p.add_argument("--policy", metavar="FILE", help="reference policy YAML (attestctl policy create)")
    p.add_argument(
        "--ima-keys",
        metavar="FILE",
        action="append",
        help="PEM/DER key or certificate that ima-sig signatures must verify under (repeatable)",
    )
    p.add_argument(
        "--allow-sha1", action="store_true", help="accept SHA-1 banks and signatures (off by default)"
    )
    p.add_argument("--json", action="store_true", help="print the verdict as one JSON document")
    p.set_defaults(handler=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from attest.verify.appraise import Evidence, Expectations, appraise
    from attest.verify.imasig import KeyRing
    from attest.verify.pcrs import load_pcr_file
    from attest.verify.policy import load_policy
    from attest.verify.quote import load_ak
    from attest.verify.tpmstructs import QuoteInfo, parse_attest

    ak = load_ak(read_file(args.ak))
    attest = read_file(args.quote)
    selection: PcrSelection | None = args.selection
    if selection is None:
        info = parse_attest(attest).attested
        if not isinstance(info, QuoteInfo):
            raise UsageError(f"{args.quote}: not a quote; give --selection to appraise it anyway")
        selection = PcrSelection(info.pcr_select.as_banks())
    evidence = Evidence(
        attest=attest,
        signature=read_file(args.sig),
        pcrs=load_pcr_file(read_file(args.pcrs), selection),
        eventlog=read_file(args.eventlog) if args.eventlog else None,
        ima=read_file(args.ima) if args.ima else None,
    )
    expect = Expectations(
        ak=ak,
        nonce=args.nonce,
        selection=selection,
        policy=load_policy(read_file(args.policy)) if args.policy else None,
        allow_sha1=args.allow_sha1,
        ima_keys=KeyRing.load(read_file(f) for f in args.ima_keys) if args.ima_keys else None,
    )
    verdict = appraise(evidence, expect)
    if args.json:
        print_json(verdict.to_json())
    else:
        print("trusted" if verdict.trusted else "untrusted")
        for f in verdict.findings:
            print(f"  {f.code.value}: {f.message}")
        for name in verdict.workarounds:
            print(f"  workaround applied: {name}")
    return EXIT_OK if verdict.trusted else EXIT_UNTRUSTED
