"""A verifier's own capacity, apart from its agents' cost: software-AK nodes and a light load generator.

A real agent round costs its TPM 100-700 ms and its agent process ~60 MB; hundreds of them cannot
share a machine with the verifier they measure. Here each node is a software AK
(swtpm.softtpm.SoftAk, ECC P-256) bound to its node through the store's own enrollment
(create_enrollment + complete_enrollment, as an activated credential would), and one simulated
good measured boot (swtpm.measuredboot) is every node's: its event log and PCRs are built once.
The load generator (`python -m bench.softload JSON`, a process of its own, optionally pinned to
a core) runs rounds as an agent does, over TLS against the verifier's agent API: challenge, a
TPMS_ATTEST over the verifier's fresh nonce and the node's PCRs signed by its AK, evidence with
the event log, the stored verdict. What is pre-made is only what does not depend on the nonce.

Its protocol with the benchmark is bench.e2e's agent workers': print `ready`, read `START END`
(time.time()) from stdin, run rounds until END, print one JSON line (latencies of trusted
rounds, untrusted and error counts, own RSS).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import ssl
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec

from attest.pcrselect import PcrSelection
from attest.store.api import Enrollment, Store
from attest.verify.pcrs import PcrValues
from attest.verify.tpmstructs import ClockInfo
from attest.wire import Evidence
from swtpm.measuredboot import BootProfile, SimulatedBoot, simulate_boot
from swtpm.softtpm import SoftAk, quote_attest

SOFT_CLOCK: Final = 100_000  # the quotes' TPM clock starts here and moves forward every round
_SECRET: Final = b"bench-softload-credential-secret"


@cache
def boot() -> SimulatedBoot:
    """The good boot every software node went through (deterministic: built once)."""
    return simulate_boot(BootProfile())


def good_policy(name: str = "default") -> str:
    """The reference policy made from that boot, as an operator would make it."""
    from attest.verify import eventlog
    from attest.verify.policy import create_policy, dump_policy

    log = eventlog.parse(boot().log)
    return dump_policy(create_policy(name, log, eventlog.replay(log).pcrs, (), with_ima=False))


def node_key(seed: bytes, name: str) -> ec.EllipticCurvePrivateKey:
    """Node `name`'s AK private key, derived from `seed`: the benchmark enrolls it, the load
    generator signs with it, and neither has to send the other a key."""
    scalar = int.from_bytes(hashlib.sha256(seed + name.encode()).digest()) % (2**255) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def soft_ek_fingerprint(name: str) -> str:
    """A made-up EK fingerprint per node: these nodes never show the verifier an EK."""
    return hashlib.sha256(b"bench-softload-ek\x00" + name.encode()).hexdigest()


def enrollment(seed: bytes, name: str, expires_at: Any) -> Enrollment:
    """Node `name`'s pending enrollment, completed with the secret _SECRET."""
    from attest.verify.quote import ak_name

    ak = SoftAk(key=node_key(seed, name))
    return Enrollment(
        id=f"bench-{name}",
        node=name,
        ek_fingerprint=soft_ek_fingerprint(name),
        ak_public=ak.public.marshal_tpm2b(),
        ak_name=ak_name(ak.public),
        secret_hash=hashlib.sha256(_SECRET).digest(),
        expires_at=expires_at,
    )


def enroll(store: Store, seed: bytes, names: Iterable[str]) -> None:
    """Bind each node's software AK through the store, as a verifier does when a credential is
    activated (audited "enroll" records, fresh node state)."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    for name in names:
        store.create_enrollment(enrollment(seed, name, now + dt.timedelta(minutes=10)))
        store.complete_enrollment(f"bench-{name}", _SECRET, now)


# --- the load generator ----------------------------------------------------------------------


@dataclasses.dataclass
class _Totals:
    latencies: list[float] = dataclasses.field(default_factory=list)
    untrusted: int = 0
    errors: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class _SoftNode:
    """One node's side of a round: its AK and its TPM clock."""

    def __init__(self, seed: bytes, name: str) -> None:
        self.name = name
        self.ak = SoftAk(key=node_key(seed, name))
        self.clock = SOFT_CLOCK

    def evidence(self, nonce: bytes, selection: str) -> bytes:
        self.clock += 1000
        sel, values, hexed = _quoted(selection)
        message = quote_attest(nonce, sel, values, ClockInfo(self.clock, 7, 0, True)).marshal()
        return (
            Evidence(
                nonce=nonce,
                quote=message,
                signature=self.ak.sign(message).marshal(),
                pcrs=hexed,
                eventlog=boot().log,
            )
            .model_dump_json()
            .encode()
        )


@cache
def _quoted(selection: str) -> tuple[PcrSelection, PcrValues, dict[str, dict[int, str]]]:
    """The boot's PCR values a challenge's selection asks for (the same every round)."""
    sel = PcrSelection.parse(selection)
    values = PcrValues({b: dict(v) for b, v in boot().pcrs.items()}).restrict(sel)
    return sel, values, {b: {i: v.hex() for i, v in vs.items()} for b, vs in values.items()}


def _rounds(
    url: str, context: ssl.SSLContext, nodes: Sequence[_SoftNode], end: float, totals: _Totals
) -> None:
    import base64

    import httpx

    json_type = {"content-type": "application/json"}
    with httpx.Client(base_url=url, verify=context, timeout=30, trust_env=False) as client:
        i = 0
        while (began := time.time()) < end:
            node = nodes[i % len(nodes)]
            i += 1
            t0 = time.perf_counter()
            try:
                r = client.post(f"/v1/nodes/{node.name}/challenge")
                r.raise_for_status()
                challenge = r.json()
                body = node.evidence(base64.b64decode(challenge["nonce"]), challenge["selection"])
                r = client.post(f"/v1/nodes/{node.name}/evidence", content=body, headers=json_type)
                r.raise_for_status()
                trusted = bool(r.json()["trusted"])
            except (httpx.HTTPError, ValueError, KeyError) as e:
                with totals.lock:
                    totals.errors += 1
                print(f"round failed: {e!r}", file=sys.stderr, flush=True)
                time.sleep(0.05)
                continue
            elapsed = time.perf_counter() - t0
            if began + elapsed > end:
                break  # finished after the window: not counted
            with totals.lock:
                if trusted:
                    totals.latencies.append(elapsed)
                else:
                    totals.untrusted += 1


def load(spec: dict[str, Any]) -> int:
    """spec: verifier URL, ca_cert, seed (hex), nodes (names), concurrency, cpus (or none)."""
    from bench.e2e import rss_kb

    if spec.get("cpus"):
        os.sched_setaffinity(0, set(spec["cpus"]))
    seed = bytes.fromhex(spec["seed"])
    nodes = [_SoftNode(seed, name) for name in spec["nodes"]]
    context = ssl.create_default_context(cafile=spec["ca_cert"])
    concurrency = max(1, min(int(spec["concurrency"]), len(nodes)))
    shares = [nodes[k::concurrency] for k in range(concurrency)]
    totals = _Totals()
    print("ready", flush=True)
    start, end = map(float, sys.stdin.readline().split())
    time.sleep(max(0.0, start - time.time()))
    threads = [
        threading.Thread(target=_rounds, args=(spec["verifier"], context, share, end, totals))
        for share in shares
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = {
        "latencies": totals.latencies,
        "untrusted": totals.untrusted,
        "errors": totals.errors,
        "rss_kb": rss_kb(os.getpid()),
        "hwm_kb": rss_kb(os.getpid(), "VmHWM"),
    }
    print(json.dumps(result), flush=True)
    return 0


def new_seed() -> bytes:
    return secrets.token_bytes(16)


if __name__ == "__main__":
    raise SystemExit(load(json.loads(sys.argv[1])))
