"""Size: the verifier with 100,000 enrolled nodes with verdicts, against the same at 1,000 (issue 6).

For each size a SQLite store is filled in bulk through the real schema (attest.store.schema,
SQLAlchemy Core executemany, not the Store API: 100,000 enrollments one transaction at a time
would take most of an hour): nodes, each with a fresh trusted verdict of a realistic size, and
the audit trail those enrollments and verdicts would have left (one "enroll" and one "verdict"
record per node, hash-chained with attest.store.audit, so `attestctl audit verify` passes). A few
of the nodes (--soft-nodes) are software-AK nodes enrolled with real keys (bench.softload), so
they can attest. Then one `attest-verifier serve` process, pinned to one core, with the load on
the others:

- attestation: bench.softload's load generator runs rounds for the soft nodes (challenge,
  evidence, appraisal, stored verdict): attestations/s and the verifier's CPU per attestation;
- admission: bench.admission's fixed-rate phase (pinned-Pod reviews for random nodes of the
  whole store) and its maximum-rate phase: p99 and the verifier's CPU per request;
- verifier RSS (VmHWM) after both, and the cost of listing: `attestctl node list --json`,
  `attestctl audit export` and `attestctl audit verify` run against it, one after another, with
  attestctl's default timeout (each request is one page): each command's time, CPU and peak
  RSS, and the verifier's CPU for it, its peak RSS afterwards and how much that peak grew.

The target: at 100,000 nodes admission p99 and attestation rate within 20% of 1,000's, verifier
RSS <= 300 MB.

    python -m bench.size [--sizes 1000,100000] [--seconds 10] [--rate 200] [--no-listing]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from attest import pki
from bench import admission, e2e, softload
from bench.__main__ import Row, cpu_model

BATCH: Final = 5000
TARGET_DEGRADATION: Final = 0.2  # at the large size, within 20% of the small one
ATTESTCTL: Final = Path(sys.executable).with_name("attestctl")


@dataclass
class Size:
    nodes: int
    seeded_s: float = 0.0
    att_rate: float = 0.0
    att_cpu_ms: float = 0.0
    att_p99_ms: float = 0.0
    att_failed: int = 0
    adm_p99_ms: float = 0.0
    adm_max_rate: float = 0.0
    adm_cpu_ms: float = 0.0
    adm_errors: int = 0
    rss_mb: float = 0.0  # the verifier's peak, before listing
    listing: dict[str, Listing] = field(default_factory=dict)  # by attestctl command


@dataclass(frozen=True)
class Listing:
    seconds: float
    cpu_s: float  # attestctl's user + system CPU
    rss_mb: float  # attestctl's peak
    verifier_cpu_s: float
    verifier_mb: float  # the verifier's peak RSS (VmHWM) after the command
    verifier_growth_mb: float  # how much the command raised that peak


def _verdict_detail() -> dict[str, Any]:
    """A stored verdict's detail the size of a real one (PCR values of a sha256 bank, boot facts)."""
    return {
        "pcrs": {"sha256": {str(i): hashlib.sha256(bytes([i])).hexdigest() for i in range(11)}},
        "reboot": False,
        "workarounds": [],
        "clock": {"clock": 100_000, "reset_count": 7, "restart_count": 0, "safe": True},
        "bound_keys": [],
    }


def _rows(
    names: Sequence[str], soft: dict[str, Any], now: dt.datetime
) -> Iterator[tuple[dict[str, Any], ...]]:
    """(node, verdict) rows per name; soft nodes get their enrollment's real AK."""
    detail = _verdict_detail()
    expires = now + dt.timedelta(hours=1)
    for name in names:
        enrollment = soft.get(name)
        identity = hashlib.sha256(b"size " + name.encode()).digest()
        node = {
            "name": name,
            "ek_fingerprint": enrollment.ek_fingerprint if enrollment else identity.hex(),
            "ak_public": enrollment.ak_public if enrollment else b"\x00\x00",
            "ak_name": enrollment.ak_name if enrollment else b"\x00\x0b" + identity,
            "enrolled_at": now,
            "revoked_at": None,
            "revoke_reason": None,
            "clock": None,
            "ima_state": None,
        }
        verdict = {
            "node": name,
            "trusted": True,
            "appraised_at": now,
            "expires_at": expires,
            "reasons": [],
            "detail": detail,
            "policy": "default@1",
        }
        yield node, verdict


def seed(url: str, nodes: int, soft_seed: bytes, soft_nodes: int) -> list[str]:
    """A store at `url` with `nodes` enrolled nodes with trusted verdicts, the soft nodes among
    them, their audit trail, and the soft boot's policy; returns the names."""
    from sqlalchemy import create_engine, insert, update

    from attest.store import audit as chain
    from attest.store import schema as t
    from attest.store.sql import SqlStore

    names = [f"node-{i:06d}" for i in range(nodes)]
    now = dt.datetime.now(dt.UTC)
    store = SqlStore.open(url)  # the schema, by the migrations, and the policy, audited
    try:
        store.put_policy("default", softload.good_policy())
        head = store.audit_records()[-1]
    finally:
        store.close()
    soft = {n: softload.enrollment(soft_seed, n, now) for n in names[:soft_nodes]}
    seq, prev = head.seq, head.hash
    rows = _rows(names, soft, now)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            while batch := [r for _, r in zip(range(BATCH), rows, strict=False)]:
                audit = []
                for node, _verdict in batch:
                    for kind, data in (
                        ("enroll", {"outcome": "enrolled", "ek": node["ek_fingerprint"]}),
                        ("verdict", {"trusted": True, "policy": "default@1"}),
                    ):
                        seq += 1
                        record = chain.make_record(seq, now, kind, node["name"], data, prev)
                        prev = record.hash
                        audit.append(dataclasses.asdict(record) | {"data": chain.canonical_json(record.data)})
                conn.execute(insert(t.nodes), [n for n, _ in batch])
                conn.execute(insert(t.verdicts), [v for _, v in batch])
                conn.execute(insert(t.audit), audit)
            conn.execute(update(t.audit_head).where(t.audit_head.c.id == 1).values(seq=seq, hash=prev))
    finally:
        engine.dispose()
    return names


def _listing(argv: list[str], env: dict[str, str], verifier_pid: int) -> Listing:
    peak, cpu = e2e.rss_kb(verifier_pid, "VmHWM"), e2e.cpu_seconds(verifier_pid)
    t0 = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # The command's peak from its own /proc, sampled until it exits: wait4's ru_maxrss would be
    # this process's, which the child's address space was before its exec.
    hwm = 0
    while True:
        hwm = e2e.rss_kb(process.pid, "VmHWM") or hwm
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - t0
    if process.returncode != 0:
        assert process.stderr is not None
        raise RuntimeError(f"{' '.join(argv[1:3])} exited {process.returncode}: {process.stderr.read()!r}")
    if process.stderr is not None:
        process.stderr.close()
    after = e2e.rss_kb(verifier_pid, "VmHWM")
    return Listing(
        seconds=elapsed,
        cpu_s=usage.ru_utime + usage.ru_stime,
        rss_mb=hwm / 1024,
        verifier_cpu_s=e2e.cpu_seconds(verifier_pid) - cpu,
        verifier_mb=after / 1024,
        verifier_growth_mb=(after - peak) / 1024,
    )


def measure(  # noqa: PLR0917
    directory: Path, nodes: int, seconds: float, rate: float, soft_nodes: int, listing: bool
) -> Size:
    result = Size(nodes)
    tls = directory / "pki"
    if not tls.exists():
        pki.init_verifier_pki(tls, ["localhost"], ["127.0.0.1"])
    url = f"sqlite:///{directory / f'size-{nodes}.db'}"
    soft_seed = softload.new_seed()
    t0 = time.perf_counter()
    names = seed(url, nodes, soft_seed, soft_nodes)
    result.seeded_s = time.perf_counter() - t0
    verifier_cores, generator_cores, _ = admission.pinning()
    verifier = e2e.start_verifier(
        directory, f"verifier-{nodes}", url, None, tls, cpus=verifier_cores, options=e2e.BENCH_OPTIONS
    )
    pid = verifier.process.pid
    previous = os.sched_getaffinity(0)
    load: subprocess.Popen[str] | None = None
    try:
        # Attestation: the soft nodes' rounds, from a load generator on the other cores.
        spec = {
            "verifier": verifier.url,
            "ca_cert": str(tls / pki.CA_CERT),
            "seed": soft_seed.hex(),
            "nodes": names[:soft_nodes],
            "concurrency": 16,
            "cpus": sorted(generator_cores) if generator_cores else None,
        }
        load = subprocess.Popen(
            [sys.executable, "-m", "bench.softload", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert load.stdin is not None
        assert load.stdout is not None
        if load.stdout.readline().strip() != "ready":
            raise RuntimeError("the load generator did not start")
        cpu = e2e.cpu_seconds(pid)
        start = time.time() + 0.2
        load.stdin.write(f"{start} {start + seconds}\n")
        load.stdin.flush()
        out, _ = load.communicate(timeout=seconds + 60)
        data = json.loads(out.strip().splitlines()[-1])
        done = len(data["latencies"])
        result.att_rate = done / seconds
        result.att_cpu_ms = (e2e.cpu_seconds(pid) - cpu) / max(done, 1) * 1000
        result.att_p99_ms = e2e.percentile(data["latencies"], 0.99) * 1000
        result.att_failed = data["errors"] + data["untrusted"]

        # Admission: bench.admission's phases, its client in this process on the other cores.
        if generator_cores:
            os.sched_setaffinity(0, generator_cores)
        context = ssl.create_default_context(cafile=str(tls / pki.CA_CERT))
        port = int(verifier.url.rsplit(":", 1)[1])
        target = admission.Target(port, context, 8)
        pool = admission.reviews(names, port, min(max(1, int(rate * seconds)), 20_000))

        async def phases() -> tuple[admission.Phase, admission.Phase, float]:
            await admission.max_rate(target, pool, min(2.0, seconds))  # warm up
            fixed = await admission.fixed_rate(target, pool, rate, seconds)
            before = e2e.cpu_seconds(pid)
            fastest = await admission.max_rate(target, pool, seconds)
            return fixed, fastest, e2e.cpu_seconds(pid) - before

        fixed, fastest, cpu = asyncio.run(phases())
        os.sched_setaffinity(0, previous)
        result.adm_p99_ms = fixed.p99 * 1000
        result.adm_max_rate = fastest.rate
        result.adm_cpu_ms = cpu / max(fastest.requests, 1) * 1000
        result.adm_errors = len(fixed.errors) + len(fastest.errors)
        result.rss_mb = e2e.rss_kb(pid, "VmHWM") / 1024

        if not listing:
            return result
        # Listing everything, as an operator does.
        env = {
            **os.environ,
            "ATTEST_VERIFIER": verifier.url,
            "ATTEST_CA_CERT": str(tls / pki.CA_CERT),
            "ATTEST_TOKEN_FILE": str(tls / pki.ADMIN_TOKEN),
        }
        argv = [str(ATTESTCTL), "node", "list", "--json"]
        result.listing["node list --json"] = _listing(argv, env, pid)
        export = directory / f"audit-{nodes}.json"
        argv = [str(ATTESTCTL), "audit", "export", "--output", str(export)]
        result.listing["audit export"] = _listing(argv, env, pid)
        result.listing["audit verify"] = _listing([str(ATTESTCTL), "audit", "verify"], env, pid)
        export.unlink(missing_ok=True)
    finally:
        os.sched_setaffinity(0, previous)
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        verifier.stop()
    return result


def run(
    sizes: Sequence[int], seconds: float, rate: float, soft_nodes: int, listing: bool = True
) -> list[Size]:
    directory = Path(tempfile.mkdtemp(prefix="attest-e2e-size-"))
    try:
        return [measure(directory, n, seconds, rate, min(soft_nodes, n), listing) for n in sizes]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _change(small: float, large: float) -> str:
    return f"{(large / small - 1) * 100:+.0f}%" if small else "n/a"


def table_rows(
    sizes: Sequence[int] = (1000, 25_000),
    seconds: float = 4.0,
    rate: float = 200.0,
    soft_nodes: int = 32,
    listing: bool = False,
) -> list[Row]:
    """Rows (measurement, figure, target): each size's figures, and the largest against the
    smallest. The defaults fit `python -m bench` (under a minute: 25,000 nodes, no listing);
    `python -m bench.size` runs 100,000 with the listings."""
    results = run(sizes, seconds, rate, soft_nodes, listing)
    rows: list[Row] = []
    for r in results:
        at = f"size {r.nodes:,} nodes"
        rows += [
            (f"{at}: seeded (bulk SQL)", f"{r.seeded_s:.1f} s", ""),
            (f"{at}: attestations ({seconds:g} s)", f"{r.att_rate:,.1f}/s", ""),
            (f"{at}: verifier CPU per attestation", f"{r.att_cpu_ms:.2f} ms", ""),
            (f"{at}: admission p99 at {rate:g} req/s", f"{r.adm_p99_ms:.2f} ms", ""),
            (f"{at}: admission maximum rate", f"{r.adm_max_rate:,.0f} req/s", ""),
            (f"{at}: verifier RSS", f"{r.rss_mb:.0f} MB", "<= 300 MB"),
        ]
        for command, c in r.listing.items():
            figure = f"{c.seconds:.1f} s, {c.rss_mb:.0f} MB, {c.cpu_s:.1f} CPU-s"
            rows.append((f"{at}: attestctl {command}", figure, ""))
            rows.append((f"{at}: verifier CPU for {command}", f"{c.verifier_cpu_s:.1f} s", ""))
            figure = f"{c.verifier_mb:.0f} MB (+{c.verifier_growth_mb:.0f})"
            rows.append((f"{at}: verifier RSS after {command}", figure, "<= 300 MB"))
        if r.att_failed or r.adm_errors:
            rows.append(
                (f"{at}: failed rounds / admission errors", f"{r.att_failed} / {r.adm_errors}", "0 / 0")
            )
    if len(results) > 1:
        small, large = results[0], results[-1]
        limit = f"within {TARGET_DEGRADATION:.0%}"
        vs = f"{large.nodes:,} vs {small.nodes:,} nodes"
        rows.append((f"size {vs}: attestation rate", _change(small.att_rate, large.att_rate), limit))
        rows.append((f"size {vs}: CPU per attestation", _change(small.att_cpu_ms, large.att_cpu_ms), ""))
        rows.append((f"size {vs}: admission p99", _change(small.adm_p99_ms, large.adm_p99_ms), limit))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.size", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,100000", help="node counts, comma-separated (%(default)s)")
    p.add_argument("--seconds", type=float, default=10.0, help="per measured phase (%(default)s)")
    p.add_argument("--rate", type=float, default=200.0, help="admission fixed-rate req/s (%(default)s)")
    p.add_argument("--soft-nodes", type=int, default=32, help="nodes that attest (%(default)s)")
    p.add_argument("--no-listing", action="store_true", help="skip attestctl node list and audit export")
    args = p.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes: not a comma-separated list of node counts: {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        p.error("--sizes: every size must be at least 1")
    rows = table_rows(sizes, args.seconds, args.rate, args.soft_nodes, listing=not args.no_listing)
    width = max(len(r[0]) for r in rows)
    fig = max(len(r[1]) for r in rows)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; verifier pinned to one core, load on the others")
    for m, f, target in rows:
        print(f"{m:<{width}}  {f:>{fig}}  {target}".rstrip())
    failed = any(r[0].endswith("failed rounds / admission errors") for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
