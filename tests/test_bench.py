"""The benchmarks run (on a tiny size): figures come from running them by hand, not from tests."""

from __future__ import annotations

import pytest

from bench.appraisal import main


def test_appraisal_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rounds", "3", "--ima-entries", "50"]) == 0
    out = capsys.readouterr().out
    assert "quote + UEFI log (104 events)" in out
    assert "entries/s" in out
