"""Clock jumps, with real processes.

The verifier's wall clock: `attest-verifier serve` runs under libfaketime (Debian's faketime
package), its offset read from a file the test rewrites, so the clock of the running process
steps as an NTP correction or a bad RTC would step it (CLOCK_MONOTONIC is left alone, as a step
leaves it). Forward: verdicts and pending nonces expire, admission denies as stale and an
answer to an old challenge is refused nonce_expired. Backward: a verdict appraised "in the
future" must not admit for longer than it was issued for, and a nonce issued then stays
single-use.

The node's TPM clock: a swtpm whose state is put back to an earlier snapshot (a VM restored, a
TPM state file rolled back) quotes a resetCount and clock that went back: the verifier refuses
to trust it (quote_clock_rollback).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from attest.wire import Challenge
from tests.conftest import BootedTpm
from tests.test_agent_e2e import AGENT, Verifier, _node, _once, verifier
from tests.test_faults_database import admitted, attest
from tests.test_webhook_serve import ADMIN, Node, StartServer, put_policy, start_server

__all__ = ["start_server", "verifier"]  # the fixtures, used by name

pytestmark = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
JUMP = dt.timedelta(minutes=10)  # past the verdict (300 s) and nonce (60 s) lifetimes


class FakeClock:
    """The offset libfaketime applies to the process's wall clock, changeable while it runs."""

    def __init__(self, path: Path) -> None:
        if not LIBFAKETIME.exists():
            pytest.fail(
                f"{LIBFAKETIME} not found: scripts/setup.sh installs Debian's faketime", pytrace=False
            )
        self.path = path
        self.set(dt.timedelta(0))

    def set(self, offset: dt.timedelta) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{offset.total_seconds():+.0f}\n")
        tmp.replace(self.path)  # never a half-written offset

    @property
    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",  # read the file at every call: the jump is immediate
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }


def assert_trusted(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    verdict: dict[str, Any] = r.json()
    assert verdict["trusted"], verdict
    return verdict


def _error_code(r: httpx.Response) -> str:
    code: str = r.json()["code"]
    return code


def test_the_verifiers_clock_jumps_forward_then_back(
    start_server: StartServer, swtpm_booted: BootedTpm, tmp_path: Path
) -> None:
    clock = FakeClock(tmp_path / "faketime")
    # No rate limit: this node makes more requests in a few seconds than a real one would.
    server = start_server("--node-rate", "1000", "--node-burst", "1000", env=clock.env)
    node = Node("worker-1", swtpm_booted.tpm)
    with server.client() as client:
        put_policy(client, swtpm_booted)
        assert node.enroll(client).status_code == 200
        assert_trusted(attest(client, node, swtpm_booted))
        assert admitted(client, "worker-1") == (True, None)
        r = client.post("/v1/nodes/worker-1/challenge")
        assert r.status_code == 200
        pending = node.evidence(Challenge.model_validate_json(r.content), logs=swtpm_booted)

        # Forward, past every lifetime: the verdict is stale, the pending challenge expired.
        clock.set(JUMP)
        assert admitted(client, "worker-1") == (False, "admission_node_stale")
        r = client.post(
            "/v1/nodes/worker-1/evidence", content=pending, headers={"content-type": "application/json"}
        )
        assert (r.status_code, _error_code(r)) == (409, "nonce_expired"), r.text
        # The node attests again at the new time and is admitted.
        future = assert_trusted(attest(client, node, swtpm_booted))
        assert admitted(client, "worker-1") == (True, None)
        r = client.post("/v1/nodes/worker-1/challenge")
        issued_ahead = node.evidence(Challenge.model_validate_json(r.content), logs=swtpm_booted)

        # Back, as far behind the true time as it was ahead: the verdict appraised "in the future"
        # would look fresh for its lifetime plus 20 minutes. Admission refuses it instead.
        clock.set(-JUMP)
        allowed, code = admitted(client, "worker-1")
        assert (allowed, code) == (False, "admission_node_stale"), future
        # A nonce issued ahead is still single-use.
        r = client.post(
            "/v1/nodes/worker-1/evidence", content=issued_ahead, headers={"content-type": "application/json"}
        )
        assert r.status_code == 200, r.text
        r = client.post(
            "/v1/nodes/worker-1/evidence", content=issued_ahead, headers={"content-type": "application/json"}
        )
        assert (r.status_code, _error_code(r)) == (409, "nonce_reused"), r.text
        # A round at the (now earlier) time admits again.
        assert_trusted(attest(client, node, swtpm_booted))
        assert admitted(client, "worker-1") == (True, None)

        records = client.get("/v1/admin/audit", headers=ADMIN).json()
        assert [a["kind"] for a in records].count("verdict") == 4
    assert server.stop() == 0


def test_a_tpm_restored_to_an_earlier_snapshot_is_not_trusted(
    verifier: Verifier, swtpm: Any, tmp_path: Path
) -> None:
    node = _node("node-1", swtpm, tmp_path)
    verifier.apply_policy(node.policy())
    assert _once(node, verifier).returncode == 0

    # Snapshot the TPM's state as it is now (powered off, as a VM snapshot or a copied state file).
    snapshot = tmp_path / "tpm-snapshot"
    swtpm.stop()
    shutil.copytree(swtpm.state_dir, snapshot)
    for _ in range(2):  # two boots later, each attested: resetCount and the clock moved on
        node.boot()
        result = _once(node, verifier)
        assert result.returncode == 0, result.stdout + result.stderr

    swtpm.stop()
    shutil.rmtree(swtpm.state_dir)
    shutil.copytree(snapshot, swtpm.state_dir)
    node.boot()
    result = subprocess.run(
        [*AGENT, "once", "--json", *node.args(verifier)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["trusted"] is False
    assert "quote_clock_rollback" in {r["code"] for r in verdict["reasons"]}, verdict
    assert "Traceback" not in result.stderr
    assert verifier.nodes()["node-1"].state == "untrusted"
