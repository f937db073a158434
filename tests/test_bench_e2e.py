"""The end-to-end throughput benchmark runs (2 agents and the soft load generator, 3 s, SQLite) and
leaves nothing behind: its figures come from running it by hand (python -m bench.e2e), never from a test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.swtpm


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in argv:
            found.append(f"{cmdline.parent.name}: {argv}")
    return found


def test_e2e_benchmark_prints_a_rate_and_cleans_up(tmp_path: Path) -> None:
    tmp = tmp_path / "t"  # every file and process of the run lives under it (swtpm, verifier, agents)
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    argv = [sys.executable, "-m", "bench.e2e", "--agents", "2", "--seconds", "3", "--backend", "sqlite"]
    argv += ["--soft-nodes", "8", "--concurrency", "4"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    row = re.search(r"^sqlite, 1 verifier\s+([0-9.]+)\s+([0-9.]+)", done.stdout, re.M)
    assert row is not None, done.stdout
    assert float(row.group(1)) > 0  # trusted verdicts/s, as the agents count them
    assert float(row.group(2)) > 0  # ... and as the verifier's /metrics counts them
    # The verifier on its own: software-AK evidence from the load generator, every round trusted.
    soft = re.search(
        r"^soft sqlite, 1 verifier\s+([0-9.]+)\s+([0-9.]+).*?\s0\s+0\s.*\s([0-9.]+)$", done.stdout, re.M
    )
    assert soft is not None, done.stdout
    assert float(soft.group(1)) > 0
    assert float(soft.group(3)) > 0  # verifier CPU ms per attestation
    assert "verifier RSS <= 300 MB" in done.stdout
    assert _processes_mentioning(str(tmp)) == []
    assert list(tmp.iterdir()) == []


def test_size_benchmark_runs_tiny_and_cleans_up(tmp_path: Path) -> None:
    tmp = tmp_path / "t"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    argv = [sys.executable, "-m", "bench.size", "--sizes", "20,60", "--seconds", "1", "--rate", "20"]
    argv += ["--soft-nodes", "4"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for nodes in ("20", "60"):
        rate = re.search(rf"^size {nodes} nodes: attestations \(1 s\)\s+([0-9.,]+)/s", done.stdout, re.M)
        assert rate is not None, done.stdout
        assert float(rate.group(1).replace(",", "")) > 0
        assert re.search(rf"^size {nodes} nodes: admission p99 at 20 req/s\s+[0-9.]+ ms", done.stdout, re.M)
        assert re.search(
            rf"^size {nodes} nodes: attestctl audit export\s+[0-9.]+ s, [0-9]+ MB", done.stdout, re.M
        )
    assert re.search(r"^size 60 vs 20 nodes: attestation rate\s+[+-][0-9]+%\s+within 20%", done.stdout, re.M)
    assert _processes_mentioning(str(tmp)) == []
    assert list(tmp.iterdir()) == []
