"""Faults on the node's side, with real processes: the agent's software TPM hangs (SIGSTOP) in the
middle of a quote, then vanishes (SIGKILL), and comes back on the same socket and state.

`attest-agent once` must fail with a clear message and exit 2 instead of hanging; `attest-agent
run` must log each failed round, back off, never report a verdict it did not get, and recover
by itself once a TPM answers again. The verifier (tests/test_agent_e2e.py's) runs on SQLite: the
database plays no part here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from attest.agent.daemon import TpmDeadline
from attest.errors import TpmError
from tests.test_agent_e2e import AGENT, AgentProcess, Node, Verifier, _node, _once, _stop, verifier

__all__ = ["verifier"]  # the fixture, used by name

TPM_TIMEOUT = "2"
SQLITE = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)


def _hang(node: Node) -> int:
    pid = node.tpm.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    return pid


def _power_on(node: Node) -> None:
    """swtpm again on the same state and socket, after it was killed: a cold boot of the node."""
    node.tpm.stop()  # reaps the killed process
    node.boot()


@SQLITE
def test_once_exits_2_with_a_clear_message_when_the_tpm_hangs_or_is_gone(
    verifier: Verifier, swtpm: Any, tmp_path: Path
) -> None:
    node = _node("node-1", swtpm, tmp_path)
    verifier.apply_policy(node.policy())
    assert _once(node, verifier).returncode == 0
    before = verifier.nodes()["node-1"]
    argv = [*AGENT, "once", *node.args(verifier, "--tpm-timeout", TPM_TIMEOUT)]

    pid = _hang(node)
    hung = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert hung.returncode == 2, hung.stdout + hung.stderr
    assert "the TPM did not answer within 2 s" in hung.stderr
    assert "Traceback" not in hung.stderr
    assert hung.stdout == ""

    os.kill(pid, signal.SIGKILL)
    gone = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert gone.returncode == 2, gone.stdout + gone.stderr
    assert "attest-agent: error:" in gone.stderr
    assert "TPM" in gone.stderr
    assert "Traceback" not in gone.stderr

    # No round got as far as evidence: the verifier's view of the node did not move.
    assert verifier.nodes()["node-1"] == before

    _power_on(node)
    back = _once(node, verifier)
    assert back.returncode == 0, back.stdout + back.stderr
    assert not back.stderr.count("event=enroll.start")  # the AK lives in the TPM's NV-backed state


@SQLITE
def test_run_backs_off_while_the_tpm_is_gone_and_recovers_when_it_is_back(
    verifier: Verifier, swtpm: Any, tmp_path: Path
) -> None:
    node = _node("node-1", swtpm, tmp_path)
    verifier.apply_policy(node.policy())
    log = tmp_path / "agent.log"
    agent = AgentProcess(node, verifier, log, "--tpm-timeout", TPM_TIMEOUT)
    try:
        agent.wait("a first trusted verdict", lambda: any(v["trusted"] for v in agent.verdicts()))

        # The TPM stops answering, likely in the middle of a quote (rounds are 0.5 s apart).
        agent.mark()
        pid = _hang(node)
        agent.wait("a round failing on the TPM deadline", lambda: bool(agent.new("round.failed")))
        stuck = verifier.nodes()["node-1"]
        (first,) = agent.new("round.failed")[:1]
        assert first["error"] == "TpmError"
        assert "the TPM did not answer within 2 s" in first["message"]

        # Then it dies with the command in flight, and stays gone for a few rounds.
        os.kill(pid, signal.SIGKILL)
        agent.wait("three more failed rounds", lambda: len(agent.new("round.failed")) >= 4)
        failed = agent.new("round.failed")
        assert {f["error"] for f in failed} == {"TpmError"}
        # Backing off: consecutive failures are counted, and the waits grow to --max-backoff (2 s).
        assert [f["failures"] for f in failed] == list(range(1, len(failed) + 1))
        assert max(f["retry_in"] for f in failed[2:]) > 1.5
        assert not agent.verdicts()  # nothing is reported from a failed round ...
        assert verifier.nodes()["node-1"].last_verdict_at == stuck.last_verdict_at  # ... or stored

        agent.mark()
        _power_on(node)
        agent.wait("a trusted verdict once the TPM is back", lambda: bool(agent.verdicts()))
        assert agent.verdicts()[0]["trusted"], agent.verdicts()
        assert agent.new("reboot.detected")
        assert agent.proc.poll() is None
    finally:
        _stop(agent.proc)
    text = log.read_text()
    assert "Traceback" not in text
    assert "agent.died" not in text


def test_the_tpm_deadline_fails_fast_while_a_call_is_stuck_and_recovers_when_it_returns() -> None:
    deadline = TpmDeadline(0.2)
    assert deadline.call("reading", lambda: 7) == 7
    with pytest.raises(TpmError, match=r"^quoting: boom$"):
        deadline.call("quoting", _raise_boom)

    answer = threading.Event()
    with pytest.raises(TpmError, match=r"quoting: the TPM did not answer within 0\.2 s"):
        deadline.call("quoting", lambda: answer.wait(60))
    # One thread is left in the TPM; the next calls do not queue behind it.
    with pytest.raises(
        TpmError, match="loading the attestation key: the TPM has not answered a command sent"
    ):
        deadline.call("loading the attestation key", lambda: 7)
    answer.set()
    for _ in range(100):  # the stuck call returns at once now; give its thread time to end
        try:
            assert deadline.call("reading", lambda: 8) == 8
            break
        except TpmError:
            time.sleep(0.05)
    else:
        raise AssertionError("the deadline did not recover after the stuck call returned")


def _raise_boom() -> None:
    raise TpmError("quoting: boom")
