"""End-to-end attestation throughput: many agents against `attest-verifier serve` processes.

Each agent is a software TPM (swtpm/, its own EK certified by the harness's local CA, booted
through the good simulated measured boot, IMA started) and a worker process running the real
agent code (attest.agent.daemon.Agent) in a loop without sleeping: challenge, quote, evidence,
appraisal, stored verdict. The worker enrolls (the verifier trusts the swtpm CA through
--ek-roots/--ek-intermediates) and attests once before the measured window opens; a policy
made from the good boot (create_policy + dump_policy) is applied through the admin API first.

Phases: one verifier on SQLite; one on PostgreSQL (a private server, tests/pg.py's PgServer);
two verifier processes on the same PostgreSQL database, the agents split between them. The
figures: complete trusted verdicts per second in the window (the agents' count, and the
verifiers' attest_attestations_total as a cross-check), round latency p50/p99 as the agents
measure it, peak verifier RSS (VmHWM) and the largest agent worker RSS.

Everything runs on this machine: agents, swtpm processes, PostgreSQL and the verifiers share
its cores, so the figures are a lower bound of what a verifier gets on cores of its own. The
soft phases (--load soft) measure the verifier apart from its agents: pre-made evidence from
software AKs (bench.softload) sent by one light load generator process; with one verifier, it
runs pinned to one core and the load generator to the other. The figure that survives a shared,
noisy machine is the verifier's CPU per attestation: its utime+stime (/proc/PID/stat) over the
window divided by the attestations it completed.

    python -m bench.e2e [--agents 16] [--seconds 20] [--backend sqlite|postgresql|both] [--verifiers 1|2]
                        [--load agents|soft|both] [--soft-nodes 64] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx

from attest import pki
from bench.__main__ import Row, cpu_model

if TYPE_CHECKING:
    from attest.agent.daemon import AgentConfig

VERIFIER: Final = Path(sys.executable).with_name("attest-verifier")
START_TIMEOUT: Final = 60.0
READY_TIMEOUT: Final = 120.0  # every worker enrolled and attested once
TARGET_RATE: Final = 300.0  # attestations/s, one verifier process on 2 cores
TARGET_SCALING: Final = 0.8  # two processes within 20% of linear
TARGET_VERIFIER_RSS_MB: Final = 300.0
TARGET_AGENT_RSS_MB: Final = 50.0
# The core a lone verifier is pinned to in the soft phases; the load generator gets the others.
VERIFIER_CPU: Final = 0
# Benchmark nodes attest back to back, far above what a real node may (--node-rate 0: no limit).
BENCH_OPTIONS: Final = ("--node-rate", "0")
_METRIC: Final = re.compile(r'^attest_attestations_total\{[^}]*result="trusted"[^}]*\}\s+([0-9.e+]+)$', re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kb(pid: int, field_name: str = "VmRSS") -> int:
    """`field_name` (VmRSS, VmHWM) of /proc/PID/status in kB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (/proc/PID/stat), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


# --- the agent worker (a process of its own: `python -m bench.e2e --worker JSON`) --------------


def agent_config(spec: dict[str, Any]) -> AgentConfig:
    """The agent's configuration from a worker's spec (Node.spec)."""
    from attest.agent.daemon import AgentConfig

    return AgentConfig(
        verifier=spec["verifier"],
        ca_cert=Path(spec["ca_cert"]),
        node=spec["node"],
        tcti=spec["tcti"],
        state_dir=Path(spec["state_dir"]),
        eventlog=Path(spec["eventlog"]),
        ima=Path(spec["ima"]),
        boot_id_file=Path(spec["boot_id"]),
        container_log=Path(spec["container_log"]),
    )


def worker(spec: dict[str, Any]) -> int:
    """Enroll and attest once, print `ready`, read `START END` (time.time()) from stdin, attest in a
    loop until END, print the result as JSON."""
    from attest.agent.client import VerifierClient
    from attest.agent.daemon import Agent, make_event_log

    config = agent_config(spec)
    log = make_event_log("text", "warning", sys.stderr)
    latencies: list[float] = []
    untrusted = errors = 0
    with VerifierClient(config.verifier, config.ca_cert, timeout=config.timeout) as client:
        agent = Agent(config, client, log)
        if not agent.attest().trusted:
            print(json.dumps({"error": "the first verdict was untrusted"}), flush=True)
            return 1
        print("ready", flush=True)
        start, end = map(float, sys.stdin.readline().split())
        time.sleep(max(0.0, start - time.time()))
        while (began := time.time()) < end:
            t0 = time.perf_counter()
            try:
                verdict = agent.attest()
            except Exception as e:  # counted; the loop goes on, as the daemon's does
                errors += 1
                print(f"round failed: {e!r}", file=sys.stderr, flush=True)
                time.sleep(0.05)
                continue
            elapsed = time.perf_counter() - t0
            if began + elapsed > end:
                break  # finished after the window: not counted
            if verdict.trusted:
                latencies.append(elapsed)
            else:
                untrusted += 1
    result = {
        "latencies": latencies,
        "untrusted": untrusted,
        "errors": errors,
        "rss_kb": rss_kb(os.getpid()),
        "hwm_kb": rss_kb(os.getpid(), "VmHWM"),
    }
    print(json.dumps(result), flush=True)
    return 0


# --- nodes: software TPMs booted through the good profile --------------------------------------


@dataclass
class Node:
    name: str
    dir: Path
    booted: Any  # tests.swtpm_node.SwtpmNode

    def spec(self, url: str, ca_cert: Path, phase: str) -> dict[str, Any]:
        state = self.dir / f"agent-{phase}"  # a fresh enrollment against each phase's database
        return {
            "verifier": url,
            "ca_cert": str(ca_cert),
            "node": self.name,
            "tcti": self.booted.tpm.tcti,
            "state_dir": str(state),
            "eventlog": str(self.booted.eventlog),
            "ima": str(self.booted.ima),
            "boot_id": str(self.booted.boot_id),
            "container_log": str(self.booted.container_log),
        }


def make_nodes(directory: Path, count: int, stack: ExitStack) -> tuple[list[Node], Any]:
    """`count` TPMs, each with its own EK (copies of one state would share it, and a verifier
    never lets one EK be two nodes), started and booted; and the swtpm CA."""
    from swtpm.instance import SwtpmInstance
    from swtpm.provision import provision_ca, provision_tpm
    from tests.swtpm_node import SwtpmNode

    ca = provision_ca(directory / "swtpm-ca")
    lock = threading.Lock()

    def one(i: int) -> Node:
        node_dir = directory / f"node-{i:03d}"
        node_dir.mkdir()
        state = provision_tpm(node_dir / "tpm", ca)
        tpm = SwtpmInstance(state.state_dir, ca=ca)
        with lock:
            stack.callback(tpm.close)
        tpm.start()
        booted = SwtpmNode(tpm, node_dir)
        booted.boot()
        return Node(f"node-{i:03d}", node_dir, booted)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        nodes = list(pool.map(one, range(count)))
    return nodes, ca


def good_policy(node: Node) -> str:
    from attest.verify import eventlog
    from attest.verify import ima as imalib
    from attest.verify.policy import create_policy, dump_policy

    log = eventlog.parse(node.booted.log)
    entries = imalib.parse(node.booted.ima_log.text().encode()).entries
    return dump_policy(create_policy("default", log, eventlog.replay(log).pcrs, entries, with_ima=True))


# --- verifiers ---------------------------------------------------------------------------------


@dataclass
class Verifier:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    peak_kb: int = 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_verifier(
    directory: Path,
    name: str,
    database: str,
    ek_ca: Any,
    tls: Path,
    *,
    port: int | None = None,
    cpus: set[int] | None = None,
    options: Sequence[str] = (),
) -> Verifier:
    """A verifier on `port` (a free one by default: a restart passes the old one), ready.
    `ek_ca`: a swtpm.provision.LocalCa, or None (no manufacturer trusted: soft nodes are enrolled
    through the store). `cpus`: the cores it (every thread it starts) may run on. `options`:
    more `attest-verifier serve` options."""
    port = port or _free_port()
    log = directory / f"{name}.log"
    argv = [
        str(VERIFIER),
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--tls-cert",
        str(tls / pki.SERVER_CERT),
        "--tls-key",
        str(tls / pki.SERVER_KEY),
        "--database",
        database,
        "--ek-roots",
        str(ek_ca.root_cert if ek_ca else tls / pki.CA_CERT),
        *(["--ek-intermediates", str(ek_ca.intermediate_cert)] if ek_ca else []),
        "--admin-token-file",
        str(tls / pki.ADMIN_TOKEN),
        "--log-level",
        "warning",
        *options,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTEST_VERIFIER_")}
    with log.open("wb") as out:
        process = subprocess.Popen([*_pinned(cpus), *argv], stdout=out, stderr=subprocess.STDOUT, env=env)
    verifier = Verifier(process, f"https://127.0.0.1:{port}", log)
    deadline = time.monotonic() + START_TIMEOUT
    with _client(tls) as c:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"attest-verifier exited {process.returncode}:\n{log.read_text()}")
            try:
                if c.get(f"{verifier.url}/readyz").status_code == 200:
                    return verifier
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                verifier.stop()
                raise RuntimeError(f"attest-verifier did not start:\n{log.read_text()}")
            time.sleep(0.1)


def _pinned(cpus: set[int] | None) -> list[str]:
    """The argv prefix that runs a program (every thread it will start) on `cpus` only."""
    return ["taskset", "--cpu-list", ",".join(map(str, sorted(cpus)))] if cpus else []


def _client(tls: Path, token: bool = False) -> httpx.Client:
    headers = {"authorization": f"Bearer {(tls / pki.ADMIN_TOKEN).read_text().strip()}"} if token else {}
    context = ssl.create_default_context(cafile=str(tls / pki.CA_CERT))
    return httpx.Client(verify=context, headers=headers, timeout=30, trust_env=False)


def trusted_total(tls: Path, url: str) -> float:
    with _client(tls) as c:
        body = c.get(f"{url}/metrics").text
    return sum(float(m) for m in _METRIC.findall(body))


# --- one phase ---------------------------------------------------------------------------------


@dataclass
class Phase:
    label: str
    verifiers: int
    seconds: float
    trusted: int = 0
    server_trusted: float = 0.0
    untrusted: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    verifier_rss_mb: list[float] = field(default_factory=list)
    agent_rss_mb: float = 0.0
    verifier_cores: float = 0.0  # CPU the verifier processes used in the window, in cores
    load: str = "agents"  # "agents" (swtpm + the real agent) or "soft" (bench.softload)
    pinned: bool = False  # one verifier on a core of its own, the load generator on the other

    @property
    def rate(self) -> float:
        return self.trusted / self.seconds

    @property
    def cpu_ms(self) -> float:
        """Verifier CPU (all its processes) per attestation it completed, in ms."""
        if not self.server_trusted:
            return math.nan
        return self.verifier_cores * self.seconds / self.server_trusted * 1000


@dataclass(frozen=True)
class Setup:
    directory: Path
    nodes: Sequence[Node]
    ek_ca: Any  # swtpm.provision.LocalCa, or None with no swtpm nodes
    tls: Path  # attest.pki.init_verifier_pki's directory
    seconds: float
    policy: str
    soft_nodes: int = 64  # the soft phases' nodes, and their load generator's concurrent rounds
    concurrency: int = 16


@dataclass(frozen=True)
class _Client:
    """A process running rounds that speaks the worker protocol (worker(), softload.load())."""

    name: str
    process: subprocess.Popen[str]
    log: Path


def _spawn(name: str, module: str, argv: list[str], log: Path) -> _Client:
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    return _Client(name, process, log)


def _agents(setup: Setup, phase_dir: Path, verifiers: Sequence[Verifier]) -> list[_Client]:
    """One real agent worker per swtpm node, the nodes split between the verifiers."""
    clients = []
    for i, node in enumerate(setup.nodes):
        spec = node.spec(verifiers[i % len(verifiers)].url, setup.tls / pki.CA_CERT, phase_dir.name)
        argv = ["--worker", json.dumps(spec)]
        clients.append(_spawn(node.name, "bench.e2e", argv, phase_dir / f"{node.name}.log"))
    return clients


def _soft(
    setup: Setup, phase_dir: Path, verifiers: Sequence[Verifier], database: str, cpus: set[int] | None
) -> list[_Client]:
    """Soft nodes enrolled through the store; one load generator per verifier, pinned to `cpus`."""
    from attest.store.sql import SqlStore
    from bench import softload

    seed = softload.new_seed()
    names = [f"soft-{i:05d}" for i in range(setup.soft_nodes)]
    store = SqlStore.open(database)
    try:
        softload.enroll(store, seed, names)
    finally:
        store.close()
    clients = []
    for n, v in enumerate(verifiers):
        spec = {
            "verifier": v.url,
            "ca_cert": str(setup.tls / pki.CA_CERT),
            "seed": seed.hex(),
            "nodes": names[n :: len(verifiers)],
            "concurrency": max(1, setup.concurrency // len(verifiers)),
            "cpus": sorted(cpus) if cpus else None,
        }
        log = phase_dir / f"load{n}.log"
        clients.append(_spawn(f"load generator {n}", "bench.softload", [json.dumps(spec)], log))
    return clients


def _verifier_cpus(load: str, verifiers: int) -> set[int] | None:
    """A lone verifier under soft load gets a core of its own (VERIFIER_CPU); else none is pinned."""
    cores = os.sched_getaffinity(0)
    if load != "soft" or verifiers != 1 or len(cores) < 2 or VERIFIER_CPU not in cores:
        return None
    return {VERIFIER_CPU}


def run_phase(
    setup: Setup, label: str, databases: Callable[[], str], verifiers: int, load: str = "agents"
) -> Phase:
    directory, ek_ca, tls, seconds = setup.directory, setup.ek_ca, setup.tls, setup.seconds
    phase_dir = directory / label.replace(" ", "-").replace(",", "")
    phase_dir.mkdir()
    database = databases()
    started: list[Verifier] = []
    clients: list[_Client] = []
    pinned = _verifier_cpus(load, verifiers)
    try:
        for n in range(verifiers):
            started.append(
                start_verifier(
                    phase_dir, f"verifier{n}", database, ek_ca, tls, cpus=pinned, options=BENCH_OPTIONS
                )
            )
        # Imported here: the agent workers import this module, and their RSS is the agent's figure.
        from bench import softload

        policy = softload.good_policy() if load == "soft" else setup.policy
        with _client(tls, token=True) as c:
            resp = c.post(f"{started[0].url}/v1/admin/policies", json={"text": policy})
            if resp.status_code != 200:
                raise RuntimeError(f"applying the policy failed: {resp.status_code} {resp.text}")
        if load == "soft":
            others = os.sched_getaffinity(0) - pinned if pinned else None
            clients = _soft(setup, phase_dir, started, database, others)
        else:
            clients = _agents(setup, phase_dir, started)
        deadline = time.monotonic() + READY_TIMEOUT
        for client in clients:
            line = _readline(client.process, deadline)
            if line.strip() != "ready":
                log = client.log.read_text()[-2000:]
                raise RuntimeError(f"{client.name} did not get ready: {line!r}\n{log}")
        before = sum(trusted_total(tls, v.url) for v in started)
        cpu_before = sum(cpu_seconds(v.process.pid) for v in started)
        start = time.time() + 0.5
        end = start + seconds
        for client in clients:
            assert client.process.stdin is not None
            client.process.stdin.write(f"{start} {end}\n")
            client.process.stdin.flush()
        while time.time() < end:
            for v in started:
                v.peak_kb = max(v.peak_kb, rss_kb(v.process.pid))
            time.sleep(0.25)
        result = Phase(label, verifiers, seconds, load=load, pinned=pinned is not None)
        result.verifier_cores = (sum(cpu_seconds(v.process.pid) for v in started) - cpu_before) / seconds
        for client in clients:
            out, _ = client.process.communicate(timeout=60)
            lines = out.strip().splitlines()
            data: dict[str, Any] = (
                json.loads(lines[-1]) if lines else {"error": f"exit {client.process.returncode}"}
            )
            if "error" in data:
                raise RuntimeError(f"{client.name}: {data['error']}")
            result.latencies += data["latencies"]
            result.untrusted += data["untrusted"]
            result.errors += data["errors"]
            result.agent_rss_mb = max(result.agent_rss_mb, data["hwm_kb"] / 1024)
        result.trusted = len(result.latencies)
        result.server_trusted = sum(trusted_total(tls, v.url) for v in started) - before
        result.verifier_rss_mb = [max(v.peak_kb, rss_kb(v.process.pid, "VmHWM")) / 1024 for v in started]
        return result
    finally:
        for client in clients:
            if client.process.poll() is None:
                client.process.kill()
            client.process.wait()
        for v in started:
            v.stop()


def _readline(process: subprocess.Popen[str], deadline: float) -> str:
    """A line of the worker's stdout, or "" if it exits or the deadline passes (then it is killed)."""
    assert process.stdout is not None
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    if not box:
        process.kill()
        reader.join(5)
    return box[0] if box else ""


# --- the whole benchmark -----------------------------------------------------------------------


@contextmanager
def postgres() -> Iterator[Callable[[], str]]:
    """A private PostgreSQL server (tests/pg.py) for the run; yields a maker of fresh databases."""
    from tests.pg import PgServer, find_bindir

    server = PgServer(find_bindir())
    try:
        server.init()
        server.start()
        yield lambda: server.url(server.create_database())
    finally:
        server.destroy()


@dataclass(frozen=True)
class Options:
    """What to run: python -m bench.e2e's options."""

    agents: int = 16
    seconds: float = 20.0
    backend: str = "both"  # sqlite | postgresql | both
    verifiers: int = 2  # 2: also two verifier processes on PostgreSQL
    load: str = "both"  # agents | soft | both
    soft_nodes: int = 64
    concurrency: int = 16


def run(opts: Options) -> tuple[list[Phase], float]:
    """The phases and the setup time. Every process started here is gone when this returns."""
    os.environ.setdefault("TSS2_LOG", "all+NONE")  # tpm2-tss's own stderr lines: EK indices probed
    directory = Path(tempfile.mkdtemp(prefix="attest-e2e-"))
    phases: list[Phase] = []
    loads = ["agents", "soft"] if opts.load == "both" else [opts.load]
    try:
        with ExitStack() as stack:
            t0 = time.monotonic()
            tls = directory / "pki"
            pki.init_verifier_pki(tls, ["localhost"], ["127.0.0.1"])
            nodes: list[Node] = []
            ek_ca: Any = None
            policy = ""
            if "agents" in loads:
                nodes, ek_ca = make_nodes(directory, opts.agents, stack)
                policy = good_policy(nodes[0])
            setup = time.monotonic() - t0
            common = Setup(
                directory, nodes, ek_ca, tls, opts.seconds, policy, opts.soft_nodes, opts.concurrency
            )
            counter = iter(range(1000))

            def sqlite() -> str:
                return f"sqlite:///{directory / f'verifier{next(counter)}.db'}"

            for load in loads:
                tag = "soft " if load == "soft" else ""
                if opts.backend in {"sqlite", "both"}:
                    phases.append(run_phase(common, f"{tag}sqlite, 1 verifier", sqlite, 1, load))
                if opts.backend in {"postgresql", "both"}:
                    pg = stack.enter_context(postgres())
                    phases.append(run_phase(common, f"{tag}postgresql, 1 verifier", pg, 1, load))
                    if opts.verifiers == 2:
                        phases.append(run_phase(common, f"{tag}postgresql, 2 verifiers", pg, 2, load))
        return phases, setup
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def table(phases: Sequence[Phase], opts: Options, setup: float) -> str:
    cores = len(os.sched_getaffinity(0))
    lines = [
        f"machine: {cpu_model()}, {cores} cores, Python {platform.python_version()}"
        f"; {opts.agents} agents (swtpm + worker process each), {opts.seconds:g} s per phase,"
        f" setup {setup:.1f} s",
        "agent phases: everything shares these cores (agents, swtpm, PostgreSQL, the verifiers); soft phases:"
        f" {opts.soft_nodes} software-AK nodes, one load generator with {opts.concurrency} rounds in flight,"
        f" a lone verifier pinned to core {VERIFIER_CPU} and the load generator to the others",
        f"{'phase':<29} {'att/s':>7} {'metrics/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'untr':>5} {'err':>4}"
        f" {'verifier MB':>12} {'client MB':>9} {'verifier CPU':>12} {'CPU ms/att':>10}",
    ]
    for p in phases:
        rss = "+".join(f"{r:.0f}" for r in p.verifier_rss_mb)
        lines.append(
            f"{p.label:<29} {p.rate:>7.1f} {p.server_trusted / p.seconds:>9.1f}"
            f" {percentile(p.latencies, 0.5) * 1000:>7.1f} {percentile(p.latencies, 0.99) * 1000:>7.1f}"
            f" {p.untrusted:>5} {p.errors:>4} {rss:>12} {p.agent_rss_mb:>9.1f} {p.verifier_cores:>6.2f} cores"
            f" {p.cpu_ms:>10.2f}"
        )
    lines.append("targets:")
    for p in phases:
        if p.verifiers == 1:
            where = "on its own core" if p.pinned else f"sharing {cores} cores with its load"
            lines.append(
                f"  >= {TARGET_RATE:.0f} att/s, one process: {p.label} {p.rate:.1f} ({where});"
                f" its CPU allows {1000 / p.cpu_ms:.0f}/s per core"
            )
    for load in ("agents", "soft"):
        single = next(
            (p for p in phases if p.load == load and p.label.endswith("postgresql, 1 verifier")), None
        )
        double = next((p for p in phases if p.load == load and p.verifiers == 2), None)
        if single is not None and double is not None and single.rate > 0:
            lines.append(
                f"  two processes within 20% of linear ({load}):"
                f" {double.rate / single.rate:.2f}x the rate of one,"
                f" CPU per attestation {double.cpu_ms:.2f} ms vs {single.cpu_ms:.2f} ms"
                f" (linear: the same CPU per attestation; here all share {cores} cores)"
            )
    if phases:
        peak = max(max(p.verifier_rss_mb) for p in phases)
        lines.append(f"  verifier RSS <= {TARGET_VERIFIER_RSS_MB:.0f} MB: peak {peak:.0f} MB")
        agents = [p.agent_rss_mb for p in phases if p.load == "agents"]
        if agents:
            lines.append(f"  agent RSS <= {TARGET_AGENT_RSS_MB:.0f} MB: largest worker {max(agents):.1f} MB")
    return "\n".join(lines)


def table_rows(agents: int = 4, seconds: float = 8.0, soft_nodes: int = 32) -> list[Row]:
    """The headline figures for python -m bench's table, on SQLite, in well under a minute:
    one verifier under soft load on its own core, and real agents."""
    opts = Options(agents=agents, seconds=seconds, backend="sqlite", verifiers=1, soft_nodes=soft_nodes)
    phases, _ = run(opts)
    rows: list[Row] = []
    for p in phases:
        clients = f"{opts.soft_nodes} soft nodes" if p.load == "soft" else f"{opts.agents} agents"
        name = f"e2e {p.label} ({clients}, {opts.seconds:g} s)"
        rows.append(
            (
                f"{name}: attestations",
                f"{p.rate:,.1f}/s",
                f">= {TARGET_RATE:.0f}/s" if p.load == "soft" else "",
            )
        )
        rows.append((f"{name}: verifier CPU per attestation", f"{p.cpu_ms:.2f} ms", ""))
        rows.append((f"{name}: round p99", f"{percentile(p.latencies, 0.99) * 1000:.1f} ms", ""))
        rows.append(
            (
                f"{name}: verifier RSS",
                f"{max(p.verifier_rss_mb):.0f} MB",
                f"<= {TARGET_VERIFIER_RSS_MB:.0f} MB",
            )
        )
        if p.load == "agents":
            rows.append(
                (f"{name}: agent RSS", f"{p.agent_rss_mb:.1f} MB", f"<= {TARGET_AGENT_RSS_MB:.0f} MB")
            )
        if p.errors or p.untrusted or not p.trusted:
            rows.append((f"{name}: failed rounds", f"{p.errors + p.untrusted}", "0"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=16, help="swtpm agents (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase (default %(default)s)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--verifiers", type=int, choices=[1, 2], default=2, help="2: also two on PostgreSQL")
    parser.add_argument("--load", choices=["agents", "soft", "both"], default="both")
    parser.add_argument("--soft-nodes", type=int, default=64, help="soft phases' nodes (default %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="soft phases' rounds in flight (default %(default)s)"
    )
    parser.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    opts = Options(
        args.agents, args.seconds, args.backend, args.verifiers, args.load, args.soft_nodes, args.concurrency
    )
    phases, setup = run(opts)
    print(table(phases, opts, setup))
    return 0 if all(p.trusted > 0 and p.errors == 0 and p.untrusted == 0 for p in phases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
