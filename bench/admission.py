"""Admission latency over TLS on loopback, as kube-apiserver sees it.

`attest-verifier serve` runs as its own process on SQLite holding N enrolled nodes with fresh
trusted verdicts (inserted through SqlStore) and an image policy. This process is the load
generator: it sends the pinned-Pod AdmissionReview kube-apiserver recorded
(tests/data/k8s/admission/08-validate-pods-CREATE-pinned.json), each for a random one of the N
nodes with a fresh uid, over HTTP/1.1 keep-alive connections with the API server's headers and
`?timeout=5s`, and checks every answer as the API server does (200, uid echoed, allowed).

Two phases:
- fixed rate (open loop): request i is due at start + i/rate, whether earlier answers came or
  not. Latency is from sending to the answer; "p99 due" counts from when the request was due,
  so waiting for a busy connection and a generator that fell behind show there (no coordinated
  omission). The two differ by the asyncio timer's slack (about a millisecond) until the
  verifier saturates, then "p99 due" grows without bound;
- maximum rate (closed loop): each connection sends as soon as its previous answer arrived.

The client is a few lines of asyncio over the ssl module rather than an HTTP library, so that
its own cost stays small next to the server's on the same machine. For a second opinion use
wrk (`apt-get install wrk`) with a Lua script posting the same body; it is not needed here.

    python -m bench.admission [--nodes 1000] [--rate 500] [--seconds 20] [--connections 8]
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
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
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


def start_verifier(directory: Path, database: Path) -> Verifier:
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
        "--log-level",
        "warning",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTEST_VERIFIER_")}
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    verifier = Verifier(process, port, directory / "pki" / pki.CA_CERT, log)
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(verify=ssl.create_default_context(cafile=str(verifier.ca_cert)), trust_env=False) as c:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"attest-verifier exited {process.returncode}:\n{log.read_text()}")
            try:
                if c.get(f"https://127.0.0.1:{port}/healthz").status_code == 200:
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
    name: str
    seconds: float = 0.0
    latencies: list[float] = dataclasses.field(default_factory=list)  # send -> answer
    from_due: list[float] = dataclasses.field(default_factory=list)  # due -> answer (fixed rate)
    errors: list[str] = dataclasses.field(default_factory=list)

    def percentile(self, q: float, of: list[float] | None = None) -> float:
        ordered = sorted(self.latencies if of is None else of)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan

    def row(self) -> str:
        done = len(self.latencies)
        rate = done / self.seconds if self.seconds else 0.0
        figures = [self.percentile(q) * 1000 for q in (0.5, 0.99, 0.999)]
        worst = max(self.latencies, default=math.nan) * 1000
        due = self.percentile(0.99, self.from_due) * 1000
        cells = "".join(f"{f:>10.2f}" for f in (*figures, worst, due))
        return f"{self.name:<24}{done:>9}{rate:>12.1f}{cells}{len(self.errors):>8}"


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
    phase = Phase(f"fixed {rate:g}/s")
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
            phase.latencies.append(answered - sent)
            phase.from_due.append(answered - due)
        except (ValueError, OSError, asyncio.IncompleteReadError) as e:
            phase.errors.append(str(e))
        idle.put_nowait(connection)

    start = loop.time()
    for i, review in zip(range(total), _cycle(pool), strict=False):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(review, due)))
    await asyncio.gather(*tasks)
    phase.seconds = loop.time() - start
    while not idle.empty():
        idle.get_nowait().close()
    return phase


async def max_rate(target: Target, pool: Sequence[Review], seconds: float) -> Phase:
    phase = Phase(f"max rate, {target.connections} conns")
    loop = asyncio.get_running_loop()
    reviews_left = _cycle(pool)
    opened = await target.connect()
    end = loop.time() + seconds

    async def worker(connection: Connection) -> None:
        while loop.time() < end:
            sent = loop.time()
            try:
                await connection.send(next(reviews_left))
                phase.latencies.append(loop.time() - sent)
            except (ValueError, OSError, asyncio.IncompleteReadError) as e:
                phase.errors.append(str(e))
                return
        connection.close()

    start = loop.time()
    await asyncio.gather(*(worker(c) for c in opened))
    phase.seconds = loop.time() - start
    return phase


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
        f"verifier-side decision time (store read + decision, attest_admission_seconds): "
        f"mean {values['sum'] / values['count'] * 1000:.3f} ms over {values['count']:.0f} requests"
    )


def run(nodes: int, rate: float, seconds: float, connections: int, warmup: float) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="attest-bench-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        database, names = prepare(directory, nodes)
        seeded = time.perf_counter() - started
        verifier = start_verifier(directory, database)
        try:
            context = ssl.create_default_context(cafile=str(verifier.ca_cert))
            target = Target(verifier.port, context, connections)
            pool = reviews(names, verifier.port, min(max(1, int(rate * seconds)), 20_000))

            async def phases() -> list[Phase]:
                if warmup:
                    await max_rate(target, pool, warmup)
                fixed = await fixed_rate(target, pool, rate, seconds)
                fastest = await max_rate(target, pool, seconds)
                return [fixed, fastest]

            results = asyncio.run(phases())
            server = _server_side(verifier.port, context)
        finally:
            verifier.stop()
    lines = [
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; verifier and load generator share them",
        f"verifier: attest-verifier serve, SQLite, {nodes} attested nodes (seeded in {seeded:.1f} s), "
        "TLS on 127.0.0.1, one process",
        f"request: pinned Pod CREATE ({PINNED_POD.name}), random node, API server headers, "
        f"HTTP/1.1 keep-alive, {connections} connections",
        f"{'phase':<24}{'requests':>9}{'req/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'p99.9 ms':>10}"
        f"{'max ms':>10}{'p99 due':>10}{'errors':>8}",
    ]
    lines += [phase.row() for phase in results]
    lines.append(server)
    for phase in results:
        lines += [f"error ({phase.name}): {e}" for e in phase.errors[:3]]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.admission", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--nodes", type=int, default=1000, help="attested nodes in the store (default %(default)s)"
    )
    p.add_argument("--rate", type=float, default=500, help="requests/s of the fixed-rate phase (%(default)s)")
    p.add_argument("--seconds", type=float, default=20, help="length of each phase (default %(default)s)")
    p.add_argument("--connections", type=int, default=8, help="keep-alive connections (%(default)s)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of load before measuring (%(default)s)")
    args = p.parse_args(argv)
    lines = run(args.nodes, args.rate, args.seconds, args.connections, args.warmup)
    print("\n".join(lines))
    return 1 if any(line.startswith("error") for line in lines) else 0


if __name__ == "__main__":
    raise SystemExit(main())
