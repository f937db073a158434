"""attest-verifier: the verifier service's command line (`attest-verifier serve`)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Final

from attest import __version__
from attest.errors import UsageError
from webhook.config import CONFIG_ENV, ENV_PREFIX, OPTIONS, Settings, default_text, load_settings
from webhook.middleware import RequestIdFilter
from webhook.tls import ServerTls

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
GRACEFUL_SHUTDOWN_SECONDS: Final = 10
# Net container allocations between young-generation collections (CPython's default: 700): a
# tenth as many collections per request; with the heap frozen, the older ones stay short too.
GC_GEN0_THRESHOLD: Final = 7000
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

log = logging.getLogger("attest-verifier")

DESCRIPTION = f"""\
The attestation verifier: enrolls nodes' TPMs, hands out challenges, appraises the evidence
agents send against the reference policy, and keeps every node's verdict.

Every option can also be set in a YAML file (--config, or {CONFIG_ENV}) with the option's
name as key (tls_cert: /etc/attest/tls.crt), or in the environment as {ENV_PREFIX}<NAME>
(e.g. {ENV_PREFIX}NONCE_TTL=30; lists comma-separated). Flags override the environment,
which overrides the file.

Serving is HTTPS only (TLS 1.2 or later; in 1.2 ECDHE with AES-GCM or ChaCha20-Poly1305):
--tls-cert and --tls-key are required. A renewed certificate and key written to those paths
are served from the next connection on, without a restart.

Endpoints: the agent API under /v1 (enroll, activate, challenge, evidence), the admin API
under /v1/admin (bearer token from --admin-token-file; disabled without one), /healthz,
/readyz (the database answers), /metrics (Prometheus). docs/verifier.md has the details.

In a cluster (or with --kubeconfig) it also approves kubelet CSRs for attested nodes only, and
keeps every Node's node-restriction.kubernetes.io/attested label and unverified taint in step
with its verdict; replicas elect one leader for that through a Lease. docs/kubernetes.md.

Exit status: 0 after a clean shutdown (SIGTERM or SIGINT), 1 when serving failed,
2 for a bad configuration (one line on stderr says what and where).

Example:
  attest-verifier serve --tls-cert tls.crt --tls-key tls.key \\
      --database sqlite:////var/lib/attest-verifier/verifier.db \\
      --ek-roots /etc/attest/ek-roots/ --admin-token-file /etc/attest/admin-token
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attest-verifier",
        description="TPM 2.0 node attestation verifier service.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="serve the verifier API over HTTPS",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", metavar="FILE", help=f"YAML configuration file (or {CONFIG_ENV})")
    for option in OPTIONS:
        text = f"{option.help} [{option.env}; default: {default_text(option.key)}]"
        if option.boolean:
            serve.add_argument(option.flag, dest=option.key, action=argparse.BooleanOptionalAction, help=text)
        else:
            action = "append" if option.multiple else "store"
            serve.add_argument(option.flag, dest=option.key, action=action, metavar=option.metavar, help=text)
    return parser


def tls_context(settings: Settings) -> ServerTls:
    """The server's TLS (webhook.tls): the configured pair, renewed in place when its files change."""
    if settings.tls_cert is None or settings.tls_key is None:
        raise UsageError("--tls-cert and --tls-key are required: the verifier never serves plain HTTP")
    return ServerTls(settings.tls_cert, settings.tls_key)


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _freeze_heap() -> None:
    """Move everything built so far (modules, the app, its routes and models: hundreds of
    thousands of objects that live as long as the process) out of the collector's generations,
    so that collections triggered by requests only traverse what requests made. Without it each
    oldest-generation collection walks the whole heap holding the GIL, and those were the
    admission p99.9 (docs/admission.md)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def serve(settings: Settings) -> int:
    import uvicorn

    from attest.store.api import StoreError
    from attest.store.sql import SqlStore
    from webhook.app import create_app
    from webhook.k8s.client import controllers_enabled, load_config

    tls = tls_context(settings)
    kube = (
        load_config(settings.kubeconfig)
        if controllers_enabled(settings.controllers, settings.kubeconfig)
        else None
    )
    try:
        store = SqlStore.open(settings.database)
    except ValueError as e:
        raise UsageError(f"--database: {e}") from None
    except StoreError as e:
        log.error("cannot open the database: %s", e.message)
        return EXIT_FAILURE
    try:
        host, port = settings.listen
        config = uvicorn.Config(
            create_app(settings, store, kube=kube),
            host=host,
            port=port,
            # The verifier extra's C event loop and HTTP parser, named so that a missing one
            # fails at start instead of silently serving slower (docs/admission.md).
            loop="uvloop",
            http="httptools",
            ssl_context_factory=lambda _config, _default: tls.context,
            log_config=None,  # ours, with request ids
            log_level=settings.log_level,
            proxy_headers=False,  # client addresses from the connection, never from a header
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            # The controllers start and stop with the application (webhook.k8s.controllers).
            lifespan="on",
        )
        server = uvicorn.Server(config)
        _freeze_heap()
        log.info(
            "serving https://%s:%d (database %s, Kubernetes controllers %s, TLS certificate %s)",
            host,
            port,
            settings.database.split("://")[0],
            "on" if kube else "off",
            tls.describe(),
        )
        # uvicorn turns SIGTERM and SIGINT into a graceful shutdown (in-flight requests finish),
        # then raises the signal again for the handler it found. That handler is this no-op, so
        # the store is closed and the exit status says the shutdown was clean.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _sig, _frame: None)
        server.run()
        return EXIT_OK if server.started else EXIT_FAILURE
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging("info")
    try:
        settings = load_settings(vars(args), os.environ, args.config)
        _configure_logging(settings.log_level)
        return serve(settings)
    except UsageError as e:
        print(f"attest-verifier: {e}", file=sys.stderr)
        return EXIT_USAGE
