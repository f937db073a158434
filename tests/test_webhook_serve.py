"""`attest-verifier serve` as a real process: HTTPS on a free port, its store on SQLite and on
PostgreSQL (every test through `start_server` runs on both: `store_url`, tests/pg.py), called
with httpx verifying the server's certificate, and software TPMs (swtpm) doing the node's side
through attest.tpm: real EK certificates, real credential activation, real quotes."""

from __future__ import annotations

import base64
import dataclasses
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from attest.pcrselect import PcrSelection
from attest.tpm import Tpm, activate_credential, create_ak, create_ek, quote
from attest.tpm.ak import AttestationKey
from attest.verify import eventlog, ima
from attest.verify.policy import ContainerPolicy, create_policy, dump_policy
from attest.wire import MAX_EVIDENCE_BODY, Challenge, EnrollChallenge, EnrollRequest, Evidence, PolicyIn
from swtpm.instance import SwtpmInstance
from swtpm.measuredboot import boot, named_profile
from swtpm.provision import LocalCa
from tests.conftest import BootedTpm, SwtpmFactory
from tests.pg import PgServer
from tests.verifier_process import VERIFIER, Server, StartVerifier, clean_env
from tests.webhook_support import TestCa

TOKEN = "admin-token-for-the-serve-tests-0123"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}

StartServer = Callable[..., Server]


@pytest.fixture
def start_server(
    tmp_path: Path, swtpm_ca: LocalCa, start_verifier: StartVerifier, store_url: str
) -> StartServer:
    """The verifier trusting the swtpm CA's EK certificates, with the admin API on, its store on
    `store_url`: the test runs once on SQLite and once on PostgreSQL."""
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)

    def start(*extra: str, ek_roots: Path | None = None, env: dict[str, str] | None = None) -> Server:
        return start_verifier(
            "--ek-roots",
            str(ek_roots or swtpm_ca.root_cert),
            "--ek-intermediates",
            str(swtpm_ca.intermediate_cert),
            "--admin-token-file",
            str(token),
            *extra,
            database=store_url,
            env=env,
        )

    return start


@dataclass
class Node:
    """The node's side, as the agent does it, through attest.tpm on a swtpm."""

    name: str
    tpm: SwtpmInstance
    ak: AttestationKey | None = None

    def enroll(self, client: httpx.Client) -> httpx.Response:
        with Tpm(self.tpm.tcti) as tpm:
            self.ak = create_ak(tpm)
            with create_ek(tpm) as ek:
                kind, ek_public = ek.kind, ek.public
                cert = ek.certificate.der if ek.certificate else None
            request = EnrollRequest(
                node=self.name, ek_certificate=cert, ek_public=ek_public, ak_public=self.ak.public
            )
            r = client.post("/v1/enroll", content=request.model_dump_json(), headers=_JSON)
            if r.status_code != 200:
                return r
            challenge = EnrollChallenge.model_validate_json(r.content)
            secret = activate_credential(
                tpm, self.ak, challenge.credential_blob, challenge.encrypted_secret, kind
            )
        body = {"secret": base64.b64encode(secret).decode()}
        return client.post(f"/v1/enroll/{challenge.enrollment_id}/activate", json=body)

    def challenge(self, client: httpx.Client) -> Challenge:
        r = client.post(f"/v1/nodes/{self.name}/challenge")
        assert r.status_code == 200, r.text
        return Challenge.model_validate_json(r.content)

    def evidence(
        self,
        challenge: Challenge,
        *,
        ak: AttestationKey | None = None,
        logs: BootedTpm | None = None,
        container_log: bytes | None = None,
    ) -> str:
        signer = ak or self.ak
        assert signer is not None
        with Tpm(self.tpm.tcti) as tpm:
            q = quote(tpm, signer, challenge.nonce, PcrSelection.parse(challenge.selection))
        return Evidence(
            nonce=challenge.nonce,
            quote=q.attest,
            signature=q.signature,
            pcrs={b: {i: v.hex() for i, v in vs.items()} for b, vs in q.pcrs.items()},
            eventlog=logs.eventlog_path.read_bytes() if logs else None,
            ima=logs.ima_path.read_bytes() if logs else None,
            container_log=container_log,
        ).model_dump_json()


_JSON = {"content-type": "application/json"}


def put_policy(client: httpx.Client, booted: BootedTpm, images: tuple[str, ...] | None = None) -> None:
    """The reference policy, generated from the known-good node's own evidence."""
    log = eventlog.parse(booted.eventlog_path.read_bytes())
    entries = ima.parse(booted.ima_path.read_bytes()).entries
    policy = create_policy("default", log, eventlog.replay(log).pcrs, entries, with_ima=True)
    if images is not None:
        policy = dataclasses.replace(policy, containers=ContainerPolicy(images=images))
    body = PolicyIn(text=dump_policy(policy)).model_dump_json()
    r = client.post("/v1/admin/policies", headers={**ADMIN, **_JSON}, content=body)
    assert r.status_code == 200, r.text


def test_enroll_and_attest_a_real_tpm(start_server: StartServer, swtpm_booted: BootedTpm) -> None:
    server = start_server()
    node = Node("worker-1", swtpm_booted.tpm)
    with server.client() as client:
        put_policy(client, swtpm_booted)
        r = node.enroll(client)
        assert r.status_code == 200, r.text
        assert r.json()["node"] == "worker-1"

        challenge = node.challenge(client)
        body = node.evidence(challenge, logs=swtpm_booted)
        r = client.post("/v1/nodes/worker-1/evidence", content=body, headers=_JSON)
        assert r.status_code == 200, r.text
        verdict = r.json()
        assert verdict["trusted"] is True, verdict["reasons"]
        assert verdict["ima_offset"] == len(swtpm_booted.ima.entries)

        # The same evidence again, and a fresh quote over the spent nonce: both refused.
        r = client.post("/v1/nodes/worker-1/evidence", content=body, headers=_JSON)
        assert (r.status_code, r.json()["code"]) == (409, "nonce_reused")
        again = node.evidence(challenge, logs=swtpm_booted)
        r = client.post("/v1/nodes/worker-1/evidence", content=again, headers=_JSON)
        assert (r.status_code, r.json()["code"]) == (409, "nonce_reused")

        # Another AK of the same TPM, never enrolled: the quote proves nothing about the node.
        with Tpm(swtpm_booted.tpm.tcti) as tpm:
            other_ak = create_ak(tpm)
        before = client.get("/v1/admin/nodes/worker-1", headers=ADMIN).json()
        swapped = node.evidence(node.challenge(client), ak=other_ak, logs=swtpm_booted)
        r = client.post("/v1/nodes/worker-1/evidence", content=swapped, headers=_JSON)
        assert (r.status_code, r.json()["code"]) == (422, "quote_signature_invalid")
        after = client.get("/v1/admin/nodes/worker-1", headers=ADMIN).json()
        assert after == before
        assert after["state"] == "trusted"
        audit = client.get("/v1/admin/audit", headers=ADMIN).json()
        assert audit[-1]["kind"] == "rejected-evidence"

        assert client.get("/v1/admin/nodes").status_code == 401
        r = client.post("/v1/nodes/worker-1/evidence", content=b" " * (MAX_EVIDENCE_BODY + 1), headers=_JSON)
        assert (r.status_code, r.json()["code"]) == (413, "request_too_large")
        metrics = client.get("/metrics").text
        assert 'attest_attestations_total{reason="none",result="trusted"} 1.0' in metrics
        assert 'attest_nodes{state="trusted"} 1.0' in metrics
    assert server.stop() == 0


def test_container_launch_trail_is_replayed_and_judged(
    start_server: StartServer, swtpm_booted: BootedTpm, tmp_path: Path
) -> None:
    """Containers measured by the hook into PCR 23: the verifier replays the log against the
    quote and holds every image to the policy; what ran is kept with the verdict."""
    from attest.agent.measure import measure_container
    from attest.containerlog import ContainerRecord

    allowed = "sha256:" + "a1" * 32
    server = start_server("--pcrs", "sha256:0-10,23")
    node = Node("worker-1", swtpm_booted.tpm)
    log_path = tmp_path / "containers.log"

    def launch(name: str, digest: str) -> None:
        record = ContainerRecord(
            time="2026-11-28T12:00:00Z", container_id=name * 8, pod=f"{name}-pod", namespace="apps",
            container=name, image=f"registry.example/{name}@{digest}", image_digest=digest, runtime="cri-o",
        )  # fmt: skip
        measure_container(record, log_path, swtpm_booted.tpm.tcti)

    def attest() -> Any:
        body = node.evidence(node.challenge(client), logs=swtpm_booted, container_log=log_path.read_bytes())
        r = client.post("/v1/nodes/worker-1/evidence", content=body, headers=_JSON)
        assert r.status_code == 200, r.text
        return r.json()

    with server.client() as client:
        put_policy(client, swtpm_booted, images=(f"registry.example/*@{allowed}",))
        assert node.enroll(client).status_code == 200
        launch("web", allowed)
        verdict = attest()
        assert verdict["trusted"] is True, verdict["reasons"]
        ran = client.get("/v1/admin/nodes/worker-1", headers=ADMIN).json()["containers"]
        assert [(c["pod"], c["image_digest"]) for c in ran] == [("web-pod", allowed)]

        launch("miner", "sha256:" + "66" * 32)
        verdict = attest()
        assert verdict["trusted"] is False
        (reason,) = verdict["reasons"]
        assert reason["code"] == "policy_image_not_allowed"
        assert "miner" in reason["message"]

        # Dropping the offending record from the log: it no longer replays to the quoted PCR 23.
        lines = log_path.read_bytes().splitlines(keepends=True)
        log_path.write_bytes(lines[0])
        verdict = attest()
        assert [r["code"] for r in verdict["reasons"]] == ["containerlog_replay_mismatch"]


def test_altered_boot_is_untrusted(
    start_server: StartServer, swtpm_booted: BootedTpm, swtpm_factory: SwtpmFactory, tmp_path: Path
) -> None:
    server = start_server()
    (altered,) = swtpm_factory(1, distinct=True, startup=False)
    simulated = boot(altered, named_profile("altered-kernel"))
    node = Node("worker-2", altered)
    with server.client() as client:
        put_policy(client, swtpm_booted)
        assert node.enroll(client).status_code == 200
        challenge = node.challenge(client)
        eventlog_path = tmp_path / "altered.log"
        eventlog_path.write_bytes(simulated.log)
        with Tpm(altered.tcti) as tpm:
            assert node.ak is not None
            q = quote(tpm, node.ak, challenge.nonce, PcrSelection.parse(challenge.selection))
        evidence = Evidence(
            nonce=challenge.nonce,
            quote=q.attest,
            signature=q.signature,
            pcrs={b: {i: v.hex() for i, v in vs.items()} for b, vs in q.pcrs.items()},
            eventlog=simulated.log,
        )
        r = client.post("/v1/nodes/worker-2/evidence", content=evidence.model_dump_json(), headers=_JSON)
        assert r.status_code == 200, r.text
        verdict = r.json()
        assert verdict["trusted"] is False
        assert verdict["expires_at"] is None
        rules = {(x["code"], x.get("rule")) for x in verdict["reasons"]}
        assert ("policy_event_not_allowed", "boot/efi_applications") in rules
        state = client.get("/v1/admin/nodes/worker-2", headers=ADMIN).json()
        assert state["state"] == "untrusted"


def test_unknown_ek_and_untrusted_manufacturer_are_refused(
    start_server: StartServer, swtpm: SwtpmInstance, tmp_path: Path
) -> None:
    other_root = tmp_path / "other-root.pem"
    from cryptography.hazmat.primitives.serialization import Encoding

    other_root.write_bytes(TestCa.create("Another Vendor").root.cert.public_bytes(Encoding.PEM))
    server = start_server(ek_roots=other_root)
    with server.client() as client, Tpm(swtpm.tcti) as tpm:
        ak = create_ak(tpm)
        with create_ek(tpm) as ek:
            assert ek.certificate is not None
            certified = EnrollRequest(
                node="worker-3", ek_certificate=ek.certificate.der, ek_public=ek.public, ak_public=ak.public
            )
        r = client.post("/v1/enroll", content=certified.model_dump_json(), headers=_JSON)
        assert (r.status_code, r.json()["code"]) == (403, "ek_cert_untrusted")
        bare = certified.model_copy(update={"ek_certificate": None})
        r = client.post("/v1/enroll", content=bare.model_dump_json(), headers=_JSON)
        assert (r.status_code, r.json()["code"]) == (403, "ek_not_enrolled")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_database_unavailable_makes_the_verifier_unready(start_server: StartServer) -> None:
    server = start_server()
    with server.client() as client:
        assert client.get("/readyz").status_code == 200
        # What a lost volume or a corrupted file looks like to SQLite.
        for path in server.database.parent.glob(server.database.name + "*"):
            path.write_bytes(b"not a database " * 512)
        r = client.get("/readyz")
        assert (r.status_code, r.json()["code"]) == (503, "store_unavailable")
        r = client.post("/v1/nodes/worker-4/challenge")
        assert (r.status_code, r.json()["code"]) == (503, "store_unavailable")
        assert r.headers["retry-after"]
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_postgresql_down_makes_the_verifier_unready_until_it_is_back(
    start_server: StartServer, pg_server: PgServer, swtpm_booted: BootedTpm
) -> None:
    server = start_server()
    with server.client() as client:
        put_policy(client, swtpm_booted)
        assert client.get("/readyz").status_code == 200
        # The database server goes away (a failover, a restart): every pooled connection dies.
        pg_server.stop()
        try:
            r = client.get("/readyz")
            assert (r.status_code, r.json()["code"]) == (503, "store_unavailable")
            r = client.post("/v1/nodes/worker-4/challenge")
            assert (r.status_code, r.json()["code"]) == (503, "store_unavailable")
            assert r.headers["retry-after"]
            assert client.get("/healthz").status_code == 200
        finally:
            if not pg_server.running:  # shared by the worker's other tests
                pg_server.start()
        # Back without restarting the verifier, and with what it stored before.
        assert client.get("/readyz").status_code == 200
        r = client.get("/v1/admin/policies", headers=ADMIN)
        assert [p["name"] for p in r.json()] == ["default"]
        node = Node("worker-4", swtpm_booted.tpm)
        assert node.enroll(client).status_code == 200
    assert server.stop() == 0


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VERIFIER), *argv], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "--tls-cert and --tls-key are required: the verifier never serves plain HTTP"),
        (("--pcrs", "sha256:99"), "--pcrs: PCR 99 out of range 0-23"),
        (("--nonce-ttl", "-1"), "--nonce-ttl: '-1' is not a positive number of seconds"),
        (("--ek-roots", "/nonexistent"), "--ek-roots: /nonexistent: no such file or directory"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(argv: tuple[str, ...], message: str) -> None:
    result = run_cli("serve", *argv, env=clean_env())
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"attest-verifier: {message}"]


def test_environment_and_config_file(tmp_path: Path) -> None:
    config = tmp_path / "verifier.yaml"
    config.write_text("pcrs: sha256:0-7\nnonce-ttl: 0\n")
    env = clean_env()
    result = run_cli("serve", "--config", str(config), env=env)
    assert result.returncode == 2
    assert f"config file {config}: nonce-ttl" in result.stderr
    result = run_cli("serve", "--config", str(config), env={**env, "ATTEST_VERIFIER_NONCE_TTL": "x"})
    assert "environment ATTEST_VERIFIER_NONCE_TTL: 'x' is not a positive number" in result.stderr


def test_help_teaches() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # as argparse wraps it to the terminal
    for needle in ("--tls-cert", "ATTEST_VERIFIER_NONCE_TTL", "default: sha256:0-10", "Exit status"):
        assert needle in text
