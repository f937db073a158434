"""attestctl certs: TLS material for the verifier (thin wrapper over attest.pki)."""

from __future__ import annotations

import argparse
from pathlib import Path

from attest.cli._common import EXIT_OK, SubParsers, print_json, show_help

DESCRIPTION = """\
TLS material for the verifier: a private CA that agents, attestctl and the Kubernetes API
server trust, and the certificates it issues.
"""

INIT_DESCRIPTION = """\
Create, in DIR (made 0700 if missing):

  ca.crt       a private CA (EC P-256, valid 10 years)                    0644
  ca.key       its private key                                            0600
  server.crt   the verifier's TLS certificate, signed by the CA: SANs
               from --host and --ip, serverAuth, valid 1 year             0644
  server.key   its private key                                            0600
  admin.token  a bearer token for the admin API (32 random bytes,
               urlsafe base64)                                            0600

Existing files are never overwritten without --force (and then all five are replaced).
--host must list every name clients use: the DNS name agents and operators connect to and,
in Kubernetes, the Service names (NAME.NAMESPACE.svc). Clients check the name against the
SANs only.

Keep ca.key away from the verifier (it needs only server.crt, server.key and the token);
anyone with ca.key can impersonate the verifier to every agent.
"""


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "certs",
        help="make a private CA, the verifier's TLS certificate and an admin token",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(handler=lambda _args: show_help(p))
    commands = p.add_subparsers(title="certs commands", metavar="COMMAND")
    i = commands.add_parser(
        "init",
        help="write ca.crt, ca.key, server.crt, server.key and admin.token into DIR",
        description=INIT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("--dir", required=True, type=Path, metavar="DIR", help="where to write the files")
    i.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name of the verifier (repeatable; at least one --host or --ip)",
    )
    i.add_argument(
        "--ip", action="append", default=[], metavar="IP", help="an IP address of the verifier (repeatable)"
    )
    i.add_argument("--force", action="store_true", help="replace existing files")
    i.add_argument("--json", action="store_true", help="print what was written as JSON")
    i.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    import ipaddress

    from attest.errors import UsageError
    from attest.pki import ADMIN_TOKEN, CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, PkiError, init_verifier_pki

    hosts: list[str] = []
    ips: list[str] = list(args.ip)
    for host in args.host:
        # An address given as --host belongs in an IP SAN: TLS clients never match it as a DNS name.
        try:
            ips.append(str(ipaddress.ip_address(host)))
        except ValueError:
            hosts.append(host)
    if not hosts and not ips:
        raise UsageError("give at least one --host NAME or --ip IP: the names clients connect to")
    try:
        written = init_verifier_pki(args.dir, hosts, ips, force=args.force)
    except PkiError as e:
        raise UsageError(str(e)) from None
    d = args.dir
    if args.json:
        print_json(
            {
                "dir": str(d),
                "files": [{"path": str(w.path), "mode": f"{w.mode:04o}", "what": w.what} for w in written],
                "hosts": hosts,
                "ips": ips,
            }
        )
        return EXIT_OK
    width = max(len(str(w.path)) for w in written)
    for w in written:
        print(f"wrote {w.path!s:<{width}}  {w.mode:04o}  {w.what}")
    url = f"https://{hosts[0] if hosts else _bracket(ips[0])}:8443"
    print(
        f"""
Serve with:
  attest-verifier serve \\
      --tls-cert {d / SERVER_CERT} \\
      --tls-key {d / SERVER_KEY} \\
      --admin-token-file {d / ADMIN_TOKEN}
Operate with:
  export ATTEST_VERIFIER={url}
  export ATTEST_CA_CERT={d / CA_CERT}
  export ATTEST_TOKEN_FILE={d / ADMIN_TOKEN}
  attestctl node list
Agents trust the verifier with:
  attest-agent run --verifier {url} --ca-cert {d / CA_CERT}
(8443 is the verifier's default port; use yours if you changed --listen.)
Move {d / CA_KEY} off the verifier's host once its certificates are issued."""
    )
    return EXIT_OK


def _bracket(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
