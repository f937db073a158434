"""The daemon's logic without a verifier: timing, retries, logs, state files, the command line."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from attest.agent import cli
from attest.agent.client import NotEnrolled, VerifierClient, VerifierUnavailable, VerifierUnreachable
from attest.agent.daemon import (
    Agent,
    AgentConfig,
    EventFormatter,
    backoff_delay,
    make_event_log,
    next_interval,
    run_daemon,
)
from attest.agent.state import ENROLLMENT_FILE, Enrollment, load_boot_id, save_boot_id
from attest.errors import TpmError
from tests.test_agent_client import make_pki

AGENT = [sys.executable, "-m", "attest.agent.cli"]


# --- timing -----------------------------------------------------------------------------------


def test_backoff_doubles_from_one_second_to_the_cap_with_jitter() -> None:
    rng = random.Random(1)
    for failures, ceiling in [(1, 1), (2, 2), (3, 4), (6, 32), (9, 256), (10, 300), (500, 300)]:
        for _ in range(50):
            delay = backoff_delay(failures, 300, rng)
            assert 0.8 * ceiling <= delay <= 1.2 * ceiling


def test_backoff_spreads_agents_that_failed_together() -> None:
    rng = random.Random(2)
    delays = {round(backoff_delay(8, 300, rng), 3) for _ in range(100)}
    assert len(delays) > 90


def test_backoff_honours_retry_after_but_not_beyond_the_cap() -> None:
    rng = random.Random(3)
    assert all(30 <= backoff_delay(1, 300, rng, retry_after=30) <= 36 for _ in range(50))
    assert all(backoff_delay(1, 300, rng, retry_after=86400) <= 360 for _ in range(50))
    # A Retry-After shorter than the backoff does not shorten it.
    assert all(backoff_delay(9, 300, rng, retry_after=1) >= 0.8 * 256 for _ in range(50))


def test_interval_jitter_is_ten_percent() -> None:
    rng = random.Random(4)
    values = [next_interval(60, rng) for _ in range(200)]
    assert all(54 <= v <= 66 for v in values)
    assert max(values) - min(values) > 6


# --- structured logs --------------------------------------------------------------------------


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_logs_are_one_key_value_line_per_event() -> None:
    out = io.StringIO()
    log = make_event_log("text", "debug", out)
    log.info(
        "verdict", node="n1", trusted=False, message='say "hi"\nthere', reasons=[{"code": "x"}], none=None
    )
    (line,) = _lines(out)
    assert line.startswith("time=")
    assert " level=info event=verdict node=n1 trusted=false " in line
    assert 'message="say \\"hi\\"\\nthere"' in line
    assert 'reasons="[{\\"code\\":\\"x\\"}]"' in line
    assert "none=" not in line


def test_json_logs_are_one_object_per_line() -> None:
    out = io.StringIO()
    log = make_event_log("json", "info", out)
    log.debug("hidden")
    log.warning("round.failed", error="VerifierUnreachable", retry_in=1.5)
    (line,) = _lines(out)
    doc = json.loads(line)
    assert doc["level"] == "warning"
    assert doc["event"] == "round.failed"
    assert doc["retry_in"] == 1.5
    assert doc["time"].endswith("Z")


def test_a_bug_is_logged_with_its_traceback_on_one_line() -> None:
    out = io.StringIO()
    log = make_event_log("text", "info", out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.error("round.failed", exc=True, error="RuntimeError")
    (line,) = _lines(out)
    assert "traceback=" in line
    assert "RuntimeError: boom" in line


def test_formatter_defaults_to_text() -> None:
    assert not EventFormatter().json


# --- the round loop ---------------------------------------------------------------------------


class _Clock(threading.Event):
    """A stop event whose waits return at once and are recorded; it stops the loop after `n`."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        if len(self.waits) >= self.n:
            self.set()
        return self.is_set()


def _agent(tmp_path: Path, stop: threading.Event, out: io.StringIO, **config: Any) -> Agent:
    pki = make_pki(tmp_path / "pki")
    cfg = AgentConfig(
        verifier="https://verifier.test",
        ca_cert=pki.ca_cert,
        node="node-1",
        state_dir=tmp_path / "state",
        container_log=tmp_path / "containers.log",
        **config,
    )
    client = VerifierClient(cfg.verifier, cfg.ca_cert)  # never asked: each test scripts attest()
    return Agent(cfg, client, make_event_log("json", "debug", out), stop)


def _script(agent: Agent, outcomes: list[Exception | None]) -> list[int]:
    calls: list[int] = []

    def attest() -> Any:
        calls.append(1)
        outcome = outcomes[min(len(calls), len(outcomes)) - 1]
        if outcome is not None:
            raise outcome
        return None

    agent.attest = attest  # type: ignore[method-assign]
    return calls


def test_the_loop_backs_off_on_failures_and_returns_to_the_interval(tmp_path: Path) -> None:
    stop = _Clock(7)
    out = io.StringIO()
    agent = _agent(tmp_path, stop, out, interval=60, max_backoff=8)
    outcomes: list[Exception | None] = [VerifierUnreachable("refused")] * 5 + [None, None]
    _script(agent, outcomes)
    agent.run()
    ceilings = [1, 2, 4, 8, 8]
    for wait, ceiling in zip(stop.waits[:5], ceilings, strict=True):
        assert 0.8 * ceiling <= wait <= 1.2 * ceiling
    assert all(54 <= w <= 66 for w in stop.waits[5:])
    events = [json.loads(line) for line in _lines(out)]
    failed = [e for e in events if e["event"] == "round.failed"]
    assert [e["failures"] for e in failed] == [1, 2, 3, 4, 5]
    assert all(e["level"] == "warning" and "traceback" not in e for e in failed)


def test_the_loop_waits_as_long_as_retry_after_says(tmp_path: Path) -> None:
    stop = _Clock(1)
    agent = _agent(tmp_path, stop, io.StringIO(), max_backoff=300)
    _script(agent, [VerifierUnavailable("db down", retry_after=42)])
    agent.run()
    assert 42 <= stop.waits[0] <= 42 * 1.2


def test_a_bug_in_a_round_does_not_stop_the_loop(tmp_path: Path) -> None:
    stop = _Clock(3)
    out = io.StringIO()
    agent = _agent(tmp_path, stop, out)
    calls = _script(agent, [KeyError("surprise"), TpmError("TPM busy"), None])
    agent.run()
    assert len(calls) == 3
    failed = [json.loads(line) for line in _lines(out) if '"round.failed"' in line]
    assert failed[0]["level"] == "error"
    assert "KeyError" in failed[0]["traceback"]
    assert failed[1]["level"] == "warning"
    assert "traceback" not in failed[1]


def test_a_forgotten_enrollment_is_redone_at_once(tmp_path: Path) -> None:
    """The verifier's database was reset: the next challenge says ak_not_bound; the agent enrolls
    again within the same round, without waiting for a backoff."""
    out = io.StringIO()
    agent = _agent(tmp_path, threading.Event(), out)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / ENROLLMENT_FILE).write_text("{}")
    enrolls: list[int] = []
    rounds: list[int] = []

    def ensure_enrolled() -> Any:
        enrolls.append(1)
        return None

    def round_(ak: Any) -> Any:
        rounds.append(1)
        if len(rounds) == 1:
            assert (tmp_path / "state" / ENROLLMENT_FILE).exists()
            raise NotEnrolled(404, "ak_not_bound", "no AK bound to node-1")
        assert not (tmp_path / "state" / ENROLLMENT_FILE).exists()
        return "verdict"

    agent.ensure_enrolled = ensure_enrolled  # type: ignore[method-assign]
    agent._round = round_  # type: ignore[method-assign]
    assert agent.attest() == "verdict"
    assert (len(enrolls), len(rounds)) == (2, 2)
    assert '"enroll.lost"' in out.getvalue()


def test_a_tpm_failure_makes_the_next_round_check_the_ak_again(tmp_path: Path) -> None:
    agent = _agent(tmp_path, threading.Event(), io.StringIO())
    agent._ak = object()  # type: ignore[assignment]

    def round_(ak: Any) -> Any:
        raise TpmError("quoting: TPM_RC_INTEGRITY")

    agent._round = round_  # type: ignore[method-assign]
    agent.ensure_enrolled = lambda: None  # type: ignore[method-assign,assignment,return-value]
    with pytest.raises(TpmError):
        agent.attest()
    assert agent._ak is None


# --- state files ------------------------------------------------------------------------------


def test_enrollment_state_is_private_and_survives_a_restart(tmp_path: Path) -> None:
    import datetime as dt

    when = dt.datetime(2026, 11, 28, 17, 0, tzinfo=dt.UTC)
    Enrollment("node-1", "https://v:8443", "000b" + "ab" * 32, "EK-RSA2048", when).save(tmp_path / "s")
    path = tmp_path / "s" / ENROLLMENT_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
    got = Enrollment.load(tmp_path / "s")
    assert got is not None
    assert got.enrolled_at == when
    assert got.matches("node-1", "https://v:8443", "000b" + "ab" * 32)
    assert not got.matches("node-2", "https://v:8443", "000b" + "ab" * 32)
    assert not got.matches("node-1", "https://other:8443", "000b" + "ab" * 32)
    assert not got.matches("node-1", "https://v:8443", "000b" + "cd" * 32)
    assert [p.name for p in (tmp_path / "s").iterdir()] == [ENROLLMENT_FILE]  # no temporary left


@pytest.mark.parametrize("text", ["", "{", "[]", '{"version": 99}', '{"version": 1, "node": "n"}'])
def test_a_damaged_enrollment_file_means_enroll_again(tmp_path: Path, text: str) -> None:
    (tmp_path / ENROLLMENT_FILE).write_text(text)
    assert Enrollment.load(tmp_path) is None


def test_boot_id_state(tmp_path: Path) -> None:
    assert load_boot_id(tmp_path) is None
    save_boot_id(tmp_path, "b1")
    assert load_boot_id(tmp_path) == "b1"
    assert stat.S_IMODE((tmp_path / "boot.json").stat().st_mode) == 0o600


# --- command line -----------------------------------------------------------------------------


def _run_cli(
    argv: list[str], env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["once", "--ca-cert", "x"], "required: --verifier"),
        (["once", "--verifier", "http://v", "--ca-cert", "x", "--node", "n"], "must start with https://"),
        (
            ["once", "--verifier", "https://v", "--ca-cert", "x", "--node", "Not_A_Node"],
            "not a Kubernetes node name",
        ),
        (
            ["once", "--verifier", "https://v", "--ca-cert", "x", "--node", "n", "--ek-kind", "EK-DSA"],
            "--ek-kind",
        ),
        (["run", "--verifier", "https://v", "--ca-cert", "x", "--interval", "0"], "out of range"),
        (["once", "--verifier", "https://v", "--ca-cert", "/nonexistent", "--node", "n"], "no such file"),
        (["run", "--verifier", "https://v", "--ca-cert", "/nonexistent", "--node", "n"], "no such file"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv: list[str], message: str) -> None:
    result = _run_cli(argv)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTEST_AGENT_VERIFIER", "https://env-verifier:8443")
    monkeypatch.setenv("ATTEST_AGENT_CA_CERT", "/etc/ca.crt")
    monkeypatch.setenv("ATTEST_AGENT_INTERVAL", "15")
    monkeypatch.setenv("ATTEST_AGENT_LOG_FORMAT", "json")
    monkeypatch.setenv("ATTEST_AGENT_TCTI", "swtpm:path=/run/s")
    args = cli.build_parser().parse_args(["run", "--interval", "20"])
    assert args.verifier == "https://env-verifier:8443"
    assert args.ca_cert == Path("/etc/ca.crt")
    assert args.interval == 20.0  # the command line wins
    assert args.log_format == "json"
    assert args.tcti == "swtpm:path=/run/s"


def test_a_bad_value_in_the_environment_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTEST_AGENT_AK_ALG", "dsa")
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["run", "--verifier", "https://v", "--ca-cert", "c"])
    assert info.value.code == 2


def test_help_explains_the_commands() -> None:
    for command in ("run", "once"):
        result = _run_cli([command, "--help"])
        assert result.returncode == 0
        assert "ATTEST_AGENT_" in result.stdout or command == "once"
        assert "--ca-cert" in result.stdout
    assert "Exit codes" in _run_cli(["once", "--help"]).stdout


def _wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_run_retries_a_broken_tpm_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """No TPM at all: every round fails and is retried with backoff, nothing crashes, SIGTERM
    ends it with exit code 0 at once."""
    pki = make_pki(tmp_path / "pki")
    stderr = tmp_path / "stderr"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [
                *AGENT,
                "run",
                "--verifier",
                "https://127.0.0.1:9",
                "--ca-cert",
                str(pki.ca_cert),
                "--node",
                "node-1",
                "--tcti",
                f"swtpm:path={tmp_path}/no-such.sock",
                "--state-dir",
                str(tmp_path / "state"),
                "--max-backoff",
                "1",
            ],
            stderr=err,
            stdout=subprocess.DEVNULL,
        )
        try:
            _wait_for(lambda: stderr.read_text().count("event=round.failed") >= 3, 20)
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
            assert time.monotonic() - start < 3
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = stderr.read_text()
    assert "Traceback" not in text
    assert "error=TpmError" in text
    assert "event=agent.stopped" in text
    assert all(line.startswith("time=") for line in text.splitlines())


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_loop_that_dies_is_not_a_clean_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def die(self: Agent) -> None:
        raise SystemExit(3)

    monkeypatch.setattr(Agent, "run", die)
    pki = make_pki(tmp_path / "pki")
    config = AgentConfig(verifier="https://v.test", ca_cert=pki.ca_cert, node="n", state_dir=tmp_path)
    out = io.StringIO()
    assert run_daemon(config, make_event_log("json", "info", out)) == 1
    assert json.loads(out.getvalue().splitlines()[-1])["event"] == "agent.died"
