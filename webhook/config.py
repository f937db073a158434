"""The verifier's configuration: one option table read from a YAML file, the environment
(ATTEST_VERIFIER_*) and the command line, later sources overriding earlier ones.

Everything is checked and loaded here, before anything is served: the EK roots are parsed, the
admin token is read, the PCR selection is parsed. A bad value is a one-line UsageError that
names its source, so `attest-verifier serve` can exit 2 with it instead of failing later
under load.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from cryptography import x509

from attest.errors import AttestError, UsageError
from attest.pcrselect import PcrSelection
from attest.verify.ekcert import load_ca_certificates
from attest.wire import MAX_EVIDENCE_BODY

log = logging.getLogger(__name__)

ENV_PREFIX: Final = "ATTEST_VERIFIER_"
CONFIG_ENV: Final = ENV_PREFIX + "CONFIG"
DEFAULT_DATABASE: Final = "sqlite:////var/lib/attest-verifier/verifier.db"
MiB: Final = 1024 * 1024
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
POLICY_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# A bearer token is one line of printable ASCII; anything else in the file is a mistake.
_TOKEN: Final = re.compile(r"^[\x21-\x7e]{16,4096}$")
_CERT_SUFFIXES: Final = (".pem", ".crt", ".cer", ".der")
_MAX_CONFIG_FILE: Final = 1 * MiB
FRESHNESS_EXPIRY: Final = "expiry"
# The most a revocation or a verdict from another replica may take to judge admission (seconds).
ADMISSION_CACHE_MAX: Final = 1.0
_NAMESPACE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A Lease name is a DNS-1123 subdomain.
_LEASE_NAME: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class Settings:
    """The checked configuration. Tests build one directly; the CLI through `load_settings`."""

    listen: tuple[str, int] = ("0.0.0.0", 8443)  # noqa: S104 - a cluster service listens on its pod IP
    tls_cert: Path | None = None
    tls_key: Path | None = None
    database: str = DEFAULT_DATABASE
    ek_roots: tuple[x509.Certificate, ...] = ()
    ek_intermediates: tuple[x509.Certificate, ...] = ()
    admin_token: str | None = field(default=None, repr=False)  # None: the admin API is disabled
    policy_name: str = "default"
    require_policy: bool = True
    pcrs: PcrSelection = field(default_factory=lambda: PcrSelection.parse("sha256:0-10"))
    nonce_ttl: dt.timedelta = dt.timedelta(seconds=60)
    verdict_ttl: dt.timedelta = dt.timedelta(seconds=300)
    enrollment_ttl: dt.timedelta = dt.timedelta(seconds=120)
    max_evidence_bytes: int = MAX_EVIDENCE_BODY
    max_request_bytes: int = 1 * MiB
    log_level: str = "info"
    # None: admission takes a trusted verdict until it expires (verdict_ttl); else also only this long.
    admission_freshness: dt.timedelta | None = None
    admission_exempt_namespaces: tuple[str, ...] = ("kube-system", "attest-system")
    # How old admission's in-memory node view may be (webhook.nodestate); 0: every decision reads the store.
    admission_cache_seconds: float = 1.0
    # Kubernetes controllers (docs/kubernetes.md). controllers None: on when running in a cluster
    # or given a kubeconfig (webhook.k8s.client.controllers_enabled).
    kubeconfig: Path | None = None
    controllers: bool | None = None
    csr_grace: dt.timedelta = dt.timedelta(minutes=10)
    node_taint_noexecute: bool = False
    lease_name: str = "attest-verifier"
    # Overload (docs/verifier.md "Overload"); 0 turns each off.
    max_agent_concurrency: int = 4
    agent_queue: int = 32
    node_rate: float = 0.2
    node_burst: int = 10


@dataclass(frozen=True)
class Option:
    """One setting as the three sources spell it: key `nonce_ttl`, flag `--nonce-ttl`,
    variable `ATTEST_VERIFIER_NONCE_TTL`. `multiple`: a list (flag repeated, comma-separated
    in the environment, a YAML list in the file)."""

    key: str
    metavar: str
    help: str
    multiple: bool = False
    boolean: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


OPTIONS: Final = (
    Option("listen", "HOST:PORT", "address and port to serve HTTPS on ([::]:8443 for IPv6)"),
    Option("tls_cert", "FILE", "PEM certificate (chain) the server presents; required"),
    Option("tls_key", "FILE", "PEM private key of --tls-cert; required"),
    Option("database", "URL", "SQLAlchemy URL of the store: sqlite:////PATH or postgresql://..."),
    Option(
        "ek_roots",
        "PATH",
        "PEM/DER file, or directory of them, with the TPM manufacturers' root CAs an EK "
        "certificate must chain to (repeatable)",
        multiple=True,
    ),
    Option(
        "ek_intermediates",
        "PATH",
        "intermediate CAs that may complete an EK certificate's chain; never trusted alone (repeatable)",
        multiple=True,
    ),
    Option(
        "admin_token_file",
        "FILE",
        "file holding the admin API's bearer token; without it the admin API refuses everyone",
    ),
    Option("policy_name", "NAME", "the reference policy evidence is appraised against (latest version)"),
    Option(
        "require_policy",
        "BOOL",
        "without the named policy, verdicts are untrusted (policy_missing); "
        "--no-require-policy appraises integrity only",
        boolean=True,
    ),
    Option("pcrs", "SEL", "PCRs every challenge asks for, tpm2-tools syntax; the policy's are added"),
    Option("nonce_ttl", "SECONDS", "how long a challenge's nonce may be answered"),
    Option("verdict_ttl", "SECONDS", "how long a trusted verdict stays fresh"),
    Option("enrollment_ttl", "SECONDS", "how long a credential challenge may be activated"),
    Option("max_evidence_bytes", "BYTES", "largest evidence request body accepted"),
    Option("max_request_bytes", "BYTES", "largest request body accepted on every other route"),
    Option("log_level", "LEVEL", f"one of {', '.join(LOG_LEVELS)}"),
    Option(
        "admission_freshness",
        "SECONDS",
        f"'{FRESHNESS_EXPIRY}': admission takes a trusted verdict until it expires (--verdict-ttl); "
        "SECONDS: only while it is also younger than that",
    ),
    Option(
        "admission_exempt_namespaces",
        "NAMESPACE",
        "namespaces whose pods admission does not judge, as the webhook's namespaceSelector "
        "exempts them (repeatable)",
        multiple=True,
    ),
    Option(
        "admission_cache_seconds",
        "SECONDS",
        f"admission decides from an in-memory view of the nodes at most this old (at most "
        f"{ADMISSION_CACHE_MAX:g}); this process's own writes are in it at once; 0: read the database "
        "for every decision",
    ),
    Option(
        "kubeconfig",
        "FILE",
        "kubeconfig the controllers use; without it, the pod's service account (in a cluster)",
    ),
    Option(
        "controllers",
        "BOOL",
        "run the kubelet CSR approver and the node state controller (--no-controllers: serve only)",
        boolean=True,
    ),
    Option(
        "csr_grace",
        "SECONDS",
        "how long a pending kubelet CSR may wait for a fresh trusted verdict bound to its key "
        "before it is denied",
    ),
    Option(
        "node_taint_noexecute",
        "BOOL",
        "also taint unattested nodes unverified:NoExecute, evicting pods that do not tolerate it",
        boolean=True,
    ),
    Option("lease_name", "NAME", "the Lease replicas elect the controllers' leader with, in their namespace"),
    Option(
        "max_agent_concurrency",
        "N",
        "agent API requests served at once, on threads of their own; 0: no limit",
    ),
    Option(
        "agent_queue",
        "N",
        "agent API requests that may wait for one of those; beyond, 503 overloaded with Retry-After",
    ),
    Option(
        "node_rate",
        "PER_SECOND",
        "agent API requests a second per node and client address (enrollment: per address); "
        "beyond, 429 rate_limited with Retry-After; 0: no limit",
    ),
    Option("node_burst", "N", "agent API requests a node may make at once before --node-rate applies"),
)
_BY_KEY: Final = {o.key: o for o in OPTIONS}


def default_text(key: str) -> str:
    """The default of an option as an operator would write it, for --help and the docs."""
    if key in ("ek_roots", "ek_intermediates", "admin_token_file", "tls_cert", "tls_key"):
        return "none"
    if key == "kubeconfig":
        return "in-cluster"
    if key == "controllers":
        return "on in a cluster or with --kubeconfig"
    value = getattr(Settings(), key)
    if key == "listen":
        return _join_listen(value)
    if isinstance(value, PcrSelection):
        return compact_selection(value)
    if isinstance(value, dt.timedelta):
        return f"{value.total_seconds():g}"
    if isinstance(value, bool):
        return str(value).lower()
    if key == "admission_freshness" and value is None:
        return FRESHNESS_EXPIRY
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def compact_selection(selection: PcrSelection) -> str:
    """ "sha256:0-10" rather than "sha256:0,1,...,10": runs of PCRs as ranges."""
    parts = []
    for bank, pcrs in selection.banks:
        runs: list[list[int]] = []
        for p in pcrs:
            if runs and p == runs[-1][-1] + 1:
                runs[-1].append(p)
            else:
                runs.append([p])
        parts.append(bank + ":" + ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs))
    return "+".join(parts)


def _join_listen(listen: tuple[str, int]) -> str:
    host, port = listen
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- sources -------------------------------------------------------------------------------

Sourced = dict[str, tuple[Any, str]]  # key -> (str | bool | list[str], where it was set)


def from_file(path: str) -> Sourced:
    """The YAML config file: a mapping of option keys (dashes or underscores) to values."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_CONFIG_FILE + 1)
    except OSError as e:
        raise UsageError(f"config file {path}: {e.strerror or e}") from None
    if len(data) > _MAX_CONFIG_FILE:
        raise UsageError(f"config file {path}: larger than {_MAX_CONFIG_FILE} bytes")
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as e:
        raise UsageError(f"config file {path}: not YAML: {str(e).splitlines()[0]}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise UsageError(f"config file {path}: must be a mapping of option: value")
    out: Sourced = {}
    for raw_key, value in doc.items():
        key = str(raw_key).replace("-", "_")
        option = _BY_KEY.get(key)
        if option is None:
            raise UsageError(f"config file {path}: unknown option {raw_key!r}")
        where = f"config file {path}: {raw_key}"
        if option.multiple:
            items = value if isinstance(value, list) else [value]
            out[key] = ([str(v) for v in items], where)
        elif option.boolean:
            out[key] = (value if isinstance(value, bool) else str(value), where)
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            out[key] = (str(value), where)
        else:
            raise UsageError(f"{where}: must be a single value")
    return out


def from_env(env: Mapping[str, str]) -> Sourced:
    out: Sourced = {}
    for option in OPTIONS:
        value = env.get(option.env)
        if value is None:
            continue
        where = f"environment {option.env}"
        out[option.key] = ([v for v in value.split(",") if v] if option.multiple else value, where)
    return out


def from_flags(flags: Mapping[str, Any]) -> Sourced:
    """Parsed argparse values: absent options are None (the parser has no defaults of its own)."""
    return {o.key: (flags[o.key], f"{o.flag}") for o in OPTIONS if flags.get(o.key) not in (None, [])}


def load_settings(
    flags: Mapping[str, Any], env: Mapping[str, str], config_file: str | None = None
) -> Settings:
    """Settings from defaults, then the config file, then the environment, then the flags."""
    merged: Sourced = {}
    path = config_file or env.get(CONFIG_ENV)
    if path:
        merged.update(from_file(path))
    merged.update(from_env(env))
    merged.update(from_flags(flags))
    values: dict[str, Any] = {}
    for key, (value, where) in merged.items():
        try:
            values.update(_PARSERS[key](value))
        except (ValueError, OSError, AttestError) as e:
            raise UsageError(f"{where}: {e}") from None
    return dataclasses.replace(Settings(), **values)


# --- parsing one value -------------------------------------------------------------------


def _listen(value: str) -> dict[str, Any]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{port!r} is not a TCP port")
    return {"listen": (host, int(port))}


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{value}: no such file")
    return path


def _certificates(paths: Sequence[str]) -> tuple[x509.Certificate, ...]:
    """Every certificate in these files, or in the certificate files of these directories."""
    certs: list[x509.Certificate] = []
    for value in paths:
        path = Path(value)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in _CERT_SUFFIXES and p.is_file())
            if not files:
                raise ValueError(f"{value}: no {'/'.join(_CERT_SUFFIXES)} file in this directory")
        elif path.is_file():
            files = [path]
        else:
            raise ValueError(f"{value}: no such file or directory")
        for f in files:
            try:
                certs.extend(load_ca_certificates(f.read_bytes()))
            except AttestError as e:
                raise ValueError(f"{f}: {e.message}") from None
    return tuple(certs)


def read_token(value: str) -> str:
    """The admin bearer token: one line of 16-4096 printable ASCII characters."""
    with open(value, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        raw = f.read(8192)
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if not _TOKEN.match(token):
        raise ValueError(f"{value}: must hold one token of 16-4096 printable ASCII characters")
    if stat.S_IMODE(mode) & 0o077:
        # A warning, not a refusal: Kubernetes mounts secret volumes 0644 unless told otherwise.
        log.warning("admin token file %s is readable by others; make it 0600", value)
    return token


def _seconds(key: str) -> Callable[[str], dict[str, Any]]:
    def parse(value: str) -> dict[str, Any]:
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"{value!r} is not a positive number of seconds")
        return {key: dt.timedelta(seconds=seconds)}

    return parse


def _bytes(key: str) -> Callable[[str], dict[str, Any]]:
    def parse(value: str) -> dict[str, Any]:
        if not value.isdigit() or int(value) <= 0:
            raise ValueError(f"{value!r} is not a positive number of bytes")
        return {key: int(value)}

    return parse


def _count(key: str, minimum: int) -> Callable[[str], dict[str, Any]]:
    def parse(value: str) -> dict[str, Any]:
        if not value.strip().isdigit() or int(value) < minimum:
            raise ValueError(f"{value!r} is not a whole number of at least {minimum}")
        return {key: int(value)}

    return parse


def _rate(key: str) -> Callable[[str], dict[str, Any]]:
    def parse(value: str) -> dict[str, Any]:
        try:
            rate = float(value)
        except ValueError:
            rate = math.nan
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(f"{value!r} is not a number of requests a second (0: no limit)")
        return {key: rate}

    return parse


def _boolean(key: str) -> Callable[[str | bool], dict[str, Any]]:
    def parse(value: str | bool) -> dict[str, Any]:
        if isinstance(value, bool):
            return {key: value}
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return {key: True}
        if text in ("0", "false", "no", "off"):
            return {key: False}
        raise ValueError(f"{value!r} is not true or false")

    return parse


def _policy_name(value: str) -> dict[str, Any]:
    if not re.fullmatch(POLICY_NAME_PATTERN, value):
        raise ValueError(f"{value!r}: letters, digits, '.', '_' and '-', at most 128")
    return {"policy_name": value}


def _pcrs(value: str) -> dict[str, Any]:
    return {"pcrs": PcrSelection.parse(value)}


def _log_level(value: str) -> dict[str, Any]:
    if value.lower() not in LOG_LEVELS:
        raise ValueError(f"{value!r}: one of {', '.join(LOG_LEVELS)}")
    return {"log_level": value.lower()}


def _lease_name(value: str) -> dict[str, Any]:
    if len(value) > 253 or not _LEASE_NAME.match(value):
        raise ValueError(f"{value!r} is not a DNS subdomain name (lowercase letters, digits, '-', '.')")
    return {"lease_name": value}


def _freshness(value: str) -> dict[str, Any]:
    if value.strip().lower() == FRESHNESS_EXPIRY:
        return {"admission_freshness": None}
    try:
        return _seconds("admission_freshness")(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither {FRESHNESS_EXPIRY!r} nor a positive number of seconds"
        ) from None


def _cache_seconds(value: str) -> dict[str, Any]:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= ADMISSION_CACHE_MAX:
        raise ValueError(f"{value!r} is not a number of seconds from 0 to {ADMISSION_CACHE_MAX:g}")
    return {"admission_cache_seconds": seconds}


def _namespaces(values: Sequence[str]) -> dict[str, Any]:
    for value in values:
        if not _NAMESPACE.match(value):
            raise ValueError(f"{value!r} is not a namespace name")
    return {"admission_exempt_namespaces": tuple(dict.fromkeys(values))}


def _database(value: str) -> dict[str, Any]:
    if "://" not in value:
        raise ValueError(f"{value!r} is not a database URL (sqlite:////PATH, postgresql://...)")
    return {"database": value}


_PARSERS: Final[dict[str, Callable[[Any], dict[str, Any]]]] = {
    "listen": _listen,
    "tls_cert": lambda v: {"tls_cert": _existing_file(v)},
    "tls_key": lambda v: {"tls_key": _existing_file(v)},
    "database": _database,
    "ek_roots": lambda v: {"ek_roots": _certificates(v)},
    "ek_intermediates": lambda v: {"ek_intermediates": _certificates(v)},
    "admin_token_file": lambda v: {"admin_token": read_token(v)},
    "policy_name": _policy_name,
    "require_policy": _boolean("require_policy"),
    "pcrs": _pcrs,
    "nonce_ttl": _seconds("nonce_ttl"),
    "verdict_ttl": _seconds("verdict_ttl"),
    "enrollment_ttl": _seconds("enrollment_ttl"),
    "max_evidence_bytes": _bytes("max_evidence_bytes"),
    "max_request_bytes": _bytes("max_request_bytes"),
    "log_level": _log_level,
    "admission_freshness": _freshness,
    "admission_exempt_namespaces": _namespaces,
    "admission_cache_seconds": _cache_seconds,
    "kubeconfig": lambda v: {"kubeconfig": _existing_file(v)},
    "controllers": _boolean("controllers"),
    "csr_grace": _seconds("csr_grace"),
    "node_taint_noexecute": _boolean("node_taint_noexecute"),
    "lease_name": _lease_name,
    "max_agent_concurrency": _count("max_agent_concurrency", 0),
    "agent_queue": _count("agent_queue", 0),
    "node_rate": _rate("node_rate"),
    "node_burst": _count("node_burst", 1),
}
