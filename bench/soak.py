"""Soak: many agents against one verifier for a long time, with random faults (not part of CI).

N software TPMs (swtpm, each its own EK) with agent worker processes running the real agent
code (attest.agent.daemon.Agent) attest every --interval seconds against one
`attest-verifier serve` on SQLite (default) or on a private PostgreSQL server (--backend
postgresql). Every 30-60 s (--fault-every) one fault, chosen at random:

  verifier-kill    SIGKILL the verifier and start it again on the same port and database
  swtpm-kill       SIGKILL one node's swtpm and boot the node again (its TPM2_Startup after a
                   disorderly shutdown, new PCRs, event log, IMA list and boot id: a power loss)
  postgres-restart stop PostgreSQL (fast shutdown) for 3 s and start it again (--backend postgresql)

What it reports: attestations done (trusted / untrusted), errors by kind as the agents saw
them, faults done, the verifier's RSS sampled every 5 s (mean of the first and of the last
5 minutes, or of the first and last third for shorter runs, and the growth between them; a
verifier-kill starts a new process, so the report also gives each process's peak), and lost
records: every enrollment and every verdict an agent was answered with (its ledger) must be in
the verifier's audit trail at the end, and the trail's hash chain must verify.

verifier-kill starts a new process, so with it the RSS growth compares different processes;
`--faults swtpm-kill` (or swtpm-kill,postgres-restart) keeps one verifier process for the whole
run and gives its growth.

    python -m bench.soak [--minutes 30] [--agents 8] [--interval 1] [--backend sqlite|postgresql]

Exit status 0 when nothing was lost and the chain verifies, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from attest import pki
from bench.e2e import (
    READY_TIMEOUT,
    Node,
    Verifier,
    _free_port,
    agent_config,
    good_policy,
    make_nodes,
    rss_kb,
    start_verifier,
)

SAMPLE_SECONDS: Final = 5.0
WINDOW_SECONDS: Final = 300.0
POSTGRES_DOWN_SECONDS: Final = 3.0
ERROR_PAUSE: Final = 0.5
# The agents attest far more often than a real fleet's (minutes apart), so the per-node rate
# limit is opened up: the soak is about faults and time, not about throttling.
VERIFIER_FLAGS: Final = ("--node-rate", "0")
FAULTS: Final = ("verifier-kill", "swtpm-kill", "postgres-restart")
# The verifier's answer code in an agent error's message: "... [rate_limited, HTTP 429]".
_CODE: Final = re.compile(r"\[(\w+), HTTP \d+\]")


# --- the agent worker (`python -m bench.soak --worker JSON`) -----------------------------------


def worker(spec: dict[str, Any]) -> int:
    """Attest every spec["interval"] seconds until SIGTERM. One JSON line on stdout per round:
    {"soak": "verdict", ...} for an answered round, {"soak": "error", "kind": ...} for a failed
    one; the agent's own events (JSON, info and up, "enrolled" among them) go there too."""
    from attest.agent.client import VerifierClient
    from attest.agent.daemon import Agent, make_event_log

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _sig, _frame: stop.set())
    config = agent_config(spec)
    log = make_event_log("json", "info", sys.stdout)

    def emit(doc: dict[str, Any]) -> None:
        print(json.dumps({"soak": doc.pop("soak"), **doc}), flush=True)

    with VerifierClient(config.verifier, config.ca_cert, timeout=config.timeout) as client:
        agent = Agent(config, client, log)
        while not stop.is_set():
            try:
                verdict = agent.attest()
            except Exception as e:  # counted by kind; the loop goes on, as the daemon's does
                code = _CODE.search(str(e))
                emit({"soak": "error", "kind": type(e).__name__ + (f" {code.group(1)}" if code else "")})
                stop.wait(ERROR_PAUSE)
                continue
            emit(
                {
                    "soak": "verdict",
                    "node": verdict.node,
                    "trusted": verdict.trusted,
                    "appraised_at": verdict.appraised_at.isoformat(),
                    "reasons": [f"{r.code}: {r.message}" for r in verdict.reasons],
                }
            )
            stop.wait(spec["interval"])
    return 0


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the agents were told, collected from their stdout by one reader thread each."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    verdicts: set[tuple[str, dt.datetime]] = field(default_factory=set)
    enrollments: Counter[str] = field(default_factory=Counter)
    trusted: int = 0
    untrusted: int = 0
    untrusted_reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # the first message of each reason
    errors: Counter[str] = field(default_factory=Counter)

    def read(self, node: str, lines: Iterator[str]) -> None:
        for line in lines:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                if doc.get("soak") == "verdict":
                    self.verdicts.add((doc["node"], dt.datetime.fromisoformat(doc["appraised_at"])))
                    if doc["trusted"]:
                        self.trusted += 1
                    else:
                        self.untrusted += 1
                        for reason in doc["reasons"][:1]:
                            code, _, message = reason.partition(": ")
                            self.untrusted_reasons[code] += 1
                            self.examples.setdefault(code, message)
                elif doc.get("soak") == "error":
                    self.errors[doc["kind"]] += 1
                elif doc.get("event") == "enrolled":
                    self.enrollments[node] += 1


@dataclass
class Soak:
    directory: Path
    nodes: list[Node]
    ek_ca: Any  # swtpm.provision.LocalCa
    tls: Path
    database: str
    interval: float
    port: int = field(default_factory=_free_port)
    verifier: Verifier | None = None
    lives: list[tuple[int, int]] = field(default_factory=list)  # (pid, peak RSS kB) per process
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, RSS kB)
    faults: Counter[str] = field(default_factory=Counter)
    ledger: Ledger = field(default_factory=Ledger)
    workers: list[subprocess.Popen[str]] = field(default_factory=list)

    def start_verifier(self) -> None:
        name = f"verifier-{len(self.lives)}"
        self.verifier = start_verifier(
            self.directory, name, self.database, self.ek_ca, self.tls, port=self.port, options=VERIFIER_FLAGS
        )
        self.lives.append((self.verifier.process.pid, 0))

    def sample(self, since: float) -> None:
        assert self.verifier is not None
        kb = rss_kb(self.verifier.process.pid)
        if kb:
            self.samples.append((time.monotonic() - since, kb))
            pid, peak = self.lives[-1]
            self.lives[-1] = (pid, max(peak, kb))

    def start_workers(self) -> None:
        assert self.verifier is not None
        for node in self.nodes:
            spec = {**node.spec(self.verifier.url, self.tls / pki.CA_CERT, "soak"), "interval": self.interval}
            err = (self.directory / f"{node.name}.log").open("w")
            w = subprocess.Popen(
                [sys.executable, "-m", "bench.soak", "--worker", json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
            err.close()
            self.workers.append(w)
            assert w.stdout is not None
            threading.Thread(target=self.ledger.read, args=(node.name, iter(w.stdout)), daemon=True).start()

    def fault(self, kind: str, rng: random.Random, postgres: Any) -> None:
        self.faults[kind] += 1
        if kind == "verifier-kill":
            assert self.verifier is not None
            self.verifier.process.kill()
            self.verifier.process.wait()
            self.start_verifier()
        elif kind == "swtpm-kill":
            booted = rng.choice(self.nodes).booted
            tpm = booted.tpm
            if tpm.pid is not None:
                os.kill(tpm.pid, signal.SIGKILL)
            tpm.stop()  # reaps it
            booted.boot()  # power on: the measured boot's own TPM2_Startup, a new log and boot id
        elif kind == "postgres-restart":
            postgres.stop()
            time.sleep(POSTGRES_DOWN_SECONDS)
            postgres.start()

    def stop(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.wait(timeout=60)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()


def wait_for_enrollment(soak: Soak) -> None:
    """Every agent answered once before faults start: a fault during enrollment is a different test."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        with soak.ledger.lock:
            done = {node for node, _ in soak.ledger.verdicts}
        if len(done) == len(soak.nodes):
            return
        if time.monotonic() > deadline:
            missing = sorted({n.name for n in soak.nodes} - done)
            raise RuntimeError(f"agents never answered: {missing}")
        time.sleep(0.5)


def audit_check(soak: Soak) -> dict[str, Any]:
    """The ledger against the audit trail: lost verdicts and enrollments, chain problems."""
    from attest.cli.admin_client import AdminClient, tls_context
    from attest.store.api import AuditRecord
    from attest.store.audit import verify_chain

    assert soak.verifier is not None
    token = (soak.tls / pki.ADMIN_TOKEN).read_text().strip()
    with AdminClient(soak.verifier.url, token, tls_context(str(soak.tls / pki.CA_CERT))) as admin:
        out = admin.audit_records()
    records = [AuditRecord(r.seq, r.at, r.kind, r.subject, r.data, r.prev, r.hash) for r in out]
    stored = {
        (r.subject, dt.datetime.fromisoformat(r.data["appraised_at"])) for r in records if r.kind == "verdict"
    }
    enrolled = Counter(r.subject for r in records if r.kind == "enroll")
    with soak.ledger.lock:
        lost_verdicts = sorted(soak.ledger.verdicts - stored)
        lost_enrollments = sorted(n for n, count in soak.ledger.enrollments.items() if enrolled[n] < count)
        acknowledged = len(soak.ledger.verdicts)
    return {
        "records": len(records),
        "verdicts_stored": len(stored),
        "verdicts_acknowledged": acknowledged,
        "lost_verdicts": lost_verdicts,
        "lost_enrollments": lost_enrollments,
        "chain_problems": verify_chain(records),
    }


def memory(samples: list[tuple[float, int]], seconds: float) -> tuple[float, float, float]:
    """Mean RSS (MB) of the first and the last window, and the window's length (s)."""
    window = min(WINDOW_SECONDS, seconds / 3)
    first = [kb for t, kb in samples if t <= window]
    last = [kb for t, kb in samples if t >= seconds - window]
    return _mean_mb(first), _mean_mb(last), window


def _mean_mb(kbs: list[int]) -> float:
    return sum(kbs) / len(kbs) / 1024 if kbs else float("nan")


@contextmanager
def database(backend: str, directory: Path) -> Iterator[tuple[str, Any]]:
    """The verifier's database URL, and the PostgreSQL server (None on SQLite)."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'verifier.db'}", None
        return
    from tests.pg import PgServer, find_bindir

    server = PgServer(find_bindir())
    try:
        server.init()
        server.start()
        yield server.url(server.create_database()), server
    finally:
        server.destroy()


def run(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    rng = random.Random(args.seed)  # noqa: S311 - which fault when, not a secret
    directory = Path(tempfile.mkdtemp(prefix="attest-soak-"))
    seconds = args.minutes * 60
    try:
        with ExitStack() as stack:
            tls = directory / "pki"
            pki.init_verifier_pki(tls, ["localhost"], ["127.0.0.1"])
            nodes, ek_ca = make_nodes(directory, args.agents, stack)
            url, postgres = stack.enter_context(database(args.backend, directory))
            soak = Soak(directory, nodes, ek_ca, tls, url, args.interval)
            stack.callback(lambda: soak.verifier.stop() if soak.verifier else None)
            stack.callback(soak.stop)
            soak.start_verifier()
            from attest.cli.admin_client import AdminClient, tls_context

            token = (tls / pki.ADMIN_TOKEN).read_text().strip()
            assert soak.verifier is not None
            with AdminClient(soak.verifier.url, token, tls_context(str(tls / pki.CA_CERT))) as admin:
                admin.apply_policy(good_policy(nodes[0]))
            soak.start_workers()
            wait_for_enrollment(soak)
            say(f"{args.agents} agents enrolled; soaking for {args.minutes:g} min ({args.backend})")
            kinds = [k for k in args.faults if postgres or k != "postgres-restart"]
            low, high = args.fault_every
            start = time.monotonic()
            next_fault = start + rng.uniform(low, high)
            next_sample = start
            while (now := time.monotonic()) < start + seconds:
                if now >= next_sample:
                    soak.sample(start)
                    next_sample += SAMPLE_SECONDS
                if now >= next_fault:
                    kind = rng.choice(kinds)
                    say(f"{now - start:7.0f} s  fault: {kind}")
                    soak.fault(kind, rng, postgres)
                    next_fault = time.monotonic() + rng.uniform(low, high)
                time.sleep(0.2)
            soak.stop()
            check = audit_check(soak)
            first, last, window = memory(soak.samples, seconds)
            return {
                "backend": args.backend,
                "agents": args.agents,
                "minutes": args.minutes,
                "interval": args.interval,
                "attestations": soak.ledger.trusted + soak.ledger.untrusted,
                "trusted": soak.ledger.trusted,
                "untrusted": soak.ledger.untrusted,
                "untrusted_first_reason": dict(soak.ledger.untrusted_reasons),
                "untrusted_examples": soak.ledger.examples,
                "errors": dict(soak.ledger.errors),
                "faults": dict(soak.faults),
                "rss_window_s": window,
                "rss_first_mb": first,
                "rss_last_mb": last,
                "rss_growth_mb": last - first,
                # A process started after the last sample has no figure.
                "verifier_peaks_mb": [round(kb / 1024, 1) for _, kb in soak.lives if kb],
                **check,
            }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def report(r: dict[str, Any]) -> str:
    lost = len(r["lost_verdicts"]) + len(r["lost_enrollments"])
    return "\n".join(
        [
            f"soak: {r['agents']} agents, {r['minutes']:g} min, {r['backend']}, one round per agent every"
            f" {r['interval']:g} s",
            f"attestations answered: {r['attestations']} ({r['trusted']} trusted, {r['untrusted']} untrusted;"
            f" first reasons of the untrusted: {r['untrusted_first_reason'] or 'none'})",
            f"errors seen by the agents: {sum(r['errors'].values())} {r['errors'] or ''}",
            f"faults: {sum(r['faults'].values())} {r['faults']}",
            f"verifier RSS: first {r['rss_window_s']:.0f} s {r['rss_first_mb']:.1f} MB, last"
            f" {r['rss_window_s']:.0f} s {r['rss_last_mb']:.1f} MB, growth {r['rss_growth_mb']:+.1f} MB;"
            f" peak per process {r['verifier_peaks_mb']} MB",
            f"ledger: {r['verdicts_acknowledged']} verdicts acknowledged, {r['verdicts_stored']} in the audit"
            f" trail ({r['records']} records); lost verdicts {len(r['lost_verdicts'])}, lost enrollments"
            f" {len(r['lost_enrollments'])}; audit chain {'BROKEN' if r['chain_problems'] else 'verifies'}",
            *(f"  {code}, e.g.: {message}" for code, message in r["untrusted_examples"].items()),
            *(f"  lost verdict: {node} {when.isoformat()}" for node, when in r["lost_verdicts"][:10]),
            *(f"  lost enrollment: {node}" for node in r["lost_enrollments"][:10]),
            *(f"  chain: {p}" for p in r["chain_problems"][:10]),
            "result: " + ("OK" if lost == 0 and not r["chain_problems"] else "FAILED"),
        ]
    )


def _fault_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        a, b = float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SECONDS or MIN-MAX") from None
    if not 0 < a <= b:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 < MIN <= MAX")
    return a, b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between an agent's rounds")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--fault-every", type=_fault_range, default=(30.0, 60.0), metavar="MIN-MAX")
    parser.add_argument(
        "--faults",
        type=lambda v: v.split(","),
        default=list(FAULTS),
        help=f"comma-separated, of {', '.join(FAULTS)}",
    )
    parser.add_argument("--seed", type=int, default=None, help="the faults' random seed")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    if not set(args.faults) <= set(FAULTS):
        parser.error(f"--faults: one or more of {', '.join(FAULTS)}")
    if args.minutes <= 0 or args.agents < 1 or args.interval < 0:
        parser.error("--minutes and --agents must be positive, --interval not negative")
    result = run(args, lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(result, default=str, indent=2))
    else:
        print(report(result))
    return 0 if not (result["lost_verdicts"] or result["lost_enrollments"] or result["chain_problems"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
