"""`python -m swtpm`, as the demo and the end-to-end tests drive it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from swtpm.imalog import DEFAULT_FILES
from swtpm.measuredboot import named_profile, read_pcrs, simulate_boot

pytestmark = pytest.mark.swtpm

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TSS2_LOG": "all+NONE", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "swtpm", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _gone(pid: int) -> bool:
    """No process, or only a zombie: the CLI's TPM is reparented when the CLI exits, and reaped late."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


@pytest.fixture
def node() -> Iterator[Path]:
    # A short path, so the sockets live in DIR/run as they would in the demo.
    with tempfile.TemporaryDirectory(prefix="swtpm-cli-") as d:
        path = Path(d) / "node"
        try:
            yield path
        finally:
            _cli("stop", str(path))


def test_provision_start_boot_stop(node: Path, tmp_path: Path) -> None:
    out = _cli("provision", str(node))
    assert out.returncode == 0, out.stderr
    assert (node / "ca/swtpm-localca-rootca-cert.pem").is_file()

    out = _cli("start", str(node))
    assert out.returncode == 0, out.stderr
    tcti = out.stdout.strip()
    assert tcti == f"swtpm:path={node.resolve()}/run/swtpm.sock"
    pid = json.loads((node / "swtpm.json").read_text())["pid"]
    assert not _gone(pid)

    eventlog, ima = tmp_path / "log.bin", tmp_path / "ima.txt"
    out = _cli(
        "boot", str(node), "--profile", "altered-kernel", "--eventlog", str(eventlog), "--ima", str(ima)
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == tcti
    expected = simulate_boot(named_profile("altered-kernel"))
    assert eventlog.read_bytes() == expected.log
    assert read_pcrs(tcti, ["sha256"], range(10))["sha256"] == {
        i: expected.pcrs["sha256"][i] for i in range(10)
    }
    lines = ima.read_text().splitlines()
    assert len(lines) == 1 + len(DEFAULT_FILES)
    assert lines[0].endswith(" boot_aggregate")

    new_pid = json.loads((node / "swtpm.json").read_text())["pid"]
    out = _cli("stop", str(node))
    assert out.returncode == 0, out.stderr
    assert _gone(new_pid)
    assert not (node / "swtpm.json").exists()
    assert _cli("stop", str(node)).returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["start"],
        ["boot", "DIR", "--profile", "nonsense", "--eventlog", "x"],
        ["boot", "DIR"],
        ["start", "DIR"],
        ["provision", "DIR", "--bogus"],
    ],
)
def test_usage_errors_are_one_line_with_exit_2(node: Path, args: list[str]) -> None:
    out = _cli(*[str(node) if a == "DIR" else a for a in args])
    assert out.returncode == 2
    if args:
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "Traceback" not in out.stderr


def test_provision_twice_is_refused(node: Path) -> None:
    assert _cli("provision", str(node)).returncode == 0
    out = _cli("provision", str(node))
    assert out.returncode == 2
    assert "already provisioned" in out.stderr
