"""The benchmarks run (on a tiny size): figures come from running them by hand, not from tests."""

from __future__ import annotations

import pytest

import bench.__main__ as bench_all
from bench.appraisal import main


def test_appraisal_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rounds", "3", "--ima-entries", "50"]) == 0
    out = capsys.readouterr().out
    assert "quote + UEFI log (104 events)" in out
    assert "steady state: quote + same log + 10 new IMA" in out
    assert "entries/s" in out


def test_all_benchmarks_print_one_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--rounds", "3", "--ima-entries", "50", "--admission-nodes", "3"]
    assert bench_all.main([*argv, "--admission-seconds", "0.5", "--admission-rate", "20"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("machine: ")
    assert " cores, Python " in out[0]
    assert out[1].split() == ["measurement", "figure", "target"]
    assert any("appraisal: steady state" in line and ">= 5,000/s" in line for line in out)
    assert any("admission (3 nodes, 0.5 s): fixed 20/s" in line and "req/s" in line for line in out)
