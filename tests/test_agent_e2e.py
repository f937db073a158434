"""End to end: `attest-agent` processes against an `attest-verifier serve` process, over real TLS,
with real software TPMs booted through a simulated measured boot.

The verifier trusts the swtpm local CA as the EK manufacturer; its reference policy is made
from the good node's own evidence (attest.verify.policy.create_policy) and applied through the
admin API, as an operator would with attestctl. Every test runs once with the verifier on
SQLite and once on PostgreSQL (`store_url`, tests/pg.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from attest.store.api import AuditRecord
from attest.store.audit import verify_chain
from attest.verify import eventlog
from attest.verify import ima as imalib
from attest.verify.policy import create_policy, dump_policy
from attest.wire import AuditRecordOut, NodeOut
from swtpm.measuredboot import BootProfile
from tests.pg import PgServer
from tests.swtpm_node import SwtpmNode
from tests.test_agent_client import Pki, make_pki

pytestmark = pytest.mark.swtpm

AGENT = [sys.executable, "-m", "attest.agent.cli"]
VERIFIER = [sys.executable, "-c", "from webhook.cli import main; raise SystemExit(main())"]
# Files the nodes execute after boot; the reference policy allows them.
LATER_FILES = [
    ("/usr/bin/crictl", b"simulated crictl 1.31"),
    ("/usr/sbin/iptables", b"simulated iptables 1.8"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(
    what: str, predicate: Callable[[], bool], timeout: float, on_timeout: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{on_timeout()}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[Any], timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class Verifier:
    """`attest-verifier serve` as a subprocess: its store at the URL `database` (a SQLite file in
    `dir` if None), TLS from `pki`, the same port across restarts."""

    dir: Path
    pki: Pki
    ek_ca: Any  # swtpm.provision.LocalCa
    database: str | None = None
    flags: tuple[str, ...] = ()  # more `serve` options
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def token_file(self) -> Path:
        return self.dir / "admin.token"

    @property
    def log(self) -> Path:
        return self.dir / "verifier.log"

    def start(self, database: str | None = None) -> None:
        self.database = database or self.database or f"sqlite:///{self.dir / 'verifier.db'}"
        if not self.token_file.exists():
            self.token_file.write_text(secrets.token_urlsafe(32) + "\n")
            self.token_file.chmod(0o600)
        argv = [
            *VERIFIER,
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--tls-cert",
            str(self.pki.server_cert),
            "--tls-key",
            str(self.pki.server_key),
            "--database",
            self.database,
            "--ek-roots",
            str(self.ek_ca.root_cert),
            "--ek-intermediates",
            str(self.ek_ca.intermediate_cert),
            "--admin-token-file",
            str(self.token_file),
            *self.flags,
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        _wait_for("the verifier to be ready", self._ready, 30, self.tail)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the verifier exited with {self.proc.returncode}\n{self.tail()}")
        try:
            with httpx.Client(verify=_tls(self.pki)) as c:
                return c.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a node losing power or the OOM killer: nothing in flight gets to finish."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def tail(self) -> str:
        return "verifier log:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def admin(self) -> httpx.Client:
        token = self.token_file.read_text().strip()
        return httpx.Client(
            base_url=self.url, verify=_tls(self.pki), headers={"authorization": f"Bearer {token}"}, timeout=10
        )

    def apply_policy(self, text: str) -> None:
        with self.admin() as c:
            resp = c.post("/v1/admin/policies", json={"text": text})
        assert resp.status_code == 200, resp.text

    def nodes(self) -> dict[str, NodeOut]:
        with self.admin() as c:
            resp = c.get("/v1/admin/nodes")
        assert resp.status_code == 200, resp.text
        return {n.name: n for n in map(NodeOut.model_validate, resp.json())}

    def audit(self) -> list[AuditRecord]:
        """The whole audit trail through the admin API, page by page, as `attestctl audit export`."""
        records: list[AuditRecord] = []
        with self.admin() as c:
            while True:
                resp = c.get("/v1/admin/audit", params={"after": records[-1].seq if records else 0})
                assert resp.status_code == 200, resp.text
                if not (page := [AuditRecordOut.model_validate(r) for r in resp.json()]):
                    return records
                records += [AuditRecord(r.seq, r.at, r.kind, r.subject, r.data, r.prev, r.hash) for r in page]


def _tls(pki: Pki) -> Any:
    import ssl

    return ssl.create_default_context(cafile=str(pki.ca_cert))


@pytest.fixture
def verifier(tmp_path: Path, swtpm_ca: Any, store_url: str) -> Iterator[Verifier]:
    v = Verifier(tmp_path / "verifier", make_pki(tmp_path / "verifier" / "tls"), swtpm_ca, store_url)
    try:
        v.start()
        yield v
    finally:
        v.stop()


@dataclass(kw_only=True)
class Node(SwtpmNode):
    """A named node: a booted swtpm, the files securityfs would show for it, its agent's state."""

    name: str

    @property
    def state(self) -> Path:
        return self.dir / "agent-state"

    def policy(self) -> str:
        assert self.ima_log is not None
        log = eventlog.parse(self.log)
        entries = imalib.parse(self.ima_log.with_files(LATER_FILES).text().encode()).entries
        return dump_policy(create_policy("default", log, eventlog.replay(log).pcrs, entries, with_ima=True))

    def args(self, verifier: Verifier, *extra: str) -> list[str]:
        return [
            "--verifier",
            verifier.url,
            "--ca-cert",
            str(verifier.pki.ca_cert),
            "--node",
            self.name,
            "--tcti",
            self.tpm.tcti,
            "--state-dir",
            str(self.state),
            "--eventlog",
            str(self.eventlog),
            "--ima",
            str(self.ima),
            "--boot-id-file",
            str(self.boot_id),
            "--container-log",
            str(self.container_log),
            *extra,
        ]


def _node(name: str, tpm: Any, tmp_path: Path, profile: BootProfile | None = None) -> Node:
    node = Node(tpm, tmp_path / name, profile or BootProfile(), name=name)
    node.dir.mkdir()
    node.boot()
    return node


def _once(node: Node, verifier: Verifier) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, "once", *node.args(verifier)], capture_output=True, text=True, timeout=60, check=False
    )


def test_once_exits_0_for_a_good_node_and_1_with_the_failed_rule_for_an_altered_kernel(
    verifier: Verifier, swtpm_factory: Any, tmp_path: Path
) -> None:
    (good_tpm,) = swtpm_factory(1)
    (bad_tpm,) = swtpm_factory(1, distinct=True)  # its own EK: one TPM cannot be two nodes
    good = _node("good-node", good_tpm, tmp_path)
    bad = _node("bad-node", bad_tpm, tmp_path, BootProfile().with_kernel(b"vmlinuz with a rootkit"))
    verifier.apply_policy(good.policy())

    result = _once(good, verifier)
    assert result.returncode == 0, result.stdout + result.stderr + verifier.tail()
    assert result.stdout.startswith("good-node: trusted until ")
    assert "event=enrolled" in result.stderr

    result = _once(bad, verifier)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("bad-node: untrusted")
    assert "[boot/" in result.stdout  # the policy rule that failed is named
    assert "Traceback" not in result.stderr

    # Enrolled once: the second run only attests.
    result = _once(good, verifier)
    assert result.returncode == 0
    assert "event=enroll" not in result.stderr


def test_once_exits_2_when_the_verifier_is_unreachable_or_untrusted(
    verifier: Verifier, swtpm: Any, tmp_path: Path
) -> None:
    node = _node("node-1", swtpm, tmp_path)
    other = make_pki(tmp_path / "other-ca")
    argv = node.args(verifier)
    argv[argv.index("--ca-cert") + 1] = str(other.ca_cert)
    result = subprocess.run([*AGENT, "once", *argv], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "TLS failed: unable to get local issuer certificate" in result.stderr
    verifier.stop()
    result = _once(node, verifier)
    assert result.returncode == 2
    assert "attest-agent: error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_tpm_without_ek_certificate_enrolls_once_an_operator_vouches_for_its_ek(
    verifier: Verifier, swtpm: Any, tmp_path: Path
) -> None:
    from tpm2_pytss import ESYS_TR

    from attest.tpm import Tpm
    from attest.tpm.ek import EK_CERT_INDICES

    with Tpm(swtpm.tcti) as tpm:  # as many firmware TPMs ship: no certificate in NV
        handle = tpm.esapi.tr_from_tpmpublic(EK_CERT_INDICES["EK-RSA2048"])
        tpm.esapi.nv_undefine_space(handle, auth_handle=ESYS_TR.RH_PLATFORM)
    node = _node("node-1", swtpm, tmp_path)
    verifier.apply_policy(node.policy())
    argv = [*AGENT, "once", *node.args(verifier, "--ek-kind", "EK-RSA2048")]

    refused = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2
    assert "[ek_not_enrolled, HTTP 403]" in refused.stderr
    ek_pem = node.state / "ek.pem"
    assert f"attestctl ek enroll --node node-1 --ek-pub {ek_pem}" in refused.stderr

    env = {
        **os.environ,
        "ATTEST_VERIFIER": verifier.url,
        "ATTEST_CA_CERT": str(verifier.pki.ca_cert),
        "ATTEST_TOKEN_FILE": str(verifier.token_file),
    }
    attestctl = [sys.executable, "-c", "from attest.cli.main import main; raise SystemExit(main())"]
    vouched = subprocess.run(
        [*attestctl, "ek", "enroll", "--node", "node-1", "--ek-pub", str(ek_pem)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert vouched.returncode == 0, vouched.stderr

    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"ek_certificate": false' in result.stderr or "ek_certificate=false" in result.stderr


class AgentProcess:
    """`attest-agent run` with JSON logs collected from stderr."""

    def __init__(self, node: Node, verifier: Verifier, log: Path, *extra: str) -> None:
        self.log = log
        self.skip = len(self.events())
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *AGENT,
                    "run",
                    *node.args(
                        verifier, "--interval", "0.5", "--max-backoff", "2", "--log-format", "json", *extra
                    ),
                ],
                stdout=subprocess.DEVNULL,
                stderr=out,
            )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        docs = [json.loads(line) for line in lines]
        return [d for d in docs if name is None or d["event"] == name]

    def new(self, name: str) -> list[dict[str, Any]]:
        return [d for d in self.events()[self.skip :] if d["event"] == name]

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 30) -> None:
        _wait_for(what, predicate, timeout, lambda: "agent log:\n" + self.log.read_text()[-4000:])

    def mark(self) -> None:
        self.skip = len(self.events())

    def verdicts(self) -> list[dict[str, Any]]:
        return self.new("verdict")


def _when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _restart_loses_nothing(verifier: Verifier, agent: AgentProcess, stop: Callable[[], None]) -> None:
    """`stop` the verifier while the agent runs, start it again on the same database: every
    enrollment, every verdict the agent was told of and every audit record is still there, the
    audit chain intact, and the agent recovers by itself, without enrolling again."""
    nodes, audit = verifier.nodes(), verifier.audit()
    agent.mark()
    stop()
    agent.wait("failed rounds", lambda: len(agent.new("round.failed")) >= 2)
    assert {f["error"] for f in agent.new("round.failed")} == {"VerifierUnreachable"}
    # The verifier is down: every verdict the agent logged was acknowledged before it went.
    acknowledged = {_when(v["expires_at"]) for v in agent.events("verdict")}
    assert acknowledged
    agent.mark()
    verifier.start()

    after_nodes, after_audit = verifier.nodes(), verifier.audit()  # the agent may add to both
    assert verify_chain(after_audit) == []
    assert after_audit[: len(audit)] == audit
    assert [(r.kind, r.subject) for r in after_audit].count(("enroll", "node-1")) == 1
    stored = {_when(r.data["expires_at"]) for r in after_audit if r.kind == "verdict"}
    assert acknowledged <= stored, sorted(acknowledged - stored)
    assert after_nodes.keys() == nodes.keys() == {"node-1"}
    before, after = nodes["node-1"], after_nodes["node-1"]
    assert (after.ek_fingerprint, after.ak_name, after.policy) == (
        before.ek_fingerprint,
        before.ak_name,
        before.policy,
    )
    assert before.last_verdict_at is not None
    assert after.last_verdict_at is not None
    assert after.last_verdict_at >= before.last_verdict_at
    assert after.expires_at is not None
    assert after.expires_at >= max(acknowledged)

    agent.wait("a verdict after the restart", lambda: bool(agent.verdicts()))
    assert agent.verdicts()[0]["trusted"]
    assert not agent.new("enroll.start")


@pytest.fixture
def another_database(store_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A second, empty database on the backend of `store_url`: the verifier's first one lost."""
    if store_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    pg: PgServer = request.getfixturevalue("pg_server")
    name = pg.create_database()
    yield pg.url(name)
    if pg.running:
        pg.drop_database(name)


def test_run_attests_incrementally_survives_reboots_and_verifier_restarts(
    another_database: str, verifier: Verifier, swtpm: Any, tmp_path: Path
) -> None:
    node = _node("node-1", swtpm, tmp_path)
    verifier.apply_policy(node.policy())
    log = tmp_path / "agent.log"
    agent = AgentProcess(node, verifier, log)
    try:
        assert node.ima_log is not None
        booted = len(node.ima_log.entries)
        agent.wait("a first trusted verdict", lambda: any(v["trusted"] for v in agent.verdicts()))
        first = agent.verdicts()[0]
        assert first["trusted"], first
        assert (first["ima_offset"], first["ima_sent"]) == (0, booted)

        # Incremental IMA: the next rounds send only what was executed since.
        agent.mark()
        node.execute(LATER_FILES)
        agent.wait(
            "a round after the new IMA entries were accepted",
            lambda: any(v["ima_offset"] == booted + 2 for v in agent.verdicts()),
        )
        sent = [v for v in agent.verdicts() if v["ima_sent"]]
        assert all(v["trusted"] for v in agent.verdicts()), agent.verdicts()
        # (Twice if a round quoted between the list growing and PCR 10 being extended: the
        # verifier then keeps the entries the quote does not cover pending for the next round.)
        assert {(v["ima_offset"], v["ima_sent"]) for v in sent} == {(booted, 2)}
        assert sent[-1]["ima_accepted"] == booted + 2

        # The verifier goes away mid-run, stopped as Kubernetes stops a pod (SIGTERM) and then
        # killed (SIGKILL), and comes back on the same database: nothing is lost, and the agent
        # backs off and recovers by itself.
        _restart_loses_nothing(verifier, agent, verifier.stop)
        _restart_loses_nothing(verifier, agent, verifier.kill)

        # Its database is lost: the verifier no longer knows the node, and the agent enrolls again.
        agent.mark()
        verifier.stop()
        verifier.start(another_database)
        verifier.apply_policy(node.policy())
        agent.wait("enrollment again", lambda: bool(agent.new("enrolled")), timeout=30)
        agent.wait("a trusted verdict after it", lambda: any(v["trusted"] for v in agent.verdicts()))
        assert agent.new("enroll.lost")

        start = time.monotonic()
        assert _stop(agent.proc) == 0
        assert time.monotonic() - start < 5
        assert agent.events()[-1]["event"] == "agent.stopped"

        # A reboot: the TPM resets, the logs start over, the agent starts again with its state.
        node.boot()
        agent = AgentProcess(node, verifier, log)
        agent.wait("a verdict after the reboot", lambda: bool(agent.verdicts()))
        (detected,) = agent.new("reboot.detected")
        assert "reboot detected" in detected["message"]
        after = agent.verdicts()[0]
        assert after["trusted"], after
        assert after["reboot"]
        assert (after["ima_offset"], after["ima_sent"]) == (0, len(node.ima_log.entries))
        assert not agent.new("enroll.start")  # the AK survived the restart and the reboot

        start = time.monotonic()
        assert _stop(agent.proc) == 0
        assert time.monotonic() - start < 5
    finally:
        with contextlib.suppress(Exception):
            _stop(agent.proc)
    text = log.read_text()
    assert "Traceback" not in text
    assert all(json.loads(line)["level"] in ("debug", "info", "warning") for line in text.splitlines())
