"""The agent with real software TPMs, against an in-process verifier double.

The double answers the agent API with the project's own verification code (MakeCredential,
quote verification, appraisal with incremental IMA replay) and lets each test decide what the
verifier remembers: a reset database, a forgotten node. It answers over real HTTPS on loopback
(tests/https_stub.py); tests/test_agent_e2e.py runs the real verifier.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from attest.agent.client import VerifierClient
from attest.agent.daemon import Agent, AgentConfig, make_event_log
from attest.agent.measure import measure_container
from attest.agent.state import AK_FILE, BOOT_FILE, ENROLLMENT_FILE, Enrollment
from attest.containerlog import ContainerRecord
from attest.pcrselect import PcrSelection
from attest.verify import appraise, ima
from attest.verify.credential import check_activation, make_credential
from attest.verify.pcrs import PcrValues
from attest.verify.quote import ak_name, load_ak
from attest.verify.tpmstructs import ClockInfo
from attest.wire import (
    ActivateRequest,
    Challenge,
    EnrollChallenge,
    EnrollRequest,
    EnrollResult,
    ErrorOut,
    Evidence,
    ReasonOut,
    VerdictOut,
)
from swtpm.measuredboot import BootProfile
from tests.https_stub import serve
from tests.swtpm_node import SwtpmNode
from tests.test_agent_client import Pki, make_pki

pytestmark = pytest.mark.swtpm


@dataclass
class _Node:
    ak_public: bytes
    clock: ClockInfo | None = None
    ima_state: ima.ReplayState | None = None


@dataclass
class VerifierDouble:
    selection: str = "sha256:0-10"
    nodes: dict[str, _Node] = field(default_factory=dict)
    pending: dict[str, tuple[str, bytes, bytes]] = field(default_factory=dict)  # id -> node, AK, secret
    nonces: dict[bytes, str] = field(default_factory=dict)
    seen: list[tuple[str, Any]] = field(default_factory=list)
    verdicts: list[appraise.Verdict] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.removeprefix("/v1/").split("/")
        now = dt.datetime.now(dt.UTC)
        if parts == ["enroll"]:
            enroll = EnrollRequest.model_validate_json(request.content)
            self.seen.append(("enroll", enroll))
            secret = os.urandom(16)
            cred = make_credential(enroll.ek_public, ak_name(enroll.ak_public), secret)
            eid = uuid.uuid4().hex
            self.pending[eid] = (enroll.node, enroll.ak_public, secret)
            out: Any = EnrollChallenge(
                enrollment_id=eid,
                credential_blob=cred.id_object,
                encrypted_secret=cred.encrypted_secret,
                expires_at=now,
            )
        elif parts[0] == "enroll":
            node, ak_public, secret = self.pending.pop(parts[1])
            check_activation(secret, ActivateRequest.model_validate_json(request.content).secret)
            self.nodes[node] = _Node(ak_public)
            out = EnrollResult(node=node, ak_name=ak_name(ak_public).hex(), enrolled_at=now)
        elif parts[2] == "challenge":
            node = parts[1]
            if node not in self.nodes:
                return _error(404, "ak_not_bound", f"no AK bound to {node}")
            nonce = os.urandom(32)
            self.nonces[nonce] = node
            state = self.nodes[node].ima_state
            out = Challenge(
                nonce=nonce, selection=self.selection, expires_at=now, ima_offset=state.offset if state else 0
            )
            self.seen.append(("challenge", out))
        else:
            out = self._evidence(parts[1], Evidence.model_validate_json(request.content), now)
        return httpx.Response(200, content=out.model_dump_json())

    def _evidence(self, node: str, evidence: Evidence, now: dt.datetime) -> VerdictOut:
        self.seen.append(("evidence", evidence))
        assert self.nonces.pop(evidence.nonce) == node
        bound = self.nodes[node]
        verdict = appraise.appraise(
            appraise.Evidence(
                attest=evidence.quote,
                signature=evidence.signature,
                pcrs=PcrValues(
                    {b: {i: bytes.fromhex(v) for i, v in vs.items()} for b, vs in evidence.pcrs.items()}
                ),
                eventlog=evidence.eventlog,
                ima=evidence.ima,
                container_log=evidence.container_log,
            ),
            appraise.Expectations(
                ak=load_ak(bound.ak_public),
                nonce=evidence.nonce,
                selection=PcrSelection.parse(self.selection),
                previous_clock=bound.clock,
                # The agent restarts the list at 0 after a reboot: so does the replay.
                ima_state=bound.ima_state if evidence.ima_offset else None,
            ),
        )
        self.verdicts.append(verdict)
        bound.clock = verdict.clock or bound.clock
        bound.ima_state = verdict.ima_state or bound.ima_state
        return VerdictOut(
            node=node,
            trusted=verdict.trusted,
            reasons=[ReasonOut(**f.to_json()) for f in verdict.findings],  # type: ignore[arg-type]
            appraised_at=now,
            expires_at=now if verdict.trusted else None,
            reboot=verdict.reboot,
            ima_offset=bound.ima_state.offset if bound.ima_state else 0,
        )

    def requests(self, kind: str) -> list[Any]:
        return [body for k, body in self.seen if k == kind]


def _error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, content=ErrorOut(code=code, message=message).model_dump_json())


@pytest.fixture
def node(swtpm: Any, tmp_path: Path) -> SwtpmNode:
    n = SwtpmNode(swtpm, tmp_path / "node")
    n.dir.mkdir()
    n.boot()
    return n


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Https:
    """Each verifier double served over TLS once, for the test's length; its URL."""

    pki: Pki
    stack: ExitStack
    urls: dict[int, str] = field(default_factory=dict)

    def url(self, verifier: VerifierDouble) -> str:
        if id(verifier) not in self.urls:
            served = serve(self.pki.server_cert, self.pki.server_key, verifier.handler)
            self.urls[id(verifier)] = self.stack.enter_context(served)
        return self.urls[id(verifier)]


@pytest.fixture
def https(pki: Pki) -> Iterator[Https]:
    with ExitStack() as stack:
        yield Https(pki, stack)


def _agent(node: SwtpmNode, verifier: VerifierDouble, https: Https, state: Path) -> tuple[Agent, io.StringIO]:
    config = AgentConfig(
        verifier=https.url(verifier),
        ca_cert=https.pki.ca_cert,
        node="node-1",
        tcti=node.tpm.tcti,
        state_dir=state,
        eventlog=node.eventlog,
        ima=node.ima,
        boot_id_file=node.boot_id,
        container_log=node.container_log,
    )
    client = VerifierClient(config.verifier, config.ca_cert)
    out = io.StringIO()
    return Agent(config, client, make_event_log("json", "debug", out)), out


def _events(out: io.StringIO, name: str) -> list[dict[str, Any]]:
    return [d for d in map(json.loads, out.getvalue().splitlines()) if d["event"] == name]


def test_enrolls_once_and_reuses_the_ak_across_restarts(
    node: SwtpmNode, https: Https, tmp_path: Path
) -> None:
    verifier = VerifierDouble()
    state = tmp_path / "state"
    agent, out = _agent(node, verifier, https, state)
    verdict = agent.attest()
    assert verdict.trusted, verdict.reasons
    enroll = verifier.requests("enroll")[0]
    assert enroll.ek_certificate is not None  # the RSA EK certificate, preferred
    assert _events(out, "enroll.start")[0]["ek_kind"] == "EK-RSA2048"
    for name in (AK_FILE, ENROLLMENT_FILE, BOOT_FILE):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    enrolled = Enrollment.load(state)
    assert enrolled is not None
    assert enrolled.ak_name == ak_name(enroll.ak_public).hex()

    restarted, out = _agent(node, verifier, https, state)
    assert restarted.attest().trusted
    assert restarted.attest().trusted
    assert len(verifier.requests("enroll")) == 1
    assert not _events(out, "enroll.start")
    assert _loaded_handles(node.tpm.tcti) == []


def _loaded_handles(tcti: str) -> list[int]:
    """Transient objects and sessions left in the TPM (swtpm has no resource manager to flush them)."""
    from tpm2_pytss import TPM2_CAP, TPM2_HT

    from attest.tpm import Tpm

    out: list[int] = []
    with Tpm(tcti) as tpm:
        for ht in (TPM2_HT.TRANSIENT, TPM2_HT.LOADED_SESSION, TPM2_HT.SAVED_SESSION):
            _, data = tpm.esapi.get_capability(TPM2_CAP.HANDLES, ht << 24, 64)
            out += [int(h) for h in data.data.handles]
    return out


def test_ima_goes_incrementally_and_whole_after_a_reboot(
    node: SwtpmNode, https: Https, tmp_path: Path
) -> None:
    verifier = VerifierDouble()
    agent, out = _agent(node, verifier, https, tmp_path / "state")
    first = len(node.ima_log.entries)
    assert agent.attest().trusted
    node.execute([(p, p.encode()) for p in ("/usr/bin/crictl", "/usr/sbin/iptables")])
    verdict = agent.attest()
    assert verdict.trusted, verdict.reasons
    assert verdict.ima_offset == first + 2
    evidence = verifier.requests("evidence")
    assert [e.ima_offset for e in evidence] == [0, first]
    assert len(ima.parse(evidence[1].ima).entries) == 2
    assert _events(out, "verdict")[-1]["ima_sent"] == 2

    # Nothing new: an empty list from the verifier's offset, still judged against PCR 10.
    assert agent.attest().trusted
    assert verifier.requests("evidence")[-1].ima == b""

    node.boot()  # new boot id, PCRs reset, a shorter IMA list
    tools = [f"/opt/bin/tool{i}" for i in range(5)]
    node.execute([(p, p.encode()) for p in tools])  # ...now longer than before
    assert verifier.requests("challenge")[-1].ima_offset == first + 2
    verdict = agent.attest()
    assert verdict.trusted, verdict.reasons
    assert verdict.reboot
    assert verifier.requests("evidence")[-1].ima_offset == 0
    assert len(ima.parse(verifier.requests("evidence")[-1].ima).entries) == len(node.ima_log.entries)
    (reboot,) = _events(out, "reboot.detected")
    assert "reboot detected" in reboot["message"]
    assert agent.attest().trusted
    assert verifier.requests("evidence")[-1].ima_offset == len(node.ima_log.entries)


def test_enrolls_again_when_the_verifier_forgets_the_node(
    node: SwtpmNode, https: Https, tmp_path: Path
) -> None:
    verifier = VerifierDouble()
    agent, out = _agent(node, verifier, https, tmp_path / "state")
    assert agent.attest().trusted
    verifier.nodes.clear()  # its database was reset
    assert agent.attest().trusted
    assert len(verifier.requests("enroll")) == 2
    assert _events(out, "enroll.lost")


def test_a_new_verifier_or_node_name_means_a_new_enrollment(
    node: SwtpmNode, https: Https, tmp_path: Path
) -> None:
    verifier = VerifierDouble()
    state = tmp_path / "state"
    agent, _ = _agent(node, verifier, https, state)
    assert agent.attest().trusted
    enrolled = Enrollment.load(state)
    assert enrolled is not None
    Enrollment(
        enrolled.node, "https://old-verifier.test", enrolled.ak_name, enrolled.ek_kind, enrolled.enrolled_at
    ).save(state)
    agent, _ = _agent(node, verifier, https, state)
    assert agent.attest().trusted
    assert len(verifier.requests("enroll")) == 2
    # The same AK both times: only the binding was redone.
    assert verifier.requests("enroll")[0].ak_public == verifier.requests("enroll")[1].ak_public


def test_a_cleared_tpm_gets_a_new_ak_and_enrolls_again(node: SwtpmNode, https: Https, tmp_path: Path) -> None:
    from tpm2_pytss import ESYS_TR

    from attest.tpm import Tpm

    verifier = VerifierDouble()
    agent, out = _agent(node, verifier, https, tmp_path / "state")
    assert agent.attest().trusted
    with Tpm(node.tpm.tcti) as tpm:
        tpm.esapi.clear(ESYS_TR.RH_LOCKOUT)  # a new storage seed: the AK blob no longer loads
    # The running agent's first round fails in the TPM; the next one notices the AK is gone.
    with pytest.raises(Exception, match="attestation key"):
        agent.attest()
    assert agent.attest().trusted
    enrolls = verifier.requests("enroll")
    assert len(enrolls) == 2
    assert enrolls[0].ak_public != enrolls[1].ak_public
    (replaced,) = _events(out, "ak.replaced")
    assert replaced["level"] == "error"
    assert "cleared" in replaced["message"]
    assert _loaded_handles(node.tpm.tcti) == []


def test_an_altered_kernel_is_untrusted_with_its_reasons(swtpm: Any, https: Https, tmp_path: Path) -> None:
    """Without a policy the double appraises integrity only; lying about the event log is
    what an altered node can do, and it shows as a replay mismatch."""
    node = SwtpmNode(swtpm, tmp_path / "node", BootProfile().with_kernel(b"a kernel with a rootkit"))
    node.dir.mkdir()
    node.boot()
    honest_log = node.eventlog.read_bytes()
    node.eventlog.write_bytes(boot_log_of(BootProfile()))
    agent, out = _agent(node, VerifierDouble(), https, tmp_path / "state")
    verdict = agent.attest()
    assert not verdict.trusted
    assert "eventlog_replay_mismatch" in {r.code for r in verdict.reasons}
    (logged,) = _events(out, "verdict")
    assert logged["level"] == "warning"
    assert logged["reasons"][0]["code"]
    node.eventlog.write_bytes(honest_log)
    assert agent.attest().trusted


def boot_log_of(profile: BootProfile) -> bytes:
    from swtpm.measuredboot import simulate_boot

    return simulate_boot(profile).log


def _container(n: int) -> ContainerRecord:
    return ContainerRecord(
        time="2026-11-28T17:00:00Z",
        container_id=f"{n:02x}" * 32,
        pod="shop-7d9c4b6f5-x2x9q",
        namespace="prod",
        container=f"web{n}",
        image="ghcr.io/acme/shop@sha256:" + "5b" * 32,
        image_digest="sha256:" + "5b" * 32,
        runtime="cri-o",
    )


def test_container_launches_go_with_the_evidence(node: SwtpmNode, https: Https, tmp_path: Path) -> None:
    verifier = VerifierDouble(selection="sha256:0-10,23")
    measure_container(_container(1), node.container_log, node.tpm.tcti)
    # A hook that crashed after appending its record, before extending PCR 23 with it:
    with node.container_log.open("ab") as f:
        f.write(_container(2).encode() + b"\n")
    agent, out = _agent(node, verifier, https, tmp_path / "state")
    verdict = agent.attest()
    assert verdict.trusted, verdict.reasons
    (repaired,) = _events(out, "container_log.repaired")
    assert repaired["extended"] == 1
    assert [c.record.container for c in verifier.verdicts[-1].containers] == ["web1", "web2"]
    assert _events(out, "verdict")[-1]["containers_sent"] == 2

    measure_container(_container(3), node.container_log, node.tpm.tcti)
    assert agent.attest().trusted
    assert len(verifier.verdicts[-1].containers) == 3
    assert not _events(out, "container_log.unreconciled")
