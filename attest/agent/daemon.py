"""The agent daemon: enroll once, then answer the verifier's challenges for as long as it runs.

One round: ask for a challenge, quote the PCRs it selects over its nonce, read the event log
and the IMA list (only the entries the verifier has not accepted yet, or all of them after a
reboot), send the evidence, log the verdict. Enrollment happens before the first round, and
again whenever the verifier says it does not know this node's AK or the TPM no longer loads it.

Failure policy: nothing the network, the verifier or the TPM does may stop the daemon. Every
failed round is retried after an exponential backoff with jitter (so a verifier restart does
not bring every node back in the same second), honouring Retry-After. Expected failures are
logged as one line without a traceback; only a bug earns one.

The TPM is opened for each burst of TPM work and closed before talking to the network: a TPM
without a resource manager (swtpm, /dev/tpm0) serves one client at a time, and other tools
on the node must not wait on the verifier's latency. Each burst runs under a deadline
(--tpm-timeout): tpm2-tss waits for a TPM's answer forever, so a hung TPM (or a stopped swtpm)
would otherwise hang the agent for good instead of failing the round.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO, TypeVar

from cryptography.hazmat.primitives import serialization
from tpm2_pytss import TPM2B_PUBLIC

from attest.agent.bindkeys import read_fingerprints
from attest.agent.client import (
    DEFAULT_TIMEOUT,
    NotEnrolled,
    ProtocolError,
    VerifierClient,
    VerifierError,
    VerifierRejected,
    check_verifier_url,
)
from attest.agent.logs import (
    DEFAULT_BOOT_ID,
    DEFAULT_EVENTLOG,
    DEFAULT_IMA,
    ImaReader,
    LogError,
    read_boot_id,
    read_eventlog,
)
from attest.agent.measure import (
    DEFAULT_CONTAINER_LOG,
    READ_LOCK_TIMEOUT,
    ContainerLogError,
    read_container_log,
    reconcile_container_log,
)
from attest.agent.state import (
    DEFAULT_STATE_DIR,
    Enrollment,
    load_boot_id,
    load_usable_ak,
    save_boot_id,
    save_ek_public,
)
from attest.errors import TpmError
from attest.pcrselect import PcrSelection
from attest.reasons import Reason
from attest.tpm import AttestationKey, Tpm, activate_credential, create_ek, quote
from attest.tpm.ek import EkCertificate
from attest.tpm.session import DEFAULT_TCTI
from attest.wire import ActivateRequest, EnrollRequest, Evidence, ReasonOut, VerdictOut

DEFAULT_INTERVAL = 60.0
DEFAULT_MAX_BACKOFF = 300.0
BACKOFF_BASE = 1.0
INTERVAL_JITTER = 0.1  # +-10%: agents started together drift apart instead of arriving together
BACKOFF_JITTER = 0.2
# After SIGTERM, how long a round in progress may take to finish before it is abandoned. TPM
# work takes well under a second; only a network call can hold it longer, and an abandoned
# challenge costs the verifier nothing (nonces expire).
SHUTDOWN_GRACE = 5.0
# How long one burst of TPM work may take. A quote takes well under a second, but creating an
# RSA EK on a slow discrete TPM can take tens of seconds.
DEFAULT_TPM_TIMEOUT = 120.0
_EXPECTED_ERRORS = (VerifierError, TpmError, LogError, ContainerLogError)


def ak_name_hex(public: bytes) -> str:
    """The AK's Name (nameAlg || H(TPMT_PUBLIC)) in hex, as the verifier computes it from the same
    TPM2B_PUBLIC. tpm2_pytss computes it here, not attest.verify.quote.ak_name: that would load
    the verifier's structure parsers and YAML into the agent (2.4 MB of RSS) for one hash."""
    public_area, _ = TPM2B_PUBLIC.unmarshal(public)
    return bytes(public_area.get_name()).hex()


@dataclass(frozen=True)
class AgentConfig:
    verifier: str
    ca_cert: Path
    node: str
    tcti: str = DEFAULT_TCTI
    state_dir: Path = DEFAULT_STATE_DIR
    ak_alg: str = "ecc"
    ek_kind: str | None = None  # None: the preferred EK that has a certificate
    eventlog: Path = DEFAULT_EVENTLOG
    ima: Path = DEFAULT_IMA
    boot_id_file: Path = DEFAULT_BOOT_ID
    container_log: Path = DEFAULT_CONTAINER_LOG
    bind_keys: tuple[Path, ...] = ()  # key files whose fingerprints each challenge binds (bindkeys)
    timeout: float = DEFAULT_TIMEOUT
    interval: float = DEFAULT_INTERVAL
    max_backoff: float = DEFAULT_MAX_BACKOFF
    tpm_timeout: float = DEFAULT_TPM_TIMEOUT


# --- structured logs --------------------------------------------------------------------------


_LOGFMT_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))


def _logfmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        value = json.dumps(value, separators=(",", ":"), default=str)
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n\r\t'):
        return text
    for raw, escaped in _LOGFMT_ESCAPES:
        text = text.replace(raw, escaped)
    return f'"{text}"'


class EventFormatter(logging.Formatter):
    """One line per event: logfmt (`time=... level=info event=verdict trusted=true`) or JSON."""

    def __init__(self, fmt: str = "text") -> None:
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
        doc: dict[str, Any] = {
            "time": when.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            if value is not None:
                doc[key] = value.isoformat() if isinstance(value, dt.datetime) else value
        if record.exc_info:
            doc["traceback"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if self.json:
            return json.dumps(doc, default=str)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in doc.items())


class EventLog:
    """The agent's log: `log.info("verdict", trusted=True)` -> one structured line."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def _emit(self, level: int, event: str, fields: dict[str, Any], exc: bool = False) -> None:
        self.logger.log(level, event, extra={"fields": fields}, exc_info=exc)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, *, exc: bool = False, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields, exc)


def make_event_log(fmt: str = "text", level: str = "info", stream: TextIO | None = None) -> EventLog:
    logger = logging.getLogger("attest.agent")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(EventFormatter(fmt))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return EventLog(logger)


# --- timing -----------------------------------------------------------------------------------


def next_interval(interval: float, rng: random.Random) -> float:
    return interval * rng.uniform(1 - INTERVAL_JITTER, 1 + INTERVAL_JITTER)


def backoff_delay(
    failures: int,
    cap: float,
    rng: random.Random,
    retry_after: float | None = None,
    base: float = BACKOFF_BASE,
) -> float:
    """Seconds to wait after the `failures`-th failure in a row: base doubling up to `cap`,
    +-20%, and never less than a Retry-After the verifier sent (itself capped, so a wrong
    header cannot park the agent for hours)."""
    ceiling = min(cap, base * 2.0 ** min(max(failures - 1, 0), 32))
    delay = ceiling * rng.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap) * rng.uniform(1.0, 1 + BACKOFF_JITTER))
    return delay


# --- the agent --------------------------------------------------------------------------------


class Stopped(Exception):
    """Shutdown was asked for between two steps of a round."""


T = TypeVar("T")


class TpmDeadline:
    """Runs TPM work in a thread of its own and gives up waiting after `timeout` seconds.

    A call blocked in tpm2-tss cannot be interrupted, so a timed-out worker is left behind until
    the TPM answers or its connection breaks; while it is, later calls fail at once rather than
    queueing more threads on a TPM that serves one client at a time."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._stuck: threading.Thread | None = None
        self._stuck_since = 0.0

    def call(self, action: str, work: Callable[[], T]) -> T:
        if self._stuck is not None:
            if self._stuck.is_alive():
                waited = time.monotonic() - self._stuck_since
                raise TpmError(f"{action}: the TPM has not answered a command sent {waited:.0f} s ago")
            self._stuck = None
        outcome: list[T] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                outcome.append(work())
            except BaseException as e:
                failure.append(e)

        worker = threading.Thread(target=run, name="attest-tpm", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            self._stuck, self._stuck_since = worker, time.monotonic() - self.timeout
            raise TpmError(f"{action}: the TPM did not answer within {self.timeout:g} s")
        if failure:
            raise failure[0]
        return outcome[0]


def ek_fingerprint(public_pem: bytes) -> str:
    """SHA-256 of the EK's SubjectPublicKeyInfo: the value an operator enrolls with attestctl."""
    key = serialization.load_pem_public_key(public_pem)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _pcrs_hex(pcrs: dict[str, dict[int, bytes]]) -> dict[str, dict[int, str]]:
    return {bank: {i: v.hex() for i, v in values.items()} for bank, values in pcrs.items()}


def reasons_json(reasons: Sequence[ReasonOut]) -> list[dict[str, Any]]:
    return [r.model_dump(exclude_none=True) for r in reasons]


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        client: VerifierClient,
        log: EventLog,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.log = log
        self.stop = stop if stop is not None else threading.Event()
        self.verifier = check_verifier_url(config.verifier)
        self.ima = ImaReader(config.ima)
        # Checked against the TPM once per process, and again after any TPM failure.
        self._ak: AttestationKey | None = None
        self._container_log_reconciled = False
        self._deadline = TpmDeadline(config.tpm_timeout)

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped

    def _with_tpm(self, action: str, work: Callable[[Tpm], T]) -> T:
        """`work` on a freshly opened TPM, closed afterwards, under the TPM deadline."""

        def opened() -> T:
            with Tpm(self.config.tcti) as tpm:
                return work(tpm)

        return self._deadline.call(action, opened)

    # enrollment

    def ensure_enrolled(self) -> AttestationKey:
        """The AK, enrolled with this verifier under this node name (enrolling if needed)."""
        if self._ak is None:
            status = self._with_tpm(
                "loading the attestation key",
                lambda tpm: load_usable_ak(tpm, self.config.state_dir, self.config.ak_alg),
            )
            if status.replaced_because is not None:
                self.log.error(
                    "ak.replaced",
                    message="the stored attestation key no longer loads in this TPM (was the TPM "
                    "cleared?): created a new one; this node enrolls again",
                    cause=status.replaced_because,
                    state_dir=str(self.config.state_dir),
                )
            elif status.created:
                self.log.info("ak.created", alg=status.ak.alg, state_dir=str(self.config.state_dir))
            self._ak = status.ak
        ak = self._ak
        name = ak_name_hex(ak.public)
        enrolled = Enrollment.load(self.config.state_dir)
        if enrolled is None or not enrolled.matches(self.config.node, self.verifier, name):
            self.enroll(ak, name)
        return ak

    def enroll(self, ak: AttestationKey, name: str) -> None:
        """Credential activation: the verifier encrypts a secret to our EK, bound to our AK's
        name; only this TPM, holding both, can recover it."""
        node = self.config.node

        def read_ek(tpm: Tpm) -> tuple[str, bytes, bytes, EkCertificate | None]:
            with create_ek(tpm, self.config.ek_kind) as ek:
                return ek.kind, ek.public, ek.public_pem, ek.certificate

        kind, ek_public, ek_pem, cert = self._with_tpm("reading the endorsement key", read_ek)
        fingerprint = ek_fingerprint(ek_pem)
        self.log.info(
            "enroll.start",
            node=node,
            verifier=self.verifier,
            ek_kind=kind,
            ek_certificate=cert is not None,
            ek_fingerprint=fingerprint,
            ak_name=name,
        )
        request = EnrollRequest(
            node=node, ek_certificate=cert.der if cert else None, ek_public=ek_public, ak_public=ak.public
        )
        try:
            challenge = self.client.enroll(request)
        except VerifierRejected as e:
            if cert is None and e.code == Reason.EK_NOT_ENROLLED:
                path = save_ek_public(self.config.state_dir, ek_pem)
                self.log.error(
                    "enroll.refused",
                    message="this TPM has no EK certificate, so an operator must vouch for its EK: "
                    f"attestctl ek enroll --node {node} --ek-pub {path} (a copy of that file)",
                    ek_fingerprint=fingerprint,
                    code=e.code,
                )
            raise
        self._check_stop()
        secret = self._with_tpm(
            "activating the credential",
            lambda tpm: activate_credential(
                tpm, ak, challenge.credential_blob, challenge.encrypted_secret, ek_kind=kind
            ),
        )
        result = self.client.activate(challenge.enrollment_id, ActivateRequest(secret=secret))
        if result.ak_name != name or result.node != node:
            raise ProtocolError(
                f"verifier bound AK {result.ak_name} to node {result.node}, expected {name} for {node}"
            )
        Enrollment(node, self.verifier, name, kind, result.enrolled_at).save(self.config.state_dir)
        self.log.info("enrolled", node=node, ak_name=name, ek_kind=kind, enrolled_at=result.enrolled_at)

    # attestation

    def attest(self) -> VerdictOut:
        """Enroll if needed, then one round; enroll again (once) if the verifier has forgotten us."""
        if not self._container_log_reconciled:
            self._reconcile_container_log()
        try:
            try:
                return self._round(self.ensure_enrolled())
            except NotEnrolled as e:
                self.log.warning(
                    "enroll.lost",
                    message="the verifier has no AK bound to this node (was its database reset?): "
                    "enrolling again",
                    detail=e.reason,
                )
                Enrollment.forget(self.config.state_dir)
                return self._round(self.ensure_enrolled())
        except TpmError:
            self._ak = None
            raise

    def _reconcile_container_log(self) -> None:
        """Once per process: extend PCR 23 with what a hook that crashed between appending and
        extending left in the container log, so those launches become evidence rather than
        pending forever. Not worth failing or delaying rounds over: the next hook repairs it too."""
        self._container_log_reconciled = True
        path = self.config.container_log
        if not path.exists():
            return
        try:
            done = self._deadline.call(
                "reconciling the container log",
                lambda: reconcile_container_log(path, self.config.tcti, lock_timeout=READ_LOCK_TIMEOUT),
            )
        except (ContainerLogError, TpmError) as e:
            self.log.warning("container_log.unreconciled", path=str(path), message=str(e))
            return
        if done.extended or done.cut or done.restarted:
            self.log.warning(
                "container_log.repaired",
                path=str(path),
                extended=done.extended,
                cut_bytes=done.cut,
                restarted=done.restarted,
            )

    def _bind_keys(self) -> list[str]:
        # Read every round: the kubelet replaces its key files as its TLS bootstrap progresses.
        if not self.config.bind_keys:
            return []
        found, problems = read_fingerprints(self.config.bind_keys)
        for path, why in problems.items():
            self.log.warning("bind.skipped", message=f"--bind-key not used: {why}", path=path)
        return found

    def _round(self, ak: AttestationKey) -> VerdictOut:
        node, cfg = self.config.node, self.config
        bind = self._bind_keys()
        challenge = self.client.challenge(node, bind)
        if set(challenge.bound_keys) != set(bind):
            self.log.warning(
                "bind.ignored", message="the verifier did not bind the keys: it predates key binding"
            )
        try:
            selection = PcrSelection.parse(challenge.selection)
        except ValueError as e:
            raise ProtocolError(f"challenge selects PCRs {challenge.selection!r}: {e}") from None
        self._check_stop()
        q = self._with_tpm("quoting", lambda tpm: quote(tpm, ak, challenge.nonce, selection))
        self._check_stop()
        # Logs are read after the quote: a list longer than the quote is fine (the verifier
        # stops where PCR 10 matches), a shorter one could never replay to it.
        eventlog = read_eventlog(cfg.eventlog)
        container_log = read_container_log(cfg.container_log)
        boot_id = read_boot_id(cfg.boot_id_file)
        last_boot = load_boot_id(cfg.state_dir)
        rebooted = boot_id is not None and last_boot is not None and boot_id != last_boot
        if rebooted:
            self.log.warning(
                "reboot.detected",
                message="reboot detected: sending the whole IMA list",
                previous_boot_id=last_boot,
                boot_id=boot_id,
            )
        snapshot = self.ima.read()
        wanted = 0 if rebooted else challenge.ima_offset
        ima_bytes, offset, sent = None, 0, 0
        if snapshot is not None:
            offset, ima_bytes = snapshot.since(wanted)
            sent = snapshot.entries - offset
            if offset != wanted:
                self.log.warning(
                    "ima.resend",
                    message="sending the whole IMA list: "
                    + ("it does not parse" if snapshot.whole else "it is shorter than the verifier's offset"),
                    verifier_offset=wanted,
                    entries=snapshot.entries,
                )
        evidence = Evidence(
            nonce=challenge.nonce,
            quote=q.attest,
            signature=q.signature,
            pcrs=_pcrs_hex(q.pcrs),
            eventlog=eventlog,
            ima=ima_bytes,
            ima_offset=offset,
            container_log=container_log,
        )
        verdict = self.client.evidence(node, evidence)
        if boot_id is not None and boot_id != last_boot:
            save_boot_id(cfg.state_dir, boot_id)
        fields: dict[str, Any] = {
            "node": node,
            "trusted": verdict.trusted,
            "selection": str(selection),
            "eventlog": eventlog is not None,
            "ima_offset": offset if snapshot is not None else None,
            "ima_sent": sent if snapshot is not None and not snapshot.whole else None,
            "ima_accepted": verdict.ima_offset if snapshot is not None else None,
            "containers_sent": container_log.count(b"\n") if container_log is not None else None,
            "bound_keys": len(bind) or None,
            "reboot": verdict.reboot or rebooted,
            "workarounds": verdict.workarounds or None,
            "expires_at": verdict.expires_at,
        }
        if verdict.trusted:
            self.log.info("verdict", **fields)
        else:
            self.log.warning("verdict", **fields, reasons=reasons_json(verdict.reasons))
        return verdict

    def run(self) -> None:
        """Rounds until `stop` is set: on the interval after a success, backing off after a failure."""
        rng = random.Random()  # noqa: S311 - jitter, not a secret
        failures = 0
        self.log.info(
            "agent.start", node=self.config.node, verifier=self.verifier, interval=self.config.interval
        )
        while not self.stop.is_set():
            try:
                self.attest()
            except Stopped:
                break
            except Exception as e:
                failures += 1
                retry_after = e.retry_after if isinstance(e, VerifierError) else None
                delay = backoff_delay(failures, self.config.max_backoff, rng, retry_after)
                self._log_failure(e, failures, delay)
            else:
                failures = 0
                delay = next_interval(self.config.interval, rng)
            self.stop.wait(delay)

    def _log_failure(self, e: Exception, failures: int, delay: float) -> None:
        fields: dict[str, Any] = {
            "error": type(e).__name__,
            "message": str(e),
            "failures": failures,
            "retry_in": round(delay, 2),
        }
        if isinstance(e, VerifierRejected):
            fields["code"] = e.code
            fields["reasons"] = reasons_json(e.reasons) or None
        if isinstance(e, _EXPECTED_ERRORS):
            self.log.warning("round.failed", **fields)
        else:
            self.log.error("round.failed", exc=True, **fields)


# --- entry points -----------------------------------------------------------------------------


def run_daemon(config: AgentConfig, log: EventLog, *, grace: float = SHUTDOWN_GRACE) -> int:
    """`attest-agent run`: rounds in a worker thread until SIGTERM or SIGINT, then exit 0.

    The main thread only waits for a signal, so shutdown never waits on a network timeout:
    a round still running after `grace` seconds is abandoned with the process."""
    stop = threading.Event()
    signalled: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Only record it: a handler must not take the locks Event.set needs.
        signalled.append(signum)

    previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        with VerifierClient(config.verifier, config.ca_cert, timeout=config.timeout) as client:
            agent = Agent(config, client, log, stop)
            worker = threading.Thread(target=agent.run, name="attest-rounds", daemon=True)
            worker.start()
            while worker.is_alive() and not signalled:
                worker.join(0.2)
            stop.set()
            if not signalled:
                # The loop catches every Exception: only a BaseException ends it, and a daemon
                # that stopped attesting must not look like a clean shutdown.
                log.error("agent.died", message="the attestation loop ended without a signal")
                return 1
            log.info("agent.stopping", signal=signal.Signals(signalled[0]).name)
            worker.join(grace)
            if worker.is_alive():
                log.warning("agent.abandoned_round", message=f"a round was still running after {grace:g} s")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("agent.stopped")
    return 0


def attest_once(config: AgentConfig, log: EventLog) -> VerdictOut:
    """`attest-agent once`: enroll if needed and run one round; errors propagate to the caller."""
    with VerifierClient(config.verifier, config.ca_cert, timeout=config.timeout) as client:
        return Agent(config, client, log).attest()
