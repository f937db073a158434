"""attestctl ek: endorsement keys an operator vouches for."""

from __future__ import annotations

import argparse
import hashlib
from typing import TYPE_CHECKING

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
    show_help,
)
from attest.errors import UsageError

if TYPE_CHECKING:
    from attest.verify.tpmstructs import PublicKey

DESCRIPTION = """\
Endorsement keys (EKs) identify TPMs. The verifier enrolls a node only if its EK certificate
chains to a trusted TPM manufacturer root, or if an operator enrolled that EK for that node
here: by its certificate, or by its public key when the TPM has no certificate.
"""

ENROLL_DESCRIPTION = """\
Vouch for one TPM's endorsement key as the identity of node NAME. Get the key on the node:

  tpm2_getekcertificate -o ek.crt             # the certificate, if the TPM has one (DER)
  tpm2_createek -c ek.ctx -G rsa -u ek.pub    # otherwise its public key (TPM2B_PUBLIC)
  tpm2_createek -c ek.ctx -G rsa -u ek.pem -f pem   # or the same as PEM

--ek-cert takes PEM or DER; --ek-pub takes PEM or DER SubjectPublicKeyInfo, or TPM2B_PUBLIC.
The key is checked locally (a certificate must parse, the key must be RSA or NIST-curve EC),
then sent. Prints the EK fingerprint, the SHA-256 of the key's SubjectPublicKeyInfo (DER):
compare it with what the node reports before you trust the enrollment.
"""

LIST_DESCRIPTION = """\
Every EK the verifier knows: ID, node, fingerprint (first 16 hex digits; --json for all 64),
source (operator, or manufacturer-chain for EKs accepted by certificate chain at enrollment),
when it was added and when it was revoked.
"""

REVOKE_DESCRIPTION = """\
Revoke an EK by its ID (from `attestctl ek list`): the node it identified can no longer enroll
with it. Asks no question; prints the revoked EK.
"""


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "ek",
        help="enroll, list and revoke endorsement keys (verifier)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(handler=lambda _args: show_help(p))
    commands = p.add_subparsers(title="ek commands", metavar="COMMAND")

    e = commands.add_parser(
        "enroll",
        help="vouch for a TPM's EK (certificate or public key) as a node's identity",
        description=ENROLL_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--node", required=True, metavar="NAME", help="the Kubernetes node name")
    key = e.add_mutually_exclusive_group(required=True)
    key.add_argument("--ek-cert", metavar="FILE", help="EK certificate, PEM or DER")
    key.add_argument("--ek-pub", metavar="FILE", help="EK public key: PEM, DER SPKI or TPM2B_PUBLIC")
    e.add_argument("--json", action="store_true", help="print the enrolled EK (EkOut) as JSON")
    add_connection_options(e)
    e.set_defaults(handler=run_enroll)

    ls = commands.add_parser(
        "list",
        help="list enrolled EKs",
        description=LIST_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument("--json", action="store_true", help="print the list (EkOut) as JSON")
    add_connection_options(ls)
    ls.set_defaults(handler=run_list)

    r = commands.add_parser(
        "revoke",
        help="revoke an EK by ID",
        description=REVOKE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "id",
        type=positive_int("an EK ID (a positive number, see `ek list`)"),
        metavar="ID",
        help="the EK's ID, from `attestctl ek list`",
    )
    r.add_argument("--json", action="store_true", help="print the revoked EK (EkOut) as JSON")
    add_connection_options(r)
    r.set_defaults(handler=run_revoke)


def _spki(key: PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_key(key: object, path: str) -> PublicKey:
    """An EK is RSA or EC on a curve TPMs use: anything else is a wrong file, not an EK."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from attest.verify.tpmstructs import CURVES

    if isinstance(key, rsa.RSAPublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and any(key.curve.name == c.name for c in CURVES.values()):
        return key
    raise UsageError(f"{path}: holds a {type(key).__name__.lstrip('_')}, not an RSA or NIST-curve EC key")


def load_ek_public(data: bytes, path: str) -> PublicKey:
    """The EK public key from PEM or DER SubjectPublicKeyInfo, or a TPM2B_PUBLIC."""
    from cryptography.hazmat.primitives import serialization

    from attest.errors import ParseError
    from attest.reasons import Reason
    from attest.verify.tpmstructs import parse_public

    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            return _check_key(serialization.load_pem_public_key(data), path)
        except ValueError as e:
            raise UsageError(f"{path}: not a PEM public key ({e})") from None
    # A TPM2B_PUBLIC starts with its 16-bit size, far below the 0x30xx a DER SEQUENCE would mean.
    if data[:1] == b"\x30":
        try:
            return _check_key(serialization.load_der_public_key(data), path)
        except ValueError as e:
            raise UsageError(f"{path}: not a DER SubjectPublicKeyInfo ({e})") from None
    try:
        return _check_key(parse_public(data, Reason.EK_MALFORMED).public_key(), path)
    except ParseError as e:
        raise UsageError(f"{path}: not a PEM/DER public key or TPM2B_PUBLIC ({e.message})") from None
    except ValueError as e:  # a template (empty unique) or a point off the curve
        raise UsageError(f"{path}: the TPM2B_PUBLIC holds no usable key ({e})") from None


def run_enroll(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from attest.cli.admin_client import open_client
    from attest.verify.ekcert import load_ek_certificate
    from attest.wire import EkEnrollRequest, valid_node_name

    if not valid_node_name(args.node):
        raise UsageError(f"--node {args.node!r}: not a Kubernetes node name (lowercase DNS-1123 subdomain)")
    if args.ek_cert:
        cert, _ = load_ek_certificate(read_file(args.ek_cert))
        key = _check_key(cert.public_key(), args.ek_cert)
        # Re-encoded from the parsed certificate: NV padding after the DER is not sent.
        request = EkEnrollRequest(
            node=args.node, ek_certificate=cert.public_bytes(serialization.Encoding.DER)
        )
    else:
        key = load_ek_public(read_file(args.ek_pub), args.ek_pub)
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        request = EkEnrollRequest(node=args.node, ek_public_pem=pem.decode("ascii"))
    fingerprint = hashlib.sha256(_spki(key)).hexdigest()
    with open_client(args) as client:
        ek = client.enroll_ek(request)
    if ek.fingerprint != fingerprint:
        # The verifier computes its own; a different one is not the key the operator vouched for.
        raise CommandError(
            f"the verifier recorded EK {ek.id} with fingerprint {ek.fingerprint}, not {fingerprint}: "
            "revoke it and investigate"
        )
    if args.json:
        print_json(ek.model_dump(mode="json"))
        return EXIT_OK
    print(f"enrolled EK {ek.id} for node {ek.node}")
    print(f"fingerprint sha256:{ek.fingerprint}")
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    from attest.cli.admin_client import open_client

    with open_client(args) as client:
        eks = client.list_eks()
    if args.json:
        print_json([ek.model_dump(mode="json") for ek in eks])
        return EXIT_OK
    if not eks:
        print("no EKs enrolled")
        return EXIT_OK
    rows = [
        [
            str(ek.id),
            ek.node,
            ek.fingerprint[:16],
            ek.source,
            describe_time(ek.created_at),
            describe_time(ek.revoked_at),
        ]
        for ek in sorted(eks, key=lambda ek: ek.id)
    ]
    print_table(["ID", "NODE", "FINGERPRINT", "SOURCE", "CREATED", "REVOKED"], rows)
    return EXIT_OK


def run_revoke(args: argparse.Namespace) -> int:
    from attest.cli.admin_client import open_client

    with open_client(args) as client:
        ek = client.revoke_ek(args.id)
    if args.json:
        print_json(ek.model_dump(mode="json"))
    else:
        print(
            f"revoked EK {ek.id} of node {ek.node} (sha256:{ek.fingerprint}) {describe_time(ek.revoked_at)}"
        )
    return EXIT_OK
