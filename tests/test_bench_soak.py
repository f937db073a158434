"""The soak script runs end to end in miniature (2 agents, 15 s, a verifier or swtpm kill every
3-5 s on SQLite), reports its figures, loses nothing and leaves nothing behind. Its figures come from
running it by hand (make soak), never from a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_bench_e2e import _processes_mentioning

pytestmark = pytest.mark.swtpm


def test_soak_survives_its_faults_reports_and_cleans_up(tmp_path: Path) -> None:
    tmp = tmp_path / "t"  # every file and process of the run lives under it
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "TSS2_LOG": "all+NONE"}
    argv = [sys.executable, "-m", "bench.soak", "--minutes", "0.25", "--agents", "2"]
    argv += ["--fault-every", "3-5", "--faults", "verifier-kill,swtpm-kill", "--seed", "3", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert sum(result["faults"].values()) >= 1  # a restart under load can take most of the 15 s
    assert result["trusted"] > 0
    assert result["verdicts_acknowledged"] == result["trusted"] + result["untrusted"]
    assert result["lost_verdicts"] == []
    assert result["lost_enrollments"] == []
    assert result["chain_problems"] == []
    assert result["rss_first_mb"] > 0
    assert _processes_mentioning(str(tmp)) == []
    assert list(tmp.iterdir()) == []
