"""attest-agent: the node side of attestation."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from attest import __version__
from attest.cli._common import (
    EXIT_OK,
    EXIT_UNTRUSTED,
    EXIT_USAGE,
    ArgumentParser,
    hex_nonce,
    pcr_selection,
    print_json,
    run,
)
from attest.errors import UsageError
from attest.pcrselect import PcrSelection

if TYPE_CHECKING:
    from attest.agent.daemon import AgentConfig, EventLog
    from attest.wire import ReasonOut

DESCRIPTION = """\
The node agent. It reads the TPM's endorsement key certificate, keeps an attestation key
(AK) in its state directory, and answers a verifier's challenges with TPM quotes and logs.

TCTI strings are tpm2-tools': device:/dev/tpmrm0 (default), swtpm:path=/run/swtpm.sock,
mssim:host=localhost,port=2321.
"""

ENV_PREFIX = "ATTEST_AGENT_"
QUOTE_REFUSED = 422  # the verifier's answer to evidence that failed before a verdict

DAEMON_DESCRIPTION = """\
Attest this node to a verifier: enroll the TPM if the verifier does not know it yet, then
answer the verifier's challenges with TPM quotes, the firmware event log and the IMA list.

Enrollment (once, and again when the verifier or the TPM has forgotten it): the agent sends
its EK certificate and a new attestation key (AK, kept in --state-dir); the verifier answers
with a credential that only this TPM can open (TPM2_ActivateCredential), which proves the
AK lives next to that EK. A round: challenge (nonce + PCR selection) -> quote -> evidence ->
verdict. The IMA list goes incrementally, from the entry the verifier asks for, and whole
after a reboot.
"""

RUN_EPILOG = """\
Failures never stop the daemon: every failed round (verifier unreachable, TLS error, 5xx,
TPM error) is retried after 1 s, 2 s, 4 s ... up to --max-backoff, with jitter, and no
sooner than a Retry-After the verifier sends. SIGTERM or SIGINT ends it with exit code 0.

Logs go to stderr, one line per event (logfmt, or JSON with --log-format json).

Every option has an environment variable: ATTEST_AGENT_ and the option name in capitals with
underscores (--ca-cert -> ATTEST_AGENT_CA_CERT). A command-line option wins.

example:
  attest-agent run --verifier https://attest.example:8443 --ca-cert /etc/attest/ca.crt
"""

ONCE_EPILOG = """\
Exit codes: 0 trusted; 1 appraised and untrusted (the reasons are printed); 2 the verifier
could not be reached or refused, the TPM failed, or the command line is wrong.

example:
  attest-agent once --verifier https://attest.example:8443 --ca-cert ca.crt --node worker-1
"""

QUOTE_EPILOG = """\
The files are the ones tpm2-tools uses, so the quote can be checked independently:
  tpm2_checkquote -u DIR/ak.pub -m DIR/quote.msg -s DIR/quote.sig -f DIR/pcrs.bin -q NONCE
or offline with this project's verifier:
  attestctl verify --ak DIR/ak.pub --quote DIR/quote.msg --sig DIR/quote.sig --pcrs DIR/pcrs.bin --nonce NONCE
"""


MEASURE_DESCRIPTION = """\
Measure a container that is starting: an OCI runtime hook. Reads the container's OCI state
(JSON, as runtimes pass it to hooks) from stdin, takes the pod, container and image from the
annotations CRI-O or containerd put there, appends one record to the container log and extends
PCR 23 with it, under a lock shared by every concurrent hook. The verifier replays the log
against the quoted PCR 23 and judges every image by its policy.
"""

MEASURE_EPILOG = """\
Run it at the createRuntime stage: on the host, before the container's process starts. A
hook that fails stops the container from starting, which is intended: a container that could
not be measured does not run. Exit codes: 0 measured; 2 bad input, or the log or the TPM
failed (a one-line error on stderr).

CRI-O, /etc/containers/oci/hooks.d/attest.json (containerd: the same file through the NRI
hook-injector plugin; docs/containers.md):
  {"version": "1.0.0",
   "hook": {"path": "/usr/local/bin/attest-agent",
            "args": ["attest-agent", "measure-container"], "timeout": 30},
   "when": {"always": true}, "stages": ["createRuntime"]}
"""


def _env(option: str, default: str | None = None) -> str | None:
    """The environment's value for --option (ATTEST_AGENT_OPTION), else `default`."""
    return os.environ.get(ENV_PREFIX + option.lstrip("-").upper().replace("-", "_"), default)


def _one_of(*choices: str) -> Callable[[str], str]:
    # A type rather than `choices=`: argparse checks choices on the command line only, and the
    # default may come from the environment.
    def check(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return check


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 86400 * 7:
        raise argparse.ArgumentTypeError(f"{text} seconds is out of range")
    return value


def _add_tpm_options(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--tcti",
        default=_env("--tcti", "device:/dev/tpmrm0"),
        help="how to reach the TPM (default: %(default)s)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        default=_env("--state-dir", "/var/lib/attest-agent"),
        help="where the AK blob is kept across restarts (default: %(default)s)",
    )
    p.add_argument(
        "--ak-alg",
        type=_one_of("ecc", "rsa"),
        default=_env("--ak-alg", "ecc"),
        metavar="{ecc,rsa}",
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


def cmd_measure_container(args: argparse.Namespace) -> int:
    from attest.agent.measure import (
        MAX_STATE,
        ContainerLogError,
        OciStateError,
        measure_container,
        parse_oci_state,
    )

    try:
        if args.state_file == "-":
            data = sys.stdin.buffer.read(MAX_STATE + 1)
        else:
            with open(args.state_file, "rb") as f:
                data = f.read(MAX_STATE + 1)
        if len(data) > MAX_STATE:
            raise OciStateError(f"the OCI state is larger than {MAX_STATE} bytes")
        record = parse_oci_state(data)
        done = measure_container(record, args.container_log, args.tcti)
    except (OciStateError, ContainerLogError) as e:
        raise UsageError(str(e)) from None
    for note in done.reconciliation.notes():
        print(f"attest-agent: {note}", file=sys.stderr)
    return EXIT_OK


def _add_daemon_options(p: argparse.ArgumentParser) -> None:
    from attest.agent.logs import DEFAULT_BOOT_ID, DEFAULT_EVENTLOG, DEFAULT_IMA
    from attest.agent.measure import DEFAULT_CONTAINER_LOG

    verifier = _env("--verifier")
    ca_cert = _env("--ca-cert")
    conn = p.add_argument_group("verifier")
    conn.add_argument(
        "--verifier",
        metavar="URL",
        default=verifier,
        required=verifier is None,
        help="the verifier's base URL, https://HOST[:PORT]",
    )
    conn.add_argument(
        "--ca-cert",
        metavar="FILE",
        type=Path,
        default=ca_cert,
        required=ca_cert is None,
        help="PEM CA certificate the verifier's TLS certificate must chain to; the only CA "
        "trusted (verification cannot be turned off)",
    )
    conn.add_argument(
        "--node",
        metavar="NAME",
        default=_env("--node"),
        help="this node's Kubernetes name (default: the host name, in lower case)",
    )
    conn.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=_env("--timeout", "30"),
        help="limit on each request to the verifier (default: %(default)s)",
    )
    tpm = p.add_argument_group("TPM")
    _add_tpm_options(tpm)
    tpm.add_argument(
        "--ek-kind",
        metavar="KIND",
        default=_env("--ek-kind"),
        help="which EK to enroll: EK-RSA2048, EK-ECC256, EK-HIGH-RSA2048, EK-HIGH-ECC256 or "
        "EK-HIGH-ECC384 (default: EK-RSA2048 when certified, else the first certified one)",
    )
    tpm.add_argument(
        "--tpm-timeout",
        metavar="SECONDS",
        type=_seconds,
        default=_env("--tpm-timeout", "120"),
        help="limit on each burst of TPM work (opening the TPM, a quote, an EK read); a TPM that "
        "does not answer in time fails the round (default: %(default)s)",
    )
    logs = p.add_argument_group("node logs")
    logs.add_argument(
        "--eventlog",
        metavar="PATH",
        type=Path,
        default=_env("--eventlog", str(DEFAULT_EVENTLOG)),
        help="the TCG event log (default: %(default)s); absent: none is sent",
    )
    logs.add_argument(
        "--ima",
        metavar="PATH",
        type=Path,
        default=_env("--ima", str(DEFAULT_IMA)),
        help="the IMA measurement list, binary or ASCII (default: %(default)s); absent: none is sent",
    )
    logs.add_argument(
        "--container-log",
        metavar="PATH",
        type=Path,
        default=_env("--container-log", str(DEFAULT_CONTAINER_LOG)),
        help="the container launch log measure-container writes (default: %(default)s); absent: none is sent",
    )
    logs.add_argument(
        "--bind-key",
        metavar="FILE",
        type=Path,
        action="append",
        # ATTEST_AGENT_BIND_KEY: comma-separated. The flag, when given, replaces the variable.
        default=None,
        help="a PEM key, certificate or CSR whose public key each challenge binds, so the verifier "
        "approves a kubelet CSR for it (repeatable; read every round, missing files skipped): "
        "/var/lib/kubelet/pki/kubelet-client.key.tmp while the kubelet bootstraps, "
        "/var/lib/kubelet/pki/kubelet-client-current.pem after (docs/kubernetes.md)",
    )
    logs.add_argument(
        "--boot-id-file",
        metavar="PATH",
        type=Path,
        default=_env("--boot-id-file", str(DEFAULT_BOOT_ID)),
        help="the kernel's boot id, to notice reboots (default: %(default)s)",
    )
    out = p.add_argument_group("agent logs")
    out.add_argument(
        "--log-format",
        type=_one_of("text", "json"),
        default=_env("--log-format", "text"),
        metavar="{text,json}",
        help="text: key=value per line; json: one JSON object per line (default: %(default)s)",
    )
    out.add_argument(
        "--log-level",
        type=_one_of("debug", "info", "warning", "error"),
        default=_env("--log-level", "info"),
        metavar="LEVEL",
        help="debug, info, warning or error (default: %(default)s)",
    )


def _config(args: argparse.Namespace) -> tuple[AgentConfig, EventLog]:
    from attest.agent.client import check_verifier_url
    from attest.agent.daemon import DEFAULT_INTERVAL, DEFAULT_MAX_BACKOFF, AgentConfig, make_event_log
    from attest.tpm.ek import EK_CERT_INDICES
    from attest.wire import valid_node_name

    node = args.node if args.node is not None else socket.gethostname().lower()
    if not valid_node_name(node):
        where = "--node" if args.node is not None else f"the host name {node!r}"
        raise UsageError(f"{where}: not a Kubernetes node name (lower-case DNS-1123 subdomain); pass --node")
    if args.ek_kind is not None and args.ek_kind not in EK_CERT_INDICES:
        raise UsageError(f"--ek-kind {args.ek_kind!r}: one of {', '.join(EK_CERT_INDICES)}")
    config = AgentConfig(
        verifier=check_verifier_url(args.verifier),
        ca_cert=args.ca_cert,
        node=node,
        tcti=args.tcti,
        state_dir=args.state_dir,
        ak_alg=args.ak_alg,
        ek_kind=args.ek_kind,
        eventlog=args.eventlog,
        ima=args.ima,
        boot_id_file=args.boot_id_file,
        container_log=args.container_log,
        bind_keys=tuple(args.bind_key or (Path(p) for p in (_env("--bind-key") or "").split(",") if p)),
        timeout=args.timeout,
        tpm_timeout=args.tpm_timeout,
        interval=getattr(args, "interval", DEFAULT_INTERVAL),
        max_backoff=getattr(args, "max_backoff", DEFAULT_MAX_BACKOFF),
    )
    return config, make_event_log(args.log_format, args.log_level)


def cmd_run(args: argparse.Namespace) -> int:
    from attest.agent.client import tls_context
    from attest.agent.daemon import run_daemon

    config, log = _config(args)
    tls_context(config.ca_cert)  # a missing CA is a configuration error, not a round to retry
    return run_daemon(config, log)


def _print_untrusted(node: str, reasons: Sequence[ReasonOut]) -> None:
    print(f"{node}: untrusted")
    for r in reasons:
        where = f" [{r.rule}]" if r.rule else ""
        print(f"  {r.code}{where}: {r.message}")


def cmd_once(args: argparse.Namespace) -> int:
    from attest.agent.client import VerifierError, VerifierRejected
    from attest.agent.daemon import attest_once, reasons_json
    from attest.agent.logs import LogError
    from attest.agent.measure import ContainerLogError

    config, log = _config(args)
    try:
        verdict = attest_once(config, log)
    except VerifierRejected as e:
        if e.status != QUOTE_REFUSED or not e.reasons:
            print(f"attest-agent: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        # The evidence failed its checks before a verdict could be stored: as untrusted as it gets.
        if args.json:
            print_json({"node": config.node, "trusted": False, "reasons": reasons_json(e.reasons)})
        else:
            _print_untrusted(config.node, e.reasons)
        return EXIT_UNTRUSTED
    except (VerifierError, LogError, ContainerLogError) as e:
        print(f"attest-agent: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print_json(verdict.model_dump(mode="json"))
    elif verdict.trusted:
        print(f"{config.node}: trusted until {verdict.expires_at}")
    else:
        _print_untrusted(config.node, verdict.reasons)
    return EXIT_OK if verdict.trusted else EXIT_UNTRUSTED


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
    q.add_argument(
        "--nonce", type=hex_nonce, required=True, metavar="HEX", help="the verifier's challenge, hex"
    )
    q.add_argument(
        "--pcrs",
        type=pcr_selection,
        default=PcrSelection.parse("sha256:0-9"),
        metavar="SEL",
        help="PCR selection in tpm2-tools syntax (default: sha256:0-9)",
    )
    q.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the four files")
    q.set_defaults(handler=cmd_quote)

    r = sub.add_parser(
        "run",
        help="the daemon: enroll if needed, then attest on an interval",
        description=DAEMON_DESCRIPTION,
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_daemon_options(r)
    timing = r.add_argument_group("timing")
    timing.add_argument(
        "--interval",
        metavar="SECONDS",
        type=_seconds,
        default=_env("--interval", "60"),
        help="time between rounds, +-10%% jitter (default: %(default)s)",
    )
    timing.add_argument(
        "--max-backoff",
        metavar="SECONDS",
        type=_seconds,
        default=_env("--max-backoff", "300"),
        help="longest wait between retries after failures (default: %(default)s)",
    )
    r.set_defaults(handler=cmd_run)

    o = sub.add_parser(
        "once",
        help="enroll if needed, attest once; exit 0 only when trusted",
        description=DAEMON_DESCRIPTION,
        epilog=ONCE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_daemon_options(o)
    o.add_argument("--json", action="store_true", help="print the verdict as JSON on stdout")
    o.set_defaults(handler=cmd_once)

    from attest.agent.measure import DEFAULT_CONTAINER_LOG

    m = sub.add_parser(
        "measure-container",
        help="OCI hook: record a starting container in the container log and PCR 23",
        description=MEASURE_DESCRIPTION,
        epilog=MEASURE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument(
        "--tcti",
        default=_env("--tcti", "device:/dev/tpmrm0"),
        help="how to reach the TPM (default: %(default)s)",
    )
    m.add_argument(
        "--container-log",
        metavar="PATH",
        type=Path,
        default=_env("--container-log", str(DEFAULT_CONTAINER_LOG)),
        help="the container log; keep it where a reboot empties it, as it empties PCR 23 "
        "(default: %(default)s)",
    )
    m.add_argument(
        "--state-file",
        metavar="FILE",
        default="-",
        help="read the OCI state from FILE instead of stdin (-, the default, as hooks are run)",
    )
    m.set_defaults(handler=cmd_measure_container)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run("attest-agent", build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
