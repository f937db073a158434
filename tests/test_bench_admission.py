"""The admission latency benchmark runs (on a tiny size): its figures come from running it by
hand (python -m bench.admission), never from a test."""

from __future__ import annotations

import pytest

from bench.admission import main, table_rows


@pytest.mark.parametrize("generator", ["auto", "python"])
def test_admission_benchmark_runs(capsys: pytest.CaptureFixture[str], generator: str) -> None:
    argv = ["--nodes", "3", "--rate", "40", "--seconds", "0.5", "--connections", "2", "--warmup", "0"]
    assert main([*argv, "--generator", generator]) == 0  # 1 if any answer failed the API server's checks
    out = capsys.readouterr().out
    assert "3 attested nodes" in out
    assert "fixed 40/s" in out
    assert "max rate, 2 conns" in out
    assert "verifier CPU per request (utime + stime, /proc): fixed 40/s" in out
    assert "verifier-side decision time" in out


def test_admission_rows_for_the_benchmark_table() -> None:
    rows = table_rows(0.5, 3)
    assert [target for _, _, target in rows] == ["p99 <= 5 ms", ">= 3,000 req/s", ""]
    assert rows[0][0] == "admission (3 nodes, 0.5 s): fixed 1000/s p50 / p99 / p99.9"
    assert rows[0][1].endswith(" ms")
    assert rows[1][1].endswith(" req/s")
