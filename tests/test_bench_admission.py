"""The admission latency benchmark runs (on a tiny size): its figures come from running it by
hand (python -m bench.admission), never from a test."""

from __future__ import annotations

import pytest

from bench.admission import main


def test_admission_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--nodes", "3", "--rate", "40", "--seconds", "0.5", "--connections", "2", "--warmup", "0"]
    assert main(argv) == 0  # 1 if any answer failed the API server's checks
    out = capsys.readouterr().out
    assert "3 attested nodes" in out
    assert "fixed 40/s" in out
    assert "max rate, 2 conns" in out
    assert "verifier-side decision time" in out
