"""The real agent (`attest-agent run` on a swtpm node) against a real verifier that sheds it:
told 503 `overloaded` while the verifier's agent slot is held, then 429 `rate_limited` once its
node has spent its burst, it backs off for at least the Retry-After each time, then attests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from swtpm.provision import LocalCa
from tests.swtpm_node import SwtpmNode
from tests.test_overload_serve import Raw, metric, post_head, wait_for
from tests.verifier_process import StartVerifier

pytestmark = pytest.mark.swtpm


def events(log: Path, name: str) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [doc for doc in map(json.loads, lines) if doc["event"] == name]


def test_the_agent_backs_off_for_the_retry_after_of_a_503_and_of_a_429(
    start_verifier: StartVerifier, swtpm_ca: LocalCa, swtpm: Any, tmp_path: Path
) -> None:
    # One slot, no queue; three requests per node and address, one more every 100 s.
    server = start_verifier(
        "--ek-roots", str(swtpm_ca.root_cert),
        "--ek-intermediates", str(swtpm_ca.intermediate_cert),
        "--no-require-policy",
        "--max-agent-concurrency", "1",
        "--agent-queue", "0",
        "--node-rate", "0.01",
        "--node-burst", "3",
    )  # fmt: skip
    node = SwtpmNode(swtpm, tmp_path / "node")
    node.dir.mkdir()
    node.boot()
    log = tmp_path / "agent.log"
    with server.client() as client:
        slow = Raw(server).send(post_head("/v1/nodes/someone-else/evidence", 2) + b"{")
        wait_for(
            "the slot to be held",
            lambda: metric(client, "attest_agent_requests", 'state="active"') == 1,
            server,
        )
        with log.open("wb") as out:
            agent = subprocess.Popen(
                [
                    sys.executable, "-m", "attest.agent.cli", "run",
                    "--verifier", server.url,
                    "--ca-cert", str(server.tls.ca_cert),
                    "--node", "node-1",
                    "--tcti", swtpm.tcti,
                    "--state-dir", str(tmp_path / "state"),
                    "--eventlog", str(node.eventlog),
                    "--ima", str(node.ima),
                    "--boot-id-file", str(node.boot_id),
                    "--container-log", str(node.container_log),
                    "--interval", "0.5",
                    "--max-backoff", "300",
                    "--log-format", "json",
                ],
                stdout=subprocess.DEVNULL,
                stderr=out,
            )  # fmt: skip
        try:
            wait_for("the agent to be shed", lambda: bool(events(log, "round.failed")), server)
            shed = events(log, "round.failed")[0]
            assert shed["error"] == "VerifierUnavailable"
            assert "overloaded" in shed["message"]
            assert shed["retry_in"] >= 5  # Retry-After: 5, never sooner

            # Freed, the agent comes back by itself: it enrolls and attests (2 of the node's
            # 3 tokens), then the next round's evidence finds the bucket empty.
            assert slow.send(b"}").answer()[0] == 400
            slow.close()
            wait_for("a verdict", lambda: bool(events(log, "verdict")), server)
            wait_for("the agent to be rate limited", lambda: len(events(log, "round.failed")) == 2, server)
            limited = events(log, "round.failed")[1]
            assert limited["error"] == "VerifierUnavailable"
            assert "rate_limited" in limited["message"]
            assert limited["retry_in"] >= 90  # the next token is ~100 s away
            assert metric(client, "attest_requests_rejected_total", 'reason="rate_limited"') == 1
            assert metric(client, "attest_requests_rejected_total", 'reason="overloaded"') == 1
        finally:
            agent.terminate()
            assert agent.wait(timeout=30) == 0, log.read_text()[-3000:]
