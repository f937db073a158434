"""kill -9 the verifier under load, repeatedly, on one database (SQLite, then PostgreSQL), and
prove from a client-side ledger that nothing acknowledged was lost and no nonce counted twice.

The load: one real `attest-agent run` on a swtpm, and load clients speaking the agent protocol
with software-TPM evidence (tests.webhook_support.SoftNode: each enrolls through a software
ActivateCredential, then attests in a loop), and an operator writing policies through the admin
API. The ledger holds every answer the verifier acknowledged (enrollment activated, verdict
returned 200, policy stored) and every acknowledged evidence body. `attest-verifier serve` is
SIGKILLed at random moments and started again on the same database several times. After:

- every acknowledged enrollment and verdict is in the store: each node's latest stored verdict
  is at least as new as the last one it was told of, and the audit trail holds every one;
- the audit chain verifies, and holds every acknowledged policy write;
- every acknowledged evidence body, sent again, is refused as nonce_reused: no nonce is accepted
  twice, however the kills fell.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.serialization import Encoding

from attest.store.audit import verify_chain
from attest.store.schema import nonces
from attest.verify.credential import Credential
from attest.verify.quote import ak_name
from attest.wire import Challenge, EnrollChallenge, VerdictOut
from tests.test_agent_client import make_pki
from tests.test_agent_e2e import AgentProcess, Verifier, _node, _stop, _when
from tests.test_credential import activate
from tests.webhook_support import SoftNode, TestCa, policy_text

KILLS = 3
SOFT_NODES = 3
_JSON = {"content-type": "application/json"}


@dataclass
class Ledger:
    """What the verifier acknowledged, as its clients saw it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    enrolled: set[str] = field(default_factory=set)
    verdicts: dict[str, list[VerdictOut]] = field(default_factory=dict)
    bodies: list[tuple[str, str]] = field(default_factory=list)  # (node, evidence JSON)
    policies: list[tuple[str, int]] = field(default_factory=list)  # (name, version)

    def acknowledged(self) -> int:
        with self.lock:
            return len(self.bodies) + len(self.policies)

    def more_than(self, count: int) -> Callable[[], bool]:
        return lambda: self.acknowledged() > count


def _client(verifier: Verifier) -> httpx.Client:
    trust = ssl.create_default_context(cafile=str(verifier.pki.ca_cert))
    return httpx.Client(base_url=verifier.url, verify=trust, timeout=5, trust_env=False)


def _enroll(client: httpx.Client, node: SoftNode) -> bool:
    r = client.post("/v1/enroll", content=node.enroll_request().model_dump_json(), headers=_JSON)
    if r.status_code != 200:
        return False
    challenge = EnrollChallenge.model_validate_json(r.content)
    credential = Credential(challenge.credential_blob, challenge.encrypted_secret)
    secret = activate(node.ek_key, node.ek, ak_name(node.ak.public), credential)
    body = {"secret": base64.b64encode(secret).decode()}
    r = client.post(f"/v1/enroll/{challenge.enrollment_id}/activate", json=body)
    return r.status_code == 200


def _load(verifier: Verifier, node: SoftNode, ledger: Ledger, stop: threading.Event) -> None:
    """One node's client: enroll (again, until acknowledged), then rounds until `stop`. Every
    transport error or non-200 is retried: the verifier is being killed under it."""
    enrolled = False
    with _client(verifier) as client:
        while not stop.is_set():
            try:
                if not enrolled:
                    enrolled = _enroll(client, node)
                    if enrolled:
                        with ledger.lock:
                            ledger.enrolled.add(node.name)
                    continue
                r = client.post(f"/v1/nodes/{node.name}/challenge")
                if r.status_code != 200:
                    stop.wait(0.05)
                    continue
                c = Challenge.model_validate_json(r.content)
                body = node.evidence(c.nonce, c.selection).model_dump_json()
                r = client.post(f"/v1/nodes/{node.name}/evidence", content=body, headers=_JSON)
                if r.status_code == 200:
                    with ledger.lock:
                        ledger.verdicts.setdefault(node.name, []).append(
                            VerdictOut.model_validate_json(r.content)
                        )
                        ledger.bodies.append((node.name, body))
            except httpx.HTTPError:
                stop.wait(0.05)


def _operator(verifier: Verifier, text: str, ledger: Ledger, stop: threading.Event) -> None:
    """An operator storing new versions of a spare policy: audited admin writes."""
    revision = 0
    while not stop.is_set():
        revision += 1  # the same text again would be the same version
        try:
            with verifier.admin() as admin:
                r = admin.post("/v1/admin/policies", json={"text": f"{text}\n# revision {revision}\n"})
            if r.status_code == 200:
                with ledger.lock:
                    ledger.policies.append((r.json()["name"], r.json()["version"]))
        except httpx.HTTPError:
            pass
        stop.wait(0.1)


@pytest.fixture
def verifier(tmp_path: Path, swtpm_ca: Any, store_url: str) -> Iterator[Verifier]:
    """tests/test_agent_e2e.py's verifier, trusting both the swtpm CA and the soft nodes' CA."""
    soft_ca = TestCa.create()
    roots = tmp_path / "ek-roots.pem"
    roots.write_bytes(swtpm_ca.root_cert.read_bytes() + soft_ca.root.cert.public_bytes(Encoding.PEM))
    intermediates = tmp_path / "ek-intermediates.pem"
    intermediates.write_bytes(
        swtpm_ca.intermediate_cert.read_bytes() + soft_ca.intermediate.cert.public_bytes(Encoding.PEM)
    )
    ek_ca = SimpleNamespace(root_cert=roots, intermediate_cert=intermediates, soft=soft_ca)
    # No rate limit: the load clients attest in a tight loop, and the replay sends every body at once.
    unlimited = ("--node-rate", "1000", "--node-burst", "1000")
    v = Verifier(tmp_path / "verifier", make_pki(tmp_path / "verifier" / "tls"), ek_ca, store_url, unlimited)
    try:
        v.start()
        yield v
    finally:
        v.stop()


def test_kill_9_under_load_loses_nothing_acknowledged_and_accepts_no_nonce_twice(
    verifier: Verifier, swtpm: Any, tmp_path: Path
) -> None:
    node = _node("agent-node", swtpm, tmp_path)
    verifier.apply_policy(node.policy())
    soft = [SoftNode(f"soft-{i}", verifier.ek_ca.soft) for i in range(SOFT_NODES)]
    spare = policy_text(soft[0].boot, name="spare")
    ledger, stop = Ledger(), threading.Event()
    agent = AgentProcess(node, verifier, tmp_path / "agent.log")
    threads = [threading.Thread(target=_load, args=(verifier, n, ledger, stop)) for n in soft]
    threads.append(threading.Thread(target=_operator, args=(verifier, spare, ledger, stop)))
    rng = random.Random()
    try:
        agent.wait("the agent's first verdict", lambda: bool(agent.verdicts()))
        for t in threads:
            t.start()
        for _ in range(KILLS):
            # Killed while the clients are at work: once some answer came since the last start.
            agent.wait("load on the verifier", ledger.more_than(ledger.acknowledged()))
            time.sleep(rng.uniform(0.0, 0.5))
            verifier.kill()
            verifier.start()
        agent.mark()
        agent.wait("the agent's recovery after the last kill", lambda: bool(agent.verdicts()))
        agent.wait(
            "a verdict for every load client", lambda: ledger.verdicts.keys() == {n.name for n in soft}
        )
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        with contextlib.suppress(Exception):
            _stop(agent.proc)

    agent_verdicts = agent.events("verdict")
    assert agent_verdicts, "the real agent got no verdict\n" + (tmp_path / "agent.log").read_text()[-3000:]
    assert ledger.enrolled == {n.name for n in soft}
    assert all(ledger.verdicts.get(n.name) for n in soft), ledger.verdicts.keys()
    assert ledger.policies

    nodes = verifier.nodes()
    audit = verifier.audit()
    assert verify_chain(audit) == []
    # An enrollment whose answer a kill cut off is repeated, so a node may have two records.
    bound = {"enrolled", "re-enrolled"}
    enrolled = {r.subject for r in audit if r.kind == "enroll" and r.data["outcome"] in bound}
    assert {*ledger.enrolled, "agent-node"} <= enrolled
    assert {*ledger.enrolled, "agent-node"} <= nodes.keys()

    verdicts = [r for r in audit if r.kind == "verdict"]
    for name, told in ledger.verdicts.items():
        stored = {_when(r.data["appraised_at"]) for r in verdicts if r.subject == name}
        appraised = {v.appraised_at for v in told}
        assert appraised <= stored, (name, sorted(appraised - stored))
        last = nodes[name].last_verdict_at
        assert last is not None
        assert last >= max(appraised), name
    # The agent logs when each verdict it was told of expires.
    acknowledged = {_when(v["expires_at"]) for v in agent_verdicts}
    stored = {
        _when(r.data["expires_at"]) for r in verdicts if r.subject == "agent-node" and r.data["expires_at"]
    }
    assert acknowledged <= stored, sorted(acknowledged - stored)
    expires = nodes["agent-node"].expires_at
    assert expires is not None
    assert expires >= max(acknowledged)

    stored_policies = {(r.subject, r.data["version"]) for r in audit if r.kind == "policy"}
    assert set(ledger.policies) <= stored_policies
    assert len(ledger.policies) == len(set(ledger.policies))

    # Replay: every nonce that was acknowledged once is refused now.
    with _client(verifier) as client:
        for name, body in ledger.bodies:
            r = client.post(f"/v1/nodes/{name}/evidence", content=body, headers=_JSON)
            assert r.status_code == 409, (name, r.status_code, r.text)
            assert r.json()["code"] == "nonce_reused", r.text
    assert verifier.audit() == audit  # the refusals changed nothing
    assert "Traceback" not in verifier.log.read_text()

    # In the store: a nonce is consumed in the transaction that records its verdict, so each
    # node has exactly as many verdicts in the audit trail as consumed nonces (none has expired
    # and been purged yet): a nonce that had counted twice would show as one verdict too many.
    assert verifier.database is not None
    engine = sa.create_engine(verifier.database)
    try:
        with engine.connect() as conn:
            n = nonces.c
            query = sa.select(n.node, sa.func.count()).where(n.consumed_at.is_not(None)).group_by(n.node)
            consumed = {node: int(count) for node, count in conn.execute(query).all()}
    finally:
        engine.dispose()
    recorded = collections.Counter(r.subject for r in verdicts)
    assert consumed == dict(recorded), (consumed, recorded)
