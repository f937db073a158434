"""Admission latency and throughput over TLS on loopback, as kube-apiserver sees it (issue 6).

`attest-verifier serve` runs as its own process on SQLite holding N enrolled nodes with fresh
trusted verdicts (inserted through SqlStore) and an image policy. It sends the pinned-Pod
AdmissionReview kube-apiserver recorded (tests/data/k8s/admission/08-validate-pods-CREATE-pinned.json),
each for a random one of the N nodes with a fresh uid, over HTTP/1.1 keep-alive connections
with the API server's headers and `?timeout=5s`, and checks every answer as the API server
does (200, allowed; this process's client also checks the uid echoed).

So that the load generator does not starve the server, the verifier is pinned to one core and
the generator (this process, and wrk) to the others; on a single core both share it, and the
output says so. Two phases, 60 s each by default:
- fixed rate (open loop, this process): request i is due at start + i/rate, whether earlier
  answers came or not. Latency is from sending to the answer; "p99 due" counts from when the
  request was due, so waiting for a busy connection and a generator that fell behind show
  there (no coordinated omission);
- maximum rate (closed loop): each connection sends as soon as its previous answer arrived:
  wrk (Debian package `wrk`, scripts/setup.sh) with a Lua script that posts the same reviews
  and counts every answer that is not a 200 allowing the pod, or this process's client when
  wrk is missing or `--generator python` is given.
Each phase also reports the verifier's CPU time per request (/proc/PID/stat utime + stime),
the figure that stays meaningful on a shared machine.

    python -m bench.admission [--nodes 1000] [--rate 1000] [--seconds 60] [--connections 8]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Final

import httpx

from attest import pki
from attest.store.api import Enrollment, Store, VerdictRecord
from attest.wire import ADMISSION_PODS

FIXTURES: Final = Path(__file__).parent.parent / "tests/data/k8s/admission"
PINNED_POD: Final = FIXTURES / "08-validate-pods-CREATE-pinned.json"
VERIFIER: Final = Path(sys.executable).with_name("attest-verifier")
START_TIMEOUT: Final = 60.0
# The API server's request headers (tests/data/k8s/admission/request-headers.json), minus the
# ones every request computes (host, content-length).
APISERVER_HEADERS: Final = {
    "user-agent": "kube-apiserver-admission",
    "accept": "application/json, */*",
    "content-type": "application/json",
    "accept-encoding": "gzip",
}
POLICY: Final = """\
version: 1
name: default
containers:
  images: ["registry.example.com/*"]
"""
STATES: Final = ("trusted", "stale", "untrusted", "enrolled", "revoked")
# The targets (issue 6).
TARGET_RATE: Final = 1000.0  # requests/s of the fixed-rate phase
TARGET_P99_MS: Final = 5.0
TARGET_MAX_RATE: Final = 3000.0
# Answers wrk counts as wrong: anything but a 200 that allows the pod.
WRK_SCRIPT: Final = """\
local bodies = {}
for line in io.lines(%(bodies)s) do bodies[#bodies + 1] = line end
local headers = %(headers)s
local next_body = 0
local threads = {}
wrong = 0

function setup(thread)
  table.insert(threads, thread)
end

function request()
  next_body = next_body %% #bodies + 1
  return wrk.format("POST", %(path)s, headers, bodies[next_body])
end

function response(status, _, body)
  if status ~= 200 or not string.find(body, '"allowed":true', 1, true) then
    wrong = wrong + 1
  end
end

function done(summary, latency, _)
  local wrong_total = 0
  for _, thread in ipairs(threads) do wrong_total = wrong_total + thread:get("wrong") end
  local e = summary.errors
  io.write(string.format("wrk-result %%d %%d %%d %%d %%d %%d %%d %%d\\n", summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.max, wrong_total, e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def seed_node(store: Store, name: str, state: str, now: dt.datetime, *, appraised_ago: float = 0) -> None:
    """An enrolled node in `state` (one of STATES), through the Store API, without a TPM: the
    enrollment is completed with its own secret, and the verdict recorded as the service would.
    appraised_ago: seconds before `now` the verdict was appraised (trusted: it still expires an
    hour after `now`)."""
    secret = hashlib.sha256(b"seed secret " + name.encode()).digest()
    identity = hashlib.sha256(b"seed key " + name.encode()).digest()
    enrollment = Enrollment(
        id=f"seed-{name}",
        node=name,
        ek_fingerprint=identity.hex(),
        ak_public=b"\x00\x00",
        ak_name=b"\x00\x0b" + identity,
        secret_hash=hashlib.sha256(secret).digest(),
        expires_at=now + dt.timedelta(hours=1),
    )
    store.create_enrollment(enrollment)
    store.complete_enrollment(enrollment.id, secret, now)
    if state == "enrolled":
        return
    appraised = now - dt.timedelta(seconds=appraised_ago)
    expires: dt.datetime | None = now + dt.timedelta(hours=1)
    reasons: list[dict[str, Any]] = []
    if state == "stale":
        appraised, expires = now - dt.timedelta(minutes=10), now - dt.timedelta(minutes=5)
    elif state == "untrusted":
        expires = None
        reasons = [{"code": "policy_pcr_mismatch", "message": "PCR 0 is not an allowed value (seeded)"}]
    verdict = VerdictRecord(name, state != "untrusted", appraised, expires, reasons, {}, "default@1")
    store.record_verdict(verdict, None, None)
    if state == "revoked":
        store.revoke_node(name, "seeded as revoked")


# --- the verifier process --------------------------------------------------------------------


@dataclasses.dataclass
class Verifier:
    process: subprocess.Popen[bytes]
    port: int
    ca_cert: Path
    log: Path

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def prepare(directory: Path, nodes: int) -> tuple[Path, list[str]]:
    """TLS material and a SQLite store with `nodes` attested nodes and the image policy."""
    from attest.store.sql import SqlStore

    pki.init_verifier_pki(directory / "pki", ["localhost"], ["127.0.0.1"])
    database = directory / "verifier.db"
    names = [f"node-{i:05d}" for i in range(nodes)]
    store = SqlStore.open(f"sqlite:///{database}")
    try:
        store.put_policy("default", POLICY)
        now = dt.datetime.now(dt.UTC)
        for name in names:
            seed_node(store, name, "trusted", now)
    finally:
        store.close()
    return database, names


def start_verifier(
    directory: Path,
    database: Path,
    cpus: set[int] | None = None,
    options: Sequence[str] = ("--log-level", "warning"),
) -> Verifier:
    """The verifier as its own process, with `options` added to its command line; with `cpus`,
    pinned to them (from before it starts). Returns once it is ready (/readyz)."""
    port = _free_port()
    log = directory / "verifier.log"
    argv = [
        str(VERIFIER),
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--tls-cert",
        str(directory / "pki" / pki.SERVER_CERT),
        "--tls-key",
        str(directory / "pki" / pki.SERVER_KEY),
        "--database",
        f"sqlite:///{database}",
        *options,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTEST_VERIFIER_")}
    with log.open("wb") as out:
        pin: Callable[[], None] | None = None if cpus is None else lambda: os.sched_setaffinity(0, cpus)
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=pin)  # noqa: PLW1509 - no threads yet
    verifier = Verifier(process, port, directory / "pki" / pki.CA_CERT, log)
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(verify=ssl.create_default_context(cafile=str(verifier.ca_cert)), trust_env=False) as c:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"attest-verifier exited {process.returncode}:\n{log.read_text()}")
            try:
                if c.get(f"https://127.0.0.1:{port}/readyz").status_code == 200:
                    return verifier
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                verifier.stop()
                raise SystemExit(f"attest-verifier did not start:\n{log.read_text()}")
            time.sleep(0.1)


# --- the load generator ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Review:
    uid: bytes
    request: bytes  # the whole HTTP request


def reviews(names: Sequence[str], port: int, count: int, seed: int = 1) -> list[Review]:
    """`count` pinned-Pod reviews, each for a random node and with its own uid."""
    template = json.loads(PINNED_POD.read_text())
    rng = random.Random(seed)  # noqa: S311 - a reproducible load, not a secret
    out = []
    head = f"POST {ADMISSION_PODS}?timeout=5s HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in APISERVER_HEADERS.items()
    )
    for _ in range(count):
        uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        template["request"]["uid"] = uid
        template["request"]["object"]["spec"]["nodeName"] = rng.choice(names)
        body = json.dumps(template, separators=(",", ":")).encode()
        request = f"{head}content-length: {len(body)}\r\n\r\n".encode() + body
        out.append(Review(uid.encode(), request))
    return out


class Connection:
    """One HTTP/1.1 keep-alive connection over TLS, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        return cls(reader, writer)

    async def send(self, review: Review) -> None:
        """Send one review and check the answer as the API server does; ValueError if wrong."""
        self.writer.write(review.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k: v for k, _, v in (line.lower().partition(": ") for line in lines[1:]) if k}
        body = await self.reader.readexactly(int(headers["content-length"]))
        if not lines[0].startswith("HTTP/1.1 200") or headers.get("content-type") != "application/json":
            raise ValueError(f"{lines[0]} {headers.get('content-type')}: {body[:200]!r}")
        answer = json.loads(body)["response"]
        if answer["uid"].encode() != review.uid or answer["allowed"] is not True or "patch" in answer:
            raise ValueError(f"unexpected answer: {body[:300]!r}")

    def close(self) -> None:
        self.writer.close()


@dataclasses.dataclass
class Phase:
    """One phase's figures (seconds). The Python client keeps every latency; wrk gives its
    percentiles."""

    name: str
    requests: int = 0
    seconds: float = 0.0
    p50: float = math.nan
    p99: float = math.nan
    p999: float = math.nan
    worst: float = math.nan
    p99_due: float = math.nan  # fixed rate: from when each request was due
    errors: list[str] = dataclasses.field(default_factory=list)
    verifier_cpu: float = math.nan  # the verifier's CPU seconds during the phase
    generator_cpu: float = math.nan  # the load generator's: this process and wrk

    @classmethod
    def measured(cls, name: str, seconds: float, latencies: list[float], from_due: list[float]) -> Phase:
        ordered = sorted(latencies)
        return cls(
            name,
            len(ordered),
            seconds,
            p50=_percentile(ordered, 0.5),
            p99=_percentile(ordered, 0.99),
            p999=_percentile(ordered, 0.999),
            worst=ordered[-1] if ordered else math.nan,
            p99_due=_percentile(sorted(from_due), 0.99),
        )

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        figures = [f * 1000 for f in (self.p50, self.p99, self.p999, self.worst, self.p99_due)]
        cells = "".join(f"{f:>10.2f}" for f in figures)
        return f"{self.name:<24}{self.requests:>9}{self.rate:>12.1f}{cells}{len(self.errors):>8}"


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


def _cpu_meter(pid: int) -> Callable[[Phase], Phase]:
    """Records into a phase the CPU the verifier (`pid`) and the load generator (this process,
    and wrk once it is reaped) used since the meter was made."""

    def generator() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    verifier_before, generator_before = cpu_seconds(pid), generator()

    def record(phase: Phase) -> Phase:
        phase.verifier_cpu = cpu_seconds(pid) - verifier_before
        phase.generator_cpu = generator() - generator_before
        return phase

    return record


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (fields 14 and 15, after the command)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Target:
    port: int
    context: ssl.SSLContext
    connections: int

    async def connect(self) -> list[Connection]:
        opening = (Connection.open(self.port, self.context) for _ in range(self.connections))
        return list(await asyncio.gather(*opening))


def _cycle(items: Sequence[Review]) -> Iterator[Review]:
    while True:
        yield from items


async def fixed_rate(target: Target, pool: Sequence[Review], rate: float, seconds: float) -> Phase:
    latencies: list[float] = []
    from_due: list[float] = []
    errors: list[str] = []
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for c in await target.connect():
        idle.put_nowait(c)
    loop = asyncio.get_running_loop()
    total = max(1, int(rate * seconds))
    tasks = []

    async def one(review: Review, due: float) -> None:
        connection = await idle.get()
        sent = loop.time()
        try:
            await connection.send(review)
            answered = loop.time()
            latencies.append(answered - sent)
            from_due.append(answered - due)
        except (ValueError, OSError, asyncio.IncompleteReadError) as e:
            errors.append(str(e))
        idle.put_nowait(connection)

    start = loop.time()
    for i, review in zip(range(total), _cycle(pool), strict=False):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(review, due)))
    await asyncio.gather(*tasks)
    phase = Phase.measured(f"fixed {rate:g}/s", loop.time() - start, latencies, from_due)
    phase.errors = errors
    while not idle.empty():
        idle.get_nowait().close()
    return phase


async def max_rate(target: Target, pool: Sequence[Review], seconds: float) -> Phase:
    latencies: list[float] = []
    errors: list[str] = []
    loop = asyncio.get_running_loop()
    reviews_left = _cycle(pool)
    opened = await target.connect()
    end = loop.time() + seconds

    async def worker(connection: Connection) -> None:
        while loop.time() < end:
            sent = loop.time()
            try:
                await connection.send(next(reviews_left))
                latencies.append(loop.time() - sent)
            except (ValueError, OSError, asyncio.IncompleteReadError) as e:
                errors.append(str(e))
                return
        connection.close()

    start = loop.time()
    await asyncio.gather(*(worker(c) for c in opened))
    phase = Phase.measured(f"max rate, {target.connections} conns", loop.time() - start, latencies, [])
    phase.errors = errors
    return phase


def wrk_max_rate(
    directory: Path, port: int, pool: Sequence[Review], seconds: float, connections: int
) -> Phase:
    """The closed-loop phase driven by wrk (one thread: it is pinned with this process)."""
    bodies = directory / "bodies.jsonl"
    bodies.write_bytes(b"\n".join(r.request.split(b"\r\n\r\n", 1)[1] for r in pool) + b"\n")
    headers = "{" + ", ".join(f'["{k}"] = "{v}"' for k, v in APISERVER_HEADERS.items()) + "}"
    path = f"{ADMISSION_PODS}?timeout=5s"
    script = directory / "admission.lua"
    script.write_text(WRK_SCRIPT % {"bodies": f'"{bodies}"', "headers": headers, "path": f'"{path}"'})
    whole = max(1, math.ceil(seconds))  # wrk counts whole seconds
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{whole}s", "--timeout", "5s", "-s", str(script)]
    done = subprocess.run(
        [*argv, f"https://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=whole + 60,
        check=False,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("wrk-result ")), None)
    phase = Phase(f"max rate, {connections} conns")
    if done.returncode or line is None:
        phase.errors.append(f"wrk exited {done.returncode}: {(done.stderr or done.stdout).strip()[:300]}")
        return phase
    requests, micros, p50, p99, p999, worst, wrong, failed = (int(x) for x in line.split()[1:])
    phase.requests, phase.seconds = requests, micros / 1e6
    phase.p50, phase.p99, phase.p999, phase.worst = (x / 1e6 for x in (p50, p99, p999, worst))
    phase.errors += [f"wrk: {wrong} answers were not a 200 allowing the pod"] if wrong else []
    phase.errors += [f"wrk: {failed} socket errors, timeouts or non-2xx"] if failed else []
    return phase


def in_process(nodes: int, count: int, cache_seconds: float) -> float:
    """CPU seconds per review of the verifier's ASGI application called directly, on uvloop as
    `serve` runs it: no TLS, no HTTP parsing, no other process on the measured path. The figure
    to compare changes to the application with on a busy machine."""
    import uvloop

    from attest.store.sql import SqlStore
    from webhook.app import create_app
    from webhook.config import Settings

    with tempfile.TemporaryDirectory(prefix="attest-bench-") as tmp:
        database, names = prepare(Path(tmp), nodes)
        store = SqlStore.open(f"sqlite:///{database}")
        try:
            app = create_app(Settings(admission_cache_seconds=cache_seconds), store)
            bodies = [r.request.split(b"\r\n\r\n", 1)[1] for r in reviews(names, 0, min(count, 1000))]
            headers = [(k.encode(), v.encode()) for k, v in APISERVER_HEADERS.items()]

            async def post(body: bytes) -> None:
                scope = {
                    "type": "http",
                    "asgi": {"version": "3.0"},
                    "http_version": "1.1",
                    "method": "POST",
                    "scheme": "https",
                    "path": ADMISSION_PODS,
                    "raw_path": ADMISSION_PODS.encode(),
                    "query_string": b"timeout=5s",
                    "headers": [*headers, (b"content-length", str(len(body)).encode())],
                    "client": ("127.0.0.1", 1),
                    "server": ("127.0.0.1", 2),
                    "root_path": "",
                }
                sent: list[dict[str, Any]] = []

                async def receive() -> dict[str, Any]:
                    return {"type": "http.request", "body": body, "more_body": False}

                async def send(message: MutableMapping[str, Any]) -> None:
                    sent.append(dict(message))

                await app(scope, receive, send)
                if sent[0]["status"] != 200 or b'"allowed":true' not in sent[1]["body"]:
                    raise SystemExit(f"the application did not admit the pod: {sent}")

            async def measure() -> float:
                async with app.router.lifespan_context(app):
                    for body in bodies[:200]:  # warm up
                        await post(body)
                    started = time.process_time()
                    for i in range(count):
                        await post(bodies[i % len(bodies)])
                    return (time.process_time() - started) / count

            return uvloop.run(measure())
        finally:
            store.close()


def _server_side(port: int, context: ssl.SSLContext) -> str:
    """Mean decision time inside the verifier, from its own histogram."""
    with httpx.Client(verify=context, trust_env=False) as client:
        text = client.get(f"https://127.0.0.1:{port}/metrics").text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('attest_admission_seconds_sum{resource="pods"}'):
            values["sum"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith('attest_admission_seconds_count{resource="pods"}'):
            values["count"] = float(line.rsplit(" ", 1)[1])
    if not values.get("count"):
        return "verifier-side decision time: no samples"
    return (
        f"verifier-side decision time (lookups + decision, attest_admission_seconds): "
        f"mean {values['sum'] / values['count'] * 1000:.3f} ms over {values['count']:.0f} requests"
    )


def pinning() -> tuple[set[int] | None, set[int] | None, str]:
    """(the verifier's cores, the load generator's, a line saying so): the first core this
    process may use for the verifier, the others for the generator; None, None on one core."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None, "verifier and load generator share the one core"
    rest = ",".join(map(str, cores[1:]))
    return {cores[0]}, set(cores[1:]), f"verifier pinned to core {cores[0]}, load generator to {rest}"


@dataclasses.dataclass
class Run:
    nodes: int
    seeded: float  # seconds to seed the store
    connections: int
    generator: str  # of the maximum-rate phase: "wrk" or "python"
    placement: str  # which cores run what
    phases: list[Phase]
    server: str

    def lines(self) -> list[str]:
        lines = [
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}; {self.placement}",
            f"verifier: attest-verifier serve, SQLite, {self.nodes} attested nodes "
            f"(seeded in {self.seeded:.1f} s), TLS on 127.0.0.1, one process",
            f"request: pinned Pod CREATE ({PINNED_POD.name}), random node, API server headers, "
            f"HTTP/1.1 keep-alive, {self.connections} connections; maximum rate driven by {self.generator}",
            f"{'phase':<24}{'requests':>9}{'req/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'p99.9 ms':>10}"
            f"{'max ms':>10}{'p99 due':>10}{'errors':>8}",
        ]
        lines += [phase.row() for phase in self.phases]
        for who, used in (
            ("verifier CPU per request (utime + stime, /proc)", [p.verifier_cpu for p in self.phases]),
            ("load generator CPU per request (this process and wrk)", [p.generator_cpu for p in self.phases]),
        ):
            each = zip(self.phases, used, strict=True)
            lines.append(
                f"{who}: " + ", ".join(f"{p.name} {u / max(p.requests, 1) * 1000:.3f} ms" for p, u in each)
            )
        lines.append(self.server)
        for phase in self.phases:
            lines += [f"error ({phase.name}): {e}" for e in phase.errors[:3]]
        return lines

    @property
    def failed(self) -> bool:
        return any(p.errors for p in self.phases)


def run(nodes: int, rate: float, seconds: float, connections: int, *, warmup: float, generator: str) -> Run:
    """generator: "wrk", "python" or "auto" (wrk when it is installed) for the maximum rate."""
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    with tempfile.TemporaryDirectory(prefix="attest-bench-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        database, names = prepare(directory, nodes)
        seeded = time.perf_counter() - started
        verifier_cores, generator_cores, placement = pinning()
        verifier = start_verifier(directory, database, verifier_cores)
        previous = os.sched_getaffinity(0)
        if generator_cores:
            os.sched_setaffinity(0, generator_cores)  # wrk inherits it
        try:
            context = ssl.create_default_context(cafile=str(verifier.ca_cert))
            target = Target(verifier.port, context, connections)
            pool = reviews(names, verifier.port, min(max(1, int(rate * seconds)), 20_000))
            pid = verifier.process.pid

            async def python_phases() -> list[Phase]:
                if warmup:
                    await max_rate(target, pool, warmup)
                meter = _cpu_meter(pid)
                phases = [meter(await fixed_rate(target, pool, rate, seconds))]
                if generator == "python":
                    meter = _cpu_meter(pid)
                    phases.append(meter(await max_rate(target, pool, seconds)))
                return phases

            phases = asyncio.run(python_phases())
            if generator == "wrk":
                meter = _cpu_meter(pid)
                phases.append(meter(wrk_max_rate(directory, verifier.port, pool, seconds, connections)))
            server = _server_side(verifier.port, context)
        finally:
            os.sched_setaffinity(0, previous)
            verifier.stop()
    return Run(nodes, seeded, connections, generator, placement, phases, server)


def table_rows(seconds: float, nodes: int) -> list[tuple[str, str, str]]:
    """`python -m bench`'s rows (measurement, figure, target): the issue's fixed rate and the
    maximum sustained rate, each phase `seconds` long, on `nodes` attested nodes."""
    result = run(nodes, TARGET_RATE, seconds, 8, warmup=min(2.0, seconds), generator="auto")
    fixed, fastest = result.phases
    where = f"admission ({nodes} nodes, {seconds:g} s)"
    ms = [f"{x * 1000:.2f}" for x in (fixed.p50, fixed.p99, fixed.p999)]
    rows = [
        (f"{where}: {fixed.name} p50 / p99 / p99.9", " / ".join(ms) + " ms", f"p99 <= {TARGET_P99_MS:g} ms"),
        (
            f"{where}: maximum sustained rate ({result.generator})",
            f"{fastest.rate:,.0f} req/s",
            f">= {TARGET_MAX_RATE:,.0f} req/s",
        ),
        (
            f"{where}: verifier CPU per request at max rate",
            f"{fastest.verifier_cpu / max(fastest.requests, 1) * 1000:.3f} ms",
            "",
        ),
    ]
    if result.failed:
        rows.append(("admission", "FAILED", "runs clean"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.admission", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--nodes", type=int, default=1000, help="attested nodes in the store (default %(default)s)"
    )
    p.add_argument(
        "--rate", type=float, default=TARGET_RATE, help="requests/s of the fixed-rate phase (%(default)s)"
    )
    p.add_argument("--seconds", type=float, default=60, help="length of each phase (default %(default)s)")
    p.add_argument("--connections", type=int, default=8, help="keep-alive connections (%(default)s)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of load before measuring (%(default)s)")
    p.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="what drives the maximum-rate phase; auto: wrk when installed (default %(default)s)",
    )
    p.add_argument(
        "--in-process",
        type=int,
        metavar="REVIEWS",
        help="instead: CPU per review of the application called directly, REVIEWS times, from the "
        "node view and reading through",
    )
    args = p.parse_args(argv)
    if args.in_process:
        for cache, what in (
            (1.0, "from the node view"),
            (0.0, "reading through (--admission-cache-seconds 0)"),
        ):
            cpu = in_process(args.nodes, args.in_process, cache)
            print(f"in process, no TLS or HTTP: {cpu * 1e6:.0f} us CPU per review {what}")
        return 0
    if args.generator == "wrk" and not shutil.which("wrk"):
        p.error("wrk is not installed (apt-get install wrk, or scripts/setup.sh)")
    result = run(
        args.nodes, args.rate, args.seconds, args.connections, warmup=args.warmup, generator=args.generator
    )
    print("\n".join(result.lines()))
    return 1 if result.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
